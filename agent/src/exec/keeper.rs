//! The keeper: a small process beside the agent that ends the agent's
//! running commands when the agent dies without doing so itself (`kill -9`,
//! a crash, the OOM killer). Each command runs in a session of its own, so
//! nothing else would: its processes would run on with nobody to report to.
//!
//! The agent starts the keeper once (the agent binary again, with a hidden
//! subcommand) and tells it, over the keeper's stdin, the process group of
//! each command as it starts (`+PGID`) and ends (`-PGID`). Only the agent
//! holds the pipe's write end, so the kernel closes it when the agent dies,
//! however it dies; at that end of file the keeper sends SIGTERM to every
//! group still listed, SIGKILL after the kill grace, and exits. A group is
//! struck off once its exec has ended, so the keeper signals only groups
//! that were running a moment before; one that ended by itself in the very
//! instant the agent died is the one case where a reused id could be hit.
//!
//! Why not `PR_SET_PDEATHSIG` on each shell: it reaches the shell only, not
//! the rest of its group (a child subreaper does not help once the agent is
//! gone), it is cleared by the switch to another user, and it fires when
//! the *thread* that forked exits, which in a tokio runtime need not be the
//! agent's death. Why not a record that the next start kills: an agent
//! killed by hand is not necessarily started again. Under systemd the
//! unit's cgroup does the same job; the keeper runs there too, and costs a
//! sleeping process.

use std::collections::BTreeSet;
use std::io::{self, BufRead, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{SigHandler, Signal, killpg, signal};
use nix::unistd::Pid;

use crate::exec::group::group_alive;

/// The hidden `rexec-agent` subcommand that runs the keeper.
pub const SUBCOMMAND: &str = "keeper";

/// How often the keeper looks whether the groups it signalled have gone.
const POLL: Duration = Duration::from_millis(20);

static KEEPER: OnceLock<Mutex<ChildStdin>> = OnceLock::new();

/// Starts the keeper for this agent process; the commands started after
/// this die with the agent. `grace` is the SIGTERM-to-SIGKILL time.
///
/// # Errors
/// When the agent's own executable cannot be found or started.
pub fn start(grace: Duration) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg(SUBCOMMAND)
        .arg(grace.as_millis().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("the keeper has no stdin"))?;
    // A keeper that stops reading (stopped by hand) must not stall the
    // agent: a record that does not fit at once is dropped instead.
    let flags = fcntl(&stdin, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    fcntl(
        &stdin,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(io::Error::from)?;
    if KEEPER.set(Mutex::new(stdin)).is_err() {
        return Err(io::Error::other("the keeper was started twice"));
    }
    std::thread::spawn(move || {
        // Reaps it; it exits early only when killed by hand.
        if child.wait().is_ok() {
            tracing::warn!("the keeper exited; commands no longer die with the agent");
        }
    });
    Ok(())
}

fn tell(line: String) {
    if let Some(keeper) = KEEPER.get() {
        let mut stdin = keeper.lock().unwrap_or_else(PoisonError::into_inner);
        // One write per line; a keeper that is gone changes nothing here.
        let _ = stdin.write_all(line.as_bytes());
    }
}

/// A command's process group, listed with the keeper until dropped.
#[derive(Debug)]
pub struct Tracked(Pid);

impl Drop for Tracked {
    fn drop(&mut self) {
        // The group ended (or was killed) and was seen to.
        tell(format!("-{}\n", self.0));
    }
}

/// A command's process group started.
pub fn track(pgid: Pid) -> Tracked {
    tell(format!("+{pgid}\n"));
    Tracked(pgid)
}

/// The keeper process: reads `+PGID`/`-PGID` lines until end of file, then
/// ends every group still listed.
pub fn run(grace: Duration) {
    // Sockets systemd passed to the agent are not close-on-exec; the
    // keeper must not hold them (or anything else but its stdio).
    // SAFETY: closes descriptors this process does not use; no Rust object
    // owns any of them, as the keeper has opened nothing yet.
    let _ = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // Ctrl-C on the terminal the agent was started from reaches the keeper
    // too; it must stay until the agent is gone.
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    let mut groups = BTreeSet::new();
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (sign, number) = line.split_at(line.len().min(1));
        let Ok(pgid) = number.parse::<i32>() else {
            continue;
        };
        if pgid <= 1 {
            continue;
        }
        match sign {
            "+" => groups.insert(pgid),
            "-" => groups.remove(&pgid),
            _ => false,
        };
    }
    if groups.is_empty() {
        return;
    }
    eprintln!(
        "rexec-agent keeper: the agent is gone; ending the {} command(s) it was running",
        groups.len()
    );
    let pids: Vec<Pid> = groups.into_iter().map(Pid::from_raw).collect();
    for pgid in &pids {
        let _ = killpg(*pgid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|pgid| group_alive(*pgid)) {
        std::thread::sleep(POLL);
    }
    for pgid in &pids {
        let _ = killpg(*pgid, Signal::SIGKILL);
    }
}
