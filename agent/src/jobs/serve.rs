//! A session's job request, answered from the state directory: start,
//! list, output (kept or followed), wait, kill, forget. A client sees
//! only the jobs its key started, unless its name is one of the admins;
//! any other job is "no such job", exactly as one that does not exist.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rexec_protocol::{
    AgentMessage, ClientMessage, DetachRequest, ErrorKind, ErrorReport, FrameError, JobId,
    JobRequest, JobStream, JobSummary, MAX_CHUNK_LEN,
};

pub use super::start::Caller;
use super::store::{self, Found};
use crate::audit::audit;
use crate::job::{Incoming, Outgoing, finish, refuse};
use crate::state::AgentState;

/// How often a waiting or following session looks at the job again.
const POLL: Duration = Duration::from_millis(100);
/// Longest command text in a list; the rest is cut.
const LISTED_COMMAND: usize = 512;
/// Most jobs in one list answer, so that it fits in a frame.
const MAX_LISTED: usize = 1000;

/// A job request, as the session read it.
#[derive(Debug)]
pub enum JobCall {
    /// Start a job.
    Detach(DetachRequest),
    /// About jobs started before.
    Job(JobRequest),
}

impl JobCall {
    /// What the log shows of it.
    pub fn subject(&self) -> &str {
        match self {
            JobCall::Detach(detach) => &detach.exec.command,
            JobCall::Job(_) => "",
        }
    }
}

/// Answers `call` for `caller` over the session's two halves.
///
/// # Errors
/// The client went away.
pub async fn serve(
    call: JobCall,
    caller: Caller,
    state: &AgentState,
    incoming: &mut impl Incoming,
    outgoing: &mut impl Outgoing,
) -> Result<(), FrameError> {
    let answer = match call {
        JobCall::Detach(request) => super::start::start(state, &caller, &request)
            .await
            .map(AgentMessage::Job),
        JobCall::Job(JobRequest::List) => Ok(AgentMessage::Jobs(list(state, &caller))),
        JobCall::Job(JobRequest::Output { id, follow }) => {
            return stream(state, &caller, &id, Some(follow), incoming, outgoing).await;
        }
        JobCall::Job(JobRequest::Wait { id }) => {
            return stream(state, &caller, &id, None, incoming, outgoing).await;
        }
        JobCall::Job(JobRequest::Kill { id }) => kill(state, &caller, &id).await,
        JobCall::Job(JobRequest::Forget { id }) => forget(state, &caller, &id),
        JobCall::Job(_) => Err(ErrorReport::new(
            ErrorKind::BadRequest,
            "this agent does not know that job request",
        )),
    };
    match answer {
        Ok(message) => finish(outgoing, message).await,
        Err(report) => {
            if report.kind != ErrorKind::NoSuchJob {
                tracing::info!(
                    client = caller.name.as_str(),
                    "job request refused: {}",
                    report.message
                );
            }
            refuse(outgoing, report).await;
            Ok(())
        }
    }
}

fn no_such_job(id: &JobId) -> ErrorReport {
    ErrorReport::new(ErrorKind::NoSuchJob, format!("no such job: {id}"))
}

fn may_see(state: &AgentState, caller: &Caller, found: &Found) -> bool {
    found.record.owner_fingerprint == caller.fingerprint.to_string()
        || state.settings.jobs.is_admin(&caller.name)
}

/// The job `id` if `caller` may see it.
fn find(state: &AgentState, caller: &Caller, id: &JobId) -> Result<Found, ErrorReport> {
    let dir = state.settings.jobs.state_dir.join(id.as_str());
    if !dir.is_dir() {
        return Err(no_such_job(id));
    }
    match store::load(&dir, id) {
        Ok(found) if may_see(state, caller, &found) => Ok(found),
        Ok(_) => Err(no_such_job(id)),
        Err(damage) => {
            state.jobs.log_damaged(id.as_str(), &damage.0);
            if state.settings.jobs.is_admin(&caller.name) {
                Err(ErrorReport::new(
                    ErrorKind::Internal,
                    format!("job {id} has a damaged record: {damage}"),
                ))
            } else {
                Err(no_such_job(id))
            }
        }
    }
}

fn list(state: &AgentState, caller: &Caller) -> Vec<JobSummary> {
    let mut jobs = Vec::new();
    for (id, dir) in store::job_dirs(&state.settings.jobs.state_dir) {
        match store::load(&dir, &id) {
            Ok(found) if may_see(state, caller, &found) => {
                let mut summary = found.summary();
                if summary.command.len() > LISTED_COMMAND {
                    let mut end = LISTED_COMMAND;
                    while !summary.command.is_char_boundary(end) {
                        end -= 1;
                    }
                    summary.command.truncate(end);
                    summary.command.push('…');
                }
                jobs.push(summary);
            }
            Ok(_) => {}
            Err(damage) => {
                state.jobs.log_damaged(id.as_str(), &damage.0);
                // Whose it was cannot be read: shown to the admins, who
                // can forget it.
                if state.settings.jobs.is_admin(&caller.name) {
                    jobs.push(damaged_summary(&id, &dir, &damage));
                }
            }
        }
    }
    jobs.sort_by_key(|job| job.started_ms);
    if jobs.len() > MAX_LISTED {
        jobs.drain(..jobs.len() - MAX_LISTED);
    }
    jobs
}

/// Output (`follow` given) or wait (`None`): the stream's opening, the
/// output, keepalives, and the job as it stands last.
async fn stream(
    state: &AgentState,
    caller: &Caller,
    id: &JobId,
    follow: Option<bool>,
    incoming: &mut impl Incoming,
    outgoing: &mut impl Outgoing,
) -> Result<(), FrameError> {
    let mut found = match find(state, caller, id) {
        Ok(found) => found,
        Err(report) => {
            refuse(outgoing, report).await;
            return Ok(());
        }
    };
    let with_output = follow.is_some();
    let live = follow.unwrap_or(true);
    let (out, err) = (found.extent("stdout"), found.extent("stderr"));
    let mut at = [out.dropped, err.dropped];
    let keepalive = crate::keepalive::Keepalive::of(&state.settings).interval();
    outgoing
        .send(AgentMessage::JobStream(JobStream {
            keepalive,
            stdout_dropped: if with_output { out.dropped } else { 0 },
            stderr_dropped: if with_output { err.dropped } else { 0 },
        }))
        .await?;
    tracing::debug!(client = caller.name.as_str(), job = %id, "job stream opened");
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        // Looked at before the output is read: a job seen over has all
        // its output on disk already.
        let over = found.over();
        if with_output {
            let mut sent_any = false;
            for (index, name) in ["stdout", "stderr"].into_iter().enumerate() {
                loop {
                    let (from, bytes) = match super::segments::read_at(
                        &found.dir,
                        name,
                        at[index],
                        MAX_CHUNK_LEN,
                    ) {
                        Ok(read) => read,
                        Err(_) => (at[index], Vec::new()),
                    };
                    if bytes.is_empty() {
                        break;
                    }
                    if from > at[index] {
                        // Dropped for the cap since we last read: said
                        // before the bytes, which do not follow on.
                        at[index] = from;
                        let gap = AgentMessage::JobStream(JobStream {
                            keepalive,
                            stdout_dropped: at[0],
                            stderr_dropped: at[1],
                        });
                        tokio::select! {
                            sent = outgoing.send(gap) => sent?,
                            () = state.shutdown.kill.cancelled() => return Ok(()),
                        }
                    }
                    at[index] = from + bytes.len() as u64;
                    let chunk = bytes::Bytes::from(bytes);
                    let message = if index == 0 {
                        AgentMessage::Stdout(chunk)
                    } else {
                        AgentMessage::Stderr(chunk)
                    };
                    tokio::select! {
                        sent = outgoing.send(message) => sent?,
                        () = state.shutdown.kill.cancelled() => return Ok(()),
                    }
                    sent_any = true;
                    // Each stream in turn, so a follower sees both move.
                    if live {
                        break;
                    }
                }
            }
            if sent_any {
                // Again at once: until nothing is left, nothing waits.
                quiet_since = tokio::time::Instant::now();
                continue;
            }
        }
        if over || !live {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            message = incoming.next() => match message {
                Some(Ok(ClientMessage::Keepalive)) => {}
                // Gone, or talking out of turn: the job goes on regardless.
                _ => return Ok(()),
            },
            () = state.shutdown.stop.cancelled() => {
                let report = ErrorReport::new(
                    ErrorKind::ShuttingDown,
                    "the agent is stopping; the job goes on (ask again once it is back)",
                );
                refuse(outgoing, report).await;
                return Ok(());
            }
        }
        if let Some(interval) = keepalive
            && quiet_since.elapsed() >= interval
        {
            outgoing.send(AgentMessage::Keepalive).await?;
            quiet_since = tokio::time::Instant::now();
        }
        found = match find(state, caller, id) {
            Ok(found) => found,
            Err(report) => {
                refuse(outgoing, report).await;
                return Ok(());
            }
        };
    }
    // Removed while we read it (retention, max_kept_job_bytes, a forget):
    // what was sent is not the whole output, and the client must not take
    // it for that.
    if with_output && !found.dir.exists() {
        let report = ErrorReport::new(
            ErrorKind::NoSuchJob,
            format!("job {id} was removed while its output was read; what came is not all of it"),
        );
        refuse(outgoing, report).await;
        return Ok(());
    }
    finish(outgoing, AgentMessage::Job(found.summary())).await
}

/// Whether `pid` is the runner of the job in `dir`: alive, and working
/// in that directory. The pid comes from a file: it is checked before
/// anything is sent to it.
fn is_runner(pid: u32, dir: &std::path::Path) -> bool {
    if pid <= 1 {
        return false;
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
    let here = std::fs::canonicalize(dir);
    matches!((cwd, here), (Ok(cwd), Ok(here)) if cwd == here)
}

async fn kill(
    state: &AgentState,
    caller: &Caller,
    id: &JobId,
) -> Result<AgentMessage, ErrorReport> {
    let found = find(state, caller, id)?;
    if let Some(group) = found.orphaned_group() {
        // Lost: its runner is gone, its command is not. Ended here, as the
        // runner would have: TERM, KILL after the grace.
        audit_request(caller, &found, "kill");
        let group = nix::unistd::Pid::from_raw(group);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + state.settings.kill_grace;
        while found.orphaned_group().is_some() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        if found.orphaned_group().is_some() {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while found.orphaned_group().is_some() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
        }
        return Ok(AgentMessage::Job(find(state, caller, id)?.summary()));
    }
    if found.over() {
        return Ok(AgentMessage::Job(found.summary()));
    }
    let runner = match &found.status {
        Ok(Some(status)) => status.runner_pid,
        _ => 0,
    };
    if !is_runner(runner, &found.dir) {
        return Err(ErrorReport::new(
            ErrorKind::Internal,
            format!("cannot find what runs job {id} to end it"),
        ));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runner as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    audit_request(caller, &found, "kill");
    let bound = state.settings.kill_grace + Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + bound;
    let mut now = find(state, caller, id)?;
    while !now.over() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        now = find(state, caller, id)?;
    }
    Ok(AgentMessage::Job(now.summary()))
}

/// The audit line of a request that changes a job: who asked, for which
/// job, whose it is.
fn audit_request(caller: &Caller, found: &Found, request: &str) {
    audit!(
        tracing::Level::INFO,
        caller,
        job = found.record.id.as_str(),
        owner = found.record.owner.as_str(),
        "job {request}"
    );
}

/// What a job whose record cannot be read is listed as: started, as far
/// as anyone can tell, when its directory last changed.
fn damaged_summary(id: &JobId, dir: &std::path::Path, damage: &store::Damage) -> JobSummary {
    JobSummary {
        id: id.clone(),
        state: rexec_protocol::JobState::Damaged,
        command: String::new(),
        owner: String::new(),
        started_ms: store::changed_ms(dir).unwrap_or(0),
        ended_ms: None,
        stdout_bytes: 0,
        stderr_bytes: 0,
        stdout_dropped: 0,
        stderr_dropped: 0,
        note: Some(format!("its record is damaged: {damage}")),
    }
}

fn forget(state: &AgentState, caller: &Caller, id: &JobId) -> Result<AgentMessage, ErrorReport> {
    // A record nobody can read names no owner: an admin may remove it,
    // once nothing runs it any more.
    let dir = state.settings.jobs.state_dir.join(id.as_str());
    if state.settings.jobs.is_admin(&caller.name)
        && dir.is_dir()
        && let Err(damage) = store::load(&dir, id)
    {
        if store::runner_alive(&dir) {
            return Err(ErrorReport::new(
                ErrorKind::BadRequest,
                format!("job {id} has a damaged record and still runs: kill it first"),
            ));
        }
        let summary = damaged_summary(id, &dir, &damage);
        std::fs::remove_dir_all(&dir).map_err(|e| {
            ErrorReport::new(
                ErrorKind::WriteFailed,
                format!("cannot remove job {id}: {}", super::io_text(&e)),
            )
        })?;
        audit!(
            tracing::Level::INFO,
            caller,
            job = id.as_str(),
            "job forget (its record was damaged)"
        );
        return Ok(AgentMessage::Job(summary));
    }
    let found = find(state, caller, id)?;
    if !found.over() {
        return Err(ErrorReport::new(
            ErrorKind::BadRequest,
            format!("job {id} is still running: kill it first, or wait for it"),
        ));
    }
    // Its record is the only handle on a lost job's command that runs on.
    if found.orphaned_group().is_some() {
        return Err(ErrorReport::new(
            ErrorKind::BadRequest,
            format!("job {id} was lost but its command still runs: kill it first"),
        ));
    }
    let summary = found.summary();
    super::watch::log_end(&state.jobs, &found, &summary);
    std::fs::remove_dir_all(&found.dir).map_err(|e| {
        ErrorReport::new(
            ErrorKind::WriteFailed,
            format!("cannot remove job {id}: {}", super::io_text(&e)),
        )
    })?;
    audit_request(caller, &found, "forget");
    Ok(AgentMessage::Job(summary))
}
