//! A command's process group: its guard, its end (TERM, the grace, KILL),
//! whether any of it still runs, and how its end is told.
//!
//! The keeper ([`crate::exec::keeper`]) uses [`group_alive`] too, from its
//! own process, and tracks the groups that run; this module knows nothing
//! of it.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rexec_protocol::{ExitStatus, RemoteSignal};
use tokio::process::Child;

/// How often we look whether a killed group has gone.
pub const GROUP_POLL: Duration = Duration::from_millis(20);

/// Kills a process group with SIGKILL when dropped, unless disarmed: the
/// last line of defence when an exec future is dropped or panics midway.
pub struct GroupGuard {
    pgid: Pid,
    /// Whether dropping the guard kills the group.
    pub armed: bool,
}

impl GroupGuard {
    /// Guards `pgid`.
    pub fn new(pgid: Pid) -> GroupGuard {
        GroupGuard { pgid, armed: true }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}

/// SIGTERM to the group, up to `grace` for it to go, then SIGKILL; the shell
/// itself is always reaped before this returns.
pub async fn terminate_group(child: &mut Child, pgid: Pid, grace: Duration) {
    let _ = killpg(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let reaped = tokio::time::timeout(grace, child.wait()).await.is_ok();
    // The shell is gone (or ignores TERM); give the rest of its group what
    // is left of the grace.
    while reaped && group_alive(pgid) && Instant::now() < deadline {
        tokio::time::sleep(GROUP_POLL).await;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    if !reaped {
        let _ = child.wait().await;
    }
}

/// Whether a process of the group still runs. A member that has exited
/// but is not reaped yet counts as gone: an orphan's zombie waits for init,
/// which may take seconds on some machines, while it runs nothing and holds
/// no output open (and its group id cannot be reused meanwhile).
pub fn group_alive(pgid: Pid) -> bool {
    if killpg(pgid, None).is_err() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // After the parenthesised name: state, parent, process group.
        let mut fields = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or("")
            .split_whitespace();
        let state = fields.next();
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        group == Some(pgid.as_raw()) && state != Some("Z")
    })
}

/// Whether the process `pid` has exited, without reaping it.
pub fn exited_unreaped(pid: Pid) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    matches!(
        waitid(Id::Pid(pid), flags),
        Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..))
    )
}

/// The protocol's form of a child's exit status.
pub fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal {
            signal,
            core_dumped: status.core_dumped(),
        },
        (None, None) => ExitStatus::Code(-1),
    }
}

/// The signal a client's forwarded signal stands for.
pub fn to_signal(signal: RemoteSignal) -> Signal {
    match signal {
        RemoteSignal::Interrupt => Signal::SIGINT,
        RemoteSignal::Terminate => Signal::SIGTERM,
        RemoteSignal::Hangup => Signal::SIGHUP,
        RemoteSignal::Kill => Signal::SIGKILL,
        RemoteSignal::Quit => Signal::SIGQUIT,
        _ => Signal::SIGTERM,
    }
}
