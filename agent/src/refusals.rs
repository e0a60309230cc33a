//! Log lines about connections turned away before authentication.
//!
//! Anyone who can reach the port can open connections, and anyone on the
//! broker can send open requests under our name, so nothing they do before
//! the handshake may cost a line of log each: refusals and failed
//! handshakes are logged one by one up to a burst, then counted and
//! summed up in one line per interval ([`RefusalLog`]).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::AgentSettings;
use crate::limits::{Source, StartupRefusal};
use crate::peer::Peer;

/// How long refusals are counted before their sum is logged.
pub const REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// How many lines about refusals each interval may have, one per
/// connection, before the rest are only counted.
const REFUSAL_LINES_PER_INTERVAL: u32 = 20;

/// Log lines about connections turned away before authentication, bounded
/// per interval; what is not logged is counted.
#[derive(Debug, Default)]
pub struct RefusalLog {
    window: Mutex<RefusalWindow>,
}

#[derive(Debug, Default)]
struct RefusalWindow {
    started: Option<Instant>,
    lines: u32,
    per_source: u64,
    early_drop: u64,
    evicted: u64,
    handshake: u64,
    broker_opens: u64,
    last_source: Option<Source>,
}

impl RefusalWindow {
    fn unlogged(&self) -> u64 {
        self.per_source + self.early_drop + self.evicted + self.handshake + self.broker_opens
    }
}

impl RefusalLog {
    /// Takes a line from this interval's budget; `false` when it is spent
    /// and the caller should count instead.
    fn line(&self, count: impl FnOnce(&mut RefusalWindow), source: Option<Source>) -> bool {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.started.get_or_insert_with(Instant::now);
        if source.is_some() {
            window.last_source = source;
        }
        if window.lines < REFUSAL_LINES_PER_INTERVAL {
            window.lines += 1;
            return true;
        }
        count(&mut window);
        false
    }

    /// A new connection closed at accept for a startup limit.
    pub fn refused(&self, peer: Peer, why: StartupRefusal, settings: &AgentSettings) {
        let source = peer.source();
        let logged = self.line(
            |w| match why {
                StartupRefusal::PerSource => w.per_source += 1,
                StartupRefusal::EarlyDrop => w.early_drop += 1,
            },
            Some(source),
        );
        if !logged {
            return;
        }
        match why {
            StartupRefusal::PerSource => tracing::warn!(
                %peer,
                "refusing connection: {} unfinished handshakes from {source}, its limit (per_source_max_startups)",
                settings.per_source_max_startups
            ),
            StartupRefusal::EarlyDrop => tracing::warn!(
                %peer,
                "refusing connection: random early drop, {source} has unfinished handshakes and the agent many (max_startups {})",
                settings.max_startups
            ),
        }
    }

    /// The oldest unfinished handshake of `source` was closed to make room.
    pub fn evicted(&self, source: Source, settings: &AgentSettings) {
        if self.line(|w| w.evicted += 1, Some(source)) {
            tracing::warn!(
                "closing the oldest unfinished handshake from {source} to make room: {} unfinished handshakes, the limit (max_startups {})",
                settings.max_startups.full,
                settings.max_startups
            );
        }
    }

    /// A connection failed or timed out in its handshake; `message` says how.
    pub fn handshake_failed(&self, peer: &Peer, message: &dyn std::fmt::Display) {
        if self.line(|w| w.handshake += 1, Some(peer.source())) {
            tracing::warn!(%peer, "session refused: {message}");
        }
    }

    /// An open request through the broker was turned away before any
    /// session existed (`reason`: its short word, `why`: in words). Such
    /// a request comes from anyone on the broker, with no address of its
    /// own to name.
    pub fn broker_open_refused(&self, reason: &str, why: &dyn std::fmt::Display) {
        if self.line(|w| w.broker_opens += 1, None) {
            tracing::warn!(reason, "refused a session opened through the broker: {why}");
        }
    }

    /// Logs what was counted and not logged, if anything, and starts a new
    /// interval.
    pub fn summarize(&self) {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(started) = window.started else {
            return;
        };
        if window.unlogged() > 0 {
            let last = window
                .last_source
                .map(|s| format!("; the latest from {s}"))
                .unwrap_or_default();
            tracing::warn!(
                "{} more connections refused before authentication in the last {}s, not logged one by one: {} past per_source_max_startups, {} dropped early past max_startups, {} closed to make room, {} failed or timed out in the handshake, {} opens through the broker refused{last}",
                window.unlogged(),
                started.elapsed().as_secs(),
                window.per_source,
                window.early_drop,
                window.evicted,
                window.handshake,
                window.broker_opens,
            );
        }
        *window = RefusalWindow::default();
    }
}
