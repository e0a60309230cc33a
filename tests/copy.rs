//! `ctl cp` against real agents: byte-exact round trips, trees with odd
//! names, many hosts, and the failures that must leave the old file and no
//! temporary behind.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::checks::{env_with_fleet, new_file, take_down_last};
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

/// `@lab:PATH`: `path` on every host of the fleet's group.
fn at_lab(path: &Path) -> String {
    format!("@lab:{}", path.display())
}

/// An env and agent for a copy as another user: `tester` may run as the
/// users of `run_as` (a TOML list), and the temporary directories are
/// reachable by them. None, the test skipped, unless we are root.
fn copying_as_another_user(test: &str, run_as: &str) -> Option<(Env, Agent)> {
    if !root_or_skip(test, "the agent must run as root to copy as another user") {
        return None;
    }
    let env = Env::new();
    std::fs::set_permissions(env.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.write_agent_config(format!("[run_as]\ntester = {run_as}\n"));
    let agent = env.agent();
    Some((env, agent))
}

/// The user id of `user`, as `id -u` says.
fn uid_of(user: &str) -> u32 {
    stdout_of(&Command::new("id").args(["-u", user]).output().unwrap())
        .trim()
        .parse()
        .unwrap()
}

/// A sparse file of `len` bytes: large to send, cheap to make.
fn sparse(path: PathBuf, len: u64) -> PathBuf {
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    path
}

/// The directory `root/NAME`, holding a file `big` that says "the old
/// file", for the copies that must leave it as it was.
fn dir_with_old_file(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("big"), b"the old file").unwrap();
    dir
}

/// Waits until a copy's temporary shows in `dir`: the transfer started.
#[track_caller]
fn wait_for_a_temporary(dir: &Path) {
    assert!(
        wait_until(DEADLINE, || !temporaries(dir).is_empty()),
        "the transfer started"
    );
}

/// `ctl cp ARGS...` started, stdout and stderr piped.
fn cp_piped(env: &Env, args: &[&str]) -> std::process::Child {
    env.ctl()
        .arg("cp")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// An agent, a sparse 2 GiB `big` and the directory `NAME` holding the
/// old file: the start of a copy that is cut short.
fn a_big_copy_and_an_old_file_in(name: &str) -> (Env, Agent, PathBuf, PathBuf) {
    let (env, agent) = Env::with_agent();
    let root = env.root.path();
    let source = sparse(root.join("big"), 2 << 30);
    let dir = dir_with_old_file(root, name);
    (env, agent, source, dir)
}

/// `ctl cp FROM TO` started, its stderr discarded.
fn cp_started(env: &Env, from: &str, to: &str) -> std::process::Child {
    env.ctl()
        .args(["cp", from, to])
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
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
    let (env, agent) = Env::with_agent();
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
    let (env, agent) = Env::with_agent();
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

    let there = new_dir(root, "there");
    let pushed = cp(
        &env,
        &["-r", src.to_str().unwrap(), &remote(&agent, &there)],
    );
    assert!(pushed.status.success(), "{}", stderr_of(&pushed));
    assert_eq!(listing(&there.join("tree")), listing(&src));

    let back = new_dir(root, "back");
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
    assert_failed_saying(&refused, 255, "-r");
}

#[test]
fn push_to_ten_hosts_and_pull_from_them_without_collisions() {
    let (env, fleet) = env_with_fleet(10);
    let root = env.root.path();
    let script = new_file(root, "deploy.sh", b"#!/bin/sh\necho deployed\n");
    let dest = new_dir(root, "deployed");
    let pushed = cp(&env, &["--json", script.to_str().unwrap(), &at_lab(&dest)]);
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
    assert_file(dest.join("deploy.sh"), b"#!/bin/sh\necho deployed\n");

    let logs = new_dir(root, "logs");
    let pulled = cp(
        &env,
        &[&at_lab(&dest.join("deploy.sh")), logs.to_str().unwrap()],
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
    // The group with all but one host excluded, and a range of one host:
    // still one directory per host, as the script that pulled from ten
    // expects.
    for (targets, exclude) in [("@lab", Some("127.0.0.[3-11]")), ("127.0.0.[2]", None)] {
        let one = new_dir(root, &format!("one-{}", exclude.is_some()));
        let source = format!("{targets}:{}", dest.join("deploy.sh").display());
        let mut args = vec![source.as_str(), one.to_str().unwrap()];
        if let Some(exclude) = exclude {
            args.extend(["-x", exclude]);
        }
        let pulled = cp(&env, &args);
        assert!(pulled.status.success(), "{targets}: {}", stderr_of(&pulled));
        assert_file(
            one.join("127.0.0.2").join("deploy.sh"),
            b"#!/bin/sh\necho deployed\n",
        );
    }
}

#[test]
fn a_client_killed_mid_push_leaves_the_old_file_and_no_temporary() {
    let (env, agent, source, dest_dir) = a_big_copy_and_an_old_file_in("dest");
    let mut ctl = cp_started(&env, source.to_str().unwrap(), &remote(&agent, &dest_dir));
    wait_for_a_temporary(&dest_dir);
    ctl.kill().unwrap();
    ctl.wait().unwrap();
    agent.expect_log("client gone");
    assert_file(dest_dir.join("big"), b"the old file");
    assert!(wait_until(DEADLINE, || temporaries(&dest_dir).is_empty()));
    // The agent serves on.
    assert_eq!(stdout_of(&env.exec(&agent, &["echo alive"])), "alive\n");
}

#[test]
fn an_interrupted_pull_leaves_the_old_file_and_no_temporary() {
    let (env, agent, source, back) = a_big_copy_and_an_old_file_in("back");
    // Ctrl-C, or a script's SIGTERM or SIGHUP: ctl stops, cleans up after
    // itself before it exits, and exits as a shell reports that signal.
    for (signal, code) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        let mut ctl = cp_started(&env, &remote(&agent, &source), back.to_str().unwrap());
        wait_for_a_temporary(&back);
        send_signal(ctl.id(), signal);
        let status = ctl.wait().unwrap();
        assert_eq!(status.code(), Some(code), "SIG{signal}");
        assert_file(back.join("big"), b"the old file");
        assert_eq!(temporaries(&back), Vec::<PathBuf>::new(), "SIG{signal}");
    }
}

/// A small file system of our own, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    /// A tmpfs mounted at `at`, or `test` said skipped where this machine
    /// cannot mount one.
    fn tmpfs(at: &Path, options: &str, test: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            skipped(test, "cannot mount a tmpfs here (needs root)");
        }
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
    let (env, agent) = Env::with_agent();
    let root = env.root.path();
    let Some(small) = Mount::tmpfs(&root.join("small"), "size=1m", test_name!()) else {
        return;
    };
    std::fs::write(small.0.join("file"), b"old contents").unwrap();
    // Far larger than the disk: ctl is still sending when the agent
    // refuses and closes, and must still read the agent's reason.
    let source = sparse(root.join("file"), 256 << 20);
    let out = cp(&env, &[source.to_str().unwrap(), &remote(&agent, &small.0)]);
    assert_eq!(out.status.code(), Some(255));
    let err = stderr_of(&out);
    assert!(
        err.contains("write-failed") && err.contains("no space left on the device"),
        "{err}"
    );
    assert_file(small.0.join("file"), b"old contents");
    assert!(
        temporaries(&small.0).is_empty(),
        "{:?}",
        temporaries(&small.0)
    );
    assert_eq!(stdout_of(&env.exec(&agent, &["echo alive"])), "alive\n");
}

#[test]
fn a_read_only_file_system_and_a_missing_directory_are_clear_errors() {
    let (env, agent) = Env::with_agent();
    let root = env.root.path();
    let source = new_file(root, "f", b"x");

    let out = cp(
        &env,
        &[
            source.to_str().unwrap(),
            &remote(&agent, &root.join("no/such/dir/f")),
        ],
    );
    assert_failed_saying(&out, 255, "no such directory");

    let out = cp(
        &env,
        &[
            &remote(&agent, &root.join("missing")),
            root.to_str().unwrap(),
        ],
    );
    assert_failed_saying(&out, 255, "no-such-file");

    // A file system with the old file on it, then made read-only.
    let Some(ro) = Mount::tmpfs(&root.join("ro"), "size=1m", test_name!()) else {
        return;
    };
    std::fs::write(ro.0.join("f"), b"old contents").unwrap();
    let remounted = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&ro.0)
        .status()
        .is_ok_and(|s| s.success());
    assert!(remounted, "remount the tmpfs read-only");
    let out = cp(&env, &[source.to_str().unwrap(), &remote(&agent, &ro.0)]);
    assert_failed_saying(&out, 255, "read-only file system");
    assert_file(ro.0.join("f"), b"old contents");
    assert_eq!(temporaries(&ro.0), Vec::<PathBuf>::new());
}

/// `max_copy_bytes`, as the README says: a file larger than the limit is
/// refused before anything is written; a push announces no total, so a
/// tree stops at the file that would pass it, and the files before stay.
#[test]
fn a_size_limit_refuses_a_large_file_before_writing_and_stops_a_tree_at_it() {
    let (env, agent) = Env::with_agent_flags(&["--max-copy-bytes", "1000"]);
    let root = env.root.path();
    let source = new_file(root, "big", vec![1u8; 2000]);
    let dest = new_dir(root, "dest");
    let out = cp(&env, &[source.to_str().unwrap(), &remote(&agent, &dest)]);
    assert_failed_saying(&out, 255, "too-large");
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);

    let tree = new_dir(root, "tree");
    std::fs::write(tree.join("a"), vec![1u8; 600]).unwrap();
    std::fs::write(tree.join("b"), vec![2u8; 600]).unwrap();
    let out = cp(
        &env,
        &["-r", tree.to_str().unwrap(), &remote(&agent, &dest)],
    );
    assert_failed_saying(&out, 255, "too-large");
    assert_file(dest.join("tree/a"), &[1u8; 600]);
    assert!(!dest.join("tree/b").exists());
    assert_eq!(temporaries(&dest.join("tree")), Vec::<PathBuf>::new());
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
    pull_with_flags_from_a_fake_agent(env, &[], messages, path, local).await
}

/// `ctl cp FLAGS... AGENT:/PATH local` against a fake agent sending `messages`.
async fn pull_with_flags_from_a_fake_agent(
    env: &Env,
    flags: &[&str],
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
    let mut args = vec!["cp"];
    args.extend_from_slice(flags);
    args.extend([remote.as_str(), local.to_str().unwrap()]);
    let out = ctl_output_off_the_runtime(env, &args).await;
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
    assert_failed_saying(&out, 255, "refusing entry name");
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
    let local = new_dir(env.root.path(), "local");
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
    assert_failed_saying(&out, 255, "checksum");
    assert_file(local.join("x"), b"old");
    assert_eq!(temporaries(&local), Vec::<PathBuf>::new());
}

/// Copies to and from several hosts end like `ctl exec` on several: every
/// host that can is served, the failed ones are named in one summary line,
/// and the exit status is the worst.
#[test]
fn a_copy_to_several_hosts_names_the_ones_that_failed() {
    let (env, mut fleet) = env_with_fleet(4);
    // 127.0.0.5 goes down: its port refuses connections.
    take_down_last(&mut fleet);
    let root = env.root.path();
    let file = new_file(root, "app.conf", b"setting = 1\n");
    let dest = new_dir(root, "etc");

    let pushed = cp(&env, &["--json", file.to_str().unwrap(), &at_lab(&dest)]);
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
    assert_file(dest.join("app.conf"), b"setting = 1\n");

    // A path missing on every host that answers: each is named, with why.
    let logs = new_dir(root, "logs");
    let pulled = cp(
        &env,
        &[&at_lab(&root.join("missing")), logs.to_str().unwrap()],
    );
    assert_eq!(pulled.status.code(), Some(255), "{}", stderr_of(&pulled));
    assert_eq!(
        stderr_of(&pulled).lines().last(),
        Some("ctl: 4 of 4 hosts failed: connect: 127.0.0.5; no-such-file: 127.0.0.[2-4]")
    );
}

#[test]
fn a_copy_as_another_user_is_checked_and_owned_as_that_user() {
    // root first: a listed client runs as no one else, by default the first.
    let Some((env, agent)) = copying_as_another_user(
        "a_copy_as_another_user_is_checked_and_owned_as_that_user",
        r#"["root", "nobody"]"#,
    ) else {
        return;
    };
    let nobody = uid_of("nobody");
    let root = env.root.path();
    let source = new_file(root, "note", b"for nobody");
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
    assert_failed_saying(&out, 255, "permission-denied");
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0);

    let secret = new_file(root, "secret", b"root only");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let back = new_dir(root, "back");
    let out = cp(&env, &[&as_nobody(&secret), back.to_str().unwrap()]);
    assert_failed_saying(&out, 255, "permission-denied");

    // Keeping owners needs a copy that runs as root.
    let out = cp(&env, &["-p", source.to_str().unwrap(), &as_nobody(&theirs)]);
    assert_failed_saying(&out, 255, "needs a copy that runs as root");

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
    assert_failed_saying(&refused, 255, "may not run commands as");
    agent.expect_log("user=\"nobody\"");
}

#[test]
fn dash_p_keeps_numeric_owners_when_the_copy_runs_as_root() {
    require_root!("keeping owners needs root");
    let (env, agent) = Env::with_agent();
    let root = env.root.path();
    let src = new_dir(root, "owned");
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
    let back = new_dir(root, "back");
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

// ---- Modes of directories --------------------------------------------------

/// The permission bits of `path` (set-id and sticky bits included).
fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// As with cp and scp, a tree copied over directories that exist leaves
/// their modes alone: `ctl cp -r ./home root@h:/` keeps a private home
/// private and `ctl cp -r ./tmp h:/` keeps /tmp's sticky bit. Only -p
/// gives them the sender's.
#[test]
fn an_existing_directory_keeps_its_mode_unless_dash_p() {
    let (env, agent) = Env::with_agent();
    let root = env.root.path();
    let src = new_dir(root, "home");
    for dir in ["alice", "tmp"] {
        new_dir(&src, dir);
        set_mode(&src.join(dir), 0o755);
    }
    std::fs::write(src.join("alice/notes"), b"notes").unwrap();
    let dest = new_dir(root, "dest");
    let home = new_dir(&dest, "home");
    let (alice, tmp) = (new_dir(&home, "alice"), new_dir(&home, "tmp"));
    set_mode(&alice, 0o700);
    set_mode(&tmp, 0o1777);
    set_mode(&home, 0o711);

    let out = cp(&env, &["-r", src.to_str().unwrap(), &remote(&agent, &dest)]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_file(alice.join("notes"), b"notes");
    assert_eq!(mode_of(&alice), 0o700);
    assert_eq!(mode_of(&tmp), 0o1777);
    assert_eq!(mode_of(&home), 0o711);

    if running_as_root() {
        let out = cp(
            &env,
            &["-r", "-p", src.to_str().unwrap(), &remote(&agent, &dest)],
        );
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert_eq!(mode_of(&alice), 0o755, "-p gives the sender's mode");
        assert_eq!(mode_of(&tmp), 0o755);
    }
}

/// An agent cannot widen a private local directory by sending it with a
/// wide mode: on a pull too, a directory that exists keeps its mode.
#[tokio::test]
async fn a_pull_leaves_an_existing_local_directory_as_it_was() {
    let env = Env::new();
    let local = new_dir(env.root.path(), "local");
    let private = new_dir(&local, "private");
    set_mode(&private, 0o700);
    let messages = fake_copy(vec![
        header_only(rexec_protocol::FileHeader {
            mode: 0o777,
            ..dir_header(b"private")
        }),
        file_messages(file_header(b"private/x", 1), b"x"),
    ]);
    let out =
        pull_with_flags_from_a_fake_agent(&env, &["-r"], messages, "/srv/private", &local).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_file(private.join("x"), b"x");
    assert_eq!(mode_of(&private), 0o700);
}

/// A tree with read-only directories (a Go module cache, say) copies for
/// a user who is not root: as with cp and scp, each new directory gets
/// its mode only once its entries are written.
#[test]
fn a_tree_with_read_only_directories_copies_as_a_user_who_is_not_root() {
    let Some((env, agent)) = copying_as_another_user(
        "a_tree_with_read_only_directories_copies_as_a_user_who_is_not_root",
        r#"["nobody"]"#,
    ) else {
        return;
    };
    let root = env.root.path();
    let src = new_dir(root, "modcache");
    let pkg = new_dir(&src, "pkg");
    std::fs::write(pkg.join("go.mod"), b"module example.com/pkg\n").unwrap();
    std::fs::write(src.join("README"), b"cache").unwrap();
    set_mode(&pkg.join("go.mod"), 0o444);
    set_mode(&pkg, 0o555);
    set_mode(&src, 0o555);
    let dest = new_dir(root, "dest");
    std::os::unix::fs::chown(&dest, Some(uid_of("nobody")), None).unwrap();
    let as_nobody = format!("nobody@{}:{}", agent.target(), dest.display());

    let out = cp(&env, &["-r", src.to_str().unwrap(), &as_nobody]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let copy = dest.join("modcache");
    assert_file(copy.join("pkg/go.mod"), b"module example.com/pkg\n");
    assert_file(copy.join("README"), b"cache");
    assert_eq!(mode_of(&copy), 0o555);
    assert_eq!(mode_of(&copy.join("pkg")), 0o555);
    assert_eq!(mode_of(&copy.join("pkg/go.mod")), 0o444);
}

// ---- Links, names and placement -------------------------------------------

fn link_header(path: &'static [u8], target: &[u8]) -> rexec_protocol::FileHeader {
    rexec_protocol::FileHeader {
        path: bytes::Bytes::from_static(path),
        kind: rexec_protocol::FileKind::Symlink {
            target: bytes::Bytes::copy_from_slice(target),
        },
        mode: 0o777,
        mtime: 0,
        owner: None,
    }
}

fn dir_header(path: &'static [u8]) -> rexec_protocol::FileHeader {
    rexec_protocol::FileHeader {
        path: bytes::Bytes::from_static(path),
        kind: rexec_protocol::FileKind::Directory,
        mode: 0o755,
        mtime: 0,
        owner: None,
    }
}

/// A whole regular file as an agent sends it.
fn file_messages(
    header: rexec_protocol::FileHeader,
    data: &'static [u8],
) -> Vec<rexec_protocol::AgentMessage> {
    use rexec_protocol::{AgentMessage, FileEnd};
    vec![
        AgentMessage::File(header),
        AgentMessage::FileData(bytes::Bytes::from_static(data)),
        AgentMessage::FileEnd(FileEnd {
            blake3: bytes::Bytes::copy_from_slice(blake3::hash(data).as_bytes()),
            changed: false,
        }),
    ]
}

fn fake_hello() -> Vec<rexec_protocol::AgentMessage> {
    vec![
        rexec_protocol::AgentMessage::Hello(rexec_protocol::Hello::new("rexec-agent 0.1.0")),
        rexec_protocol::AgentMessage::CopyStarted { keepalive: None },
    ]
}

/// A whole copy as a fake agent sends it: the hello, the messages of
/// `entries` in order, the end.
fn fake_copy(entries: Vec<Vec<rexec_protocol::AgentMessage>>) -> Vec<rexec_protocol::AgentMessage> {
    let mut messages = fake_hello();
    messages.extend(entries.into_iter().flatten());
    messages.push(rexec_protocol::AgentMessage::CopyEnd);
    messages
}

/// An entry that is its header alone (a directory, a link).
fn header_only(header: rexec_protocol::FileHeader) -> Vec<rexec_protocol::AgentMessage> {
    vec![rexec_protocol::AgentMessage::File(header)]
}

#[tokio::test]
async fn a_hostile_agent_cannot_write_through_a_link_it_sent() {
    let env = Env::new();
    let victim = new_dir(env.root.path(), "victim");
    let victim_path = victim.as_os_str().as_bytes().to_vec();
    let tree = || header_only(dir_header(b"tree"));
    let evil = |path| file_messages(file_header(path, 4), b"evil");
    let attacks = [
        (
            "link, then a file beneath it",
            fake_copy(vec![
                tree(),
                header_only(link_header(b"tree/x", &victim_path)),
                evil(b"tree/x/authorized_keys"),
            ]),
        ),
        (
            "link to the parent",
            fake_copy(vec![
                tree(),
                header_only(link_header(b"tree/up", b"..")),
                evil(b"tree/up/escaped"),
            ]),
        ),
        (
            "link to an absolute path, then a directory and a file beneath",
            fake_copy(vec![
                tree(),
                header_only(link_header(b"tree/abs", &victim_path)),
                header_only(dir_header(b"tree/abs/d")),
                evil(b"tree/abs/d/f"),
            ]),
        ),
    ];
    for (what, messages) in attacks {
        let local = tempfile::tempdir_in(env.root.path()).unwrap();
        let out =
            pull_with_flags_from_a_fake_agent(&env, &["-r"], messages, "/srv/tree", local.path())
                .await;
        assert_eq!(out.status.code(), Some(255), "{what}: {}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("in the way"),
            "{what}: {}",
            stderr_of(&out)
        );
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0, "{what}");
        assert!(!local.path().join("escaped").exists(), "{what}");
        assert!(!env.root.path().join("escaped").exists(), "{what}");
    }
}

/// The scp CVE-2019-6111 pattern: asked for one file, an agent also sends
/// `.bashrc`, `.ssh/authorized_keys` and a set-uid tool. ctl writes none
/// of them; the one it asked for loses its set-id bits without -p.
#[tokio::test]
async fn a_pull_takes_only_the_entry_it_asked_for_and_drops_set_id_bits() {
    use rexec_protocol::AgentMessage;

    let env = Env::new();
    let extras: Vec<Vec<AgentMessage>> = vec![
        file_messages(file_header(b".bashrc", 4), b"evil"),
        [
            header_only(dir_header(b".ssh")),
            file_messages(file_header(b".ssh/authorized_keys", 4), b"evil"),
        ]
        .concat(),
        file_messages(
            rexec_protocol::FileHeader {
                mode: 0o6755,
                ..file_header(b"suid-tool", 4)
            },
            b"evil",
        ),
        // Children of a file, and a second copy of the top.
        file_messages(file_header(b"syslog/inside", 4), b"evil"),
        file_messages(file_header(b"syslog", 4), b"evil"),
    ];
    for extra in extras {
        let local = tempfile::tempdir_in(env.root.path()).unwrap();
        let messages = fake_copy(vec![
            file_messages(file_header(b"syslog", 3), b"log"),
            extra,
        ]);
        let out = pull_from_a_fake_agent(&env, messages, "/var/log/syslog", local.path()).await;
        assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("protocol error") && stderr_of(&out).contains("not asked for")
                || stderr_of(&out).contains("twice"),
            "{}",
            stderr_of(&out)
        );
        for name in [".bashrc", ".ssh", "suid-tool"] {
            assert!(!local.path().join(name).exists(), "{name}");
        }
        assert_file(local.path().join("syslog"), b"log");
    }

    let local = tempfile::tempdir_in(env.root.path()).unwrap();
    let messages = fake_copy(vec![file_messages(
        rexec_protocol::FileHeader {
            mode: 0o6755,
            ..file_header(b"tool", 4)
        },
        b"tool",
    )]);
    let out = pull_from_a_fake_agent(&env, messages, "/usr/bin/tool", local.path()).await;
    assert!(out.status.success(), "{}", stderr_of(&out));
    let mode = std::fs::metadata(local.path().join("tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
}

/// An agent that ends a pull without sending what was asked for (an
/// honest one sends it or says why not) fails the copy as a protocol
/// error, rather than reporting a success of 0 entries.
#[tokio::test]
async fn a_pull_that_receives_no_entry_is_a_protocol_error() {
    let env = Env::new();
    let local = new_dir(env.root.path(), "local");
    let out = pull_from_a_fake_agent(&env, fake_copy(vec![]), "/var/log/syslog", &local).await;
    assert_failed_saying(&out, 255, "protocol error");
    let err = stderr_of(&out);
    assert!(
        err.lines().next().is_some_and(
            |line| line.starts_with("ctl: ") && line.contains("without sending \"syslog\"")
        ),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&local).unwrap().count(), 0);
}

/// Someone else plants `LOCAL_DIR/HOST -> /victim` before a pull from
/// several hosts: that host's copy is refused, the others land.
#[test]
fn a_planted_link_as_a_host_directory_is_not_followed() {
    let (env, fleet) = env_with_fleet(2);
    let root = env.root.path();
    let source = new_file(root, "syslog", b"log\n");
    let victim = new_dir(root, "victim");
    let logs = new_dir(root, "logs");
    std::os::unix::fs::symlink(&victim, logs.join(&fleet.hosts[0])).unwrap();
    let out = cp(&env, &[&at_lab(&source), logs.to_str().unwrap()]);
    assert_failed_saying(&out, 255, "in the way");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    assert_file(logs.join(&fleet.hosts[1]).join("syslog"), b"log\n");
}

/// `ctl cp -r one/A two/A HOST:/DEST/` where `one/A/s` is a link to a
/// victim directory and `two/A/s/pwned` a file: two sources of one name
/// are refused before any host, as they would land on one path (and the
/// agent never writes through a link the stream placed either: the
/// writer's unit tests).
#[test]
fn two_sources_of_one_name_are_refused_before_anything_is_written() {
    let (env, agent) = Env::with_agent();
    let root = env.root.path();
    let victim = new_dir(root, "victim");
    std::fs::create_dir_all(root.join("one/A")).unwrap();
    std::os::unix::fs::symlink(&victim, root.join("one/A/s")).unwrap();
    std::fs::create_dir_all(root.join("two/A/s")).unwrap();
    std::fs::write(root.join("two/A/s/pwned"), b"pwned").unwrap();
    let dest = new_dir(root, "dest");
    let out = cp(
        &env,
        &[
            "-r",
            root.join("one/A").to_str().unwrap(),
            root.join("two/A").to_str().unwrap(),
            &format!("{}/", remote(&agent, &dest)),
        ],
    );
    assert_failed_saying(&out, 255, "have the same name");
    assert!(!victim.join("pwned").exists());
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    // Two files called x: the second would have replaced the first.
    std::fs::write(root.join("one/x"), b"A").unwrap();
    std::fs::write(root.join("two/x"), b"B").unwrap();
    let out = cp(
        &env,
        &[
            root.join("one/x").to_str().unwrap(),
            root.join("two/x").to_str().unwrap(),
            &remote(&agent, &dest),
        ],
    );
    assert_failed_saying(&out, 255, "have the same name");
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
}

/// Several sources need a directory that exists, as with cp: a file at
/// the destination is left as it was, and a missing one is not made.
#[test]
fn several_sources_to_a_path_that_is_no_directory_write_nothing() {
    let (env, agent) = Env::with_agent();
    let root = env.root.path();
    let first = new_file(root, "first.txt", b"first\n");
    let second = new_file(root, "second.txt", b"second\n");
    let dest = new_dir(root, "dest");
    let plain = new_file(&dest, "plain", b"precious\n");
    let missing = dest.join("missing");
    for (target, said) in [
        (&plain, format!("{}/ is not a directory", plain.display())),
        (
            &missing,
            format!("no such directory: {}/", missing.display()),
        ),
    ] {
        let out = cp(
            &env,
            &[
                first.to_str().unwrap(),
                second.to_str().unwrap(),
                &remote(&agent, target),
            ],
        );
        assert_failed_saying(&out, 255, &said);
    }
    assert_file(&plain, b"precious\n");
    assert!(!missing.exists());
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 1);
}

/// A push into a directory others can write, where someone planted
/// `site -> /victim`: the tree does not go into /victim, whose mode stays.
#[test]
fn a_push_never_follows_a_link_planted_in_a_shared_directory() {
    let (env, agent) = Env::with_agent();
    let root = env.root.path();
    let victim = new_dir(root, "victim");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
    let shared = new_dir(root, "shared");
    std::os::unix::fs::symlink(&victim, shared.join("site")).unwrap();
    let site = new_dir(root, "site");
    std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(site.join("index.html"), b"hello").unwrap();
    let out = cp(
        &env,
        &["-r", site.to_str().unwrap(), &remote(&agent, &shared)],
    );
    assert_failed_saying(&out, 255, "in the way");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// A root push with -p into a directory another user can write: they swap
/// the temporary for a link to a root-only file while it is written. The
/// owner change goes to what was written, never through the link.
#[test]
fn a_swapped_temporary_never_changes_what_it_points_to() {
    require_root!("keeping owners needs root");
    let (env, agent) = Env::with_agent();
    let root = env.root.path();
    let shadow = new_file(root, "shadow", b"root:secret");
    std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o600)).unwrap();
    let source = sparse(root.join("big"), 2 << 30);
    std::os::unix::fs::chown(&source, Some(4321), Some(4321)).unwrap();
    let shared = new_dir(root, "shared");
    let ctl = cp_piped(
        &env,
        &["-p", source.to_str().unwrap(), &remote(&agent, &shared)],
    );
    wait_for_a_temporary(&shared);
    let temp = temporaries(&shared).remove(0);
    let swap = shared.join("swap");
    std::os::unix::fs::symlink(&shadow, &swap).unwrap();
    std::fs::rename(&swap, &temp).unwrap();
    let out = ctl.wait_with_output().unwrap();
    assert_failed_saying(&out, 255, "replaced");
    let meta = std::fs::metadata(&shadow).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_file(&shadow, b"root:secret");
}

/// The README's `ctl cp app.conf web1:/etc/app/app.conf`, and its pull
/// counterpart: the file becomes the new name, whether it exists or not;
/// a missing parent or a `NAME/` that is no directory is a clear error.
#[test]
fn a_file_copied_to_a_new_name_becomes_that_name() {
    let (env, fleet) = env_with_fleet(2);
    let agent = fleet.agent(&fleet.hosts[0]);
    let root = env.root.path();
    let conf = new_file(root, "local.conf", b"setting = 1\n");
    let etc = root.join("etc/app");
    std::fs::create_dir_all(&etc).unwrap();
    for exists in [false, true] {
        let target = etc.join("app.conf");
        if exists {
            std::fs::write(&target, b"old\n").unwrap();
        }
        let out = cp(&env, &[conf.to_str().unwrap(), &remote(agent, &target)]);
        assert!(out.status.success(), "exists {exists}: {}", stderr_of(&out));
        assert_file(&target, b"setting = 1\n");
        assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 1);
        std::fs::remove_file(&target).unwrap();
    }
    // To several hosts, each gets the new name.
    let out = cp(
        &env,
        &[conf.to_str().unwrap(), &at_lab(&etc.join("multi.conf"))],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_file(etc.join("multi.conf"), b"setting = 1\n");

    // Pull from one host to a new name, existing or not.
    let back = new_dir(root, "back");
    for exists in [false, true] {
        let target = back.join("copy.conf");
        if exists {
            std::fs::write(&target, b"old\n").unwrap();
        }
        let out = cp(&env, &[&remote(agent, &conf), target.to_str().unwrap()]);
        assert!(out.status.success(), "exists {exists}: {}", stderr_of(&out));
        assert_file(&target, b"setting = 1\n");
    }
    assert_eq!(temporaries(&back), Vec::<PathBuf>::new());

    // Errors: a missing parent, a NAME/ that is not a directory, a new
    // name for a pull from several hosts.
    let out = cp(
        &env,
        &[
            conf.to_str().unwrap(),
            &format!("{}/", remote(agent, &etc.join("nodir"))),
        ],
    );
    assert_failed_saying(&out, 255, "no such directory");
    let out = cp(
        &env,
        &[
            &remote(agent, &conf),
            back.join("no/such/x").to_str().unwrap(),
        ],
    );
    assert_failed_saying(&out, 255, "no such directory");
    let out = cp(
        &env,
        &[&at_lab(&conf), back.join("new-name").to_str().unwrap()],
    );
    assert_failed_saying(&out, 255, "not a directory");
    assert!(!back.join("new-name").exists());
}

/// Any name a directory can hold copies, both ways, a tree's too: the
/// temporary name beside it is cut short to fit in 255 bytes.
#[test]
fn a_name_of_250_bytes_copies_both_ways() {
    let (env, agent) = Env::with_agent();
    let root = env.root.path();
    // Two-byte characters: the cut may fall inside one.
    let name = "\u{e9}".repeat(125);
    let source = new_file(root, &name, b"a long name");
    let tree = new_dir(root, "tree");
    std::fs::write(tree.join(&name), b"in a tree").unwrap();
    let (there, back) = (new_dir(root, "there"), new_dir(root, "back"));
    for from in [&source, &tree] {
        let out = cp(
            &env,
            &["-r", from.to_str().unwrap(), &remote(&agent, &there)],
        );
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    assert_file(there.join(&name), b"a long name");
    assert_file(there.join("tree").join(&name), b"in a tree");
    for from in [there.join(&name), there.join("tree")] {
        let out = cp(
            &env,
            &["-r", &remote(&agent, &from), back.to_str().unwrap()],
        );
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    assert_file(back.join(&name), b"a long name");
    assert_file(back.join("tree").join(&name), b"in a tree");
    assert!(temporaries(&there).is_empty() && temporaries(&back).is_empty());
}

// ---- Time, silence, changing files, privileges -----------------------------

/// `--timeout` bounds the whole copy, connecting included, in both
/// directions: 124, as for exec, and the old file stays with no temporary.
/// A connect timeout far above the deadline shows it is not added in.
#[test]
fn a_copy_timeout_bounds_the_whole_copy() {
    let (env, agent, source, dest) = a_big_copy_and_an_old_file_in("dest");
    let root = env.root.path();
    let within_a_second = |args: &[&str]| {
        let limits = ["--timeout", "1s", "--connect-timeout", "60s"];
        cp(&env, &[&limits[..], args].concat())
    };
    let out = within_a_second(&["--json", source.to_str().unwrap(), &remote(&agent, &dest)]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr_of(&out));
    let record = &json_lines(&out)[0];
    assert_eq!(record["error"]["kind"], "deadline", "{record}");
    assert!(wait_until(DEADLINE, || temporaries(&dest).is_empty()));
    assert_file(dest.join("big"), b"the old file");

    let back = new_dir(root, "back");
    let out = within_a_second(&[&remote(&agent, &source), back.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr_of(&out));
    assert_eq!(temporaries(&back), Vec::<PathBuf>::new());
    assert!(!back.join("big").exists());

    // 0 is no limit, as for exec and GNU timeout.
    let small = new_file(root, "small", b"x");
    let push_small_within = |timeout: &str| {
        cp(
            &env,
            &[
                "--timeout",
                timeout,
                small.to_str().unwrap(),
                &remote(&agent, &dest),
            ],
        )
    };
    let out = push_small_within("0");
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_file(dest.join("small"), b"x");

    // The largest value a duration can hold is refused at parse time, in
    // one line, as every duration flag of ctl's: no overflow, no panic.
    let out = push_small_within("18446744073709551615s");
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    assert_eq!(stderr_of(&out).lines().count(), 1, "{}", stderr_of(&out));
}

/// An agent that stops answering mid-copy (here: SIGSTOP) is given up on
/// by exec's silence rule, in both directions, instead of waited for
/// forever; the old file stays and ctl leaves no temporary.
#[test]
fn a_copy_gives_up_on_an_agent_that_falls_silent() {
    let (env, agent) =
        Env::with_agent_flags(&["--keepalive-interval", "200ms", "--keepalive-count", "3"]);
    let root = env.root.path();
    let source = sparse(root.join("big"), 4 << 30);
    let back = dir_with_old_file(root, "back");
    let dest = new_dir(root, "dest");
    let pull = cp_piped(&env, &[&remote(&agent, &source), back.to_str().unwrap()]);
    let push = |ctl: std::process::Child, watched: &Path| {
        wait_for_a_temporary(watched);
        agent.signal("STOP");
        let mut ctl = ctl;
        let ended = wait_until(DEADLINE, || ctl.try_wait().unwrap().is_some());
        agent.signal("CONT");
        if !ended {
            let _ = ctl.kill();
        }
        let out = ctl.wait_with_output().unwrap();
        assert!(ended, "ctl still waits for a silent agent");
        out
    };
    let out = push(pull, &back);
    assert_failed_saying(&out, 255, "no sign of life");
    assert_file(back.join("big"), b"the old file");
    assert_eq!(temporaries(&back), Vec::<PathBuf>::new());

    let pushing = cp_piped(&env, &[source.to_str().unwrap(), &remote(&agent, &dest)]);
    let out = push(pushing, &dest);
    assert_failed_saying(&out, 255, "no sign of life");
    assert!(wait_until(DEADLINE, || temporaries(&dest).is_empty()));
}

/// The README's `/var/log/syslog` case: a file that grows while it is
/// copied. Both directions copy what was there when the copy began, exit
/// 0 and say so in `--json`.
#[test]
fn a_file_that_grows_during_the_copy_is_copied_as_it_was_and_flagged() {
    let (env, agent) = Env::with_agent();
    let root = env.root.path();
    let size: u64 = 512 << 20;
    let log = sparse(root.join("syslog"), size);
    let append = || {
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            &[b'x'; 4096],
        )
        .unwrap();
    };
    let back = new_dir(root, "back");
    let dest = new_dir(root, "dest");
    for (args, watched, copy) in [
        (
            vec![remote(&agent, &log), back.display().to_string()],
            back.clone(),
            back.join("syslog"),
        ),
        (
            vec![log.display().to_string(), remote(&agent, &dest)],
            dest.clone(),
            dest.join("syslog"),
        ),
    ] {
        let before = std::fs::metadata(&log).unwrap().len();
        let ctl = env
            .ctl()
            .args(["cp", "--json"])
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_a_temporary(&watched);
        append();
        let out = ctl.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        let record = &json_lines(&out)[0];
        assert_eq!(record["changed"], serde_json::json!(["syslog"]), "{record}");
        assert_eq!(record["bytes"], before, "{record}");
        assert_eq!(std::fs::metadata(&copy).unwrap().len(), before);
    }
}

/// Files of /proc say their size is 0 and have content: copied whole.
#[test]
fn a_proc_file_is_copied_whole() {
    let (env, agent) = Env::with_agent();
    let back = new_dir(env.root.path(), "back");
    let out = cp(
        &env,
        &[
            &format!("{}:/proc/self/status", agent.target()),
            back.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = std::fs::read_to_string(back.join("status")).unwrap();
    assert!(
        text.starts_with("Name:") && text.contains("\nPid:"),
        "{text}"
    );
}

/// A pull of a FIFO is refused at once, without waiting for a writer, and
/// holds no slot: with one copy allowed per client, every later request
/// is served.
#[test]
fn a_pull_of_a_fifo_is_refused_at_once_and_holds_no_slot() {
    let (env, agent) = Env::with_agent_flags(&["--max-execs-per-client", "1"]);
    let root = env.root.path();
    let fifo = root.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let back = new_dir(root, "back");
    for _ in 0..3 {
        let out = cp(&env, &[&remote(&agent, &fifo), back.to_str().unwrap()]);
        assert_failed_saying(&out, 255, "not a regular file, directory or link");
    }
    assert_eq!(std::fs::read_dir(&back).unwrap().count(), 0);
    assert_eq!(stdout_of(&env.exec(&agent, &["echo alive"])), "alive\n");
}

/// A copy as `nobody` can read nothing nobody cannot: not a file under a
/// root-only directory reached through a root process's `/proc/PID/cwd`
/// (the agent's other capabilities are dropped for the copy).
#[test]
fn a_copy_as_another_user_cannot_reach_through_a_root_process() {
    let Some((env, agent)) = copying_as_another_user(
        "a_copy_as_another_user_cannot_reach_through_a_root_process",
        r#"["nobody"]"#,
    ) else {
        return;
    };
    let root = env.root.path();
    let hidden = root.join("root-only");
    let inner = hidden.join("inner");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(inner.join("secret.txt"), b"root's secret").unwrap();
    std::fs::set_permissions(
        inner.join("secret.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // A root process whose working directory is inside.
    let mut holder = Command::new("sleep")
        .arg("600")
        .current_dir(&inner)
        .spawn()
        .unwrap();
    let back = new_dir(root, "back");
    let through = format!("/proc/{}/cwd/secret.txt", holder.id());
    let out = cp(
        &env,
        &[
            &format!("nobody@{}:{through}", agent.target()),
            back.to_str().unwrap(),
        ],
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert_failed_saying(&out, 255, "permission-denied");
    assert!(!back.join("secret.txt").exists());
}

/// The copy runs on a thread of the root agent, which /proc would show as
/// its own process (readable by it whatever its user): refused there, and
/// nothing is reached through a magic link such as `/proc/self/root`.
#[test]
fn a_copy_as_another_user_cannot_read_the_agents_own_process() {
    let Some((env, agent)) = copying_as_another_user(
        "a_copy_as_another_user_cannot_read_the_agents_own_process",
        r#"["nobody"]"#,
    ) else {
        return;
    };
    let back = new_dir(env.root.path(), "back");
    for path in [
        "/proc/self/maps",
        "/proc/self/environ",
        "/proc/thread-self/environ",
    ] {
        let out = cp(
            &env,
            &[
                &format!("nobody@{}:{path}", agent.target()),
                back.to_str().unwrap(),
            ],
        );
        assert_failed_saying(&out, 255, "permission-denied");
    }
    let out = cp(
        &env,
        &[
            &format!("nobody@{}:/proc/self/root/etc/hostname", agent.target()),
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    assert_eq!(
        std::fs::read_dir(&back).unwrap().count(),
        0,
        "nothing copied"
    );
}

/// The thread of `agent_pid` whose file-system user is `uid` (the fourth
/// field of its `Uid:` line), if any.
fn thread_with_fsuid(agent_pid: u32, uid: u32) -> Option<String> {
    let tasks = std::fs::read_dir(format!("/proc/{agent_pid}/task")).ok()?;
    tasks.flatten().find_map(|task| {
        let status = std::fs::read_to_string(task.path().join("status")).ok()?;
        let ids = status.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
        let fsuid: u32 = ids.split_whitespace().nth(4)?.parse().ok()?;
        (fsuid == uid).then_some(ids)
    })
}

/// A copy as another user runs on a thread of the root agent that takes
/// the user's file-system identity only: the user's own processes can
/// neither signal that thread nor set its limits, which would act on the
/// whole agent (a `kill -KILL` of its thread id ended the agent, and every
/// client's commands with it).
#[test]
fn a_copy_as_another_user_is_out_of_that_users_reach() {
    let Some((env, agent)) = copying_as_another_user(
        "a_copy_as_another_user_is_out_of_that_users_reach",
        r#"["nobody"]"#,
    ) else {
        return;
    };
    let root = env.root.path();
    let source = sparse(root.join("big"), 4 << 30);
    let back = new_dir(root, "back");
    let mut pull = cp_piped(
        &env,
        &[
            &format!("nobody@{}:{}", agent.target(), source.display()),
            back.to_str().unwrap(),
        ],
    );
    wait_for_a_temporary(&back);
    send_signal(pull.id(), "STOP");
    let agent_pid = agent.child.id();
    let nobody = uid_of("nobody");
    assert!(
        wait_until(DEADLINE, || thread_with_fsuid(agent_pid, nobody).is_some()),
        "the copy's thread reads as nobody"
    );
    // As nobody, the way a confined client would: every thread of the agent.
    let probe = format!(
        "for t in /proc/{agent_pid}/task/*; do t=${{t##*/}}; \
         kill -0 $t 2>/dev/null && echo reached $t; done; echo checked"
    );
    let out = env.exec(&agent, &[&probe]);
    let ids = thread_with_fsuid(agent_pid, nobody);
    send_signal(pull.id(), "CONT");
    let _ = pull.kill();
    let _ = pull.wait();
    assert_eq!(stdout_of(&out), "checked\n", "{}", stderr_of(&out));
    let ids = ids.expect("the copy still ran");
    assert!(ids.starts_with("Uid:\t0\t0\t0\t"), "{ids}");
    assert_eq!(stdout_of(&env.exec(&agent, &["echo alive"])), "alive\n");
}

/// A client that stops reading in the middle of a pull holds neither the
/// copy nor the agent's shutdown: past its grace periods the agent ends
/// the copy and exits, even with keepalives off, where no TCP timeout
/// would ever end the wait.
#[test]
fn a_stalled_pull_does_not_hold_the_agents_shutdown() {
    let (env, mut agent) = Env::with_agent_flags(&[
        "--shutdown-grace",
        "500ms",
        "--kill-grace",
        "500ms",
        "--keepalive-interval",
        "0s",
    ]);
    let root = env.root.path();
    let source = sparse(root.join("big"), 4 << 30);
    let back = new_dir(root, "back");
    let mut pull = cp_piped(&env, &[&remote(&agent, &source), back.to_str().unwrap()]);
    wait_for_a_temporary(&back);
    send_signal(pull.id(), "STOP");
    agent.signal("TERM");
    let exited = wait_until(DEADLINE, || agent.child.try_wait().unwrap().is_some());
    send_signal(pull.id(), "CONT");
    let ended = wait_until(DEADLINE, || pull.try_wait().unwrap().is_some());
    if !ended {
        let _ = pull.kill();
    }
    let out = pull.wait_with_output().unwrap();
    assert!(
        exited,
        "the agent waits on a client that stopped reading:\n{}",
        agent.log()
    );
    assert!(ended, "ctl did not end");
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    assert_eq!(temporaries(&back), Vec::<PathBuf>::new());
    assert!(
        agent
            .log()
            .contains("agent shutting down; the copy was abandoned"),
        "{}",
        agent.log()
    );
}

/// A push whose source cannot be read fails once, in plain words, before
/// any host is reached: not once per host of the fan-out.
#[test]
fn a_push_of_a_missing_source_fails_once_before_any_host_is_reached() {
    let env = Env::new();
    let fleet = env.fleet(3);
    let missing = env.root.path().join("nonexist");
    let out = cp(&env, &[missing.to_str().unwrap(), "@lab:/tmp/"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        stderr_of(&out),
        format!(
            "ctl: cannot read {}: no such file or directory\n",
            missing.display()
        )
    );
    for agent in &fleet.agents {
        assert!(!agent.log().contains("push"), "{}", agent.log());
    }
    // Nor a source that is no file at all, a FIFO: one line, no host
    // reached (before, a line per host and its summary).
    let fifo = env.root.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = cp(&env, &[fifo.to_str().unwrap(), "@lab:/tmp/"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        stderr_of(&out),
        format!(
            "ctl: {} is not a regular file, directory or link\n",
            fifo.display()
        )
    );
    for agent in &fleet.agents {
        assert!(!agent.log().contains("push"), "{}", agent.log());
    }
    // The agent's own refusal of a path is in plain words too.
    let out = cp(
        &env,
        &[
            &remote(&fleet.agents[0], &missing),
            env.root.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(255));
    let err = stderr_of(&out);
    assert!(err.contains("no such file or directory"), "{err}");
    assert!(!err.contains("os error"), "{err}");
}

/// scp's relative remote path (`web1:tmp/`) is a local path to ctl, whose
/// remote paths are absolute: the refusal says so, in one line.
#[test]
fn a_relative_remote_path_is_refused_with_the_absolute_form() {
    let env = Env::new();
    let file = new_file(env.root.path(), "f.txt", b"x");
    let out = cp(&env, &[file.to_str().unwrap(), "web1:tmp/"]);
    assert_eq!(out.status.code(), Some(255));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("web1:/tmp/, not web1:tmp/"), "{err}");
}

/// A message with no place in a pull (here 300 KB of output, with a
/// terminal escape in front) is named by its kind, in one short line.
#[tokio::test]
async fn a_message_out_of_place_in_a_pull_is_named_in_one_short_line() {
    use bytes::Bytes;
    use rexec_protocol::{AgentMessage, Hello};

    let env = Env::new();
    let local = env.root.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let mut flood = b"\x1b]0;owned\x07".to_vec();
    flood.resize(300_000, b'A');
    let messages = vec![
        AgentMessage::Hello(Hello::new("rexec-agent 0.1.0")),
        AgentMessage::Stdout(Bytes::from(flood)),
    ];
    let out = pull_from_a_fake_agent(&env, messages, "/x/y", &local).await;
    assert_failed_saying(&out, 255, "the agent sent an unexpected Stdout message");
    let err = stderr_of(&out);
    assert!(err.len() < 300, "{} bytes of stderr", err.len());
    assert!(!err.contains('\x1b'), "{err:?}");
}

/// A pull from several hosts where some give nothing (one unreachable,
/// one without the file) leaves no empty `LOCAL_DIR/HOST` for them, which
/// would look as if they had delivered.
#[test]
fn a_pull_leaves_no_directory_for_hosts_that_gave_nothing() {
    let (env, fleet) = env_with_fleet(2);
    let root = env.root.path();
    let file = root.join("only-on-one");
    let logs = new_dir(root, "logs");
    // The agents share this machine, so the file is on both; a third host
    // is unreachable.
    std::fs::write(&file, b"here\n").unwrap();
    let source = format!("@lab,127.0.0.1:9:{}", file.display());
    let pulled = cp(&env, &[&source, logs.to_str().unwrap()]);
    assert_eq!(pulled.status.code(), Some(255), "{}", stderr_of(&pulled));
    for host in &fleet.hosts {
        assert_file(logs.join(host).join("only-on-one"), b"here\n");
    }
    let mut dirs: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, fleet.hosts, "no directory for the unreachable host");
    // A path missing on every host: no directory at all.
    let missing = format!("@lab:{}", root.join("nowhere").display());
    let empty = new_dir(root, "empty");
    let pulled = cp(&env, &[&missing, empty.to_str().unwrap()]);
    assert_eq!(pulled.status.code(), Some(255), "{}", stderr_of(&pulled));
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    // A host that never answers, given up at the run's timeout: its
    // directory goes with the unfinished pull.
    fleet.agent(&fleet.hosts[0]).signal("STOP");
    let late = new_dir(root, "late");
    let pulled = cp(
        &env,
        &[
            "--timeout",
            "1s",
            &format!("@lab:{}", file.display()),
            late.to_str().unwrap(),
        ],
    );
    fleet.agent(&fleet.hosts[0]).signal("CONT");
    assert_eq!(pulled.status.code(), Some(124), "{}", stderr_of(&pulled));
    assert!(!late.join(&fleet.hosts[0]).exists());
    assert_file(late.join(&fleet.hosts[1]).join("only-on-one"), b"here\n");
}
