//! The command's pipes: its output read chunk by chunk on the exec's own
//! task, and its stdin written from a short queue by a task of its own.

use bytes::{Bytes, BytesMut};
use rexec_protocol::AgentMessage;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// How much one read from a child's pipe may take: one output message at
/// most. With one such buffer per stream this is the memory an exec holds
/// for output; a client that reads slowly slows the child down instead.
const READ_CHUNK: usize = rexec_protocol::MAX_CHUNK_LEN;
/// The capacity we ask for on the child's output pipes (Linux's default is
/// 64 KiB). A larger pipe lets the child write on while we send, so a fast
/// producer is not stopped and woken once per 64 KiB.
const PIPE_CAPACITY: i32 = 1024 * 1024;
/// How many stdin chunks may wait for the child to read them here, besides
/// the one being written. The session holds what has not come this far
/// (at most `STDIN_WINDOW`, the room the client keeps to); chunks are at
/// most `MAX_CHUNK_LEN` (256 KiB), so an exec holds at most 2.5 MiB of stdin.
const STDIN_QUEUE: usize = 1;
/// What we write to a terminal's master when the client's stdin ends: the
/// terminal's end-of-file character, so a reading program sees EOF.
pub const PTY_EOF: u8 = 0x04;

/// Asks for a larger pipe; the default size works too, so a refusal (the
/// system's `pipe-max-size`) is not an error.
pub fn grow_pipe(fd: std::os::fd::RawFd) {
    // SAFETY: `fd` is the child's pipe, open and owned by the Child for the
    // duration of this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_CAPACITY));
}

/// The command's output: stdout and stderr, or the terminal's master as
/// stdout. Read by the exec's own task, so a chunk goes from the pipe to the
/// socket without a hand-over between tasks (and threads) on the way.
#[derive(Default)]
pub struct Output {
    /// The command's stdout, or its terminal.
    pub stdout: OutputStream,
    /// The command's stderr.
    pub stderr: OutputStream,
}

impl Output {
    /// The child's stdout and stderr pipes, taken from it and grown to
    /// [`PIPE_CAPACITY`]; a stream the child has no pipe for stays ended.
    pub fn take_pipes(child: &mut tokio::process::Child) -> Output {
        let mut output = Output::default();
        if let Some(pipe) = child.stdout.take() {
            grow_pipe(std::os::fd::AsRawFd::as_raw_fd(&pipe));
            output.stdout = OutputStream::new(pipe, AgentMessage::Stdout);
        }
        if let Some(pipe) = child.stderr.take() {
            grow_pipe(std::os::fd::AsRawFd::as_raw_fd(&pipe));
            output.stderr = OutputStream::new(pipe, AgentMessage::Stderr);
        }
        output
    }

    /// Whether either stream may still have output.
    pub fn is_open(&self) -> bool {
        self.stdout.reader.is_some() || self.stderr.reader.is_some()
    }

    /// The next chunk from whichever stream has one; `None` once both
    /// reached their end. Cancel-safe: when dropped unfinished, nothing was
    /// read.
    pub async fn next(&mut self) -> Option<AgentMessage> {
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
pub struct OutputStream {
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
    /// Reads `reader`, each chunk wrapped by `wrap`.
    pub fn new<R>(reader: R, wrap: fn(Bytes) -> AgentMessage) -> Self
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
pub async fn reserve(stdin: Option<mpsc::Sender<Bytes>>) -> Option<mpsc::OwnedPermit<Bytes>> {
    stdin?.reserve_owned().await.ok()
}

/// The task writing a command's stdin, ended when this is dropped (at the
/// end of the exec). Without it, a process the command left running with
/// its stdin (`setsid sleep 120 <&0 &`), which never reads, would keep the
/// writer waiting, and with it the pipe and the chunk, after the session
/// ended: a descriptor and up to a chunk of memory per session, for ever.
pub struct StdinTask(tokio::task::AbortHandle);

impl Drop for StdinTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the task that writes the client's stdin into `stdin`; `eof` is
/// written at the end when closing is not possible (a terminal). Dropping
/// the sender lets the task write what it was given and close; dropping
/// the [`StdinTask`] ends it at once.
pub fn spawn_stdin_writer<P>(mut stdin: P, eof: Option<u8>) -> (mpsc::Sender<Bytes>, StdinTask)
where
    P: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Bytes>(STDIN_QUEUE);
    let task = tokio::spawn(async move {
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
    (tx, StdinTask(task.abort_handle()))
}
