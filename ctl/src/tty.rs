//! The local terminal, for `ctl exec -t`: its size, and raw mode that is put
//! back however ctl ends (normal exit, error, remote hang-up, signal
//! forwarded).
//!
//! Raw mode hands every key, Ctrl-C included, to the remote terminal, whose
//! line discipline turns it into a signal for the remote job, as ssh -t does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::termios::{self, SetArg, Termios};
use rexec_protocol::{PtyRequest, WindowSize};

nix::ioctl_read_bad!(get_window_size, nix::libc::TIOCGWINSZ, nix::pty::Winsize);

/// The size used when the local side is not a terminal.
pub const DEFAULT_SIZE: WindowSize = WindowSize { cols: 80, rows: 24 };

/// The size of the terminal on `fd`, if it is one.
pub fn size(fd: BorrowedFd<'_>) -> Option<WindowSize> {
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the descriptor is valid for the call and `ws` is a valid out pointer.
    unsafe { get_window_size(fd.as_raw_fd(), &mut ws) }.ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some(WindowSize {
        cols: ws.ws_col,
        rows: ws.ws_row,
    })
}

/// The size of our terminal: stdin's, else stdout's, else the default.
pub fn current_size() -> WindowSize {
    size(io::stdin().as_fd())
        .or_else(|| size(io::stdout().as_fd()))
        .unwrap_or(DEFAULT_SIZE)
}

/// What to ask the agent for: our `TERM` (or `xterm-256color`) and size.
pub fn pty_request() -> PtyRequest {
    let term = std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "xterm-256color".to_owned());
    PtyRequest {
        term,
        size: current_size(),
    }
}

/// Our stdin in raw mode until dropped, when its settings are restored.
#[derive(Debug)]
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Puts stdin in raw mode when it is a terminal; `None` when it is not.
    ///
    /// # Errors
    /// When stdin is a terminal whose settings cannot be changed.
    pub fn enter() -> io::Result<Option<RawMode>> {
        let stdin = io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return Ok(None);
        };
        let fd = stdin.as_fd().try_clone_to_owned()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&fd, SetArg::TCSADRAIN, &raw).map_err(io::Error::from)?;
        Ok(Some(RawMode { fd, saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.fd, SetArg::TCSADRAIN, &self.saved);
    }
}
