//! Running one command: spawn it in its own process group, stream its output
//! to the client as it comes, feed it stdin when asked, deliver signals, and
//! make sure that however the exec ends, the whole group is gone.
//!
//! This module sees typed messages only; the session hands it the two halves
//! of an established connection after the request has been read.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rexec_protocol::{
    AgentMessage, ClientMessage, ErrorKind, ErrorReport, ExecRequest, ExitStatus, FrameError,
    STDIN_WINDOW,
};

use crate::exec::group::{
    GROUP_POLL, GroupGuard, exit_status, exited_unreaped, terminate_group, to_signal,
};
use crate::exec::pipes::{Output, OutputStream, PTY_EOF, reserve, spawn_stdin_writer};
use crate::exec::spawn::{Prepared, chdir_refusal, prepare};
use crate::job::{Incoming, Job, Outgoing, finish, name_of, refuse, refused};
use crate::keepalive::Keepalive;
use crate::pty::{self, MasterStream};

pub(crate) mod group;
pub mod keeper;
pub(crate) mod pipes;
pub(crate) mod spawn;

pub use spawn::{default_signal_dispositions, give_up_terminal, mark_close_on_exec_from};

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
            ExecEnd::Refused(report) => f.write_str(&refused(report)),
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

/// Runs `request` and streams it over the job's connection.
pub async fn run(
    request: &ExecRequest,
    mut job: Job<'_, impl Incoming, impl Outgoing>,
) -> ExecReport {
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
    } = match prepare(request, job.requester, job.settings) {
        Ok(prepared) => prepared,
        Err(refusal) => {
            report.end = ExecEnd::Refused(refuse(job.outgoing, refusal).await);
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
            report.end =
                ExecEnd::Refused(refuse(job.outgoing, chdir_refusal(&cwd, &user, &e)).await);
            return report;
        }
        Err(e) => {
            let refusal = ErrorReport::new(
                ErrorKind::SpawnFailed,
                cannot_start(&job.settings.shell, &e),
            );
            report.end = ExecEnd::Refused(refuse(job.outgoing, refusal).await);
            return report;
        }
    };
    let Some(pid) = child.id() else {
        let refusal = ErrorReport::new(ErrorKind::Internal, "child exited before it was seen");
        report.end = ExecEnd::Refused(refuse(job.outgoing, refusal).await);
        return report;
    };
    report.pid = Some(pid);
    let pgid = Pid::from_raw(pid as i32);
    // Declared before the guard, so dropped after it: the keeper lists the
    // group until the guard has killed it. Both go as soon as the group is
    // dead and reaped, since its id may then be reused.
    let tracked = keeper::track(pgid);
    let mut guard = GroupGuard::new(pgid);

    let mut output = Output::default();
    let mut stdin = None;
    // Ends the writer with the exec, however it ends (see StdinTask).
    let mut _stdin_task = None;
    match &master {
        Some(master) => {
            let streams =
                MasterStream::new(master).and_then(|r| Ok((r, MasterStream::new(master)?)));
            match streams {
                Ok((reader, writer)) => {
                    output.stdout = OutputStream::new(reader, AgentMessage::Stdout);
                    if request.stdin {
                        let (sender, task) = spawn_stdin_writer(writer, Some(PTY_EOF));
                        (stdin, _stdin_task) = (Some(sender), Some(task));
                    }
                }
                Err(e) => {
                    terminate_group(&mut child, pgid, job.settings.kill_grace).await;
                    guard.armed = false;
                    drop(guard);
                    drop(tracked);
                    let refusal = ErrorReport::new(
                        ErrorKind::Internal,
                        format!("cannot use the terminal: {e}"),
                    );
                    report.end = ExecEnd::Refused(refuse(job.outgoing, refusal).await);
                    return report;
                }
            }
        }
        None => {
            output = Output::take_pipes(&mut child);
            if let Some(pipe) = child.stdin.take() {
                let (sender, task) = spawn_stdin_writer(pipe, None);
                (stdin, _stdin_task) = (Some(sender), Some(task));
            }
        }
    }

    let deadline = effective_timeout(request.timeout, job.settings.max_timeout)
        .and_then(|t| tokio::time::Instant::now().checked_add(t))
        .unwrap_or_else(far_future);
    let mut keepalive = Keepalive::of(job.settings);
    let mut client_open = true;
    // A message a kill or the deadline kept from the client's writer.
    let mut unsent = None;

    let started = AgentMessage::Started {
        pid,
        keepalive: keepalive.interval(),
    };
    if job.outgoing.send(started).await.is_err() {
        client_open = false;
    }
    keepalive.sent();

    // Stdin the child has not taken yet: at most STDIN_WINDOW bytes, since
    // the client sends only as much as we have given room for. While the
    // command takes it we read the client only when the queue is empty, as
    // TCP paced it before the window existed (which keeps stdin's
    // throughput, BENCHMARKS "Stdin paced by room"); once the front chunk
    // has waited STDIN_STALL, the command is
    // not reading, so we read the client at all times until the queue is
    // empty again, and a signal behind that stdin still reaches it. Output
    // goes on meanwhile (a `cat` with a full output pipe reads its stdin
    // only after its output drains).
    let mut stdin_queue = StdinQueue::default();
    let mut stdin_stalled = false;
    // One timer, set again as each chunk comes to the front: a timer made
    // afresh on every turn of the loop costs more than the chunk's write.
    let stdin_stall = tokio::time::sleep_until(far_future());
    tokio::pin!(stdin_stall);
    // The client's end of stdin came while some of it still waits: the
    // command's stdin closes once the rest is handed over.
    let mut stdin_ending = false;
    let mut room = RoomOwed::default();

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
                    match send_bounded(job.outgoing, message, job.kill, deadline, &mut unsent).await {
                        Ok(sent) => client_open = sent,
                        Err(end) => break Err(end),
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
                    group_kill_at = Some(tokio::time::Instant::now() + job.settings.kill_grace);
                }
            },
            () = tokio::time::sleep_until(group_kill_at.unwrap_or_else(far_future)), if group_kill_at.is_some() => {
                group_kill_at = None;
                let _ = killpg(pgid, Signal::SIGKILL);
            },
            () = &mut stdin_stall, if !stdin_queue.is_empty() && !stdin_stalled => {
                stdin_stalled = true;
            },
            permit = reserve(stdin.clone()), if !stdin_queue.is_empty() => {
                match permit {
                    Some(permit) => {
                        let chunk = stdin_queue.pop();
                        room.owe(chunk.len());
                        permit.send(chunk);
                        if stdin_ending && stdin_queue.is_empty() {
                            stdin = None;
                        }
                    }
                    // The child closed its stdin: it gets no more.
                    None => {
                        stdin = None;
                        room.owe(stdin_queue.clear());
                    }
                }
                if stdin_queue.is_empty() {
                    stdin_stalled = false;
                } else {
                    stdin_stall.as_mut().reset(tokio::time::Instant::now() + STDIN_STALL);
                }
                if let Some(given) = room.due() {
                    match send_bounded(job.outgoing, given, job.kill, deadline, &mut unsent).await {
                        Ok(sent) => client_open = sent,
                        Err(end) => break Err(end),
                    }
                }
            },
            message = job.incoming.next(), if stdin_queue.is_empty() || stdin_stalled => {
                keepalive.heard();
                match message {
                    Some(Ok(ClientMessage::Stdin(chunk))) if request.stdin => {
                        if stdin.is_none() {
                            // Dropped: its room is given back with the rest.
                            room.owe(chunk.len());
                            if let Some(given) = room.due() {
                                match send_bounded(job.outgoing, given, job.kill, deadline, &mut unsent).await {
                                    Ok(sent) => client_open = sent,
                                    Err(end) => break Err(end),
                                }
                            }
                        } else {
                            if stdin_queue.is_empty() {
                                stdin_stall.as_mut().reset(tokio::time::Instant::now() + STDIN_STALL);
                            }
                            if let Err(why) = stdin_queue.push(&chunk) {
                                break Err(ExecEnd::ProtocolError(why));
                            }
                        }
                    }
                    Some(Ok(ClientMessage::StdinEof)) if request.stdin => {
                        if stdin_queue.is_empty() {
                            stdin = None;
                        } else {
                            stdin_ending = true;
                        }
                    }
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
                if !stdin_queue.is_empty() && !stdin_stalled {
                    // We are not reading the client: its silence means nothing.
                    keepalive.heard();
                }
                if let Some(bound) = keepalive.client_lost() {
                    break Err(ExecEnd::ClientSilent(bound));
                }
                if job.outgoing.send(AgentMessage::Keepalive).await.is_err() {
                    client_open = false;
                }
                keepalive.sent_probe();
            }
            () = tokio::time::sleep_until(deadline) => {
                break Err(ExecEnd::Finished(ExitStatus::TimedOut));
            }
            () = job.kill.cancelled() => break Err(ExecEnd::ShutDown),
        }
    };

    match ending {
        Ok(status) => {
            // Reaped: its pgid may be reused from now on, so the keeper
            // forgets it before anything waits on the client; and a client
            // that stops reading holds neither this nor a shutdown.
            guard.armed = false;
            drop(guard);
            drop(tracked);
            drop(job.place.take());
            let status = exit_status(status);
            report.end = ExecEnd::Finished(status);
            let last = finish(job.outgoing, AgentMessage::Exit(status));
            tokio::select! {
                _ = tokio::time::timeout(job.settings.kill_grace, last) => {}
                () = job.kill.cancelled() => {}
            }
        }
        Err(end) => {
            drop(stdin);
            terminate_group(&mut child, pgid, job.settings.kill_grace).await;
            guard.armed = false;
            drop(guard);
            drop(tracked);
            drop(job.place.take());
            // Output written before the kill still reaches a client that is
            // there to read it, at its own pace (ctl writing to a pager that
            // is not read): only our shutdown cuts it short, as it does a
            // running command's output. Before, sending was bounded by the
            // kill grace, and a client that read slowly lost the rest of
            // the output and the exit status. What the pipes still hold is
            // read for at most the grace and DRAINED_AFTER_KILL bytes: a
            // process that escaped the group and holds a pipe open, or
            // writes on without end, must not hold us.
            if client_open && !matches!(end, ExecEnd::ClientSilent(_)) {
                let grace = job.settings.kill_grace;
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
                let report = &mut report;
                let outgoing = &mut job.outgoing;
                let told = async {
                    if let Some(message) = unsent.take()
                        && outgoing.send(message).await.is_err()
                    {
                        return;
                    }
                    let (mut waited, mut drained) = (Duration::ZERO, 0);
                    while waited < grace && drained < DRAINED_AFTER_KILL {
                        let asked = tokio::time::Instant::now();
                        let next = tokio::time::timeout(grace - waited, output.next()).await;
                        waited += asked.elapsed();
                        let Ok(Some(message)) = next else { break };
                        drained += output_len(&message);
                        count(report, &message);
                        if outgoing.send(message).await.is_err() {
                            return;
                        }
                    }
                    let _ = finish(outgoing, last).await;
                };
                if matches!(end, ExecEnd::ShutDown) {
                    let _ = tokio::time::timeout(grace, told).await;
                } else {
                    tokio::select! {
                        () = told => {}
                        () = job.kill.cancelled() => {}
                    }
                }
            }
            report.end = end;
        }
    }
    report
}

/// Why the shell could not be started, in plain words. E2BIG is the one a
/// client causes: a command line (or `-e` value) over the system's 128 KiB
/// for one argument, or all of them over its total.
pub(crate) fn cannot_start(shell: &std::path::Path, e: &std::io::Error) -> String {
    let why = if e.raw_os_error() == Some(nix::libc::E2BIG) {
        "the command and its environment are longer than this system lets a program be given (128 KiB for one argument)".to_owned()
    } else {
        rexec_protocol::plain::io_error(e)
    };
    format!("cannot start {}: {why}", shell.display())
}

/// The most output read from a killed command's pipes after the kill:
/// far more than its pipes and our readers hold, far less than a process
/// that escaped the group could write without end.
const DRAINED_AFTER_KILL: usize = 4 << 20;

/// The bytes of output a message carries.
fn output_len(message: &AgentMessage) -> usize {
    match message {
        AgentMessage::Stdout(b) | AgentMessage::Stderr(b) => b.len(),
        _ => 0,
    }
}

/// How long the front stdin chunk may wait for the command before the
/// client is read at all times (so a signal behind stdin the command leaves
/// unread waits this long at most).
const STDIN_STALL: Duration = Duration::from_millis(20);

/// Room is given back once this much has been taken: a quarter of the
/// window, so the client, with at most this much unanswered, still has room
/// for three quarters of it.
const STDIN_ROOM_BACK: usize = STDIN_WINDOW as usize / 4;

/// Stdin room taken and not yet given back: given in pieces of
/// [`STDIN_ROOM_BACK`], one message per piece rather than one per chunk.
#[derive(Default)]
struct RoomOwed(usize);

impl RoomOwed {
    fn owe(&mut self, bytes: usize) {
        self.0 += bytes;
    }

    /// The message that gives the room back, once a piece is owed.
    fn due(&mut self) -> Option<AgentMessage> {
        (self.0 >= STDIN_ROOM_BACK).then(|| {
            AgentMessage::StdinTaken(u32::try_from(std::mem::take(&mut self.0)).unwrap_or(u32::MAX))
        })
    }
}

/// Sends `message` to the client unless the agent's shutdown or the
/// command's deadline comes first: a client that stops reading holds
/// neither. Nothing cut off is lost: a message the writer already took
/// goes out first with what follows, and one it had no room for yet is
/// left in `unsent`, for the drain after the kill to send first (else a
/// client reading slowly past the deadline got the output after it and
/// not it). `Ok(false)`: the client is gone.
async fn send_bounded(
    outgoing: &mut impl Outgoing,
    message: AgentMessage,
    kill: &tokio_util::sync::CancellationToken,
    deadline: tokio::time::Instant,
    unsent: &mut Option<AgentMessage>,
) -> Result<bool, ExecEnd> {
    let mut message = Some(message);
    let send = async {
        std::future::poll_fn(|cx| outgoing.poll_ready_unpin(cx)).await?;
        if let Some(message) = message.take() {
            outgoing.start_send_unpin(message)?;
        }
        outgoing.flush().await
    };
    let sent = tokio::select! {
        sent = send => Ok(sent.is_ok()),
        () = kill.cancelled() => Err(ExecEnd::ShutDown),
        () = tokio::time::sleep_until(deadline) => Err(ExecEnd::Finished(ExitStatus::TimedOut)),
    };
    *unsent = message;
    sent
}

/// The stdin received and not yet handed to the command, within the
/// window the client keeps to.
#[derive(Default)]
struct StdinQueue {
    chunks: std::collections::VecDeque<Bytes>,
    bytes: usize,
}

impl StdinQueue {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Queues a copy of `chunk` (the received one is a view into the
    /// connection's read buffer, whose whole allocation it would keep); a
    /// client past [`STDIN_WINDOW`] breaks the protocol.
    fn push(&mut self, chunk: &[u8]) -> Result<(), String> {
        if self.bytes + chunk.len() > STDIN_WINDOW as usize {
            return Err(format!(
                "the client sent more stdin than the {STDIN_WINDOW} bytes of room it was given"
            ));
        }
        self.bytes += chunk.len();
        self.chunks.push_back(Bytes::copy_from_slice(chunk));
        Ok(())
    }

    fn pop(&mut self) -> Bytes {
        let chunk = self.chunks.pop_front().unwrap_or_default();
        self.bytes -= chunk.len();
        chunk
    }

    /// Drops everything; how many bytes that was.
    fn clear(&mut self) -> usize {
        self.chunks.clear();
        std::mem::take(&mut self.bytes)
    }
}

/// The timeout an exec runs under: the client's, capped by the agent's maximum.
fn effective_timeout(asked: Option<Duration>, max: Option<Duration>) -> Option<Duration> {
    match (asked, max) {
        (Some(asked), Some(max)) => Some(asked.min(max)),
        (asked, max) => asked.or(max),
    }
}

fn count(report: &mut ExecReport, message: &AgentMessage) {
    match message {
        AgentMessage::Stdout(b) => report.stdout_bytes += b.len() as u64,
        AgentMessage::Stderr(b) => report.stderr_bytes += b.len() as u64,
        _ => {}
    }
}

fn far_future() -> tokio::time::Instant {
    // About thirty years: never, for a command, without overflowing Instant.
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_message_the_deadline_cuts_off_is_sent_or_handed_back() {
        let kill = tokio_util::sync::CancellationToken::new();
        let past = tokio::time::Instant::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap();
        // The writer always has room and the deadline has passed: which of
        // the two the agent sees first is chance, so ask many times.
        for _ in 0..64 {
            let mut writer = Vec::new().sink_map_err(|never| match never {});
            let mut unsent = None;
            let result = send_bounded(
                &mut writer,
                AgentMessage::Keepalive,
                &kill,
                past,
                &mut unsent,
            )
            .await;
            assert!(matches!(
                result,
                Ok(true) | Err(ExecEnd::Finished(ExitStatus::TimedOut))
            ));
            let delivered = writer.get_ref().len() + usize::from(unsent.is_some());
            assert_eq!(delivered, 1, "the message was lost");
        }
    }

    #[test]
    fn the_agent_maximum_caps_the_clients_timeout() {
        let s = Duration::from_secs;
        assert_eq!(effective_timeout(None, None), None);
        assert_eq!(effective_timeout(Some(s(5)), None), Some(s(5)));
        assert_eq!(effective_timeout(None, Some(s(60))), Some(s(60)));
        assert_eq!(effective_timeout(Some(s(5)), Some(s(60))), Some(s(5)));
        assert_eq!(effective_timeout(Some(s(90)), Some(s(60))), Some(s(60)));
    }
}
