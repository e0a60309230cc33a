//! `ctl exec` against a real agent: exit codes, output, stdin, cleanup.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn remote_exit_codes_pass_through() {
    let env = Env::new();
    let agent = env.agent();
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
    let env = Env::new();
    let agent = env.agent();
    assert_eq!(env.exec(&agent, &["kill -9 $$"]).status.code(), Some(137));
    assert_eq!(
        env.exec(&agent, &["kill -TERM $$"]).status.code(),
        Some(143)
    );
}

#[test]
fn stdout_and_stderr_are_kept_apart() {
    let env = Env::new();
    let agent = env.agent();
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
    let env = Env::new();
    let agent = env.agent();
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
    let env = Env::new();
    let agent = env.agent();
    let started = Instant::now();
    let mut ctl = env
        .ctl()
        .args(["exec", &agent.target(), "echo first; sleep 2; echo second"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(ctl.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    let first_at = started.elapsed();
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    let status = ctl.wait().unwrap();
    let exited_at = started.elapsed();
    assert!(status.success());
    assert!(
        exited_at >= first_at + Duration::from_millis(1500),
        "first line at {first_at:?} should precede the exit at {exited_at:?} by the sleep"
    );
}

#[test]
fn exit_comes_after_all_output() {
    let env = Env::new();
    let agent = env.agent();
    let out = env.exec(
        &agent,
        &["head -c 3000000 /dev/zero; head -c 1000 /dev/zero >&2; exit 7"],
    );
    assert_eq!(out.stdout.len(), 3_000_000);
    assert_eq!(out.stderr.len(), 1000);
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn stdin_is_forwarded_with_dash_i_and_reaches_eof() {
    let env = Env::new();
    let agent = env.agent();
    let mut ctl = env
        .ctl()
        .args(["exec", "-i", &agent.target(), "wc -c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    ctl.stdin.take().unwrap().write_all(b"abc").unwrap();
    let out = ctl.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(stdout_of(&out).trim(), "3");
}

/// A command that reads stdin while its output pipe is full must not
/// deadlock: `cat` both ways, 16 MiB.
#[test]
fn stdin_and_output_flow_together_through_cat() {
    let env = Env::new();
    let agent = env.agent();
    let data = random_bytes(16 << 20, 7);
    let mut ctl = env
        .ctl()
        .args(["exec", "-i", &agent.target(), "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = ctl.stdin.take().unwrap();
    let input = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let mut output = Vec::new();
    ctl.stdout.take().unwrap().read_to_end(&mut output).unwrap();
    writer.join().unwrap().unwrap();
    assert!(ctl.wait().unwrap().success());
    assert!(output == data, "cat returned different bytes");
}

/// Without -i the command's stdin is empty even when ours stays open: the
/// `while read host; do ctl exec "$host" ...; done < hosts` loop keeps its input.
#[test]
fn stdin_is_empty_without_dash_i() {
    let env = Env::new();
    let agent = env.agent();
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
    let env = Env::new();
    let agent = env.agent();
    let out = env.exec(
        &agent,
        &["--", "printf", "%s\\n", "a b", "c", "$HOME", "it's"],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "a b\nc\n$HOME\nit's\n");
}

#[test]
fn unauthorized_client_is_refused_and_agent_keeps_serving() {
    let env = Env::new();
    let agent = env.agent();
    let (stranger_dir, stranger_fp) = env.stranger();
    let out = env
        .ctl()
        .env("REXEC_CONFIG_DIR", &stranger_dir)
        .args(["exec", &agent.target(), "echo should-not-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(stdout_of(&out), "");
    let err = stderr_of(&out);
    assert!(err.contains("refused this client"), "{err}");
    assert!(err.contains(&stranger_fp), "names our fingerprint: {err}");
    assert!(
        agent.wait_for_log("not authorized").is_some(),
        "{}",
        agent.log()
    );

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
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(stdout_of(&out), "");
    let err = stderr_of(&out);
    assert!(err.contains("HOST KEY CHANGED"), "{err}");
    assert!(
        err.contains(&other.agent_fingerprint),
        "names the known key: {err}"
    );
    assert!(
        err.contains(&env.agent_fingerprint),
        "names the new key: {err}"
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
    let env = Env::new();
    let agent = env.agent();
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
    assert!(
        wait_until(Duration::from_secs(3), || zombie_children(agent.child.id())
            .is_empty()),
        "unreaped: {:?}",
        zombie_children(agent.child.id())
    );
}

#[test]
fn closed_stdout_ends_ctl_quietly_and_stops_the_command() {
    let env = Env::new();
    let agent = env.agent();
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
fn missing_identity_is_a_clear_error() {
    let env = Env::new();
    let agent = env.agent();
    let out = env
        .ctl()
        .env("REXEC_CONFIG_DIR", env.root.path().join("nobody"))
        .args(["exec", &agent.target(), "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr_of(&out).contains("ctl keygen"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn bad_usage_exits_255() {
    let env = Env::new();
    let out = env.ctl().args(["exec", "onlyatarget"]).output().unwrap();
    assert_eq!(out.status.code(), Some(255));
    let out = env
        .ctl()
        .args(["exec", "host:99999", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr_of(&out).contains("port"), "{}", stderr_of(&out));
}
