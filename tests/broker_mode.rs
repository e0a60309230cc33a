//! Broker mode end to end: real agents that dial out to a real
//! `nats-server` on loopback, the real ctl reaching them through it by
//! name. Everything of exec, cp and ping as in direct mode; the refusals
//! (strangers, impostors, names nobody serves, hostile messages on the
//! broker); the repository's example config with TLS and per-agent users;
//! and the faults (a killed or frozen ctl, a restarted broker or agent).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// The agent name most tests serve.
const NAME: &str = "labpc07";

/// A plain broker, an env and one agent serving [`NAME`] on it, already
/// pinned in ctl's known hosts; `None` (the test is skipped) without
/// nats-server.
fn rig(test: &str, extra: &[&str]) -> Option<(Nats, Env, Agent)> {
    Some(rig_on(Nats::start(test)?, extra))
}

/// The same on a server of the test's own.
fn rig_on(nats: Nats, extra: &[&str]) -> (Nats, Env, Agent) {
    let env = Env::new();
    let agent = env.broker_agent(&nats, NAME, extra);
    env.trust_broker(&nats, NAME);
    (nats, env, agent)
}

macro_rules! rig {
    ($extra:expr) => {
        match rig(test_name!(), $extra) {
            Some(rig) => rig,
            None => return,
        }
    };
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `ctl --broker URL exec FLAGS... NAME COMMAND`, stdout and stderr piped.
fn spawn_exec(env: &Env, nats: &Nats, flags: &[&str], target: &str, command: &str) -> Child {
    crate::util::checks::spawn_piped_exec(env.broker_ctl(nats), flags, target, command)
}

/// Reads lines of `stdout` until one ends with `line`.
fn read_until_line(stdout: &mut impl BufRead, line: &str) {
    crate::util::checks::read_until_line_ending(stdout, line);
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    assert!(
        wait_until(DEADLINE, || child.try_wait().expect("wait").is_some()),
        "ctl did not exit"
    );
    child.wait().expect("wait")
}

fn rest_of(stream: Option<impl Read>) -> String {
    let mut rest = String::new();
    stream
        .expect("piped")
        .read_to_string(&mut rest)
        .expect("read");
    rest
}

/// [`spawn_exec`] of `command` on `target` without flags, once its stdout
/// has shown a line ending with `line`: ctl and the rest of its stdout.
fn spawn_exec_until(
    env: &Env,
    nats: &Nats,
    target: &str,
    command: &str,
    line: &str,
) -> (Child, BufReader<ChildStdout>) {
    let mut ctl = spawn_exec(env, nats, &[], target, command);
    let mut stdout = BufReader::new(ctl.stdout.take().expect("stdout"));
    read_until_line(&mut stdout, line);
    (ctl, stdout)
}

/// ctl's own lines on stderr (those that start with `ctl: `).
fn ctl_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("ctl: ")).collect()
}

// ---------------------------------------------------------------- exec

#[test]
fn exec_keeps_stdout_and_stderr_apart_and_passes_exit_codes_and_signal_deaths() {
    let (nats, env, _agent) = rig!(&[]);
    let out = env.broker_exec(&nats, NAME, &["echo out; echo err >&2; echo out2; exit 3"]);
    assert_eq!(stdout_of(&out), "out\nout2\n");
    assert_eq!(stderr_of(&out), "err\n");
    assert_eq!(out.status.code(), Some(3));
    for code in [0, 1, 255] {
        let out = env.broker_exec(&nats, NAME, &[&format!("exit {code}")]);
        assert_eq!(out.status.code(), Some(code), "{}", stderr_of(&out));
        assert_eq!(stderr_of(&out), "", "exit {code}: nothing of ctl's own");
    }
    for (signal, code) in [("KILL", 137), ("TERM", 143)] {
        let out = env.broker_exec(&nats, NAME, &[&format!("kill -{signal} $$")]);
        assert_eq!(out.status.code(), Some(code), "{}", stderr_of(&out));
    }
    // Several words arrive as exactly those words.
    let out = env.broker_exec(&nats, NAME, &["--", "printf", "%s\\n", "a b", "$HOME"]);
    assert_eq!(stdout_of(&out), "a b\n$HOME\n");
}

/// A session through the broker ends with its command: one after another,
/// each takes the agent's only place (`--max-sessions 1`).
#[test]
fn sessions_through_the_broker_end_with_their_commands() {
    let (nats, env, _agent) = rig!(&["--max-sessions", "1"]);
    for i in 0..4 {
        let out = env.broker_exec(&nats, NAME, &["-i", &format!("echo {i}")]);
        assert_eq!(stdout_of(&out), format!("{i}\n"), "{}", stderr_of(&out));
    }
}

#[test]
fn sixty_four_mib_of_random_bytes_cross_the_broker_byte_exact() {
    let (nats, env, _agent) = rig!(&[]);
    let file = env.root.path().join("random.bin");
    let out = std::process::Command::new("head")
        .args(["-c", "67108864", "/dev/urandom"])
        .output()
        .expect("head");
    std::fs::write(&file, &out.stdout).expect("write");
    let data = out.stdout;
    assert_eq!(data.len(), 64 << 20);
    let out = env.broker_exec(&nats, NAME, &[&format!("cat '{}'", file.display())]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(out.stdout.len(), data.len());
    assert_eq!(sha256_hex(&out.stdout), sha256_hex(&data), "bytes differ");
    assert_eq!(
        nats.slow_consumers(),
        0,
        "the broker cut nobody off as slow"
    );
}

/// Uploads grow their sessions' windows; four of them used to take the
/// agent's whole receive budget on the broker, and every other session
/// was refused as busy until they ended. (Windows grow only while the
/// agent keeps up: a release build's does, and this failed there before;
/// a debug build's agent lags, its windows stay small, and the carrier's
/// own test, `growing_windows_leave_room_for_new_sessions`, covers it.)
#[test]
fn four_uploads_to_one_agent_leave_room_for_everyone_else() {
    let (nats, env, _agent) = rig!(&[]);
    let marks = env.root.path().join("marks");
    std::fs::create_dir(&marks).expect("marks dir");
    let mark = |i: usize| marks.join(i.to_string());
    let mut uploads = Vec::new();
    for i in 0..4 {
        // Past 32 MiB each window has grown as far as it will.
        let command = format!(
            "head -c 33554432 >/dev/null; touch '{}'; exec cat >/dev/null",
            mark(i).display()
        );
        let mut ctl = env
            .broker_ctl(&nats)
            .args(["exec", "-i", NAME, &command])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctl");
        let mut stdin = ctl.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            let chunk = vec![0u8; 1 << 20];
            while stdin.write_all(&chunk).is_ok() {}
        });
        uploads.push((ctl, writer));
    }
    assert!(
        wait_until(Duration::from_secs(60), || (0..4).all(|i| mark(i).exists())),
        "the uploads did not get through 32 MiB each"
    );
    let out = env.broker_exec(&nats, NAME, &["echo fine"]);
    assert_eq!(stdout_of(&out), "fine\n", "{}", stderr_of(&out));
    let out = env.broker_run(&nats, &["job", "list", NAME]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    for (mut ctl, writer) in uploads {
        let _ = ctl.kill();
        let _ = ctl.wait();
        writer.join().expect("writer");
    }
}

#[test]
fn stdin_with_dash_i_reaches_the_command_and_its_end() {
    let (nats, env, _agent) = rig!(&[]);
    let mut ctl = env
        .broker_ctl(&nats)
        .args(["exec", "-i", NAME, "wc -c; cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ctl");
    // 3 MiB: far more than one broker message and the first window.
    let input = random_bytes(3 << 20, 7);
    let mut stdin = ctl.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        stdin.write_all(&input).expect("write stdin");
    });
    let out = ctl.wait_with_output().expect("ctl");
    writer.join().expect("writer");
    assert!(out.status.success());
    assert_eq!(stdout_of(&out).trim(), (3 << 20).to_string());

    // Without -i the command's stdin is empty.
    let out = env.broker_exec(&nats, NAME, &["wc -c"]);
    assert_eq!(stdout_of(&out).trim(), "0");
}

#[test]
fn dash_t_gives_a_remote_terminal_through_the_broker() {
    require_tool!("tmux");
    let (nats, env, _agent) = rig!(&[]);
    let tmux = Terminal::start(
        &env,
        (100, 30),
        &format!(
            "{} --broker {} exec -t {NAME} 'trap \"echo interrupted; exit 9\" INT; tty; echo \"size $(stty size)\"; \
             read line; echo \"read $line\"; sleep 600'",
            bin("ctl").display(),
            nats.url,
        ),
        "sleep 60",
    )
    .joining_wrapped_lines();
    let screen = tmux.wait_for("size 30 100");
    assert!(screen.contains("/dev/pts/"), "{screen}");
    tmux.keys(&["typed words", "Enter"]);
    tmux.wait_for("read typed words");
    // Ctrl-C goes through the remote terminal to the remote job.
    tmux.keys(&["C-c"]);
    let screen = tmux.wait_for("rc=9");
    assert!(screen.contains("interrupted"), "{screen}");
}

#[test]
fn timeout_through_the_broker_exits_124_and_kills_the_command() {
    let (nats, env, _agent) = rig!(&[]);
    let sleep = unique_sleep(600);
    let out = env.broker_exec(&nats, NAME, &["--timeout", "1s", &format!("sleep {sleep}")]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr_of(&out));
    assert!(
        wait_until(Duration::from_secs(5), || sleeps_running(&sleep) == 0),
        "the timed-out command is gone"
    );
}

#[test]
fn ctrl_c_is_forwarded_through_the_broker() {
    let (nats, env, _agent) = rig!(&[]);
    let sleep = unique_sleep(600);
    let (mut ctl, stdout) = spawn_exec_until(
        &env,
        &nats,
        NAME,
        &format!("trap 'echo cleanup; exit 7' INT; echo ready; sleep {sleep}; echo not-reached"),
        "ready",
    );
    assert!(wait_until(DEADLINE, || sleeps_running(&sleep) == 1));
    send_signal(ctl.id(), "INT");
    assert_eq!(
        wait_for_exit(&mut ctl).code(),
        Some(7),
        "the remote trap's status"
    );
    assert_eq!(rest_of(Some(stdout)), "cleanup\n");
    assert!(
        wait_until(Duration::from_secs(5), || sleeps_running(&sleep) == 0),
        "the interrupted command is gone"
    );
}

/// `n` agents named `node01` … on one broker, all with this env's
/// identity; each agent's shell is a symlink named after it, so that
/// [`FLEET_HOST`] sets `H` to its name in a command.
fn broker_fleet(env: &Env, nats: &Nats, n: usize) -> Vec<Agent> {
    let names: Vec<String> = (1..=n).map(|i| format!("node{i:02}")).collect();
    let agents: Vec<Agent> = names
        .iter()
        .map(|name| {
            let shell = env.root.path().join(format!("shell-{name}"));
            std::os::unix::fs::symlink("/bin/sh", &shell).expect("shell symlink");
            env.spawn_broker_agent(
                &nats.url,
                name,
                &["--shell", shell.to_str().expect("utf-8")],
            )
        })
        .collect();
    for (agent, name) in agents.iter().zip(&names) {
        wait_connected(agent, name);
    }
    agents
}

#[test]
fn fan_out_to_ten_agents_by_node_set() {
    let nats = require_nats!();
    let env = Env::new();
    let _agents = broker_fleet(&env, &nats, 10);
    let names: Vec<String> = (1..=10).map(|i| format!("node{i:02}")).collect();
    let online = env.broker_run(&nats, &["hosts", "--online"]);
    assert!(online.status.success(), "{}", stderr_of(&online));
    assert_eq!(stdout_of(&online).lines().collect::<Vec<_>>(), names);
    let online = env.broker_run(&nats, &["hosts", "--online", "--json", "node0[2-3]"]);
    let records = json_lines(&online);
    assert_eq!(records.len(), 2, "{records:?}");
    for (record, name) in records.iter().zip(["node02", "node03"]) {
        assert_eq!(record["name"], name);
        assert_eq!(record["fingerprint"], env.agent_fingerprint.as_str());
        assert_eq!(record["version"], env!("CARGO_PKG_VERSION"));
    }
    env.trust_broker(&nats, "node[01-10]");
    let out = env.broker_run(
        &nats,
        &[
            "exec",
            "node[01-10]",
            &format!(
                "{FLEET_HOST} echo \"hi $H\"; echo \"err $H\" >&2; test $H != node04 || exit 3"
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    let mut lines: Vec<String> = stdout_of(&out).lines().map(str::to_owned).collect();
    lines.sort();
    let expected: Vec<String> = (1..=10)
        .map(|i| format!("node{i:02}: hi node{i:02}"))
        .collect();
    assert_eq!(lines, expected);
    let err = stderr_of(&out);
    for i in 1..=10 {
        assert!(
            err.contains(&format!("node{i:02}: err node{i:02}\n")),
            "{err}"
        );
    }
    assert_eq!(
        ctl_lines(&err),
        ["ctl: 1 of 10 hosts failed: exit 3: node04"],
        "{err}"
    );

    // --json: one record per host, the status apart from ctl's errors.
    let out = env.broker_run(&nats, &["exec", "--json", "node[01-10],node11", "echo j"]);
    assert_eq!(out.status.code(), Some(255));
    let records = json_lines(&out);
    assert_eq!(records.len(), 11, "{records:?}");
    for record in &records {
        if record["host"] == "node11" {
            assert_eq!(record["status"], "error");
            assert_eq!(record["error"]["kind"], "offline");
        } else {
            assert_eq!(record["status"], "exited", "{record}");
            assert_eq!(record["exit_code"], 0);
            assert_eq!(record["stdout"], "j\n");
        }
    }
}

#[test]
fn cp_pushes_and_pulls_through_the_broker() {
    let (nats, env, agent) = rig!(&[]);
    let root = env.root.path();
    let (there, back) = (new_dir(root, "there"), new_dir(root, "back"));
    let source = root.join("payload.bin");
    let data = random_bytes(5 << 20, 11);
    std::fs::write(&source, &data).expect("write");
    let pushed = env.broker_run(
        &nats,
        &[
            "cp",
            source.to_str().expect("utf-8"),
            &format!("{NAME}:{}", there.display()),
        ],
    );
    assert!(pushed.status.success(), "{}", stderr_of(&pushed));
    assert_file(there.join("payload.bin"), &data);
    let pulled = env.broker_run(
        &nats,
        &[
            "cp",
            &format!("{NAME}:{}", there.join("payload.bin").display()),
            back.to_str().expect("utf-8"),
        ],
    );
    assert!(pulled.status.success(), "{}", stderr_of(&pulled));
    assert_file(back.join("payload.bin"), &data);
    assert!(agent.wait_for_log("direction=\"push\"").is_some());
}

#[test]
fn ping_through_the_broker_names_the_agent_and_its_version() {
    let (nats, env, _agent) = rig!(&[]);
    let out = env.broker_run(&nats, &["ping", NAME]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    assert!(
        text.contains(&format!("rexec-agent {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    // The broker URL may come from the environment as well.
    let out = env
        .ctl()
        .env("REXEC_BROKER", &nats.url)
        .args(["ping", NAME])
        .output()
        .expect("ctl");
    assert!(out.status.success(), "{}", stderr_of(&out));
}

// ------------------------------------------------------------ refusals

#[test]
fn an_unauthorized_client_is_refused_and_the_agent_keeps_serving() {
    let (nats, env, agent) = rig!(&[]);
    let stranger = env.other_client(None);
    let out = env
        .broker_ctl(&nats)
        .env("REXEC_CONFIG_DIR", &stranger)
        .args(["exec", NAME, "echo should-not-run"])
        .output()
        .expect("ctl");
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(stdout_of(&out), "");
    let err = stderr_of(&out);
    assert!(err.contains("refused this client"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    agent.expect_log("not authorized");
    let ok = env.broker_exec(&nats, NAME, &["echo still-serving"]);
    assert_eq!(stdout_of(&ok), "still-serving\n", "{}", stderr_of(&ok));
}

#[test]
fn an_impostor_under_a_known_name_is_host_key_changed() {
    let (nats, env, agent) = rig!(&[]);
    drop(agent);
    // Another machine's identity, serving the same name on the broker.
    let impostor = Env::new();
    let fake = env.spawn_broker_agent_in(&impostor.agent_dir, &nats.url, NAME, &[]);
    wait_connected(&fake, NAME);
    let out = env.broker_exec(&nats, NAME, &["echo should-not-run"]);
    crate::util::checks::assert_refused(
        &out,
        "HOST KEY CHANGED",
        &[
            (&env.agent_fingerprint, "the pinned key"),
            (&impostor.agent_fingerprint, "the new key"),
        ],
    );
    let known = std::fs::read_to_string(env.ctl_dir.join("known_hosts")).expect("known hosts");
    assert!(
        known.contains(&env.agent_fingerprint) && !known.contains(&impostor.agent_fingerprint),
        "never silently re-trusted: {known}"
    );
}

/// Two machines whose host names share their first word (node1.siteA,
/// node1.siteB) serve one name by default. Every session to it reaches
/// both and fails; before, that read as "a message was missing,
/// duplicated or out of order", and neither agent said a word.
#[test]
fn two_agents_under_one_name_say_so_and_so_does_ctl() {
    let (nats, env, first) = rig!(&[]);
    let other = Env::new();
    let second = env.spawn_broker_agent_in(&other.agent_dir, &nats.url, NAME, &[]);
    let clash = format!("two agents answer to the name {NAME} on the broker");
    for agent in [&second, &first] {
        agent.expect_log(&clash);
    }
    // Which agent accepts first decides what ctl meets first: the other
    // one's acceptance (the clash), or, when the agent ctl has never met
    // answers first, its key (HOST KEY CHANGED, which is as true). Each
    // try fails in one line saying one of the two; a few tries meet the
    // clash.
    let mut met_the_clash = false;
    for _ in 0..8 {
        let out = env.broker_exec(&nats, NAME, &["true"]);
        assert_eq!(out.status.code(), Some(255));
        let err = stderr_of(&out);
        assert_eq!(ctl_lines(&err).len(), 1, "{err}");
        if err.starts_with(&format!("ctl: {NAME}: {clash}")) {
            met_the_clash = true;
            break;
        }
        assert!(err.contains("HOST KEY CHANGED"), "{err}");
    }
    assert!(met_the_clash, "ctl never said the name is served twice");
    let online = env.broker_run(&nats, &["hosts", "--online"]);
    assert!(online.status.success(), "{}", stderr_of(&online));
    assert_eq!(stdout_of(&online), format!("{NAME}\n"));
    assert!(
        stderr_of(&online).contains(&clash),
        "{}",
        stderr_of(&online)
    );
    // Each agent said it once.
    for agent in [&first, &second] {
        assert_eq!(log_lines_with(agent, &clash), 1, "{}", agent.log());
    }
    // With one gone, the name works again.
    drop(second);
    let ok = env.broker_exec(&nats, NAME, &["echo alone"]);
    assert_eq!(stdout_of(&ok), "alone\n", "{}", stderr_of(&ok));
}

#[test]
fn a_name_nobody_serves_is_offline_at_once() {
    let (nats, env, _agent) = rig!(&[]);
    let started_offline = Instant::now();
    let out = env.broker_exec(&nats, "labpc99", &["echo should-not-run"]);
    // A generous bound, not a speed claim: no timeout was waited for.
    assert!(
        started_offline.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started_offline.elapsed()
    );
    assert_eq!(out.status.code(), Some(255));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("labpc99: not connected to the broker"),
        "{err}"
    );

    // In a fan-out the summary names it with its kind; the others run.
    let out = env.broker_run(&nats, &["exec", &format!("{NAME},labpc99"), "echo ran"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(stdout_of(&out), format!("{NAME}: ran\n"));
    assert_eq!(
        ctl_lines(&stderr_of(&out)),
        [
            "ctl: labpc99: not connected to the broker",
            "ctl: 1 of 2 hosts failed: offline: labpc99"
        ],
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn garbage_and_oversized_messages_on_an_agents_subjects_are_dropped() {
    let (nats, env, mut agent) = rig!(&[]);
    let raw = RawNats::connect(&nats.url);
    let open = format!("rexec.v1.agent.{NAME}.open");
    // Open requests that are not JSON, or far too large, or name no
    // valid session: refused, answered, logged.
    for request in [
        b"\x00\xffnot json".to_vec(),
        vec![b'{'; 512 << 10],
        br#"{"session":"../../etc","window":65536}"#.to_vec(),
        br#"{"session":"00112233445566778899aabbccddeeff","window":0}"#.to_vec(),
    ] {
        if let Some(answer) = raw.request(&open, request) {
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.contains("\"accepted\":false"), "{answer}");
        }
    }
    // Stream messages for sessions that do not exist, and ones that are
    // not stream messages at all.
    let stray = format!("rexec.v1.agent.{NAME}.session.00112233445566778899aabbccddeeff.from-ctl");
    raw.publish(&stray, b"garbage".to_vec());
    raw.publish(&stray, vec![1; 900 << 10]);
    raw.publish(&format!("rexec.v1.agent.{NAME}.junk"), vec![0; 100]);
    agent.expect_log("refused a session opened through the broker");

    // A live session hit by garbage on its subject ends, and only it.
    let mut watch = raw.subscribe(&format!("rexec.v1.agent.{NAME}.session.*.from-agent"));
    let sleep = unique_sleep(600);
    let (mut victim, _stdout) = spawn_exec_until(
        &env,
        &nats,
        NAME,
        &format!("echo ready; sleep {sleep}"),
        "ready",
    );
    let subject = raw.next_subject(&mut watch).expect("the session's traffic");
    let from_ctl = subject.replace(".from-agent", ".from-ctl");
    raw.publish(&from_ctl, vec![9; 40]);
    let mut oversized = vec![1u8];
    oversized.extend_from_slice(&[0; 12]);
    oversized.resize(13 + (200 << 10), 0);
    raw.publish(&from_ctl, oversized);
    assert_eq!(wait_for_exit(&mut victim).code(), Some(255));
    let err = rest_of(victim.stderr.take());
    assert!(err.contains("lost"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        wait_until(Duration::from_secs(5), || sleeps_running(&sleep) == 0),
        "the damaged session's command is gone"
    );

    let ok = env.broker_exec(&nats, NAME, &["echo still-serving"]);
    assert_eq!(stdout_of(&ok), "still-serving\n", "{}", stderr_of(&ok));
    assert!(
        agent.child.try_wait().expect("wait").is_none(),
        "the agent runs on"
    );
}

/// Anyone on the broker can send open requests under an agent's name, and
/// discovery requests that every agent answers: neither may cost the
/// agent a line of log each. Before, each refused open was a warning, and
/// a discovery request whose reply subject was another agent's open
/// subject made every agent answer there, a line on that agent for each.
#[test]
fn open_and_discovery_floods_cost_the_agents_log_a_bounded_number_of_lines() {
    let nats = require_nats!();
    let env = Env::new();
    let agents = broker_fleet(&env, &nats, 3);
    let raw = RawNats::connect(&nats.url);
    let open = |name: &str| format!("rexec.v1.agent.{name}.open");
    let inbox = "_INBOX.flood";
    raw.publish_many(&open("node01"), Some(inbox), b"garbage", 5_000);
    raw.publish_many(&open("node01"), None, b"garbage", 5_000);
    raw.publish_many("rexec.v1.discover", Some(&open("node02")), b"", 100);
    // Each is a line, up to 20 per interval (10 s), or counted in the
    // interval's summary line. The flood may span two intervals.
    let refused = "refused a session opened through the broker";
    let logged = |log: &str| -> (u64, u64) {
        let lines = log.lines().filter(|l| l.contains(refused)).count() as u64;
        let counted = log
            .lines()
            .filter_map(|l| {
                l.split_once(" opens through the broker refused")?
                    .0
                    .rsplit(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>();
        (lines, counted)
    };
    let all_told = wait_until(Duration::from_secs(30), || {
        let (lines, counted) = logged(&agents[0].log());
        lines + counted >= 10_000
    });
    let log = agents[0].log();
    let (lines, counted) = logged(&log);
    assert!(lines <= 40, "{lines} lines about refused opens:\n{log}");
    assert!(all_told, "not every refusal was logged or counted:\n{log}");
    assert_eq!(lines + counted, 10_000, "{log}");
    // Discovery with another agent's open subject as its reply was not
    // answered there.
    assert_eq!(
        log_lines_with(&agents[1], refused),
        0,
        "{}",
        agents[1].log()
    );
    // ctl still discovers and reaches them.
    let online = env.broker_run(&nats, &["hosts", "--online"]);
    assert_eq!(
        stdout_of(&online),
        "node01\nnode02\nnode03\n",
        "{}",
        stderr_of(&online)
    );
    env.trust_broker(&nats, "node01");
    let ok = env.broker_exec(&nats, "node01", &["echo still-serving"]);
    assert_eq!(stdout_of(&ok), "still-serving\n", "{}", stderr_of(&ok));
}

/// Answers to requests that ask twice with one reply inbox: the broker
/// lets an agent answer each request once (`allow_responses`) and refuses
/// the second answer. Anyone on the broker can send such pairs, as many as
/// they like; before, each refusal was a warning in every agent's log
/// (hundreds a second from one sender), outside any limit.
#[test]
fn refused_answers_to_doubled_requests_cost_the_agents_log_nothing() {
    let nats = require_nats!(
        r#"authorization {
  users = [
    { user: labpc07, password: "pw-labpc07", permissions: {
        subscribe: { allow: ["rexec.v1.agent.labpc07.open", "rexec.v1.agent.labpc07.session.*.from-ctl", "rexec.v1.discover", "rexec.v1.agent.labpc07.inbox.>"] }
        publish: { allow: ["rexec.v1.agent.labpc07.session.*.from-agent", "rexec.v1.agent.labpc07.open"] }
        allow_responses: true } }
    { user: bob, password: "pw-bob" }
  ]
}
no_auth_user: bob"#
    );
    let env = Env::new();
    let password_file = nats.file("labpc07.pass");
    secret_file(&password_file, "pw-labpc07\n");
    let agent = env.broker_agent(
        &nats,
        NAME,
        &[
            "--broker-user",
            "labpc07",
            "--broker-password-file",
            &path_str(&password_file),
        ],
    );
    // bob, as is ctl: any user of the broker.
    let raw = RawNats::connect(&nats.url);
    for i in 0..300 {
        let reply = format!("_INBOX.doubled.{i}");
        raw.publish_many("rexec.v1.discover", Some(&reply), b"", 2);
        raw.publish_many(
            &format!("rexec.v1.agent.{NAME}.open"),
            Some(&reply),
            b"garbage",
            2,
        );
    }
    // Every request was taken: the last one's answer is in the log's
    // count of refused opens by now, or soon.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        log_lines_with(&agent, "refused us permission"),
        0,
        "{}",
        agent.log()
    );
    env.trust_broker(&nats, NAME);
    let ok = env.broker_exec(&nats, NAME, &["echo still-serving"]);
    assert_eq!(stdout_of(&ok), "still-serving\n", "{}", stderr_of(&ok));
}

// ---------------------------------------------- the example config

/// The example's agent `user` with its password in a 0600 file; flags for
/// `rexec-agent run`.
fn agent_credentials(nats: &Nats, trusted: &BrokerCa, user: &str, password: &str) -> Vec<String> {
    let password_file = nats.file(&format!("{user}-{}.pass", password.len()));
    secret_file(&password_file, &format!("{password}\n"));
    vec![
        "--broker-ca".to_owned(),
        path_str(&trusted.ca),
        "--broker-user".to_owned(),
        user.to_owned(),
        "--broker-password-file".to_owned(),
        path_str(&password_file),
    ]
}

fn path_str(path: &std::path::Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

/// ctl's hosts.toml `[broker]` for the example's user `admin`, trusting
/// the broker by `trust` (`ca_file = "…"` or `fingerprint = "…"`).
fn ctl_broker_config(env: &Env, nats: &Nats, trust: &str, password: &str) {
    let password_file = nats.file(&format!("admin-{}.pass", password.len()));
    secret_file(&password_file, &format!("{password}\n"));
    std::fs::create_dir_all(&env.ctl_dir).expect("ctl dir");
    std::fs::write(
        env.ctl_dir.join("hosts.toml"),
        format!(
            "[broker]\nurl = \"{}\"\n{trust}\nuser = \"admin\"\npassword_file = \"{}\"\n",
            nats.url,
            password_file.display()
        ),
    )
    .expect("hosts.toml");
}

fn ca_file(ca: &BrokerCa) -> String {
    format!("ca_file = \"{}\"", ca.ca.display())
}

fn str_args(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn the_example_config_confines_each_agent_to_its_own_name() {
    let (nats, ca) = require_example_nats!();
    let env = Env::new();
    let creds = agent_credentials(&nats, &ca, "labpc07", "change-me-labpc07");
    let agent = env.spawn_broker_agent(&nats.url, "labpc07", &str_args(&creds));
    wait_connected(&agent, "labpc07");
    ctl_broker_config(&env, &nats, &ca_file(&ca), "change-me-admin");

    // ctl reaches the agent with the broker from hosts.toml alone.
    let out = env.ctl_run(&["exec", "labpc07", "echo over-tls"]);
    assert_eq!(stdout_of(&out), "over-tls\n", "{}", stderr_of(&out));
    assert!(out.status.success());

    // labpc08's credentials, used to serve labpc07: the server refuses
    // the subscription, and the agent says so in its own words.
    let impostor = Env::new();
    let creds = agent_credentials(&nats, &ca, "labpc08", "change-me-labpc08");
    let mut notify = NotifySocket::new(impostor.root.path());
    let mut cmd = notify.agent_command(&impostor.agent_dir);
    cmd.args(["--broker", &nats.url, "--name", "labpc07"])
        .args(&creds);
    let wrong = Agent::spawn(cmd);
    let line = wrong.expect_log("does not let us serve the name labpc07");
    assert!(!line.contains("nats"), "our own words: {line}");
    // Its status line says it, too, rather than "connected … as labpc07".
    let refused = format!(
        "; connected to the broker at {}, but the broker does not let us serve the name labpc07",
        nats.url
    );
    let end = Instant::now() + DEADLINE;
    let mut seen = None;
    while seen.is_none() && Instant::now() < end {
        seen = notify.wait_for("STATUS=").filter(|m| m.contains(&refused));
    }
    assert!(
        seen.is_some(),
        "a status line saying the name is refused: {:?}",
        notify.received
    );
    // The real labpc07 still answers, under its pinned key.
    let out = env.ctl_run(&["exec", "labpc07", "echo still-the-real-one"]);
    assert_eq!(
        stdout_of(&out),
        "still-the-real-one\n",
        "{}",
        stderr_of(&out)
    );
    // Nothing under labpc08's name: its user served nothing.
    let out = env.ctl_run(&["exec", "labpc08", "true"]);
    assert_failed_saying(&out, 255, "labpc08: not connected to the broker");
}

/// The broker's permissions changed under a running agent: restarted with
/// a config that no longer lets it serve its name, the agent says so; once
/// the admin fixes the config and reloads the broker (its clients stay
/// connected), the agent asks for its subscription again and serves.
/// Before, nothing asked again, and the agent stayed unreachable until it
/// was restarted.
#[test]
fn an_agent_refused_its_name_after_a_broker_restart_serves_again_once_allowed() {
    let (mut nats, ca) = require_example_nats!();
    let env = Env::new();
    let creds = agent_credentials(&nats, &ca, "labpc07", "change-me-labpc07");
    let agent = env.spawn_broker_agent(&nats.url, "labpc07", &str_args(&creds));
    wait_connected(&agent, "labpc07");
    ctl_broker_config(&env, &nats, &ca_file(&ca), "change-me-admin");
    let out = env.ctl_run(&["exec", "labpc07", "echo before"]);
    assert_eq!(stdout_of(&out), "before\n", "{}", stderr_of(&out));

    let allowed = nats.config().to_owned();
    let open = "\"rexec.v1.agent.labpc07.open\",\n";
    assert!(
        allowed.contains(open),
        "the example lets labpc07 serve its name"
    );
    nats.restart_with(allowed.replacen(open, "", 1));
    agent.expect_log("does not let us serve the name labpc07");
    let out = env.ctl_run(&["exec", "labpc07", "true"]);
    assert_failed_saying(&out, 255, "labpc07: not connected to the broker");

    nats.reload_with(allowed);
    // The agent asks again every 30 s.
    assert!(
        wait_until(Duration::from_secs(60), || times_connected(
            &agent, "labpc07"
        ) >= 2),
        "the agent serves its name again:\n{}",
        agent.log()
    );
    let out = env.ctl_run(&["exec", "labpc07", "echo after"]);
    assert_eq!(stdout_of(&out), "after\n", "{}", stderr_of(&out));
}

/// Waits for `agent` to log `needle` twice (a first attempt and a retry),
/// and checks that it still runs and never panicked.
#[track_caller]
fn assert_retries_saying(agent: &mut Agent, needle: &str) {
    assert!(
        wait_until(DEADLINE, || log_lines_with(agent, needle) >= 2),
        "no {needle:?}, then a retry:\n{}",
        agent.log()
    );
    assert!(
        agent.child.try_wait().expect("wait").is_none(),
        "still running"
    );
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

/// Runs `ctl exec labpc07 true` and checks that it is one line with
/// `needle` and exit 255.
#[track_caller]
fn assert_ctl_refused_saying(env: &Env, needle: &str) {
    let out = env.ctl_run(&["exec", "labpc07", "true"]);
    assert_eq!(out.status.code(), Some(255));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{err}");
}

#[test]
fn a_wrong_broker_password_is_one_line_and_a_retry() {
    let (nats, ca) = require_example_nats!();
    let env = Env::new();
    let creds = agent_credentials(&nats, &ca, "labpc07", "wrong-password");
    let mut agent = env.spawn_broker_agent(&nats.url, "labpc07", &str_args(&creds));
    assert_retries_saying(&mut agent, "refused our credentials");
    ctl_broker_config(&env, &nats, &ca_file(&ca), "wrong-password");
    assert_ctl_refused_saying(&env, "refused our credentials");
}

#[test]
fn an_untrusted_broker_certificate_is_one_line_and_a_retry() {
    let (nats, _ca) = require_example_nats!();
    let env = Env::new();
    // A CA (and a certificate) that has nothing to do with this broker.
    let other = BrokerCa::make(nats.dir.path(), "other");
    ctl_broker_config(&env, &nats, &ca_file(&other), "change-me-admin");
    assert_ctl_refused_saying(&env, "TLS with the broker");
    let creds = agent_credentials(&nats, &other, "labpc07", "change-me-labpc07");
    let mut agent = env.spawn_broker_agent(&nats.url, "labpc07", &str_args(&creds));
    assert_retries_saying(&mut agent, "TLS with the broker");
}

#[test]
fn a_pinned_broker_certificate_replaces_the_ca() {
    let (nats, ca) = require_example_nats!();
    let env = Env::new();
    let other = BrokerCa::make(nats.dir.path(), "other");
    let password_file = nats.file("labpc07.pass");
    secret_file(&password_file, "change-me-labpc07\n");
    let pinned = |fingerprint: &str| {
        [
            "--broker-fingerprint".to_owned(),
            fingerprint.to_owned(),
            "--broker-user".to_owned(),
            "labpc07".to_owned(),
            "--broker-password-file".to_owned(),
            path_str(&password_file),
        ]
    };
    let mut wrong =
        env.spawn_broker_agent(&nats.url, "labpc07", &str_args(&pinned(&other.fingerprint)));
    assert_retries_saying(&mut wrong, "TLS with the broker");
    drop(wrong);
    let agent = env.spawn_broker_agent(&nats.url, "labpc07", &str_args(&pinned(&ca.fingerprint)));
    wait_connected(&agent, "labpc07");

    let pin = |fingerprint: &str| format!("fingerprint = \"{fingerprint}\"");
    ctl_broker_config(&env, &nats, &pin(&other.fingerprint), "change-me-admin");
    assert_ctl_refused_saying(&env, "TLS with the broker");
    ctl_broker_config(&env, &nats, &pin(&ca.fingerprint), "change-me-admin");
    let out = env.ctl_run(&["exec", "labpc07", "echo pinned"]);
    assert_eq!(stdout_of(&out), "pinned\n", "{}", stderr_of(&out));
}

// -------------------------------------------------------------- faults

#[test]
fn kill_9_of_ctl_mid_command_kills_the_remote_group_within_the_keepalive_bound() {
    let (nats, env, agent) = rig!(&["--keepalive-interval", "200ms", "--keepalive-count", "3"]);
    let sleep = unique_sleep(600);
    let mut ctl = spawn_exec(
        &env,
        &nats,
        &[],
        NAME,
        &format!("sleep {sleep} & sleep {sleep}; wait"),
    );
    assert!(
        wait_until(DEADLINE, || sleeps_running(&sleep) >= 2),
        "both sleeps should start"
    );
    ctl.kill().expect("kill -9");
    ctl.wait().expect("reap");
    // The keepalive bound is 3 × 200 ms, then a 500 ms kill grace; 5 s is
    // generous on a loaded machine, and far below the carrier's own
    // abandon limit, so it is the session's keepalive that decides.
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&sleep).is_empty()),
        "left behind: {:?}",
        processes_with(&sleep)
    );
    assert!(
        wait_until(Duration::from_secs(3), || zombie_children(agent.child.id())
            .is_empty()),
        "unreaped: {:?}",
        zombie_children(agent.child.id())
    );
}

#[test]
fn kill_9_of_ctl_while_the_command_writes_kills_it_within_the_keepalive_bound() {
    // The same with a command whose output fills every window on the way,
    // so that the agent's keepalive waits behind data nobody reads.
    let (nats, env, _agent) = rig!(&["--keepalive-interval", "200ms", "--keepalive-count", "3"]);
    let mark = marker("yes");
    let (mut ctl, _stdout) = spawn_exec_until(&env, &nats, NAME, &format!("yes {mark}"), &mark);
    ctl.kill().expect("kill -9");
    ctl.wait().expect("reap");
    let writers = || {
        processes_with(&mark)
            .into_iter()
            .filter(|(_, cmd)| cmd.starts_with("yes "))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(5), || writers() == 0),
        "still writing 5 s after ctl was killed"
    );
}

#[test]
fn a_stopped_ctl_outlives_the_keepalive_bound_while_the_command_writes() {
    // As in direct mode, where the kernel of a stopped ctl still answers
    // TCP's probes: the agent asks the broker, finds ctl still there, and
    // holds the command instead of ending it as it ends a killed ctl's.
    let (nats, env, _agent) = rig!(&["--keepalive-interval", "200ms", "--keepalive-count", "3"]);
    let mark = marker("yes");
    let (mut ctl, mut stdout) = spawn_exec_until(&env, &nats, NAME, &format!("yes {mark}"), &mark);
    send_signal(ctl.id(), "STOP");
    let stopped = Instant::now();
    // Past the agent's bound of 600 ms, when it asks the broker, and short
    // of ctl's own limit (2 s without a sign of life from the agent, which
    // a ctl stopped longer counts against the agent when it goes on):
    // samples for 1.2 s by the clock, none of which may find the writer gone.
    let writing = || {
        processes_with(&mark)
            .iter()
            .any(|(_, cmd)| cmd.starts_with("yes "))
    };
    let mut held = true;
    while stopped.elapsed() < Duration::from_millis(1200) {
        held &= writing();
        std::thread::sleep(Duration::from_millis(100));
    }
    send_signal(ctl.id(), "CONT");
    let mut more = vec![0u8; 16 << 20];
    let flowed = stdout.read_exact(&mut more).is_ok();
    let _ = ctl.kill();
    let _ = ctl.wait();
    assert!(held, "the command was ended while ctl was only stopped");
    assert!(
        flowed,
        "output flows again once ctl goes on: {}",
        rest_of(ctl.stderr.take())
    );
}

#[test]
fn ctrl_c_reaches_a_command_that_writes_without_end() {
    let (nats, env, _agent) = rig!(&[]);
    let mark = marker("yes");
    let mut ctl = env
        .broker_ctl(&nats)
        .args(["exec", NAME, &format!("yes {mark}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctl");
    let writing = || {
        processes_with(&mark)
            .iter()
            .any(|(_, cmd)| cmd.starts_with("yes "))
    };
    assert!(wait_until(DEADLINE, writing), "the command starts");
    // Some output first, so that every window on the way is busy.
    std::thread::sleep(Duration::from_millis(500));
    send_signal(ctl.id(), "INT");
    let ended = wait_until(DEADLINE, || ctl.try_wait().expect("wait").is_some());
    if !ended {
        let _ = ctl.kill();
    }
    let status = ctl.wait().expect("reap");
    assert!(ended, "ctl did not end after Ctrl-C");
    assert_eq!(status.code(), Some(130), "{}", rest_of(ctl.stderr.take()));
    assert!(
        wait_until(Duration::from_secs(5), || !writing()),
        "the command is gone"
    );
}

#[test]
fn a_stopped_ctl_holds_back_an_endless_writer_without_memory_or_slow_consumers() {
    // The server cuts off a client it could not write to for its write
    // deadline (10 s by default) as a slow consumer, whatever its pending
    // bytes; 2 s here, so that watching for 4 s covers a ctl stopped far
    // longer on a default server.
    let (nats, env, agent) = rig_on(require_nats!("write_deadline: \"2s\""), &[]);
    let mark = marker("yes");
    let (mut ctl, mut stdout) = spawn_exec_until(&env, &nats, NAME, &format!("yes {mark}"), &mark);
    let before = rss_kib(agent.child.id()).expect("agent RSS");
    send_signal(ctl.id(), "STOP");
    // At `yes` speed an unbounded buffer would grow by hundreds of MiB a
    // second; a bounded count of samples over about 4 s.
    let mut peak = before;
    for _ in 0..40 {
        peak = peak.max(rss_kib(agent.child.id()).expect("agent RSS"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let slow = nats.slow_consumers();
    send_signal(ctl.id(), "CONT");
    // Going on, ctl gets the rest of the stream: the session survived
    // (16 MiB: more than every buffer on the way holds).
    let mut more = vec![0u8; 16 << 20];
    stdout.read_exact(&mut more).expect("output flows again");
    // What becomes of the command when ctl goes is other tests' business;
    // the agent ends it when dropped.
    let _ = ctl.kill();
    let _ = ctl.wait();
    assert!(
        peak < before + 64 * 1024,
        "agent RSS grew from {before} KiB to {peak} KiB"
    );
    assert_eq!(
        slow,
        0,
        "the broker cut a slow consumer off:\n{}",
        nats.log()
    );
}

#[test]
fn a_broker_restart_ends_running_sessions_as_lost_and_agents_come_back() {
    let mut nats = require_nats!();
    let env = Env::new();
    let agents = broker_fleet(&env, &nats, 2);
    env.trust_broker(&nats, "node[01-02]");
    let sleep = unique_sleep(600);
    // One "ready" from each of the two.
    let (mut ctl, mut stdout) = spawn_exec_until(
        &env,
        &nats,
        "node[01-02]",
        &format!("echo ready; sleep {sleep}"),
        "ready",
    );
    read_until_line(&mut stdout, "ready");
    assert!(wait_until(DEADLINE, || sleeps_running(&sleep) == 2));
    nats.restart();
    assert_eq!(wait_for_exit(&mut ctl).code(), Some(255));
    let err = rest_of(ctl.stderr.take());
    let mut said = ctl_lines(&err);
    assert_eq!(
        said.pop(),
        Some("ctl: 2 of 2 hosts failed: lost: node[01-02]"),
        "the summary names both: {err}"
    );
    said.sort();
    assert_eq!(
        said,
        ["node01", "node02"].map(|n| format!(
            "ctl: {n}: the session through the broker was lost: the connection to the broker was lost"
        )),
        "{err}"
    );
    assert!(
        wait_until(DEADLINE, || sleeps_running(&sleep) == 0),
        "the lost sessions' commands are gone"
    );
    for (agent, name) in agents.iter().zip(["node01", "node02"]) {
        assert!(
            wait_until(DEADLINE, || times_connected(agent, name) >= 2),
            "{name} reconnects by itself:\n{}",
            agent.log()
        );
    }
    let out = env.broker_run(&nats, &["exec", "node[01-02]", "echo back"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines, ["node01: back", "node02: back"]);
}

#[test]
fn a_restarted_agent_serves_the_next_run() {
    let (nats, env, agent) = rig!(&[]);
    drop(agent);
    let out = env.broker_exec(&nats, NAME, &["true"]);
    assert_failed_saying(&out, 255, "not connected to the broker");
    let _agent = env.broker_agent(&nats, NAME, &[]);
    let out = env.broker_exec(&nats, NAME, &["echo again"]);
    assert_eq!(stdout_of(&out), "again\n", "{}", stderr_of(&out));
    assert_eq!(stderr_of(&out), "", "the same pinned key, nothing to say");
}
