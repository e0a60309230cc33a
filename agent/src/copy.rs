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

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use nix::unistd::{Gid, Uid};
use rexec_protocol::copy::{CopyError, CopyItem, Placement, TreeReader, TreeWriter};
use rexec_protocol::{
    AgentMessage, ClientMessage, CopyDone, ErrorKind, ErrorReport, FrameError, PullRequest,
    PushRequest,
};
use tokio_util::sync::CancellationToken;

use crate::config::AgentSettings;
use crate::exec::{Requester, RunAs, name_of, resolve_user};

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

/// The file-system identity a copy's worker thread takes.
#[derive(Debug, Clone)]
struct FsIdentity {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

/// Whom the copy runs as, or why not; refuses a relative path too.
fn authorize(
    user: Option<&str>,
    path: &str,
    requester: Requester<'_>,
    settings: &AgentSettings,
) -> Result<(String, Option<FsIdentity>), ErrorReport> {
    if !path.starts_with('/') {
        return Err(ErrorReport::new(
            ErrorKind::BadRequest,
            format!("remote paths must be absolute: {path:?}"),
        ));
    }
    let RunAs { user, switch } = resolve_user(user, requester, settings)?;
    let identity = switch.map(|groups| FsIdentity {
        uid: user.uid,
        gid: user.gid,
        groups,
    });
    Ok((user.name, identity))
}

/// On the worker thread, before any file work: takes `identity` for this
/// thread only, then gives up every capability of this thread. glibc's
/// `setgroups` and `setresuid` would change every thread of the agent, so
/// the ids are set with the raw system calls; `capset` is per thread by
/// nature.
fn take_identity(identity: Option<&FsIdentity>) -> Result<(), CopyError> {
    let Some(identity) = identity else {
        return Ok(());
    };
    let failed = |what: &str| {
        CopyError::new(
            ErrorKind::Internal,
            format!(
                "cannot take the file-system identity of uid {}: {what}: {}",
                identity.uid,
                std::io::Error::last_os_error()
            ),
        )
    };
    let groups: Vec<nix::libc::gid_t> = identity.groups.iter().map(|g| g.as_raw()).collect();
    // SAFETY: the pointer and length describe `groups`, alive for the call;
    // the system call changes this thread's credentials only.
    let status =
        unsafe { nix::libc::syscall(nix::libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if status != 0 {
        return Err(failed("setgroups"));
    }
    // The whole identity, real, effective and saved, not the fs ids alone:
    // some checks (sysctls under /proc/sys) look at the effective uid. The
    // raw calls change this thread only, a fresh one that ends with the
    // copy; glibc's wrappers would change every thread of the agent.
    let (uid, gid) = (identity.uid.as_raw(), identity.gid.as_raw());
    // SAFETY: plain integer arguments; this thread's credentials only.
    if unsafe { nix::libc::syscall(nix::libc::SYS_setresgid, gid, gid, gid) } != 0 {
        return Err(failed("setresgid"));
    }
    // SAFETY: as above.
    if unsafe { nix::libc::syscall(nix::libc::SYS_setresuid, uid, uid, uid) } != 0 {
        return Err(failed("setresuid"));
    }
    // Both calls report the previous value; asking confirms the change.
    let no_change = Gid::from_raw(u32::MAX);
    if nix::unistd::setfsgid(no_change) != identity.gid {
        return Err(failed("setfsgid"));
    }
    if nix::unistd::setfsuid(Uid::from_raw(u32::MAX)) != identity.uid {
        return Err(failed("setfsuid"));
    }
    drop_capabilities().map_err(|e| {
        CopyError::new(
            ErrorKind::Internal,
            format!("cannot give up the agent's capabilities for the copy: {e}"),
        )
    })
}

/// Clears this thread's effective, permitted and inheritable capability
/// sets, for good: what the thread does next it does with the file-system
/// identity alone, as the user would.
fn drop_capabilities() -> std::io::Result<()> {
    use rustix::thread::{CapabilitySet, CapabilitySets, set_capabilities};
    let none = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    set_capabilities(None, none)?;
    Ok(())
}

fn report_of(e: CopyError) -> ErrorReport {
    ErrorReport::new(e.kind, e.message)
}

async fn fail<W>(outgoing: &mut W, report: &mut CopyReport, error: ErrorReport)
where
    W: Sink<AgentMessage, Error = FrameError> + Unpin,
{
    report.outcome = format!("refused ({}): {}", error.kind, error.message);
    let _ = outgoing.feed(AgentMessage::Error(error)).await;
    let _ = outgoing.close().await;
}

/// The longest the agent waits for the next piece of a push before it takes
/// the client as gone (the client sends all the time during a push).
fn silence_bound(settings: &AgentSettings) -> Duration {
    let keepalive = settings
        .keepalive_interval
        .saturating_mul(settings.keepalive_count.max(1));
    if keepalive.is_zero() {
        settings.handshake_timeout.saturating_mul(6)
    } else {
        keepalive
    }
}

/// The agent's keepalive interval, `None` when it sends none.
fn keepalive_of(settings: &AgentSettings) -> Option<Duration> {
    (!settings.keepalive_interval.is_zero()).then_some(settings.keepalive_interval)
}

/// Resolves when a keepalive is due, `interval` after `last_sent`; never
/// when there is no interval.
async fn keepalive_due(interval: Option<Duration>, last_sent: tokio::time::Instant) {
    match interval.and_then(|i| last_sent.checked_add(i)) {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// How long, after refusing a push, we go on reading (and dropping) what
/// the client is still sending. Closing with its data unread would reset
/// the connection, and a reset can destroy our error message before the
/// client has read it; the client stops once it has.
const LAST_WORD: Duration = Duration::from_secs(5);

/// Reads and drops what the client still sends, until it closes or
/// [`LAST_WORD`] passes.
async fn drain<R>(incoming: &mut R)
where
    R: Stream<Item = Result<ClientMessage, FrameError>> + Unpin,
{
    let _ = tokio::time::timeout(LAST_WORD, async {
        while let Some(Ok(_)) = incoming.next().await {}
    })
    .await;
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
    take_identity(identity.as_ref())?;
    // Opened as the copying user, before anything is written: from here on
    // entries are resolved beneath this directory, never through a link.
    let placement = Placement::for_destination(&dest)?;
    let mut writer = TreeWriter::new(placement, limit).keeping_set_id(keep_owners);
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
            ToWriter::Finish if writer.in_file() => {
                return Err(CopyError::new(
                    ErrorKind::Protocol,
                    "the push ended in the middle of a file",
                ));
            }
            ToWriter::Finish => return Ok((writer.entries, writer.bytes)),
        }
    }
    Err(CopyError::new(ErrorKind::Internal, "abandoned"))
}

/// Receives a pushed tree into `request.dest`.
pub async fn serve_push<R, W>(
    request: &PushRequest,
    requester: Requester<'_>,
    settings: &AgentSettings,
    incoming: &mut R,
    outgoing: &mut W,
    kill: &CancellationToken,
) -> CopyReport
where
    R: Stream<Item = Result<ClientMessage, FrameError>> + Unpin,
    W: Sink<AgentMessage, Error = FrameError> + Unpin,
{
    let mut report = CopyReport::new();
    let identity = match authorize(request.user.as_deref(), &request.dest, requester, settings) {
        Ok((user, identity)) => {
            report.user = user;
            identity
        }
        Err(refusal) => {
            fail(outgoing, &mut report, refusal).await;
            return report;
        }
    };
    let as_root = identity
        .as_ref()
        .map_or(nix::unistd::geteuid(), |i| i.uid)
        .is_root();
    if request.preserve_owner && !as_root {
        let refusal = ErrorReport::new(
            ErrorKind::PermissionDenied,
            format!(
                "keeping owners (-p) needs a copy that runs as root; this one runs as {:?}",
                report.user
            ),
        );
        fail(outgoing, &mut report, refusal).await;
        return report;
    }
    let (items, queue) = tokio::sync::mpsc::channel(WORKER_QUEUE);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let (dest, limit) = (PathBuf::from(&request.dest), settings.max_copy_bytes);
    let keep_owners = request.preserve_owner;
    let keepalive = keepalive_of(settings);
    let started = AgentMessage::CopyStarted { keepalive };
    if outgoing.send(started).await.is_err() {
        report.outcome = "client gone before the copy".into();
        return report;
    }
    std::thread::spawn(move || {
        let _ = done_tx.send(write_tree(identity, dest, limit, keep_owners, queue));
    });

    let bound = silence_bound(settings);
    let mut last_heard = tokio::time::Instant::now();
    let mut last_sent = last_heard;
    // Why the connection side stopped early, if it did.
    let mut stopped: Option<String> = None;
    loop {
        let silent_at = last_heard
            .checked_add(bound)
            .unwrap_or_else(|| last_heard + Duration::from_secs(86400 * 365));
        let next = tokio::select! {
            next = tokio::time::timeout_at(silent_at, incoming.next()) => next,
            () = keepalive_due(keepalive, last_sent) => {
                let sent = tokio::time::timeout(bound, outgoing.send(AgentMessage::Keepalive)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    stopped = Some("client gone, abandoned".into());
                    break;
                }
                last_sent = tokio::time::Instant::now();
                continue;
            }
            () = kill.cancelled() => {
                let refusal = ErrorReport::new(ErrorKind::ShuttingDown, "agent shutting down; the copy was abandoned");
                fail(outgoing, &mut report, refusal).await;
                stopped = Some(report.outcome.clone());
                break;
            }
        };
        last_heard = tokio::time::Instant::now();
        let item = match next {
            Err(_) => {
                stopped = Some(format!(
                    "client gone (silent for {}), abandoned",
                    humantime::format_duration(bound)
                ));
                break;
            }
            Ok(None) | Ok(Some(Err(FrameError::Io(_)))) => {
                stopped = Some("client gone, abandoned".into());
                break;
            }
            Ok(Some(Err(e))) => {
                fail(
                    outgoing,
                    &mut report,
                    ErrorReport::new(ErrorKind::Protocol, e.to_string()),
                )
                .await;
                stopped = Some(report.outcome.clone());
                break;
            }
            Ok(Some(Ok(message))) => match message {
                ClientMessage::File(header) => ToWriter::Item(CopyItem::File(header)),
                ClientMessage::FileData(chunk) => ToWriter::Item(CopyItem::Data(chunk)),
                ClientMessage::FileEnd(end) => ToWriter::Item(CopyItem::End(end)),
                ClientMessage::Keepalive => continue,
                ClientMessage::CopyEnd => {
                    let _ = items.send(ToWriter::Finish).await;
                    break;
                }
                other => {
                    let refusal = ErrorReport::new(
                        ErrorKind::Protocol,
                        format!("unexpected {} during a push", name_of(&other)),
                    );
                    fail(outgoing, &mut report, refusal).await;
                    stopped = Some(report.outcome.clone());
                    break;
                }
            },
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
            () = keepalive_due(keepalive, last_sent), if stopped.is_none() => {
                let _ = tokio::time::timeout(bound, outgoing.send(AgentMessage::Keepalive)).await;
                last_sent = tokio::time::Instant::now();
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
            if outgoing.feed(done).await.is_err() || outgoing.close().await.is_err() {
                report.outcome = "client gone after the copy".into();
            }
        }
        (None, Err(e)) => {
            fail(outgoing, &mut report, report_of(e)).await;
            drain(incoming).await;
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
        take_identity(identity.as_ref())?;
        let mut reader = TreeReader::new(&path, recursive)?.with_owners(owners);
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

/// Sends the file or tree at `request.path`, noticing a client that goes
/// away meanwhile.
pub async fn serve_pull<R, W>(
    request: &PullRequest,
    requester: Requester<'_>,
    settings: &AgentSettings,
    incoming: &mut R,
    outgoing: &mut W,
    kill: &CancellationToken,
) -> CopyReport
where
    R: Stream<Item = Result<ClientMessage, FrameError>> + Unpin,
    W: Sink<AgentMessage, Error = FrameError> + Unpin,
{
    let mut report = CopyReport::new();
    let identity = match authorize(request.user.as_deref(), &request.path, requester, settings) {
        Ok((user, identity)) => {
            report.user = user;
            identity
        }
        Err(refusal) => {
            fail(outgoing, &mut report, refusal).await;
            return report;
        }
    };
    let keepalive = keepalive_of(settings);
    if outgoing
        .feed(AgentMessage::CopyStarted { keepalive })
        .await
        .is_err()
    {
        report.outcome = "client gone before the copy".into();
        return report;
    }
    let (out, mut items) = tokio::sync::mpsc::channel(WORKER_QUEUE);
    let (path, recursive) = (PathBuf::from(&request.path), request.recursive);
    let owners = request.preserve_owner;
    std::thread::spawn(move || read_tree(identity, path, recursive, owners, out));
    let mut last_sent = tokio::time::Instant::now();
    loop {
        let next = tokio::select! {
            next = items.recv() => next,
            // The client says nothing during a pull but its keepalives;
            // its end (or garbage) ends the pull. Dropping `items` stops
            // the worker at its next item.
            heard = incoming.next() => match heard {
                Some(Ok(ClientMessage::Keepalive)) => continue,
                None | Some(Err(FrameError::Io(_))) => {
                    report.outcome = "client gone, abandoned".into();
                    break;
                }
                Some(Ok(other)) => {
                    let refusal = ErrorReport::new(
                        ErrorKind::Protocol,
                        format!("unexpected {} during a pull", name_of(&other)),
                    );
                    fail(outgoing, &mut report, refusal).await;
                    break;
                }
                Some(Err(e)) => {
                    fail(outgoing, &mut report, ErrorReport::new(ErrorKind::Protocol, e.to_string())).await;
                    break;
                }
            },
            () = keepalive_due(keepalive, last_sent) => {
                if outgoing.send(AgentMessage::Keepalive).await.is_err() {
                    report.outcome = "client gone, abandoned".into();
                    break;
                }
                last_sent = tokio::time::Instant::now();
                continue;
            }
            () = kill.cancelled() => {
                let refusal = ErrorReport::new(ErrorKind::ShuttingDown, "agent shutting down; the copy was abandoned");
                fail(outgoing, &mut report, refusal).await;
                break;
            }
        };
        let message = match next {
            Some(FromReader::Item(CopyItem::File(header))) => AgentMessage::File(header),
            Some(FromReader::Item(CopyItem::Data(chunk))) => AgentMessage::FileData(chunk),
            Some(FromReader::Item(CopyItem::End(end))) => AgentMessage::FileEnd(end),
            Some(FromReader::End { entries, bytes }) => {
                report.entries = entries;
                report.bytes = bytes;
                if outgoing.feed(AgentMessage::CopyEnd).await.is_err()
                    || outgoing.close().await.is_err()
                {
                    report.outcome = "client gone, abandoned".into();
                }
                break;
            }
            Some(FromReader::Failed(e)) => {
                fail(outgoing, &mut report, report_of(e)).await;
                break;
            }
            None => {
                fail(
                    outgoing,
                    &mut report,
                    ErrorReport::new(ErrorKind::Internal, "the copy worker died"),
                )
                .await;
                break;
            }
        };
        // The sink flushes by itself once enough is buffered, so TCP's
        // flow control paces the reading of files. A worker slow to read
        // must not leave what it did read waiting in our buffer.
        let flush = items.is_empty();
        let sent = if flush {
            outgoing.send(message).await
        } else {
            outgoing.feed(message).await
        };
        if sent.is_err() {
            report.outcome = "client gone, abandoned".into();
            break;
        }
        last_sent = tokio::time::Instant::now();
    }
    report
}
