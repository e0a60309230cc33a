//! One command on one host, streamed: remote stdout to our stdout and remote
//! stderr to our stderr as each chunk arrives, our stdin to the command when
//! asked, and our signals to its process group.
//!
//! Sending runs in its own task so that a command that is slow to read its
//! stdin never stops us from reading its output (which would deadlock a
//! `cat`-like command whose output pipe is full).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use nix::sys::signal::Signal;
use rexec_protocol::{
    AgentMessage, ClientMessage, ExecRequest, ExitStatus, RemoteSignal, STDIN_WINDOW,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, mpsc};

use crate::connect::{self, Client, Outgoing};
use crate::error::CtlError;
use crate::liveness::Liveness;
use crate::plain;
use crate::signals::StopSignals;
use crate::target::Target;

/// A second Ctrl-C within this long after the first kills the command and
/// ends ctl.
pub const SECOND_INTERRUPT_WINDOW: Duration = Duration::from_secs(3);
/// How much of our stdin one message carries.
const STDIN_CHUNK: usize = 64 * 1024;

/// How a streamed exec ended, from ctl's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// The agent reported the command's end.
    Finished(ExitStatus),
    /// Our stdout's reader went away; we stopped (the agent kills the command).
    BrokenPipe,
    /// A second Ctrl-C: the command was sent SIGKILL and ctl gave up waiting.
    Interrupted,
}

/// Runs `request` on `target`, streaming its output to our stdout and stderr.
///
/// # Errors
/// When the command could not be run or its end was not reported.
pub async fn exec_streaming(
    client: &Client,
    target: &Target,
    request: ExecRequest,
) -> Result<ExecOutcome, CtlError> {
    let forward_stdin = request.stdin;
    let with_pty = request.pty.is_some();
    let no_answer = crate::liveness::no_answer_bound(request.timeout, client.connect_timeout);
    let session = connect::open(client, target, ClientMessage::Exec(request)).await?;
    let mut incoming = session.connection.incoming;
    let outgoing = session.connection.outgoing;

    let (data_tx, data_rx) = mpsc::channel(4);
    let (urgent_tx, urgent_rx) = mpsc::channel(4);
    let room = stdin_room();
    let sender = tokio::spawn(send_loop(outgoing, data_rx, urgent_rx, room.clone()));
    let (stdin_failed_tx, mut stdin_failed) = mpsc::channel(1);
    if forward_stdin {
        spawn_stdin_reader(data_tx, stdin_failed_tx);
    } else {
        drop(data_tx);
    }

    let mut output = OutputWriter::new(
        raw_output(io::stdout().as_fd())?,
        raw_output(io::stderr().as_fd())?,
    );
    // A chunk of output our reader has not yet taken: until it has, we read
    // nothing more from the agent (TCP flow control holds the command),
    // but signals are still handled.
    let mut pending: Option<Output> = None;
    // Forwarded to the remote group, unless ctl was started with them
    // ignored (nohup, a script's trap ''): then they stay ignored.
    let mut stop_signals = StopSignals::new()
        .map_err(|e| CtlError::Local(format!("cannot handle signals: {}", plain::io_error(&e))))?;
    let mut window_change = signal(SignalKind::window_change())
        .map_err(|e| CtlError::Local(format!("cannot handle signals: {}", plain::io_error(&e))))?;
    // Raw mode only once the agent has answered, so that a refused
    // connection leaves the terminal as it was; restored when dropped.
    let mut raw_mode = None;
    let mut last_interrupt: Option<Instant> = None;
    let mut alive = Liveness::answering_within(no_answer);

    let mut writer_failed = false;
    loop {
        if writer_failed {
            return output.failed().await;
        }
        let message = tokio::select! {
            room = output.room(), if pending.is_some() => {
                match (room, pending.take()) {
                    (Some(room), Some(chunk)) => room.send(chunk),
                    _ => writer_failed = true,
                }
                continue;
            }
            message = alive.next(&mut incoming), if pending.is_none() => message,
            // The command must not take part of our input for all of it:
            // no end of input is sent, and leaving ends the command.
            Some(e) = stdin_failed.recv() => {
                return Err(CtlError::Local(format!(
                    "cannot pass our stdin on to the command: {}",
                    plain::io_error(&e)
                )));
            }
            _ = window_change.recv(), if with_pty => {
                let size = crate::tty::current_size();
                let _ = urgent_tx.try_send(ClientMessage::WindowSize(size));
                continue;
            }
            signal = stop_signals.next() => {
                let forwarded = match signal {
                    Signal::SIGINT => {
                        let now = Instant::now();
                        if last_interrupt
                            .is_some_and(|t| now.duration_since(t) < SECOND_INTERRUPT_WINDOW)
                        {
                            let _ = urgent_tx.try_send(ClientMessage::Signal(RemoteSignal::Kill));
                            // Give the sender a moment to deliver the kill; leaving
                            // closes the connection, which kills the group anyway.
                            let _ = tokio::time::timeout(Duration::from_secs(1), sender).await;
                            return Ok(ExecOutcome::Interrupted);
                        }
                        last_interrupt = Some(now);
                        RemoteSignal::Interrupt
                    }
                    Signal::SIGTERM => RemoteSignal::Terminate,
                    _ => RemoteSignal::Hangup,
                };
                let _ = urgent_tx.try_send(ClientMessage::Signal(forwarded));
                continue;
            }
        };
        // Output that came before an error is written before it is said.
        let message = match message.and_then(super::exec_message) {
            Ok(message) => message,
            Err(e) => {
                let _ = output.finish().await;
                return Err(e);
            }
        };
        match message {
            AgentMessage::Started { keepalive, .. } => {
                alive.started(keepalive);
                if with_pty {
                    raw_mode = crate::tty::RawMode::enter().map_err(|e| {
                        CtlError::Output(format!(
                            "cannot set the terminal to raw mode: {}",
                            plain::io_error(&e)
                        ))
                    })?;
                }
            }
            AgentMessage::Keepalive => {
                let _ = urgent_tx.try_send(ClientMessage::Keepalive);
            }
            AgentMessage::StdinTaken(bytes) => room.add_permits(bytes as usize),
            // Output that cannot be written ends the run, from either
            // stream: a closed pipe quietly, anything else as a failure
            // (its line may find no stderr to go to; the exit status says it).
            AgentMessage::Stdout(chunk) => pending = Some(Output::Stdout(chunk)),
            AgentMessage::Stderr(chunk) => pending = Some(Output::Stderr(chunk)),
            AgentMessage::Exit(status) => {
                // The status after all of the output, or the failure to
                // write it; a stop signal while our reader still takes it
                // ends the wait (the command has ended already).
                let written = tokio::select! {
                    written = output.finish() => written,
                    _ = stop_signals.next() => Ok(Some(ExecOutcome::Interrupted)),
                };
                drop(raw_mode);
                return match written {
                    Ok(None) => Ok(ExecOutcome::Finished(status)),
                    Ok(Some(outcome)) => Ok(outcome),
                    Err(e) => Err(e),
                };
            }
            AgentMessage::Error(report) => {
                let _ = output.finish().await;
                return Err(CtlError::Agent(report));
            }
            other => {
                return Err(CtlError::unexpected(&other));
            }
        }
    }
}

/// A chunk of the command's output, for the stream it came on.
enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// Writes the command's output on a thread of its own, chunk by chunk in
/// the order it arrived, so that a reader that stops taking it (a paused
/// `less`, a full pipe) blocks that thread and not the loop that handles
/// Ctrl-C, SIGTERM and the agent's keepalives: a blocking write there
/// left ctl deaf to signals for as long as its reader paused. Started at
/// the first chunk (a command without output starts no thread); one
/// chunk waits in the queue while the thread writes another, so the
/// agent is still held back by how fast our reader reads.
struct OutputWriter {
    files: Option<(File, File)>,
    queue: Option<mpsc::Sender<Output>>,
    failed: Option<tokio::sync::oneshot::Receiver<(io::Error, &'static str)>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl OutputWriter {
    fn new(stdout: File, stderr: File) -> OutputWriter {
        OutputWriter {
            files: Some((stdout, stderr)),
            queue: None,
            failed: None,
            done: None,
        }
    }

    /// Room for the next chunk, once the thread has taken the one before;
    /// `None` when it stopped on a failed write.
    async fn room(&mut self) -> Option<mpsc::Permit<'_, Output>> {
        if let Some((mut stdout, mut stderr)) = self.files.take() {
            let (queue, mut chunks) = mpsc::channel::<Output>(1);
            let (failed_tx, failed) = tokio::sync::oneshot::channel();
            let (done_tx, done) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                while let Some(chunk) = chunks.blocking_recv() {
                    let (written, to) = match &chunk {
                        Output::Stdout(bytes) => (stdout.write_all(bytes), "to stdout"),
                        Output::Stderr(bytes) => (stderr.write_all(bytes), "to stderr"),
                    };
                    if let Err(e) = written {
                        let _ = failed_tx.send((e, to));
                        return;
                    }
                }
                let _ = done_tx.send(());
            });
            self.queue = Some(queue);
            self.failed = Some(failed);
            self.done = Some(done);
        }
        self.queue.as_ref()?.reserve().await.ok()
    }

    /// How the run ends after the thread stopped on a failed write.
    async fn failed(&mut self) -> Result<ExecOutcome, CtlError> {
        match self.failed.take() {
            Some(failed) => match failed.await {
                Ok((e, to)) => written_or_gone(&e, to),
                Err(_) => Err(CtlError::Local("the output writer stopped".into())),
            },
            None => Err(CtlError::Local("the output writer stopped".into())),
        }
    }

    /// Waits until everything queued is written: `None` then, or how a
    /// failed write ends the run.
    async fn finish(&mut self) -> Result<Option<ExecOutcome>, CtlError> {
        // Closing the queue lets the thread end after its last chunk.
        self.queue = None;
        let Some(done) = self.done.take() else {
            return Ok(None);
        };
        if done.await.is_ok() {
            return Ok(None);
        }
        self.failed().await.map(Some)
    }
}

/// How a failed write of the command's output ends the run.
fn written_or_gone(e: &io::Error, to: &str) -> Result<ExecOutcome, CtlError> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return Ok(ExecOutcome::BrokenPipe);
    }
    Err(CtlError::write_failed(to, e))
}

/// An unbuffered handle on one of our output descriptors: chunks go out
/// with one write each, as they arrived.
fn raw_output(fd: std::os::fd::BorrowedFd<'_>) -> Result<File, CtlError> {
    fd.try_clone_to_owned().map(File::from).map_err(|e| {
        CtlError::Output(format!(
            "cannot use an output descriptor: {}",
            plain::io_error(&e)
        ))
    })
}

/// Room for stdin: the bytes we may still send before the agent says the
/// command took some ([`AgentMessage::StdinTaken`]).
pub(super) fn stdin_room() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(STDIN_WINDOW as usize))
}

/// Sends what the other tasks queue: signals first, then stdin, in order,
/// each stdin chunk once `room` has space for it. Ends after a SIGKILL
/// request, when both queues are closed, or when the connection takes no
/// more. Since stdin waits for room here rather than in the connection, a
/// signal never waits behind stdin the command has not read.
pub(super) async fn send_loop(
    mut outgoing: Outgoing,
    mut data: mpsc::Receiver<ClientMessage>,
    mut urgent: mpsc::Receiver<ClientMessage>,
    room: Arc<Semaphore>,
) {
    // A stdin chunk waiting for room.
    let mut held: Option<(ClientMessage, u32)> = None;
    loop {
        let need = held.as_ref().map_or(0, |(_, len)| *len);
        let message = tokio::select! {
            biased;
            Some(message) = urgent.recv() => message,
            Ok(space) = room.acquire_many(need), if held.is_some() => {
                space.forget();
                match held.take() {
                    Some((message, _)) => message,
                    None => continue,
                }
            }
            Some(message) = data.recv(), if held.is_none() => match message {
                ClientMessage::Stdin(chunk) => {
                    let len = chunk.len() as u32;
                    held = Some((ClientMessage::Stdin(chunk), len));
                    continue;
                }
                other => other,
            },
            else => return,
        };
        let last = matches!(message, ClientMessage::Signal(RemoteSignal::Kill));
        if outgoing.send(message).await.is_err() || last {
            return;
        }
    }
}

/// Reads our stdin on a thread of its own (reads block) and queues it for
/// the agent, then stdin EOF; or, when a read fails, says so on `failed`
/// instead of the EOF.
fn spawn_stdin_reader(tx: mpsc::Sender<ClientMessage>, failed: mpsc::Sender<io::Error>) {
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = ClientMessage::Stdin(Bytes::copy_from_slice(&buf[..n]));
                    if tx.blocking_send(chunk).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = failed.blocking_send(e);
                    return;
                }
            }
        }
        let _ = tx.blocking_send(ClientMessage::StdinEof);
    });
}
