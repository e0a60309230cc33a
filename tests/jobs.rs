//! Detached jobs against real agents: `ctl exec --detach`, then `ctl job
//! …`, with ctl, the connection and the agent itself going away while
//! the job runs.

use std::process::{Output, Stdio};
use std::time::Duration;

use crate::util::*;

/// `ctl exec --detach TARGET COMMAND`: the job id it printed.
#[track_caller]
fn detach(env: &Env, target: &str, command: &str) -> String {
    job_id(&env.ctl_run(&["exec", "--detach", target, command]), 0)
}

/// The one job id a `ctl exec --detach` that exited `code` printed.
#[track_caller]
fn job_id(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{}", stderr_of(out));
    let id = stdout_of(out).trim().to_owned();
    assert_eq!(id.len(), 32, "one job id: {:?}", stdout_of(out));
    id
}

/// `ctl job ARGS…` started, stdout and stderr piped.
fn spawn_job(env: &Env, args: &[&str]) -> std::process::Child {
    env.ctl()
        .arg("job")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn job(env: &Env, args: &[&str]) -> Output {
    let mut all = vec!["job"];
    all.extend_from_slice(args);
    env.ctl_run(&all)
}

/// What `ctl job output TARGET ID` gave: its exit code and stdout.
fn output_of(env: &Env, target: &str, id: &str) -> (Option<i32>, String) {
    let out = job(env, &["output", target, id]);
    (out.status.code(), stdout_of(&out))
}

/// The jobs of `target` as `ctl job list --json` gives them.
fn listed(env: &Env, target: &str) -> Vec<serde_json::Value> {
    let out = job(env, &["list", "--json", target]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    json_lines(&out)
}

fn state_of(env: &Env, target: &str, id: &str) -> Option<String> {
    listed(env, target)
        .into_iter()
        .find(|j| j["id"] == id)
        .map(|j| j["status"].as_str().unwrap_or("").to_owned())
}

/// A command writing 5 MB of patterned bytes to stdout and a different
/// 1 MB to stderr, interleaved, then exiting 7.
fn five_megabytes(env: &Env) -> (String, Vec<u8>, Vec<u8>) {
    let out_data = random_bytes(5 << 20, 0x51ed_270b_2748_a2d9);
    let err_data = random_bytes(1 << 20, 0x2545_f491_4f6c_dd1d);
    let out_file = env.root.path().join("out.bin");
    let err_file = env.root.path().join("err.bin");
    std::fs::write(&out_file, &out_data).unwrap();
    std::fs::write(&err_file, &err_data).unwrap();
    let command = format!(
        "head -c 3000000 '{o}'; head -c 500000 '{e}' >&2; tail -c +3000001 '{o}'; tail -c +500001 '{e}' >&2; exit 7",
        o = out_file.display(),
        e = err_file.display()
    );
    (command, out_data, err_data)
}

#[test]
fn a_detached_job_keeps_five_megabytes_byte_exact_streams_apart_and_its_status() {
    let (env, agent) = Env::with_agent();
    let (command, out_data, err_data) = five_megabytes(&env);
    // A tab, which the listing gives back as the command had it.
    let command = format!("{command}\t# tab");
    let id = detach(&env, &agent.target(), &command);
    let waited = job(&env, &["wait", &agent.target(), &id]);
    assert_eq!(waited.status.code(), Some(7), "{}", stderr_of(&waited));
    assert!(waited.stdout.is_empty());
    let out = job(&env, &["output", &agent.target(), &id]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr_of(&out));
    assert!(
        out.stdout == out_data,
        "stdout differs ({} bytes)",
        out.stdout.len()
    );
    assert!(
        out.stderr == err_data,
        "stderr differs ({} bytes)",
        out.stderr.len()
    );
    let jobs = listed(&env, &agent.target());
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["status"], "exited");
    assert_eq!(jobs[0]["exit_code"], 7);
    assert_eq!(jobs[0]["stdout_bytes"], 5 << 20);
    assert_eq!(jobs[0]["stderr_bytes"], 1 << 20);
    assert_eq!(jobs[0]["command"], command);
    agent.expect_log("job started");
    let ended = agent.expect_log("job ended");
    assert!(ended.contains(&id) && ended.contains("exit 7"), "{ended}");
}

#[test]
fn a_job_finishes_when_ctl_is_killed_right_after_detaching() {
    let (env, agent) = Env::with_agent();
    let marker = env.root.path().join("done");
    let command = format!("sleep 1; echo finished > '{}'; echo out", marker.display());
    let mut ctl = env
        .ctl()
        .args(["exec", "--detach", &agent.target(), &command])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed as soon as it has said the id: nothing of ctl is left.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(ctl.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = ctl.kill();
    let _ = ctl.wait();
    let id = line.trim().to_owned();
    assert!(
        wait_until(DEADLINE, || marker.exists()),
        "the job ran to its end"
    );
    assert_eq!(
        output_of(&env, &agent.target(), &id),
        (Some(0), "out\n".into())
    );
}

/// The agent stopped with `signal` while a job writes, then started again
/// on the same directory: the job ran on, its output and status complete.
fn job_survives_agent(signal: &str) {
    let env = Env::new();
    let mut agent = env.agent();
    // It writes for 3 s, then ends only once the test has seen it running
    // under the new agent (at most 20 s later).
    let go = env.root.path().join("go");
    let command = format!(
        "for i in $(seq 1 30); do echo line $i; echo err $i >&2; sleep 0.1; done; {}; exit 4",
        sh_wait_for(&go)
    );
    let id = detach(&env, &agent.target(), &command);
    agent.signal(signal);
    assert!(agent.wait_exit().is_some(), "agent stopped");
    let again = env.agent();
    assert_eq!(
        state_of(&env, &again.target(), &id).as_deref(),
        Some("running")
    );
    std::fs::write(&go, "").unwrap();
    let waited = job(&env, &["wait", &again.target(), &id]);
    assert_eq!(waited.status.code(), Some(4), "{}", stderr_of(&waited));
    let out = job(&env, &["output", &again.target(), &id]);
    let expected: String = (1..=30).map(|i| format!("line {i}\n")).collect();
    let expected_err: String = (1..=30).map(|i| format!("err {i}\n")).collect();
    assert_eq!(stdout_of(&out), expected);
    assert_eq!(stderr_of(&out), expected_err);
    again.expect_log("job ended");
}

#[test]
fn a_job_survives_the_agent_stopping_with_sigterm_and_starting_again() {
    job_survives_agent("TERM");
}

#[test]
fn a_job_survives_the_agent_killed_with_sigkill_and_starting_again() {
    job_survives_agent("KILL");
}

#[test]
fn output_follow_from_the_middle_of_a_job_sees_the_rest_live() {
    let (env, agent) = Env::with_agent();
    let go = env.root.path().join("go");
    let command = format!(
        "echo first; {}; echo second >&2; echo third; exit 5",
        sh_wait_for(&go)
    );
    let id = detach(&env, &agent.target(), &command);
    let mut follow = spawn_job(&env, &["output", "--follow", &agent.target(), &id]);
    let mut stdout = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "first\n", "what the job wrote before");
    assert_eq!(follow.try_wait().unwrap(), None, "still following");
    std::fs::write(&go, "").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!((rest.as_str(), err.as_str()), ("third\n", "second\n"));
    assert_eq!(follow.wait().unwrap().code(), Some(5));
}

/// Waits until `agent` (from [`streams_logged`]) has opened `n` job
/// streams: the requests are being served.
#[track_caller]
fn wait_for_streams(agent: &Agent, n: usize) {
    assert!(
        wait_until(DEADLINE, || agent
            .log()
            .matches("job stream opened")
            .count()
            >= n),
        "{n} job streams opened:\n{}",
        agent.log()
    );
}

/// An agent on `listen` that logs each job stream it opens (a debug line).
fn streams_logged(env: &Env, listen: &str) -> Agent {
    let mut cmd = agent_run_command(&env.agent_dir);
    cmd.args(["--listen", listen])
        .env("RUST_LOG", "info,rexec_agent=debug");
    let mut agent = Agent::spawn(cmd);
    agent.wait_listening();
    agent
}

/// `ctl job wait` and `ctl job output --follow` running while the agent is
/// stopped with `signal` and started again on the same address: each tells
/// once why it asks again (`why`), then ends with the job's status, the
/// follower having printed each byte once.
fn wait_and_follow_ride_over(signal: &str, why: &str) {
    let env = Env::new();
    let mut agent = streams_logged(&env, "127.0.0.1:0");
    env.trust(&agent);
    let target = agent.target();
    let go = env.root.path().join("go");
    let command = format!(
        "echo first; echo early >&2; for i in $(seq 600); do [ -e '{}' ] && break; sleep 0.1; done; echo second; echo late >&2; exit 6",
        go.display()
    );
    let id = detach(&env, &target, &command);
    let mut follow = spawn_job(&env, &["output", "--follow", &target, &id]);
    let wait = spawn_job(&env, &["wait", &target, &id]);
    let mut stdout = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "first\n");
    wait_for_streams(&agent, 2);
    agent.signal(signal);
    assert!(agent.wait_exit().is_some(), "agent stopped");
    // Back on the same address a moment later, as after an upgrade.
    std::thread::sleep(Duration::from_millis(500));
    let _again = Agent::start(&env.agent_dir, &target, &[]);
    std::fs::write(&go, "").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(follow.wait().unwrap().code(), Some(6), "{err}");
    assert_eq!(rest, "second\n", "each byte once: {err}");
    let job_err: Vec<&str> = err.lines().filter(|l| !l.starts_with("ctl: ")).collect();
    assert_eq!(job_err, ["early", "late"], "{err}");
    let waited = wait.wait_with_output().unwrap();
    assert_eq!(waited.status.code(), Some(6), "{}", stderr_of(&waited));
    assert!(waited.stdout.is_empty());
    for text in [err.as_str(), &stderr_of(&waited)] {
        let notes: Vec<&str> = text.lines().filter(|l| l.starts_with("ctl: ")).collect();
        assert_eq!(notes.len(), 1, "{text}");
        assert!(
            notes[0].starts_with(&format!("ctl: 127.0.0.1: {why}"))
                && notes[0].ends_with("; the job goes on there, asking again for up to 10m"),
            "{text}"
        );
    }
}

#[test]
fn wait_and_follow_ride_over_an_agent_restart_and_pass_each_byte_once() {
    wait_and_follow_ride_over("TERM", "the agent is stopping");
}

#[test]
fn wait_and_follow_ride_over_an_agent_killed_with_sigkill_and_started_again() {
    wait_and_follow_ride_over("KILL", "connection lost: ");
}

#[test]
fn wait_gives_up_once_the_agent_has_been_away_for_reconnect_for() {
    let env = Env::new();
    let mut agent = streams_logged(&env, "127.0.0.1:0");
    env.trust(&agent);
    let target = agent.target();
    let id = detach(&env, &target, "sleep 60");
    let spawn = |extra: &str| {
        env.ctl()
            .args(["job", "wait", "--reconnect-for", extra, &target, &id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let at_once = spawn("0");
    let soon = spawn("1s");
    wait_for_streams(&agent, 2);
    agent.signal("TERM");
    assert!(agent.wait_exit().is_some(), "agent stopped");
    let at_once = at_once.wait_with_output().unwrap();
    assert_eq!(at_once.status.code(), Some(255));
    assert_eq!(
        stderr_of(&at_once),
        format!(
            "ctl: 127.0.0.1: agent error (shutting-down): the agent is stopping; the job goes on (ask again once it is back)\n"
        )
    );
    let soon = soon.wait_with_output().unwrap();
    assert_eq!(soon.status.code(), Some(255));
    let lines: Vec<String> = stderr_of(&soon).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0],
        "ctl: 127.0.0.1: the agent is stopping; the job goes on there, asking again for up to 1s"
    );
    assert!(
        lines[1].starts_with("ctl: 127.0.0.1: cannot connect: "),
        "the last error: {lines:?}"
    );
    // A wait that finds no agent at the start fails at once, as for a
    // host that is down.
    let down = job(&env, &["wait", &target, &id]);
    assert_eq!(down.status.code(), Some(255));
    assert!(
        stderr_of(&down).starts_with("ctl: 127.0.0.1: cannot connect: ")
            && stderr_of(&down).lines().count() == 1,
        "{}",
        stderr_of(&down)
    );
    // The job itself is still there for the next agent.
    let again = Agent::start(&env.agent_dir, &target, &[]);
    assert_eq!(
        state_of(&env, &again.target(), &id).as_deref(),
        Some("running")
    );
    let killed = job(&env, &["kill", &target, &id]);
    assert_eq!(killed.status.code(), Some(0), "{}", stderr_of(&killed));
}

/// The processes whose pids the command wrote to `file`, one per line.
fn pids_in(file: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether `pid` runs (a zombie does not).
fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// A job whose runner is killed is lost, but its command may run on:
/// `ctl job list` says so, and `ctl job kill` still ends the whole group.
/// Until then the record stays, the one handle on that command: `forget`
/// is refused, and the retention (1 s here, the job older than that when
/// lost) does not remove it.
#[test]
fn kill_ends_the_command_of_a_job_whose_runner_was_killed() {
    let (env, agent) = Env::with_agent_flags(&["--job-retention", "1s"]);
    let pids = env.root.path().join("pids");
    let command = format!(
        "sleep 300 & echo $! >> '{p}'; echo $$ >> '{p}'; wait",
        p = pids.display()
    );
    let id = detach(&env, &agent.target(), &command);
    assert!(wait_until(DEADLINE, || pids_in(&pids).len() == 2));
    // Older than the retention when its runner goes.
    std::thread::sleep(Duration::from_millis(1500));
    let running = pids_in(&pids);
    let shell = running[1];
    let stat = std::fs::read_to_string(format!("/proc/{shell}/stat")).unwrap();
    let runner: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split(' ')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    send_signal(runner as u32, "KILL");
    assert!(wait_until(DEADLINE, || state_of(
        &env,
        &agent.target(),
        &id
    )
    .as_deref()
        == Some("lost")));
    assert!(
        running.iter().all(|p| runs(*p)),
        "the command outlives its runner"
    );
    let note = |env: &Env| {
        listed(env, &agent.target())
            .into_iter()
            .find(|j| j["id"] == id)
            .map(|j| j.to_string())
            .unwrap_or_default()
    };
    assert!(
        note(&env).contains("its command still runs"),
        "{}",
        note(&env)
    );
    let forget = job(&env, &["forget", &agent.target(), &id]);
    assert_failed_saying(&forget, 255, "was lost but its command still runs");
    // Three of the agent's looks for jobs past their retention.
    std::thread::sleep(Duration::from_secs(3));
    assert!(note(&env).contains("still runs"), "{}", note(&env));
    let _ = job(&env, &["kill", &agent.target(), &id]);
    assert!(
        wait_until(DEADLINE, || running.iter().all(|p| !runs(*p))),
        "every process of the group is gone"
    );
    assert!(!note(&env).contains("still runs"), "{}", note(&env));
    agent.expect_log("job kill");
}

/// A detached job sees the name ctl reached its agent by, as `ctl exec`
/// gives it.
#[test]
fn a_detached_job_gets_its_target_name() {
    let (env, agent) = Env::with_agent();
    let id = detach(&env, &agent.target(), "echo \"[$REXEC_TARGET]\"");
    let waited = job(&env, &["wait", &agent.target(), &id]);
    assert_eq!(waited.status.code(), Some(0), "{}", stderr_of(&waited));
    let (code, out) = output_of(&env, &agent.target(), &id);
    assert_eq!(code, Some(0));
    let plain = env.exec(&agent, &["echo \"[$REXEC_TARGET]\""]);
    assert_eq!(out, stdout_of(&plain));
    assert_ne!(out, "[]\n");
}

#[test]
fn waiting_for_a_job_that_ran_out_of_time_exits_124_and_says_so() {
    let (env, agent) = Env::with_agent();
    let out = env.ctl_run(&[
        "exec",
        "--detach",
        "--timeout",
        "3s",
        &agent.target(),
        "echo started; sleep 30",
    ]);
    let id = job_id(&out, 0);
    for (what, args) in [
        ("wait", vec!["wait", &agent.target(), &id]),
        ("output", vec!["output", &agent.target(), &id]),
    ] {
        let out = job(&env, &args);
        assert_eq!(out.status.code(), Some(124), "{what}: {}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("command timed out; its process group was killed"),
            "{what}: {}",
            stderr_of(&out)
        );
    }
    let (_, output) = output_of(&env, &agent.target(), &id);
    assert_eq!(output, "started\n");
}

#[test]
fn kill_ends_the_jobs_whole_process_group_and_forget_removes_it() {
    let (env, agent) = Env::with_agent();
    let pids = env.root.path().join("pids");
    let command = format!(
        "sleep 300 & echo $! >> '{p}'; sh -c 'sleep 300' & echo $! >> '{p}'; echo $$ >> '{p}'; wait",
        p = pids.display()
    );
    let id = detach(&env, &agent.target(), &command);
    assert!(wait_until(DEADLINE, || pids_in(&pids).len() == 3));
    let running = pids_in(&pids);
    assert!(running.iter().all(|p| runs(*p)));
    let forget_early = job(&env, &["forget", &agent.target(), &id]);
    assert_failed_saying(&forget_early, 255, "still running");
    let killed = job(&env, &["kill", &agent.target(), &id]);
    assert_eq!(killed.status.code(), Some(0), "{}", stderr_of(&killed));
    assert!(
        wait_until(DEADLINE, || running.iter().all(|p| !runs(*p))),
        "every process of the group is gone"
    );
    assert_eq!(
        state_of(&env, &agent.target(), &id).as_deref(),
        Some("killed")
    );
    let waited = job(&env, &["wait", &agent.target(), &id]);
    assert_eq!(waited.status.code(), Some(128 + 15));
    agent.expect_log("job kill");
    let forgot = job(&env, &["forget", &agent.target(), &id]);
    assert_eq!(forgot.status.code(), Some(0), "{}", stderr_of(&forgot));
    agent.expect_log("job forget");
    assert!(listed(&env, &agent.target()).is_empty());
    assert!(!env.agent_dir.join("jobs").join(&id).exists());
}

#[test]
fn past_the_output_cap_the_oldest_bytes_are_dropped_and_counted() {
    let (env, agent) = Env::with_agent_flags(&["--max-job-output", "80000"]);
    let data = random_bytes(1_000_000, 0x1234_5678_9abc_def1);
    let file = env.root.path().join("data.bin");
    std::fs::write(&file, &data).unwrap();
    let id = detach(&env, &agent.target(), &format!("cat '{}'", file.display()));
    assert_eq!(
        job(&env, &["wait", &agent.target(), &id]).status.code(),
        Some(0)
    );
    let out = job(&env, &["output", &agent.target(), &id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let kept = out.stdout.len();
    assert!(kept <= 80_000 && kept > 70_000, "kept {kept}");
    let dropped = data.len() - kept;
    assert!(out.stdout == data[dropped..], "the newest bytes are kept");
    assert!(
        stderr_of(&out).contains(&format!(
            "the oldest {dropped} bytes of the job's stdout were dropped"
        )),
        "{}",
        stderr_of(&out)
    );
    let jobs = listed(&env, &agent.target());
    assert_eq!(
        (
            jobs[0]["stdout_bytes"].as_u64(),
            jobs[0]["stdout_dropped"].as_u64()
        ),
        (Some(1_000_000), Some(dropped as u64))
    );
}

#[test]
fn retention_removes_ended_jobs() {
    let (env, agent) = Env::with_agent_flags(&["--job-retention", "1s"]);
    let id = detach(&env, &agent.target(), "echo soon gone");
    assert!(
        wait_until(DEADLINE, || listed(&env, &agent.target()).is_empty()),
        "the job is removed"
    );
    agent.expect_log("job removed");
    let out = job(&env, &["output", &agent.target(), &id]);
    assert_failed_saying(&out, 255, "no such job");
}

#[test]
fn another_client_gets_no_such_job_and_an_admin_sees_it() {
    let env = Env::new();
    env.write_agent_config("[jobs]\nadmins = [\"ops\"]\n");
    let agent = env.agent();
    let id = detach(&env, &agent.target(), "echo mine");
    assert_eq!(
        job(&env, &["wait", &agent.target(), &id]).status.code(),
        Some(0)
    );
    let bob = env.other_client(Some("bob"));
    let as_bob = |args: &[&str]| job_as(&env, &bob, args);
    let list = as_bob(&["list", "--json", &agent.target()]);
    assert_eq!(
        (list.status.code(), stdout_of(&list)),
        (Some(0), String::new())
    );
    let unknown = "0123456789abcdef0123456789abcdef";
    for action in ["output", "wait", "kill", "forget"] {
        let theirs = as_bob(&[action, &agent.target(), &id]);
        let none = as_bob(&[action, &agent.target(), unknown]);
        assert_failed_saying(&theirs, 255, &format!("no such job: {id}"));
        assert_failed_saying(&none, 255, &format!("no such job: {unknown}"));
    }
    // A second client of this env's own, authorized as "ops".
    let ops = second_client(&env, "ops");
    let out = job_as(&env, &ops, &["output", &agent.target(), &id]);
    assert_eq!(
        (out.status.code(), stdout_of(&out)),
        (Some(0), "mine\n".into())
    );
}

/// A second client of `env`'s own, authorized as `name` and knowing the
/// same hosts: its config directory.
fn second_client(env: &Env, name: &str) -> std::path::PathBuf {
    let dir = env.root.path().join(name);
    let keygen = env
        .ctl()
        .env("REXEC_CONFIG_DIR", &dir)
        .arg("keygen")
        .output()
        .unwrap();
    env.authorize(stdout_of(&keygen).trim(), name);
    std::fs::copy(env.ctl_dir.join("known_hosts"), dir.join("known_hosts")).unwrap();
    dir
}

/// `ctl job ARGS…` as the client whose config directory is `dir`.
fn job_as(env: &Env, dir: &std::path::Path, args: &[&str]) -> Output {
    env.ctl()
        .env("REXEC_CONFIG_DIR", dir)
        .arg("job")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_corrupted_job_record_is_reported_and_the_agent_serves_on() {
    let (env, agent) = Env::with_agent();
    let damaged = detach(&env, &agent.target(), "echo one");
    let hidden = detach(&env, &agent.target(), "echo two");
    for id in [&damaged, &hidden] {
        assert_eq!(
            job(&env, &["wait", &agent.target(), id]).status.code(),
            Some(0)
        );
    }
    let jobs_dir = env.agent_dir.join("jobs");
    std::fs::write(
        jobs_dir.join(&damaged).join("status.json"),
        b"{\"runner_pid\": [",
    )
    .unwrap();
    std::fs::write(
        jobs_dir.join(&hidden).join("job.json"),
        b"\xff\x00 not json",
    )
    .unwrap();
    let jobs = listed(&env, &agent.target());
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        (jobs[0]["id"].as_str(), jobs[0]["status"].as_str()),
        (Some(damaged.as_str()), Some("damaged"))
    );
    assert!(
        jobs[0]["note"]
            .as_str()
            .unwrap()
            .contains("status.json is not a valid record")
    );
    let waited = job(&env, &["wait", &agent.target(), &damaged]);
    assert_failed_saying(&waited, 255, "status.json is not a valid record");
    agent.expect_log("job record damaged");
    // Forgetting it works, and says so with 0 (scripts would retry a 255).
    let forgot = job(&env, &["forget", &agent.target(), &damaged]);
    assert_eq!(forgot.status.code(), Some(0), "{}", stderr_of(&forgot));
    assert!(!jobs_dir.join(&damaged).exists());
    let fresh = detach(&env, &agent.target(), "echo three");
    let waited = job(&env, &["wait", &agent.target(), &fresh]);
    assert_eq!(waited.status.code(), Some(0), "{}", stderr_of(&waited));
    let out = job(&env, &["output", &agent.target(), &fresh]);
    assert_eq!(stdout_of(&out), "three\n");
    assert_eq!(env.exec(&agent, &["echo", "still"]).stdout, b"still\n");
}

/// `up` agents on 127.0.0.2 … with a state directory each, then `down`
/// hosts after them where nothing listens (port 9, discard, takes no
/// connection), all in the inventory's `@lab`.
fn job_agents(env: &Env, up: usize, down: usize) -> Vec<Agent> {
    let last = 1 + up + down;
    let mut agents = Vec::new();
    let mut inventory = format!("[groups]\nlab = \"127.0.0.[2-{last}]\"\n");
    for i in 2..=last {
        let host = format!("127.0.0.{i}");
        if i > 1 + up {
            inventory.push_str(&format!("[hosts.\"{host}\"]\nport = 9\n"));
            continue;
        }
        let state = env.root.path().join(format!("state-{host}"));
        let agent = Agent::start(
            &env.agent_dir,
            &format!("{host}:0"),
            &["--state-dir", state.to_str().unwrap()],
        );
        env.trust(&agent);
        inventory.push_str(&format!(
            "[hosts.\"{host}\"]\nport = {}\n",
            agent.addr.port()
        ));
        agents.push(agent);
    }
    std::fs::write(env.ctl_dir.join("hosts.toml"), inventory).unwrap();
    agents
}

/// `--detach` used to take `--pick` and `--max-failures` and ignore
/// them: `--pick 1` started the job on every host, and a rolling start
/// went on after its failures.
#[test]
fn detach_starts_on_the_picked_hosts_and_stops_at_max_failures() {
    let env = Env::new();
    let _agents = job_agents(&env, 4, 1);
    let jobs = |list: &str| {
        let out = job(&env, &["list", "--json", list]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        json_lines(&out).len()
    };
    let out = env.ctl_run(&[
        "exec",
        "--detach",
        "--pick",
        "1",
        "127.0.0.[2-5]",
        "sleep 1",
    ]);
    let id = job_id(&out, 0);
    let listed = job(&env, &["list", "--json", "127.0.0.[2-5]"]);
    let records = json_lines(&listed);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["id"], id.as_str());

    // One at a time, the host that is down first: nothing starts after it.
    let before = jobs("127.0.0.[2-5]");
    let out = env.ctl_run(&[
        "exec",
        "--detach",
        "-f",
        "1",
        "--max-failures",
        "1",
        "127.0.0.6,127.0.0.[2-5]",
        "sleep 1",
    ]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "", "no host runs the job, so no id");
    assert!(
        stderr_of(&out).ends_with(
            "ctl: 5 of 5 hosts failed: connect: 127.0.0.6; not started: 127.0.0.[2-5]\n"
        ),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(jobs("127.0.0.[2-5]"), before);
}

/// `ctl job` took `--max-failures` and ignored it, and `--detach` took the
/// output modes `-L`, `-B`, `--diff` and `-N` and ignored them: both are
/// bad usage now, one line, before anything runs.
#[test]
fn flags_a_job_command_cannot_honour_are_refused() {
    let env = Env::new();
    let id = "0".repeat(32);
    for args in [
        vec![
            "job",
            "kill",
            "-f",
            "1",
            "--max-failures",
            "1",
            "127.0.0.[2-3]",
            &id,
        ],
        vec!["job", "wait", "--max-failures", "1", "127.0.0.2", &id],
        vec!["job", "list", "--max-failures", "1", "127.0.0.2"],
        vec!["exec", "--detach", "-L", "127.0.0.[2-3]", "true"],
        vec!["exec", "--detach", "-B", "127.0.0.[2-3]", "true"],
        vec!["exec", "--detach", "--diff", "127.0.0.[2-3]", "true"],
        vec!["exec", "--detach", "-N", "127.0.0.[2-3]", "true"],
        // A job's --json record carries no output to cap.
        vec![
            "exec",
            "--detach",
            "--json",
            "--max-output",
            "4K",
            "127.0.0.[2-3]",
            "true",
        ],
    ] {
        let out = env.ctl_run(&args);
        assert_eq!(
            out.status.code(),
            Some(255),
            "{args:?}: {}",
            stderr_of(&out)
        );
        let stderr = stderr_of(&out);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.ends_with("(see ctl --help)\n"), "{args:?}: {stderr}");
        assert_eq!(stdout_of(&out), "");
    }
}

#[test]
fn detach_to_ten_hosts_with_one_down_lists_and_waits_across_them() {
    let env = Env::new();
    let _agents = job_agents(&env, 10, 1);

    let out = env.ctl_run(&["exec", "--detach", "@lab", "sleep 0.5; echo done; exit 3"]);
    let id = job_id(&out, 255);
    assert_failed_saying(&out, 255, "1 of 11 hosts failed: connect: 127.0.0.12");

    let list = job(&env, &["list", "--json", "@lab"]);
    assert_eq!(list.status.code(), Some(255));
    let records = json_lines(&list);
    let with_id = records.iter().filter(|r| r["id"] == id.as_str()).count();
    assert_eq!(with_id, 10, "{records:?}");
    assert!(
        records
            .iter()
            .any(|r| r["host"] == "127.0.0.12" && r["status"] == "error")
    );

    let waited = job(&env, &["wait", "@lab", &id]);
    assert!(
        stderr_of(&waited).contains("1 of 11 hosts failed")
            || stderr_of(&waited).contains("11 of 11 hosts failed"),
        "{}",
        stderr_of(&waited)
    );
    for needle in ["exit 3: 127.0.0.[2-11]", "connect: 127.0.0.12"] {
        assert_failed_saying(&waited, 255, needle);
    }
    let output = job(&env, &["output", "-x", "127.0.0.12", "@lab", &id]);
    assert_eq!(output.status.code(), Some(3));
    let lines = stdout_of(&output);
    assert_eq!(
        lines.lines().filter(|l| l.ends_with(": done")).count(),
        10,
        "{lines}"
    );
}

/// A command that runs until the file `go` exists (at most a minute),
/// then says `ended`.
fn until_file(go: &std::path::Path) -> String {
    format!(
        "for i in $(seq 600); do [ -e '{}' ] && break; sleep 0.1; done; echo ended",
        go.display()
    )
}

/// One client may hold half of `max_jobs` (4 here): its third is refused,
/// and another client still starts one.
#[test]
fn a_job_past_a_clients_share_of_max_jobs_is_refused_as_busy_and_one_after_an_end_is_accepted() {
    let (env, agent) = Env::with_agent_flags(&["--max-jobs", "4"]);
    let target = agent.target();
    let go = [env.root.path().join("go1"), env.root.path().join("go2")];
    let first = detach(&env, &target, &until_file(&go[0]));
    let second = detach(&env, &target, &until_file(&go[1]));
    let third = env.ctl_run(&["exec", "--detach", &target, "echo third"]);
    assert_eq!(third.status.code(), Some(255), "{}", stderr_of(&third));
    assert_eq!(stdout_of(&third), "", "no job id for a refused job");
    let said = stderr_of(&third);
    assert_eq!(said.lines().count(), 1, "one line: {said:?}");
    assert!(
        said.contains("busy") && said.contains("2 jobs") && said.contains("half of max_jobs"),
        "{said}"
    );
    let bob = env.other_client(Some("bob"));
    let theirs = env
        .ctl()
        .env("REXEC_CONFIG_DIR", &bob)
        .args(["exec", "--detach", &target, "echo bob"])
        .output()
        .unwrap();
    assert_eq!(theirs.status.code(), Some(0), "{}", stderr_of(&theirs));
    // Nothing of the refused job is kept, and plain execs are not jobs.
    let ids: Vec<String> = listed(&env, &target)
        .iter()
        .map(|j| j["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&first) && ids.contains(&second), "{ids:?}");
    assert_eq!(env.exec(&agent, &["echo", "served"]).stdout, b"served\n");
    // Once one ends (`job wait` has returned), the next one is accepted
    // at once.
    std::fs::write(&go[0], "").unwrap();
    let waited = job(&env, &["wait", &target, &first]);
    assert_eq!(waited.status.code(), Some(0), "{}", stderr_of(&waited));
    let fourth = detach(&env, &target, "echo fourth");
    let waited = job(&env, &["wait", &target, &fourth]);
    assert_eq!(waited.status.code(), Some(0), "{}", stderr_of(&waited));
    assert_eq!(
        output_of(&env, &target, &fourth),
        (Some(0), "fourth\n".into())
    );
    std::fs::write(&go[1], "").unwrap();
    assert_eq!(
        job(&env, &["wait", &target, &second]).status.code(),
        Some(0)
    );
}

/// A small file system of our own: unmounted when dropped, lazily if
/// something still holds it, so that no test leaves a mount behind.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then(|| SmallDisk(at.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

#[test]
fn a_full_disk_loses_output_from_a_byte_on_and_the_job_its_status_and_the_agent_go_on() {
    require_root!("mounting a tmpfs needs root");
    require_tool!("mount");
    let env = Env::new();
    let state = env.root.path().join("state");
    // Declared before the agent, so unmounted after it has stopped.
    let Some(disk) = SmallDisk::mount(&state, "1m") else {
        skipped(test_name!(), "cannot mount a tmpfs here");
        return;
    };
    // A bound on the jobs kept far above what the disk holds (by default a
    // tenth of it), so that the disk is what fills, not the bound.
    let agent = env.agent_with(&[
        "--state-dir",
        state.to_str().unwrap(),
        "--max-kept-job-bytes",
        "1000000000",
    ]);
    let target = agent.target();
    // Three times what the disk holds, then a line on stderr, past the
    // point where the disk is full.
    let data = random_bytes(3_000_000, 0x0dd5_eed5_00f0_f00d);
    let file = env.root.path().join("data.bin");
    std::fs::write(&file, &data).unwrap();
    let id = detach(
        &env,
        &target,
        &format!("cat '{}'; echo after >&2; exit 9", file.display()),
    );
    let waited = job(&env, &["wait", &target, &id]);
    assert_eq!(waited.status.code(), Some(9), "{}", stderr_of(&waited));

    let jobs = listed(&env, &target);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        (jobs[0]["status"].as_str(), jobs[0]["exit_code"].as_i64()),
        (Some("exited"), Some(9))
    );
    // Every byte the command wrote is counted, kept or not.
    assert_eq!(jobs[0]["stdout_bytes"].as_u64(), Some(3_000_000));
    assert_eq!(jobs[0]["stderr_bytes"].as_u64(), Some(6));
    let note = jobs[0]["note"].as_str().unwrap_or("").to_owned();
    let lost_at: usize = note
        .split("stdout not recorded from byte ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the note says where stdout was lost: {note:?}"));
    assert!(lost_at > 0 && lost_at < 1 << 20, "lost at {lost_at}");
    assert!(
        note.contains("stderr not recorded from byte 0 on"),
        "{note}"
    );

    // What was kept is the stream up to that byte, exactly; the status is
    // the job's.
    let out = job(&env, &["output", &target, &id]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr_of(&out));
    assert!(
        out.stdout == data[..lost_at],
        "kept {} bytes, the first {lost_at} expected",
        out.stdout.len()
    );
    assert!(
        stderr_of(&out).contains(&format!("stdout not recorded from byte {lost_at} on")),
        "{}",
        stderr_of(&out)
    );
    let ended = agent.expect_log("job ended");
    assert!(ended.contains(&id) && ended.contains("exit 9"), "{ended}");

    // The agent serves on: a plain exec, and another job refused with a
    // plain reason while the disk is full, then accepted once room is
    // made.
    assert_eq!(env.exec(&agent, &["echo", "served"]).stdout, b"served\n");
    let refused = env.ctl_run(&["exec", "--detach", &target, "echo no room"]);
    assert_eq!(refused.status.code(), Some(255), "{}", stderr_of(&refused));
    assert_eq!(
        stderr_of(&refused).lines().count(),
        1,
        "{}",
        stderr_of(&refused)
    );
    assert!(
        stderr_of(&refused).contains("the disk is full"),
        "{}",
        stderr_of(&refused)
    );
    let forgot = job(&env, &["forget", &target, &id]);
    assert_eq!(forgot.status.code(), Some(0), "{}", stderr_of(&forgot));
    let again = detach(&env, &target, "echo room again");
    // Detaching returns once the job runs; its output is there once it ends.
    let waited = job(&env, &["wait", &target, &again]);
    assert_eq!(waited.status.code(), Some(0), "{}", stderr_of(&waited));
    assert_eq!(
        output_of(&env, &target, &again),
        (Some(0), "room again\n".into())
    );
    drop(agent);
    drop(disk);
}

#[test]
fn jobs_detached_through_the_broker_are_waited_for_and_read_back_through_it() {
    let nats = require_nats!();
    let env = Env::new();
    let states = [
        env.root.path().join("state-07"),
        env.root.path().join("state-08"),
    ];
    // Each agent serves the broker only (no TCP port), its jobs in a
    // state dir of its own.
    let _agents = ["labpc07", "labpc08"]
        .iter()
        .zip(&states)
        .map(|(name, state)| {
            env.broker_agent(&nats, name, &["--state-dir", state.to_str().unwrap()])
        })
        .collect::<Vec<_>>();
    let ctl = |args: &[&str]| env.broker_run(&nats, args);

    // One agent: as in direct mode.
    let started = ctl(&[
        "exec",
        "--detach",
        "labpc07",
        "echo out; echo err >&2; exit 3",
    ]);
    let id = job_id(&started, 0);
    let waited = ctl(&["job", "wait", "labpc07", &id]);
    assert_eq!(waited.status.code(), Some(3), "{}", stderr_of(&waited));
    let out = ctl(&["job", "output", "labpc07", &id]);
    assert_eq!(
        (out.status.code(), stdout_of(&out), stderr_of(&out)),
        (Some(3), "out\n".into(), "err\n".into())
    );
    let list = ctl(&["job", "list", "--json", "labpc07"]);
    let jobs = json_lines(&list);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        (jobs[0]["id"].as_str(), jobs[0]["exit_code"].as_i64()),
        (Some(id.as_str()), Some(3))
    );
    assert!(states[0].join(&id).is_dir(), "kept by the agent labpc07");

    // Several, one of them not on the broker: the id is printed for the
    // two that run it, the third is named offline, and wait goes across.
    let started = ctl(&["exec", "--detach", "labpc[07-09]", "echo $((6 * 7))"]);
    let id = job_id(&started, 255);
    assert_failed_saying(&started, 255, "labpc09: not connected to the broker");
    let waited = ctl(&["job", "wait", "labpc[07-08]", &id]);
    assert_eq!(waited.status.code(), Some(0), "{}", stderr_of(&waited));
    let out = ctl(&["job", "output", "labpc[07-08]", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let mut lines: Vec<String> = stdout_of(&out).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, ["labpc07: 42", "labpc08: 42"]);
    assert!(states.iter().all(|state| state.join(&id).is_dir()));
}

#[test]
fn a_wait_through_the_broker_rides_over_the_agent_restarting() {
    let nats = require_nats!();
    let env = Env::new();
    let state = env.root.path().join("state");
    let go = env.root.path().join("go");
    let start = || {
        let mut cmd = agent_run_command(&env.agent_dir);
        cmd.args(["--broker", &nats.url, "--name", "labpc07", "--state-dir"])
            .arg(&state)
            .env("RUST_LOG", "info,rexec_agent=debug");
        let agent = Agent::spawn(cmd);
        wait_connected(&agent, "labpc07");
        agent
    };
    let mut agent = start();
    let command = format!("{}; exit 5", until_file(&go));
    let id = job_id(
        &env.broker_run(&nats, &["exec", "--detach", "labpc07", &command]),
        0,
    );
    let wait = env
        .broker_ctl(&nats)
        .args(["job", "wait", "labpc07", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_streams(&agent, 1);
    agent.signal("TERM");
    assert!(agent.wait_exit().is_some(), "agent stopped");
    let _again = start();
    std::fs::write(&go, "").unwrap();
    let waited = wait.wait_with_output().unwrap();
    assert_eq!(waited.status.code(), Some(5), "{}", stderr_of(&waited));
    assert_eq!(
        stderr_of(&waited),
        "ctl: labpc07: the agent is stopping; the job goes on there, asking again for up to 10m\n"
    );
}

/// The ids of `target`'s jobs, as `ctl job list` gives them.
fn listed_ids(env: &Env, target: &str) -> Vec<String> {
    listed(env, target)
        .iter()
        .map(|j| j["id"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The bytes of the files in `dir`.
fn bytes_in(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The jobs kept hold at most `max_kept_job_bytes`: a new job first
/// removes the oldest ended ones past it, as journald does with its files,
/// and is refused as busy when running jobs alone hold more. Before, ended
/// jobs were kept for `job_retention` however many there were, so a client
/// could fill the state directory's file system.
#[test]
fn the_oldest_ended_jobs_make_room_under_max_kept_job_bytes() {
    let (env, agent) = Env::with_agent_flags(&["--max-kept-job-bytes", "1000000"]);
    let target = agent.target();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = detach(&env, &target, "head -c 400000 /dev/zero");
        let waited = job(&env, &["wait", &target, &id]);
        assert_eq!(waited.status.code(), Some(0), "{}", stderr_of(&waited));
        ids.push(id);
    }
    assert_eq!(
        listed_ids(&env, &target).len(),
        3,
        "1.2 MB kept until a start"
    );
    // The next start removes the oldest, and only it.
    let fourth = detach(&env, &target, "echo fourth");
    let kept = listed_ids(&env, &target);
    assert!(!kept.contains(&ids[0]), "{kept:?}");
    for id in [&ids[1], &ids[2], &fourth] {
        assert!(kept.contains(id), "{id} in {kept:?}");
    }
    agent.expect_log("job removed: the jobs kept held more than max_kept_job_bytes");
    assert_failed_saying(
        &job(&env, &["output", &target, &ids[0]]),
        255,
        "no such job",
    );

    // A running job that alone holds more: the next start is refused.
    let go = env.root.path().join("go");
    let command = format!("head -c 1200000 /dev/zero; {}", until_file(&go));
    let big = detach(&env, &target, &command);
    let dir = env.agent_dir.join("jobs").join(&big);
    assert!(
        wait_until(DEADLINE, || bytes_in(&dir) >= 1_200_000),
        "the running job's output is on disk"
    );
    let refused = env.ctl_run(&["exec", "--detach", &target, "echo refused"]);
    assert_eq!(refused.status.code(), Some(255), "{}", stderr_of(&refused));
    let said = stderr_of(&refused);
    assert!(
        said.contains("busy") && said.contains("max_kept_job_bytes"),
        "{said}"
    );
    let kept = listed_ids(&env, &target);
    assert!(kept.contains(&big), "a running job stays: {kept:?}");
    for id in [&ids[1], &ids[2], &fourth] {
        assert!(
            kept.contains(id),
            "a refused start removes nothing: {id} in {kept:?}"
        );
    }
    std::fs::write(&go, "").unwrap();
    let waited = job(&env, &["wait", &target, &big]);
    assert_eq!(waited.status.code(), Some(0), "{}", stderr_of(&waited));
}

/// Room under `max_kept_job_bytes` comes first from the client whose jobs
/// hold the most: one that starts and ends jobs removes its own results,
/// not another client's older ones. Before, the oldest ended job went
/// whoever owned it, so any client could remove every other's results.
#[test]
fn room_under_max_kept_job_bytes_is_made_from_the_client_holding_the_most() {
    let (env, agent) = Env::with_agent_flags(&["--max-kept-job-bytes", "1000000"]);
    let target = agent.target();
    let bob = env.other_client(Some("bob"));
    let started = env
        .ctl()
        .env("REXEC_CONFIG_DIR", &bob)
        .args(["exec", "--detach", &target, "head -c 300000 /dev/zero"])
        .output()
        .unwrap();
    let bobs = job_id(&started, 0);
    let waited = job_as(&env, &bob, &["wait", &target, &bobs]);
    assert_eq!(waited.status.code(), Some(0), "{}", stderr_of(&waited));
    let mut mine = Vec::new();
    for _ in 0..2 {
        let id = detach(&env, &target, "head -c 400000 /dev/zero");
        let waited = job(&env, &["wait", &target, &id]);
        assert_eq!(waited.status.code(), Some(0), "{}", stderr_of(&waited));
        mine.push(id);
    }
    // 1.1 MB kept; bob's job is the oldest, this client's hold the most.
    let third = detach(&env, &target, "echo third");
    let kept = listed_ids(&env, &target);
    assert!(!kept.contains(&mine[0]), "{kept:?}");
    assert!(kept.contains(&mine[1]) && kept.contains(&third), "{kept:?}");
    let out = job_as(&env, &bob, &["output", &target, &bobs]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(out.stdout.len(), 300_000, "bob's result is kept whole");
}

/// A job's command gets the signals an exec's command gets: the runner
/// outlives SIGINT, SIGHUP and SIGQUIT, but does not hand them on ignored,
/// so `kill -INT`, `timeout -s INT` and a daemon's SIGHUP reload work in a
/// job as they do under `ctl exec`.
#[test]
fn a_jobs_command_ignores_no_signal_an_execs_command_would_get() {
    let (env, agent) = Env::with_agent();
    let probe = "grep '^SigIgn:' /proc/self/status";
    let exec = env.exec(&agent, &[probe]);
    assert_eq!(exec.status.code(), Some(0), "{}", stderr_of(&exec));
    let id = detach(&env, &agent.target(), probe);
    let (code, job_says) = output_of_ended(&env, &agent.target(), &id);
    assert_eq!(code, Some(0));
    assert_eq!(job_says, stdout_of(&exec));
    // And what a user sees: an interrupt ends a shell of the job.
    let command = "sh -c 'kill -INT $$; echo survived'; echo status $?";
    let id = detach(&env, &agent.target(), command);
    let (_, said) = output_of_ended(&env, &agent.target(), &id);
    assert_eq!(said, "status 130\n");
}

/// `ctl job wait`, then `ctl job output`: the exit code and stdout of a
/// job that has ended.
fn output_of_ended(env: &Env, target: &str, id: &str) -> (Option<i32>, String) {
    let waited = job(env, &["wait", target, id]);
    assert!(waited.status.code().is_some(), "{}", stderr_of(&waited));
    output_of(env, target, id)
}

/// A follower that falls behind while the job writes past its cap: every
/// byte dropped before ctl read it is counted in a note, so what ctl
/// printed plus what it said was dropped is all the job wrote (before, a
/// drop during the stream joined two pieces of output without a word).
#[test]
fn a_follower_that_falls_behind_is_told_of_every_byte_dropped() {
    let (env, agent) = Env::with_agent_flags(&["--max-job-output", "80000"]);
    let data = random_bytes(4_000_000, 0x0bad_cafe_f00d_d00d);
    let file = env.root.path().join("data.bin");
    std::fs::write(&file, &data).unwrap();
    let id = detach(
        &env,
        &agent.target(),
        &format!("sleep 1; cat '{}'", file.display()),
    );
    let mut follower = spawn_job(&env, &["output", "--follow", &agent.target(), &id]);
    // Not read until the job has written it all: ctl blocks on its stdout,
    // the agent on the connection, and the job's oldest output goes.
    assert!(wait_until(DEADLINE, || {
        state_of(&env, &agent.target(), &id).as_deref() == Some("exited")
    }));
    let mut printed = Vec::new();
    std::io::Read::read_to_end(follower.stdout.as_mut().unwrap(), &mut printed).unwrap();
    let mut said = String::new();
    std::io::Read::read_to_string(follower.stderr.as_mut().unwrap(), &mut said).unwrap();
    assert_eq!(follower.wait().unwrap().code(), Some(0), "{said}");
    let noted: u64 = said
        .lines()
        .filter(|l| l.contains("bytes of the job's stdout were dropped"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|word| word.parse::<u64>().ok())
        })
        .sum();
    assert!(noted > 0, "{said}");
    assert_eq!(
        printed.len() as u64 + noted,
        data.len() as u64,
        "printed {} bytes; notes: {said}",
        printed.len()
    );
    assert!(printed.ends_with(&data[data.len() - 1000..]));
}

/// A job whose own record (job.json) cannot be read names no owner: its
/// owner no longer sees it, an admin does and can forget it, and one
/// nobody forgets goes once the retention has passed, so that it does
/// not keep its room on the disk for ever.
#[test]
fn a_job_whose_record_is_damaged_is_an_admins_to_forget_and_goes_in_time() {
    let env = Env::new();
    env.write_agent_config("[jobs]\nadmins = [\"ops\"]\n");
    let agent = env.agent_with(&["--job-retention", "5s"]);
    let ops = second_client(&env, "ops");
    let as_ops = |args: &[&str]| job_as(&env, &ops, args);
    let forgotten = detach(&env, &agent.target(), "echo one");
    let left = detach(&env, &agent.target(), "echo two");
    let jobs_dir = env.agent_dir.join("jobs");
    for id in [&forgotten, &left] {
        assert_eq!(
            job(&env, &["wait", &agent.target(), id]).status.code(),
            Some(0)
        );
        std::fs::write(jobs_dir.join(id).join("job.json"), b"{garbage").unwrap();
    }
    assert!(listed(&env, &agent.target()).is_empty());
    let list = as_ops(&["list", "--json", &agent.target()]);
    let records = json_lines(&list);
    assert_eq!(records.len(), 2, "{}", stdout_of(&list));
    assert!(
        records.iter().all(|r| r["status"] == "damaged"),
        "{records:?}"
    );
    let forgot = as_ops(&["forget", &agent.target(), &forgotten]);
    assert_eq!(forgot.status.code(), Some(0), "{}", stderr_of(&forgot));
    assert!(!jobs_dir.join(&forgotten).exists());
    // Its owner cannot forget what it cannot be told is theirs.
    let theirs = job(&env, &["forget", &agent.target(), &left]);
    assert_failed_saying(&theirs, 255, "no such job");
    assert!(
        wait_until(DEADLINE, || !jobs_dir.join(&left).exists()),
        "removed after the retention"
    );
    agent.expect_log("its record is damaged and it has not run");
}
