//! The open-files limit: ctl raises its soft limit to the hard one at
//! start, as the agent does, and gives the programs it starts the limit
//! it was started with.
//!
//! A fan-out holds a connection per host at once (`--fanout`), and a pull
//! writing a deep tree holds directories open for their modes: together
//! they can pass the usual soft limit of 1,024 long before the hard limit
//! (often 524,288) matters. The programs ctl starts (a group source's
//! shell) get the original soft limit back, since some still use
//! `select(2)`, which breaks with descriptors past 1,023.

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The (soft, hard) limits ctl was started with, once raised.
static STARTED_WITH: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises the soft limit on open files to the hard limit. Does nothing
/// when it cannot.
pub fn raise_open_files() {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        let _ = STARTED_WITH.set((soft, hard));
    }
}

/// Makes `command`'s process start with the limit ctl was started with.
pub fn start_with_the_original_limit(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let Some(&(soft, hard)) = STARTED_WITH.get() else {
        return;
    };
    // SAFETY: setrlimit is async-signal-safe, and the closure only calls
    // it with values computed before the fork.
    unsafe {
        command.pre_exec(move || {
            setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(std::io::Error::from)
        });
    }
}
