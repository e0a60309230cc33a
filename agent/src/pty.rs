//! Pseudo-terminals for `ctl exec -t`: opening the pair, making the slave the
//! command's controlling terminal, and the master as an async byte stream.
//!
//! The exec runner owns the command's lifecycle; this module only knows
//! terminals. The master is read and written through non-blocking file
//! descriptors registered with tokio, so a quiet terminal costs no thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{Winsize, grantpt, posix_openpt, ptsname_r, unlockpt};
use rexec_protocol::WindowSize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

nix::ioctl_write_ptr_bad!(set_window_size, nix::libc::TIOCSWINSZ, Winsize);
nix::ioctl_write_int_bad!(set_controlling_terminal, nix::libc::TIOCSCTTY);

/// A freshly opened terminal pair.
#[derive(Debug)]
pub struct PtyPair {
    /// The side the agent reads and writes.
    pub master: OwnedFd,
    /// The side the command gets as stdin, stdout and stderr.
    pub slave: OwnedFd,
}

fn winsize(size: WindowSize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Opens a terminal pair of `size`.
///
/// Both ends are close-on-exec from the moment they exist: another
/// session's command, spawned by another thread meanwhile, must never hold
/// this terminal (its master would let it read the screen of, and type
/// into, a shell that may be root's). The command gets its copies of the
/// slave as stdin, stdout and stderr, which the spawn makes.
///
/// # Errors
/// When the system has no terminal to give.
pub fn open(size: WindowSize) -> io::Result<PtyPair> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave = open_slave(&master)?;
    let master = OwnedFd::from(master);
    resize(&master, size)?;
    Ok(PtyPair { master, slave })
}

/// The slave of `master`, close-on-exec: asked of the master itself
/// (`TIOCGPTPEER`, no path to race on), else opened by its name.
fn open_slave(master: &nix::pty::PtyMaster) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let flags = nix::libc::O_RDWR | nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags and returns a new descriptor,
    // which we then own.
    let fd = unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCGPTPEER, flags) };
    if fd >= 0 {
        // SAFETY: a fresh descriptor no one else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let name = ptsname_r(master)?;
    let oflags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    Ok(nix::fcntl::open(
        name.as_str(),
        oflags,
        nix::sys::stat::Mode::empty(),
    )?)
}

/// Sets the terminal's size; the kernel tells the foreground job (SIGWINCH).
///
/// # Errors
/// When the descriptor is not a terminal.
pub fn resize(master: &impl AsFd, size: WindowSize) -> io::Result<()> {
    let ws = winsize(size);
    // SAFETY: the descriptor is valid for the call and `ws` outlives it.
    unsafe { set_window_size(master.as_fd().as_raw_fd(), &ws) }
        .map(drop)
        .map_err(io::Error::from)
}

/// In the child, between fork and exec: a new session whose controlling
/// terminal is the one on stdin. Only async-signal-safe calls.
///
/// # Errors
/// When either call fails; the spawn then fails with that error.
pub fn become_session_leader_of_stdin() -> io::Result<()> {
    nix::unistd::setsid().map_err(io::Error::from)?;
    // SAFETY: fd 0 is the slave terminal, set up by the spawn.
    unsafe { set_controlling_terminal(0, 0) }
        .map(drop)
        .map_err(io::Error::from)
}

/// One direction of a terminal master, as an async stream. Reading returns
/// end of file once every copy of the slave is closed (the kernel says EIO).
#[derive(Debug)]
pub struct MasterStream(AsyncFd<OwnedFd>);

impl MasterStream {
    /// Wraps a duplicate of `master`, made non-blocking.
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated or registered.
    pub fn new(master: &OwnedFd) -> io::Result<MasterStream> {
        let fd = master.try_clone()?;
        let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // SAFETY: the AsyncFd owns `fd`, so it stays open and the same
        // descriptor for the AsyncFd's whole life.
        let registered = unsafe { AsyncFd::register(fd) }?;
        Ok(MasterStream(registered))
    }
}

impl AsyncRead for MasterStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Linux reports a terminal whose slave side is all closed as EIO.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for MasterStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_written_to_the_slave_come_out_of_the_master_until_eio() {
        let pair = open(WindowSize { cols: 80, rows: 24 }).unwrap();
        let mut master = MasterStream::new(&pair.master).unwrap();
        nix::unistd::write(&pair.slave, b"hello\n").unwrap();
        let mut buf = [0u8; 64];
        let n = master.read(&mut buf).await.unwrap();
        // The terminal's output processing turns \n into \r\n.
        assert_eq!(&buf[..n], b"hello\r\n");
        drop(pair.slave);
        assert_eq!(master.read(&mut buf).await.unwrap(), 0, "EIO reads as EOF");
    }

    #[tokio::test]
    async fn bytes_written_to_the_master_reach_the_slave() {
        let pair = open(WindowSize { cols: 80, rows: 24 }).unwrap();
        let mut master = MasterStream::new(&pair.master).unwrap();
        master.write_all(b"typed\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(&pair.slave, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"typed\n");
        resize(
            &pair.master,
            WindowSize {
                cols: 100,
                rows: 30,
            },
        )
        .unwrap();
    }
}
