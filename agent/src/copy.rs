//! Copies on the agent: receiving a pushed tree into place and sending a
//! pulled one, over a session whose request has been read.
//!
//! The file system work (names, temporary files, checksums, renames) is
//! `rexec_protocol::copy`'s; this module moves its items between the
//! connection and the disk, and decides as whom. A copy runs as the user
//! its command would (the agent's own, or `USER@HOST` when the agent is root
//! and the run-as rules allow it): its file work happens on a thread of its
//! own that first takes that user's file-system identity (Linux keeps the
//! fsuid, fsgid and supplementary groups per thread), so the kernel checks
//! every open, create and rename as that user, and new files are theirs.
//! The thread then clears its capability sets (also per thread), so that a
//! root agent's other privileges (reading any process's `/proc/PID/cwd`,
//! say) do not reach into a copy made as someone else. That thread ends
//! with the copy; the agent's other threads keep theirs. We chose this over
//! a forked child that calls setuid: a fork of the multi-threaded agent may
//! only run async-signal-safe code, so the copy would need a process of its
//! own and a pipe protocol, for the same effect.
//! Doing the disk work off the async threads also lets hashing and writing
//! overlap with the network.
//!
//! Both directions first send `CopyStarted` with the keepalive interval and
//! then a `Keepalive` whenever they have sent nothing for that long, so that
//! ctl can tell a slow disk from a dead agent.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rexec_protocol::copy::{CopyError, CopyItem, Placement, Reach, TreeReader, TreeWriter};
use rexec_protocol::{
    AgentMessage, ClientMessage, CopyDone, ErrorKind, ErrorReport, FrameError, PullRequest,
    PushRequest,
};

use crate::config::AgentSettings;
use crate::job::{Incoming, Job, Outgoing, finish, name_of, refuse, refused};
use crate::keepalive::Keepalive;
use crate::run_as::{FsIdentity, Requester, resolve_user, take_identity};

/// Items queued between the connection and a copy's worker thread.
const WORKER_QUEUE: usize = 8;

/// How a copy ended, for the audit log.
#[derive(Debug, Clone)]
pub struct CopyReport {
    /// `done`, or why not.
    pub outcome: String,
    /// Entries sent or put in place.
    pub entries: u64,
    /// Bytes of file data sent or put in place.
    pub bytes: u64,
    /// Whom the copy ran as.
    pub user: String,
}

impl CopyReport {
    fn new() -> Self {
        CopyReport {
            outcome: "done".into(),
            entries: 0,
            bytes: 0,
            user: String::new(),
        }
    }
}

/// A copy request, either way.
#[derive(Debug, Clone, Copy)]
pub enum CopyRequest<'a> {
    /// Files from the client into place here.
    Push(&'a PushRequest),
    /// Files from here to the client.
    Pull(&'a PullRequest),
}

impl CopyRequest<'_> {
    /// `push` or `pull`, as the audit log says.
    pub fn direction(&self) -> &'static str {
        match self {
            CopyRequest::Push(_) => "push",
            CopyRequest::Pull(_) => "pull",
        }
    }

    /// The path on this machine: where a push goes, what a pull sends.
    pub fn path(&self) -> &str {
        match self {
            CopyRequest::Push(push) => &push.dest,
            CopyRequest::Pull(pull) => &pull.path,
        }
    }

    fn user(&self) -> Option<&str> {
        match self {
            CopyRequest::Push(push) => push.user.as_deref(),
            CopyRequest::Pull(pull) => pull.user.as_deref(),
        }
    }
}

/// Carries out a copy request, as the user the run-as rules give it.
pub async fn serve(
    request: CopyRequest<'_>,
    mut job: Job<'_, impl Incoming, impl Outgoing>,
) -> CopyReport {
    let (mut report, identity) = match begin(request, &mut job).await {
        Ok(begun) => begun,
        Err(refused) => return refused,
    };
    let mut keepalive = Keepalive::of(job.settings);
    let started = AgentMessage::CopyStarted {
        keepalive: keepalive.interval(),
    };
    // A push's client waits for this before it sends; a pull's items follow.
    let sent = match request {
        CopyRequest::Push(_) => job.outgoing.send(started).await,
        CopyRequest::Pull(_) => job.outgoing.feed(started).await,
    };
    if sent.is_err() {
        report.outcome = "client gone before the copy".into();
        return report;
    }
    keepalive.sent();
    match request {
        CopyRequest::Push(push) => self::push(push, job, report, identity, keepalive).await,
        CopyRequest::Pull(pull) => self::pull(pull, job, report, identity, keepalive).await,
    }
}

/// Whom the copy runs as (noted in `report`), or why it may not run: a
/// relative path, the run-as rules, or keeping owners without root.
fn authorize(
    request: CopyRequest<'_>,
    requester: Requester<'_>,
    settings: &AgentSettings,
    report: &mut CopyReport,
) -> Result<Option<FsIdentity>, ErrorReport> {
    let path = request.path();
    if !path.starts_with('/') {
        return Err(ErrorReport::new(
            ErrorKind::BadRequest,
            format!("remote paths must be absolute: {path:?}"),
        ));
    }
    let (user, identity) = resolve_user(request.user(), requester, settings)?.fs_identity();
    report.user = user;
    let as_root = identity
        .as_ref()
        .map_or(nix::unistd::geteuid(), FsIdentity::uid)
        .is_root();
    if matches!(request, CopyRequest::Push(push) if push.preserve_owner) && !as_root {
        return Err(ErrorReport::new(
            ErrorKind::PermissionDenied,
            format!(
                "keeping owners (-p) needs a copy that runs as root; this one runs as {:?}",
                report.user
            ),
        ));
    }
    Ok(identity)
}

/// The start of every copy: its report and whom it runs as; or, when it
/// may not run, the report of the refusal the client has been sent.
async fn begin(
    request: CopyRequest<'_>,
    job: &mut Job<'_, impl Incoming, impl Outgoing>,
) -> Result<(CopyReport, Option<FsIdentity>), CopyReport> {
    let mut report = CopyReport::new();
    match authorize(request, job.requester, job.settings, &mut report) {
        Ok(identity) => Ok((report, identity)),
        Err(refusal) => {
            fail(job.outgoing, &mut report, refusal).await;
            Err(report)
        }
    }
}

fn report_of(e: CopyError) -> ErrorReport {
    ErrorReport::new(e.kind, e.message)
}

/// What a copy is told when the agent shuts down under it.
fn shut_down() -> ErrorReport {
    ErrorReport::new(
        ErrorKind::ShuttingDown,
        "agent shutting down; the copy was abandoned",
    )
}

/// Refuses the copy with `error`, noting it in `report`.
async fn fail(outgoing: &mut impl Outgoing, report: &mut CopyReport, error: ErrorReport) {
    report.outcome = refused(&refuse(outgoing, error).await);
}

/// How long, after refusing a push, we go on reading (and dropping) what
/// the client is still sending. Closing with its data unread would reset
/// the connection, and a reset can destroy our error message before the
/// client has read it; the client stops once it has.
const LAST_WORD: Duration = Duration::from_secs(5);

/// Reads and drops what the client still sends, until it closes or
/// [`LAST_WORD`] passes.
async fn drain(incoming: &mut impl Incoming) {
    let _ = tokio::time::timeout(LAST_WORD, async {
        while let Some(Ok(_)) = incoming.next().await {}
    })
    .await;
}

/// Where a copy may go: as another user, not into `/proc`, where the
/// copying thread, one of the agent's own, would find the agent's process
/// as its own.
fn reach_of(identity: Option<&FsIdentity>) -> Reach {
    match identity {
        Some(_) => Reach::OutsideProc,
        None => Reach::Anywhere,
    }
}

/// What the connection hands a push's worker.
enum ToWriter {
    /// The next piece of the tree.
    Item(CopyItem),
    /// The client said `CopyEnd`: finish, or fail if a file is open.
    Finish,
}

/// The push's disk side, on its own thread: writes items until `Finish`.
/// A channel closed without `Finish` (the client went away) drops the
/// writer, which removes a half-received file.
fn write_tree(
    identity: Option<FsIdentity>,
    dest: PathBuf,
    limit: Option<u64>,
    keep_owners: bool,
    mut items: tokio::sync::mpsc::Receiver<ToWriter>,
) -> Result<(u64, u64), CopyError> {
    let reach = reach_of(identity.as_ref());
    take_identity(identity.as_ref())?;
    // Opened as the copying user, before anything is written: from here on
    // entries are resolved beneath this directory, never through a link.
    let placement = Placement::for_destination_within(&dest, reach)?;
    let mut writer = TreeWriter::new(placement, limit)
        .preserving(keep_owners)
        .allocating_whole_files();
    while let Some(next) = items.blocking_recv() {
        match next {
            ToWriter::Item(CopyItem::File(mut header)) => {
                // Owners are applied only when asked for and allowed.
                if !keep_owners {
                    header.owner = None;
                }
                writer.item(CopyItem::File(header))?;
            }
            ToWriter::Item(item) => writer.item(item)?,
            ToWriter::Finish => return writer.complete("the push ended in the middle of a file"),
        }
    }
    Err(CopyError::new(ErrorKind::Internal, "abandoned"))
}

/// Receives a pushed tree into `request.dest`, as `identity`.
async fn push(
    request: &PushRequest,
    job: Job<'_, impl Incoming, impl Outgoing>,
    mut report: CopyReport,
    identity: Option<FsIdentity>,
    mut keepalive: Keepalive,
) -> CopyReport {
    let (items, queue) = tokio::sync::mpsc::channel(WORKER_QUEUE);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let (dest, limit) = (PathBuf::from(&request.dest), job.settings.max_copy_bytes);
    let keep_owners = request.preserve_owner;
    std::thread::spawn(move || {
        let _ = done_tx.send(write_tree(identity, dest, limit, keep_owners, queue));
    });

    // The client sends all the time during a push; without keepalives, we
    // give it six handshakes' time.
    let bound = keepalive.silence_bound(job.settings.handshake_timeout.saturating_mul(6));
    let mut last_heard = tokio::time::Instant::now();
    // Why the connection side stopped early, if it did.
    let mut stopped: Option<String> = None;
    'receive: loop {
        let silent_at = last_heard
            .checked_add(bound)
            .unwrap_or_else(|| last_heard + Duration::from_secs(86400 * 365));
        let next = tokio::select! {
            next = tokio::time::timeout_at(silent_at, job.incoming.next()) => next,
            () = keepalive.due() => {
                let sent = tokio::time::timeout(bound, job.outgoing.send(AgentMessage::Keepalive)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    stopped = Some("client gone, abandoned".into());
                    break;
                }
                keepalive.sent();
                continue;
            }
            () = job.kill.cancelled() => {
                tell_shut_down(job.outgoing, &mut report, job.settings.kill_grace).await;
                stopped = Some(report.outcome.clone());
                break;
            }
        };
        last_heard = tokio::time::Instant::now();
        // The next item for the worker, or what the client did wrong.
        let item = 'item: {
            let refusal = match next {
                Err(_) => {
                    stopped = Some(format!(
                        "client gone (silent for {}), abandoned",
                        humantime::format_duration(bound)
                    ));
                    break 'receive;
                }
                Ok(None) | Ok(Some(Err(FrameError::Io(_)))) => {
                    stopped = Some("client gone, abandoned".into());
                    break 'receive;
                }
                Ok(Some(Err(e))) => ErrorReport::new(ErrorKind::Protocol, e.to_string()),
                Ok(Some(Ok(message))) => match message {
                    ClientMessage::File(header) => {
                        break 'item ToWriter::Item(CopyItem::File(header));
                    }
                    ClientMessage::FileData(chunk) => {
                        break 'item ToWriter::Item(CopyItem::Data(chunk));
                    }
                    ClientMessage::FileEnd(end) => break 'item ToWriter::Item(CopyItem::End(end)),
                    ClientMessage::Keepalive => continue 'receive,
                    ClientMessage::CopyEnd => {
                        let _ = items.send(ToWriter::Finish).await;
                        break 'receive;
                    }
                    other => ErrorReport::new(
                        ErrorKind::Protocol,
                        format!("unexpected {} during a push", name_of(&other)),
                    ),
                },
            };
            let grace = job.settings.kill_grace;
            refuse_unless_killed(job.outgoing, job.kill, grace, &mut report, refusal).await;
            stopped = Some(report.outcome.clone());
            break 'receive;
        };
        // A closed queue means the worker stopped on an error: it is below.
        if items.send(item).await.is_err() {
            break;
        }
    }
    // Without `Finish` the worker abandons the file it was writing.
    drop(items);
    let mut done = done;
    // The last file's sync can take a while: the client hears from us
    // meanwhile, as it would while we received.
    let result = loop {
        tokio::select! {
            result = &mut done => break result,
            () = keepalive.due(), if stopped.is_none() => {
                let _ = tokio::time::timeout(bound, job.outgoing.send(AgentMessage::Keepalive)).await;
                keepalive.sent();
            }
        }
    }
    .unwrap_or_else(|_| Err(CopyError::new(ErrorKind::Internal, "the copy worker died")));
    match (stopped, result) {
        (Some(why), _) => report.outcome = why,
        (None, Ok((entries, bytes))) => {
            report.entries = entries;
            report.bytes = bytes;
            let done = AgentMessage::CopyDone(CopyDone { entries, bytes });
            match unless_killed(job.kill, finish(job.outgoing, done)).await {
                Some(Ok(())) => {}
                Some(Err(_)) => report.outcome = "client gone after the copy".into(),
                // The copy is complete on disk; the client may not hear it.
                None => {
                    report.outcome = "done; the client was not told (agent shutting down)".into()
                }
            }
        }
        (None, Err(e)) => {
            refuse_unless_killed(
                job.outgoing,
                job.kill,
                job.settings.kill_grace,
                &mut report,
                report_of(e),
            )
            .await;
            drain(job.incoming).await;
        }
    }
    report
}

/// What a pull's worker hands the connection.
enum FromReader {
    Item(CopyItem),
    End { entries: u64, bytes: u64 },
    Failed(CopyError),
}

/// The pull's disk side, on its own thread.
fn read_tree(
    identity: Option<FsIdentity>,
    path: PathBuf,
    recursive: bool,
    owners: bool,
    out: tokio::sync::mpsc::Sender<FromReader>,
) {
    let run = || -> Result<(u64, u64), CopyError> {
        let reach = reach_of(identity.as_ref());
        take_identity(identity.as_ref())?;
        let mut reader = TreeReader::within(&path, recursive, reach)?.with_owners(owners);
        while let Some(item) = reader.next_item()? {
            if out.blocking_send(FromReader::Item(item)).is_err() {
                break;
            }
        }
        Ok((reader.entries, reader.bytes))
    };
    let last = match run() {
        Ok((entries, bytes)) => FromReader::End { entries, bytes },
        Err(e) => FromReader::Failed(e),
    };
    let _ = out.blocking_send(last);
}

/// Sends the file or tree at `request.path`, as `identity`, noticing a
/// client that goes away meanwhile. Every write to the client races the
/// agent's order to end every request: a client that has stopped reading
/// does not hold the agent's shutdown.
async fn pull(
    request: &PullRequest,
    job: Job<'_, impl Incoming, impl Outgoing>,
    mut report: CopyReport,
    identity: Option<FsIdentity>,
    mut keepalive: Keepalive,
) -> CopyReport {
    let (out, mut items) = tokio::sync::mpsc::channel(WORKER_QUEUE);
    let (path, recursive) = (PathBuf::from(&request.path), request.recursive);
    let owners = request.preserve_owner;
    std::thread::spawn(move || read_tree(identity, path, recursive, owners, out));
    let kill = job.kill;
    // Set when the agent's order came, perhaps while we were writing.
    let mut killed = false;
    // What the client is to be told, if the pull ends in a refusal.
    let refusal = loop {
        let next = tokio::select! {
            next = items.recv() => next,
            // The client says nothing during a pull but its keepalives;
            // its end (or garbage) ends the pull. Dropping `items` stops
            // the worker at its next item.
            heard = job.incoming.next() => match heard {
                Some(Ok(ClientMessage::Keepalive)) => continue,
                None | Some(Err(FrameError::Io(_))) => {
                    report.outcome = "client gone, abandoned".into();
                    break None;
                }
                Some(Ok(other)) => {
                    break Some(ErrorReport::new(
                        ErrorKind::Protocol,
                        format!("unexpected {} during a pull", name_of(&other)),
                    ));
                }
                Some(Err(e)) => break Some(ErrorReport::new(ErrorKind::Protocol, e.to_string())),
            },
            () = keepalive.due() => {
                let sent = unless_killed(kill, job.outgoing.send(AgentMessage::Keepalive)).await;
                if ends_pull(sent, &mut report, &mut killed) {
                    break None;
                }
                keepalive.sent();
                continue;
            }
            () = kill.cancelled() => {
                killed = true;
                break None;
            }
        };
        let message = match next {
            Some(FromReader::Item(CopyItem::File(header))) => AgentMessage::File(header),
            Some(FromReader::Item(CopyItem::Data(chunk))) => AgentMessage::FileData(chunk),
            Some(FromReader::Item(CopyItem::End(end))) => AgentMessage::FileEnd(end),
            Some(FromReader::End { entries, bytes }) => {
                report.entries = entries;
                report.bytes = bytes;
                let sent = unless_killed(kill, finish(job.outgoing, AgentMessage::CopyEnd)).await;
                ends_pull(sent, &mut report, &mut killed);
                break None;
            }
            Some(FromReader::Failed(e)) => break Some(report_of(e)),
            None => {
                break Some(ErrorReport::new(
                    ErrorKind::Internal,
                    "the copy worker died",
                ));
            }
        };
        // The sink flushes by itself once enough is buffered, so TCP's
        // flow control paces the reading of files. A worker slow to read
        // must not leave what it did read waiting in our buffer.
        let sent = if items.is_empty() {
            unless_killed(kill, job.outgoing.send(message)).await
        } else {
            unless_killed(kill, job.outgoing.feed(message)).await
        };
        if ends_pull(sent, &mut report, &mut killed) {
            break None;
        }
        keepalive.sent();
    };
    let grace = job.settings.kill_grace;
    match refusal {
        Some(refusal) => {
            refuse_unless_killed(job.outgoing, kill, grace, &mut report, refusal).await
        }
        None if killed => tell_shut_down(job.outgoing, &mut report, grace).await,
        None => {}
    }
    report
}

/// Whether a write to the client (`sent`, as [`unless_killed`] gives it)
/// ends the pull: the client gone (noted in `report`) or the agent's kill
/// order (noted in `killed`).
fn ends_pull<E>(sent: Option<Result<(), E>>, report: &mut CopyReport, killed: &mut bool) -> bool {
    match sent {
        Some(Ok(())) => false,
        Some(Err(_)) => {
            report.outcome = "client gone, abandoned".into();
            true
        }
        None => {
            *killed = true;
            true
        }
    }
}

/// `write` (to the client), unless the agent's order to end every request
/// comes first: then `None`, and the write is dropped.
async fn unless_killed<T>(
    kill: &tokio_util::sync::CancellationToken,
    write: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        done = write => Some(done),
        () = kill.cancelled() => None,
    }
}

/// Refuses the copy with `refusal`, unless the agent's order to end every
/// request comes first: then the client is told that, within the kill
/// grace.
async fn refuse_unless_killed(
    outgoing: &mut impl Outgoing,
    kill: &tokio_util::sync::CancellationToken,
    grace: Duration,
    report: &mut CopyReport,
    refusal: ErrorReport,
) {
    if unless_killed(kill, fail(outgoing, report, refusal))
        .await
        .is_none()
    {
        tell_shut_down(outgoing, report, grace).await;
    }
}

/// The agent is shutting down: as for a command, the client hears why if
/// it still reads, within the kill `grace`.
async fn tell_shut_down(outgoing: &mut impl Outgoing, report: &mut CopyReport, grace: Duration) {
    report.outcome = refused(&shut_down());
    let _ = tokio::time::timeout(grace, fail(outgoing, report, shut_down())).await;
}
