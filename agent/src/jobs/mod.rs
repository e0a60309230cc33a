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
//! module's `spawn`, shared with plain execs) and who may run as whom
//! (`run_as`).

pub mod runner;
pub mod segments;
pub mod serve;
pub mod start;
pub mod store;
pub mod watch;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub use serve::serve;

/// Where job directories go for an agent whose files are in the default
/// place (/etc/rexec); the systemd unit's `StateDirectory=rexec`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rexec/jobs";
/// Jobs running at once, all clients together.
pub const DEFAULT_MAX_JOBS: usize = 64;
/// Bytes kept of each stream of a job's output.
pub const DEFAULT_MAX_JOB_OUTPUT: u64 = 64 << 20;
/// How long an ended job is kept.
pub const DEFAULT_JOB_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The agent's settings for detached jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSettings {
    /// The directory holding one directory per job.
    pub state_dir: PathBuf,
    /// Most jobs running at once.
    pub max_jobs: usize,
    /// Bytes kept of each output stream; past it the oldest go.
    pub max_output: u64,
    /// How long an ended job is kept before it is removed.
    pub retention: Duration,
    /// Client names that see and control every client's jobs.
    pub admins: Vec<String>,
}

impl JobSettings {
    /// The defaults for an agent whose files are in `dir`: the system's
    /// state directory for the default `/etc/rexec`, else `DIR/jobs`, so
    /// that an agent run by hand (the quick start, the tests) keeps its
    /// jobs beside its identity and needs no root.
    pub fn for_dir(dir: &Path) -> JobSettings {
        let state_dir = if dir == Path::new(crate::config::DEFAULT_DIR) {
            PathBuf::from(DEFAULT_STATE_DIR)
        } else {
            dir.join("jobs")
        };
        JobSettings {
            state_dir,
            max_jobs: DEFAULT_MAX_JOBS,
            max_output: DEFAULT_MAX_JOB_OUTPUT,
            retention: DEFAULT_JOB_RETENTION,
            admins: Vec::new(),
        }
    }

    /// Whether the client named `name` sees every job.
    pub fn is_admin(&self, name: &str) -> bool {
        self.admins.iter().any(|admin| admin == name)
    }
}

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
            tracing::warn!(job = name, "job record damaged, left in place: {why}");
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
