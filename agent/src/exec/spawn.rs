//! Building the command for an exec request: the shell, its clean
//! environment, its terminal or pipes, and how it starts, or the refusal
//! to send instead.
//!
//! Two ways to start. A command without a terminal that runs as the
//! agent's own user, from an agent running with the open-files limit it
//! was started with, is spawned the way `posix_spawn` does it
//! (`clone(CLONE_VM|CLONE_VFORK)`, no copy of the agent's memory map): in
//! a process group of its own, in the directory the agent checked it can
//! enter, with no controlling terminal because the agent gave its own up
//! at start ([`give_up_terminal`]). Everything else (a terminal, a switch
//! of user, a directory the check refuses, an agent that kept a terminal
//! or raised its limit on open files) forks, and the child does the work between fork and exec: its own
//! session, the switch of user, the change of directory and its failure
//! report.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use nix::fcntl::OFlag;
use rexec_protocol::{ErrorKind, ErrorReport, ExecRequest};
use tokio::process::Command;

use crate::config::{self, AgentSettings};
use crate::pty;
use crate::run_as::{Requester, RunAs, drop_privileges, resolve_user};

/// `PATH` in the child's clean environment.
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command ready to spawn, and where it will run.
pub struct Prepared {
    /// The command to spawn.
    pub command: Command,
    /// The working directory, as the audit log shows it.
    pub cwd: String,
    /// The user it runs as.
    pub user: String,
    /// The terminal, for an exec that asked for one; the slave is already
    /// the command's stdin, stdout and stderr.
    pub pty: Option<pty::PtyPair>,
    /// Says whether a failed spawn failed to enter `cwd`.
    pub chdir_probe: ChdirProbe,
}

/// Tells the agent, after a failed spawn, whether it was the change of
/// working directory that failed. The spawn's own error carries only the
/// errno.
pub struct ChdirProbe(Probe);

enum Probe {
    /// Forked: the child writes one byte to `_write` (held open here until
    /// the spawn has returned) before it gives up.
    Child { read: OwnedFd, _write: OwnedFd },
    /// Spawned into a directory the agent found it can enter: failing to
    /// enter it now means it changed in between.
    Agent(PathBuf),
}

impl ChdirProbe {
    /// A probe for a forked child, and the descriptor the child writes to,
    /// open as long as the probe is.
    fn child() -> Result<(ChdirProbe, RawFd), ErrorReport> {
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| {
                ErrorReport::new(ErrorKind::Internal, format!("cannot make a pipe: {e}"))
            })?;
        let fd = write.as_raw_fd();
        Ok((
            ChdirProbe(Probe::Child {
                read,
                _write: write,
            }),
            fd,
        ))
    }

    /// Whether the change of directory failed. Called once the spawn has
    /// returned an error, by which time a forked child has written or exited.
    pub fn failed(&self) -> bool {
        match &self.0 {
            Probe::Child { read, .. } => {
                let mut byte = [0u8; 1];
                matches!(nix::unistd::read(read, &mut byte), Ok(1))
            }
            Probe::Agent(dir) => !enterable(dir),
        }
    }
}

/// Whether this process may spawn commands without a controlling terminal
/// of their own making: true once it has none. The first call gives up the
/// terminal the agent was started from, if any, so that a command started
/// without `setsid` cannot open it as `/dev/tty` (or push input into it);
/// the agent's own process group stays where it was, so Ctrl-C in that
/// terminal still stops the agent. A session leader keeps its terminal
/// (giving it up would hang up its whole session) and its commands are
/// forked into sessions of their own, as are those of any process where
/// the answer is unclear.
pub fn give_up_terminal() -> bool {
    static WITHOUT_TERMINAL: OnceLock<bool> = OnceLock::new();
    *WITHOUT_TERMINAL.get_or_init(|| {
        let Some(tty) = controlling_terminal() else {
            return false;
        };
        let Some(tty) = tty else {
            return true;
        };
        let own = nix::unistd::getpid();
        if nix::unistd::getsid(None).is_ok_and(|sid| sid == own) {
            return false;
        }
        // SAFETY: TIOCNOTTY takes no argument; `tty` is open for the call.
        let _ = unsafe { nix::libc::ioctl(tty.as_raw_fd(), nix::libc::TIOCNOTTY) };
        drop(tty);
        matches!(controlling_terminal(), Some(None))
    })
}

/// This process's controlling terminal: `Some(None)` when it has none,
/// `None` when that cannot be told (no `/dev/tty` to ask).
fn controlling_terminal() -> Option<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open("/dev/tty")
    {
        Ok(tty) => Some(Some(tty)),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => Some(None),
        Err(_) => None,
    }
}

/// Whether this process can make `dir` its working directory: a
/// directory it may search, as the kernel's `chdir` checks it (effective
/// ids and capabilities).
fn enterable(dir: &Path) -> bool {
    use nix::unistd::{AccessFlags, faccessat};
    dir.is_dir()
        && faccessat(
            nix::fcntl::AT_FDCWD,
            dir,
            AccessFlags::X_OK,
            nix::fcntl::AtFlags::AT_EACCESS,
        )
        .is_ok()
}

/// The refusal for a working directory the command's user cannot enter.
pub fn chdir_refusal(dir: &str, user: &str, error: &std::io::Error) -> ErrorReport {
    use nix::libc::{EACCES, ENOENT, ENOTDIR, EPERM};
    match error.raw_os_error() {
        Some(ENOENT) => ErrorReport::new(
            ErrorKind::NoSuchDirectory,
            format!("no such directory: {dir}"),
        ),
        Some(ENOTDIR) => ErrorReport::new(
            ErrorKind::NoSuchDirectory,
            format!("not a directory: {dir}"),
        ),
        Some(EACCES | EPERM) => ErrorReport::new(
            ErrorKind::PermissionDenied,
            format!("user {user} may not enter the directory {dir}"),
        ),
        _ => ErrorReport::new(
            ErrorKind::NoSuchDirectory,
            format!(
                "user {user} cannot enter the directory {dir} (error {})",
                error.raw_os_error().unwrap_or(0)
            ),
        ),
    }
}

/// Builds the command for `request`, or the refusal to send instead.
pub fn prepare(
    request: &ExecRequest,
    requester: Requester<'_>,
    settings: &AgentSettings,
) -> Result<Prepared, ErrorReport> {
    let bad = |message: String| ErrorReport::new(ErrorKind::BadRequest, message);
    if request.command.contains('\0') {
        return Err(bad("the command contains a NUL byte".into()));
    }
    if request
        .timeout
        .is_some_and(|t| t > config::LONGEST_DURATION)
    {
        return Err(bad(format!(
            "the timeout asked for is longer than this agent accepts ({})",
            config::LONGEST_DURATION_TEXT
        )));
    }
    let RunAs { user, switch } = resolve_user(request.user.as_deref(), requester, settings)?;
    let home = Some(user.dir.clone())
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| "/".into());
    // With a switch of user, the directory is entered in the child, after
    // the switch, so the kernel checks it as that user. The agent looks at
    // nothing beforehand: an answer from root would tell a client what
    // exists where its user may not look. Without a switch the agent is
    // that user, and its own look is theirs. A relative one is taken from
    // the home directory, as a login shell's `cd` would.
    let cwd = match &request.cwd {
        Some(dir) if dir.contains('\0') => {
            return Err(bad("the working directory contains a NUL byte".into()));
        }
        Some(dir) => home.join(dir),
        None => home.clone(),
    };
    let cwd_c = CString::new(cwd.as_os_str().as_bytes())
        .map_err(|_| bad("the working directory contains a NUL byte".into()))?;
    // Only the default, the home directory, falls back to `/`, as login does.
    let fall_back_to_root = request.cwd.is_none();

    let mut command = Command::new(&settings.shell);
    command
        .arg("-c")
        .arg(&request.command)
        .env_clear()
        .env("PATH", BASE_PATH)
        .env("HOME", &home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", user.shell.clone().into_os_string())
        .env(
            "LANG",
            std::env::var_os("LANG").unwrap_or_else(|| OsString::from("C.UTF-8")),
        );
    if let Some(pty) = &request.pty {
        command.env("TERM", &pty.term);
    }
    // Before the client's own variables, so `-e REXEC_TARGET=…` still wins
    // as any `-e` does.
    if let Some(target) = &request.target {
        if target.contains('\0') {
            return Err(bad("the target name contains a NUL byte".into()));
        }
        command.env("REXEC_TARGET", target);
    }
    for (key, value) in &request.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(bad(format!(
                "invalid environment variable name or value: {key:?}"
            )));
        }
        command.env(key, value);
    }

    let pty = match &request.pty {
        Some(wanted) => {
            let pair = pty::open(wanted.size).map_err(|e| {
                ErrorReport::new(
                    ErrorKind::SpawnFailed,
                    format!("cannot open a terminal: {e}"),
                )
            })?;
            let slave = |pair: &pty::PtyPair| -> Result<Stdio, ErrorReport> {
                pair.slave.try_clone().map(Stdio::from).map_err(|e| {
                    ErrorReport::new(
                        ErrorKind::Internal,
                        format!("cannot share the terminal: {e}"),
                    )
                })
            };
            command
                .stdin(slave(&pair)?)
                .stdout(slave(&pair)?)
                .stderr(slave(&pair)?);
            if switch.is_some() {
                // The terminal belongs to whoever runs on it, as login does.
                let _ = nix::unistd::fchown(&pair.slave, Some(user.uid), None);
            }
            Some(pair)
        }
        None => {
            command
                .stdin(if request.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };
    let user_name = user.name.clone();
    // `posix_spawn` cannot set limits, and a limit set on the child after
    // it started comes too late: `sh -c 'ulimit -Sn'` has run by then on a
    // busy host. So an agent that raised its own limit forks.
    let spawn_without_fork = pty.is_none()
        && switch.is_none()
        && original_open_files_limit().is_none()
        && give_up_terminal()
        && enterable(&cwd);
    let chdir_probe = if spawn_without_fork {
        // A process group of its own for the group kill; no session of its
        // own, which `posix_spawn` cannot make, and none needed: there is no
        // controlling terminal to keep it from.
        command.process_group(0).current_dir(&cwd);
        ChdirProbe(Probe::Agent(cwd.clone()))
    } else {
        fork_and_enter(
            &mut command,
            cwd_c,
            fall_back_to_root,
            switch,
            &user,
            pty.is_some(),
        )?
    };
    Ok(Prepared {
        command,
        cwd: cwd.to_string_lossy().into_owned(),
        user: user_name,
        pty,
        chdir_probe,
    })
}

/// Makes `command` fork, and its child take its own session (with the
/// terminal on its stdin for `-t`), switch to the user, and enter `cwd`
/// before exec, writing to the returned probe when it cannot.
fn fork_and_enter(
    command: &mut Command,
    cwd: CString,
    fall_back_to_root: bool,
    switch: Option<Vec<nix::unistd::Gid>>,
    user: &nix::unistd::User,
    with_terminal: bool,
) -> Result<ChdirProbe, ErrorReport> {
    let (probe, chdir_failed) = ChdirProbe::child()?;
    let (uid, gid) = (user.uid, user.gid);
    let limits = original_open_files_limit();
    // SAFETY: the closure runs in the child between fork and exec and makes
    // only async-signal-safe system calls (setsid, ioctl, setgroups,
    // setgid, setuid, chdir, setrlimit, write); everything it needs was computed
    // before the fork.
    unsafe {
        command.pre_exec(move || {
            // Its own session, so also its own process group for the group
            // kill; and no controlling terminal but the one asked for with
            // -t: the agent's (a terminal it was started from) stays out of
            // reach, so /dev/tty and TIOCSTI have nothing to work on.
            if with_terminal {
                pty::become_session_leader_of_stdin()?;
            } else {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
            }
            if let Some(groups) = &switch {
                drop_privileges(groups, gid, uid)?;
            }
            enter_directory(&cwd, fall_back_to_root, chdir_failed)?;
            set_open_files_limit(limits)?;
            // Whatever another thread opened without close-on-exec stays
            // ours: the command gets its stdin, stdout and stderr only.
            mark_close_on_exec_from(3);
            Ok(())
        });
    }
    Ok(probe)
}

/// The open-files limits the agent was started with, when it raised its
/// soft limit (see [`raise_open_files_limit`]).
static STARTED_WITH: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises this process's soft limit on open files to its hard limit, so that
/// a burst of connections meets the session cap, not the descriptor limit,
/// and remembers the limits we were started with for the commands. Returns
/// the limit now in force.
pub fn raise_open_files_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        let _ = STARTED_WITH.set((soft, hard));
        return Some(hard);
    }
    Some(soft)
}

/// The open-files limits the agent was started with, if it raised them.
pub fn original_open_files_limit() -> Option<(u64, u64)> {
    STARTED_WITH.get().copied()
}

/// Sets `limits` (soft, hard) on open files, if any: in a child between
/// fork and exec (async-signal-safe, one system call).
pub fn set_open_files_limit(limits: Option<(u64, u64)>) -> std::io::Result<()> {
    if let Some((soft, hard)) = limits {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)?;
    }
    Ok(())
}

/// Every signal the agent was started with ignored (a shell's background
/// job ignores SIGINT and SIGQUIT, `nohup` SIGHUP) set back to its
/// default, so that commands start with the dispositions they would get
/// from a login: an ignored signal stays ignored across `exec`, and a
/// command started by an agent that a script ran with `&` would shrug off
/// `kill -QUIT`. SIGPIPE is left to Rust's runtime and std, which ignore it
/// in the agent and give commands the default.
pub fn default_signal_dispositions() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGPIPE) {
            continue;
        }
        let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        // SAFETY: installs no handler (only the default, or the old
        // disposition back), so no handler can run in a bad state.
        let Ok(old) = (unsafe { sigaction(signal, &default) }) else {
            continue;
        };
        if !matches!(old.handler(), SigHandler::SigIgn) {
            // SAFETY: as above; the disposition it had before.
            let _ = unsafe { sigaction(signal, &old) };
        }
    }
}

/// Marks every descriptor from `first` up close-on-exec (closing them here
/// would also close std's own report of a failed exec). Async-signal-safe:
/// one system call. Kernels before 5.11 refuse the flag; then nothing
/// changes.
pub fn mark_close_on_exec_from(first: u32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC changes only flags.
    let _ = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            first,
            u32::MAX,
            nix::libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

/// In the child, as the command's user: changes to `dir` (or to `/` when
/// allowed to fall back), else writes one byte to `failed` and returns the
/// error, which ends the spawn.
fn enter_directory(
    dir: &std::ffi::CStr,
    fall_back_to_root: bool,
    failed: std::os::fd::RawFd,
) -> std::io::Result<()> {
    // SAFETY: `dir` is a NUL-terminated string alive for the call.
    if unsafe { nix::libc::chdir(dir.as_ptr()) } == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    // SAFETY: as above, a static NUL-terminated string.
    if fall_back_to_root && unsafe { nix::libc::chdir(c"/".as_ptr()) } == 0 {
        return Ok(());
    }
    // SAFETY: `failed` is the probe's write end, open until the spawn
    // returns; one byte from a static buffer.
    let _ = unsafe { nix::libc::write(failed, b"d".as_ptr().cast(), 1) };
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_enterable_and_a_file_or_a_missing_path_is_not() {
        let missing = Path::new("/proc/self/no-such-entry");
        assert!(enterable(Path::new("/")));
        assert!(!enterable(Path::new("/proc/self/stat")));
        assert!(!enterable(missing));
        let probe = ChdirProbe(Probe::Agent(missing.into()));
        assert!(probe.failed(), "a directory gone since the check");
        assert!(!ChdirProbe(Probe::Agent("/".into())).failed());
    }
}
