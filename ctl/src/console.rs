//! Our stdout and stderr during a multi-host run: the progress line (only
//! when stderr is a terminal), writes that never tear it or each other,
//! the record of output we could not write (a closed pipe, a full disk),
//! which cancels the run, and which hosts are running (printed when Enter
//! is pressed on the terminal, and after Ctrl-C).
//!
//! Every multi-host command writes through here; what it writes (prefixed
//! lines, JSON, notes) is decided by its output mode (`crate::output`).

use std::collections::BTreeSet;
use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::plain;

/// Which of a command's outputs a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Our stdout and stderr during a multi-host run, and the progress line
/// (shown only when stderr is a terminal, never on a pipe).
#[derive(Debug)]
pub struct Console {
    progress: Option<ProgressBar>,
    running: AtomicUsize,
    /// The hosts whose jobs run now; after a cancellation, those that were
    /// running when it came.
    running_hosts: Mutex<BTreeSet<usize>>,
    failed: AtomicUsize,
    broken_pipe: AtomicBool,
    /// The first output of ours that could not be written (stdout on a
    /// full disk, a file of `-o`): the run then fails, whatever the hosts did.
    lost: Mutex<Option<String>>,
    cancel: CancellationToken,
}

impl Console {
    /// A console for `total` hosts; `cancel` is cancelled when our stdout's
    /// reader goes away.
    pub fn new(total: usize, cancel: CancellationToken) -> Console {
        let progress = io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total as u64),
                ProgressDrawTarget::stderr_with_hz(10),
            );
            if let Ok(style) =
                ProgressStyle::with_template("{elapsed} [{bar:30}] {pos}/{len} done, {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Console {
            progress,
            running: AtomicUsize::new(0),
            running_hosts: Mutex::default(),
            failed: AtomicUsize::new(0),
            broken_pipe: AtomicBool::new(false),
            lost: Mutex::new(None),
            cancel,
        }
    }

    /// A console without a progress line, for tests.
    pub fn quiet() -> Console {
        Console {
            progress: None,
            running: AtomicUsize::new(0),
            running_hosts: Mutex::default(),
            failed: AtomicUsize::new(0),
            broken_pipe: AtomicBool::new(false),
            lost: Mutex::new(None),
            cancel: CancellationToken::new(),
        }
    }

    /// Host `host`'s job started.
    pub fn host_started(&self, host: usize) {
        lock(&self.running_hosts).insert(host);
        self.running.fetch_add(1, Ordering::Relaxed);
        self.update(false);
    }

    /// Host `host`'s job ended.
    pub fn host_finished(&self, host: usize, failed: bool) {
        // Once the run is cancelled, the hosts still running are the ones
        // it cut short: they stay listed for the end-of-run line.
        if !self.cancel.is_cancelled() {
            lock(&self.running_hosts).remove(&host);
        }
        self.running.fetch_sub(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.update(true);
    }

    fn update(&self, finished: bool) {
        if let Some(bar) = &self.progress {
            if finished {
                bar.inc(1);
            }
            bar.set_message(format!(
                "{} running, {} failed",
                self.running.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed)
            ));
        }
    }

    /// Writes `bytes` to our stdout or stderr in one piece, around the
    /// progress line. A stream that cannot take them (closed by its
    /// reader, or on a full disk) cancels the run.
    pub fn write(&self, stream: Stream, bytes: &[u8]) {
        if bytes.is_empty() || self.broken_pipe() || self.output_lost().is_some() {
            return;
        }
        let write = || match stream {
            Stream::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush())
            }
            Stream::Stderr => {
                let mut err = io::stderr().lock();
                err.write_all(bytes).and_then(|()| err.flush())
            }
        };
        let result = match &self.progress {
            Some(bar) => bar.suspend(write),
            None => write(),
        };
        // The end-of-run line for a failing stderr may find no stderr to
        // go to; the exit status says it all the same.
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.broken_pipe.store(true, Ordering::Relaxed);
                self.cancel.cancel();
            }
            Err(e) => {
                let name = match stream {
                    Stream::Stdout => "stdout",
                    Stream::Stderr => "stderr",
                };
                self.lose(format!("cannot write to {name}: {}", plain::io_error(&e)));
            }
            Ok(()) => {}
        }
    }

    /// Some of our output could not be written (`what` says which and
    /// why): the run stops, and ends in failure with this one line.
    pub fn lose(&self, what: String) {
        lock(&self.lost).get_or_insert(what);
        self.cancel.cancel();
    }

    /// What of our output could not be written, if anything.
    pub fn output_lost(&self) -> Option<String> {
        lock(&self.lost).clone()
    }

    /// One line of ctl's own on stderr.
    pub fn note(&self, line: &str) {
        self.write(Stream::Stderr, format!("ctl: {line}\n").as_bytes());
    }

    /// Whether our stdout or stderr was closed by its reader.
    pub fn broken_pipe(&self) -> bool {
        self.broken_pipe.load(Ordering::Relaxed)
    }

    /// The hosts running now (after a cancellation: when it came).
    pub fn running_hosts(&self) -> Vec<usize> {
        lock(&self.running_hosts).iter().copied().collect()
    }

    /// On a terminal, as clush does: each Enter pressed during the run
    /// prints the hosts still running, named by `labels`. Nothing when our
    /// stdin is not a terminal or we are not in its foreground (a read
    /// there would stop us), or when stdin goes to the command (`-i`).
    pub fn report_on_enter(self: &Arc<Console>, labels: crate::outcome::Labels) {
        use nix::sys::signal::{SigHandler, Signal, signal};
        let stdin = io::stdin();
        let foreground = stdin.is_terminal()
            && nix::unistd::tcgetpgrp(&stdin).is_ok_and(|group| group == nix::unistd::getpgrp());
        if !foreground {
            return;
        }
        // Sent to the background later (Ctrl-Z, bg), a read fails instead
        // of stopping ctl, and the watch ends.
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { signal(Signal::SIGTTIN, SigHandler::SigIgn) };
        let console = self.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while matches!(io::stdin().read_line(&mut line), Ok(n) if n > 0) {
                line.clear();
                let running = console.running_hosts();
                let names = crate::nodeset::fold(running.iter().map(|&h| labels[h].as_str()));
                console.note(&format!(
                    "{} of {} hosts still running: {names}",
                    running.len(),
                    labels.len()
                ));
            }
        });
    }

    /// Removes the progress line.
    pub fn finish(&self) {
        if let Some(bar) = &self.progress {
            bar.finish_and_clear();
        }
    }
}
