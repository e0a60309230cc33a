//! Detached jobs on one of many hosts: the jobs the fan-out engine runs
//! per target for `ctl exec --detach` and `ctl job …`, and what each comes
//! to ([`Accepted`], [`Listed`], [`JobEnd`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use rexec_protocol::{
    AgentMessage, ClientMessage, DetachRequest, ErrorKind, ExitStatus, FrameError, JobRequest,
    JobState, JobSummary,
};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

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

/// A kill or a forget answered with the job worked whatever the job's
/// state (a lost or damaged job is forgotten, or what is left of it
/// killed, as asked); output and wait pass the job's own end on, and a job
/// lost or damaged is a failure there.
impl Finished for JobEnd {
    fn exit_code(&self) -> u8 {
        match self.summary.state {
            JobState::Ended(status) if self.passes_status => exit_code(status),
            _ if !self.passes_status => 0,
            JobState::Running | JobState::Ended(_) => 0,
            _ => EXIT_CTL_ERROR,
        }
    }

    fn failure(&self) -> Option<String> {
        match self.summary.state {
            JobState::Ended(status) if self.passes_status => status.failure(),
            _ if !self.passes_status => None,
            JobState::Running | JobState::Ended(_) => None,
            state => Some(state_text(&state)),
        }
    }
}

impl Describe for JobEnd {
    fn describe(&self, record: &mut Map<String, Value>) {
        describe_job(&self.summary, record);
    }

    /// The agent's note on the job; for output and wait of a job that ran
    /// out of time, the line `ctl exec` gives a timed-out command.
    fn note(&self) -> Option<String> {
        self.summary.note.clone().or_else(|| {
            (self.passes_status && self.summary.state == JobState::Ended(ExitStatus::TimedOut))
                .then(|| "command timed out; its process group was killed".into())
        })
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
    // The command as it was given, for a script to run again or compare:
    // JSON escapes what needs escaping, and escaping it once more here
    // would turn a tab into the two characters `\t`.
    record.insert("command".into(), json!(job.command));
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

/// How the agent's first pause between attempts grows, and to what.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);

/// Whether a request that failed with `e` may work when asked again once
/// the agent is back: it was stopping (a restart, an upgrade), could not be
/// reached, or the connection to it broke. Everything else (a name that
/// does not resolve, a refused identity, a changed host key, no such job)
/// would fail the same way again.
fn comes_back(e: &CtlError) -> bool {
    use crate::error::ConnectionError as C;
    match e {
        CtlError::Agent(report) => report.kind == ErrorKind::ShuttingDown,
        CtlError::Connection(c) => matches!(
            c,
            C::Connect(_) | C::ConnectTimeout(_) | C::Lost(_) | C::Offline | C::SessionLost(_)
        ),
        _ => false,
    }
}

/// The bytes of each stream already passed on, counted from the job's
/// first byte, so that output asked for again after a reconnection goes
/// out once: the agent sends what it keeps from the start again.
#[derive(Debug, Default)]
struct Passed {
    at: [u64; 2],
    /// Whether an earlier answer opened a stream (the first one tells of
    /// the oldest bytes dropped; the later ones only of new gaps).
    opened: bool,
}

impl Passed {
    /// The agent opened the job's stream with `dropped` bytes of each
    /// stream gone before its first chunk: the notes to give for bytes
    /// ctl will never pass on.
    fn open(&mut self, dropped: [u64; 2]) -> Vec<String> {
        let mut notes = Vec::new();
        for (i, name) in ["stdout", "stderr"].into_iter().enumerate() {
            let gap = dropped[i].saturating_sub(self.at[i]);
            if gap == 0 {
                continue;
            }
            notes.push(if self.opened {
                format!(
                    "{gap} more bytes of the job's {name} were dropped before ctl could read them (the agent's max_job_output)"
                )
            } else {
                format!(
                    "the oldest {gap} bytes of the job's {name} were dropped (the agent's max_job_output)"
                )
            });
            self.at[i] = dropped[i];
        }
        self.opened = true;
        notes
    }
}

/// Output, wait, kill or forget on `target`: output chunks to `output`
/// as host `index`, a note for dropped output, the job as it stands last.
///
/// With `reconnect`, an agent that goes away once it has answered (it
/// restarts, the network drops) is asked again, the pauses growing to 2 s,
/// until it answers or has been away that long; a note says so once per
/// absence. One that cannot be reached at the start fails at once.
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
    reconnect: Duration,
) -> Result<JobEnd, CtlError> {
    let passes_status = matches!(request, JobRequest::Output { .. } | JobRequest::Wait { .. });
    let mut passed = Passed::default();
    let mut away: Option<Instant> = None;
    let mut pause = FIRST_PAUSE;
    // Whether the agent has answered at all in this run.
    let mut answered = false;
    let to = To {
        output: &*output,
        index,
        notes: &*notes,
    };
    loop {
        let mut served = false;
        let asked = ask(
            &client,
            &target,
            request.clone(),
            &to,
            &mut passed,
            &mut served,
        )
        .await;
        let e = match asked {
            Ok(summary) => {
                return Ok(JobEnd {
                    summary,
                    passes_status,
                });
            }
            Err(e) => e,
        };
        if served {
            answered = true;
            away = None;
            pause = FIRST_PAUSE;
        }
        // A host that could not be reached before it ever answered fails at
        // once, as a host that is down does for every other request; one
        // that answered, or said it is stopping, is waited for.
        let stopping = matches!(&e, CtlError::Agent(_));
        if reconnect.is_zero() || !comes_back(&e) || !(answered || stopping) {
            return Err(e);
        }
        let since = match away {
            Some(since) => since,
            None => {
                let why = match &e {
                    CtlError::Agent(_) => "the agent is stopping".to_owned(),
                    other => other.to_string(),
                };
                notes(format!(
                    "{why}; the job goes on there, asking again for up to {}",
                    humantime::format_duration(reconnect)
                ));
                *away.insert(Instant::now())
            }
        };
        if since.elapsed() >= reconnect {
            return Err(e);
        }
        tokio::time::sleep(pause.min(reconnect.saturating_sub(since.elapsed()))).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// Where a request's output and notes go: host `index` of `output`.
struct To<'a> {
    output: &'a dyn Output<JobEnd>,
    index: usize,
    notes: &'a (dyn Fn(String) + Send + Sync),
}

/// One request and its answers; `served` is set once the agent has
/// answered our hello (it is there, and speaks to us).
async fn ask(
    client: &Client,
    target: &Target,
    request: JobRequest,
    to: &To<'_>,
    passed: &mut Passed,
    served: &mut bool,
) -> Result<JobSummary, CtlError> {
    let session = connect::open(client, target, ClientMessage::Job(request)).await?;
    *served = true;
    let mut incoming = session.connection.incoming;
    let mut outgoing = session.connection.outgoing;
    let lost = |e: FrameError| CtlError::lost(&e);
    let mut alive = Liveness::new();
    // Where the next chunk of each stream starts, counted as `passed` is.
    let mut at = [0u64; 2];
    loop {
        let message = match alive.next(&mut incoming).await? {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(CtlError::lost(&e)),
            None => return Err(closed_early()),
        };
        match message {
            // The opening, or output dropped for the cap while the stream
            // ran: the next bytes start at these places.
            AgentMessage::JobStream(opening) => {
                alive.started(opening.keepalive);
                at = [opening.stdout_dropped, opening.stderr_dropped];
                for note in passed.open(at) {
                    (to.notes)(note);
                }
            }
            AgentMessage::Stdout(chunk) => pass(to, Stream::Stdout, &chunk, &mut at, passed),
            AgentMessage::Stderr(chunk) => pass(to, Stream::Stderr, &chunk, &mut at, passed),
            AgentMessage::Keepalive => {
                outgoing
                    .send(ClientMessage::Keepalive)
                    .await
                    .map_err(lost)?;
            }
            AgentMessage::Job(summary) => return Ok(summary),
            AgentMessage::Error(report) => return Err(CtlError::Agent(report)),
            other => return Err(CtlError::unexpected(&other)),
        }
    }
}

/// Passes on the part of `chunk` (of `stream`, starting where `at` says)
/// that has not gone out before.
fn pass(to: &To<'_>, stream: Stream, chunk: &[u8], at: &mut [u64; 2], passed: &mut Passed) {
    let i = usize::from(stream == Stream::Stderr);
    let start = at[i];
    at[i] += chunk.len() as u64;
    let seen = usize::try_from(passed.at[i].saturating_sub(start)).unwrap_or(usize::MAX);
    if let Some(new) = chunk.get(seen..).filter(|new| !new.is_empty()) {
        to.output.chunk(to.index, stream, new);
        passed.at[i] = at[i];
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::outcome::HostResult;
    use rexec_protocol::ErrorReport;

    /// What went out, per stream.
    #[derive(Default)]
    struct Record(Mutex<[Vec<u8>; 2]>);

    fn to(out: &Record) -> To<'_> {
        To {
            output: out,
            index: 0,
            notes: &|_| {},
        }
    }

    impl Output<JobEnd> for Record {
        fn chunk(&self, _host: usize, stream: Stream, data: &[u8]) {
            let i = usize::from(matches!(stream, Stream::Stderr));
            self.0.lock().unwrap()[i].extend_from_slice(data);
        }
        fn done(&self, _result: &HostResult<JobEnd>) {}
    }

    #[test]
    fn a_jobs_json_record_carries_its_command_exactly() {
        let command = "printf 'a\tb\n' | tr '\t' ' ' # \u{1b}[2J";
        let job = JobSummary {
            id: rexec_protocol::JobId::from_bytes([0xab; 16]),
            state: JobState::Running,
            command: command.into(),
            owner: "alice".into(),
            started_ms: 0,
            ended_ms: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_dropped: 0,
            stderr_dropped: 0,
            note: Some("disk full\nfrom byte 7".into()),
        };
        let mut record = Map::new();
        describe_job(&job, &mut record);
        let line = serde_json::to_string(&record).unwrap();
        let back: Map<String, Value> = serde_json::from_str(&line).unwrap();
        assert_eq!(back["command"], command);
        // The agent's note is its words, printed as one inert line.
        assert_eq!(back["note"], "disk full\\nfrom byte 7");
        assert!(!line.contains('\u{1b}'), "{line}");
    }

    #[test]
    fn output_sent_again_after_a_reconnection_goes_out_once() {
        let out = Record::default();
        let mut passed = Passed::default();
        // The first answer: "hello " and "e1", then the connection breaks.
        let mut at = [0, 0];
        pass(&to(&out), Stream::Stdout, b"hel", &mut at, &mut passed);
        pass(&to(&out), Stream::Stdout, b"lo ", &mut at, &mut passed);
        pass(&to(&out), Stream::Stderr, b"e1", &mut at, &mut passed);
        // The second from the start again, in other pieces, and more.
        let mut at = [0, 0];
        pass(&to(&out), Stream::Stdout, b"he", &mut at, &mut passed);
        pass(&to(&out), Stream::Stdout, b"llo wor", &mut at, &mut passed);
        pass(&to(&out), Stream::Stderr, b"e1e2", &mut at, &mut passed);
        pass(&to(&out), Stream::Stdout, b"ld", &mut at, &mut passed);
        let [stdout, stderr] = out.0.into_inner().unwrap();
        assert_eq!(stdout, b"hello world");
        assert_eq!(stderr, b"e1e2");
        assert_eq!(passed.at, [11, 4]);
    }

    #[test]
    fn output_past_a_gap_starts_where_the_agent_says_and_is_noted_once() {
        let out = Record::default();
        let mut passed = Passed::default();
        assert_eq!(
            passed.open([2, 0]),
            ["the oldest 2 bytes of the job's stdout were dropped (the agent's max_job_output)"]
        );
        let mut at = [2, 0];
        pass(&to(&out), Stream::Stdout, b"abc", &mut at, &mut passed);
        // Back after a reconnection: the agent has dropped up to byte 10.
        assert_eq!(
            passed.open([10, 0]),
            [
                "5 more bytes of the job's stdout were dropped before ctl could read them (the agent's max_job_output)"
            ]
        );
        let mut at = [10, 0];
        pass(&to(&out), Stream::Stdout, b"tail", &mut at, &mut passed);
        // And again with nothing new dropped: no note, nothing twice.
        assert!(passed.open([10, 0]).is_empty());
        let mut at = [10, 0];
        pass(&to(&out), Stream::Stdout, b"tail!", &mut at, &mut passed);
        assert_eq!(out.0.into_inner().unwrap()[0], b"abctail!");
        assert_eq!(passed.at[0], 15);
    }

    #[test]
    fn only_a_stopping_agent_or_a_lost_connection_is_asked_again() {
        use crate::error::ConnectionError as C;
        let stopping = ErrorReport::new(ErrorKind::ShuttingDown, "stopping");
        let no_job = ErrorReport::new(ErrorKind::NoSuchJob, "no such job");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(comes_back(&CtlError::Agent(stopping)));
        assert!(comes_back(&C::Connect(refused).into()));
        assert!(comes_back(&C::Lost("reset".into()).into()));
        assert!(comes_back(&C::Offline.into()));
        assert!(!comes_back(&CtlError::Agent(no_job)));
        let unresolved = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(!comes_back(&C::Resolve(unresolved).into()));
        assert!(!comes_back(&C::Protocol("bad".into()).into()));
    }
}
