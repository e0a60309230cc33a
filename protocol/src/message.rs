//! Every message that crosses the wire, in both directions.
//!
//! This module owns the shape of the messages, not their bytes: encoding
//! lives in [`crate::codec`]. The order in which messages may appear is
//! written down in the crate docs and enforced by the agent's session and by
//! `ctl`.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::exec::{ExecRequest, ExitStatus, PtyRequest, RemoteSignal, WindowSize};
use crate::job::{DetachRequest, JobRequest, JobStream, JobSummary};

/// The protocol version this build speaks. Bumped on any change to the
/// messages below; peers of different versions refuse each other with an
/// [`ErrorKind::VersionMismatch`] that names both versions.
pub const PROTOCOL_VERSION: u32 = 4;

/// How many bytes of stdin a client may have sent that the agent has not
/// yet handed to the command ([`AgentMessage::StdinTaken`] gives room
/// back). The agent so can always read the whole of what is in flight, and
/// a signal sent behind stdin a command leaves unread still reaches it.
/// As much as TCP kept in flight before (loopback's buffers), so stdin's
/// throughput stays. Protocol 4.
pub const STDIN_WINDOW: u32 = 2 * 1024 * 1024;

/// The first message each side sends after the TLS handshake.
///
/// Its encoding must never change between versions, so that a peer of any
/// version can at least read the other's version and say which it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The sender's software name and version, for humans (`rexec-agent 0.1.0`).
    pub software: String,
}

impl Hello {
    /// The hello of this build, naming `software` (e.g. `"ctl 0.1.0"`).
    pub fn new(software: impl Into<String>) -> Self {
        Hello {
            protocol: PROTOCOL_VERSION,
            software: software.into(),
        }
    }
}

/// Messages from `ctl` to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ClientMessage {
    /// Always first.
    Hello(Hello),
    /// The connection's one request: run a command.
    Exec(ExecRequest),
    /// The connection's one request: answer with [`AgentMessage::Pong`].
    Ping,
    /// A chunk of the command's standard input (only after an exec that asked for stdin).
    Stdin(Bytes),
    /// The command's standard input is finished; the agent closes the pipe.
    StdinEof,
    /// Deliver a signal to the command's whole process group.
    Signal(RemoteSignal),
    /// The client's terminal changed size (only for an exec with a pty).
    WindowSize(WindowSize),
    /// Proof of life, sent in answer to the agent's [`AgentMessage::Keepalive`].
    Keepalive,
    /// The connection's one request: receive files into `dest`; the
    /// entries follow as [`ClientMessage::File`] and friends.
    Push(PushRequest),
    /// The connection's one request: send the file or tree at `path`.
    Pull(PullRequest),
    /// A pushed entry begins; data and end follow for a regular file.
    File(FileHeader),
    /// A chunk of the current file's bytes, in order.
    FileData(Bytes),
    /// The current file is complete.
    FileEnd(FileEnd),
    /// No more entries: the push is complete.
    CopyEnd,
    /// The connection's one request: start a detached job.
    Detach(DetachRequest),
    /// The connection's one request: about jobs already started.
    Job(JobRequest),
}

/// Messages from the agent to `ctl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AgentMessage {
    /// Always first.
    Hello(Hello),
    /// The answer to [`ClientMessage::Ping`]; last.
    Pong,
    /// The command was spawned with this process id (also its process group id).
    Started {
        /// The remote process id of the shell.
        pid: u32,
        /// How often the agent sends [`AgentMessage::Keepalive`] while it
        /// has nothing else to send; `None` when it sends none. The client
        /// may take a silence of several intervals as a dead agent.
        keepalive: Option<Duration>,
    },
    /// A chunk of the command's standard output, in the order it was written.
    Stdout(Bytes),
    /// A chunk of the command's standard error, in the order it was written.
    Stderr(Bytes),
    /// How the command ended; last, sent only after both output pipes reached EOF.
    Exit(ExitStatus),
    /// The request failed or the session was ended by the agent; last.
    Error(ErrorReport),
    /// Sent when the session has been quiet for the keepalive interval; the
    /// client answers with [`ClientMessage::Keepalive`]. A client that does
    /// not answer within the agent's bound is taken as gone.
    Keepalive,
    /// A pulled entry begins; data and end follow for a regular file.
    File(FileHeader),
    /// A chunk of the current file's bytes, in order.
    FileData(Bytes),
    /// The current file is complete.
    FileEnd(FileEnd),
    /// No more entries: the pull is complete; last.
    CopyEnd,
    /// Every pushed entry is in place; last.
    CopyDone(CopyDone),
    /// A push or pull has been accepted: first after `Hello`. The agent
    /// then sends [`AgentMessage::Keepalive`] whenever it has been quiet
    /// for `keepalive`, so that the client can take a longer silence as a
    /// dead agent.
    CopyStarted {
        /// The agent's keepalive interval; `None` when it sends none.
        keepalive: Option<Duration>,
    },
    /// The jobs a list request may see; last.
    Jobs(Vec<JobSummary>),
    /// A job as it stands: the answer to a detach, kill or forget, and the
    /// last message of an output or wait request.
    Job(JobSummary),
    /// An output or wait request was accepted: first after `Hello`.
    JobStream(JobStream),
    /// The command took (or, its stdin closed, the agent dropped) this many
    /// bytes of the stdin the client sent: room for as many more within
    /// [`STDIN_WINDOW`]. Protocol 4.
    StdinTaken(u32),
}

/// A request to receive files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// Where they go: into it when it is an existing directory, else the
    /// one top-level entry becomes this path.
    pub dest: String,
    /// Write as this user (subject to the agent's run-as rules).
    pub user: Option<String>,
    /// The entries carry owners to apply (`ctl cp -p`); only a copy that
    /// runs as root may.
    pub preserve_owner: bool,
}

/// A request to send a file or a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The absolute path to send.
    pub path: String,
    /// Send a directory and everything in it.
    pub recursive: bool,
    /// Read as this user (subject to the agent's run-as rules).
    pub user: Option<String>,
    /// Send each entry's owner (`ctl cp -p`).
    pub preserve_owner: bool,
}

/// One entry of a copied tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// The entry's path relative to the copy's top, components separated by
    /// `/`, as raw bytes (names need not be UTF-8). The first component is
    /// the top-level entry's own name.
    pub path: Bytes,
    /// What it is.
    pub kind: FileKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// The numeric owner, when the copy keeps owners.
    pub owner: Option<Owner>,
}

/// A file's numeric owner. Numbers, not names: lab machines share them
/// (one directory service), as `rsync --numeric-ids` assumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The kinds of entries a copy carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FileKind {
    /// A regular file of this many bytes; its data and end follow.
    File {
        /// The size announced before the data.
        size: u64,
    },
    /// A directory; its entries follow it.
    Directory,
    /// A symbolic link with this target (never followed).
    Symlink {
        /// The link's target, as raw bytes.
        target: Bytes,
    },
}

/// The end of a regular file's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEnd {
    /// BLAKE3 hash (32 bytes) of the data as the sender read it; the
    /// receiver checks it before the file takes its name.
    pub blake3: Bytes,
    /// The file changed while it was read (it grew, or was written to):
    /// the data is the first `size` bytes as they were read, not
    /// necessarily one moment's state of the file.
    pub changed: bool,
}

/// What a completed push put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyDone {
    /// Entries written (files, directories, links).
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// Why a request failed, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// What kind of failure, for programs.
    pub kind: ErrorKind,
    /// What happened, for humans.
    pub message: String,
}

impl ErrorReport {
    /// A report of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorReport {
            kind,
            message: message.into(),
        }
    }
}

/// The kinds of failure an agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The peers speak different protocol versions.
    VersionMismatch,
    /// A message arrived that the protocol does not allow at that point.
    Protocol,
    /// The request was well formed but cannot be carried out as asked.
    BadRequest,
    /// The requested working directory does not exist.
    NoSuchDirectory,
    /// The request is not permitted for this client.
    PermissionDenied,
    /// The command could not be started.
    SpawnFailed,
    /// The agent is at its limit of concurrent sessions.
    Busy,
    /// The agent is shutting down.
    ShuttingDown,
    /// Something failed inside the agent.
    Internal,
    /// A path does not exist or is not what the request needs.
    NoSuchFile,
    /// The data did not match its checksum.
    ChecksumMismatch,
    /// The file system refused a write (disk full, read-only, quota).
    WriteFailed,
    /// A copy exceeds the agent's size limit.
    TooLarge,
    /// No job of that id that this client may see.
    NoSuchJob,
}

impl ErrorKind {
    /// A short stable name, used in logs and machine-readable output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::VersionMismatch => "version-mismatch",
            ErrorKind::Protocol => "protocol",
            ErrorKind::BadRequest => "bad-request",
            ErrorKind::NoSuchDirectory => "no-such-directory",
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::SpawnFailed => "spawn-failed",
            ErrorKind::Busy => "busy",
            ErrorKind::ShuttingDown => "shutting-down",
            ErrorKind::NoSuchFile => "no-such-file",
            ErrorKind::ChecksumMismatch => "checksum-mismatch",
            ErrorKind::WriteFailed => "write-failed",
            ErrorKind::TooLarge => "too-large",
            ErrorKind::NoSuchJob => "no-such-job",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
