//! `ctl cp`: push local files or trees to many hosts, or pull a remote path
//! from many hosts, each over its own authenticated connection.
//!
//! A remote operand is `TARGETS:/ABSOLUTE/PATH`: it splits at the first
//! `:/`, so `h:7723:/tmp`, `[::1]:7722:/tmp` and `node[1-4]:/srv` all work;
//! a local path that contains `:/` is written `./like:/this`. Files move as
//! protocol entries (`rexec_protocol::copy`), one chunk in memory at a
//! time; the receiving side writes each file under a temporary name and
//! renames it into place only once its checksum matched.
//!
//! The jobs here are one host's work; `crate::cmd::cp` runs them through the
//! fan-out engine like every multi-host command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::SinkExt;
use rexec_protocol::copy::{CopyError, CopyItem, Placement, TreeReader, TreeWriter, entry_name};
use rexec_protocol::{
    AgentMessage, ClientMessage, CopyDone, ErrorKind, FrameError, PullRequest, PushRequest,
};
use serde_json::{Map, Value, json};

use crate::connect;
use crate::connect::Client;
use crate::error::{ConnectionError, CtlError, FileError};
use crate::liveness::Liveness;
use crate::outcome::Finished;
use crate::output::{Describe, no_exit};
use crate::target::Target;

/// A `TARGETS:PATH` operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOperand {
    /// The target list.
    pub targets: String,
    /// The absolute remote path.
    pub path: String,
}

/// Splits `TARGETS:/PATH`, or `None` for a local path.
pub fn remote_operand(arg: &str) -> Option<RemoteOperand> {
    if arg.starts_with('/') || arg.starts_with("./") || arg.starts_with("../") {
        return None;
    }
    let at = arg.find(":/")?;
    let (targets, path) = (&arg[..at], &arg[at + 1..]);
    (!targets.is_empty()).then(|| RemoteOperand {
        targets: targets.to_owned(),
        path: path.to_owned(),
    })
}

/// How to copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    /// Directories and everything in them.
    pub recursive: bool,
    /// Keep numeric owners and set-id bits (`-p`; the writing side must be
    /// root).
    pub preserve_owner: bool,
}

/// What a host's copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Entries written (files, directories, links).
    pub entries: u64,
    /// Bytes of file data.
    pub bytes: u64,
    /// BLAKE3 hash of the data, when the copy was one regular file.
    pub blake3: Option<String>,
    /// Files that changed while they were read: their copies hold what
    /// was there when the copy of each began, cut at its size then.
    pub changed: Vec<String>,
}

impl Finished for Copied {}

impl Describe for Copied {
    fn describe(&self, record: &mut Map<String, Value>) {
        record.insert("status".into(), json!("copied"));
        no_exit(record);
        record.insert("entries".into(), json!(self.entries));
        record.insert("bytes".into(), json!(self.bytes));
        record.insert("blake3".into(), json!(self.blake3));
        record.insert("changed".into(), json!(self.changed));
    }
}

impl Copied {
    /// `3 entries, 1048576 bytes`
    pub fn line(&self) -> String {
        format!("{} entries, {} bytes", self.entries, self.bytes)
    }

    /// One note per file that changed while it was read.
    pub fn notes(&self) -> Vec<String> {
        self.changed
            .iter()
            .map(|name| {
                format!(
                    "{name} changed while it was copied; the copy holds its first bytes as they were read"
                )
            })
            .collect()
    }
}

/// Opens each of a push's `sources` once, before any host is reached: a
/// source that cannot be read is one error, not one per host.
///
/// # Errors
/// The first source that cannot be read, in plain words.
pub fn check_sources(sources: &[PathBuf], options: CopyOptions) -> Result<(), CtlError> {
    // Two sources of one name would land on one path, the second over the
    // first (or two trees merged): refused, as cp does, before any host.
    let mut names = std::collections::HashMap::new();
    for source in sources {
        let Ok(name) = entry_name(source) else {
            continue;
        };
        if let Some(first) = names.insert(name, source) {
            return Err(local(CopyError::new(
                ErrorKind::BadRequest,
                format!(
                    "{} and {} have the same name, and would both be copied to one path",
                    first.display(),
                    source.display()
                ),
            )));
        }
    }
    for source in sources {
        TreeReader::new(source, options.recursive).map_err(local)?;
        let Ok(meta) = std::fs::symlink_metadata(source) else {
            continue;
        };
        // A file that is there but cannot be read (mode 000) is found out
        // only by opening it.
        if meta.is_file() {
            std::fs::File::open(source).map_err(|e| local(CopyError::io(source, "read", &e)))?;
        }
        // Nor is a source that is no file at all (a device, a FIFO) before
        // the first host asks for it.
        let kind = meta.file_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            return Err(local(CopyError::not_copyable(source)));
        }
    }
    Ok(())
}

fn local(e: CopyError) -> CtlError {
    match e.kind {
        // Our writer refusing what the agent sent.
        ErrorKind::Protocol => CtlError::Connection(ConnectionError::Protocol(e.message)),
        _ => FileError::Copy(e.message).into(),
    }
}

/// This process's umask, read without changing it (setting it to read it
/// would race with the files other threads create); 022 if unknown.
fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Umask:"))?;
            u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
        })
        .unwrap_or(0o022)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Watches the entries of a copy: the checksum of a copy that turns out to
/// be one regular file, and the files that changed while they were read.
#[derive(Debug, Default)]
struct Watch {
    files: u32,
    entries: u32,
    blake3: Option<String>,
    current: String,
    changed: Vec<String>,
}

impl Watch {
    fn see(&mut self, item: &CopyItem) {
        match item {
            CopyItem::File(header) => {
                self.entries += 1;
                self.current = String::from_utf8_lossy(&header.path).into_owned();
            }
            CopyItem::End(end) => {
                self.files += 1;
                self.blake3 = Some(hex(&end.blake3));
                if end.changed {
                    self.changed.push(crate::plain::agent_text(&self.current));
                }
            }
            CopyItem::Data(_) => {}
        }
    }

    fn checksum(&self) -> Option<String> {
        (self.files == 1 && self.entries == 1)
            .then(|| self.blake3.clone())
            .flatten()
    }
}

/// Why a copy's conversation stopped at `next`, which is none of the
/// messages it expects: the agent's error, a message out of place (named
/// by its kind only: its contents may be large or hostile), a broken
/// connection, or one closed `early`.
fn stopped(next: Option<Result<AgentMessage, FrameError>>, early: &str) -> CtlError {
    match next {
        Some(Ok(AgentMessage::Error(report))) => CtlError::Agent(report),
        Some(Ok(other)) => CtlError::unexpected(&other),
        Some(Err(FrameError::Io(e))) => CtlError::lost_io(&e),
        Some(Err(e)) => ConnectionError::Protocol(e.to_string()).into(),
        None => ConnectionError::Lost(format!("the agent closed the connection {early}")).into(),
    }
}

/// Items queued between a copy's disk thread and its connection.
const DISK_QUEUE: usize = 8;

/// After a send fails, how long we still listen for the agent's reason:
/// an agent that refuses a push says why, then closes, so our next send
/// can fail before we have read its message.
const LAST_WORD: Duration = Duration::from_secs(5);

/// Reads `readers` in turn on a blocking thread; the items, then the end of
/// the channel, or an error as the last item. Dropping the receiver stops
/// the thread at its next item.
fn read_on_a_thread(
    mut readers: Vec<TreeReader>,
) -> (
    tokio::sync::mpsc::Receiver<Result<CopyItem, CopyError>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(DISK_QUEUE);
    let thread = tokio::task::spawn_blocking(move || {
        for reader in &mut readers {
            loop {
                let next = reader.next_item().transpose();
                let Some(item) = next else { break };
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        }
    });
    (rx, thread)
}

/// What the connection hands a pull's disk thread.
enum ToDisk {
    Item(CopyItem),
    /// The agent said `CopyEnd`: finish, or fail if a file is open.
    Finish,
}

/// A pull's disk thread: entries and bytes written, or why it stopped.
type Writing = tokio::task::JoinHandle<Result<(u64, u64), CopyError>>;

/// Writes items with `writer` on a blocking thread until `Finish`; the
/// writer's counts, or why it stopped. A channel closed without `Finish`
/// drops the writer, which removes a half-received file.
fn write_on_a_thread(mut writer: TreeWriter) -> (tokio::sync::mpsc::Sender<ToDisk>, Writing) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(DISK_QUEUE);
    let thread = tokio::task::spawn_blocking(move || {
        while let Some(next) = rx.blocking_recv() {
            match next {
                ToDisk::Item(item) => writer.item(item)?,
                ToDisk::Finish => {
                    return writer.complete("the agent ended the copy in the middle of a file");
                }
            }
        }
        Err(CopyError::new(ErrorKind::Internal, "abandoned"))
    });
    (tx, thread)
}

/// Why the sending side of a push stopped.
enum SendStop {
    /// A local file could not be read.
    Local(CtlError),
    /// The connection refused our data.
    Connection(CtlError),
}

/// Pushes `sources` to `dest` on `target`.
///
/// # Errors
/// Connecting, a local file that cannot be read, the agent's refusal, an
/// agent that falls silent.
pub async fn push(
    client: &Client,
    target: &Target,
    sources: &[PathBuf],
    options: CopyOptions,
    dest: &str,
) -> Result<Copied, CtlError> {
    let mut readers = Vec::new();
    for source in sources {
        let reader = TreeReader::new(source, options.recursive).map_err(local)?;
        readers.push(reader.with_owners(options.preserve_owner));
    }
    let request = ClientMessage::Push(PushRequest {
        dest: dest.to_owned(),
        user: target.user.clone(),
        preserve_owner: options.preserve_owner,
    });
    let session = connect::open(client, target, request).await?;
    let mut incoming = session.connection.incoming;
    let mut outgoing = session.connection.outgoing;
    let lost = |e: FrameError| {
        SendStop::Connection(match e {
            FrameError::Io(io) => CtlError::lost_io(&io),
            other => CtlError::Connection(ConnectionError::Lost(other.to_string())),
        })
    };
    let mut watch = Watch::default();
    // Reading and hashing happen on a thread of their own, beside the
    // encryption and sending here.
    let (mut items, reading) = read_on_a_thread(readers);

    let send = async {
        while let Some(item) = items.recv().await {
            let item = item.map_err(|e| SendStop::Local(local(e)))?;
            watch.see(&item);
            let message = match item {
                CopyItem::File(header) => ClientMessage::File(header),
                CopyItem::Data(chunk) => ClientMessage::FileData(chunk),
                CopyItem::End(end) => ClientMessage::FileEnd(end),
            };
            outgoing.feed(message).await.map_err(lost)?;
        }
        if reading.await.is_err() {
            return Err(SendStop::Local(
                FileError::Copy("reading the files failed".into()).into(),
            ));
        }
        outgoing.feed(ClientMessage::CopyEnd).await.map_err(lost)?;
        outgoing.flush().await.map_err(lost)?;
        // The agent's answer decides; this side has said everything.
        std::future::pending::<Result<std::convert::Infallible, SendStop>>().await
    };
    // The agent may refuse at any point (disk full, a bad path): listen
    // while sending, so that its reason is what the user sees.
    let answer = async {
        let mut alive = Liveness::new();
        loop {
            match alive.next(&mut incoming).await? {
                Some(Ok(AgentMessage::CopyDone(done))) => return Ok(done),
                Some(Ok(AgentMessage::CopyStarted { keepalive })) => alive.started(keepalive),
                Some(Ok(AgentMessage::Keepalive)) => continue,
                next => return Err(stopped(next, "before confirming the copy")),
            }
        }
    };
    tokio::pin!(answer);
    let first: Result<CopyDone, SendStop> = tokio::select! {
        done = &mut answer => done.map_err(SendStop::Local),
        stopped = send => match stopped {
            Err(stop) => Err(stop),
            Ok(never) => match never {},
        },
    };
    let done = match first {
        Ok(done) => done,
        Err(SendStop::Local(e)) => return Err(e),
        // The agent may have said why before it closed: its reason, when
        // it comes, is what the user needs to see.
        Err(SendStop::Connection(e)) => match tokio::time::timeout(LAST_WORD, &mut answer).await {
            Ok(Ok(done)) => done,
            Ok(Err(reason @ CtlError::Agent(_))) => return Err(reason),
            _ => return Err(e),
        },
    };
    Ok(Copied {
        entries: done.entries,
        bytes: done.bytes,
        blake3: watch.checksum(),
        changed: watch.changed,
    })
}

/// Where a pull writes, on this side.
#[derive(Debug, Clone)]
pub enum LocalDestination {
    /// From one host: into this path when it is an existing directory,
    /// else the pulled entry becomes this path (its parent must exist).
    Path(PathBuf),
    /// From several: into `dir/label`, created when missing.
    HostDirectory {
        /// The existing directory.
        dir: PathBuf,
        /// The host's label.
        label: String,
    },
}

/// Pulls `path` from `target` to `local`.
///
/// # Errors
/// Connecting, the agent's refusal, an entry that was not asked for or
/// would leave the destination, a local write that fails, an agent that
/// falls silent.
pub async fn pull(
    client: &Client,
    target: &Target,
    path: &str,
    options: CopyOptions,
    local_dest: &LocalDestination,
) -> Result<Copied, CtlError> {
    // A host that gave nothing (unreachable, the path missing there, the
    // run's timeout or Ctrl-C before anything came) leaves no
    // LOCAL_DIR/HOST behind to look as if it had: removed if it is still
    // an empty directory (never a link someone planted there, nor anything
    // with contents), also when this future is dropped unfinished.
    let mut unused = EmptyHostDirectory(match local_dest {
        LocalDestination::HostDirectory { dir, label } => Some(dir.join(label)),
        LocalDestination::Path(_) => None,
    });
    let pulled = pull_to(client, target, path, options, local_dest).await;
    if pulled.is_ok() {
        unused.0 = None;
    }
    pulled
}

/// A pull's `LOCAL_DIR/HOST`, removed when dropped if it is still empty.
struct EmptyHostDirectory(Option<PathBuf>);

impl Drop for EmptyHostDirectory {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

async fn pull_to(
    client: &Client,
    target: &Target,
    path: &str,
    options: CopyOptions,
    local_dest: &LocalDestination,
) -> Result<Copied, CtlError> {
    let placement = match local_dest {
        LocalDestination::Path(dest) => Placement::for_destination(dest),
        LocalDestination::HostDirectory { dir, label } => Placement::subdirectory(dir, label),
    }
    .map_err(local)?;
    let name = entry_name(Path::new(path)).map_err(local)?;
    let request = ClientMessage::Pull(PullRequest {
        path: path.to_owned(),
        recursive: options.recursive,
        user: target.user.clone(),
        preserve_owner: options.preserve_owner,
    });
    let session = connect::open(client, target, request).await?;
    let mut incoming = session.connection.incoming;
    // Writing and hashing happen on a thread of their own, beside the
    // decryption here; dropping `disk` without `Finish` removes a
    // half-received file.
    let writer = TreeWriter::new(placement, None)
        .expecting(&name, options.recursive)
        .preserving(options.preserve_owner);
    let (disk, writing) = write_on_a_thread(writer);
    let umask = process_umask();
    let mut watch = Watch::default();
    let mut alive = Liveness::new();
    let stopped = loop {
        let next = tokio::select! {
            next = alive.next(&mut incoming) => match next {
                Ok(next) => next,
                Err(e) => break Some(e),
            },
            // The writer stopped on an error (it is below): stop listening
            // too, whatever the agent goes on sending or not.
            () = disk.closed() => break None,
        };
        let item = match next {
            Some(Ok(AgentMessage::File(mut header))) => {
                // As cp and scp: the agent's owners and full modes only
                // with -p, else ours and the umask's.
                if !options.preserve_owner {
                    header.owner = None;
                    header.mode &= !umask;
                }
                CopyItem::File(header)
            }
            Some(Ok(AgentMessage::FileData(chunk))) => CopyItem::Data(chunk),
            Some(Ok(AgentMessage::FileEnd(end))) => CopyItem::End(end),
            Some(Ok(AgentMessage::CopyEnd)) => {
                let _ = disk.send(ToDisk::Finish).await;
                break None;
            }
            Some(Ok(AgentMessage::CopyStarted { keepalive })) => {
                alive.started(keepalive);
                continue;
            }
            Some(Ok(AgentMessage::Keepalive)) => continue,
            next => break Some(stopped(next, "before the copy ended")),
        };
        watch.see(&item);
        // A closed queue means the writer stopped on an error: it is below.
        if disk.send(ToDisk::Item(item)).await.is_err() {
            break None;
        }
    };
    // Without `Finish` the writer abandons the file it was writing.
    drop(disk);
    let written = writing
        .await
        .map_err(|_| CtlError::from(FileError::Copy("writing the files failed".into())))?;
    if let Some(e) = stopped {
        return Err(e);
    }
    let (entries, bytes) = written.map_err(local)?;
    Ok(Copied {
        entries,
        bytes,
        blake3: watch.checksum(),
        changed: watch.changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_operands_split_at_the_first_colon_slash() {
        let r = |t: &str, p: &str| {
            Some(RemoteOperand {
                targets: t.into(),
                path: p.into(),
            })
        };
        assert_eq!(remote_operand("h:/tmp/x"), r("h", "/tmp/x"));
        assert_eq!(remote_operand("h:7723:/tmp"), r("h:7723", "/tmp"));
        assert_eq!(
            remote_operand("[::1]:7722:/srv/a:b"),
            r("[::1]:7722", "/srv/a:b")
        );
        assert_eq!(
            remote_operand("node[1-4],@lab:/srv/"),
            r("node[1-4],@lab", "/srv/")
        );
        assert_eq!(remote_operand("root@h:/etc/motd"), r("root@h", "/etc/motd"));
        for local in [
            "file",
            "./odd:/name",
            "/abs:/x",
            "dir/",
            ":/x",
            "h:relative",
        ] {
            assert_eq!(remote_operand(local), None, "{local}");
        }
    }
}
