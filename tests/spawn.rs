//! How the agent starts a command without a terminal, as the process table
//! shows it: a process group of its own (the unit of every kill), inside
//! the agent's session, with no controlling terminal, including when the
//! agent was started from a shell on a terminal.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::*;

/// Prints the shell's own /proc stat line, then whether it can open a
/// controlling terminal.
const PROBE: &str =
    "cat /proc/$$/stat; if (exec 3</dev/tty) 2>/dev/null; then echo has-tty; else echo no-tty; fi";

/// A process's id, process group, session and controlling terminal, from
/// its /proc/PID/stat line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ids {
    pid: i32,
    group: i32,
    session: i32,
    tty: i32,
}

fn ids_in(stat: &str) -> Ids {
    let (head, rest) = stat.rsplit_once(')').expect("stat line");
    let pid = head.split_whitespace().next().unwrap().parse().unwrap();
    let fields: Vec<i32> = rest
        .split_whitespace()
        .skip(2)
        .take(3)
        .map(|f| f.parse().unwrap())
        .collect();
    Ids {
        pid,
        group: fields[0],
        session: fields[1],
        tty: fields[2],
    }
}

fn ids_of(pid: u32) -> Ids {
    ids_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap())
}

/// Runs [`PROBE`] through `agent` and checks what a command is given: a
/// process group of its own, inside `session`, no controlling terminal.
fn assert_own_group_in(session: i32, env: &Env, agent: &Agent) {
    let out = env.exec(agent, &[PROBE]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    let mut lines = text.lines();
    let ids = ids_in(lines.next().expect("stat line"));
    assert_eq!(ids.group, ids.pid, "its own process group: {ids:?}");
    assert_eq!(ids.session, session, "in the agent's session: {ids:?}");
    assert_eq!(ids.tty, 0, "no controlling terminal: {ids:?}");
    assert_eq!(lines.next(), Some("no-tty"), "{text}");
}

fn have_dev_tty(test: &str) -> bool {
    let there = Path::new("/dev/tty").exists();
    if !there {
        skipped(
            test,
            "there is no /dev/tty to ask for a controlling terminal",
        );
    }
    there
}

#[test]
fn a_command_leads_a_process_group_of_its_own_in_the_agents_session() {
    if !have_dev_tty("a_command_leads_a_process_group_of_its_own_in_the_agents_session") {
        return;
    }
    let (env, agent) = Env::with_agent();
    assert_own_group_in(ids_of(agent.child.id()).session, &env, &agent);
}

/// The agent's process, once the shell that runs it has started it.
fn child_of(shell: u32) -> u32 {
    let mut found = None;
    let path = format!("/proc/{shell}/task/{shell}/children");
    wait_until(DEADLINE, || {
        found = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok());
        found.is_some()
    });
    found.expect("the shell started the agent")
}

/// Stops the agent that runs under a shell, which `Agent`'s own drop would
/// not reach.
struct StopsAgent(u32);

impl Drop for StopsAgent {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let gone = || !Path::new(&format!("/proc/{}", self.0)).exists();
        if !wait_until(DEADLINE, gone) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[test]
fn an_agent_started_from_a_shell_on_a_terminal_gives_it_up_for_its_commands() {
    let test = "an_agent_started_from_a_shell_on_a_terminal_gives_it_up_for_its_commands";
    if !have_dev_tty(test) || !have_tool("setsid", test) {
        return;
    }
    // As an admin starts it by hand: a shell leads the session whose
    // controlling terminal this is (`setsid -c` makes stdin's terminal
    // that), and runs the agent as a command.
    let pty = nix::pty::openpty(None, None).unwrap();
    let env = Env::new();
    let mut cmd = Command::new("setsid");
    cmd.args(["-c", "sh", "-c", "\"$0\" \"$@\"; :"])
        .arg(bin("rexec-agent"))
        .args(["run", "--dir"])
        .arg(&env.agent_dir)
        .args(["--kill-grace", "500ms", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave));
    let mut agent = Agent::spawn(cmd);
    let shell = agent.child.id();
    let stop = StopsAgent(child_of(shell));
    agent.wait_listening();
    env.trust(&agent);

    let (shell_ids, agent_ids) = (ids_of(shell), ids_of(stop.0));
    assert_eq!(shell_ids.session, shell_ids.pid, "{shell_ids:?}");
    assert_ne!(
        shell_ids.tty, 0,
        "the shell keeps the terminal: {shell_ids:?}"
    );
    assert_eq!(agent_ids.session, shell_ids.session, "{agent_ids:?}");
    assert_eq!(agent_ids.tty, 0, "the agent gave it up: {agent_ids:?}");
    assert_own_group_in(shell_ids.session, &env, &agent);
    drop(pty.master);
}
