//! Detached jobs against real agents: `ctl exec --detach`, then `ctl job
//! …`, with ctl, the connection and the agent itself going away while
//! the job runs.

use std::process::{Output, Stdio};

use crate::util::*;

/// `ctl exec --detach TARGET COMMAND`: the job id it printed.
#[track_caller]
fn detach(env: &Env, target: &str, command: &str) -> String {
    let out = env.ctl_run(&["exec", "--detach", target, command]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let id = stdout_of(&out).trim().to_owned();
    assert_eq!(id.len(), 32, "one job id: {:?}", stdout_of(&out));
    id
}

fn job(env: &Env, args: &[&str]) -> Output {
    let mut all = vec!["job"];
    all.extend_from_slice(args);
    env.ctl_run(&all)
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
    let out = job(&env, &["output", &agent.target(), &id]);
    assert_eq!(
        (out.status.code(), stdout_of(&out)),
        (Some(0), "out\n".into())
    );
}

/// The agent stopped with `signal` while a job writes, then started again
/// on the same directory: the job ran on, its output and status complete.
fn job_survives_agent(signal: &str) {
    let env = Env::new();
    let mut agent = env.agent();
    let command = "for i in $(seq 1 30); do echo line $i; echo err $i >&2; sleep 0.1; done; exit 4";
    let id = detach(&env, &agent.target(), command);
    agent.signal(signal);
    assert!(agent.wait_exit().is_some(), "agent stopped");
    let again = env.agent();
    assert_eq!(
        state_of(&env, &again.target(), &id).as_deref(),
        Some("running")
    );
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
