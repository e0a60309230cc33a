//! The fan-out engine: run one async job per target, at most N at a time,
//! each under its own deadline, and hand every host's result back as soon
//! as that host is done.
//!
//! The engine knows nothing of exec, ping or copy: a job is any future that
//! yields a value implementing [`Finished`] (how that value counts towards
//! the exit status and the failure summary) or a [`CtlError`]. Everything
//! that must be the same for every multi-host command lives here: the
//! concurrency limit, the per-host deadline, cancellation on Ctrl-C or a
//! closed stdout, the exit code, and the end-of-run summary.
//!
//! A new multi-host command (say, copying a file to many hosts) brings a
//! job and its result type (implementing [`Finished`] here and
//! [`crate::output::Describe`] for the output modes) and reuses the rest:
//! [`Fanout::run`], [`Tally`], [`labels`], and the output modes of
//! [`crate::output`], which are generic over the result type.
//!
//! A host that hangs holds one slot and nothing else: results are handed
//! over in completion order, and the run ends when the last host has
//! finished or hit its own deadline.

pub mod exec;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rexec_protocol::{
    AgentMessage, ClientMessage, ExitStatus, FrameError, Hello, PROTOCOL_VERSION,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connect::{Client, Connection};
use crate::error::{CtlError, EXIT_CTL_ERROR, EXIT_INTERRUPTED, EXIT_TIMED_OUT, exit_code};
use crate::nodeset;
use crate::output::Console;
use crate::target::Target;

/// How many hosts run at once unless `--fanout` says otherwise.
pub const DEFAULT_FANOUT: usize = 64;

/// What a finished job reports, as the engine needs to see it.
pub trait Finished: Send + 'static {
    /// The exit code this host contributes; the run exits with the largest.
    fn exit_code(&self) -> u8;
    /// The outcome's name in the failure summary (`exit 3`, `timed out`),
    /// or `None` when the host succeeded.
    fn failure(&self) -> Option<String>;
}

impl Finished for ExitStatus {
    fn exit_code(&self) -> u8 {
        exit_code(*self)
    }

    fn failure(&self) -> Option<String> {
        match self {
            ExitStatus::Code(0) => None,
            ExitStatus::Code(code) => Some(format!("exit {code}")),
            ExitStatus::Signal { signal, .. } => Some(format!("signal {signal}")),
            ExitStatus::TimedOut => Some("timed out".into()),
            _ => Some("unknown status".into()),
        }
    }
}

/// ctl's own bound on each host's job, from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The job's own time limit (`ctl cp --timeout`): past it the host
    /// timed out (124).
    Timeout(Duration),
    /// Past this the agent is taken as having stopped answering (`ctl exec`
    /// and `ctl ping`, whose time limits the agent enforces): an error
    /// (255), not a timeout, since nobody killed the command.
    NoAnswer(Duration),
}

impl Deadline {
    fn after(self) -> Duration {
        match self {
            Deadline::Timeout(d) | Deadline::NoAnswer(d) => d,
        }
    }

    fn failure(self) -> HostFailure {
        match self {
            Deadline::Timeout(d) => HostFailure::Deadline(d),
            Deadline::NoAnswer(d) => HostFailure::Ctl(CtlError::NoAnswer(d)),
        }
    }
}

/// Why a host has no result of its own.
#[derive(Debug, thiserror::Error)]
pub enum HostFailure {
    /// ctl could not run the job there.
    #[error(transparent)]
    Ctl(#[from] CtlError),
    /// The job did not finish within its own time limit; ctl gave up on it.
    #[error("not done within the timeout of {}; ctl gave up on this host", humantime::format_duration(*.0))]
    Deadline(Duration),
    /// The run was interrupted (Ctrl-C) before this host finished.
    #[error("interrupted")]
    Interrupted,
}

impl HostFailure {
    /// A short stable name for the kind of failure.
    pub fn kind(&self) -> &'static str {
        match self {
            HostFailure::Ctl(e) => e.kind(),
            HostFailure::Deadline(_) => "deadline",
            HostFailure::Interrupted => "interrupted",
        }
    }

    /// The exit code this failure contributes.
    pub fn exit_code(&self) -> u8 {
        match self {
            HostFailure::Ctl(_) => EXIT_CTL_ERROR,
            HostFailure::Deadline(_) => EXIT_TIMED_OUT,
            HostFailure::Interrupted => EXIT_INTERRUPTED,
        }
    }

    /// The failure's name in the summary.
    pub fn summary_name(&self) -> String {
        match self {
            HostFailure::Deadline(_) => "timed out".into(),
            other => other.kind().to_owned(),
        }
    }
}

/// One host's result.
#[derive(Debug)]
pub struct HostResult<T> {
    /// The host's position in the target list.
    pub index: usize,
    /// The host.
    pub target: Target,
    /// From the job's start (not its wait for a slot) to its end.
    pub duration: Duration,
    /// What the job yielded.
    pub outcome: Result<T, HostFailure>,
}

impl<T: Finished> HostResult<T> {
    /// The exit code this host contributes.
    pub fn exit_code(&self) -> u8 {
        match &self.outcome {
            Ok(value) => value.exit_code(),
            Err(failure) => failure.exit_code(),
        }
    }

    /// The outcome's name in the failure summary, `None` on success.
    pub fn failure(&self) -> Option<String> {
        match &self.outcome {
            Ok(value) => value.failure(),
            Err(failure) => Some(failure.summary_name()),
        }
    }
}

/// The engine's settings for one run.
#[derive(Debug, Clone)]
pub struct Fanout {
    /// Most hosts at once (at least 1).
    pub limit: usize,
    /// ctl's own bound on each host's job, from its start.
    pub deadline: Option<Deadline>,
    /// Cancelled on Ctrl-C or when our stdout's reader goes away; running
    /// jobs are dropped (closing their connections, which makes the agents
    /// kill the commands) and no new ones start.
    pub cancel: CancellationToken,
}

impl Fanout {
    /// Runs `job(index, target)` for every target and calls `done` with
    /// each host's result in the order the hosts finish. Hosts never started
    /// because the run was cancelled are reported as interrupted.
    pub async fn run<T, J, F>(
        &self,
        targets: &[Target],
        console: &Console,
        job: J,
        mut done: impl FnMut(HostResult<T>),
    ) where
        T: Finished,
        J: Fn(usize, Target) -> F,
        F: Future<Output = Result<T, CtlError>> + Send + 'static,
    {
        let mut running = JoinSet::new();
        let mut next = 0;
        let limit = self.limit.max(1);
        loop {
            while running.len() < limit && next < targets.len() && !self.cancel.is_cancelled() {
                let target = targets[next].clone();
                let work = job(next, target.clone());
                let cancel = self.cancel.clone();
                let deadline = self.deadline;
                let index = next;
                console.host_started();
                running.spawn(async move {
                    let started = tokio::time::Instant::now();
                    let bounded = async {
                        match deadline {
                            Some(limit) => match tokio::time::timeout(limit.after(), work).await {
                                Ok(result) => result.map_err(HostFailure::from),
                                Err(_) => Err(limit.failure()),
                            },
                            None => work.await.map_err(HostFailure::from),
                        }
                    };
                    let outcome = tokio::select! {
                        outcome = bounded => outcome,
                        _ = cancel.cancelled() => Err(HostFailure::Interrupted),
                    };
                    HostResult {
                        index,
                        target,
                        duration: started.elapsed(),
                        outcome,
                    }
                });
                next += 1;
            }
            match running.join_next().await {
                Some(Ok(result)) => {
                    console.host_finished(result.failure().is_some());
                    done(result);
                }
                // A job panicked: a bug, and the run cannot be trusted.
                Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Some(Err(_)) => {}
                None => break,
            }
        }
        for (index, target) in targets.iter().enumerate().skip(next) {
            done(HostResult {
                index,
                target: target.clone(),
                duration: Duration::ZERO,
                outcome: Err(HostFailure::Interrupted),
            });
        }
    }
}

/// What every multi-host run ends with: the exit code and the failures,
/// grouped by outcome.
#[derive(Debug, Default)]
pub struct Tally {
    total: usize,
    code: u8,
    failures: BTreeMap<String, Vec<String>>,
}

impl Tally {
    /// Counts one host's result under the name `label`.
    pub fn add<T: Finished>(&mut self, label: &str, result: &HostResult<T>) {
        self.total += 1;
        self.code = self.code.max(result.exit_code());
        if let Some(name) = result.failure() {
            self.failures
                .entry(name)
                .or_default()
                .push(label.to_owned());
        }
    }

    /// 0 when every host succeeded, else the largest per-host code.
    pub fn exit_code(&self) -> u8 {
        self.code
    }

    /// One line naming the failed hosts as node sets, grouped by outcome:
    /// `2 of 20 hosts failed: exit 3: node[04-05]; connect: node09`.
    /// `None` when nothing failed.
    pub fn summary(&self) -> Option<String> {
        if self.failures.is_empty() {
            return None;
        }
        let failed: usize = self.failures.values().map(Vec::len).sum();
        let groups: Vec<String> = self
            .failures
            .iter()
            .map(|(name, labels)| {
                format!(
                    "{name}: {}",
                    nodeset::fold(labels.iter().map(String::as_str))
                )
            })
            .collect();
        Some(format!(
            "{failed} of {} hosts failed: {}",
            self.total,
            groups.join("; ")
        ))
    }
}

/// A connection past the hello exchange, with the agent's hello.
pub struct Session {
    /// The verified connection.
    pub connection: Connection,
    /// What the agent announced.
    pub hello: Hello,
}

/// Connects to `target`, sends our hello and `request` in one write, and
/// reads the agent's hello.
///
/// # Errors
/// Every way connecting can fail, a refused client, a version mismatch.
pub async fn open(
    client: &Client,
    target: &Target,
    request: ClientMessage,
) -> Result<Session, CtlError> {
    let connection = client.connect(target).await?;
    greet(client, connection, request).await
}

/// Sends our hello and `request` in one write on an established
/// connection, and reads the agent's hello.
///
/// # Errors
/// A refused client, a version mismatch, a broken connection.
pub async fn greet(
    client: &Client,
    mut connection: Connection,
    request: ClientMessage,
) -> Result<Session, CtlError> {
    let lost = |e: FrameError| CtlError::lost(&e);
    connection
        .outgoing
        .feed(ClientMessage::Hello(Hello::new(crate::exec::software())))
        .await
        .map_err(lost)?;
    connection.outgoing.feed(request).await.map_err(lost)?;
    connection.outgoing.flush().await.map_err(lost)?;
    let hello = match connection.incoming.next().await {
        Some(Ok(AgentMessage::Hello(hello))) => hello,
        Some(Ok(_)) => {
            return Err(CtlError::Protocol(
                "the agent did not start with a hello".into(),
            ));
        }
        Some(Err(FrameError::Io(e))) => return Err(client.explain_first_read_error(e)),
        Some(Err(e)) => return Err(CtlError::lost(&e)),
        None => {
            return Err(CtlError::ConnectionLost(
                "the agent closed the connection before answering (busy, or this client is not authorized)".into(),
            ));
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(CtlError::VersionMismatch {
            agent: hello.protocol,
            software: hello.software,
            ours: PROTOCOL_VERSION,
        });
    }
    Ok(Session { connection, hello })
}

/// Short names for hosts in prefixes, headers, file names and summaries:
/// the host alone where that is unambiguous in this run, else `host:port`,
/// else the full `user@host:port`.
pub fn labels(targets: &[Target]) -> Vec<String> {
    let mut hosts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut host_ports: BTreeMap<String, usize> = BTreeMap::new();
    for t in targets {
        *hosts.entry(&t.host).or_default() += 1;
        *host_ports.entry(t.host_port()).or_default() += 1;
    }
    targets
        .iter()
        .map(|t| {
            if hosts[t.host.as_str()] == 1 {
                t.host.clone()
            } else if host_ports[&t.host_port()] == 1 {
                t.host_port()
            } else {
                t.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Answer(u8);

    impl Finished for Answer {
        fn exit_code(&self) -> u8 {
            self.0
        }
        fn failure(&self) -> Option<String> {
            (self.0 != 0).then(|| format!("exit {}", self.0))
        }
    }

    fn targets(list: &str) -> Vec<Target> {
        crate::inventory::Inventory::default()
            .resolve(list, &[])
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_host_holds_one_slot_and_hits_its_deadline() {
        let fanout = Fanout {
            limit: 2,
            deadline: Some(Deadline::Timeout(Duration::from_secs(20))),
            cancel: CancellationToken::new(),
        };
        let hosts = targets("n[1-5]");
        let mut order = Vec::new();
        let mut tally = Tally::default();
        let labels = labels(&hosts);
        fanout
            .run(
                &hosts,
                &Console::quiet(),
                |index, _| async move {
                    if index == 0 {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(Duration::from_secs(index as u64)).await;
                    Ok(Answer(if index == 3 { 3 } else { 0 }))
                },
                |result| {
                    tally.add(&labels[result.index], &result);
                    order.push((result.index, result.duration.as_secs()));
                },
            )
            .await;
        // The others run through the second slot while n1 hangs.
        assert_eq!(order, [(1, 1), (2, 2), (3, 3), (4, 4), (0, 20)]);
        assert_eq!(tally.exit_code(), EXIT_TIMED_OUT);
        assert_eq!(
            tally.summary().unwrap(),
            "2 of 5 hosts failed: exit 3: n4; timed out: n1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_past_its_no_answer_deadline_is_an_error_not_a_timeout() {
        let fanout = Fanout {
            limit: 2,
            deadline: Some(Deadline::NoAnswer(Duration::from_secs(9))),
            cancel: CancellationToken::new(),
        };
        let hosts = targets("n[1-2]");
        let labels = labels(&hosts);
        let mut tally = Tally::default();
        let mut kinds = Vec::new();
        fanout
            .run(
                &hosts,
                &Console::quiet(),
                |index, _| async move {
                    if index == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok(Answer(0))
                },
                |result| {
                    tally.add(&labels[result.index], &result);
                    if let Err(failure) = &result.outcome {
                        kinds.push((failure.kind(), result.duration.as_secs()));
                    }
                },
            )
            .await;
        assert_eq!(kinds, [("no-answer", 9)]);
        assert_eq!(tally.exit_code(), EXIT_CTL_ERROR);
        assert_eq!(
            tally.summary().unwrap(),
            "1 of 2 hosts failed: no-answer: n1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_interrupts_running_and_waiting_hosts() {
        let fanout = Fanout {
            limit: 1,
            deadline: None,
            cancel: CancellationToken::new(),
        };
        let hosts = targets("n[1-3]");
        let cancel = fanout.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            cancel.cancel();
        });
        let mut seen = Vec::new();
        fanout
            .run(
                &hosts,
                &Console::quiet(),
                |index, _| async move {
                    if index == 1 {
                        std::future::pending::<()>().await;
                    }
                    Ok(Answer(0))
                },
                |result| seen.push((result.index, result.outcome.is_ok())),
            )
            .await;
        assert_eq!(seen, [(0, true), (1, false), (2, false)]);
    }

    #[test]
    fn labels_are_as_short_as_the_run_allows() {
        let hosts = targets("a,b:1,b:2,u@c:5,v@c:5");
        assert_eq!(labels(&hosts), ["a", "b:1", "b:2", "u@c:5", "v@c:5"]);
    }
}
