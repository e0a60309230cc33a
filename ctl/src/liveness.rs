//! The one rule by which ctl decides that an agent is gone (machine off,
//! cable pulled) during a request: once the agent has announced its
//! keepalive interval (`Started`, `CopyStarted`), a silence of six
//! intervals, and at least 2 s, means it will not speak again.
//!
//! Before the announcement, or without one, there is no bound: a command
//! may be silent for hours, and the connect timeout covers the rest. A
//! command with a timeout has one more: the agent ends it and reports
//! within the timeout and its kill grace, so a silence past
//! [`no_answer_bound`] is an agent that stopped answering. Both bounds
//! count silence only, never time ctl spends writing what came (to a pager
//! that is not read, say), which a deadline from the start counted: ctl
//! gave up on an agent that had sent everything and dropped the output.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::error::{ConnectionError, CtlError};

/// An agent that announced keepalives and then says nothing for this many
/// of its intervals is taken as gone.
const AGENT_SILENCE_INTERVALS: u32 = 6;
/// The least silence we take as a dead agent, however short its interval.
const MIN_AGENT_SILENCE: Duration = Duration::from_secs(2);
/// How long a request whose deadline passed while ctl was away still
/// waits for a message that may already be there.
const LATE_LOOK: Duration = Duration::from_secs(1);
/// Beyond a command's timeout and the connect timeout, time for the agent
/// to kill the command's group (its kill grace) and report.
const NO_ANSWER_SLACK: Duration = Duration::from_secs(5);

/// The longest silence of an agent running a command with `timeout`
/// (`None`: no bound), reached in `connect`.
pub fn no_answer_bound(timeout: Option<Duration>, connect: Duration) -> Option<Duration> {
    timeout.map(|t| t.saturating_add(connect).saturating_add(NO_ANSWER_SLACK))
}

/// How long an agent that announced keepalives every `interval` may say
/// nothing before we take it as gone. The interval comes from the agent:
/// bounded both ways.
fn agent_silence(interval: Duration) -> Duration {
    interval
        .saturating_mul(AGENT_SILENCE_INTERVALS)
        .clamp(MIN_AGENT_SILENCE, crate::cli::MAX_DURATION)
}

/// One request's view of its agent's liveness.
#[derive(Debug)]
pub struct Liveness {
    bound: Option<Duration>,
    /// The bound while the agent announced none ([`no_answer_bound`]).
    no_answer: Option<Duration>,
    last_heard: Instant,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new()
    }
}

impl Liveness {
    /// No bound until the agent announces its interval.
    pub fn new() -> Self {
        Liveness {
            bound: None,
            no_answer: None,
            last_heard: Instant::now(),
        }
    }

    /// The same for a command that the agent ends by itself: silent for
    /// `no_answer` (see [`no_answer_bound`]), it stopped answering.
    pub fn answering_within(no_answer: Option<Duration>) -> Self {
        Liveness {
            no_answer,
            ..Liveness::new()
        }
    }

    /// The agent announced that it speaks at least every `keepalive`.
    pub fn started(&mut self, keepalive: Option<Duration>) {
        self.bound = keepalive.map(agent_silence);
    }

    /// The next message, or an error once the agent has been silent too long.
    ///
    /// # Errors
    /// The agent said nothing within the bound.
    pub async fn next<S, T>(&mut self, incoming: &mut S) -> Result<Option<T>, CtlError>
    where
        S: futures_util::Stream<Item = T> + Unpin,
    {
        let next = match tokio::time::timeout_at(self.deadline(), incoming.next()).await {
            Ok(next) => Some(next),
            // The deadline may have passed while we were away, writing
            // what came to a reader that takes it slowly (every worker
            // blocked so, the runtime has not even looked at the sockets
            // since, and the task's budget may be spent on the backlog):
            // a message that is there is no silence. Asked once more,
            // outside the budget, for a moment in which the runtime can
            // look.
            Err(_) => tokio::task::unconstrained(tokio::time::timeout(LATE_LOOK, incoming.next()))
                .await
                .ok(),
        };
        match next {
            Some(next) => {
                self.last_heard = Instant::now();
                Ok(next)
            }
            None if self.no_answer.is_some() && self.no_answer == self.bound() => {
                Err(CtlError::Connection(ConnectionError::NoAnswer(
                    self.no_answer.unwrap_or_default(),
                )))
            }
            None => Err(CtlError::Connection(ConnectionError::Lost(format!(
                "no sign of life from the agent for {}",
                humantime::format_duration(self.bound.unwrap_or_default())
            )))),
        }
    }

    /// The silence that ends the request: the shorter of the two bounds.
    /// A working agent speaks within both: its keepalives, and a command's
    /// end, which comes within its timeout and grace.
    fn bound(&self) -> Option<Duration> {
        match (self.bound, self.no_answer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the agent counts as gone; never without a bound.
    fn deadline(&self) -> Instant {
        self.bound()
            .and_then(|bound| self.last_heard.checked_add(bound))
            // About thirty years: never, for a command, without
            // overflowing Instant.
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365 * 30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_six_intervals_and_at_least_two_seconds() {
        assert_eq!(
            agent_silence(Duration::from_secs(5)),
            Duration::from_secs(30)
        );
        assert_eq!(
            agent_silence(Duration::from_millis(10)),
            Duration::from_secs(2)
        );
        assert_eq!(agent_silence(Duration::MAX), crate::cli::MAX_DURATION);
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_silent_past_its_bound_is_gone() {
        let mut alive = Liveness::new();
        alive.started(Some(Duration::from_secs(1)));
        let mut never = futures_util::stream::pending::<()>();
        let e = alive.next(&mut never).await.unwrap_err();
        assert_eq!(e.kind(), "connection-lost");
        assert!(e.to_string().contains("no sign of life"), "{e}");
    }
}
