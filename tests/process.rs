//! Process control end to end: signals forwarded by ctl, timeouts, the
//! command's environment, keepalive, the agent's shutdown, and terminals.
//! Every "it is gone" claim is checked on the process table, by a marker in
//! the command line, not by trusting a log.

use std::io::{BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rexec_agent::config::AgentSettings;
use rexec_agent::server::{AgentState, Shutdown, serve};

use crate::util::checks::{
    assert_gone_soon, assert_refused, read_until_line, set_mode, spawn_piped_exec,
};
use crate::util::*;

/// Starts `ctl exec TARGET COMMAND` with piped stdout and stderr.
fn spawn_exec(env: &Env, agent: &Agent, flags: &[&str], command: &str) -> Child {
    spawn_exec_at(env, &agent.target(), flags, command)
}

fn spawn_exec_at(env: &Env, target: &str, flags: &[&str], command: &str) -> Child {
    spawn_piped_exec(env.ctl(), flags, target, command)
}

/// A running `ctl exec` whose command has printed "ready" and started
/// `sleeps` processes `sleep MARKER`.
struct Running {
    ctl: Child,
    stdout: BufReader<std::process::ChildStdout>,
    sleep: String,
}

/// Starts `PREFIX echo ready; sleep M & sleep M; wait` (or one foreground
/// sleep when `sleeps` is 1) and waits until it is ready and sleeping.
fn start_sleeping(env: &Env, agent: &Agent, prefix: &str, sleeps: usize) -> Running {
    start_sleeping_at(env, &agent.target(), prefix, sleeps)
}

/// An agent with `--shutdown-grace GRACE` running a client's sleeps (see
/// [`start_sleeping`]) when it is sent `signal`.
fn signalled_while_sleeping(grace: &str, sleeps: usize, signal: &str) -> (Env, Agent, Running) {
    let (env, agent) = Env::with_agent_flags(&["--shutdown-grace", grace]);
    let run = start_sleeping(&env, &agent, "", sleeps);
    agent.signal(signal);
    (env, agent, run)
}

fn start_sleeping_at(env: &Env, target: &str, prefix: &str, sleeps: usize) -> Running {
    let sleep = unique_sleep(600);
    let body = match sleeps {
        1 => format!("sleep {sleep}; echo not-reached"),
        _ => format!("sleep {sleep} & sleep {sleep}; wait"),
    };
    let mut ctl = spawn_exec_at(env, target, &[], &format!("{prefix}echo ready; {body}"));
    let mut stdout = BufReader::new(ctl.stdout.take().unwrap());
    read_until_line(&mut stdout, "ready");
    let pattern = format!("sleep {sleep}");
    assert!(
        wait_until(DEADLINE, || sleeps_running(&pattern) >= sleeps),
        "the sleeps should start"
    );
    Running { ctl, stdout, sleep }
}

/// Everything left on a child's stderr.
fn stderr_text(child: &mut Child) -> String {
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    err
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    assert!(
        wait_until(DEADLINE, || child.try_wait().expect("wait").is_some()),
        "ctl did not exit"
    );
    child.wait().expect("wait")
}

/// `ctl exec --timeout 1s TARGET COMMAND`, run to completion.
fn exec_within_1s(env: &Env, agent: &Agent, command: &str) -> std::process::Output {
    env.exec(agent, &["--timeout", "1s", command])
}

#[track_caller]
fn assert_agent_exits_0(agent: &mut Agent) {
    assert_eq!(
        wait_for_exit(&mut agent.child).code(),
        Some(0),
        "the agent exits 0"
    );
}

/// Asserts that every process with `marker` in its command line ends
/// within `within`.
#[track_caller]
fn assert_gone_within(marker: &str, within: Duration) {
    assert!(
        all_gone_within(marker, within),
        "{:?}",
        processes_with(marker)
    );
}

/// Everything `stdout` still has to say, up to its end.
fn rest_of(stdout: &mut impl Read) -> String {
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    rest
}

fn all_gone(marker: &str) -> bool {
    all_gone_within(marker, DEADLINE)
}

fn all_gone_within(marker: &str, within: Duration) -> bool {
    // ctl's own command line carries the marker too; only the agent's
    // children count, and ctl has exited or is frozen by then.
    wait_until(within, || {
        processes_with(marker)
            .iter()
            .all(|(_, cmd)| cmd.contains(" exec "))
    })
}

#[test]
fn ctrl_c_interrupts_the_remote_command_and_its_cleanup_output_arrives() {
    let (env, agent) = Env::with_agent();
    // A background job too: a non-interactive shell starts it with SIGINT
    // ignored, so it outlives the Ctrl-C and holds the output open; the
    // agent ends it once the shell has exited.
    let mut run = start_sleeping(&env, &agent, "trap 'echo cleanup; exit 7' INT; ", 2);
    send_signal(run.ctl.id(), "INT");
    // ctl ends (a held-open output would keep it waiting), then its output.
    assert_eq!(
        wait_for_exit(&mut run.ctl).code(),
        Some(7),
        "the remote trap's status"
    );
    assert_eq!(rest_of(&mut run.stdout), "cleanup\n");
    assert_gone_within(&run.sleep, Duration::from_secs(3));
}

#[test]
fn second_ctrl_c_kills_the_group_and_exits_130() {
    let env = Env::new();
    // A long kill grace, and a background child that ignores SIGINT and
    // SIGTERM (the foreground one dies of the first Ctrl-C): only the
    // forwarded SIGKILL can end it within 3 s, not the TERM-then-KILL the
    // agent uses when a client goes away.
    let agent = env.agent_with(&["--kill-grace", "30s"]);
    let mut run = start_sleeping(&env, &agent, "trap 'echo got-int' INT; trap '' TERM; ", 2);
    send_signal(run.ctl.id(), "INT");
    // The second Ctrl-C once the first has reached the command: two
    // signals sent back to back can arrive at ctl as one.
    read_until_line(&mut run.stdout, "got-int");
    send_signal(run.ctl.id(), "INT");
    assert_eq!(wait_for_exit(&mut run.ctl).code(), Some(130));
    assert_gone_within(&run.sleep, Duration::from_secs(3));
}

#[test]
fn sigterm_and_sighup_to_ctl_are_forwarded_to_the_remote_group() {
    let (env, agent) = Env::with_agent();
    for (signal, code) in [("TERM", 3), ("HUP", 4)] {
        let trap = format!("trap 'echo got-{signal}; exit {code}' {signal}; ");
        let mut run = start_sleeping(&env, &agent, &trap, 1);
        send_signal(run.ctl.id(), signal);
        let mut rest = String::new();
        run.stdout.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, format!("got-{signal}\n"));
        assert_eq!(wait_for_exit(&mut run.ctl).code(), Some(code));
        assert!(all_gone(&run.sleep));
    }
}

/// With `-i`, a signal does not wait behind stdin the command leaves
/// unread: ctl sends stdin only as the agent gives room for it, so the
/// connection never backs up with it.
#[test]
fn a_signal_reaches_a_command_that_leaves_its_stdin_unread() {
    let (env, agent) = Env::with_agent();
    let mut ctl = env
        .ctl()
        .args([
            "exec",
            "-i",
            &agent.target(),
            "trap 'echo bye; exit 5' TERM; echo ready; sleep 600 & wait",
        ])
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(ctl.stdout.take().unwrap());
    read_until_line(&mut stdout, "ready");
    // Time for ctl to send all the stdin it may (before, to fill the
    // connection): not a bound on anything.
    std::thread::sleep(Duration::from_millis(300));
    send_signal(ctl.id(), "TERM");
    let ended = wait_until(DEADLINE, || ctl.try_wait().unwrap().is_some());
    if !ended {
        let _ = ctl.kill();
    }
    assert!(ended, "the signal reached the command and it ended");
    assert_eq!(rest_of(&mut stdout), "bye\n");
    assert_eq!(wait_for_exit(&mut ctl).code(), Some(5));
}

/// `nohup ctl exec …`: ctl started with SIGHUP ignored keeps ignoring it,
/// so a hang-up neither ends ctl nor reaches the remote command.
#[test]
fn a_ctl_started_with_sighup_ignored_rides_out_a_hangup() {
    let (env, agent) = Env::with_agent();
    let mut ctl = env
        .ctl_ignoring("HUP")
        .args([
            "exec",
            &agent.target(),
            "trap 'echo got-HUP' HUP; echo ready; sleep 1; echo done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(ctl.stdout.take().unwrap());
    read_until_line(&mut stdout, "ready");
    send_signal(ctl.id(), "HUP");
    assert_eq!(rest_of(&mut stdout), "done\n");
    assert!(wait_for_exit(&mut ctl).success());
}

#[test]
fn timeout_kills_the_whole_group_and_exits_124() {
    let (env, agent) = Env::with_agent();
    let sleep = unique_sleep(600);
    let started = Instant::now();
    // 3 s: the line printed first must be out before the kill on a busy
    // machine too.
    let out = env.exec(
        &agent,
        &[
            "--timeout",
            "3s",
            &format!("echo before; sleep {sleep} & sleep {sleep}; wait"),
        ],
    );
    assert_eq!(out.status.code(), Some(124), "{}", stderr_of(&out));
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before the timeout"
    );
    assert_eq!(
        stdout_of(&out),
        "before\n",
        "output before the kill is kept"
    );
    assert!(stderr_of(&out).contains("timed out"), "{}", stderr_of(&out));
    assert!(all_gone(&sleep), "{:?}", processes_with(&sleep));
    agent.expect_log("outcome=\"timed out\"");
}

#[test]
fn output_flowing_at_the_timeout_arrives_without_a_gap() {
    let (env, agent) = Env::with_agent();
    // Output still flows when the deadline comes, so the agent has read a
    // chunk it has not sent yet; what the command wrote before it was
    // killed follows it. Five runs: which of the two comes first at the
    // deadline is chance.
    for run in 1..=5 {
        let out = env.exec(&agent, &["--timeout", "100ms", "seq 1 1000000000"]);
        assert_eq!(out.status.code(), Some(124), "{}", stderr_of(&out));
        let text = stdout_of(&out);
        // The command was killed in the middle of a write: the last line
        // may be cut short, but only there.
        let (whole, cut) = text.rsplit_once('\n').unwrap_or(("", &text));
        let mut lines = 0u64;
        for line in whole.lines() {
            lines += 1;
            assert_eq!(
                line,
                lines.to_string(),
                "run {run}: line {lines} is not the next number: output went missing"
            );
        }
        assert!(
            (lines + 1).to_string().starts_with(cut),
            "run {run}: the output ends in {cut:?} after {lines}"
        );
    }
}

#[test]
fn timeout_kill_escalates_to_sigkill_for_a_command_that_ignores_term() {
    let (env, agent) = Env::with_agent();
    let sleep = unique_sleep(600);
    let out = env.exec(
        &agent,
        &[
            "--timeout",
            "500ms",
            &format!("trap '' TERM; sleep {sleep}"),
        ],
    );
    assert_eq!(out.status.code(), Some(124));
    assert!(all_gone(&sleep), "{:?}", processes_with(&sleep));
}

#[test]
fn agent_maximum_timeout_applies_when_the_client_sets_none_or_more() {
    let (env, agent) = Env::with_agent_flags(&["--max-timeout", "1s"]);
    let sleep = unique_sleep(600);
    let none = env.exec(&agent, &[&format!("sleep {sleep}")]);
    assert_eq!(none.status.code(), Some(124), "{}", stderr_of(&none));
    let longer = env.exec(&agent, &["--timeout", "1h", &format!("sleep {sleep}")]);
    assert_eq!(longer.status.code(), Some(124));
    let shorter = env.exec(&agent, &["--timeout", "10s", "echo quick"]);
    assert_eq!(stdout_of(&shorter), "quick\n");
    assert!(all_gone(&sleep));
}

#[test]
fn the_timeout_holds_while_ctl_is_not_reading_the_output() {
    let (env, agent) = Env::with_agent_flags(&["--max-timeout", "1s"]);
    let sleep = unique_sleep(600);
    // Quoted apart, so that only the remote `sleep`, not ctl, shows it.
    let (whole, fraction) = sleep.split_once('.').expect("a fraction");
    // Nobody reads ctl's stdout for now: the pipe, ctl and the connection
    // fill up, and the agent waits to send.
    let mut ctl = env
        .ctl()
        .args([
            "exec",
            &agent.target(),
            &format!("sleep {whole}''.{fraction} & yes"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ctl");
    assert!(
        wait_until(DEADLINE, || !processes_with(&sleep).is_empty()),
        "the command started"
    );
    assert_gone_soon(&sleep, "the group is killed at the timeout all the same");
    let mut stdout = ctl.stdout.take().expect("stdout");
    let read = std::thread::spawn(move || {
        let mut all = Vec::new();
        stdout.read_to_end(&mut all).expect("read stdout");
        all
    });
    let status = wait_for_exit(&mut ctl);
    let out = read.join().expect("reader");
    assert_eq!(status.code(), Some(124));
    assert!(
        out.starts_with(b"y\ny\n"),
        "the output before the kill is kept"
    );
}

/// Runs `ctl exec --connect-timeout 1s ADDR true` against a peer that
/// never completes the connection, and checks ctl gives up on time: exit
/// 255, one line naming the connect timeout, after 1 s and well before
/// the peer would have let go.
fn assert_connect_timeout_ends(env: &Env, addr: std::net::SocketAddr) {
    let started = Instant::now();
    let out = env
        .ctl()
        .args(["exec", "--connect-timeout", "1s", &addr.to_string(), "true"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(255));
    let err = stderr_of(&out);
    assert!(err.contains("connect timeout"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(
        took < Duration::from_secs(4),
        "bounded by the timeout, not the peer: {took:?}"
    );
}

/// A host whose SYNs go unanswered, as behind a firewall's DROP: here a
/// listener with a full accept queue, which makes the kernel drop them.
/// Connecting gives up at --connect-timeout.
#[test]
fn connect_timeout_bounds_a_black_holed_host() {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, getsockname, listen, socket,
    };
    use std::os::fd::AsRawFd;

    let env = Env::new();
    let listener = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    bind(listener.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
    listen(&listener, Backlog::new(0).unwrap()).unwrap();
    let bound: SockaddrIn = getsockname(listener.as_raw_fd()).unwrap();
    let addr = std::net::SocketAddr::V4(bound.into());
    // Fill the queue, never accepting, until a connection attempt hangs.
    let mut queued = Vec::new();
    while let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        queued.push(stream);
        assert!(queued.len() < 16, "the accept queue never filled");
    }
    assert_connect_timeout_ends(&env, addr);
}

#[test]
fn connect_timeout_bounds_a_host_that_never_answers() {
    let env = Env::new();
    // Accepts TCP and then says nothing, like a host behind a black hole
    // for everything after the SYN.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let (stream, _) = silent.accept().unwrap();
        std::thread::sleep(Duration::from_secs(5));
        drop(stream);
    });
    assert_connect_timeout_ends(&env, addr);
    holder.join().unwrap();
}

#[test]
fn environment_is_a_clean_base_plus_what_the_client_sends() {
    let (env, agent) = Env::with_agent();
    // The agent itself runs with RUST_LOG set (see util): it must not leak.
    let out = env.exec(
        &agent,
        &[
            "-e",
            "GREETING=hello world",
            "-e",
            "LANG=C",
            "echo \"$GREETING|${RUST_LOG-unset}|$LANG\"; \
             test -n \"$PATH\" && test -n \"$HOME\" && test -n \"$USER\" && test -n \"$SHELL\" && echo base-ok; \
             env | cut -d= -f1 | sort | tr '\\n' ' '",
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("hello world|unset|C"));
    assert_eq!(lines.next(), Some("base-ok"));
    let names: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    for name in &names {
        assert!(
            [
                "GREETING",
                "HOME",
                "LANG",
                "LOGNAME",
                "PATH",
                "PWD",
                "SHELL",
                "SHLVL",
                "USER",
                "OLDPWD",
                "_",
                "REXEC_TARGET"
            ]
            .contains(name),
            "unexpected variable {name} in {names:?}"
        );
    }
}

#[test]
fn working_directory_is_used_and_a_missing_one_is_refused_before_running() {
    let (env, agent) = Env::with_agent();
    let dir = new_dir(env.root.path(), "work dir");
    let out = env.exec(&agent, &["-C", dir.to_str().unwrap(), "pwd"]);
    assert_eq!(stdout_of(&out).trim_end(), dir.to_str().unwrap());

    let marker_file = env.root.path().join("must-not-exist");
    let out = env.exec(
        &agent,
        &[
            "-C",
            "/nonexistent/dir",
            &format!("touch '{}'", marker_file.display()),
        ],
    );
    assert_failed_saying(&out, 255, "no such directory: /nonexistent/dir");
    assert!(!marker_file.exists(), "nothing ran");
}

#[test]
fn another_user_is_refused_unless_the_agent_allows_it() {
    let (env, agent) = Env::with_agent();
    let out = env.exec(&agent, &["--user", "nobody", "id -un"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(stdout_of(&out), "");
    let err = stderr_of(&out);
    assert!(
        err.contains("may not run commands as \"nobody\"") || err.contains("not root"),
        "{err}"
    );
    // USER@HOST says the same.
    let out = env
        .ctl()
        .args(["exec", &format!("nobody@{}", agent.target()), "id -un"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(255));
}

/// `user`'s home in /etc/passwd, or `/` where that is no directory (as
/// the agent falls back), and login shell.
fn home_and_shell_of(user: &str) -> (String, String) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let entry: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .unwrap()
        .split(':')
        .collect();
    let home = Some(entry[5])
        .filter(|h| std::path::Path::new(h).is_dir())
        .unwrap_or("/");
    (home.to_owned(), entry[6].to_owned())
}

#[test]
fn a_root_agent_runs_commands_as_users_its_run_as_rules_allow() {
    require_root!("the agent must run as root to switch users");
    let env = Env::new();
    env.write_agent_config("[run_as]\ntester = [\"nobody\"]\n");
    let agent = env.agent();
    // `id -G`: the user's own groups, none of root's kept.
    let probe = "id -un; id -u; id -g; id -G; echo \"$USER $LOGNAME $HOME $SHELL\"";
    let out = env.exec(&agent, &["--user", "nobody", probe]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let expected_ids = Command::new("sh")
        .args(["-c", "id -u nobody; id -g nobody; id -G nobody"])
        .output()
        .unwrap();
    let (home, shell) = home_and_shell_of("nobody");
    assert_eq!(
        stdout_of(&out),
        format!(
            "nobody\n{}nobody nobody {home} {shell}\n",
            stdout_of(&expected_ids)
        )
    );
    // The same by USER@HOST; another user stays refused.
    let at = env
        .ctl()
        .args(["exec", &format!("nobody@{}", agent.target()), "id -un"])
        .output()
        .unwrap();
    assert_eq!(stdout_of(&at), "nobody\n");
    let refused = env.exec(&agent, &["--user", "daemon", "id -un"]);
    assert_failed_saying(&refused, 255, "may not run commands as \"daemon\"");
}

#[test]
fn a_client_at_its_exec_limit_is_told_busy_and_others_are_not() {
    let (env, agent) = Env::with_agent_flags(&["--max-execs-per-client", "1"]);
    let mut first = start_sleeping(&env, &agent, "", 1);
    let refused = env.exec(&agent, &["echo second"]);
    assert_eq!(refused.status.code(), Some(255));
    assert_eq!(stdout_of(&refused), "");
    let err = stderr_of(&refused);
    assert!(err.contains("busy"), "{err}");
    assert!(err.contains("max_execs_per_client"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    agent.expect_log("exec refused");

    // Another client is not held back by this one's limit.
    let other_dir = env.other_client(Some("other"));
    let other = env.exec_as(&other_dir, &agent, "echo other");
    assert_eq!(stdout_of(&other), "other\n", "{}", stderr_of(&other));

    // The place comes back when the first command ends: before ctl hears
    // of the end, so a script's next exec never finds it taken.
    send_signal(first.ctl.id(), "INT");
    assert_eq!(wait_for_exit(&mut first.ctl).code(), Some(130));
    let again = env.exec(&agent, &["echo again"]);
    assert_eq!(stdout_of(&again), "again\n", "{}", stderr_of(&again));
}

#[test]
fn the_agent_at_its_exec_limit_tells_every_client_busy() {
    let (env, agent) = Env::with_agent_flags(&["--max-execs", "1"]);
    let _first = start_sleeping(&env, &agent, "", 1);
    let other_dir = env.other_client(Some("other"));
    let other = env.exec_as(&other_dir, &agent, "echo other");
    assert_eq!(other.status.code(), Some(255));
    let err = stderr_of(&other);
    assert!(err.contains("busy") && err.contains("(max_execs)"), "{err}");
}

#[test]
fn a_quiet_command_outlives_many_keepalive_intervals() {
    // Thirty intervals of quiet; ctl answers each keepalive, and the 2 s
    // bound (20 unanswered) is far above a busy machine's stalls.
    let (env, agent) =
        Env::with_agent_flags(&["--keepalive-interval", "100ms", "--keepalive-count", "20"]);
    let out = env.exec(&agent, &["sleep 3; echo still-here"]);
    assert_eq!(stdout_of(&out), "still-here\n", "{}", stderr_of(&out));
    assert!(out.status.success());
}

#[test]
fn a_frozen_client_is_detected_and_its_command_killed() {
    let (env, agent) =
        Env::with_agent_flags(&["--keepalive-interval", "200ms", "--keepalive-count", "3"]);
    let mut run = start_sleeping(&env, &agent, "", 2);
    send_signal(run.ctl.id(), "STOP");
    let frozen = Instant::now();
    // The bound: a quiet interval, three unanswered ones, then the kill
    // grace (500 ms), about 1.3 s; the rest is slack for a busy machine.
    assert_gone_within(&run.sleep, Duration::from_secs(4));
    agent.expect_log("no answer to keepalives");
    assert!(
        frozen.elapsed() >= Duration::from_millis(600),
        "not before the bound"
    );
    send_signal(run.ctl.id(), "CONT");
    assert_eq!(wait_for_exit(&mut run.ctl).code(), Some(255));
}

#[test]
fn sigterm_to_the_agent_lets_running_commands_finish_and_refuses_new_ones() {
    let (env, mut agent) = Env::with_agent_flags(&["--shutdown-grace", "20s"]);
    let mut ctl = spawn_exec(&env, &agent, &[], "echo ready; sleep 1; echo finished");
    let mut stdout = BufReader::new(ctl.stdout.take().unwrap());
    read_until_line(&mut stdout, "ready");
    agent.signal("TERM");
    assert!(agent.wait_for_log("SIGTERM").is_some());
    let refused = env.exec(&agent, &["echo too-late"]);
    assert_eq!(
        refused.status.code(),
        Some(255),
        "no new sessions after SIGTERM"
    );
    assert_eq!(rest_of(&mut stdout), "finished\n");
    assert!(wait_for_exit(&mut ctl).success());
    assert_agent_exits_0(&mut agent);
}

#[test]
fn sigterm_past_the_grace_kills_commands_and_tells_their_clients() {
    let (_env, mut agent, mut run) = signalled_while_sleeping("500ms", 2, "TERM");
    let status = wait_for_exit(&mut run.ctl);
    let err = stderr_text(&mut run.ctl);
    assert_eq!(status.code(), Some(255));
    assert!(err.contains("shutting down"), "{err}");
    assert!(all_gone(&run.sleep), "{:?}", processes_with(&run.sleep));
    assert_agent_exits_0(&mut agent);
}

#[test]
fn sigint_to_the_agent_kills_commands_at_once() {
    let (_env, mut agent, mut run) = signalled_while_sleeping("60s", 1, "INT");
    assert_eq!(wait_for_exit(&mut run.ctl).code(), Some(255));
    assert!(all_gone(&run.sleep));
    assert_agent_exits_0(&mut agent);
}

#[test]
fn dash_t_gives_a_remote_terminal_with_size_resize_keys_and_restores_ours() {
    require_tool!("tmux");
    let (env, agent) = Env::with_agent();
    let tmux = Terminal::start(
        &env,
        (100, 30),
        &format!(
            "{} exec -t {} 'trap \"echo interrupted; exit 9\" INT; tty; echo \"size $(stty size) term $TERM\"; \
             read line; echo \"size $(stty size) read $line\"; sleep 600'",
            bin("ctl").display(),
            agent.target()
        ),
        "stty -a; sleep 60",
    )
    .joining_wrapped_lines();
    let screen = tmux.wait_for("size 30 100");
    let remote_tty = screen
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("/dev/pts/"))
        .unwrap_or_else(|| panic!("the remote terminal's name: {screen}"))
        .to_owned();
    assert!(!screen.contains("not a tty"), "{screen}");
    // While ctl runs, our own terminal is raw: keys go to the remote one
    // as typed, and only it echoes them.
    let pane = tmux
        .tmux()
        .args(["display-message", "-p", "#{pane_tty}"])
        .output()
        .unwrap();
    let pane = stdout_of(&pane).trim().to_owned();
    assert!(pane.starts_with("/dev/"), "pane tty {pane:?}");
    let ours = Command::new("stty")
        .args(["-F", &pane, "-a"])
        .output()
        .unwrap();
    let ours = stdout_of(&ours);
    assert!(ours.contains("-icanon"), "{ours}");
    assert!(ours.contains("-echo "), "{ours}");
    assert!(ours.contains("-isig"), "{ours}");
    assert!(
        tmux.tmux()
            .args(["resize-window", "-x", "120", "-y", "40"])
            .status()
            .unwrap()
            .success()
    );
    // The keys once the new size has reached the remote terminal (the
    // agent is on this machine): typed earlier, they could overtake it.
    let remote_size = || {
        let out = Command::new("stty")
            .args(["-F", &remote_tty, "size"])
            .output()
            .unwrap();
        stdout_of(&out).trim().to_owned()
    };
    assert!(
        wait_until(DEADLINE, || remote_size() == "40 120"),
        "the remote terminal is resized: {}",
        remote_size()
    );
    tmux.keys(&["typed words", "Enter"]);
    tmux.wait_for("size 40 120 read typed words");
    // Ctrl-C goes through the remote terminal to the remote job.
    tmux.keys(&["C-c"]);
    tmux.wait_for("rc=9");
    // Our terminal is back in canonical mode with echo (`stty -a` after ctl).
    let screen = tmux.wait_for("icanon");
    assert!(screen.contains("interrupted"), "{screen}");
    let settings = screen.split("rc=9").nth(1).unwrap_or_default();
    assert!(settings.contains(" icanon"), "{settings}");
    assert!(settings.contains(" echo"), "{settings}");
}

#[test]
fn without_dash_t_the_command_has_no_terminal() {
    let (env, agent) = Env::with_agent();
    let out = env.exec(&agent, &["tty; test -t 1 || echo no-terminal"]);
    assert_eq!(stdout_of(&out), "not a tty\nno-terminal\n");
}

/// An agent served in this process, so that shutdown is driven through its
/// tokens instead of real signals.
struct InProcessAgent {
    runtime: tokio::runtime::Runtime,
    shutdown: Shutdown,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl InProcessAgent {
    fn start(env: &Env, grace: Duration) -> InProcessAgent {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut settings = AgentSettings::new(&env.agent_dir);
        settings.kill_grace = Duration::from_millis(300);
        let shutdown = Shutdown::default();
        let state = Arc::new(AgentState::load(settings, shutdown.clone()).unwrap());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = runtime.spawn(serve(vec![listener], state, grace));
        let mut known = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.ctl_dir.join("known_hosts"))
            .unwrap();
        writeln!(known, "{addr} {}", env.agent_fingerprint).unwrap();
        InProcessAgent {
            runtime,
            shutdown,
            addr,
            server,
        }
    }

    /// Waits for `serve` to return.
    fn join(self) {
        let server = self.server;
        self.runtime
            .block_on(async { tokio::time::timeout(DEADLINE, server).await })
            .expect("serve returned")
            .unwrap();
    }
}

#[test]
fn stop_token_refuses_new_sessions_and_serve_waits_for_running_ones() {
    let env = Env::new();
    let agent = InProcessAgent::start(&env, Duration::from_secs(20));
    let target = agent.addr.to_string();
    // The command finishes when the test says so, not after some time.
    let go = env.root.path().join("go");
    let mut ctl = spawn_exec_at(
        &env,
        &target,
        &[],
        &format!(
            "echo ready; while ! test -e '{}'; do sleep 0.02; done; echo finished",
            go.display()
        ),
    );
    let mut stdout = BufReader::new(ctl.stdout.take().unwrap());
    read_until_line(&mut stdout, "ready");
    agent.shutdown.stop.cancel();
    let refused = env
        .ctl()
        .args(["exec", &agent.addr.to_string(), "echo too-late"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(255));
    assert!(
        !agent.server.is_finished(),
        "serve must wait for the running command"
    );
    std::fs::write(&go, "").unwrap();
    assert_eq!(rest_of(&mut stdout), "finished\n");
    assert!(wait_for_exit(&mut ctl).success());
    assert!(
        !agent.shutdown.kill.is_cancelled(),
        "finished within the grace"
    );
    agent.join();
}

#[test]
fn grace_expiry_cancels_the_kill_token_and_clients_hear_why() {
    let env = Env::new();
    let agent = InProcessAgent::start(&env, Duration::from_millis(300));
    let mut run = start_sleeping_at(&env, &agent.addr.to_string(), "", 2);
    agent.shutdown.stop.cancel();
    let status = wait_for_exit(&mut run.ctl);
    let err = stderr_text(&mut run.ctl);
    assert_eq!(status.code(), Some(255));
    assert!(err.contains("agent shutting down"), "{err}");
    assert!(agent.shutdown.kill.is_cancelled());
    assert!(all_gone(&run.sleep), "{:?}", processes_with(&run.sleep));
    agent.join();
}

/// An agent started as `rexec-agent run` by hand, with `cmd`'s changes,
/// known to ctl.
fn hand_started_agent(env: &Env, adjust: impl FnOnce(&mut Command)) -> Agent {
    let mut cmd = agent_run_command(&env.agent_dir);
    cmd.args(["--listen", "127.0.0.1:0"]);
    adjust(&mut cmd);
    let mut agent = Agent::spawn(cmd);
    agent.wait_listening();
    env.trust(&agent);
    agent
}

#[test]
fn the_environment_has_exact_base_values_and_a_c_utf8_default_lang() {
    let env = Env::new();
    // Started without LANG, so the default shows.
    let agent = hand_started_agent(&env, |cmd| {
        cmd.env_remove("LANG");
    });
    let probe = "printf '%s|' \"$PATH\" \"$HOME\" \"$USER\" \"$LOGNAME\" \"$SHELL\" \"$LANG\" \"${RUST_LOG-unset}\" \"${TERM-unset}\"";
    let out = env.exec(&agent, &[probe]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let user = Command::new("id").arg("-un").output().unwrap();
    let user = stdout_of(&user).trim().to_owned();
    let (home, shell) = home_and_shell_of(&user);
    assert_eq!(
        stdout_of(&out),
        format!(
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|{home}|{user}|{user}|{shell}|C.UTF-8|unset|unset|",
        )
    );
    // The agent's own LANG is passed on; the client's -e wins over both.
    let agent = hand_started_agent(&env, |cmd| {
        cmd.env("LANG", "de_DE.UTF-8");
    });
    let out = env.exec(&agent, &["echo \"$LANG\""]);
    assert_eq!(stdout_of(&out), "de_DE.UTF-8\n", "{}", stderr_of(&out));
    let out = env.exec(
        &agent,
        &["-e", "LANG=C", "-e", "PATH=/opt/x", "echo \"$LANG $PATH\""],
    );
    assert_eq!(stdout_of(&out), "C /opt/x\n", "{}", stderr_of(&out));
}

/// The descriptors a command's shell holds, listed by a child while the
/// shell only waits (a loop in the shell itself would see its own
/// directory and pipes).
const OPEN_FILES: &str = "ls -l /proc/$$/fd";

/// The descriptor numbers in `ls -l` lines ("… 0 -> /dev/null").
fn open_file_numbers(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|line| line.contains(" -> "))
        .filter_map(|line| line.split(" -> ").next()?.rsplit(' ').next())
        .filter(|n| n.parse::<u32>().is_ok())
        .map(str::to_owned)
        .collect()
}

/// A terminal one client has open (`-t`, perhaps a root shell) never
/// reaches another command, which could otherwise read its screen and type
/// into it through the master; nor does the terminal session's own command
/// hold more than its three copies of the slave.
#[test]
fn a_command_holds_no_other_sessions_terminal() {
    require_tool!("tmux");
    let (env, agent) = Env::with_agent();
    let tmux = Terminal::start(
        &env,
        (100, 30),
        &format!(
            "{} exec -t {} '{OPEN_FILES}; echo opened; sleep 600'",
            bin("ctl").display(),
            agent.target(),
        ),
        "sleep 60",
    );
    let own = tmux.wait_for("opened");
    let out = env.exec(&agent, &[OPEN_FILES]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let other = stdout_of(&out);
    assert_eq!(open_file_numbers(&other), ["0", "1", "2"], "{other}");
    assert!(
        !other.contains("ptmx") && !other.contains("/dev/pts"),
        "{other}"
    );
    assert_eq!(open_file_numbers(&own), ["0", "1", "2"], "{own}");
    assert!(!own.contains("ptmx"), "{own}");
}

/// Descriptors the agent was started with (a shell's, a supervisor's)
/// are not passed on to its commands, by either way of starting them.
#[test]
fn a_command_gets_none_of_the_descriptors_the_agent_was_started_with() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let agent = hand_started_agent(&env, |cmd| {
        // SAFETY: dup2 only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if nix::libc::dup2(2, 9) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    // Without a terminal (the spawn path) and with one (the fork path).
    let out = env.exec(&agent, &[OPEN_FILES]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        open_file_numbers(&stdout_of(&out)),
        ["0", "1", "2"],
        "{}",
        stdout_of(&out)
    );
    let out = env.exec(&agent, &["-t", OPEN_FILES]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out).replace('\r', "");
    assert_eq!(open_file_numbers(&text), ["0", "1", "2"], "{text}");
}

#[test]
fn a_command_gets_its_own_session_without_the_agents_terminal() {
    use std::os::unix::process::CommandExt;
    // The agent runs with a terminal as its controlling one, as when an
    // admin starts it by hand.
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave.try_clone().unwrap();
    let env = Env::new();
    let agent = hand_started_agent(&env, move |cmd| {
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave));
        // SAFETY: setsid and ioctl only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let agent_sid =
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(agent.child.id() as i32))).unwrap();
    let out = env.exec(
        &agent,
        &["ps -o sid= -p $$; if (exec 3</dev/tty) 2>/dev/null; then echo has-tty; else echo no-tty; fi"],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    let mut lines = text.lines();
    let sid: i32 = lines.next().unwrap().trim().parse().unwrap();
    assert_ne!(sid, agent_sid.as_raw(), "a session of its own");
    assert_eq!(lines.next(), Some("no-tty"), "{text}");
    drop(pty.master);
}

#[test]
fn a_killed_agent_takes_its_commands_with_it() {
    let (env, mut agent) = Env::with_agent();
    let mut run = start_sleeping(&env, &agent, "", 2);
    let shell = format!("-c echo ready; sleep {}", run.sleep);
    assert!(
        processes_with(&run.sleep)
            .iter()
            .any(|(_, c)| c.contains(&shell)),
        "{:?}",
        processes_with(&run.sleep)
    );
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    // The shell and both sleeps; the bound is the kill grace plus slack.
    assert!(all_gone(&run.sleep), "{:?}", processes_with(&run.sleep));
    assert_eq!(wait_for_exit(&mut run.ctl).code(), Some(255));
}

#[test]
fn a_timeout_is_reported_once_the_group_is_gone_not_after_the_kill_grace() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    // A child subreaper above the commands that reaps nothing (as a slow
    // init does): the timed-out command's orphaned sleep stays a zombie in
    // the group. The agent itself is that subreaper here.
    let mut cmd = Command::new(bin("rexec-agent"));
    cmd.args(["run", "--dir"])
        .arg(&env.agent_dir)
        .args(["--listen", "127.0.0.1:0", "--kill-grace", "60s"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: one prctl between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_child_subreaper(true)?;
            Ok(())
        });
    }
    let mut agent = Agent::spawn(cmd);
    agent.wait_listening();
    env.trust(&agent);
    let sleep = unique_sleep(600);
    let started = Instant::now();
    let out = exec_within_1s(&env, &agent, &format!("sleep {sleep}; echo not-reached"));
    assert_eq!(out.status.code(), Some(124), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "");
    assert!(all_gone(&sleep), "{:?}", processes_with(&sleep));
    // Held for the 60 s kill grace before the fix; the bound leaves slack.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_timeout_beyond_any_deadline_is_refused_and_the_agent_serves_on() {
    use futures_util::{SinkExt, StreamExt};
    use rexec_protocol::tls::{HostKeyPolicy, HostKeyVerifier, client_config, server_name};
    use rexec_protocol::{
        AgentMessage, ClientCodec, ClientMessage, ErrorKind, ExecRequest, Hello, Identity,
        IdentityPaths,
    };

    let (env, agent) = Env::with_agent();
    let identity = Identity::load(&IdentityPaths::in_dir(&env.ctl_dir, "client")).unwrap();
    let verifier = Arc::new(HostKeyVerifier::new(HostKeyPolicy::TrustOnFirstUse));
    let config = client_config(Some(&identity), verifier).unwrap();
    for secs in [u64::MAX, 5_000_000_000_000_000 * 3600, 400 * 365 * 86400] {
        let tcp = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config.clone()))
            .connect(server_name("127.0.0.1"), tcp)
            .await
            .unwrap();
        let (read, write) = tokio::io::split(tls);
        let mut incoming = tokio_util::codec::FramedRead::new(read, ClientCodec::new());
        let mut outgoing = tokio_util::codec::FramedWrite::new(write, ClientCodec::new());
        outgoing
            .send(ClientMessage::Hello(Hello::new("test")))
            .await
            .unwrap();
        outgoing
            .send(ClientMessage::Exec(ExecRequest {
                command: "echo ran".into(),
                timeout: Some(Duration::from_secs(secs)),
                ..ExecRequest::default()
            }))
            .await
            .unwrap();
        let mut got = Vec::new();
        let read = async {
            while let Some(Ok(message)) = incoming.next().await {
                got.push(message);
            }
        };
        assert!(tokio::time::timeout(DEADLINE, read).await.is_ok());
        match got.last() {
            Some(AgentMessage::Error(report)) => {
                assert_eq!(report.kind, ErrorKind::BadRequest);
                assert_eq!(
                    report.message,
                    "the timeout asked for is longer than this agent accepts (10 years)"
                );
            }
            other => panic!("expected a refusal, got {other:?} in {got:?}"),
        }
    }
    // Audited, and the agent goes on.
    assert!(agent.wait_for_log("timeout asked for is longer").is_some());
    let out = ctl_output_off_the_runtime(&env, &["exec", &agent.target(), "echo still"]).await;
    assert_eq!(stdout_of(&out), "still\n", "{}", stderr_of(&out));
}

/// A root agent whose run-as rules let the env's client run as nobody
/// only, and the config dir of another client ("other") the rules do not
/// name; the agent's target last.
fn root_agent_running_tester_as_nobody() -> (Env, Agent, std::path::PathBuf, String) {
    let env = Env::new();
    let (agent, other) = root_agent_with_run_as(&env, "tester = [\"nobody\"]");
    let host = agent.target();
    (env, agent, other, host)
}

/// A root agent with the run-as `rules` (lines of the `[run_as]` table),
/// and the config dir of another client ("other") authorized on it.
fn root_agent_with_run_as(env: &Env, rules: &str) -> (Agent, std::path::PathBuf) {
    env.write_agent_config(format!("[run_as]\n{rules}\n"));
    let agent = env.agent();
    let other = env.other_client(Some("other"));
    (agent, other)
}

fn exec_at(
    env: &Env,
    dir: Option<&std::path::Path>,
    target: &str,
    words: &[&str],
) -> std::process::Output {
    let mut ctl = env.ctl();
    if let Some(dir) = dir {
        ctl.env("REXEC_CONFIG_DIR", dir);
    }
    ctl.arg("exec").arg(target).args(words).output().unwrap()
}

#[test]
fn run_as_rules_confine_a_listed_client_and_leave_others_as_they_were() {
    require_root!("the agent must run as root to switch users");
    let (env, _agent, other, host) = root_agent_running_tester_as_nobody();
    // The listed client: its first user by default, never root.
    let out = exec_at(&env, None, &host, &["id -un"]);
    assert_eq!(stdout_of(&out), "nobody\n", "{}", stderr_of(&out));
    let out = exec_at(&env, None, &format!("root@{host}"), &["id -un"]);
    assert_refused(
        &out,
        "client \"tester\" may not run commands as \"root\"",
        &[],
    );
    let out = exec_at(&env, None, &host, &["--user", "root", "id -un"]);
    assert_eq!(out.status.code(), Some(255), "{}", stdout_of(&out));
    // A client the rules do not name keeps running as the agent's user.
    let out = exec_at(&env, Some(&other), &host, &["id -un"]);
    assert_eq!(stdout_of(&out), "root\n", "{}", stderr_of(&out));
    let out = exec_at(&env, Some(&other), &format!("nobody@{host}"), &["id -un"]);
    assert_eq!(out.status.code(), Some(255));

    // Copies follow the same rule: a pull of a root-only file is refused,
    // a push lands as nobody's.
    let secret = env.root.path().join("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    set_mode(&secret, 0o600);
    let local = new_dir(env.root.path(), "pulled");
    let pull_secret_as = |target: &str| {
        env.ctl()
            .args(["cp", &format!("{target}:{}", secret.display())])
            .arg(&local)
            .output()
            .unwrap()
    };
    let pull = pull_secret_as(&host);
    assert_ne!(pull.status.code(), Some(0), "{}", stderr_of(&pull));
    assert!(!local.join("secret").exists());
    set_mode(env.root.path(), 0o755);
    let dest = new_dir(env.root.path(), "drop");
    set_mode(&dest, 0o777);
    let file = env.root.path().join("pushed.txt");
    std::fs::write(&file, "hello\n").unwrap();
    let push = env
        .ctl()
        .arg("cp")
        .arg(&file)
        .arg(format!("{host}:{}/", dest.display()))
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", stderr_of(&push));
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dest.join("pushed.txt")).unwrap());
    let nobody = Command::new("id").args(["-u", "nobody"]).output().unwrap();
    assert_eq!(owner.to_string(), stdout_of(&nobody).trim());
    let root_pull = pull_secret_as(&format!("root@{host}"));
    assert_eq!(
        root_pull.status.code(),
        Some(255),
        "{}",
        stderr_of(&root_pull)
    );
    assert!(!local.join("secret").exists());
}

#[test]
fn a_working_directory_is_entered_as_the_user_and_hidden_paths_stay_hidden() {
    require_root!("the agent must run as root to switch users");
    let (env, _agent, _, host) = root_agent_running_tester_as_nobody();
    let hidden = env.root.path().join("root-only");
    std::fs::create_dir_all(hidden.join("inner")).unwrap();
    std::fs::write(hidden.join("inner/secret.txt"), "the secret\n").unwrap();
    set_mode(&hidden, 0o700);
    // The env's temp dir itself must be enterable by nobody for the rest.
    set_mode(env.root.path(), 0o755);
    let marker_file = env.root.path().join("must-not-exist");
    let mut messages = Vec::new();
    for dir in ["inner", "missing"] {
        let path = hidden.join(dir);
        let out = exec_at(
            &env,
            None,
            &host,
            &[
                "-C",
                path.to_str().unwrap(),
                &format!("cat secret.txt; touch '{}'", marker_file.display()),
            ],
        );
        assert_eq!(out.status.code(), Some(255));
        assert_eq!(stdout_of(&out), "", "nothing ran");
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("user nobody may not enter the directory"),
            "{err}"
        );
        messages.push(err.replace(dir, "DIR"));
    }
    assert_eq!(
        messages[0], messages[1],
        "an existing hidden path looks like a missing one"
    );
    assert!(!marker_file.exists());
    // A directory nobody may enter works.
    let out = exec_at(&env, None, &host, &["-C", "/tmp", "pwd; id -un"]);
    assert_eq!(stdout_of(&out), "/tmp\nnobody\n", "{}", stderr_of(&out));
}

/// Signals reach the command while our stdout's reader takes nothing (a
/// paused `less`, a full pipe): the first Ctrl-C is forwarded at once and
/// a second ends ctl with 130. ctl used to write output with a blocking
/// write in the loop that handles signals, so it heard none until its
/// reader read again.
#[test]
fn ctrl_c_is_heard_while_stdouts_reader_takes_nothing() {
    let (env, agent) = Env::with_agent();
    let marker = unique_sleep(600);
    // Output that fills every pipe on the way, then a process to find.
    let command = format!("sleep {marker} & yes paused-reader");
    let mut ctl = env
        .ctl()
        .args(["exec", &agent.target(), &command])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(DEADLINE, || !processes_with(&marker).is_empty()),
        "the command runs"
    );
    // Long enough for the pipe to ctl and the connection to fill.
    std::thread::sleep(Duration::from_millis(500));
    send_signal(ctl.id(), "INT");
    std::thread::sleep(Duration::from_millis(300));
    send_signal(ctl.id(), "INT");
    let ended = wait_until(Duration::from_secs(10), || {
        matches!(ctl.try_wait(), Ok(Some(_)))
    });
    assert!(
        ended,
        "ctl ends at a second Ctrl-C though nothing reads its stdout"
    );
    assert_eq!(ctl.wait().unwrap().code(), Some(130));
    assert_gone_within(&marker, Duration::from_secs(5));
    drop(ctl.stdout.take());
}
