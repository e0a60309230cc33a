//! The signals that stop ctl (SIGINT, SIGTERM, SIGHUP), taken over only
//! when ctl was not started with them ignored: `nohup ctl …` goes on
//! through a hang-up, and a script's `trap '' INT` keeps Ctrl-C from it,
//! as with any other command. (Installing a handler would undo the
//! inherited "ignore".)

use std::io;

use nix::sys::signal::Signal;
use tokio::signal::unix::{self, SignalKind};

/// Whether ctl was started with `sig` ignored: its disposition, asked of
/// the kernel without changing it (`sigaction` with no new action); not
/// ignored where that cannot be asked.
fn ignored_at_start(sig: Signal) -> bool {
    let mut current = std::mem::MaybeUninit::<nix::libc::sigaction>::zeroed();
    // SAFETY: with a null new action, sigaction only writes the current
    // one into `current`, which is large enough for it.
    let asked = unsafe { nix::libc::sigaction(sig as i32, std::ptr::null(), current.as_mut_ptr()) };
    // SAFETY: zeroed is a valid sigaction, and a successful call filled it.
    asked == 0 && unsafe { current.assume_init() }.sa_sigaction == nix::libc::SIG_IGN
}

/// SIGINT, SIGTERM and SIGHUP, each unless ctl was started with it ignored.
pub struct StopSignals {
    interrupt: Option<unix::Signal>,
    terminate: Option<unix::Signal>,
    hangup: Option<unix::Signal>,
}

impl StopSignals {
    /// Takes over the three signals that ctl was not started with ignored.
    ///
    /// # Errors
    /// The runtime could not install a handler.
    pub fn new() -> io::Result<StopSignals> {
        let listen = |sig: Signal| -> io::Result<Option<unix::Signal>> {
            if ignored_at_start(sig) {
                return Ok(None);
            }
            unix::signal(SignalKind::from_raw(sig as i32)).map(Some)
        };
        Ok(StopSignals {
            interrupt: listen(Signal::SIGINT)?,
            terminate: listen(Signal::SIGTERM)?,
            hangup: listen(Signal::SIGHUP)?,
        })
    }

    /// The next of the three to arrive. Cancel safe: a signal that arrives
    /// while this is not being awaited is kept for the next call.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            () = next(&mut self.interrupt) => Signal::SIGINT,
            () = next(&mut self.terminate) => Signal::SIGTERM,
            () = next(&mut self.hangup) => Signal::SIGHUP,
        }
    }
}

/// The next delivery of the signal; never, when there is no stream.
async fn next(stream: &mut Option<unix::Signal>) {
    match stream {
        Some(stream) => {
            stream.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The stop signal that came after [`note_stops_after_the_runtime`], or 0.
static STOPPED_LATE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn note_stop(signal: nix::libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOPPED_LATE.store(signal, std::sync::atomic::Ordering::Relaxed);
}

/// Once the runtime that listened for the stop signals is gone (a fan-out
/// whose hosts all ended), notes them instead, for what ctl still writes
/// (gathered output, `-b`, `--diff`, replayed from its spools) to stop at
/// ([`stopped_late`]). The runtime's own handler stays installed and only
/// wakes listeners that no longer exist: Ctrl-C was lost while a long
/// gathered output went to a slow reader.
pub fn note_stops_after_the_runtime() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(note_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        if !ignored_at_start(sig) {
            // SAFETY: the handler does only an atomic store.
            let _ = unsafe { sigaction(sig, &action) };
        }
    }
}

/// The stop signal noted since [`note_stops_after_the_runtime`], if any.
pub fn stopped_late() -> Option<i32> {
    Some(STOPPED_LATE.load(std::sync::atomic::Ordering::Relaxed)).filter(|&s| s != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{SigHandler, signal};

    #[test]
    fn an_ignored_signal_is_seen_as_ignored_and_left_so() {
        // SIGUSR2: no other test of this binary touches it.
        let sig = Signal::SIGUSR2;
        // SAFETY: SIG_IGN and SIG_DFL install no handler code.
        unsafe { signal(sig, SigHandler::SigIgn) }.unwrap();
        assert!(ignored_at_start(sig));
        assert!(ignored_at_start(sig), "asking changed nothing");
        unsafe { signal(sig, SigHandler::SigDfl) }.unwrap();
        assert!(!ignored_at_start(sig));
    }
}
