//! Confinement, ownership, log and shutdown bounds a hostile or careless
//! peer must not get past.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rexec_protocol::tls::{HostKeyPolicy, HostKeyVerifier, client_config, server_name};
use rexec_protocol::{
    AgentMessage, ClientMessage, ExecRequest, FileEnd, FileHeader, FileKind, Hello, Identity,
    IdentityPaths, Owner,
};
use tokio::io::AsyncReadExt;
use tokio_rustls::TlsConnector;

use crate::util::*;

fn cp(env: &Env, args: &[&str]) -> std::process::Output {
    env.ctl().arg("cp").args(args).output().expect("run ctl cp")
}

/// An agent whose `tester` may copy as root or as nobody, root first.
fn agent_running_as_nobody_too(env: &Env) -> Agent {
    std::fs::set_permissions(env.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        env.agent_dir.join("agent.toml"),
        "[run_as]\ntester = [\"root\", \"nobody\"]\n",
    )
    .unwrap();
    env.agent()
}

/// A client whose key is revoked while `[run_as]` confines it is refused,
/// and runs nothing, as nobody or as the agent's own user.
#[test]
fn a_confined_client_whose_key_is_revoked_runs_nothing() {
    let env = Env::new();
    std::fs::write(
        env.agent_dir.join("agent.toml"),
        "[run_as]\ntester = [\"nobody\"]\n",
    )
    .unwrap();
    let agent = env.agent();
    let revoke = Command::new(bin("rexec-agent"))
        .arg("--dir")
        .arg(&env.agent_dir)
        .args(["revoke", "tester"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(revoke.status.success(), "{}", stderr_of(&revoke));
    let out = env.exec(&agent, &["id -u"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "");
    assert!(
        !agent.log().contains("client=\"unknown\""),
        "{}",
        agent.log()
    );
}

/// `ctl cp nobody@HOST:/proc/sys/...` of a root-only sysctl is refused: the
/// copy runs with nobody's effective uid, which sysctls check. A copy as
/// nobody of what nobody may read works, and so does root's afterwards.
#[test]
fn a_copy_as_nobody_cannot_read_a_root_only_sysctl() {
    const KEY: &str = "/proc/sys/net/ipv4/tcp_fastopen_key";
    if !running_as_root() {
        skipped(
            "a_copy_as_nobody_cannot_read_a_root_only_sysctl",
            "the agent must run as root to copy as another user",
        );
        return;
    }
    if !Path::new(KEY).exists() {
        skipped(
            "a_copy_as_nobody_cannot_read_a_root_only_sysctl",
            "this kernel has no tcp_fastopen_key sysctl",
        );
        return;
    }
    let env = Env::new();
    let agent = agent_running_as_nobody_too(&env);
    let back = env.root.path().join("back");
    std::fs::create_dir(&back).unwrap();
    std::fs::set_permissions(&back, std::fs::Permissions::from_mode(0o777)).unwrap();
    let back_str = back.to_str().unwrap();

    let out = cp(
        &env,
        &[&format!("nobody@{}:{KEY}", agent.target()), back_str],
    );
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("permission-denied"),
        "{}",
        stderr_of(&out)
    );
    assert!(!back.join("tcp_fastopen_key").exists());

    let public = env.root.path().join("public.txt");
    std::fs::write(&public, b"for anyone").unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cp(
        &env,
        &[
            &format!("nobody@{}:{}", agent.target(), public.display()),
            back_str,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(
        std::fs::read(back.join("public.txt")).unwrap(),
        b"for anyone"
    );

    let out = cp(&env, &[&format!("{}:{KEY}", agent.target()), back_str]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(back.join("tcp_fastopen_key").exists());
}

/// `ctl cp [ARGS] FAKE:PATH LOCAL` with ctl's umask `umask`, against a fake
/// agent answering with `messages`.
async fn pull_from_a_fake_agent(
    env: &Env,
    messages: Vec<AgentMessage>,
    args: &[&str],
    path: &[u8],
    local: &Path,
    umask: u32,
) -> std::process::Output {
    let fake = FakeAgent::bind(env).await;
    let addr = fake.addr;
    let agent = tokio::spawn(async move {
        let (mut incoming, mut outgoing) = fake.accept().await;
        // ctl's hello and copy request; the answer; then ctl's last word.
        incoming.by_ref().take(2).for_each(|_| async {}).await;
        let mut answer = futures_util::stream::iter(messages.into_iter().map(Ok));
        let _ = outgoing.send_all(&mut answer).await;
        let _ = incoming.next().await;
    });
    let mut remote = format!("{addr}:").into_bytes();
    remote.extend_from_slice(path);
    let mut ctl = env.ctl();
    ctl.arg("cp")
        .args(args)
        .arg(std::ffi::OsStr::from_bytes(&remote))
        .arg(local);
    // SAFETY: umask is async-signal-safe and touches nothing else.
    unsafe {
        ctl.pre_exec(move || {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
            Ok(())
        });
    }
    let out = tokio::task::spawn_blocking(move || ctl.output())
        .await
        .expect("ctl thread")
        .expect("run ctl");
    agent.abort();
    out
}

fn started() -> Vec<AgentMessage> {
    vec![
        AgentMessage::Hello(Hello::new("rexec-agent 0.1.0")),
        AgentMessage::CopyStarted { keepalive: None },
    ]
}

fn header(path: &[u8], kind: FileKind, mode: u32, owner: Option<Owner>) -> FileHeader {
    FileHeader {
        path: Bytes::copy_from_slice(path),
        kind,
        mode,
        mtime: 0,
        owner,
    }
}

fn file(header: FileHeader, data: &'static [u8], changed: bool) -> Vec<AgentMessage> {
    vec![
        AgentMessage::File(header),
        AgentMessage::FileData(Bytes::from_static(data)),
        AgentMessage::FileEnd(FileEnd {
            blake3: Bytes::copy_from_slice(blake3::hash(data).as_bytes()),
            changed,
        }),
    ]
}

/// A pull without `-p` from an agent that sends an owner and a mode of
/// 0777 gives the file ctl's user and the mode less ctl's umask, as cp
/// and scp do.
#[tokio::test]
async fn a_pull_without_p_takes_no_owner_from_the_agent_and_applies_the_umask() {
    let env = Env::new();
    let local = env.root.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let owner = Some(Owner {
        uid: 4242,
        gid: 4343,
    });
    let messages = [
        started(),
        file(
            header(b"got", FileKind::File { size: 2 }, 0o777, owner),
            b"hi",
            false,
        ),
        vec![AgentMessage::CopyEnd],
    ]
    .concat();
    let out = pull_from_a_fake_agent(&env, messages, &[], b"/srv/got", &local, 0o027).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let meta = std::fs::metadata(local.join("got")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o750);
    assert_eq!(meta.uid(), nix::unistd::getuid().as_raw());
    assert_eq!(meta.gid(), nix::unistd::getgid().as_raw());
}

/// A pull without `-r` takes no directory: an agent that sends one cannot
/// change the mode of a local directory of that name.
#[tokio::test]
async fn a_pull_without_r_refuses_a_directory_and_leaves_the_local_one() {
    let env = Env::new();
    let local = env.root.path().join("local");
    let tree = local.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o700)).unwrap();
    let messages = [
        started(),
        vec![AgentMessage::File(header(
            b"tree",
            FileKind::Directory,
            0o777,
            None,
        ))],
        vec![AgentMessage::CopyEnd],
    ]
    .concat();
    let out = pull_from_a_fake_agent(&env, messages, &[], b"/srv/tree", &local, 0).await;
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("without -r"),
        "{}",
        stderr_of(&out)
    );
    let mode = std::fs::metadata(&tree).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700);
}

/// The "changed while it was copied" note and `--json`'s `changed` show the
/// agent's file name escaped: no terminal control, no forged `ctl:` line.
#[tokio::test]
async fn a_changed_file_s_name_from_the_agent_is_printed_escaped() {
    const NAME: &[u8] = b"ev\x1b[2Jil\nctl: forged";
    for json in [false, true] {
        let env = Env::new();
        let local = env.root.path().join("local");
        std::fs::create_dir(&local).unwrap();
        let messages = [
            started(),
            file(
                header(NAME, FileKind::File { size: 1 }, 0o644, None),
                b"x",
                true,
            ),
            vec![AgentMessage::CopyEnd],
        ]
        .concat();
        let mut path = b"/srv/".to_vec();
        path.extend_from_slice(NAME);
        let args: &[&str] = if json { &["--json"] } else { &[] };
        let out = pull_from_a_fake_agent(&env, messages, args, &path, &local, 0o022).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
        let shown = format!("{stdout}{stderr}");
        assert!(!shown.contains('\x1b'), "{stderr}");
        let forged = stderr.lines().filter(|l| l.starts_with("ctl: forged"));
        assert_eq!(forged.count(), 0, "{stderr}");
        if json {
            let lines = json_lines(&out);
            let changed = lines[0]["changed"][0].as_str().expect("a changed name");
            assert!(!changed.chars().any(char::is_control), "{changed:?}");
            assert!(changed.contains("forged"), "{changed:?}");
        } else {
            assert!(stderr.contains("changed while it was copied"), "{stderr}");
        }
    }
}

/// Many handshakes with a certificate the agent does not know leave a
/// bounded number of log lines, not one each.
#[tokio::test]
async fn handshakes_with_an_unknown_key_are_logged_in_bounded_lines() {
    const HANDSHAKES: usize = 100;
    let env = Env::new();
    let agent = env.agent();
    let (stranger_dir, _) = env.stranger();
    let identity = Identity::load(&IdentityPaths::in_dir(&stranger_dir, "client")).unwrap();
    let verifier = Arc::new(HostKeyVerifier::new(HostKeyPolicy::TrustOnFirstUse));
    let connector = TlsConnector::from(Arc::new(client_config(Some(&identity), verifier).unwrap()));
    let began = Instant::now();
    for _ in 0..HANDSHAKES {
        let tcp = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
        // TLS 1.3: the refusal arrives as an alert on the first read.
        if let Ok(mut tls) = connector.connect(server_name("127.0.0.1"), tcp).await {
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
            assert!(!matches!(read, Ok(Ok(n)) if n > 0), "the agent let it in");
        }
    }
    // Lines are written in order: once this session's is there, every
    // refusal before it has been logged or counted.
    assert_eq!(stdout_of(&env.exec(&agent, &["echo after"])), "after\n");
    assert!(
        agent.wait_for_log("echo after").is_some(),
        "{}",
        agent.log()
    );
    let intervals = 1 + began.elapsed().as_secs() / 10;
    let log = agent.log();
    let lines = log.lines().filter(|l| l.contains("not authorized")).count() as u64;
    assert!(
        lines <= 21 * intervals,
        "{lines} lines for {HANDSHAKES} handshakes in {intervals} intervals:\n{log}"
    );
}

/// A client that stops reading while its command's output waits to be
/// sent does not keep a SIGTERMed agent from stopping once its shutdown
/// and kill graces are over.
#[tokio::test]
async fn a_client_that_stops_reading_does_not_hold_the_agent_s_shutdown() {
    let env = Env::new();
    let mut agent = env.agent_with(&["--shutdown-grace", "1s", "--kill-grace", "1s"]);
    let identity = Identity::load(&IdentityPaths::in_dir(&env.ctl_dir, "client")).unwrap();
    let verifier = Arc::new(HostKeyVerifier::new(HostKeyPolicy::TrustOnFirstUse));
    let config = client_config(Some(&identity), verifier).unwrap();
    let tcp = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(server_name("127.0.0.1"), tcp)
        .await
        .unwrap();
    let (read, write) = tokio::io::split(tls);
    let mut outgoing =
        tokio_util::codec::FramedWrite::new(write, rexec_protocol::ClientCodec::new());
    let marker = marker("stops-reading");
    for message in [
        ClientMessage::Hello(Hello::new("review test")),
        ClientMessage::Exec(ExecRequest {
            command: format!("head -c 64000000 /dev/zero; echo {marker} >/dev/null"),
            ..ExecRequest::default()
        }),
    ] {
        outgoing.feed(message).await.unwrap();
    }
    outgoing.flush().await.unwrap();
    // The client now reads nothing, and holds the connection open.
    assert!(
        wait_until(Duration::from_secs(10), || !processes_with(&marker)
            .is_empty()),
        "the command did not start:\n{}",
        agent.log()
    );
    agent.signal("TERM");
    let stopped = wait_until(Duration::from_secs(30), || {
        !matches!(agent.child.try_wait(), Ok(None))
    });
    drop((read, outgoing));
    assert!(stopped, "the agent is still running:\n{}", agent.log());
}
