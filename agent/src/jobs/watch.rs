//! The agent's eye on its jobs between requests: one audit line when a
//! job's end is first seen (by whichever agent process sees it, once: a
//! mark in the job's directory says it was written), and the removal of
//! jobs ended longer ago than the retention, and of directories left
//! half made by an agent that died while starting a job.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rexec_protocol::{ExitStatus, JobId, JobState};

use super::store::{self, END_LOGGED, NEW_PREFIX};
use crate::state::AgentState;

/// How often the state directory is looked through.
const EVERY: Duration = Duration::from_secs(1);
/// How old a half-made job directory must be before it is removed.
const HALF_MADE: Duration = Duration::from_secs(60);

/// Looks after the jobs until the agent stops.
pub async fn watch(state: Arc<AgentState>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = state.shutdown.stop.cancelled() => return,
        }
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || look(&state)).await;
    }
}

/// One look through the state directory.
pub fn look(state: &AgentState) {
    let settings = &state.settings.jobs;
    let now = super::now_ms();
    for (id, dir) in store::job_dirs(&settings.state_dir) {
        let found = match store::load(&dir, &id) {
            Ok(found) => found,
            Err(damage) => {
                state.jobs.log_damaged(id.as_str(), &damage.0);
                // Nothing runs it and nobody can say whose it is: it goes
                // once its last change is older than the retention, so
                // that it does not hold its place on the disk for ever.
                let age = std::fs::metadata(&dir)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                if !store::runner_alive(&dir) && age.is_some_and(|age| age >= settings.retention) {
                    remove_old(
                        &id,
                        &dir,
                        "its record is damaged and it has not run for longer than the retention (job_retention)",
                    );
                }
                continue;
            }
        };
        let summary = found.summary();
        if summary.state == JobState::Running {
            continue;
        }
        log_end(&state.jobs, &found, &summary);
        // A lost job whose command still runs stays for `ctl job kill`,
        // however old: without its record nothing could end the command.
        if found.orphaned_group().is_some() {
            continue;
        }
        let ended = summary.ended_ms.unwrap_or(now);
        if now.saturating_sub(ended) >= settings.retention.as_millis() as u64 {
            remove_old(
                &id,
                &dir,
                "ended longer ago than the retention (job_retention)",
            );
        }
    }
    let Ok(entries) = std::fs::read_dir(&settings.state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let half_made = name.to_str().is_some_and(|n| n.starts_with(NEW_PREFIX));
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > HALF_MADE);
        if half_made && old && !store::runner_alive(&entry.path()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes the ended job `id` in `dir`, saying `why` in the log; whether
/// it is gone.
pub fn remove_old(id: &JobId, dir: &Path, why: &str) -> bool {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            tracing::info!(job = id.as_str(), "job removed: {why}");
            true
        }
        Err(e) => {
            tracing::warn!(
                job = id.as_str(),
                "cannot remove an old job: {}",
                super::io_text(&e)
            );
            false
        }
    }
}

/// Writes the audit line of an ended job, unless it was written before;
/// whether it wrote it now. The mark that says so is a file in the job's
/// directory, for agents started later; where the disk refuses it (full),
/// this agent remembers instead, so that the line is not written again at
/// every look.
pub fn log_end(
    jobs: &super::Jobs,
    found: &store::Found,
    summary: &rexec_protocol::JobSummary,
) -> bool {
    if summary.state == JobState::Running
        || found.dir.join(END_LOGGED).exists()
        || jobs.end_logged_unmarked(summary.id.as_str())
    {
        return false;
    }
    let outcome = match summary.state {
        JobState::Ended(ExitStatus::Code(code)) => format!("exit {code}"),
        JobState::Ended(ExitStatus::Signal { signal, .. }) => format!("signal {signal}"),
        JobState::Ended(ExitStatus::TimedOut) => "timed out".into(),
        JobState::Lost => "lost".into(),
        JobState::Damaged => "damaged".into(),
        _ => "ended".into(),
    };
    let ended = summary.ended_ms.unwrap_or_else(super::now_ms);
    tracing::info!(
        target: "rexec::audit",
        client = summary.owner.as_str(),
        fingerprint = found.record.owner_fingerprint.as_str(),
        job = summary.id.as_str(),
        command = summary.command.as_str(),
        outcome = outcome.as_str(),
        duration_ms = ended.saturating_sub(summary.started_ms),
        stdout_bytes = summary.stdout_bytes,
        stderr_bytes = summary.stderr_bytes,
        "job ended"
    );
    if std::fs::write(found.dir.join(END_LOGGED), b"").is_err() {
        jobs.remember_end_unmarked(summary.id.as_str());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use rexec_protocol::JobId;

    #[test]
    fn an_end_whose_mark_the_disk_refuses_is_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let id = JobId::from_bytes([3; 16]);
        let record = store::JobRecord {
            id: id.clone(),
            owner_fingerprint: "SHA256:x".into(),
            owner: "alice".into(),
            command: "true".into(),
            started_ms: 1,
        };
        store::write_record(dir.path(), &record).unwrap();
        let status = store::RunnerStatus {
            end: Some(ExitStatus::Code(0)),
            ended_ms: Some(2),
            ..store::RunnerStatus::default()
        };
        store::StatusFile::create(dir.path(), &status).unwrap();
        let mut found = store::load(dir.path(), &id).unwrap();
        let summary = found.summary();
        // A directory that is not there: writing the mark fails as on a
        // full disk.
        found.dir = dir.path().join("gone");
        let jobs = super::super::Jobs::default();
        assert!(log_end(&jobs, &found, &summary));
        assert!(!log_end(&jobs, &found, &summary), "logged again");
        // Another job is logged as usual, its mark on disk.
        let found = store::load(dir.path(), &id).unwrap();
        let other = super::super::Jobs::default();
        assert!(log_end(&other, &found, &summary));
        assert!(dir.path().join(END_LOGGED).exists());
        assert!(!log_end(&other, &found, &summary));
    }
}
