//! Detached jobs: commands that are not tied to a session. A job is run
//! by a job runner ([`runner`]), the agent binary started again in a
//! session of its own (and, under systemd, in a transient scope outside
//! the agent's unit, so that `systemctl restart` does not end it). The
//! runner owns the command's process group, keeps its output in capped
//! files ([`segments`]) and records its end in the job's directory under
//! the state directory ([`store`]). The agent itself only reads that
//! directory to answer requests ([`serve`]), starts runners ([`start`]),
//! and watches for ends to log and for old jobs to remove ([`watch`]); an
//! agent started again finds every job there.
//!
//! What this module does not own: how a command is built (the exec
//! module's `spawn`, shared with plain execs), who may run as whom
//! (`run_as`), and its settings with their defaults (`config`'s
//! `JobSettings`).

pub mod runner;
pub mod segments;
pub mod serve;
pub mod start;
pub mod store;
pub mod watch;

use std::collections::HashSet;
use std::sync::Mutex;

pub use serve::serve;

/// What the agent's sessions share about jobs.
#[derive(Debug, Default)]
pub struct Jobs {
    /// Held while a job is started, so that two starts at once count each
    /// other against `max_jobs`.
    starting: tokio::sync::Mutex<()>,
    /// Job directories whose damaged record was logged already.
    damaged_logged: Mutex<HashSet<String>>,
    /// Jobs whose end was logged by this agent process without a mark on
    /// disk (the disk refused it): logged once all the same.
    end_logged: Mutex<HashSet<String>>,
}

impl Jobs {
    /// Logs once per agent process that the job directory `name` has a
    /// record that cannot be read.
    pub fn log_damaged(&self, name: &str, why: &str) {
        let mut logged = self
            .damaged_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if logged.insert(name.to_owned()) {
            tracing::warn!(
                job = name,
                "job record damaged, left in place until an admin forgets it or the retention passes: {why}"
            );
        }
    }
}

impl Jobs {
    /// Whether this agent process logged the end of job `id` already
    /// though the mark could not be written.
    fn end_logged_unmarked(&self, id: &str) -> bool {
        self.end_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(id)
    }

    fn remember_end_unmarked(&self, id: &str) {
        self.end_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned());
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a failed file operation comes to, in our words.
pub fn io_text(error: &std::io::Error) -> String {
    use nix::libc::{EACCES, EDQUOT, ENOENT, ENOSPC, EPERM, EROFS};
    match error.raw_os_error() {
        Some(ENOSPC) => "the disk is full".into(),
        Some(EDQUOT) => "the disk quota is used up".into(),
        Some(EACCES | EPERM) => "permission denied".into(),
        Some(EROFS) => "the file system is read-only".into(),
        Some(ENOENT) => "no such file or directory".into(),
        Some(n) => format!("system error {n}"),
        None => "an unexpected error".into(),
    }
}
