//! The one keepalive rule of the agent, for commands and copies alike.
//!
//! A quiet session gets a keepalive from the agent every interval; the
//! client answers (and sends its own while it waits). How long a client may
//! stay silent is counted in those intervals.

use std::time::Duration;

use crate::config::AgentSettings;

/// Keepalive bookkeeping for one request.
///
/// When the session has been quiet for an interval, the agent sends a
/// keepalive; the client answers. A client that has not said anything for
/// `count` intervals since the first unanswered keepalive is taken as gone
/// (a frozen process, a pulled cable). While output flows we send none: a
/// client that stops reading then holds the command by TCP's flow control,
/// as a slow pipe reader would, rather than having it killed.
#[derive(Debug)]
pub struct Keepalive {
    interval: Option<Duration>,
    count: u32,
    last_sent: tokio::time::Instant,
    unanswered_since: Option<tokio::time::Instant>,
}

impl Keepalive {
    /// The agent's keepalive rule, from its settings.
    pub fn of(settings: &AgentSettings) -> Self {
        Keepalive::new(settings.keepalive_interval, settings.keepalive_count)
    }

    /// A keepalive every `interval` of quiet (none when zero); a client
    /// silent for `count` of them is gone.
    pub fn new(interval: Duration, count: u32) -> Self {
        Keepalive {
            interval: (!interval.is_zero()).then_some(interval),
            count: count.max(1),
            last_sent: tokio::time::Instant::now(),
            unanswered_since: None,
        }
    }

    /// The interval, as `Started` and `CopyStarted` announce it; `None`
    /// when the agent sends no keepalives.
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// We sent the client something.
    pub fn sent(&mut self) {
        self.last_sent = tokio::time::Instant::now();
    }

    /// We sent a keepalive, which the client must answer.
    pub fn sent_probe(&mut self) {
        self.sent();
        self.unanswered_since.get_or_insert(self.last_sent);
    }

    /// The client said something.
    pub fn heard(&mut self) {
        self.unanswered_since = None;
    }

    /// Resolves when the next keepalive is due; never when disabled.
    pub async fn due(&self) {
        match self.interval {
            Some(interval) => tokio::time::sleep_until(self.last_sent + interval).await,
            None => std::future::pending().await,
        }
    }

    /// The silence bound, when the client has exceeded it.
    pub fn client_lost(&self) -> Option<Duration> {
        let bound = self.interval?.saturating_mul(self.count);
        let since = self.unanswered_since?;
        (since.elapsed() >= bound).then_some(bound)
    }

    /// The longest a client that sends all the time (during a push) may be
    /// silent before it counts as gone: `count` intervals, or `fallback`
    /// when the agent sends no keepalives.
    pub fn silence_bound(&self, fallback: Duration) -> Duration {
        match self.interval {
            Some(interval) => interval.saturating_mul(self.count),
            None => fallback,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_is_lost_only_after_count_unanswered_intervals() {
        let interval = Duration::from_secs(10);
        let mut keepalive = Keepalive::new(interval, 3);
        assert_eq!(keepalive.interval(), Some(interval));

        // Quiet session: the first keepalive is due one interval later.
        let start = tokio::time::Instant::now();
        keepalive.due().await;
        assert_eq!(start.elapsed(), interval);
        keepalive.sent_probe();
        assert_eq!(keepalive.client_lost(), None);

        // An answer resets the count.
        tokio::time::advance(interval * 2).await;
        keepalive.heard();
        keepalive.sent_probe();
        tokio::time::advance(interval * 2).await;
        assert_eq!(keepalive.client_lost(), None);
        tokio::time::advance(interval).await;
        assert_eq!(keepalive.client_lost(), Some(interval * 3));
    }

    #[tokio::test(start_paused = true)]
    async fn output_postpones_keepalives_and_zero_disables_them() {
        let interval = Duration::from_secs(10);
        let mut keepalive = Keepalive::new(interval, 3);
        tokio::time::advance(interval / 2).await;
        keepalive.sent();
        let before = tokio::time::Instant::now();
        keepalive.due().await;
        assert_eq!(before.elapsed(), interval, "counted from the last output");

        let disabled = Keepalive::new(Duration::ZERO, 3);
        assert_eq!(disabled.interval(), None);
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), disabled.due())
                .await
                .is_err()
        );
        assert_eq!(disabled.client_lost(), None);
    }
}
