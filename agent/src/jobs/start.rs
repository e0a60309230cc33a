//! Starting a job: its directory (made under a temporary name, renamed
//! once the runner runs, so that nobody sees half a job), its record, and
//! the runner, under systemd in a transient scope of its own.
//!
//! Why a scope: `systemctl restart rexec-agent` (an upgrade of rexec
//! itself) ends every process in the agent's unit, whatever session or
//! parent it has; a runner in a scope of its own is out of its reach.
//! `systemd-run --scope` moves itself into the new scope and then becomes
//! the runner, so the runner's pipes to the agent stay as they are. Where
//! systemd does not run the agent, a session of its own is enough: the
//! agent's death, Ctrl-C on its terminal and the keeper do not reach it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rexec_protocol::{DetachRequest, ErrorKind, ErrorReport, JobSummary};

use super::runner::{Ready, RunnerSpec, SUBCOMMAND};
use super::store::{self, JobRecord, NEW_PREFIX};
use crate::audit::audit;
use crate::config::JobSettings;
use crate::state::AgentState;

/// How long a runner may take to say whether its command started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub use crate::audit::Caller;

fn internal(message: impl Into<String>) -> ErrorReport {
    ErrorReport::new(ErrorKind::Internal, message)
}

/// The most bytes the kept jobs may hold: the setting, else a tenth of
/// the state directory's file system, at most
/// [`DEFAULT_MAX_KEPT_JOB_BYTES`](crate::config::DEFAULT_MAX_KEPT_JOB_BYTES).
fn kept_bound(settings: &JobSettings, state_dir: &Path) -> u64 {
    settings.max_kept_bytes.unwrap_or_else(|| {
        let most = crate::config::DEFAULT_MAX_KEPT_JOB_BYTES;
        rustix::fs::statvfs(state_dir).map_or(most, |fs| {
            (fs.f_blocks.saturating_mul(fs.f_frsize) / 10).min(most)
        })
    })
}

/// The bytes of the files in a job's directory.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .sum()
}

/// Makes room under the kept-bytes bound before a job starts: while the
/// jobs kept hold more, ended ones are removed (each audited as ended
/// first, if it was not yet), the oldest of the client whose jobs hold
/// the most bytes first. So a client that starts and ends jobs removes
/// its own results before anyone else's, and another client's are
/// touched only once theirs hold more (oldest first across all clients,
/// as journald does with its files, would let one client remove every
/// other client's results by starting small jobs).
/// Only a job whose runner recorded its end and is gone is removed: a lost
/// job keeps the record of its command's process group for `ctl job
/// kill`. When the jobs that cannot be removed hold more on their own, the
/// start is refused as busy and nothing is removed. Without the bound, a
/// client could fill the state directory's file system (its jobs' output
/// is written by the agent, outside any quota of the client's user) by
/// starting jobs that end.
fn make_room(state: &AgentState, state_dir: &Path) -> Result<(), ErrorReport> {
    let bound = kept_bound(&state.settings.jobs, state_dir);
    let (mut total, mut kept) = (0u64, 0u64);
    // The bytes each owner's jobs hold, running or ended.
    let mut held: HashMap<String, u64> = HashMap::new();
    let mut removable = Vec::new();
    for (id, dir) in store::job_dirs(state_dir) {
        let bytes = dir_bytes(&dir);
        total = total.saturating_add(bytes);
        match store::load(&dir, &id) {
            Ok(found) => {
                let owner = found.record.owner_fingerprint.clone();
                let theirs = held.entry(owner.clone()).or_default();
                *theirs = theirs.saturating_add(bytes);
                if !found.alive && matches!(&found.status, Ok(Some(status)) if status.end.is_some())
                {
                    removable.push((found.ended_ms().unwrap_or(0), owner, id, bytes, found));
                } else {
                    kept = kept.saturating_add(bytes);
                }
            }
            Err(_) => kept = kept.saturating_add(bytes),
        }
    }
    if total <= bound {
        return Ok(());
    }
    if kept > bound {
        return Err(ErrorReport::new(
            ErrorKind::Busy,
            format!(
                "the agent's running jobs hold {kept} bytes, more than max_kept_job_bytes \
                 ({bound}); try again once some have ended"
            ),
        ));
    }
    removable.sort_by_key(|(when, ..)| *when);
    let why = format!("the jobs kept held more than max_kept_job_bytes ({bound})");
    while total > bound {
        // The oldest ended job of the owner holding the most (the first
        // of theirs in end order; `max_by_key` keeps the last of equals,
        // so the reversed index picks the oldest).
        let Some(next) = removable
            .iter()
            .enumerate()
            .max_by_key(|(at, (_, owner, ..))| (held.get(owner).copied(), std::cmp::Reverse(*at)))
            .map(|(at, _)| at)
        else {
            break;
        };
        let (_, owner, id, bytes, found) = removable.remove(next);
        super::watch::log_end(&state.jobs, &found, &found.summary());
        if super::watch::remove_old(&id, &found.dir, &why) {
            total -= bytes;
        }
        if let Some(theirs) = held.get_mut(&owner) {
            *theirs = theirs.saturating_sub(bytes);
        }
    }
    Ok(())
}

/// Starts `request` as a job of `caller`'s.
///
/// # Errors
/// The request is refused (a bad request, the limit reached, the state
/// directory unusable, the command not startable), with what to tell.
pub async fn start(
    state: &AgentState,
    caller: &Caller,
    request: &DetachRequest,
) -> Result<JobSummary, ErrorReport> {
    if request.exec.stdin || request.exec.pty.is_some() {
        return Err(ErrorReport::new(
            ErrorKind::BadRequest,
            "a detached job takes no stdin and no terminal",
        ));
    }
    let settings = &state.settings.jobs;
    let state_dir = settings.state_dir.clone();
    let _starting = state.jobs.starting.lock().await;
    store::ensure_state_dir(&state_dir).map_err(|e| {
        ErrorReport::new(
            ErrorKind::WriteFailed,
            format!(
                "cannot create the state directory {}: {}",
                state_dir.display(),
                super::io_text(&e)
            ),
        )
    })?;
    let running: Vec<_> = store::job_dirs(&state_dir)
        .into_iter()
        .filter(|(_, dir)| store::holds_a_place(dir))
        .collect();
    if running.len() >= settings.max_jobs {
        return Err(ErrorReport::new(
            ErrorKind::Busy,
            format!(
                "the agent already runs {} jobs, its limit (max_jobs); try again later",
                running.len()
            ),
        ));
    }
    // As for sessions: jobs outlive their connections, so a key that took
    // every place would shut the others out for as long as its jobs run.
    let most = crate::state::one_clients_share(settings.max_jobs);
    let owner = caller.fingerprint.to_string();
    let mine = running
        .iter()
        .filter(|(id, dir)| store::load(dir, id).is_ok_and(|f| f.record.owner_fingerprint == owner))
        .count();
    if mine >= most {
        return Err(ErrorReport::new(
            ErrorKind::Busy,
            format!(
                "this client already runs {mine} jobs here, the most one client may (half of max_jobs); try again later"
            ),
        ));
    }
    let id = &request.id;
    let final_dir = state_dir.join(id.as_str());
    let new_dir = state_dir.join(format!("{NEW_PREFIX}{id}"));
    // The same start again (a retry, or one agent reached under two
    // names) is the job that runs already.
    if let Ok(found) = store::load(&final_dir, id)
        && found.record.owner_fingerprint == caller.fingerprint.to_string()
        && found.record.command == request.exec.command
    {
        return Ok(found.summary());
    }
    if final_dir.exists() || new_dir.exists() {
        return Err(ErrorReport::new(
            ErrorKind::BadRequest,
            format!("job id {id} is taken; start it with a new one"),
        ));
    }
    // After the checks that refuse or answer without a new job: those
    // remove nothing.
    make_room(state, &state_dir)?;
    let cannot_record = |e: std::io::Error| {
        ErrorReport::new(
            ErrorKind::WriteFailed,
            format!(
                "cannot record the job in {}: {}",
                state_dir.display(),
                super::io_text(&e)
            ),
        )
    };
    store::create_private_dir(&new_dir).map_err(cannot_record)?;
    let record = JobRecord {
        id: id.clone(),
        owner_fingerprint: caller.fingerprint.to_string(),
        owner: caller.name.clone(),
        command: request.exec.command.clone(),
        started_ms: super::now_ms(),
    };
    if let Err(e) = store::write_record(&new_dir, &record) {
        let _ = std::fs::remove_dir_all(&new_dir);
        return Err(cannot_record(e));
    }
    let spec = RunnerSpec {
        exec: request.exec.clone(),
        requester: caller.name.clone(),
        shell: state.settings.shell.clone(),
        run_as: state.settings.run_as.by_client.clone(),
        max_timeout: state.settings.max_timeout,
        kill_grace: state.settings.kill_grace,
        max_output: settings.max_output,
    };
    let started = launch(&new_dir, id.as_str(), &spec).await;
    let pid = match started {
        Ok(pid) => pid,
        Err(report) => {
            let _ = std::fs::remove_dir_all(&new_dir);
            return Err(report);
        }
    };
    if let Err(e) = std::fs::rename(&new_dir, &final_dir) {
        // The runner goes on in the directory it has; it is only hidden.
        return Err(cannot_record(e));
    }
    audit!(
        tracing::Level::INFO,
        caller,
        job = id.as_str(),
        command = record.command.as_str(),
        cwd = request.exec.cwd.as_deref().unwrap_or(""),
        user = request.exec.user.as_deref().unwrap_or(""),
        pid,
        "job started"
    );
    let found = store::load(&final_dir, id).map_err(|d| internal(d.to_string()))?;
    Ok(found.summary())
}

/// How the runner is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Launcher {
    /// In a transient systemd scope.
    Scope,
    /// In a session of its own.
    Session,
}

/// Whether systemd runs the agent (as a service: it set
/// `INVOCATION_ID`), and `systemd-run` is there to ask it for a scope.
fn systemd_run() -> Option<PathBuf> {
    std::env::var_os("INVOCATION_ID")?;
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    ["/usr/bin/systemd-run", "/bin/systemd-run"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// Starts the runner in `dir`; the command's process id once it runs.
async fn launch(dir: &Path, id: &str, spec: &RunnerSpec) -> Result<u32, ErrorReport> {
    let exe =
        std::env::current_exe().map_err(|_| internal("cannot find the agent's own executable"))?;
    // An agent whose binary was replaced (an upgrade) starts the new one.
    let exe = PathBuf::from(
        exe.to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_owned(),
    );
    let spec = serde_json::to_vec(spec).map_err(|_| internal("cannot write the job's spec"))?;
    let scope = systemd_run();
    let launchers: &[Launcher] = if scope.is_some() {
        &[Launcher::Scope, Launcher::Session]
    } else {
        &[Launcher::Session]
    };
    let mut last = internal("the job runner did not start");
    for launcher in launchers {
        let mut command = match (launcher, &scope) {
            (Launcher::Scope, Some(systemd_run)) => {
                let mut c = Command::new(systemd_run);
                c.args(["--scope", "--quiet", "--collect", "--unit"])
                    .arg(format!("rexec-job-{id}"))
                    .arg("--")
                    .arg(&exe);
                c
            }
            _ => Command::new(&exe),
        };
        command
            .arg(SUBCOMMAND)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // The runner passes the open-files limits on to its command: the
        // ones the agent was started with.
        let limits = crate::exec::spawn::original_open_files_limit();
        // SAFETY: setsid and setrlimit are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                crate::exec::spawn::set_open_files_limit(limits)
            });
        }
        let spec = spec.clone();
        let attempt = tokio::task::spawn_blocking(move || -> Result<Ready, ErrorReport> {
            let mut child = command
                .spawn()
                .map_err(|_| internal("cannot start the job runner"))?;
            let mut stdin = child.stdin.take();
            let stdout = child.stdout.take();
            // Reaped whenever it ends; an agent gone by then leaves that
            // to whoever inherits it.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            if let Some(mut stdin) = stdin.take() {
                let _ = stdin.write_all(&spec);
            }
            let mut line = String::new();
            if let Some(stdout) = stdout {
                let _ = BufReader::new(stdout).read_line(&mut line);
            }
            serde_json::from_str(line.trim_end())
                .map_err(|_| internal("the job runner did not start"))
        });
        match tokio::time::timeout(READY_TIMEOUT, attempt).await {
            Ok(Ok(Ok(Ready::Started(pid)))) => {
                if *launcher == Launcher::Session && scope.is_some() {
                    tracing::warn!(
                        job = id,
                        "systemd would not start a scope for the job; it runs in the agent's unit and ends with it"
                    );
                }
                return Ok(pid);
            }
            Ok(Ok(Ok(Ready::Refused(report)))) => return Err(report),
            Ok(Ok(Err(report))) => last = report,
            Ok(Err(_)) => last = internal("the job runner did not start"),
            Err(_) => {
                return Err(internal(
                    "the job runner did not say within 30s whether the command started",
                ));
            }
        }
    }
    Err(last)
}
