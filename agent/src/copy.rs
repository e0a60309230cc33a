//! Copies on the agent: receiving a pushed tree into place and sending a
//! pulled one, over a session whose request has been read.
//!
//! The file system work (names, temporary files, checksums, renames) is
//! `rexec_protocol::copy`'s; this module moves its items between the
//! connection and the disk, and decides who may copy where. Copies run as
//! the agent's own user: reading and writing as another user would need
//! the same care as running a command as one, and is refused for now.

use std::path::Path;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use nix::unistd::{User, geteuid};
use rexec_protocol::copy::{CopyError, CopyItem, Placement, TreeReader, TreeWriter};
use rexec_protocol::{
    AgentMessage, ClientMessage, CopyDone, ErrorKind, ErrorReport, FrameError, PullRequest,
    PushRequest,
};
use tokio_util::sync::CancellationToken;

use crate::config::AgentSettings;
use crate::exec::name_of;

/// How a copy ended, for the audit log.
#[derive(Debug, Clone)]
pub struct CopyReport {
    /// `done`, or why not.
    pub outcome: String,
    /// Entries sent or put in place.
    pub entries: u64,
    /// Bytes of file data sent or put in place.
    pub bytes: u64,
}

impl CopyReport {
    fn new() -> Self {
        CopyReport {
            outcome: "done".into(),
            entries: 0,
            bytes: 0,
        }
    }
}

/// Refuses a copy as another user, and a relative path.
fn check(user: Option<&str>, path: &str) -> Result<(), ErrorReport> {
    let own = User::from_uid(geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    if let Some(wanted) = user {
        if wanted != own {
            return Err(ErrorReport::new(
                ErrorKind::PermissionDenied,
                format!("copies run as the agent's own user ({own:?}) only, not as {wanted:?}"),
            ));
        }
    }
    if !path.starts_with('/') {
        return Err(ErrorReport::new(
            ErrorKind::BadRequest,
            format!("remote paths must be absolute: {path:?}"),
        ));
    }
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
    let keepalive = settings.keepalive_interval * settings.keepalive_count.max(1);
    if keepalive.is_zero() {
        settings.handshake_timeout * 6
    } else {
        keepalive
    }
}

/// Receives a pushed tree into `request.dest`.
pub async fn serve_push<R, W>(
    request: &PushRequest,
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
    if let Err(refusal) = check(request.user.as_deref(), &request.dest) {
        fail(outgoing, &mut report, refusal).await;
        return report;
    }
    let dest = Path::new(&request.dest);
    let placement = Placement::for_destination(dest);
    if let Placement::As(path) = &placement {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if !parent.is_some_and(Path::is_dir) {
            let refusal = ErrorReport::new(
                ErrorKind::NoSuchFile,
                format!("no such directory: {}", parent.unwrap_or(path).display()),
            );
            fail(outgoing, &mut report, refusal).await;
            return report;
        }
    }
    // Dropped on every way out, which removes a half-received file.
    let mut writer = TreeWriter::new(placement, settings.max_copy_bytes);
    let bound = silence_bound(settings);
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(bound, incoming.next()) => next,
            () = kill.cancelled() => {
                let refusal = ErrorReport::new(ErrorKind::ShuttingDown, "agent shutting down; the copy was abandoned");
                fail(outgoing, &mut report, refusal).await;
                break;
            }
        };
        let item = match next {
            Err(_) => {
                report.outcome = format!(
                    "client gone (silent for {}), abandoned",
                    humantime::format_duration(bound)
                );
                break;
            }
            Ok(None) | Ok(Some(Err(FrameError::Io(_)))) => {
                report.outcome = "client gone, abandoned".into();
                break;
            }
            Ok(Some(Err(e))) => {
                fail(
                    outgoing,
                    &mut report,
                    ErrorReport::new(ErrorKind::Protocol, e.to_string()),
                )
                .await;
                break;
            }
            Ok(Some(Ok(message))) => match message {
                ClientMessage::File(header) => CopyItem::File(header),
                ClientMessage::FileData(chunk) => CopyItem::Data(chunk),
                ClientMessage::FileEnd(end) => CopyItem::End(end),
                ClientMessage::Keepalive => continue,
                ClientMessage::CopyEnd if !writer.in_file() => {
                    report.entries = writer.entries;
                    report.bytes = writer.bytes;
                    let done = AgentMessage::CopyDone(CopyDone {
                        entries: writer.entries,
                        bytes: writer.bytes,
                    });
                    if outgoing.feed(done).await.is_err() || outgoing.close().await.is_err() {
                        report.outcome = "client gone after the copy".into();
                    }
                    return report;
                }
                other => {
                    let refusal = ErrorReport::new(
                        ErrorKind::Protocol,
                        format!("unexpected {} during a push", name_of(&other)),
                    );
                    fail(outgoing, &mut report, refusal).await;
                    break;
                }
            },
        };
        if let Err(e) = writer.item(item) {
            fail(outgoing, &mut report, report_of(e)).await;
            break;
        }
    }
    report.entries = writer.entries;
    report.bytes = writer.bytes;
    report
}

/// Sends the file or tree at `request.path`.
pub async fn serve_pull<W>(
    request: &PullRequest,
    outgoing: &mut W,
    kill: &CancellationToken,
) -> CopyReport
where
    W: Sink<AgentMessage, Error = FrameError> + Unpin,
{
    let mut report = CopyReport::new();
    if let Err(refusal) = check(request.user.as_deref(), &request.path) {
        fail(outgoing, &mut report, refusal).await;
        return report;
    }
    let mut reader = match TreeReader::new(Path::new(&request.path), request.recursive) {
        Ok(reader) => reader,
        Err(e) => {
            fail(outgoing, &mut report, report_of(e)).await;
            return report;
        }
    };
    loop {
        if kill.is_cancelled() {
            let refusal = ErrorReport::new(
                ErrorKind::ShuttingDown,
                "agent shutting down; the copy was abandoned",
            );
            fail(outgoing, &mut report, refusal).await;
            break;
        }
        let message = match reader.next_item() {
            Ok(Some(CopyItem::File(header))) => AgentMessage::File(header),
            Ok(Some(CopyItem::Data(chunk))) => AgentMessage::FileData(chunk),
            Ok(Some(CopyItem::End(end))) => AgentMessage::FileEnd(end),
            Ok(None) => {
                if outgoing.feed(AgentMessage::CopyEnd).await.is_err()
                    || outgoing.close().await.is_err()
                {
                    report.outcome = "client gone, abandoned".into();
                }
                break;
            }
            Err(e) => {
                fail(outgoing, &mut report, report_of(e)).await;
                break;
            }
        };
        // The sink flushes by itself once enough is buffered, so TCP's
        // flow control paces the reading of files.
        if outgoing.feed(message).await.is_err() {
            report.outcome = "client gone, abandoned".into();
            break;
        }
    }
    report.entries = reader.entries;
    report.bytes = reader.bytes;
    report
}
