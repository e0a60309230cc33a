//! The signals that stop ctl (SIGINT, SIGTERM, SIGHUP), taken over only
//! when ctl was not started with them ignored: `nohup ctl …` goes on
//! through a hang-up, and a script's `trap '' INT` keeps Ctrl-C from it,
//! as with any other command. (Installing a handler would undo the
//! inherited "ignore".)

use std::io;

use nix::sys::signal::Signal;
use tokio::signal::unix::{self, SignalKind};

/// The signals ctl started with ignored, read from the kernel's view of
/// this process (`SigIgn:` in /proc/self/status); none where that cannot be
/// read.
fn ignored_at_start() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| ignored_mask(&status))
        .unwrap_or(0)
}

fn ignored_mask(status: &str) -> Option<u64> {
    let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
    u64::from_str_radix(mask.trim(), 16).ok()
}

fn is_set(mask: u64, sig: Signal) -> bool {
    mask & (1 << (sig as u32 - 1)) != 0
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
        let ignored = ignored_at_start();
        let listen = |sig: Signal| -> io::Result<Option<unix::Signal>> {
            if is_set(ignored, sig) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ignored_mask() {
        // SIGHUP (1) and SIGINT (2) ignored, SIGTERM (15) not.
        let status = "Name:\tctl\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000003\n";
        let mask = ignored_mask(status).unwrap();
        assert!(is_set(mask, Signal::SIGHUP));
        assert!(is_set(mask, Signal::SIGINT));
        assert!(!is_set(mask, Signal::SIGTERM));
        assert_eq!(ignored_mask("Name:\tctl\n"), None);
    }
}
