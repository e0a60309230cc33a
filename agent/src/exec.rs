//! Running one command: spawn it in its own process group, stream its output
//! to the client as it comes, feed it stdin when asked, deliver signals, and
//! make sure that however the exec ends, the whole group is gone.
//!
//! This module sees typed messages only; the session hands it the two halves
//! of an established connection after the request has been read.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Gid, Pid, Uid, User, geteuid};
use rexec_protocol::{
    AgentMessage, ClientMessage, ErrorKind, ErrorReport, ExecRequest, ExitStatus, FrameError,
    RemoteSignal,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{self, AgentSettings};
use crate::pty::{self, MasterStream};

pub mod keeper;

/// How much one read from a child's pipe may take: one output message at
/// most. With one such buffer per stream this is the memory an exec holds
/// for output; a client that reads slowly slows the child down instead.
const READ_CHUNK: usize = rexec_protocol::MAX_CHUNK_LEN;
/// The capacity we ask for on the child's output pipes (Linux's default is
/// 64 KiB). A larger pipe lets the child write on while we send, so a fast
/// producer is not stopped and woken once per 64 KiB.
const PIPE_CAPACITY: i32 = 1024 * 1024;
/// How many stdin chunks may wait for the child to read them, besides the
/// one being written and the one the session holds back while the queue is
/// full. Chunks are at most `MAX_CHUNK_LEN` (256 KiB), so a session holds at
/// most 768 KiB of stdin; past that the client is pushed back by TCP.
const STDIN_QUEUE: usize = 1;
/// How often we look whether a killed group has gone.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// What we write to a terminal's master when the client's stdin ends: the
/// terminal's end-of-file character, so a reading program sees EOF.
const PTY_EOF: u8 = 0x04;
/// `PATH` in the child's clean environment.
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How an exec ended, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
    /// The command ran to the end (or was timed out) and the client was told.
    Finished(ExitStatus),
    /// The request was refused before anything ran.
    Refused(ErrorReport),
    /// The client went away; the command's group was killed.
    ClientGone,
    /// The client stopped answering keepalives; the command's group was killed.
    ClientSilent(Duration),
    /// The client broke the protocol; the command's group was killed.
    ProtocolError(String),
    /// The agent shut down; the command's group was killed.
    ShutDown,
}

impl std::fmt::Display for ExecEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecEnd::Finished(ExitStatus::Code(code)) => write!(f, "exit {code}"),
            ExecEnd::Finished(ExitStatus::Signal { signal, .. }) => write!(f, "signal {signal}"),
            ExecEnd::Finished(ExitStatus::TimedOut) => f.write_str("timed out"),
            ExecEnd::Finished(_) => f.write_str("finished"),
            ExecEnd::Refused(report) => write!(f, "refused ({}): {}", report.kind, report.message),
            ExecEnd::ClientGone => f.write_str("client gone, killed"),
            ExecEnd::ClientSilent(bound) => write!(
                f,
                "client gone (no answer to keepalives for {}), killed",
                humantime::format_duration(*bound)
            ),
            ExecEnd::ProtocolError(why) => write!(f, "protocol error, killed: {why}"),
            ExecEnd::ShutDown => f.write_str("agent shutting down, killed"),
        }
    }
}

/// What the audit log records of one exec.
#[derive(Debug, Clone)]
pub struct ExecReport {
    /// How it ended.
    pub end: ExecEnd,
    /// The shell's process id, if it started.
    pub pid: Option<u32>,
    /// Bytes of stdout sent.
    pub stdout_bytes: u64,
    /// Bytes of stderr sent.
    pub stderr_bytes: u64,
    /// The working directory it ran in.
    pub cwd: Option<String>,
    /// The user it ran as.
    pub user: Option<String>,
}

/// Kills a process group with SIGKILL when dropped, unless disarmed: the
/// last line of defence when an exec future is dropped or panics midway.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
        keeper::untrack(self.pgid);
    }
}

/// Who asked for an exec, as the session identified them.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// The client's name from the authorized clients file.
    pub name: &'a str,
}

/// Runs `request` and streams it over `incoming`/`outgoing`. `kill` is the
/// agent's order to end every command now (shutdown past its grace period).
pub async fn run<R, W>(
    request: &ExecRequest,
    requester: Requester<'_>,
    settings: &AgentSettings,
    incoming: &mut R,
    outgoing: &mut W,
    kill: &CancellationToken,
) -> ExecReport
where
    R: Stream<Item = Result<ClientMessage, FrameError>> + Unpin,
    W: Sink<AgentMessage, Error = FrameError> + Unpin,
{
    let mut report = ExecReport {
        end: ExecEnd::ClientGone,
        pid: None,
        stdout_bytes: 0,
        stderr_bytes: 0,
        cwd: None,
        user: None,
    };
    let Prepared {
        mut command,
        cwd,
        user,
        pty,
        chdir_probe,
    } = match prepare(request, requester, settings) {
        Ok(prepared) => prepared,
        Err(refusal) => {
            report.end = refuse(outgoing, refusal).await;
            return report;
        }
    };
    report.cwd = Some(cwd.clone());
    report.user = Some(user.clone());
    let spawned = command.spawn();
    // The child has its copies of the terminal's slave; ours (in the pair
    // and in the command's stdio) must go, or the master would never see
    // end of file.
    drop(command);
    let master = pty.map(|pair| pair.master);
    let chdir_failed = spawned.is_err() && chdir_probe.failed();
    drop(chdir_probe);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if chdir_failed => {
            report.end = refuse(outgoing, chdir_refusal(&cwd, &user, &e)).await;
            return report;
        }
        Err(e) => {
            let refusal = ErrorReport::new(
                ErrorKind::SpawnFailed,
                format!("cannot start {}: {e}", settings.shell.display()),
            );
            report.end = refuse(outgoing, refusal).await;
            return report;
        }
    };
    let Some(pid) = child.id() else {
        report.end = refuse(
            outgoing,
            ErrorReport::new(ErrorKind::Internal, "child exited before it was seen"),
        )
        .await;
        return report;
    };
    report.pid = Some(pid);
    let pgid = Pid::from_raw(pid as i32);
    let mut guard = GroupGuard { pgid, armed: true };
    keeper::track(pgid);

    let mut output = Output::default();
    let mut stdin = None;
    match &master {
        Some(master) => {
            let streams =
                MasterStream::new(master).and_then(|r| Ok((r, MasterStream::new(master)?)));
            match streams {
                Ok((reader, writer)) => {
                    output.stdout = OutputStream::new(reader, AgentMessage::Stdout);
                    if request.stdin {
                        stdin = Some(spawn_stdin_writer(writer, Some(PTY_EOF)));
                    }
                }
                Err(e) => {
                    terminate_group(&mut child, pgid, settings.kill_grace).await;
                    guard.armed = false;
                    drop(guard);
                    let refusal = ErrorReport::new(
                        ErrorKind::Internal,
                        format!("cannot use the terminal: {e}"),
                    );
                    report.end = refuse(outgoing, refusal).await;
                    return report;
                }
            }
        }
        None => {
            for fd in [
                child.stdout.as_ref().map(AsRawFd::as_raw_fd),
                child.stderr.as_ref().map(AsRawFd::as_raw_fd),
            ]
            .into_iter()
            .flatten()
            {
                grow_pipe(fd);
            }
            if let Some(pipe) = child.stdout.take() {
                output.stdout = OutputStream::new(pipe, AgentMessage::Stdout);
            }
            if let Some(pipe) = child.stderr.take() {
                output.stderr = OutputStream::new(pipe, AgentMessage::Stderr);
            }
            stdin = child
                .stdin
                .take()
                .map(|pipe| spawn_stdin_writer(pipe, None));
        }
    }

    let deadline = effective_timeout(request.timeout, settings.max_timeout)
        .and_then(|t| tokio::time::Instant::now().checked_add(t))
        .unwrap_or_else(far_future);
    let mut keepalive = Keepalive::new(settings.keepalive_interval, settings.keepalive_count);
    let mut client_open = true;

    let started = AgentMessage::Started {
        pid,
        keepalive: keepalive.interval(),
    };
    if outgoing.send(started).await.is_err() {
        client_open = false;
    }
    keepalive.sent();

    // A stdin chunk the child has not taken yet. While one waits we read no
    // further client messages (TCP pushes back on the client) but keep
    // forwarding output: a `cat` with a full output pipe reads its stdin
    // only after its output drains.
    let mut pending_stdin: Option<Bytes> = None;

    // Once the client has forwarded a signal (Ctrl-C, SIGTERM or SIGHUP on
    // ctl), the command is being interrupted: when the shell then exits,
    // whatever it started that still holds its output (a background job,
    // which a non-interactive shell starts with SIGINT ignored) goes too,
    // TERM and then KILL after the grace, instead of keeping the session
    // open. Without a signal, output held open is waited for, as ssh does.
    let mut interrupted = false;
    let mut shell_exited = false;
    let mut group_kill_at: Option<tokio::time::Instant> = None;

    // The main loop ends with either the child's status (normal end) or the
    // reason we must kill the group.
    let ending: Result<std::process::ExitStatus, ExecEnd> = loop {
        if !client_open {
            break Err(ExecEnd::ClientGone);
        }
        tokio::select! {
            message = output.next(), if output.is_open() => {
                if let Some(message) = message {
                    count(&mut report, &message);
                    // A client that stops reading holds this send, but not
                    // the agent's shutdown.
                    let sent = tokio::select! {
                        sent = outgoing.send(message) => sent,
                        () = kill.cancelled() => break Err(ExecEnd::ShutDown),
                    };
                    if sent.is_err() {
                        client_open = false;
                    }
                    keepalive.sent();
                }
            },
            status = child.wait(), if !output.is_open() => match status {
                Ok(status) => break Ok(status),
                Err(e) => break Err(ExecEnd::ProtocolError(format!("cannot wait for child: {e}"))),
            },
            () = tokio::time::sleep(GROUP_POLL), if interrupted && !shell_exited => {
                // Looked at, not reaped: until the loop ends the exited shell
                // stays a zombie, so its pid (the group's id) cannot be given
                // to another process while we signal the group.
                if exited_unreaped(pgid) {
                    shell_exited = true;
                    let _ = killpg(pgid, Signal::SIGTERM);
                    group_kill_at = Some(tokio::time::Instant::now() + settings.kill_grace);
                }
            },
            () = tokio::time::sleep_until(group_kill_at.unwrap_or_else(far_future)), if group_kill_at.is_some() => {
                group_kill_at = None;
                let _ = killpg(pgid, Signal::SIGKILL);
            },
            permit = reserve(stdin.clone()), if pending_stdin.is_some() => match permit {
                Some(permit) => {
                    permit.send(pending_stdin.take().unwrap_or_default());
                }
                // The child closed its stdin: it gets no more.
                None => {
                    pending_stdin = None;
                    stdin = None;
                }
            },
            message = incoming.next(), if pending_stdin.is_none() => {
                keepalive.heard();
                match message {
                    Some(Ok(ClientMessage::Stdin(chunk))) if request.stdin => {
                        if stdin.is_some() {
                            // A copy of its own: the received chunk is a view
                            // into the connection's read buffer, whose whole
                            // allocation it would keep while it waits.
                            pending_stdin = Some(Bytes::copy_from_slice(&chunk));
                        }
                    }
                    Some(Ok(ClientMessage::StdinEof)) if request.stdin => stdin = None,
                    Some(Ok(ClientMessage::Signal(signal))) => {
                        interrupted = true;
                        let _ = killpg(pgid, to_signal(signal));
                    }
                    Some(Ok(ClientMessage::WindowSize(size))) => {
                        if let Some(master) = &master {
                            let _ = pty::resize(master, size);
                        }
                    }
                    Some(Ok(ClientMessage::Keepalive)) => {}
                    Some(Ok(other)) => {
                        break Err(ExecEnd::ProtocolError(format!("unexpected {} during exec", name_of(&other))));
                    }
                    Some(Err(FrameError::Io(_))) | None => client_open = false,
                    Some(Err(e)) => break Err(ExecEnd::ProtocolError(e.to_string())),
                }
            }
            () = keepalive.due() => {
                if pending_stdin.is_some() {
                    // We are not reading the client: its silence means nothing.
                    keepalive.heard();
                }
                if let Some(bound) = keepalive.client_lost() {
                    break Err(ExecEnd::ClientSilent(bound));
                }
                if outgoing.send(AgentMessage::Keepalive).await.is_err() {
                    client_open = false;
                }
                keepalive.sent_probe();
            }
            () = tokio::time::sleep_until(deadline) => {
                break Err(ExecEnd::Finished(ExitStatus::TimedOut));
            }
            () = kill.cancelled() => break Err(ExecEnd::ShutDown),
        }
    };

    match ending {
        Ok(status) => {
            // Reaped: its pgid may be reused from now on, so the keeper
            // forgets it before anything waits on the client; and a client
            // that stops reading holds neither this nor a shutdown.
            guard.armed = false;
            drop(guard);
            let status = exit_status(status);
            report.end = ExecEnd::Finished(status);
            let last = finish(outgoing, AgentMessage::Exit(status));
            tokio::select! {
                _ = tokio::time::timeout(settings.kill_grace, last) => {}
                () = kill.cancelled() => {}
            }
        }
        Err(end) => {
            drop(stdin);
            terminate_group(&mut child, pgid, settings.kill_grace).await;
            guard.armed = false;
            drop(guard);
            // Output written before the kill still reaches a client that is
            // there to read it; a process that escaped the group and holds a
            // pipe open must not hold us, hence the bound.
            if client_open && !matches!(end, ExecEnd::ClientSilent(_)) {
                let drain = async {
                    while let Some(message) = output.next().await {
                        count(&mut report, &message);
                        if outgoing.send(message).await.is_err() {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(settings.kill_grace, drain).await;
                let last = match &end {
                    ExecEnd::Finished(status) => AgentMessage::Exit(*status),
                    ExecEnd::ShutDown => AgentMessage::Error(ErrorReport::new(
                        ErrorKind::ShuttingDown,
                        "agent shutting down; the command was killed",
                    )),
                    ExecEnd::ProtocolError(why) => {
                        AgentMessage::Error(ErrorReport::new(ErrorKind::Protocol, why.clone()))
                    }
                    _ => {
                        AgentMessage::Error(ErrorReport::new(ErrorKind::Internal, end.to_string()))
                    }
                };
                let _ = tokio::time::timeout(settings.kill_grace, finish(outgoing, last)).await;
            }
            report.end = end;
        }
    }
    report
}

/// Whether the process `pid` has exited, without reaping it.
fn exited_unreaped(pid: Pid) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    matches!(
        waitid(Id::Pid(pid), flags),
        Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..))
    )
}

/// The timeout an exec runs under: the client's, capped by the agent's maximum.
fn effective_timeout(asked: Option<Duration>, max: Option<Duration>) -> Option<Duration> {
    match (asked, max) {
        (Some(asked), Some(max)) => Some(asked.min(max)),
        (asked, max) => asked.or(max),
    }
}

/// Keepalive bookkeeping for one exec.
///
/// When the session has been quiet for an interval, the agent sends a
/// keepalive; the client answers. A client that has not said anything for
/// `count` intervals since the first unanswered keepalive is taken as gone
/// (a frozen process, a pulled cable). While output flows we send none: a
/// client that stops reading then holds the command by TCP's flow control,
/// as a slow pipe reader would, rather than having it killed.
#[derive(Debug)]
struct Keepalive {
    interval: Option<Duration>,
    count: u32,
    last_sent: tokio::time::Instant,
    unanswered_since: Option<tokio::time::Instant>,
}

impl Keepalive {
    fn new(interval: Duration, count: u32) -> Self {
        Keepalive {
            interval: (!interval.is_zero()).then_some(interval),
            count: count.max(1),
            last_sent: tokio::time::Instant::now(),
            unanswered_since: None,
        }
    }

    fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// We sent the client something.
    fn sent(&mut self) {
        self.last_sent = tokio::time::Instant::now();
    }

    /// We sent a keepalive, which the client must answer.
    fn sent_probe(&mut self) {
        self.sent();
        self.unanswered_since.get_or_insert(self.last_sent);
    }

    /// The client said something.
    fn heard(&mut self) {
        self.unanswered_since = None;
    }

    /// Resolves when the next keepalive is due; never when disabled.
    async fn due(&self) {
        match self.interval {
            Some(interval) => tokio::time::sleep_until(self.last_sent + interval).await,
            None => std::future::pending().await,
        }
    }

    /// The silence bound, when the client has exceeded it.
    fn client_lost(&self) -> Option<Duration> {
        let bound = self.interval? * self.count;
        let since = self.unanswered_since?;
        (since.elapsed() >= bound).then_some(bound)
    }
}

/// A command ready to spawn, and where it will run.
struct Prepared {
    command: Command,
    cwd: String,
    user: String,
    /// The terminal, for an exec that asked for one; the slave is already
    /// the command's stdin, stdout and stderr.
    pty: Option<pty::PtyPair>,
    /// Says whether a failed spawn failed to enter `cwd`.
    chdir_probe: ChdirProbe,
}

/// The user a command or copy runs as, resolved before it starts.
pub(crate) struct RunAs {
    /// Who.
    pub(crate) user: User,
    /// Their supplementary groups; `None` when we stay who we are.
    pub(crate) switch: Option<Vec<Gid>>,
}

/// Decides whom a request runs as.
///
/// A client with an entry in the run-as rules runs only as a user listed
/// there (`*`: any user), by default the first one listed; the entry binds
/// for the agent's own user too, so a rule confines as well as grants. A
/// client without an entry runs as the agent's own user only. Running as
/// anyone but the agent's own user needs an agent running as root.
pub(crate) fn resolve_user(
    wanted: Option<&str>,
    requester: Requester<'_>,
    settings: &AgentSettings,
) -> Result<RunAs, ErrorReport> {
    let denied = |message: String| ErrorReport::new(ErrorKind::PermissionDenied, message);
    let own = User::from_uid(geteuid())
        .ok()
        .flatten()
        .ok_or_else(|| ErrorReport::new(ErrorKind::Internal, "the agent's own user is unknown"))?;
    let policy = &settings.run_as;
    let listed = policy.rule(requester.name).is_some();
    let target = wanted
        .or_else(|| policy.default_user(requester.name))
        .unwrap_or(&own.name)
        .to_owned();
    let not_root = || {
        denied(format!(
            "cannot run as user {target:?}: this agent runs as {:?}, not root, so only as {:?}",
            own.name, own.name
        ))
    };
    let refused = || {
        denied(format!(
            "client {:?} may not run commands as {target:?} on this agent (see run_as in its config)",
            requester.name
        ))
    };
    if listed && !policy.allows(requester.name, &target) {
        return Err(refused());
    }
    if target == own.name {
        return Ok(RunAs {
            user: own,
            switch: None,
        });
    }
    if !own.uid.is_root() {
        return Err(not_root());
    }
    if !listed {
        return Err(refused());
    }
    let user = User::from_name(&target).ok().flatten().ok_or_else(|| {
        ErrorReport::new(ErrorKind::BadRequest, format!("no such user: {target}"))
    })?;
    let name = CString::new(user.name.clone())
        .map_err(|_| ErrorReport::new(ErrorKind::BadRequest, "user name contains a NUL byte"))?;
    let groups = nix::unistd::getgrouplist(&name, user.gid).map_err(|e| {
        ErrorReport::new(
            ErrorKind::Internal,
            format!("cannot list the groups of {target}: {e}"),
        )
    })?;
    Ok(RunAs {
        user,
        switch: Some(groups),
    })
}

/// Tells the agent, after a failed spawn, whether it was the change of
/// working directory that failed: the child writes one byte before it
/// gives up. The spawn's own error carries only the errno.
struct ChdirProbe {
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
    fn failed(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(nix::unistd::read(&self.read, &mut byte), Ok(1))
    }
}

/// The refusal for a working directory the command's user cannot enter.
fn chdir_refusal(dir: &str, user: &str, error: &std::io::Error) -> ErrorReport {
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
fn prepare(
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

/// In the child: becomes `uid` with primary group `gid` and `groups`.
/// Groups first, while we are still allowed to set them.
fn drop_privileges(groups: &[Gid], gid: Gid, uid: Uid) -> std::io::Result<()> {
    nix::unistd::setgroups(groups).map_err(std::io::Error::from)?;
    nix::unistd::setgid(gid).map_err(std::io::Error::from)?;
    nix::unistd::setuid(uid).map_err(std::io::Error::from)
}

/// Asks for a larger pipe; the default size works too, so a refusal (the
/// system's `pipe-max-size`) is not an error.
fn grow_pipe(fd: std::os::fd::RawFd) {
    // SAFETY: `fd` is the child's pipe, open and owned by the Child for the
    // duration of this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_CAPACITY));
}

/// The command's output: stdout and stderr, or the terminal's master as
/// stdout. Read by the exec's own task, so a chunk goes from the pipe to the
/// socket without a hand-over between tasks (and threads) on the way.
#[derive(Default)]
struct Output {
    stdout: OutputStream,
    stderr: OutputStream,
}

impl Output {
    /// Whether either stream may still have output.
    fn is_open(&self) -> bool {
        self.stdout.reader.is_some() || self.stderr.reader.is_some()
    }

    /// The next chunk from whichever stream has one; `None` once both
    /// reached their end. Cancel-safe: when dropped unfinished, nothing was
    /// read.
    async fn next(&mut self) -> Option<AgentMessage> {
        loop {
            let Output { stdout, stderr } = self;
            let chunk = tokio::select! {
                chunk = stdout.next(), if stdout.reader.is_some() => chunk,
                chunk = stderr.next(), if stderr.reader.is_some() => chunk,
                else => return None,
            };
            if chunk.is_some() {
                return chunk;
            }
            // One stream ended; the other may go on.
        }
    }
}

/// One output stream and its read buffer.
struct OutputStream {
    /// `None` once the stream reached its end (or failed).
    reader: Option<Box<dyn AsyncRead + Unpin + Send>>,
    /// Reused from chunk to chunk: once the last chunk has been framed and
    /// dropped, reserving takes back the same memory rather than allocating.
    buf: BytesMut,
    wrap: fn(Bytes) -> AgentMessage,
}

impl Default for OutputStream {
    fn default() -> Self {
        OutputStream {
            reader: None,
            buf: BytesMut::new(),
            wrap: AgentMessage::Stdout,
        }
    }
}

impl OutputStream {
    fn new<R>(reader: R, wrap: fn(Bytes) -> AgentMessage) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        OutputStream {
            reader: Some(Box::new(reader)),
            buf: BytesMut::new(),
            wrap,
        }
    }

    /// The next chunk, or `None` at the end of the stream, which closes it.
    /// A read error counts as the end: the command can write no more there.
    async fn next(&mut self) -> Option<AgentMessage> {
        let reader = self.reader.as_mut()?;
        self.buf.reserve(READ_CHUNK);
        match reader.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => {
                self.reader = None;
                None
            }
            Ok(_) => Some((self.wrap)(self.buf.split().freeze())),
        }
    }
}

/// Waits for room in the stdin queue; `None` when there is no stdin any
/// more. Takes its own handle on the queue so that the caller may drop
/// stdin meanwhile.
async fn reserve(stdin: Option<mpsc::Sender<Bytes>>) -> Option<mpsc::OwnedPermit<Bytes>> {
    stdin?.reserve_owned().await.ok()
}

fn spawn_stdin_writer<P>(mut stdin: P, eof: Option<u8>) -> mpsc::Sender<Bytes>
where
    P: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(STDIN_QUEUE);
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // A pipe is closed by dropping it here; a terminal cannot be closed
        // from our side without hanging it up, so it gets its EOF character.
        if let Some(eof) = eof {
            let _ = stdin.write_all(&[eof]).await;
        }
    });
    tx
}

/// Sends the last message and closes the connection's write side.
async fn finish<W>(outgoing: &mut W, last: AgentMessage) -> Result<(), FrameError>
where
    W: Sink<AgentMessage, Error = FrameError> + Unpin,
{
    outgoing.feed(last).await?;
    outgoing.close().await
}

async fn refuse<W>(outgoing: &mut W, refusal: ErrorReport) -> ExecEnd
where
    W: Sink<AgentMessage, Error = FrameError> + Unpin,
{
    let _ = finish(outgoing, AgentMessage::Error(refusal.clone())).await;
    ExecEnd::Refused(refusal)
}

/// SIGTERM to the group, up to `grace` for it to go, then SIGKILL; the shell
/// itself is always reaped before this returns.
pub(crate) async fn terminate_group(child: &mut Child, pgid: Pid, grace: Duration) {
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
pub(crate) fn group_alive(pgid: Pid) -> bool {
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

fn count(report: &mut ExecReport, message: &AgentMessage) {
    match message {
        AgentMessage::Stdout(b) => report.stdout_bytes += b.len() as u64,
        AgentMessage::Stderr(b) => report.stderr_bytes += b.len() as u64,
        _ => {}
    }
}

fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
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

fn to_signal(signal: RemoteSignal) -> Signal {
    match signal {
        RemoteSignal::Interrupt => Signal::SIGINT,
        RemoteSignal::Terminate => Signal::SIGTERM,
        RemoteSignal::Hangup => Signal::SIGHUP,
        RemoteSignal::Kill => Signal::SIGKILL,
        RemoteSignal::Quit => Signal::SIGQUIT,
        _ => Signal::SIGTERM,
    }
}

/// A short name of a client message for error reports.
pub(crate) fn name_of(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Hello(_) => "hello",
        ClientMessage::Exec(_) => "exec request",
        ClientMessage::Ping => "ping",
        ClientMessage::Stdin(_) => "stdin",
        ClientMessage::StdinEof => "stdin EOF",
        ClientMessage::Signal(_) => "signal",
        ClientMessage::WindowSize(_) => "window size",
        ClientMessage::Keepalive => "keepalive",
        ClientMessage::Push(_) => "push request",
        ClientMessage::Pull(_) => "pull request",
        ClientMessage::File(_) => "file",
        ClientMessage::FileData(_) => "file data",
        ClientMessage::FileEnd(_) => "file end",
        ClientMessage::CopyEnd => "copy end",
        _ => "message",
    }
}

fn far_future() -> tokio::time::Instant {
    // About thirty years: never, for a command, without overflowing Instant.
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_maximum_caps_the_clients_timeout() {
        let s = Duration::from_secs;
        assert_eq!(effective_timeout(None, None), None);
        assert_eq!(effective_timeout(Some(s(5)), None), Some(s(5)));
        assert_eq!(effective_timeout(None, Some(s(60))), Some(s(60)));
        assert_eq!(effective_timeout(Some(s(5)), Some(s(60))), Some(s(5)));
        assert_eq!(effective_timeout(Some(s(90)), Some(s(60))), Some(s(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_is_lost_only_after_count_unanswered_intervals() {
        let interval = Duration::from_secs(10);
        let mut keepalive = Keepalive::new(interval, 3);
        assert_eq!(keepalive.interval(), Some(interval));

        // Quiet session: the first keepalive is due one interval later.
        let start = tokio::time::Instant::now();
        keepalive.due().await;
        assert_eq!(start.elapsed(), interval);
        keepalive.sent_probe();
        assert_eq!(keepalive.client_lost(), None);

        // An answer resets the count.
        tokio::time::advance(interval * 2).await;
        keepalive.heard();
        keepalive.sent_probe();
        tokio::time::advance(interval * 2).await;
        assert_eq!(keepalive.client_lost(), None);
        tokio::time::advance(interval).await;
        assert_eq!(keepalive.client_lost(), Some(interval * 3));
    }

    #[tokio::test(start_paused = true)]
    async fn output_postpones_keepalives_and_zero_disables_them() {
        let interval = Duration::from_secs(10);
        let mut keepalive = Keepalive::new(interval, 3);
        tokio::time::advance(interval / 2).await;
        keepalive.sent();
        let before = tokio::time::Instant::now();
        keepalive.due().await;
        assert_eq!(before.elapsed(), interval, "counted from the last output");

        let disabled = Keepalive::new(Duration::ZERO, 3);
        assert_eq!(disabled.interval(), None);
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), disabled.due())
                .await
                .is_err()
        );
        assert_eq!(disabled.client_lost(), None);
    }
}
