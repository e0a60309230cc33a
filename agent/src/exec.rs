//! Running one command: spawn it in its own process group, stream its output
//! to the client as it comes, feed it stdin when asked, deliver signals, and
//! make sure that however the exec ends, the whole group is gone.
//!
//! This module sees typed messages only; the session hands it the two halves
//! of an established connection after the request has been read.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, User, geteuid};
use rexec_protocol::{
    AgentMessage, ClientMessage, ErrorKind, ErrorReport, ExecRequest, ExitStatus, FrameError,
    RemoteSignal,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::AgentSettings;

/// How many output chunks may wait between the pipe readers and the socket
/// writer. With [`READ_CHUNK`] this bounds the memory one exec holds for
/// output, and makes a slow client slow the child down instead.
const OUTPUT_QUEUE: usize = 4;
/// How much one read from a child's pipe may take.
const READ_CHUNK: usize = 64 * 1024;
/// How many stdin chunks may wait for the child to read them.
const STDIN_QUEUE: usize = 4;
/// How often we look whether a killed group has gone.
const GROUP_POLL: Duration = Duration::from_millis(20);
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
    }
}

/// Runs `request` and streams it over `incoming`/`outgoing`. `kill` is the
/// agent's order to end every command now (shutdown past its grace period).
pub async fn run<R, W>(
    request: &ExecRequest,
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
    };
    let mut prepared = match prepare(request, settings) {
        Ok(prepared) => prepared,
        Err(refusal) => {
            report.end = refuse(outgoing, refusal).await;
            return report;
        }
    };
    report.cwd = Some(prepared.cwd.clone());
    let mut child = match prepared.command.spawn() {
        Ok(child) => child,
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

    let (output_tx, mut output) = mpsc::channel(OUTPUT_QUEUE);
    let pumps = [
        child
            .stdout
            .take()
            .map(|pipe| tokio::spawn(pump(pipe, AgentMessage::Stdout, output_tx.clone()))),
        child
            .stderr
            .take()
            .map(|pipe| tokio::spawn(pump(pipe, AgentMessage::Stderr, output_tx))),
    ];
    let mut stdin = child.stdin.take().map(spawn_stdin_writer);

    let deadline = request
        .timeout
        .map(|t| tokio::time::Instant::now() + t)
        .unwrap_or_else(far_future);
    let mut output_open = true;
    let mut client_open = true;

    if outgoing
        .send(AgentMessage::Started {
            pid,
            keepalive: None,
        })
        .await
        .is_err()
    {
        client_open = false;
    }

    // A stdin chunk the child has not taken yet. While one waits we read no
    // further client messages (TCP pushes back on the client) but keep
    // forwarding output: a `cat` with a full output pipe reads its stdin
    // only after its output drains.
    let mut pending_stdin: Option<Bytes> = None;

    // The main loop ends with either the child's status (normal end) or the
    // reason we must kill the group.
    let ending: Result<std::process::ExitStatus, ExecEnd> = loop {
        if !client_open {
            break Err(ExecEnd::ClientGone);
        }
        tokio::select! {
            message = output.recv(), if output_open => match message {
                Some(message) => {
                    count(&mut report, &message);
                    if forward(outgoing, message, !output.is_empty()).await.is_err() {
                        client_open = false;
                    }
                }
                None => output_open = false,
            },
            status = child.wait(), if !output_open => match status {
                Ok(status) => break Ok(status),
                Err(e) => break Err(ExecEnd::ProtocolError(format!("cannot wait for child: {e}"))),
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
            message = incoming.next(), if pending_stdin.is_none() => match message {
                Some(Ok(ClientMessage::Stdin(chunk))) if request.stdin => {
                    if stdin.is_some() {
                        pending_stdin = Some(chunk);
                    }
                }
                Some(Ok(ClientMessage::StdinEof)) if request.stdin => stdin = None,
                Some(Ok(ClientMessage::Signal(signal))) => {
                    let _ = killpg(pgid, to_signal(signal));
                }
                Some(Ok(other)) => {
                    break Err(ExecEnd::ProtocolError(format!("unexpected {} during exec", name_of(&other))));
                }
                Some(Err(FrameError::Io(_))) | None => client_open = false,
                Some(Err(e)) => break Err(ExecEnd::ProtocolError(e.to_string())),
            },
            () = tokio::time::sleep_until(deadline) => {
                break Err(ExecEnd::Finished(ExitStatus::TimedOut));
            }
            () = kill.cancelled() => break Err(ExecEnd::ShutDown),
        }
    };

    match ending {
        Ok(status) => {
            guard.armed = false;
            let status = exit_status(status);
            report.end = ExecEnd::Finished(status);
            let _ = finish(outgoing, AgentMessage::Exit(status)).await;
        }
        Err(end) => {
            drop(stdin);
            terminate_group(&mut child, pgid, settings.kill_grace).await;
            guard.armed = false;
            // Output written before the kill still reaches a client that is
            // there to read it; a process that escaped the group and holds a
            // pipe open must not hold us, hence the bound.
            if client_open {
                let drain = async {
                    while let Some(message) = output.recv().await {
                        count(&mut report, &message);
                        if forward(outgoing, message, false).await.is_err() {
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
                let _ = finish(outgoing, last).await;
            }
            report.end = end;
        }
    }
    for pump in pumps.into_iter().flatten() {
        pump.abort();
    }
    drop(guard);
    report
}

/// A command ready to spawn, and where it will run.
struct Prepared {
    command: Command,
    cwd: String,
}

/// Builds the command for `request`, or the refusal to send instead.
fn prepare(request: &ExecRequest, settings: &AgentSettings) -> Result<Prepared, ErrorReport> {
    let bad = |message: String| ErrorReport::new(ErrorKind::BadRequest, message);
    if request.command.contains('\0') {
        return Err(bad("the command contains a NUL byte".into()));
    }
    let user = User::from_uid(geteuid()).ok().flatten();
    let user_name = user.as_ref().map(|u| u.name.clone()).unwrap_or_default();
    if let Some(wanted) = &request.user {
        if *wanted != user_name {
            return Err(ErrorReport::new(
                ErrorKind::PermissionDenied,
                format!(
                    "cannot run as user {wanted:?}: this agent runs commands as {user_name:?} only"
                ),
            ));
        }
    }
    let home = user
        .as_ref()
        .map(|u| u.dir.clone())
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| "/".into());
    let cwd = match &request.cwd {
        Some(dir) => {
            let path = Path::new(dir);
            if !path.is_dir() {
                return Err(ErrorReport::new(
                    ErrorKind::NoSuchDirectory,
                    format!("no such directory: {dir}"),
                ));
            }
            path.to_path_buf()
        }
        None => home.clone(),
    };

    let mut command = Command::new(&settings.shell);
    command
        .arg("-c")
        .arg(&request.command)
        .current_dir(&cwd)
        .env_clear()
        .env("PATH", BASE_PATH)
        .env("HOME", &home)
        .env("USER", &user_name)
        .env("LOGNAME", &user_name)
        .env(
            "SHELL",
            user.as_ref()
                .map(|u| u.shell.clone().into_os_string())
                .unwrap_or_else(|| OsString::from("/bin/sh")),
        )
        .env(
            "LANG",
            std::env::var_os("LANG").unwrap_or_else(|| OsString::from("C.UTF-8")),
        );
    for (key, value) in &request.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(bad(format!(
                "invalid environment variable name or value: {key:?}"
            )));
        }
        command.env(key, value);
    }
    command
        .stdin(if request.stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    Ok(Prepared {
        command,
        cwd: cwd.to_string_lossy().into_owned(),
    })
}

/// Reads a pipe until EOF, sending each chunk as it arrives.
async fn pump<P: AsyncRead + Unpin>(
    mut pipe: P,
    wrap: fn(Bytes) -> AgentMessage,
    tx: mpsc::Sender<AgentMessage>,
) {
    loop {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        match pipe.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx.send(wrap(buf.freeze())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits for room in the stdin queue; `None` when there is no stdin any
/// more. Takes its own handle on the queue so that the caller may drop
/// stdin meanwhile.
async fn reserve(stdin: Option<mpsc::Sender<Bytes>>) -> Option<mpsc::OwnedPermit<Bytes>> {
    stdin?.reserve_owned().await.ok()
}

fn spawn_stdin_writer(mut stdin: ChildStdin) -> mpsc::Sender<Bytes> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(STDIN_QUEUE);
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // Dropping `stdin` here closes the pipe: the child sees EOF.
    });
    tx
}

/// Writes one message, flushing only when nothing else is waiting so that
/// bulk output goes out in large writes and a lone line goes out at once.
async fn forward<W>(
    outgoing: &mut W,
    message: AgentMessage,
    more_waiting: bool,
) -> Result<(), FrameError>
where
    W: Sink<AgentMessage, Error = FrameError> + Unpin,
{
    outgoing.feed(message).await?;
    if !more_waiting {
        outgoing.flush().await?;
    }
    Ok(())
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

fn group_alive(pgid: Pid) -> bool {
    killpg(pgid, None).is_ok()
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
        _ => "message",
    }
}

fn far_future() -> tokio::time::Instant {
    // About thirty years: never, for a command, without overflowing Instant.
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365 * 30)
}
