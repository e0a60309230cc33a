//! The signals that stop ctl (SIGINT, SIGTERM, SIGHUP), taken over only
//! when ctl was not started with them ignored: `nohup ctl …` goes on
//! through a hang-up, and a script's `trap '' INT` keeps Ctrl-C from it,
//! as with any other command. (Installing a handler would undo the
//! inherited "ignore".)

use std::io;

use nix::sys::signal::Signal;
use tokio::signal::unix::{self, SignalKind};

/// Whether `sig` was ignored when ctl started, read from the kernel's view
/// of this process (`SigIgn:` in /proc/self/status). Where that cannot be
/// read, the signal counts as not ignored.
pub fn ignored(sig: Signal) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| ignored_in(&status, sig))
        .unwrap_or(false)
}

fn ignored_in(status: &str, sig: Signal) -> Option<bool> {
    let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
    let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
    Some(mask & (1 << (sig as u32 - 1)) != 0)
}

/// A stream of `sig`, or `None` when ctl was started with it ignored.
///
/// # Errors
/// The runtime could not install the handler.
pub fn unless_ignored(sig: Signal) -> io::Result<Option<unix::Signal>> {
    if ignored(sig) {
        return Ok(None);
    }
    unix::signal(SignalKind::from_raw(sig as i32)).map(Some)
}

/// The next delivery of the signal; never, when there is no stream.
pub async fn next(stream: &mut Option<unix::Signal>) {
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
        assert_eq!(ignored_in(status, Signal::SIGHUP), Some(true));
        assert_eq!(ignored_in(status, Signal::SIGINT), Some(true));
        assert_eq!(ignored_in(status, Signal::SIGTERM), Some(false));
        assert_eq!(ignored_in("Name:\tctl\n", Signal::SIGHUP), None);
    }
}
