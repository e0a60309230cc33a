//! The state directory: one directory per job, named by its id, holding
//! what the agent wrote when it started the job (`job.json`: who, what,
//! when), what the runner records (`status.json`: its process, the
//! command's end), the runner's lock (held while it lives), the output
//! segments, and a mark once the job's end was logged.
//!
//! Everything read back from here is untrusted: a record must parse
//! strictly, be small and name the directory it is in, or the job is
//! reported as damaged. Files are created readable by the agent's user
//! only.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rexec_protocol::{ExitStatus, JobId, JobState, JobSummary};
use serde::{Deserialize, Serialize};

use super::segments::{self, Extent};

/// The agent's record of a job, written once when it starts.
pub const RECORD: &str = "job.json";
/// The runner's record, rewritten in place.
pub const STATUS: &str = "status.json";
/// Held locked by the runner for as long as it lives.
pub const LOCK: &str = "lock";
/// Present once the job's end was written to the audit log.
pub const END_LOGGED: &str = "end.logged";
/// The room the status record takes on disk, claimed when the job starts
/// so that a disk that fills up later cannot keep its end from being
/// recorded.
pub const STATUS_ROOM: usize = 4096;
/// The most any record may take; anything longer is damaged.
const MAX_RECORD: u64 = 64 * 1024;
/// A job directory in the making, before its runner has started.
pub const NEW_PREFIX: &str = ".new-";

/// Who started a job, and what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// The job's id, which is also its directory's name.
    pub id: JobId,
    /// The fingerprint of the client key that started it.
    pub owner_fingerprint: String,
    /// That client's name then.
    pub owner: String,
    /// The command line.
    pub command: String,
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
}

/// What the runner records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerStatus {
    /// The runner's process id.
    pub runner_pid: u32,
    /// The command's shell, also its process group.
    pub pid: Option<u32>,
    /// Whom it runs as.
    pub user: String,
    /// Where.
    pub cwd: String,
    /// How it ended, once it has.
    pub end: Option<ExitStatus>,
    /// When, in milliseconds since the Unix epoch.
    pub ended_ms: Option<u64>,
    /// It was ended by a kill request.
    pub killed: bool,
    /// Bytes written to each stream, once the job has ended.
    pub stdout_bytes: Option<u64>,
    /// See `stdout_bytes`.
    pub stderr_bytes: Option<u64>,
    /// Where recording of stdout stopped, the file system refusing.
    pub stdout_lost_at: Option<u64>,
    /// Where recording of stderr stopped.
    pub stderr_lost_at: Option<u64>,
    /// Why the job could not be run to its end as asked, if so.
    pub problem: Option<String>,
}

/// Creates `path` as a directory only the agent's user may enter.
///
/// # Errors
/// As the file system says.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

/// Creates the state directory (and its parents) if it is not there.
///
/// # Errors
/// As the file system says.
pub fn ensure_state_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Writes `record` to `dir/job.json` (a new file).
///
/// # Errors
/// As the file system says.
pub fn write_record(dir: &Path, record: &JobRecord) -> std::io::Result<()> {
    let text = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(RECORD))?;
    file.write_all(&text)?;
    file.sync_all()
}

/// The runner's status file, open for rewriting in place.
#[derive(Debug)]
pub struct StatusFile(std::fs::File);

impl StatusFile {
    /// Creates `dir/status.json` with its room claimed.
    ///
    /// # Errors
    /// As the file system says.
    pub fn create(dir: &Path, status: &RunnerStatus) -> std::io::Result<StatusFile> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(STATUS))?;
        let mut status_file = StatusFile(file);
        status_file.write(status)?;
        Ok(status_file)
    }

    /// Rewrites the record: JSON padded with spaces to [`STATUS_ROOM`],
    /// in the blocks claimed at the start.
    ///
    /// # Errors
    /// As the file system says, or a record too large for its room.
    pub fn write(&mut self, status: &RunnerStatus) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(status).map_err(std::io::Error::other)?;
        if text.len() > STATUS_ROOM {
            return Err(std::io::Error::other("status record too large"));
        }
        text.resize(STATUS_ROOM, b' ');
        self.0.seek(SeekFrom::Start(0))?;
        self.0.write_all(&text)?;
        self.0.sync_data()
    }
}

/// Why a job's records cannot be used, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Damage(pub String);

/// Reads and checks a record.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, Damage> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Err(Damage(format!("{} cannot be read", file_name(path)))),
    };
    // Sized from the file, so the record comes in one read, not in
    // growing steps from 32 bytes (followers read it on every poll).
    let size = file.metadata().map_or(0, |m| m.len()).min(MAX_RECORD + 1);
    let mut text = Vec::with_capacity(usize::try_from(size).unwrap_or(0) + 1);
    file.take(MAX_RECORD + 1)
        .read_to_end(&mut text)
        .map_err(|_| Damage(format!("{} cannot be read", file_name(path))))?;
    if text.len() as u64 > MAX_RECORD {
        return Err(Damage(format!("{} is too large", file_name(path))));
    }
    let end = text.iter().rposition(|b| *b != b' ').map_or(0, |i| i + 1);
    serde_json::from_slice(&text[..end])
        .map(Some)
        .map_err(|_| Damage(format!("{} is not a valid record", file_name(path))))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// When `path` last changed, in milliseconds since the Unix epoch.
pub fn changed_ms(path: &Path) -> Option<u64> {
    let changed = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    let since = changed.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(since.as_millis() as u64)
}

/// Whether the runner of the job in `dir` still lives: it holds the lock.
pub fn runner_alive(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(LOCK)) else {
        return false;
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_held) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// Whether the job in `dir` takes one of the `max_jobs` places: its
/// runner lives and has not recorded an end. A runner that recorded the
/// end and is only exiting counts no more, so that a job started right
/// after `ctl job wait` returned is not refused for it.
pub fn holds_a_place(dir: &Path) -> bool {
    runner_alive(dir)
        && !matches!(
            read_json::<RunnerStatus>(&dir.join(STATUS)),
            Ok(Some(RunnerStatus { end: Some(_), .. }))
        )
}

/// One job as the agent finds it on disk.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its directory.
    pub dir: PathBuf,
    /// The agent's record.
    pub record: JobRecord,
    /// The runner's, if it can be read.
    pub status: Result<Option<RunnerStatus>, Damage>,
    /// Whether the runner still lives.
    pub alive: bool,
}

/// The job directories in `state_dir`: (name, path); names that are not
/// job ids (a job in the making, anything else) are left out.
pub fn job_dirs(state_dir: &Path) -> Vec<(JobId, PathBuf)> {
    let mut dirs: Vec<(JobId, PathBuf)> = std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let id = entry.file_name().to_str()?.parse::<JobId>().ok()?;
            entry
                .file_type()
                .ok()
                .filter(|t| t.is_dir())
                .map(|_| (id, entry.path()))
        })
        .collect();
    dirs.sort();
    dirs
}

/// Reads the job in `dir`, named `id`.
///
/// # Errors
/// Its record is missing, unreadable, or names another job: nobody can
/// be told it is theirs.
pub fn load(dir: &Path, id: &JobId) -> Result<Found, Damage> {
    let record: JobRecord =
        read_json(&dir.join(RECORD))?.ok_or_else(|| Damage(format!("{RECORD} is missing")))?;
    if &record.id != id {
        return Err(Damage(format!("{RECORD} names another job")));
    }
    // Looked at before the status: a runner that records its end and
    // exits between the two reads is then seen ended, not lost.
    let alive = runner_alive(dir);
    let status = read_json::<RunnerStatus>(&dir.join(STATUS));
    Ok(Found {
        dir: dir.to_owned(),
        record,
        status,
        alive,
    })
}

impl Found {
    /// Whether the job has ended (or can run no more: lost, damaged).
    pub fn over(&self) -> bool {
        !matches!(self.summary().state, JobState::Running)
    }

    /// When it ended, or when it was found lost or damaged.
    pub fn ended_ms(&self) -> Option<u64> {
        match &self.status {
            Ok(Some(status)) if status.end.is_some() => status.ended_ms,
            _ if self.alive => None,
            // Lost or damaged: when the agent first found it so, which
            // the mark of its logged end keeps; before that mark, now. Not
            // the status file's last change: a runner writes it when the
            // command starts, so a job lost after a week would count as
            // ended a week ago (and be past its retention at once).
            _ => Some(changed_ms(&self.dir.join(END_LOGGED)).unwrap_or_else(super::now_ms)),
        }
    }

    /// The output stream `name` as kept.
    pub fn extent(&self, name: &str) -> Extent {
        segments::extent(&self.dir, name)
    }

    /// The process group of a lost job's command that still runs (the
    /// runner was killed, and nothing records or ends the command): the
    /// group recorded at its start, only while it is still that job's.
    /// A process id is not given out again while a process has it as its
    /// group or session, so members in the group and in the runner's
    /// session (or a session of the group's own, when the command was
    /// forked into one) are the job's; a leader of that id that started
    /// after the runner last wrote its status is somebody else's.
    pub fn orphaned_group(&self) -> Option<i32> {
        let Ok(Some(status)) = &self.status else {
            return None;
        };
        if self.alive || status.end.is_some() {
            return None;
        }
        let pgid = i32::try_from(status.pid?).ok().filter(|&p| p > 1)?;
        let runner = i32::try_from(status.runner_pid).ok()?;
        let written = std::fs::metadata(self.dir.join(STATUS))
            .and_then(|m| m.modified())
            .ok()?;
        let mut members = 0;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Some(stat) = ProcStat::of(pid) else {
                continue;
            };
            if stat.zombie || stat.pgrp != pgid || (stat.session != runner && stat.session != pgid)
            {
                continue;
            }
            if pid == pgid
                && stat
                    .started()
                    .is_none_or(|t| t > written + Duration::from_secs(1))
            {
                return None;
            }
            members += 1;
        }
        (members > 0).then_some(pgid)
    }

    /// What the protocol says of this job.
    pub fn summary(&self) -> JobSummary {
        let stdout = self.extent("stdout");
        let stderr = self.extent("stderr");
        let mut summary = JobSummary {
            id: self.record.id.clone(),
            state: JobState::Running,
            command: self.record.command.clone(),
            owner: self.record.owner.clone(),
            started_ms: self.record.started_ms,
            ended_ms: None,
            stdout_bytes: stdout.end,
            stderr_bytes: stderr.end,
            stdout_dropped: stdout.dropped,
            stderr_dropped: stderr.dropped,
            note: None,
        };
        let mut notes = Vec::new();
        match &self.status {
            Err(damage) => {
                summary.state = JobState::Damaged;
                notes.push(format!("the job's record is damaged: {damage}"));
            }
            Ok(None) if self.alive => {}
            Ok(None) => summary.state = JobState::Lost,
            Ok(Some(status)) => {
                if let Some(end) = status.end {
                    summary.state = JobState::Ended(end);
                    summary.ended_ms = status.ended_ms;
                } else if !self.alive {
                    summary.state = JobState::Lost;
                }
                summary.stdout_bytes = status.stdout_bytes.unwrap_or(stdout.end);
                summary.stderr_bytes = status.stderr_bytes.unwrap_or(stderr.end);
                for (name, at) in [
                    ("stdout", status.stdout_lost_at),
                    ("stderr", status.stderr_lost_at),
                ] {
                    if let Some(at) = at {
                        notes.push(format!(
                            "{name} not recorded from byte {at} on: the disk refused it"
                        ));
                    }
                }
                if status.killed {
                    notes.push("killed on request".into());
                }
                if let Some(problem) = &status.problem {
                    notes.push(problem.clone());
                }
            }
        }
        if summary.state == JobState::Lost {
            notes.push(
                "whatever ran the job vanished without recording its end (a reboot, or it was killed)"
                    .into(),
            );
            if self.orphaned_group().is_some() {
                notes.push("its command still runs: ctl job kill ends it".into());
            }
        }
        if summary.ended_ms.is_none() && summary.state != JobState::Running {
            summary.ended_ms = self.ended_ms();
        }
        summary.note = (!notes.is_empty()).then(|| notes.join("; "));
        summary
    }
}

/// What `/proc/PID/stat` says of a process's group, session and start.
struct ProcStat {
    /// A zombie: gone, but for its parent's wait.
    zombie: bool,
    pgrp: i32,
    session: i32,
    /// Clock ticks after boot.
    start_ticks: u64,
}

impl ProcStat {
    fn of(pid: i32) -> Option<ProcStat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name, which may hold anything but ends at the
        // last ')': state, ppid, pgrp, session, … starttime (the 20th).
        let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
        Some(ProcStat {
            zombie: *fields.first()? == "Z",
            pgrp: fields.get(2)?.parse().ok()?,
            session: fields.get(3)?.parse().ok()?,
            start_ticks: fields.get(19)?.parse().ok()?,
        })
    }

    /// When the process started, by the wall clock.
    fn started(&self) -> Option<std::time::SystemTime> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let boot: u64 = stat
            .lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
        let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
        let after_boot = Duration::from_millis(self.start_ticks * 1000 / ticks);
        Some(std::time::UNIX_EPOCH + Duration::from_secs(boot) + after_boot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &JobId) -> JobRecord {
        JobRecord {
            id: id.clone(),
            owner_fingerprint: "SHA256:x".into(),
            owner: "alice".into(),
            command: "true".into(),
            started_ms: 1,
        }
    }

    #[test]
    fn a_status_rewritten_in_place_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let id = JobId::from_bytes([7; 16]);
        write_record(dir.path(), &record(&id)).unwrap();
        let mut status = RunnerStatus {
            runner_pid: 42,
            ..RunnerStatus::default()
        };
        let mut file = StatusFile::create(dir.path(), &status).unwrap();
        status.end = Some(ExitStatus::Code(3));
        status.ended_ms = Some(5);
        file.write(&status).unwrap();
        let found = load(dir.path(), &id).unwrap();
        assert_eq!(found.status, Ok(Some(status)));
        assert_eq!(found.summary().state, JobState::Ended(ExitStatus::Code(3)));
        let len = std::fs::metadata(dir.path().join(STATUS)).unwrap().len();
        assert_eq!(len as usize, STATUS_ROOM);
    }

    #[test]
    fn hand_edited_records_are_damage_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let id = JobId::from_bytes([8; 16]);
        write_record(dir.path(), &record(&id)).unwrap();
        for bad in [
            &b"{\"runner_pid\": \"many\"}"[..],
            b"\xff\xfe",
            b"{\"runner_pid\": 1, \"extra\": 2}",
            b"",
        ] {
            std::fs::write(dir.path().join(STATUS), bad).unwrap();
            let found = load(dir.path(), &id).unwrap();
            assert_eq!(found.summary().state, JobState::Damaged);
            assert!(found.summary().note.unwrap().contains("status.json"));
        }
        std::fs::write(dir.path().join(RECORD), b"{}").unwrap();
        assert!(load(dir.path(), &id).is_err());
        let other = JobId::from_bytes([9; 16]);
        std::fs::write(
            dir.path().join(RECORD),
            serde_json::to_vec(&record(&other)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            load(dir.path(), &id).unwrap_err(),
            Damage("job.json names another job".into())
        );
    }
}
