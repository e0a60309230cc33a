//! `ctl exec` against a real agent: exit codes, output, stdin, cleanup.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::checks::{
    assert_gone_soon, assert_one_ctl_line, assert_reaped_by, assert_refused,
};
use crate::util::*;

#[test]
fn remote_exit_codes_pass_through() {
    let (env, agent) = Env::with_agent();
    for code in [0, 1, 3, 255] {
        let out = env.exec(&agent, &[&format!("exit {code}")]);
        assert_eq!(out.status.code(), Some(code), "{}", stderr_of(&out));
        assert_eq!(
            stderr_of(&out),
            "",
            "exit {code} prints nothing of ctl's own"
        );
    }
}

#[test]
fn killed_by_signal_exits_128_plus_n() {
    let (env, agent) = Env::with_agent();
    assert_eq!(env.exec(&agent, &["kill -9 $$"]).status.code(), Some(137));
    assert_eq!(
        env.exec(&agent, &["kill -TERM $$"]).status.code(),
        Some(143)
    );
}

#[test]
fn stdout_and_stderr_are_kept_apart() {
    let (env, agent) = Env::with_agent();
    let out = env.exec(&agent, &["echo out; echo err >&2; echo out2; exit 3"]);
    assert_eq!(stdout_of(&out), "out\nout2\n");
    assert_eq!(stderr_of(&out), "err\n");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn first_contact_records_host_key_and_says_so_once() {
    let env = Env::new();
    let agent = env.unknown_agent_with(&[]);
    let first = env.exec(&agent, &["true"]);
    assert!(first.status.success());
    assert!(
        stderr_of(&first).contains(&env.agent_fingerprint),
        "first contact names the fingerprint: {}",
        stderr_of(&first)
    );
    let known = std::fs::read_to_string(env.ctl_dir.join("known_hosts")).unwrap();
    assert!(known.contains(&format!("{} {}", agent.target(), env.agent_fingerprint)));
    let second = env.exec(&agent, &["true"]);
    assert_eq!(stderr_of(&second), "", "known host: nothing to say");
}

#[test]
fn sixty_four_mib_of_random_bytes_arrive_byte_exact() {
    let (env, agent) = Env::with_agent();
    let data = random_bytes(64 << 20, 0x9e37_79b9_7f4a_7c15);
    let file = env.root.path().join("random.bin");
    std::fs::write(&file, &data).unwrap();
    let out = env.exec(&agent, &[&format!("cat '{}'", file.display())]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "bytes differ");
}

#[test]
fn output_arrives_while_the_command_still_runs() {
    let (env, agent) = Env::with_agent();
    // The command goes on only once the test has read its first line (or
    // after 20 s, when the test has failed already).
    let go = env.root.path().join("go");
    let mut ctl = env
        .ctl()
        .args([
            "exec",
            &agent.target(),
            &format!("echo first; {}; echo second", sh_wait_for(&go)),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(ctl.stdout.take().unwrap()).lines();
    let started = Instant::now();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the first line came only when the command gave up waiting"
    );
    assert!(
        ctl.try_wait().unwrap().is_none(),
        "ctl ended before the command did"
    );
    std::fs::write(&go, "").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    assert!(ctl.wait().unwrap().success());
}

#[test]
fn exit_comes_after_all_output() {
    let (env, agent) = Env::with_agent();
    let out = env.exec(
        &agent,
        &["head -c 3000000 /dev/zero; head -c 1000 /dev/zero >&2; exit 7"],
    );
    assert_eq!(out.stdout.len(), 3_000_000);
    assert_eq!(out.stderr.len(), 1000);
    assert_eq!(out.status.code(), Some(7));
}

/// `ctl exec -i TARGET COMMAND` started, its stdin and stdout piped.
fn exec_with_stdin(env: &Env, agent: &Agent, command: &str) -> std::process::Child {
    env.ctl()
        .args(["exec", "-i", &agent.target(), command])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn stdin_is_forwarded_with_dash_i_and_reaches_eof() {
    let (env, agent) = Env::with_agent();
    let mut ctl = exec_with_stdin(&env, &agent, "wc -c");
    ctl.stdin.take().unwrap().write_all(b"abc").unwrap();
    let out = ctl.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(stdout_of(&out).trim(), "3");
}

/// A command that reads stdin while its output pipe is full must not
/// deadlock: `cat` both ways, 16 MiB.
#[test]
fn stdin_and_output_flow_together_through_cat() {
    let (env, agent) = Env::with_agent();
    let data = random_bytes(16 << 20, 7);
    let mut ctl = exec_with_stdin(&env, &agent, "cat");
    let mut stdin = ctl.stdin.take().unwrap();
    let input = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut output = Vec::new();
    ctl.stdout.take().unwrap().read_to_end(&mut output).unwrap();
    writer.join().unwrap().unwrap();
    assert!(ctl.wait().unwrap().success());
    assert!(output == data, "cat returned different bytes");
}

/// A command that exits before reading all its stdin, its output read
/// slowly: every byte of the output and the exit status still arrive (the
/// agent reads what ctl still sends until ctl closes, rather than closing
/// on unread input, which resets the connection).
#[test]
fn output_read_slowly_arrives_whole_when_the_command_leaves_stdin_unread() {
    let (env, agent) = Env::with_agent();
    let mut ctl = env
        .ctl()
        .args(["exec", "-i", &agent.target(), "head -c 50000000; exit 3"])
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = ctl.stdout.take().unwrap();
    let mut total = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = stdout.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = ctl.wait_with_output().unwrap();
    assert_eq!(total, 50_000_000, "{}", stderr_of(&out));
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
}

/// Without -i the command's stdin is empty even when ours stays open: the
/// `while read host; do ctl exec "$host" ...; done < hosts` loop keeps its input.
#[test]
fn stdin_is_empty_without_dash_i() {
    let (env, agent) = Env::with_agent();
    let mut ctl = env
        .ctl()
        .args(["exec", &agent.target(), "cat; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let held_open = ctl.stdin.take().unwrap();
    let finished = wait_until(DEADLINE, || ctl.try_wait().unwrap().is_some());
    drop(held_open);
    assert!(finished, "cat should see EOF at once");
    let mut out = String::new();
    ctl.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(out, "done\n");

    let script = format!(
        "printf 'a\\nb\\nc\\n' | while read h; do {} exec {} \"echo $h\"; done",
        bin("ctl").display(),
        agent.target()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("REXEC_CONFIG_DIR", &env.ctl_dir)
        .output()
        .unwrap();
    assert_eq!(stdout_of(&out), "a\nb\nc\n", "the loop saw every line");
}

#[test]
fn several_words_arrive_as_exactly_those_words() {
    let (env, agent) = Env::with_agent();
    let out = env.exec(
        &agent,
        &["--", "printf", "%s\\n", "a b", "c", "$HOME", "it's"],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "a b\nc\n$HOME\nit's\n");
}

#[test]
fn unauthorized_client_is_refused_and_agent_keeps_serving() {
    let (env, agent) = Env::with_agent();
    let (stranger_dir, stranger_fp) = env.stranger();
    let out = env
        .ctl()
        .env("REXEC_CONFIG_DIR", &stranger_dir)
        .args(["exec", &agent.target(), "echo should-not-run"])
        .output()
        .unwrap();
    assert_refused(
        &out,
        "refused this client",
        &[(&stranger_fp, "our fingerprint")],
    );
    agent.expect_log("not authorized");

    let ok = env.exec(&agent, &["echo still-serving"]);
    assert_eq!(stdout_of(&ok), "still-serving\n");
}

#[test]
fn changed_host_key_is_refused_naming_both_keys() {
    let env = Env::new();
    let agent = env.unknown_agent_with(&[]);
    assert!(env.exec(&agent, &["true"]).status.success());
    // Known hosts now says the agent at this address has some other key.
    let other = Env::new();
    let known_hosts = env.ctl_dir.join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("{} {}\n", agent.target(), other.agent_fingerprint),
    )
    .unwrap();

    let out = env.exec(&agent, &["echo should-not-run"]);
    let err = assert_refused(
        &out,
        "HOST KEY CHANGED",
        &[
            (&other.agent_fingerprint, "the known key"),
            (&env.agent_fingerprint, "the new key"),
        ],
    );
    assert!(
        err.contains("ctl known-hosts remove"),
        "says how to fix: {err}"
    );
    let still = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(
        still.contains(&other.agent_fingerprint),
        "never silently re-trusted"
    );

    let removed = env
        .ctl()
        .args(["known-hosts", "remove", &agent.target()])
        .output()
        .unwrap();
    assert!(removed.status.success());
    assert!(
        env.exec(&agent, &["true"]).status.success(),
        "trusted again after removal"
    );
}

#[test]
fn unreachable_agent_exits_255_with_one_line() {
    let env = Env::new();
    // Bind a port and close it: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = env
        .ctl()
        .args(["exec", &format!("127.0.0.1:{port}"), "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn kill_9_of_ctl_leaves_no_process_behind() {
    let (env, agent) = Env::with_agent();
    let sleep = unique_sleep(600);
    let mut ctl = env
        .ctl()
        .args([
            "exec",
            &agent.target(),
            &format!("sleep {sleep} & sleep {sleep}; wait"),
        ])
        .spawn()
        .unwrap();
    assert!(
        wait_until(DEADLINE, || sleeps_running(&sleep) >= 2),
        "both sleeps should start"
    );
    ctl.kill().unwrap();
    ctl.wait().unwrap();
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(3), || processes_with(&sleep).is_empty()),
        "left behind after 3 s: {:?}",
        processes_with(&sleep)
    );
    assert!(killed.elapsed() < Duration::from_secs(3));
    assert!(agent.wait_for_log("client gone").is_some());
    // And reaped: the shell is no zombie child of the agent.
    assert_reaped_by(&agent);
}

#[test]
fn closed_stdout_ends_ctl_quietly_and_stops_the_command() {
    let (env, agent) = Env::with_agent();
    let mark = marker("yes");
    let mut ctl = env
        .ctl()
        .args(["exec", &agent.target(), &format!("yes {mark}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut stdout = BufReader::new(ctl.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), mark);
    drop(stdout); // like `| head -1` exiting
    let status = ctl.wait().unwrap();
    let mut err = String::new();
    ctl.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(141));
    assert_eq!(err, "", "no error message for a closed pipe");
    assert!(
        wait_until(Duration::from_secs(3), || processes_with(&mark).is_empty()),
        "the remote command is stopped"
    );
}

#[test]
fn closed_stderr_ends_ctl_quietly_and_stops_the_command() {
    let (env, agent) = Env::with_agent();
    let mark = marker("loop");
    let mut ctl = env
        .ctl()
        .args([
            "exec",
            &agent.target(),
            &format!("while :; do echo {mark} >&2; sleep 0.01; done"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut stderr = BufReader::new(ctl.stderr.take().unwrap());
    stderr.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), mark);
    drop(stderr); // `2>&1 | head -1` exiting
    assert_eq!(ctl.wait().unwrap().code(), Some(141));
    assert_gone_soon(&format!("echo {mark}"), "the remote command is stopped");
}

#[test]
fn stderr_that_cannot_be_written_is_an_error_not_success() {
    let (env, agent) = Env::with_agent();
    let out = env
        .ctl()
        .args(["exec", &agent.target(), "echo out; echo err >&2"])
        .stderr(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(255),
        "the command's stderr was lost"
    );
}

#[test]
fn stdin_that_cannot_be_read_fails_the_run_without_an_end_of_input() {
    let (env, agent) = Env::with_agent();
    let out = env
        .ctl()
        .args(["exec", "-i", &agent.target(), "wc -c"])
        .stdin(std::fs::File::open("/etc").unwrap())
        .output()
        .unwrap();
    assert_eq!(
        assert_one_ctl_line(&out, "stdin is a directory"),
        format!(
            "ctl: {}: cannot pass our stdin on to the command: is a directory",
            agent.target()
        )
    );
    assert_eq!(stdout_of(&out), "", "the command never saw an end of input");
}

/// `ctl exec TARGET true` with a config dir that holds no identity.
fn exec_without_identity(env: &Env, agent: &Agent) -> std::process::Output {
    env.ctl()
        .env("REXEC_CONFIG_DIR", env.root.path().join("nobody"))
        .args(["exec", &agent.target(), "true"])
        .output()
        .unwrap()
}

#[test]
fn missing_identity_is_a_clear_error() {
    let (env, agent) = Env::with_agent();
    let out = exec_without_identity(&env, &agent);
    assert_failed_saying(&out, 255, "ctl keygen");
}

#[test]
fn every_failure_of_ctls_own_is_one_ctl_line_and_exit_255() {
    let (env, agent) = Env::with_agent();

    let usage = env.ctl().args(["exec", "onlyatarget"]).output().unwrap();
    assert_one_ctl_line(&usage, "usage");
    let port = env
        .ctl()
        .args(["exec", "host:99999", "true"])
        .output()
        .unwrap();
    assert!(
        assert_one_ctl_line(&port, "bad port").contains("port"),
        "{}",
        stderr_of(&port)
    );

    let no_identity = exec_without_identity(&env, &agent);
    assert!(assert_one_ctl_line(&no_identity, "missing identity").contains("ctl keygen"));

    let stranger = env.other_client(None);
    let refused = env.exec_as(&stranger, &agent, "true");
    assert!(
        assert_one_ctl_line(&refused, "not authorized").contains("is SHA256:"),
        "{}",
        stderr_of(&refused)
    );

    let unknown = env.unknown_agent_with(&[]);
    let strict = env
        .ctl()
        .args(["exec", "--strict-host-key", &unknown.target(), "true"])
        .output()
        .unwrap();
    assert!(assert_one_ctl_line(&strict, "unknown host").contains("--strict-host-key"));

    // A pin that is not the agent's key.
    let elsewhere = env.unknown_agent_with(&[]);
    env.write_known_hosts(format!(
        "{} {}\n",
        elsewhere.target(),
        env.client_fingerprint
    ));
    let changed = env.exec(&elsewhere, &["true"]);
    assert!(assert_one_ctl_line(&changed, "host key changed").contains("HOST KEY CHANGED"));
}

#[test]
fn output_that_cannot_be_written_is_an_error_not_success() {
    let (env, agent) = Env::with_agent();
    let out = env
        .ctl()
        .args(["exec", &agent.target(), "seq 100000"])
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_eq!(
        assert_one_ctl_line(&out, "stdout on /dev/full"),
        format!(
            "ctl: {}: cannot write to stdout: no space left on the device",
            agent.target()
        )
    );
}

#[test]
fn timeout_zero_means_no_limit() {
    let (env, agent) = Env::with_agent();
    for target in [
        agent.target(),
        format!("{},{}", agent.target(), agent.target()),
    ] {
        let out = env
            .ctl()
            .args(["exec", "--timeout", "0", &target, "sleep 1; echo done"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{target}: {}", stderr_of(&out));
        assert!(stdout_of(&out).ends_with("done\n"), "{}", stdout_of(&out));
    }
}

#[test]
fn huge_durations_are_refused_at_parse_time_not_a_panic() {
    let (env, agent) = Env::with_agent();
    let several = format!("{},{}", agent.target(), agent.target());
    for args in [
        vec![
            "exec",
            "--timeout",
            "18446744073709551615s",
            &several,
            "true",
        ],
        vec![
            "exec",
            "--timeout",
            "5000000000000000h",
            &agent.target(),
            "true",
        ],
        vec![
            "exec",
            "--connect-timeout",
            "18446744073709551615s",
            &several,
            "true",
        ],
        vec![
            "ping",
            "--connect-timeout",
            "18446744073709551615s",
            &several,
        ],
    ] {
        let out = env.ctl().args(&args).output().unwrap();
        let line = assert_one_ctl_line(&out, &format!("{args:?}"));
        assert!(line.contains("too long: at most 366 days"), "{line}");
    }
    let cp = env
        .ctl()
        .args([
            "cp",
            "--timeout",
            "18446744073709551615s",
            "/etc/hostname",
            &format!("{several}:/tmp/"),
        ])
        .output()
        .unwrap();
    assert!(assert_one_ctl_line(&cp, "cp").contains("too long"));
}

#[test]
fn a_frozen_agent_is_an_error_at_ctls_deadline_not_a_timeout() {
    let (env, agent) = Env::with_agent();
    let started = env.root.path().join("started");
    let sleep = unique_sleep(60);
    let ctl = env
        .ctl()
        .args([
            "exec",
            "--timeout",
            "3s",
            "--connect-timeout",
            "1s",
            &agent.target(),
            &format!("touch {}; exec sleep {sleep}", started.display()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(DEADLINE, || started.exists()), "command started");
    agent.signal("STOP");
    let out = ctl.wait_with_output().unwrap();
    agent.signal("CONT");
    // --timeout + --connect-timeout + 5 s; nobody killed the command.
    assert_eq!(
        assert_one_ctl_line(&out, "frozen agent"),
        format!(
            "ctl: {}: no answer from the agent within 9s; ctl gave up on this host (the command may still be running there)",
            agent.target()
        )
    );
    assert_gone_soon(&sleep, "the agent, running again, cleans up");
}

fn known_hosts_text(env: &Env) -> String {
    std::fs::read_to_string(env.ctl_dir.join("known_hosts")).unwrap()
}

#[test]
fn known_hosts_without_a_final_newline_keeps_every_pin() {
    let env = Env::new();
    let first = env.unknown_agent_with(&[]);
    let second = env.unknown_agent_with(&[]);
    env.write_known_hosts(format!("{} {}", first.target(), env.agent_fingerprint));
    let out = env.exec(&second, &["true"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let listed = env.ctl_run(&["known-hosts", "list"]);
    assert_eq!(
        stdout_of(&listed),
        format!(
            "{} {fp}\n{} {fp}\n",
            first.target(),
            second.target(),
            fp = env.agent_fingerprint
        )
    );
    for agent in [&first, &second] {
        let strict = env
            .ctl()
            .args(["exec", "--strict-host-key", &agent.target(), "true"])
            .output()
            .unwrap();
        assert!(strict.status.success(), "{}", stderr_of(&strict));
        assert_eq!(stderr_of(&strict), "", "no first contact again");
    }
}

/// Lines ctl does not understand are named and kept as they are: a bad
/// fingerprint, a host without its port (as ssh users write it: it would
/// pin nothing), a line that is not UTF-8; a Latin-1 comment is a comment.
#[test]
fn a_malformed_known_hosts_line_is_reported_with_its_number_and_kept() {
    let (env, agent) = Env::with_agent();
    let mut text = b"# \xe9quipe du labo\n".to_vec();
    text.extend_from_slice(known_hosts_text(&env).as_bytes());
    text.extend_from_slice(b"labpc07 SHA256:not-a-fingerprint\n");
    text.extend_from_slice(format!("labpc08 {}\n", env.agent_fingerprint).as_bytes());
    text.extend_from_slice(b"labpc\xe9:7722 ");
    text.extend_from_slice(format!("{}\n", env.agent_fingerprint).as_bytes());
    let path = env.ctl_dir.join("known_hosts");
    std::fs::write(&path, &text).unwrap();
    let lines = text.split(|&b| b == b'\n').count() - 1;
    let out = env.exec(&agent, &["true"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let expected: String = (lines - 2..=lines)
        .map(|line| {
            format!(
                "ctl: {}:{line}: not HOST:PORT SHA256:<fingerprint>; line ignored\n",
                path.display()
            )
        })
        .collect();
    assert_eq!(stderr_of(&out), expected);
    let other = env.unknown_agent_with(&[]);
    assert!(env.exec(&other, &["true"]).status.success());
    assert!(
        std::fs::read(&path).unwrap().starts_with(&text),
        "nothing lost"
    );
}

#[test]
fn concurrent_first_contacts_record_a_host_once() {
    let env = Env::new();
    let agent = env.unknown_agent_with(&[]);
    let runs: Vec<_> = (0..8)
        .map(|_| {
            env.ctl()
                .args(["exec", &agent.target(), "true"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut run in runs {
        assert!(run.wait().unwrap().success());
    }
    let text = known_hosts_text(&env);
    assert_eq!(
        text,
        format!("{} {}\n", agent.target(), env.agent_fingerprint),
        "one line for the host"
    );
}

#[test]
fn known_hosts_remove_uses_the_inventorys_port() {
    let (env, agent) = Env::with_agent();
    let port = agent.addr.port();
    std::fs::write(
        env.ctl_dir.join("hosts.toml"),
        format!("[hosts.\"127.0.0.1\"]\nport = {port}\n"),
    )
    .unwrap();
    let out = env.ctl_run(&["known-hosts", "remove", "127.0.0.1"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        !known_hosts_text(&env).contains(&agent.target()),
        "{}",
        known_hosts_text(&env)
    );
}

/// A fake agent, at the address returned, that greets ctl with a hello of
/// `protocol` and `software`, then answers ctl's request with `answer`.
async fn fake_agent_answering(
    env: &Env,
    protocol: u32,
    software: String,
    answer: rexec_protocol::AgentMessage,
) -> (String, tokio::task::JoinHandle<()>) {
    use futures_util::{SinkExt, StreamExt};
    use rexec_protocol::{AgentMessage, Hello};
    let fake = FakeAgent::bind(env).await;
    let addr = fake.addr.to_string();
    let served = tokio::spawn(async move {
        let (mut incoming, mut outgoing) = fake.accept().await;
        let _ = incoming.next().await;
        let _ = outgoing
            .send(AgentMessage::Hello(Hello { protocol, software }))
            .await;
        let _ = incoming.next().await;
        let _ = outgoing.send(answer).await;
    });
    (addr, served)
}

#[tokio::test]
async fn text_from_an_agent_cannot_drive_the_terminal_or_forge_ctl_lines() {
    use rexec_protocol::{AgentMessage, ErrorKind, ErrorReport};
    let hostile = "busy\x1b]0;owned\x07\x1b[2J\nctl: all good\r\u{9b}31m";
    let env = Env::new();
    // An error report, through exec (one target and several) and ping.
    for args in [vec!["exec"], vec!["exec", "--json"], vec!["ping"]] {
        let (addr, served) = fake_agent_answering(
            &env,
            rexec_protocol::PROTOCOL_VERSION,
            format!("rexec-agent {hostile}"),
            AgentMessage::Error(ErrorReport::new(ErrorKind::Busy, hostile)),
        )
        .await;
        let mut words = args.clone();
        words.push(&addr);
        if args[0] == "exec" {
            words.push("true");
        }
        let out = ctl_output_off_the_runtime(&env, &words).await;
        served.abort();
        assert_eq!(out.status.code(), Some(255), "{args:?}");
        for text in [stderr_of(&out), stdout_of(&out)] {
            assert!(!text.contains('\x1b'), "{args:?}: {text:?}");
            assert!(!text.contains('\r') && !text.contains('\u{9b}'), "{text:?}");
            assert!(
                !text.lines().any(|l| l.starts_with("ctl: all good")),
                "{text:?}"
            );
        }
        let shown = format!("{}{}", stdout_of(&out), stderr_of(&out));
        assert!(
            shown.contains(r"u{1b}]0;owned"),
            "{args:?}: shown, escaped: {shown}"
        );
    }
    // The hello's software string, where ctl prints it.
    for (protocol, args) in [(99, "exec"), (rexec_protocol::PROTOCOL_VERSION, "ping")] {
        let (addr, served) = fake_agent_answering(
            &env,
            protocol,
            format!("rexec-agent {hostile}"),
            AgentMessage::Pong,
        )
        .await;
        let words: Vec<&str> = match args {
            "exec" => vec!["exec", &addr, "true"],
            _ => vec!["ping", &addr],
        };
        let out = ctl_output_off_the_runtime(&env, &words).await;
        served.abort();
        for text in [stderr_of(&out), stdout_of(&out)] {
            assert!(
                !text.contains('\x1b') && !text.contains('\r'),
                "{args}: {text:?}"
            );
            assert!(
                !text.lines().any(|l| l.starts_with("ctl: all good")),
                "{text:?}"
            );
        }
        let shown = format!("{}{}", stdout_of(&out), stderr_of(&out));
        assert!(shown.contains(r"rexec-agent busy\u{1b}"), "{args}: {shown}");
    }
}

/// No process ends with 256 or with signal -122: an agent that says so is
/// not believed to have succeeded. Before, 256 wrapped to exit 0, beside
/// "1 of 1 hosts failed: exit 256" in a fan-out.
#[tokio::test]
async fn an_exit_status_no_process_can_have_is_a_failure() {
    use rexec_protocol::{AgentMessage, ExitStatus};
    let env = Env::new();
    for status in [
        ExitStatus::Code(256),
        ExitStatus::Code(-256),
        ExitStatus::Signal {
            signal: -122,
            core_dumped: false,
        },
    ] {
        // One target, then two (a fan-out), each saying so.
        for hosts in [1, 2] {
            let mut addrs = Vec::new();
            let mut served = Vec::new();
            for _ in 0..hosts {
                let (addr, serving) = fake_agent_answering(
                    &env,
                    rexec_protocol::PROTOCOL_VERSION,
                    "rexec-agent 0.1.0".to_owned(),
                    AgentMessage::Exit(status),
                )
                .await;
                addrs.push(addr);
                served.push(serving);
            }
            let targets = addrs.join(",");
            let out = ctl_output_off_the_runtime(&env, &["exec", &targets, "true"]).await;
            served.iter().for_each(tokio::task::JoinHandle::abort);
            assert_eq!(
                out.status.code(),
                Some(255),
                "{status:?} on {hosts}: {}",
                stderr_of(&out)
            );
        }
    }
}

#[tokio::test]
async fn an_agent_that_vanishes_is_one_plain_line() {
    use futures_util::StreamExt;
    let env = Env::new();
    let fake = FakeAgent::bind(&env).await;
    let addr = fake.addr.to_string();
    let served = tokio::spawn(async move {
        let (mut incoming, outgoing) = fake.accept().await;
        let _ = incoming.next().await;
        // Gone without a TLS close_notify, as a killed agent goes.
        drop((incoming, outgoing));
    });
    let out = ctl_output_off_the_runtime(&env, &["exec", &addr, "true"]).await;
    served.abort();
    let line = assert_one_ctl_line(&out, "vanished agent");
    assert!(!line.contains("close_notify"), "{line}");
    assert!(line.contains("connection lost"), "{line}");
}

/// A command with a timeout whose output ctl cannot write as fast as it
/// comes (a pager nobody reads, here a pipe read only after 9 s): the
/// agent kills it at its timeout, and everything it wrote before reaches
/// ctl's stdout, then exit 124. Before, ctl counted the time it spent
/// blocked on its own stdout as the agent's silence, gave up at
/// `--timeout` + `--connect-timeout` + 5 s (7 s), dropped what had come and
/// exited 255 with "no answer from the agent".
#[test]
fn output_that_waits_for_a_slow_reader_is_all_delivered_after_a_timeout() {
    let env = Env::new();
    let fleet = env.fleet(2);
    for target in ["127.0.0.2", "@lab"] {
        let ctl = env
            .ctl()
            .args([
                "exec",
                "--timeout",
                "1s",
                "--connect-timeout",
                "1s",
                target,
                "seq 3000000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctl");
        std::thread::sleep(Duration::from_secs(9));
        let out = ctl.wait_with_output().expect("ctl");
        let stdout = stdout_of(&out);
        let stderr = stderr_of(&out);
        assert_eq!(out.status.code(), Some(124), "{target}: {stderr}");
        assert!(!stderr.contains("no answer"), "{target}: {stderr}");
        // Each host's lines are 1, 2, 3, … up to where the kill caught it.
        for host in &fleet.hosts {
            let prefix = format!("{host}: ");
            let lines: Vec<&str> = if target == "@lab" {
                stdout
                    .lines()
                    .filter_map(|l| l.strip_prefix(prefix.as_str()))
                    .collect()
            } else if host == "127.0.0.2" {
                stdout.lines().collect()
            } else {
                continue;
            };
            assert!(
                lines.len() > 10_000,
                "{target} {host}: {} lines",
                lines.len()
            );
            let whole = &lines[..lines.len() - 1];
            for (i, line) in whole.iter().enumerate() {
                assert_eq!(
                    *line,
                    (i + 1).to_string(),
                    "{target} {host}: line {}",
                    i + 1
                );
            }
        }
    }
}

/// A command line longer than the system gives one argument (128 KiB):
/// the shell cannot be started, said in our words (before: "Argument list
/// too long (os error 7)").
#[test]
fn a_command_too_long_for_the_system_is_refused_in_plain_words() {
    let (env, agent) = Env::with_agent();
    let word = "a".repeat(100_000);
    for flags in [vec![], vec!["--detach"]] {
        let mut args = vec!["exec"];
        args.extend(flags.iter().copied());
        let target = agent.target();
        args.extend([target.as_str(), "echo", &word, &word]);
        let out = env.ctl_run(&args);
        assert_eq!(out.status.code(), Some(255), "{flags:?}");
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{flags:?}: {err}");
        assert!(
            err.contains("the command and its environment are longer than this system lets a program be given"),
            "{flags:?}: {err}"
        );
        assert!(!err.contains("os error"), "{flags:?}: {err}");
    }
}

/// A reader that pauses (`| less` left on a page) holds the command
/// through TCP flow control for as long as it pauses, past the keepalive
/// bound, and then gets every byte. The agent used to bound unacknowledged
/// data with TCP_USER_TIMEOUT, which this kernel also applies to a peer
/// that acknowledges its zero-window probes: the command was killed after
/// the keepalive bound (60 s by default) and its output lost.
#[test]
fn a_reader_that_pauses_past_the_keepalive_bound_gets_every_byte() {
    let (env, agent) =
        Env::with_agent_flags(&["--keepalive-interval", "500ms", "--keepalive-count", "2"]);
    let mut child = env
        .ctl()
        .args([
            "exec",
            &agent.target(),
            "head -c 20000000 /dev/zero; echo done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Four times the bound (1 s) without reading a byte.
    std::thread::sleep(Duration::from_secs(4));
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let done = child.wait_with_output().unwrap();
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(out.len(), 20_000_005);
    assert!(out.ends_with(b"done\n"));
}

/// Commands start as from a login, whatever the agent's starter did: a
/// signal it was started with ignored (a script's `agent &` ignores
/// SIGQUIT, `nohup` SIGHUP) is back to its default, and the soft limit
/// on open files is the one the agent was started with, not the hard
/// limit the agent raised its own to (some programs still use
/// `select(2)`). Both held for execs and for detached jobs; before,
/// `kill -QUIT $$` did nothing and `ulimit -Sn` said the hard limit.
#[test]
fn commands_get_default_signals_and_the_agents_original_open_files_limit() {
    let env = Env::new();
    let inner = agent_run_command(&env.agent_dir);
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("trap '' QUIT; ulimit -Sn 512; exec \"$@\"")
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args())
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut agent = Agent::spawn(cmd);
    agent.wait_listening();
    env.trust(&agent);
    let target = agent.target();

    // Several times: a limit set on the command after it started would
    // lose the race with the shell's first builtin now and then.
    for _ in 0..20 {
        let limit = env.ctl_run(&["exec", &target, "ulimit -Sn"]);
        assert_eq!(String::from_utf8_lossy(&limit.stdout), "512\n");
    }
    let quit = env.ctl_run(&["exec", &target, "kill -QUIT $$; echo alive"]);
    assert_eq!(
        (
            quit.status.code(),
            String::from_utf8_lossy(&quit.stdout).into_owned()
        ),
        (Some(131), String::new()),
        "{}",
        String::from_utf8_lossy(&quit.stderr)
    );

    let started = env.ctl_run(&["exec", "--detach", &target, "ulimit -Sn"]);
    let id = String::from_utf8_lossy(&started.stdout).trim().to_owned();
    assert_eq!(id.len(), 32, "{}", String::from_utf8_lossy(&started.stderr));
    let waited = env.ctl_run(&["job", "wait", &target, &id]);
    assert_eq!(waited.status.code(), Some(0));
    let output = env.ctl_run(&["job", "output", &target, &id]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "512\n");
}
