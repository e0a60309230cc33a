//! Building the command for an exec request: the shell, its clean
//! environment, its terminal or pipes, and what the child does between
//! fork and exec (its own session, the run-as user, the working
//! directory), or the refusal to send instead.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;

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
/// working directory that failed: the child writes one byte before it
/// gives up. The spawn's own error carries only the errno.
pub struct ChdirProbe {
    read: OwnedFd,
    write: OwnedFd,
}

impl ChdirProbe {
    fn new() -> Result<ChdirProbe, ErrorReport> {
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| {
                ErrorReport::new(ErrorKind::Internal, format!("cannot make a pipe: {e}"))
            })?;
        Ok(ChdirProbe { read, write })
    }

    /// Whether the child said the change of directory failed. Called once
    /// the spawn has returned, by which time the child has written or exited.
    pub fn failed(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(nix::unistd::read(&self.read, &mut byte), Ok(1))
    }
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
    // The directory is entered in the child, after the switch to the user,
    // so the kernel checks it as that user. The agent looks at nothing
    // beforehand: an answer from root would tell a client what exists
    // where its user may not look. A relative one is taken from the home
    // directory, as a login shell's `cd` would.
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
    let chdir_probe = ChdirProbe::new()?;
    let chdir_failed = chdir_probe.write.as_raw_fd();

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
    let uid = user.uid;
    let gid = user.gid;
    let user_name = user.name.clone();
    let with_terminal = pty.is_some();
    // SAFETY: the closure runs in the child between fork and exec and makes
    // only async-signal-safe system calls (setsid, ioctl, setgroups,
    // setgid, setuid, chdir, write); everything it needs was computed
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
            enter_directory(&cwd_c, fall_back_to_root, chdir_failed)
        });
    }
    Ok(Prepared {
        command,
        cwd: cwd.to_string_lossy().into_owned(),
        user: user_name,
        pty,
        chdir_probe,
    })
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
