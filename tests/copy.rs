//! `ctl cp` against real agents: byte-exact round trips, trees with odd
//! names, many hosts, and the failures that must leave the old file and no
//! temporary behind.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::*;

fn cp(env: &Env, args: &[&str]) -> std::process::Output {
    env.ctl().arg("cp").args(args).output().expect("run ctl cp")
}

fn remote(agent: &Agent, path: &Path) -> String {
    format!("{}:{}", agent.target(), path.display())
}

/// The file's BLAKE3 hash in hex, as `b3sum` prints it, computed in one
/// piece by the reference implementation (ctl hashes chunk by chunk).
fn blake3_hex(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap())
        .to_hex()
        .to_string()
}

/// Every entry below `dir`: relative name, its bytes or link target, its
/// mode, and for a regular file its modification time in whole seconds.
fn listing(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>, u32, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.push((rel, target.as_os_str().as_bytes().to_vec(), 0, 0));
            } else if meta.is_dir() {
                out.push((rel, b"<dir>".to_vec(), mode, 0));
                stack.push(path);
            } else {
                let mtime = std::os::unix::fs::MetadataExt::mtime(&meta);
                out.push((rel, std::fs::read(&path).unwrap(), mode, mtime));
            }
        }
    }
    out.sort();
    out
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| rexec_protocol::copy::is_temp_name(p.file_name().unwrap()))
        .collect()
}

#[test]
fn files_of_every_size_round_trip_byte_exact() {
    let env = Env::new();
    let agent = env.agent();
    let root = env.root.path();
    let (there, back) = (root.join("there"), root.join("back"));
    std::fs::create_dir_all(&there).unwrap();
    std::fs::create_dir_all(&back).unwrap();
    for (name, len) in [("empty", 0usize), ("one", 1), ("hundred-mib", 100 << 20)] {
        let source = root.join(name);
        std::fs::write(&source, random_bytes(len, len as u64 + 1)).unwrap();
        let pushed = cp(
            &env,
            &["--json", source.to_str().unwrap(), &remote(&agent, &there)],
        );
        assert!(pushed.status.success(), "{}", stderr_of(&pushed));
        let record: serde_json::Value = serde_json::from_slice(&pushed.stdout).unwrap();
        assert_eq!(record["status"], "copied");
        assert_eq!(record["bytes"], len as u64);
        assert_eq!(
            record["blake3"],
            blake3_hex(&source),
            "checksum of what was sent"
        );

        let pulled = cp(
            &env,
            &[&remote(&agent, &there.join(name)), back.to_str().unwrap()],
        );
        assert!(pulled.status.success(), "{}", stderr_of(&pulled));
        assert!(
            std::fs::read(back.join(name)).unwrap() == std::fs::read(&source).unwrap(),
            "{name} differs after the round trip"
        );
    }
    assert!(temporaries(&there).is_empty() && temporaries(&back).is_empty());
    assert!(agent.wait_for_log("direction=\"push\"").is_some());
}

#[test]
fn a_tree_with_links_and_odd_names_round_trips() {
    let env = Env::new();
    let agent = env.agent();
    let root = env.root.path();
    let src = root.join("tree");
    std::fs::create_dir_all(src.join("sub dir/deeper")).unwrap();
    std::fs::write(src.join("with space"), b"space").unwrap();
    std::fs::write(src.join("new\nline"), b"newline").unwrap();
    std::fs::write(
        src.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")),
        b"not utf-8",
    )
    .unwrap();
    std::fs::write(src.join("sub dir/deeper/data"), random_bytes(300_000, 5)).unwrap();
    std::fs::write(src.join("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        src.join("script.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    // Times in the past, each its own, so a copy that stamps "now" shows.
    for (i, name) in ["with space", "script.sh", "sub dir/deeper/data"]
        .iter()
        .enumerate()
    {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000 + i as u64);
        std::fs::File::options()
            .write(true)
            .open(src.join(name))
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    std::os::unix::fs::symlink("sub dir/deeper/data", src.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling")).unwrap();

    let there = root.join("there");
    std::fs::create_dir(&there).unwrap();
    let pushed = cp(
        &env,
        &["-r", src.to_str().unwrap(), &remote(&agent, &there)],
    );
    assert!(pushed.status.success(), "{}", stderr_of(&pushed));
    assert_eq!(listing(&there.join("tree")), listing(&src));

    let back = root.join("back");
    std::fs::create_dir(&back).unwrap();
    let pulled = cp(
        &env,
        &[
            "-r",
            &remote(&agent, &there.join("tree")),
            back.to_str().unwrap(),
        ],
    );
    assert!(pulled.status.success(), "{}", stderr_of(&pulled));
    assert_eq!(listing(&back.join("tree")), listing(&src));

    // Without -r a directory is refused, and says how.
    let refused = cp(&env, &[src.to_str().unwrap(), &remote(&agent, &there)]);
    assert_eq!(refused.status.code(), Some(255));
    assert!(
        stderr_of(&refused).contains("-r"),
        "{}",
        stderr_of(&refused)
    );
}

#[test]
fn push_to_ten_hosts_and_pull_from_them_without_collisions() {
    let env = Env::new();
    let fleet = env.fleet(10);
    let root = env.root.path();
    let script = root.join("deploy.sh");
    std::fs::write(&script, b"#!/bin/sh\necho deployed\n").unwrap();
    let dest = root.join("deployed");
    std::fs::create_dir(&dest).unwrap();
    let pushed = cp(
        &env,
        &[
            "--json",
            script.to_str().unwrap(),
            &format!("@lab:{}", dest.display()),
        ],
    );
    assert!(pushed.status.success(), "{}", stderr_of(&pushed));
    let records = json_lines(&pushed);
    assert_eq!(records.len(), 10);
    assert!(
        records
            .iter()
            .all(|r| r["status"] == "copied" && r["bytes"] == 24)
    );
    for host in &fleet.hosts {
        assert!(
            fleet.agent(host).wait_for_log("outcome=\"done\"").is_some(),
            "{host}"
        );
    }
    assert_eq!(
        std::fs::read(dest.join("deploy.sh")).unwrap(),
        b"#!/bin/sh\necho deployed\n"
    );

    let logs = root.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let pulled = cp(
        &env,
        &[
            &format!("@lab:{}", dest.join("deploy.sh").display()),
            logs.to_str().unwrap(),
        ],
    );
    assert!(pulled.status.success(), "{}", stderr_of(&pulled));
    for host in &fleet.hosts {
        let file = logs.join(host).join("deploy.sh");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"#!/bin/sh\necho deployed\n",
            "{}",
            file.display()
        );
    }
    assert_eq!(
        std::fs::read_dir(&logs).unwrap().count(),
        10,
        "one directory per host"
    );
}

#[test]
fn a_client_killed_mid_push_leaves_the_old_file_and_no_temporary() {
    let env = Env::new();
    let agent = env.agent();
    let root = env.root.path();
    let source = root.join("big");
    // Sparse: large to send, cheap to make.
    std::fs::File::create(&source)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let dest_dir = root.join("dest");
    std::fs::create_dir(&dest_dir).unwrap();
    std::fs::write(dest_dir.join("big"), b"the old file").unwrap();
    let mut ctl = env
        .ctl()
        .args(["cp", source.to_str().unwrap(), &remote(&agent, &dest_dir)])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(DEADLINE, || !temporaries(&dest_dir).is_empty()),
        "the transfer started"
    );
    ctl.kill().unwrap();
    ctl.wait().unwrap();
    assert!(
        agent.wait_for_log("client gone").is_some(),
        "{}",
        agent.log()
    );
    assert_eq!(
        std::fs::read(dest_dir.join("big")).unwrap(),
        b"the old file"
    );
    assert!(wait_until(DEADLINE, || temporaries(&dest_dir).is_empty()));
    // The agent serves on.
    assert_eq!(stdout_of(&env.exec(&agent, &["echo alive"])), "alive\n");
}

#[test]
fn an_interrupted_pull_leaves_the_old_file_and_no_temporary() {
    let env = Env::new();
    let agent = env.agent();
    let root = env.root.path();
    let source = root.join("big");
    // Sparse: large to send, cheap to make.
    std::fs::File::create(&source)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let back = root.join("back");
    std::fs::create_dir(&back).unwrap();
    std::fs::write(back.join("big"), b"the old file").unwrap();
    // Ctrl-C, or a script's SIGTERM or SIGHUP: ctl stops, cleans up after
    // itself before it exits, and exits as a shell reports that signal.
    for (signal, code) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        let mut ctl = env
            .ctl()
            .args(["cp", &remote(&agent, &source), back.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            wait_until(DEADLINE, || !temporaries(&back).is_empty()),
            "the transfer started"
        );
        send_signal(ctl.id(), signal);
        let status = ctl.wait().unwrap();
        assert_eq!(status.code(), Some(code), "SIG{signal}");
        assert_eq!(std::fs::read(back.join("big")).unwrap(), b"the old file");
        assert_eq!(temporaries(&back), Vec::<PathBuf>::new(), "SIG{signal}");
    }
}

/// A small file system of our own, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, options: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_old_file_stays() {
    let env = Env::new();
    let agent = env.agent();
    let root = env.root.path();
    let Some(small) = Mount::tmpfs(&root.join("small"), "size=1m") else {
        skipped(
            "a_full_disk_is_a_clear_error_and_the_old_file_stays",
            "cannot mount a tmpfs here (needs root)",
        );
        return;
    };
    std::fs::write(small.0.join("file"), b"old contents").unwrap();
    let source = root.join("file");
    std::fs::write(&source, random_bytes(3 << 20, 9)).unwrap();
    let out = cp(&env, &[source.to_str().unwrap(), &remote(&agent, &small.0)]);
    assert_eq!(out.status.code(), Some(255));
    let err = stderr_of(&out);
    assert!(
        err.contains("write-failed") && err.contains("No space left"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(small.0.join("file")).unwrap(),
        b"old contents"
    );
    assert!(
        temporaries(&small.0).is_empty(),
        "{:?}",
        temporaries(&small.0)
    );
    assert_eq!(stdout_of(&env.exec(&agent, &["echo alive"])), "alive\n");
}

#[test]
fn a_read_only_file_system_and_a_missing_directory_are_clear_errors() {
    let env = Env::new();
    let agent = env.agent();
    let root = env.root.path();
    let source = root.join("f");
    std::fs::write(&source, b"x").unwrap();

    let out = cp(
        &env,
        &[
            source.to_str().unwrap(),
            &remote(&agent, &root.join("no/such/dir/f")),
        ],
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr_of(&out).contains("no such directory"),
        "{}",
        stderr_of(&out)
    );

    let out = cp(
        &env,
        &[
            &remote(&agent, &root.join("missing")),
            root.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr_of(&out).contains("no-such-file"),
        "{}",
        stderr_of(&out)
    );

    if let Some(ro) = Mount::tmpfs(&root.join("ro"), "ro,size=1m") {
        let out = cp(&env, &[source.to_str().unwrap(), &remote(&agent, &ro.0)]);
        assert_eq!(out.status.code(), Some(255));
        assert!(stderr_of(&out).contains("Read-only"), "{}", stderr_of(&out));
    }
}

#[test]
fn a_size_limit_refuses_large_pushes_before_writing() {
    let env = Env::new();
    let agent = env.agent_with(&["--max-copy-bytes", "1000"]);
    let root = env.root.path();
    let source = root.join("big");
    std::fs::write(&source, vec![1u8; 2000]).unwrap();
    let dest = root.join("dest");
    std::fs::create_dir(&dest).unwrap();
    let out = cp(&env, &[source.to_str().unwrap(), &remote(&agent, &dest)]);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr_of(&out).contains("too-large"), "{}", stderr_of(&out));
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
}

/// `ctl cp AGENT:/PATH local` against an agent played by a TLS server in
/// the test (with the agent's own identity, so ctl trusts it) that answers
/// the request with `messages`, whatever was asked.
async fn pull_from_a_fake_agent(
    env: &Env,
    messages: Vec<rexec_protocol::AgentMessage>,
    path: &str,
    local: &Path,
) -> std::process::Output {
    use futures_util::{SinkExt, StreamExt};

    let fake = FakeAgent::bind(env).await;
    let addr = fake.addr;
    let agent = tokio::spawn(async move {
        let (mut incoming, mut outgoing) = fake.accept().await;
        let _ = incoming.next().await;
        let _ = incoming.next().await;
        for message in messages {
            let _ = outgoing.feed(message).await;
        }
        let _ = outgoing.flush().await;
        let _ = incoming.next().await;
    });
    let remote = format!("{addr}:{path}");
    let out = ctl_output_off_the_runtime(env, &["cp", &remote, local.to_str().unwrap()]).await;
    agent.abort();
    out
}

fn file_header(path: &'static [u8], size: u64) -> rexec_protocol::FileHeader {
    rexec_protocol::FileHeader {
        path: bytes::Bytes::from_static(path),
        kind: rexec_protocol::FileKind::File { size },
        mode: 0o644,
        mtime: 0,
        owner: None,
    }
}

/// An agent that offers `../../etc/x` cannot make ctl write outside LOCAL_DIR.
#[tokio::test]
async fn a_hostile_agent_cannot_write_outside_the_local_directory() {
    use bytes::Bytes;
    use rexec_protocol::{AgentMessage, Hello};

    let env = Env::new();
    let local = env.root.path().join("a/b/local");
    std::fs::create_dir_all(&local).unwrap();
    let messages = vec![
        AgentMessage::Hello(Hello::new("rexec-agent 0.1.0")),
        AgentMessage::File(file_header(b"../../escaped", 1)),
        AgentMessage::FileData(Bytes::from_static(b"x")),
    ];
    let out = pull_from_a_fake_agent(&env, messages, "/etc/x", &local).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr_of(&out).contains("refusing entry name"),
        "{}",
        stderr_of(&out)
    );
    assert!(!env.root.path().join("a/escaped").exists());
    assert!(!env.root.path().join("escaped").exists());
    assert_eq!(std::fs::read_dir(&local).unwrap().count(), 0);
}

/// An agent whose data does not match the BLAKE3 hash it sends with it:
/// ctl keeps the old local file and leaves no temporary.
#[tokio::test]
async fn a_pull_whose_checksum_does_not_match_keeps_the_old_file() {
    use bytes::Bytes;
    use rexec_protocol::{AgentMessage, FileEnd, Hello};

    let env = Env::new();
    let local = env.root.path().join("local");
    std::fs::create_dir(&local).unwrap();
    std::fs::write(local.join("x"), b"old").unwrap();
    let messages = vec![
        AgentMessage::Hello(Hello::new("rexec-agent 0.1.0")),
        AgentMessage::File(file_header(b"x", 3)),
        AgentMessage::FileData(Bytes::from_static(b"new")),
        AgentMessage::FileEnd(FileEnd {
            blake3: Bytes::copy_from_slice(blake3::hash(b"not new").as_bytes()),
            changed: false,
        }),
        AgentMessage::CopyEnd,
    ];
    let out = pull_from_a_fake_agent(&env, messages, "/x", &local).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr_of(&out).contains("checksum"), "{}", stderr_of(&out));
    assert_eq!(std::fs::read(local.join("x")).unwrap(), b"old");
    assert_eq!(temporaries(&local), Vec::<PathBuf>::new());
}

/// Copies to and from several hosts end like `ctl exec` on several: every
/// host that can is served, the failed ones are named in one summary line,
/// and the exit status is the worst.
#[test]
fn a_copy_to_several_hosts_names_the_ones_that_failed() {
    let env = Env::new();
    let mut fleet = env.fleet(4);
    // 127.0.0.5 goes down: its port refuses connections.
    let down = fleet.agents.last_mut().unwrap();
    down.child.kill().unwrap();
    down.child.wait().unwrap();
    let root = env.root.path();
    let file = root.join("app.conf");
    std::fs::write(&file, b"setting = 1\n").unwrap();
    let dest = root.join("etc");
    std::fs::create_dir(&dest).unwrap();

    let pushed = cp(
        &env,
        &[
            "--json",
            file.to_str().unwrap(),
            &format!("@lab:{}", dest.display()),
        ],
    );
    assert_eq!(pushed.status.code(), Some(255), "{}", stderr_of(&pushed));
    assert_eq!(
        stderr_of(&pushed).lines().last(),
        Some("ctl: 1 of 4 hosts failed: connect: 127.0.0.5")
    );
    let records = json_lines(&pushed);
    assert_eq!(records.len(), 4);
    for record in &records {
        let copied = record["status"] == "copied";
        assert_eq!(copied, record["host"] != "127.0.0.5", "{record}");
        assert!(record["duration_ms"].as_f64().unwrap() > 0.0, "{record}");
    }
    assert_eq!(
        std::fs::read(dest.join("app.conf")).unwrap(),
        b"setting = 1\n"
    );

    // A path missing on every host that answers: each is named, with why.
    let logs = root.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let pulled = cp(
        &env,
        &[
            &format!("@lab:{}", root.join("missing").display()),
            logs.to_str().unwrap(),
        ],
    );
    assert_eq!(pulled.status.code(), Some(255), "{}", stderr_of(&pulled));
    assert_eq!(
        stderr_of(&pulled).lines().last(),
        Some("ctl: 4 of 4 hosts failed: connect: 127.0.0.5; no-such-file: 127.0.0.[2-4]")
    );
}

#[test]
fn a_copy_as_another_user_is_checked_and_owned_as_that_user() {
    if !running_as_root() {
        skipped(
            "a_copy_as_another_user_is_checked_and_owned_as_that_user",
            "the agent must run as root to copy as another user",
        );
        return;
    }
    let env = Env::new();
    // The temporary directories must be reachable by the other user.
    std::fs::set_permissions(env.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        env.agent_dir.join("agent.toml"),
        "[run_as]\ntester = [\"nobody\"]\n",
    )
    .unwrap();
    let agent = env.agent();
    let nobody: u32 = stdout_of(&Command::new("id").args(["-u", "nobody"]).output().unwrap())
        .trim()
        .parse()
        .unwrap();
    let root = env.root.path();
    let source = root.join("note");
    std::fs::write(&source, b"for nobody").unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o644)).unwrap();
    let theirs = root.join("theirs");
    let locked = root.join("locked");
    for dir in [&theirs, &locked] {
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::os::unix::fs::chown(&theirs, Some(nobody), None).unwrap();
    let as_nobody = |path: &Path| format!("nobody@{}:{}", agent.target(), path.display());

    let out = cp(&env, &[source.to_str().unwrap(), &as_nobody(&theirs)]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let meta = std::fs::metadata(theirs.join("note")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        nobody,
        "the new file is theirs"
    );

    let out = cp(&env, &[source.to_str().unwrap(), &as_nobody(&locked)]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr_of(&out).contains("permission-denied"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0);

    let secret = root.join("secret");
    std::fs::write(&secret, b"root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let back = root.join("back");
    std::fs::create_dir(&back).unwrap();
    let out = cp(&env, &[&as_nobody(&secret), back.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr_of(&out).contains("permission-denied"),
        "{}",
        stderr_of(&out)
    );

    // Keeping owners needs a copy that runs as root.
    let out = cp(&env, &["-p", source.to_str().unwrap(), &as_nobody(&theirs)]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr_of(&out).contains("needs a copy that runs as root"),
        "{}",
        stderr_of(&out)
    );

    // The agent's own identity is untouched: root still copies anywhere.
    let out = cp(&env, &[source.to_str().unwrap(), &remote(&agent, &locked)]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let refused = cp(
        &env,
        &[
            source.to_str().unwrap(),
            &format!("daemon@{}:{}", agent.target(), theirs.display()),
        ],
    );
    assert_eq!(refused.status.code(), Some(255));
    assert!(
        stderr_of(&refused).contains("may not run commands as"),
        "{}",
        stderr_of(&refused)
    );
    assert!(
        agent.wait_for_log("user=\"nobody\"").is_some(),
        "{}",
        agent.log()
    );
}

#[test]
fn dash_p_keeps_numeric_owners_when_the_copy_runs_as_root() {
    if !running_as_root() {
        skipped(
            "dash_p_keeps_numeric_owners_when_the_copy_runs_as_root",
            "keeping owners needs root",
        );
        return;
    }
    let env = Env::new();
    let agent = env.agent();
    let root = env.root.path();
    let src = root.join("owned");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("file"), b"x").unwrap();
    std::os::unix::fs::symlink("file", src.join("link")).unwrap();
    for entry in [src.join("file"), src.clone()] {
        std::os::unix::fs::chown(&entry, Some(4321), Some(8765)).unwrap();
    }
    std::os::unix::fs::lchown(src.join("link"), Some(4322), Some(8766)).unwrap();
    let ids = |path: &Path| {
        let meta = std::fs::symlink_metadata(path).unwrap();
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            std::os::unix::fs::MetadataExt::gid(&meta),
        )
    };
    let (kept, plain) = (root.join("kept"), root.join("plain"));
    std::fs::create_dir(&kept).unwrap();
    std::fs::create_dir(&plain).unwrap();
    let out = cp(
        &env,
        &["-r", "-p", src.to_str().unwrap(), &remote(&agent, &kept)],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(ids(&kept.join("owned/file")), (4321, 8765));
    assert_eq!(ids(&kept.join("owned")), (4321, 8765));
    assert_eq!(ids(&kept.join("owned/link")), (4322, 8766));
    // Without -p a new file belongs to whom the copy ran as.
    let out = cp(
        &env,
        &["-r", src.to_str().unwrap(), &remote(&agent, &plain)],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(ids(&plain.join("owned/file")), (0, 0));
    // Pulling with -p keeps them on this side too.
    let back = root.join("back");
    std::fs::create_dir(&back).unwrap();
    let out = cp(
        &env,
        &[
            "-r",
            "-p",
            &remote(&agent, &kept.join("owned")),
            back.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(ids(&back.join("owned/file")), (4321, 8765));
}
