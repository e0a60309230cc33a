//! Steps and checks several test files make the same way: a refusal
//! before anything ran, a ctl run read line by line while it runs, an
//! agent that reaped its children, a fleet started, taken down in part and
//! run on, commands that must be gone, files written for a test, and the
//! one-line rule for ctl's own failures (`ctl_line`, which ctl's own tests
//! include as well).

mod ctl_line;

pub use ctl_line::assert_one_ctl_line;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{
    Agent, DEADLINE, Env, Fleet, processes_with, stderr_of, stdout_of, wait_until, zombie_children,
};

/// Asserts that ctl refused before running anything (exit 255, nothing on
/// stdout) with `headline` on stderr, naming each fingerprint of `named`
/// (the fingerprint, then what it is to the reader); returns stderr.
#[track_caller]
pub fn assert_refused(out: &Output, headline: &str, named: &[(&str, &str)]) -> String {
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(out));
    assert_eq!(stdout_of(out), "");
    let err = stderr_of(out);
    assert!(err.contains(headline), "{err}");
    for (fingerprint, what) in named {
        assert!(err.contains(fingerprint), "names {what}: {err}");
    }
    err
}

/// Starts `ctl` (as `cmd` is set up) with `exec FLAGS... TARGET COMMAND`,
/// stdout and stderr piped.
pub fn spawn_piped_exec(mut cmd: Command, flags: &[&str], target: &str, command: &str) -> Child {
    cmd.arg("exec")
        .args(flags)
        .arg(target)
        .arg(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ctl")
}

/// Reads lines of ctl's `stdout` until one equals `line`.
#[track_caller]
pub fn read_until_line(stdout: &mut impl BufRead, line: &str) {
    read_until(stdout, line, |got| got == line);
}

/// Reads lines of ctl's `stdout` until one ends with `end` (a fan-out's
/// lines start with their host).
#[track_caller]
pub fn read_until_line_ending(stdout: &mut impl BufRead, end: &str) {
    read_until(stdout, end, |got| got.ends_with(end));
}

#[track_caller]
fn read_until(stdout: &mut impl BufRead, wanted: &str, found: impl Fn(&str) -> bool) {
    let mut got = String::new();
    // A command that prints forever without the line fails the test
    // instead of hanging it.
    for _ in 0..10_000 {
        got.clear();
        let n = stdout.read_line(&mut got).expect("read ctl stdout");
        assert!(n > 0, "stdout ended before {wanted:?}");
        if found(got.trim_end()) {
            return;
        }
    }
    panic!("no line {wanted:?}");
}

/// Asserts that `agent` soon has no zombie children: what it started, it
/// reaped.
#[track_caller]
pub fn assert_reaped_by(agent: &Agent) {
    assert!(
        wait_until(Duration::from_secs(3), || zombie_children(agent.child.id())
            .is_empty()),
        "unreaped: {:?}",
        zombie_children(agent.child.id())
    );
}

/// Sets `path`'s permission bits to `mode`.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Writes the file `dir/NAME` with `contents` and returns its path.
pub fn new_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// A new env and `n` agents in its inventory (see [`Env::fleet`]), as the
/// fan-out tests start.
pub fn env_with_fleet(n: usize) -> (Env, Fleet) {
    let env = Env::new();
    let fleet = env.fleet(n);
    (env, fleet)
}

/// Asserts that no process with `marker` in its command line is left
/// within the tests' deadline; `what` says what that means.
#[track_caller]
pub fn assert_gone_soon(marker: &str, what: &str) {
    assert!(
        wait_until(DEADLINE, || processes_with(marker).is_empty()),
        "{what}: {:?} left",
        processes_with(marker)
    );
}

/// Kills the fleet's last agent and reaps it: its port refuses
/// connections from now on.
pub fn take_down_last(fleet: &mut Fleet) {
    let down = fleet.agents.last_mut().expect("a fleet agent");
    down.child.kill().expect("kill the agent");
    down.child.wait().expect("reap the agent");
}

/// The lines of `text`, sorted: a fan-out's output in a fixed order.
pub fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// Runs `echo $REXEC_TARGET` on the hosts `list` names and asserts that
/// exactly `hosts` ran it, each printing its own name after its prefix.
#[track_caller]
pub fn assert_runs_on(env: &Env, list: &str, hosts: &[&str]) {
    let out = env.ctl_run(&["exec", list, "echo $REXEC_TARGET"]);
    assert_eq!(out.status.code(), Some(0), "{list}: {}", stderr_of(&out));
    let mut expected: Vec<String> = hosts.iter().map(|h| format!("{h}: {h}")).collect();
    expected.sort();
    assert_eq!(sorted_lines(&stdout_of(&out)), expected, "{list}");
}
