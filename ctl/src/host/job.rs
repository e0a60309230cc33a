//! Detached jobs on one of many hosts: the jobs the fan-out engine runs
//! per target for `ctl exec --detach` and `ctl job …`, and what each comes
//! to ([`Accepted`], [`Listed`], [`JobEnd`]).

use std::sync::Arc;

use futures_util::SinkExt;
use rexec_protocol::{
    AgentMessage, ClientMessage, DetachRequest, ExitStatus, FrameError, JobRequest, JobState,
    JobSummary,
};
use serde_json::{Map, Value, json};

use crate::connect::{self, Client};
use crate::console::Stream;
use crate::error::{CtlError, EXIT_CTL_ERROR, exit_code};
use crate::liveness::Liveness;
use crate::outcome::Finished;
use crate::output::{Describe, Output, no_exit};
use crate::target::Target;

/// A host that runs the job now.
#[derive(Debug)]
pub struct Accepted(pub JobSummary);

impl Finished for Accepted {}

impl Describe for Accepted {
    fn describe(&self, record: &mut Map<String, Value>) {
        record.insert("status".into(), json!("accepted"));
        no_exit(record);
        record.insert("id".into(), json!(self.0.id.as_str()));
    }
}

/// A host's jobs.
#[derive(Debug)]
pub struct Listed(pub Vec<JobSummary>);

impl Finished for Listed {}

impl Describe for Listed {
    fn describe(&self, record: &mut Map<String, Value>) {
        record.insert("status".into(), json!("listed"));
        no_exit(record);
    }
}

/// How a job stands at the end of a request about it.
#[derive(Debug)]
pub struct JobEnd {
    /// The job.
    pub summary: JobSummary,
    /// Whether ctl exits with the job's status (output, wait) rather than
    /// with whether the request worked (kill, forget).
    pub passes_status: bool,
}

/// A job's state in words: `running`, `exited 3`, `killed by signal 15`,
/// `timed out`, `lost`, `damaged`.
pub fn state_text(state: &JobState) -> String {
    match state {
        JobState::Running => "running".into(),
        JobState::Ended(ExitStatus::Code(code)) => format!("exited {code}"),
        JobState::Ended(ExitStatus::Signal { signal, .. }) => format!("killed by signal {signal}"),
        JobState::Ended(ExitStatus::TimedOut) => "timed out".into(),
        JobState::Lost => "lost".into(),
        JobState::Damaged => "damaged".into(),
        _ => "unknown".into(),
    }
}

impl Finished for JobEnd {
    fn exit_code(&self) -> u8 {
        match self.summary.state {
            JobState::Ended(status) if self.passes_status => exit_code(status),
            JobState::Running | JobState::Ended(_) => 0,
            _ => EXIT_CTL_ERROR,
        }
    }

    fn failure(&self) -> Option<String> {
        match self.summary.state {
            JobState::Ended(status) if self.passes_status => status.failure(),
            JobState::Running | JobState::Ended(_) => None,
            state => Some(state_text(&state)),
        }
    }
}

impl Describe for JobEnd {
    fn describe(&self, record: &mut Map<String, Value>) {
        describe_job(&self.summary, record);
    }

    fn note(&self) -> Option<String> {
        self.summary.note.clone()
    }
}

/// The fields of one job in a `--json` record.
pub fn describe_job(job: &JobSummary, record: &mut Map<String, Value>) {
    let (code, signal) = match job.state {
        JobState::Ended(ExitStatus::Code(code)) => (json!(code), Value::Null),
        JobState::Ended(ExitStatus::Signal { signal, .. }) => (Value::Null, json!(signal)),
        _ => (Value::Null, Value::Null),
    };
    let state = match job.state {
        JobState::Running => "running",
        JobState::Ended(ExitStatus::Code(_)) => "exited",
        JobState::Ended(ExitStatus::Signal { .. }) => "killed",
        JobState::Ended(ExitStatus::TimedOut) => "timed-out",
        JobState::Lost => "lost",
        JobState::Damaged => "damaged",
        _ => "unknown",
    };
    record.insert("status".into(), json!(state));
    record.insert("exit_code".into(), code);
    record.insert("signal".into(), signal);
    record.insert("id".into(), json!(job.id.as_str()));
    record.insert(
        "command".into(),
        json!(crate::plain::agent_text(&job.command)),
    );
    record.insert("owner".into(), json!(job.owner));
    record.insert("started".into(), json!(time_text(job.started_ms)));
    record.insert("ended".into(), json!(job.ended_ms.map(time_text)));
    record.insert("stdout_bytes".into(), json!(job.stdout_bytes));
    record.insert("stderr_bytes".into(), json!(job.stderr_bytes));
    record.insert("stdout_dropped".into(), json!(job.stdout_dropped));
    record.insert("stderr_dropped".into(), json!(job.stderr_dropped));
    record.insert(
        "note".into(),
        json!(job.note.as_deref().map(crate::plain::agent_text)),
    );
}

/// Milliseconds since the Unix epoch as an RFC 3339 time, to the second.
pub fn time_text(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn closed_early() -> CtlError {
    CtlError::Connection(crate::error::ConnectionError::Lost(
        "the agent closed the connection before answering".into(),
    ))
}

/// Sends `request` to `target` and reads the agent's one answer; an error
/// report is its refusal.
async fn answer(
    client: &Client,
    target: &Target,
    request: ClientMessage,
) -> Result<AgentMessage, CtlError> {
    let session = connect::open(client, target, request).await?;
    let mut incoming = session.connection.incoming;
    match Liveness::new().next(&mut incoming).await? {
        Some(Ok(AgentMessage::Error(report))) => Err(CtlError::Agent(report)),
        Some(Ok(answer)) => Ok(answer),
        Some(Err(e)) => Err(CtlError::lost(&e)),
        None => Err(closed_early()),
    }
}

/// Starts `request` on `target`.
///
/// # Errors
/// When the agent could not be reached or refused the job.
pub async fn detach(
    client: Arc<Client>,
    target: Target,
    request: DetachRequest,
) -> Result<Accepted, CtlError> {
    match answer(&client, &target, ClientMessage::Detach(request)).await? {
        AgentMessage::Job(summary) => Ok(Accepted(summary)),
        other => Err(CtlError::unexpected(&other)),
    }
}

/// The jobs on `target` that we may see.
///
/// # Errors
/// When the agent could not be reached or refused.
pub async fn list(client: Arc<Client>, target: Target) -> Result<Listed, CtlError> {
    match answer(&client, &target, ClientMessage::Job(JobRequest::List)).await? {
        AgentMessage::Jobs(jobs) => Ok(Listed(jobs)),
        other => Err(CtlError::unexpected(&other)),
    }
}

/// Output, wait, kill or forget on `target`: output chunks to `output`
/// as host `index`, a note for dropped output, the job as it stands last.
///
/// # Errors
/// When the agent could not be reached, refused, or stopped answering.
pub async fn request(
    client: Arc<Client>,
    target: Target,
    request: JobRequest,
    index: usize,
    output: Arc<dyn Output<JobEnd>>,
    notes: Arc<dyn Fn(String) + Send + Sync>,
) -> Result<JobEnd, CtlError> {
    let passes_status = matches!(request, JobRequest::Output { .. } | JobRequest::Wait { .. });
    let session = connect::open(&client, &target, ClientMessage::Job(request)).await?;
    let mut incoming = session.connection.incoming;
    let mut outgoing = session.connection.outgoing;
    let lost = |e: FrameError| CtlError::lost(&e);
    let mut alive = Liveness::new();
    loop {
        let message = match alive.next(&mut incoming).await? {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(CtlError::lost(&e)),
            None => return Err(closed_early()),
        };
        match message {
            AgentMessage::JobStream(opening) => {
                alive.started(opening.keepalive);
                for (name, dropped) in [
                    ("stdout", opening.stdout_dropped),
                    ("stderr", opening.stderr_dropped),
                ] {
                    if dropped > 0 {
                        notes(format!(
                            "the oldest {dropped} bytes of the job's {name} were dropped (the agent's max_job_output)"
                        ));
                    }
                }
            }
            AgentMessage::Stdout(chunk) => output.chunk(index, Stream::Stdout, &chunk),
            AgentMessage::Stderr(chunk) => output.chunk(index, Stream::Stderr, &chunk),
            AgentMessage::Keepalive => {
                outgoing
                    .send(ClientMessage::Keepalive)
                    .await
                    .map_err(lost)?;
            }
            AgentMessage::Job(summary) => {
                return Ok(JobEnd {
                    summary,
                    passes_status,
                });
            }
            AgentMessage::Error(report) => return Err(CtlError::Agent(report)),
            other => return Err(CtlError::unexpected(&other)),
        }
    }
}
