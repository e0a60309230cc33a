//! Telling systemd how the agent is doing, over the `sd_notify` protocol:
//! ready once it listens, a status line with the running sessions, reloading
//! on SIGHUP, stopping on SIGTERM, and the watchdog's pings when the unit
//! sets `WatchdogSec=`.
//!
//! Outside systemd (no `NOTIFY_SOCKET` in the environment) every call does
//! nothing. A notification that cannot be sent is logged and otherwise
//! ignored: systemd's view of the agent matters less than the commands it
//! runs. Commands never see the variables, since the exec module clears the
//! environment of every child.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::Semaphore;

use crate::broker::BrokerLink;

/// How often the status line is refreshed when the session count changed.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Whether systemd is listening (`NOTIFY_SOCKET` is set).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The agent is listening and serving.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The agent is re-reading its files (SIGHUP); [`ready`] follows.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The agent is shutting down.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A new status line for `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The watchdog interval the unit asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Pings the watchdog at half its interval, as sd_watchdog_enabled(3)
/// advises, for as long as the runtime runs: a wedged runtime stops the
/// pings and systemd restarts the agent.
pub async fn watchdog(interval: Duration) {
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tick.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

/// The status line: where the agent listens (nothing when it listens on no
/// port), how its broker connection is (`broker`, see
/// [`crate::broker::status`]), and how many sessions run.
pub fn status_line(listening: &str, broker: Option<&str>, running: usize, limit: usize) -> String {
    let mut line = String::new();
    if !listening.is_empty() {
        line.push_str(&format!("listening on {listening}; "));
    }
    if let Some(broker) = broker {
        line.push_str(broker);
        line.push_str("; ");
    }
    line.push_str(&format!("{} running (limit {limit})", sessions(running)));
    line
}

/// "1 session", "3 sessions".
pub fn sessions(n: usize) -> String {
    if n == 1 {
        "1 session".into()
    } else {
        format!("{n} sessions")
    }
}

/// Keeps the status line current (the session count, the broker
/// connection); runs until the runtime ends.
///
/// The count is read from the sessions semaphore: one permit is held per
/// running session.
/// Once `stopping` is cancelled (SIGTERM), the line says the agent is
/// stopping and how many sessions are still finishing, as the stop's own
/// notification does: never "listening" again.
pub async fn report_sessions(
    sessions: Arc<Semaphore>,
    limit: usize,
    listening: String,
    broker: Option<BrokerLink>,
    stopping: tokio_util::sync::CancellationToken,
) {
    let line = || {
        let running = limit.saturating_sub(sessions.available_permits());
        if stopping.is_cancelled() {
            return format!("stopping; {} finishing", self::sessions(running));
        }
        let broker = broker.as_ref().map(BrokerLink::status);
        status_line(&listening, broker.as_deref(), running, limit)
    };
    let mut shown = line();
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tick.tick().await;
        let now = line();
        if now != shown {
            status(&now);
            shown = now;
        }
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_counts_sessions() {
        assert_eq!(
            status_line("[::]:7722", None, 1, 256),
            "listening on [::]:7722; 1 session running (limit 256)"
        );
        assert_eq!(
            status_line("0.0.0.0:7722", None, 0, 8),
            "listening on 0.0.0.0:7722; 0 sessions running (limit 8)"
        );
    }

    #[test]
    fn status_line_says_whether_the_broker_is_connected() {
        use rexec_broker::ConnectionState;
        let mut state = ConnectionState {
            connected: true,
            ..ConnectionState::default()
        };
        let up = crate::broker::status(&state, "tls://b:4222", "labpc07", None);
        assert_eq!(
            status_line("", Some(&up), 2, 256),
            "connected to the broker at tls://b:4222 as labpc07; 2 sessions running (limit 256)"
        );
        state.connected = false;
        state.last_error = Some("the broker at tls://b:4222 refused our credentials".into());
        let down = crate::broker::status(&state, "tls://b:4222", "labpc07", None);
        assert_eq!(
            status_line("127.0.0.1:7722", Some(&down), 0, 8),
            "listening on 127.0.0.1:7722; not connected to the broker at tls://b:4222, retrying (the broker at tls://b:4222 refused our credentials); 0 sessions running (limit 8)"
        );
        // Connected, but not allowed to serve our name: ctl cannot reach us.
        state.connected = true;
        let refused = rexec_broker::BrokerError::SubscribeRefused("labpc07".into()).to_string();
        let refused = crate::broker::status(&state, "tls://b:4222", "labpc07", Some(&refused));
        assert_eq!(
            status_line("", Some(&refused), 0, 8),
            "connected to the broker at tls://b:4222, but the broker does not let us serve the name labpc07 (check the broker user's permissions); 0 sessions running (limit 8)"
        );
    }
}
