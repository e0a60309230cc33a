//! The agent as a systemd service: the unit files, socket activation, the
//! sd_notify conversation, the config file and the install script.
//!
//! Tests that need systemd's tools (systemd-analyze,
//! systemd-socket-activate, systemd-nspawn) print why they skip when the
//! tools are absent, and fail instead under REXEC_TEST_REQUIRE_ALL=1;
//! `.ci/run` installs them and sets it. The notification tests need no systemd at all:
//! the test owns the datagram socket the agent reports to.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::util::*;

/// Copies both units into `dir` with ExecStart pointing at the built agent
/// (systemd-analyze verify checks that the binary exists; the units name
/// /usr/bin/rexec-agent, where the Debian package puts it).
fn units_for_verify(dir: &Path) {
    for unit in ["rexec-agent.service", "rexec-agent.socket"] {
        let text = std::fs::read_to_string(repo_root().join("systemd").join(unit)).unwrap();
        let text = text.replace("/usr/bin/rexec-agent", bin("rexec-agent").to_str().unwrap());
        std::fs::write(dir.join(unit), text).unwrap();
    }
}

fn verify(dir: &Path) -> Output {
    Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("rexec-agent.service"))
        .arg(dir.join("rexec-agent.socket"))
        .output()
        .expect("systemd-analyze")
}

#[test]
fn units_pass_systemd_analyze_verify() {
    require_tool!("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    units_for_verify(dir.path());
    let out = verify(dir.path());
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(stderr_of(&out), "", "verify has nothing to say");
    assert_eq!(stdout_of(&out), "");

    // The same check does complain about a misspelt directive, so the
    // silence above means something.
    let service = dir.path().join("rexec-agent.service");
    let text = std::fs::read_to_string(&service).unwrap();
    std::fs::write(&service, text.replace("KillMode=", "KilMode=")).unwrap();
    let out = verify(dir.path());
    assert!(stderr_of(&out).contains("KilMode"), "{}", stderr_of(&out));
}

/// `systemctl enable` (what install.sh runs) hooks the agent into boot and
/// its socket into sockets.target: the units' [Install] sections, checked
/// offline with `systemctl --root` on a tree of our own.
#[test]
fn enabling_the_service_enables_its_socket_too() {
    require_tool!("systemctl");
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    for unit in ["rexec-agent.service", "rexec-agent.socket"] {
        std::fs::copy(repo_root().join("systemd").join(unit), units.join(unit)).unwrap();
    }
    let out = Command::new("systemctl")
        .arg(format!("--root={}", root.path().display()))
        .args(["enable", "rexec-agent.service"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    for (link, target) in [
        (
            "multi-user.target.wants/rexec-agent.service",
            "/etc/systemd/system/rexec-agent.service",
        ),
        (
            "sockets.target.wants/rexec-agent.socket",
            "/etc/systemd/system/rexec-agent.socket",
        ),
    ] {
        assert_eq!(
            std::fs::read_link(units.join(link)).unwrap(),
            Path::new(target),
            "{link}"
        );
    }
}

#[test]
fn readme_reports_the_units_security_exposure() {
    require_tool!("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    units_for_verify(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(dir.path().join("rexec-agent.service"))
        .output()
        .expect("systemd-analyze");
    let text = stdout_of(&out);
    let level = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for rexec-agent.service: "))
        .map(|(_, rest)| {
            rest.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}{}", stderr_of(&out)));
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("exposure level {level}")),
        "README should report `exposure level {level}`"
    );
}

#[test]
fn socket_activated_agent_serves_ctl_exec() {
    require_tool!("systemd-socket-activate");
    let env = Env::new();
    // The configured address is not used when systemd passes a socket.
    let agent = socket_activated_agent(&env.agent_dir, &["--listen", "127.0.0.1:0"]);
    env.trust(&agent);

    // The first connection is the one that starts the agent.
    let out = env.exec(&agent, &["echo hello; echo oops >&2; exit 3"]);
    assert_eq!(stdout_of(&out), "hello\n", "{}", agent.log());
    assert_eq!(stderr_of(&out), "oops\n");
    assert_eq!(out.status.code(), Some(3));
    let line = agent.wait_for_log("listening on").unwrap();
    assert!(
        line.contains(&format!(
            "listening on {} (socket from systemd)",
            agent.addr
        )),
        "{line}"
    );
    assert!(
        agent
            .log()
            .contains("configured listen addresses are not used")
    );

    // Commands inherit neither the listening socket nor systemd's variables.
    let out = env.exec(
        &agent,
        &["echo \"${LISTEN_FDS-unset} ${LISTEN_PID-unset}\"; ls -l /proc/$$/fd"],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    assert!(text.starts_with("unset unset\n"), "{text}");
    assert!(
        !text.contains("socket:"),
        "a socket leaked into the command:\n{text}"
    );
}

#[test]
fn agent_restart_on_a_held_socket_refuses_no_connection() {
    // The test plays systemd: it owns the listening socket and passes it
    // to each agent it starts.
    let env = Env::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let pass = || std::os::fd::OwnedFd::from(listener.try_clone().unwrap());

    let mut first = agent_with_passed_socket(&env.agent_dir, pass(), &[]);
    first.wait_listening();
    assert!(
        first.log().contains("(socket from systemd)"),
        "{}",
        first.log()
    );
    env.trust(&first);
    assert_eq!(stdout_of(&env.exec(&first, &["echo first"])), "first\n");
    first.signal("TERM");
    assert!(first.wait_exit().expect("first agent exits").success());

    // No agent runs now; a client connecting meanwhile is queued, not
    // refused, and the next agent serves it.
    let waiting = env
        .ctl()
        .arg("exec")
        .arg(first.target())
        .arg("echo served after the restart")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(DEADLINE, || accept_queue(port).unwrap_or(0) >= 1),
        "ctl's connection is queued while no agent runs"
    );
    let mut second = agent_with_passed_socket(&env.agent_dir, pass(), &[]);
    assert_eq!(second.wait_listening(), first.addr);
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(
        stdout_of(&out),
        "served after the restart\n",
        "{}",
        stderr_of(&out)
    );
    assert!(out.status.success());
}

#[test]
fn agent_refuses_a_passed_socket_that_is_not_listening() {
    // What a .socket unit with Accept=yes would pass: a connection.
    let env = Env::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (connection, _) = listener.accept().unwrap();
    let mut agent =
        agent_with_passed_socket(&env.agent_dir, std::os::fd::OwnedFd::from(connection), &[]);
    let status = agent.wait_exit().expect("agent exits");
    assert_eq!(status.code(), Some(1));
    let line = agent
        .wait_for_log("is not listening")
        .unwrap_or_else(|| agent.log());
    assert!(
        line.contains("socket 3 from systemd is not listening (the .socket unit needs Accept=no)"),
        "{line}"
    );
}

#[test]
fn agent_says_ready_after_listening_and_stopping_on_sigterm() {
    let env = Env::new();
    let mut notify = NotifySocket::new(env.root.path());
    let mut agent = Agent::spawn(notify.agent_command(&env.agent_dir));

    // READY=1 carries the status line with the bound port, which exists
    // only once the agent listens.
    let ready = notify.wait_for("READY=1").expect("READY=1");
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=listening on "))
        .unwrap_or_else(|| panic!("no status with READY=1: {ready:?}"));
    let addr: std::net::SocketAddr = status.split(';').next().unwrap().parse().unwrap();
    assert_ne!(addr.port(), 0);
    assert!(
        status.ends_with("; 0 sessions running (limit 256)"),
        "{status}"
    );
    assert_eq!(agent.wait_listening(), addr);
    env.trust(&agent);
    let out = env.exec(&agent, &["echo served"]);
    assert_eq!(stdout_of(&out), "served\n");

    agent.signal("TERM");
    let stopping = notify.wait_for("STOPPING=1").expect("STOPPING=1");
    assert!(stopping.contains("STATUS=stopping"), "{stopping:?}");
    let status = agent.wait_exit().expect("agent exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", agent.log());

    // Everything the agent said, in order, once it has exited: READY=1
    // once, then STOPPING=1, and no state change after it (a READY=1
    // after STOPPING=1 would tell systemd the stopping agent is up again).
    notify.drain();
    let states: Vec<&str> = notify
        .received
        .iter()
        .flat_map(|m| m.lines())
        .filter(|l| {
            ["READY=", "STOPPING=", "RELOADING="]
                .iter()
                .any(|s| l.starts_with(s))
        })
        .collect();
    assert_eq!(states, ["READY=1", "STOPPING=1"], "{:?}", notify.received);
}

/// An agent of `env` notifying a socket of ours as systemd's, ready
/// (READY=1 received), listening and trusted by ctl.
fn ready_agent(env: &Env) -> (NotifySocket, Agent) {
    let mut notify = NotifySocket::new(env.root.path());
    let mut agent = Agent::spawn(notify.agent_command(&env.agent_dir));
    notify.wait_for("READY=1").expect("READY=1");
    agent.wait_listening();
    env.trust(&agent);
    (notify, agent)
}

#[test]
fn status_line_counts_running_sessions() {
    let env = Env::new();
    let (mut notify, agent) = ready_agent(&env);

    let sleep = unique_sleep(600);
    let mut ctl = env
        .ctl()
        .arg("exec")
        .arg(agent.target())
        .arg(format!("sleep {sleep}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let one = notify.wait_for("STATUS=");
    let killed = std::time::Instant::now();
    ctl.kill().unwrap();
    let mut said = String::new();
    ctl.stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    ctl.wait().unwrap();
    assert!(
        one.as_deref()
            .is_some_and(|m| m.contains("; 1 session running")),
        "{one:?}\nctl said: {said}\nagent log:\n{}",
        agent.log()
    );
    let zero = notify.wait_for("STATUS=");
    assert!(
        zero.as_deref()
            .is_some_and(|m| m.contains("; 0 sessions running")),
        "{zero:?} {:?} after the kill, after {:?}\nctl said: {said}\nagent log:\n{}",
        killed.elapsed(),
        notify.received,
        agent.log()
    );
}

/// Once SIGTERM has said "stopping", the status line never says
/// "listening" again while sessions finish: it counts them down.
#[test]
fn the_status_line_says_stopping_until_the_last_session_ends() {
    let env = Env::new();
    let (mut notify, mut agent) = ready_agent(&env);
    // Two sessions, which end a second and a few seconds after the stop:
    // the count changes while the agent is stopping.
    let mut ctls: Vec<_> = ["sleep 1", "sleep 4"]
        .into_iter()
        .map(|command| {
            env.ctl()
                .arg("exec")
                .arg(agent.target())
                .arg(command)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    while !notify
        .wait_for("STATUS=")
        .expect("a status line")
        .contains("; 2 sessions running")
    {}
    agent.signal("TERM");
    assert!(
        agent.wait_exit().is_some_and(|s| s.success()),
        "{}",
        agent.log()
    );
    for ctl in &mut ctls {
        ctl.wait().unwrap();
    }
    notify.drain();
    let statuses: Vec<&str> = notify
        .received
        .iter()
        .flat_map(|m| m.lines())
        .filter_map(|l| l.strip_prefix("STATUS="))
        .collect();
    let stopped = statuses
        .iter()
        .position(|s| s.starts_with("stopping"))
        .expect("a stopping status");
    assert!(
        statuses[stopped..]
            .iter()
            .all(|s| s.starts_with("stopping")),
        "{statuses:?}"
    );
}

#[test]
fn watchdog_is_pinged_when_the_unit_sets_watchdogsec() {
    let env = Env::new();
    let mut notify = NotifySocket::new(env.root.path());
    let mut cmd = notify.agent_command(&env.agent_dir);
    cmd.env("WATCHDOG_USEC", "200000");
    let agent = Agent::spawn(cmd);
    for _ in 0..3 {
        notify.wait_for("WATCHDOG=1").expect("watchdog ping");
    }
    agent.expect_log("systemd watchdog enabled");
}

#[test]
fn sighup_reloads_and_names_settings_that_need_a_restart() {
    let env = Env::new();
    let config = env.agent_dir.join("agent.toml");
    std::fs::write(&config, "max_sessions = 8\n").unwrap();
    let mut notify = NotifySocket::new(env.root.path());
    let mut agent = Agent::spawn(notify.agent_command(&env.agent_dir));
    let ready = notify.wait_for("READY=1").unwrap();
    assert!(ready.contains("(limit 8)"), "the file was read: {ready:?}");
    agent.wait_listening();
    env.trust(&agent);

    std::fs::write(&config, "max_sessions = 9\nhandshake_timeout = \"1s\"\n").unwrap();
    agent.signal("HUP");
    notify.wait_for("RELOADING=1").expect("RELOADING=1");
    notify.wait_for("READY=1").expect("READY=1 after reloading");
    let line = agent.wait_for_log("take effect on restart").unwrap();
    assert!(line.ends_with("max_sessions, handshake_timeout"), "{line}");

    // A broken file is reported on reload, and the agent keeps serving.
    std::fs::write(&config, "max_sessions = 9\nmax_sesions = 10\n").unwrap();
    agent.signal("HUP");
    let line = agent.wait_for_log("would not restart").unwrap();
    assert!(
        line.contains("agent.toml:2:1: unknown key `max_sesions`"),
        "{line}"
    );
    // So is one that `run` refuses beyond the file's own checks.
    std::fs::write(&config, "shell = \"/nonexistent\"\n").unwrap();
    agent.signal("HUP");
    let line = agent
        .wait_for_any_log(&["the shell /nonexistent does not exist"])
        .unwrap();
    assert!(line.contains("would not restart"), "{line}");
    let out = env.exec(&agent, &["echo still serving"]);
    assert_eq!(stdout_of(&out), "still serving\n");
}

#[test]
fn config_file_applies_and_flags_override_it() {
    let env = Env::new();
    env.write_agent_config(
        "shell = \"/bin/bash\"\nmax_sessions = 5\nkill_grace = \"1s\"\nlisten = \"192.0.2.1:1\"\n",
    );
    // Agent::start passes --listen 127.0.0.1:0, which wins over the file's
    // unreachable address; the file's shell is used.
    let agent = env.agent();
    let out = env.exec(&agent, &["echo $0"]);
    assert_eq!(stdout_of(&out), "/bin/bash\n");
    let agent = env.agent_with(&["--shell", "/bin/sh"]);
    let out = env.exec(&agent, &["echo $0"]);
    assert_eq!(stdout_of(&out), "/bin/sh\n");

    // `run --check` prints the effective settings: file, then flags.
    let out = Command::new(bin("rexec-agent"))
        .arg("--dir")
        .arg(&env.agent_dir)
        .args(["run", "--check", "--max-sessions", "7"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    for line in [
        "max_sessions = 7",
        "kill_grace = \"1s\"",
        "shell = \"/bin/bash\"",
        "listen = [\"192.0.2.1:1\"]",
        "handshake_timeout = \"5s\"",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
}

fn run_with_config(env: &Env, text: &str) -> Output {
    let path = env.root.path().join("custom.toml");
    std::fs::write(&path, text).unwrap();
    Command::new(bin("rexec-agent"))
        .arg("--dir")
        .arg(&env.agent_dir)
        .arg("--config")
        .arg(&path)
        .args(["run", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap()
}

#[test]
fn config_file_errors_name_the_key_and_line() {
    let env = Env::new();
    let out = run_with_config(&env, "max_sessions = 4\n\nmax_sesions = 5\n");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains("custom.toml:3:1: unknown key `max_sesions`, expected one of"),
        "{err}"
    );

    let out = run_with_config(&env, "# limits\nhandshake_timeout = \"10 parsecs\"\n");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains(
            "custom.toml:2:21: bad value for `handshake_timeout`: invalid duration \"10 parsecs\""
        ),
        "{err}"
    );

    let out = Command::new(bin("rexec-agent"))
        .arg("--dir")
        .arg(&env.agent_dir)
        .arg("--config")
        .arg(env.root.path().join("missing.toml"))
        .args(["run", "--check"])
        .output()
        .unwrap();
    assert_failed_saying(&out, 1, "cannot read config file");
}

/// Every file under `root`, relative, with its permission bits.
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(format!("{:o} {rel}", meta.permissions().mode() & 0o7777));
            }
        }
    }
    let mut out = BTreeSet::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

fn install_script(stage: &Path, args: &[&str]) -> Output {
    let built = bin("rexec-agent");
    Command::new(repo_root().join("scripts/install.sh"))
        .args(args)
        .arg("--from")
        .arg(built.parent().unwrap())
        .env("DESTDIR", stage)
        .output()
        .expect("run install.sh")
}

/// install.sh with `args` into a fresh staging dir, which must succeed:
/// the temp dir holding the stage (removed when dropped), the stage and
/// the script's output.
fn installed_into_a_stage(args: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, Output) {
    let root = tempfile::tempdir().unwrap();
    let stage = root.path().join("stage");
    let out = install_script(&stage, args);
    assert!(
        out.status.success(),
        "install.sh {args:?}: {}{}",
        stdout_of(&out),
        stderr_of(&out)
    );
    (root, stage, out)
}

#[test]
fn install_into_a_staging_dir_produces_the_documented_tree() {
    let (_root, stage, out) = installed_into_a_stage(&[]);
    let expected: BTreeSet<String> = [
        "644 etc/rexec/agent.crt",
        "600 etc/rexec/agent.key",
        "644 etc/rexec/agent.toml",
        "644 etc/rexec/authorized_clients",
        "644 etc/systemd/system/rexec-agent.service",
        "644 etc/systemd/system/rexec-agent.socket",
        "755 usr/local/bin/ctl",
        "755 usr/local/bin/rexec-agent",
        "644 usr/local/share/bash-completion/completions/ctl",
        "644 usr/local/share/zsh/site-functions/_ctl",
        "644 usr/local/share/fish/vendor_completions.d/ctl.fish",
    ]
    .into_iter()
    .map(String::from)
    .chain(
        [
            "ctl",
            "ctl-completions",
            "ctl-cp",
            "ctl-exec",
            "ctl-hosts",
            "ctl-id",
            "ctl-job",
            "ctl-keygen",
            "ctl-known-hosts",
            "ctl-ping",
            "rexec-agent",
            "rexec-agent-authorize",
            "rexec-agent-clients",
            "rexec-agent-id",
            "rexec-agent-init",
            "rexec-agent-revoke",
            "rexec-agent-run",
        ]
        .map(|page| format!("644 usr/local/share/man/man1/{page}.1")),
    )
    .collect();
    assert_eq!(tree(&stage), expected);

    // The printed fingerprint is the staged identity's; systemctl is left
    // alone, and the output says so.
    let text = stdout_of(&out);
    let id = Command::new(bin("rexec-agent"))
        .arg("--dir")
        .arg(stage.join("etc/rexec"))
        .arg("id")
        .output()
        .unwrap();
    let fingerprint = stdout_of(&id).trim().to_owned();
    assert!(fingerprint.starts_with("SHA256:"));
    assert!(
        text.contains(&format!("agent fingerprint: {fingerprint}")),
        "{text}"
    );
    assert!(
        text.contains("DESTDIR is set: not running systemctl"),
        "{text}"
    );

    // The units run the binary where the (default) prefix put it.
    let service =
        std::fs::read_to_string(stage.join("etc/systemd/system/rexec-agent.service")).unwrap();
    assert!(
        service.contains(
            "\nExecStart=/usr/local/bin/rexec-agent --config /etc/rexec/agent.toml run\n"
        ),
        "{service}"
    );
    assert_eq!(
        std::fs::read_to_string(stage.join("etc/rexec/agent.toml")).unwrap(),
        std::fs::read_to_string(repo_root().join("systemd/agent.toml")).unwrap()
    );

    // Installing again keeps the identity and an edited config.
    std::fs::write(stage.join("etc/rexec/agent.toml"), "max_sessions = 3\n").unwrap();
    let again = install_script(&stage, &[]);
    assert!(again.status.success(), "{}", stderr_of(&again));
    assert!(stdout_of(&again).contains(&format!("agent fingerprint: {fingerprint}")));
    assert_eq!(
        std::fs::read_to_string(stage.join("etc/rexec/agent.toml")).unwrap(),
        "max_sessions = 3\n"
    );

    // Uninstall removes binaries and units, keeps the identity; --purge
    // removes it too.
    let out = install_script(&stage, &["uninstall"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let kept: BTreeSet<String> = tree(&stage)
        .into_iter()
        .filter(|f| !f.contains("etc/rexec/"))
        .collect();
    assert_eq!(kept, BTreeSet::new(), "only /etc/rexec is left");
    assert!(stage.join("etc/rexec/agent.key").exists());
    // Jobs kept under the staged /var/lib/rexec: --purge removes those,
    // never the machine's own.
    let jobs = stage.join("var/lib/rexec/jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::write(jobs.join("record"), b"job").unwrap();
    let out = install_script(&stage, &["uninstall", "--purge"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let said = format!("{}{}", stdout_of(&out), stderr_of(&out));
    assert!(
        said.contains(&format!(
            "{}/var/lib/rexec (detached jobs)",
            stage.display()
        )),
        "{said}"
    );
    let _ = std::fs::remove_dir(stage.join("var/lib"));
    let _ = std::fs::remove_dir(stage.join("var"));
    assert_eq!(tree(&stage), BTreeSet::new());
}

#[test]
fn install_prefix_places_the_binaries_and_the_units_exec_start() {
    for prefix in ["/usr", "/opt/rexec"] {
        let (_root, stage, _) = installed_into_a_stage(&["--prefix", prefix]);
        let bindir = prefix.trim_start_matches('/');
        let expected: BTreeSet<String> = [
            "644 etc/rexec/agent.crt".to_owned(),
            "600 etc/rexec/agent.key".to_owned(),
            "644 etc/rexec/agent.toml".to_owned(),
            "644 etc/rexec/authorized_clients".to_owned(),
            "644 etc/systemd/system/rexec-agent.service".to_owned(),
            "644 etc/systemd/system/rexec-agent.socket".to_owned(),
            format!("755 {bindir}/bin/ctl"),
            format!("755 {bindir}/bin/rexec-agent"),
        ]
        .into_iter()
        .collect();
        let (docs, rest): (BTreeSet<String>, BTreeSet<String>) = tree(&stage)
            .into_iter()
            .partition(|f| f.contains(&format!(" {bindir}/share/")));
        assert_eq!(rest, expected, "{prefix}");
        // Man pages and completions go under the prefix too.
        for doc in [
            "man/man1/ctl-exec.1",
            "man/man1/rexec-agent-run.1",
            "bash-completion/completions/ctl",
        ] {
            assert!(
                docs.contains(&format!("644 {bindir}/share/{doc}")),
                "{prefix}: {docs:?}"
            );
        }

        // Configuration stays in /etc whatever the prefix; only the binary
        // moves, and the service runs it from there.
        let service =
            std::fs::read_to_string(stage.join("etc/systemd/system/rexec-agent.service")).unwrap();
        let exec_start: Vec<&str> = service
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect();
        assert_eq!(
            exec_start,
            [format!(
                "ExecStart={prefix}/bin/rexec-agent --config /etc/rexec/agent.toml run"
            )],
            "{prefix}"
        );
        assert_eq!(
            std::fs::read_to_string(stage.join("etc/systemd/system/rexec-agent.socket")).unwrap(),
            std::fs::read_to_string(repo_root().join("systemd/rexec-agent.socket")).unwrap(),
            "the socket unit names no binary"
        );

        // Uninstall with the same prefix finds the binaries there.
        let out = install_script(&stage, &["uninstall", "--prefix", prefix]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(
            tree(&stage).iter().all(|f| f.contains("etc/rexec/")),
            "{prefix}: {:?}",
            tree(&stage)
        );
    }
}

/// The line in which an agent started by `cmd` says where it listens.
fn listening_line(cmd: Command) -> String {
    let mut agent = Agent::spawn(cmd);
    agent.wait_listening();
    agent.wait_for_log("listening on").unwrap()
}

/// Whether a log line starts with tracing's RFC 3339 timestamp
/// (`2026-01-02T03:04:05.678901Z  INFO …`).
fn stamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

#[test]
fn under_the_journal_the_agent_leaves_out_its_own_timestamps() {
    let env = Env::new();
    let agent_run = || {
        let mut cmd = agent_run_command(&env.agent_dir);
        cmd.args(["--listen", "127.0.0.1:0"])
            .env_remove("JOURNAL_STREAM");
        cmd
    };

    let line = listening_line(agent_run());
    assert!(stamped(&line), "on its own, a line has a time: {line:?}");

    // systemd names the stream it connected as DEVICE:INODE; a shell
    // stands in for it, naming the agent's stderr (the test's pipe).
    let cmd = in_shell(
        "export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); exec \"$@\"",
        &agent_run(),
        &[],
    );
    let line = listening_line(cmd);
    assert!(
        line.starts_with(" INFO listening on "),
        "the journal stamps the line, the agent does not: {line:?}"
    );

    // Inherited from a unit's shell while stderr goes elsewhere: stamped.
    let mut cmd = agent_run();
    cmd.env("JOURNAL_STREAM", "8:1234567");
    let line = listening_line(cmd);
    assert!(stamped(&line), "{line:?}");
}

/// The words systemd runs for `line`, the value of an Exec*= setting,
/// following systemd's rules as far as our units use them: single quotes
/// group words, `$$` is a literal `$`, and a word that is `$MAINPID` or
/// `${MAINPID}` is the main process's pid.
fn systemd_exec_words(line: &str, main_pid: u32) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                started = true;
            }
            ' ' if !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
        .into_iter()
        .map(|w| match w.as_str() {
            "$MAINPID" | "${MAINPID}" => main_pid.to_string(),
            _ => w.replace("$$", "$"),
        })
        .collect()
}

#[test]
fn reload_command_needs_only_an_essential_package_and_reloads_the_agent() {
    require_tool!("dpkg-query");
    let unit = std::fs::read_to_string(repo_root().join("systemd/rexec-agent.service")).unwrap();
    let lines: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecReload="))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");

    // `systemctl reload` runs on minimal systems and in containers too:
    // the program must come from a package every Debian system has.
    let program = systemd_exec_words(lines[0], 1).remove(0);
    let owner = Command::new("dpkg-query")
        .args(["-S", &program])
        .output()
        .unwrap();
    let package = stdout_of(&owner)
        .lines()
        .filter(|l| !l.starts_with("diversion by "))
        .find_map(|l| l.split_once(": ").map(|(p, _)| p.to_owned()))
        .unwrap_or_else(|| panic!("no package has {program}: {}", stderr_of(&owner)));
    let essential = Command::new("dpkg-query")
        .args(["-W", "-f=${Essential}", &package])
        .output()
        .unwrap();
    assert_eq!(
        stdout_of(&essential),
        "yes",
        "ExecReload= runs {program}, from {package}, which is not in every Debian system"
    );

    // Run as systemd runs it, MAINPID in the environment and a PATH on
    // which no program is found: the agent reloads.
    let (env, agent) = Env::with_agent();
    let words = systemd_exec_words(lines[0], agent.child.id());
    let out = Command::new(&words[0])
        .args(&words[1..])
        .env_clear()
        .env("PATH", env.root.path().join("nothing-here"))
        .env("MAINPID", agent.child.id().to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{words:?}: {}", stderr_of(&out));
    let line = agent
        .wait_for_log("SIGHUP: authorized clients re-read")
        .unwrap_or_else(|| agent.log());
    assert!(line.contains("clients=1"), "{line}");
}
