//! Broker mode's side of the agent: serving our name on the broker,
//! answering discovery, and saying how the connection to the broker is.
//!
//! The carrier (`rexec_broker`) owns the connection, its reconnecting and
//! the stream rules; each session it yields is served by
//! [`crate::session`] exactly as a TCP connection is, under the same
//! session cap and shutdown, with a startup budget of its own
//! ([`crate::state::AgentState::broker_startups`]).

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rexec_broker::{Announcement, BrokerError, Carrier, ConnectionState, Listener};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use crate::peer::Peer;
use crate::session;
use crate::state::AgentState;

/// How long we wait before asking the broker again to let us serve our
/// name, after it refused.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(30);

/// How often we probe our name again while another agent serves it too,
/// to say so once it no longer does.
const CLASH_RECHECK: Duration = Duration::from_secs(60);

/// The carrier's options for our broker settings. A session whose output
/// waits for credit while ctl has said nothing for the keepalive bound
/// (interval times count) has the broker asked whether ctl is still
/// there: a ctl whose process died is gone from the broker, and its
/// command ends within the bound, as a direct session ends on the reset
/// its kernel sends; a stopped ctl is still there, and holds the command
/// as a stopped reader holds a TCP connection.
///
/// Bulk sessions grow their windows only as far as leaves every session we
/// may run, and every handshake we may have under way, its start window:
/// it takes `max_sessions`, not a few uploads, to make us busy.
pub fn carrier_options(
    broker: &crate::config::BrokerSettings,
    settings: &crate::config::AgentSettings,
) -> rexec_broker::BrokerOptions {
    let mut options = broker.options();
    let bound = settings
        .keepalive_interval
        .saturating_mul(settings.keepalive_count);
    options.tuning.timers.peer_check = (!bound.is_zero()).then_some(bound);
    options.tuning.reserved_starts = settings
        .max_sessions
        .saturating_add(settings.max_startups.full);
    options
}

/// The connection to the broker and what we serve on it.
#[derive(Debug, Clone)]
pub struct BrokerLink {
    /// The connection (it reconnects by itself, for ever).
    pub carrier: Carrier,
    /// Our name on the broker.
    pub name: String,
    /// The broker's URLs, for messages.
    pub urls: String,
    /// Why ctl cannot reach us by our name although we are connected: the
    /// broker refuses to let us serve it, or another agent serves it too.
    refusal: Arc<Mutex<Option<BrokerError>>>,
}

impl BrokerLink {
    /// Our link to the broker through `carrier`, serving `name`.
    pub fn new(carrier: Carrier, name: String, urls: String) -> BrokerLink {
        BrokerLink {
            carrier,
            name,
            urls,
            refusal: Arc::default(),
        }
    }

    /// The systemd status line's part about the broker.
    pub fn status(&self) -> String {
        let refusal = self
            .refusal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(ToString::to_string);
        status(
            &self.carrier.state(),
            &self.urls,
            &self.name,
            refusal.as_deref(),
        )
    }

    /// Notes why ctl cannot reach us (`None`: it can); returns what was
    /// noted before.
    fn refused(&self, why: Option<&BrokerError>) -> Option<BrokerError> {
        std::mem::replace(
            &mut *self.refusal.lock().unwrap_or_else(PoisonError::into_inner),
            why.cloned(),
        )
    }

    /// Whether another agent was found serving our name, and has not been
    /// found gone since.
    fn clashing(&self) -> bool {
        matches!(
            *self.refusal.lock().unwrap_or_else(PoisonError::into_inner),
            Some(BrokerError::NameClash(_))
        )
    }
}

/// "connected to the broker at URL as NAME", or why not: not connected, or
/// connected but refused our name (`refusal`).
pub fn status(state: &ConnectionState, urls: &str, name: &str, refusal: Option<&str>) -> String {
    if !state.connected {
        return match &state.last_error {
            Some(error) => format!("not connected to the broker at {urls}, retrying ({error})"),
            None => format!("not connected to the broker at {urls}, retrying"),
        };
    }
    match refusal {
        Some(refusal) => format!("connected to the broker at {urls}, but {refusal}"),
        None => format!("connected to the broker at {urls} as {name}"),
    }
}

/// Serves sessions opened to our name until `state.shutdown.stop`; then
/// stops serving the name (ctl sees `offline` at once) and answering
/// discovery, while the sessions running go on under the grace.
pub async fn accept_loop(link: BrokerLink, state: Arc<AgentState>, tracker: TaskTracker) {
    let stop = state.shutdown.stop.clone();
    let serving = async {
        let refused = Arc::new(Notify::new());
        loop {
            let Some(listener) = listen(&link, &state).await else {
                return;
            };
            // Only now, with our subscription made, can the check request
            // behind "connected" be answered.
            let _reporting = AbortOnDrop(tokio::spawn(report_connection(
                link.clone(),
                refused.clone(),
            )));
            let _announcing = announce(&link, &state).await;
            if !serve(&link, &state, &tracker, listener, &refused).await {
                return;
            }
            // The broker refused our subscription when we reconnected (its
            // permissions changed): the connection never asks for it
            // again, so we do, as at the start, until it is allowed.
        }
    };
    tokio::select! {
        // Stop first, as on TCP: a session opened after the stop is not taken.
        biased;
        () = stop.cancelled() => {}
        () = serving => {}
    }
}

/// Serves the sessions `listener` yields; false once the connection is
/// closed for good, true when `refused` says the broker no longer passes
/// our open subject to us.
async fn serve(
    link: &BrokerLink,
    state: &Arc<AgentState>,
    tracker: &TaskTracker,
    mut listener: Listener,
    refused: &Notify,
) -> bool {
    loop {
        let stream = tokio::select! {
            stream = listener.accept() => stream,
            () = refused.notified() => return true,
        };
        let Some(stream) = stream else {
            // Only a connection closed for good ends this, and ours
            // retries for ever: say so if it ever happens.
            tracing::error!(
                "the connection to the broker at {} is closed for good; no more sessions through it",
                link.urls
            );
            return false;
        };
        let peer = Peer::Broker {
            session: stream.session_id(),
        };
        let entered = match state.broker_startups.enter(peer.source(), None::<&OwnedFd>) {
            Ok(entered) => entered,
            Err(refusal) => {
                state.refusals.refused(peer, refusal, &state.settings);
                continue;
            }
        };
        session::spawn(stream, peer, entered, state, tracker);
    }
}

/// Subscribes under our name, asking again while the broker refuses. Open
/// requests turned away before a session exists are logged under the
/// limit for refusals before authentication: anyone on the broker can
/// send them.
async fn listen(link: &BrokerLink, state: &Arc<AgentState>) -> Option<Listener> {
    let refusals = state.clone();
    let report: rexec_broker::RefusalReport = Arc::new(move |why: rexec_broker::OpenRefusal| {
        refusals.refusals.broker_open_refused(why.word(), &why);
    });
    loop {
        match link
            .carrier
            .listen_reporting(&link.name, report.clone())
            .await
        {
            Ok(listener) => {
                link.refused(None);
                return Some(listener);
            }
            // Refusals are the broker's permissions, which may change
            // meanwhile: a refused name or inbox mends on the next try.
            Err(e @ (BrokerError::SubscribeRefused(_) | BrokerError::InboxRefused(_))) => {
                tracing::error!("{e}; asking again in {}s", SUBSCRIBE_RETRY.as_secs());
                link.refused(Some(&e));
                tokio::time::sleep(SUBSCRIBE_RETRY).await;
            }
            Err(e) => {
                tracing::error!("cannot serve our name on the broker: {e}");
                return None;
            }
        }
    }
}

/// Answers discovery (`ctl hosts --online`) with our name, fingerprint and
/// version while the returned responder lives.
async fn announce(
    link: &BrokerLink,
    state: &AgentState,
) -> Option<rexec_broker::DiscoveryResponder> {
    let announcement = Announcement {
        name: link.name.clone(),
        fingerprint: state.fingerprint.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    match link.carrier.announce(announcement).await {
        Ok(responder) => Some(responder),
        Err(e) => {
            tracing::warn!(
                "cannot answer discovery on the broker, so ctl hosts --online will not list us: {e}"
            );
            None
        }
    }
}

/// Logs each change of the connection: `connected to the broker at URL as
/// NAME` once the broker passes our own check request back (so that the
/// line means ctl can reach us), a warning when it drops. The carrier logs
/// why an attempt failed (refused credentials, an untrusted certificate).
/// Starts once we listen under our name.
///
/// Another agent serving our name shows in our probe (its answer beside
/// ours) or as its probe reaching us: then we probe for ourselves (a probe
/// sent in its name by anyone else is answered by us alone), say so in one
/// error line and in the status line, and probe again every minute until
/// it is gone.
///
/// A probe that finds our open subject refused (after a reconnection, the
/// broker's permissions changed) tells `refused`, and the accept loop asks
/// for the subscription again, saying why.
async fn report_connection(link: BrokerLink, refused: Arc<Notify>) {
    let mut changes = link.carrier.watch_state();
    let mut was = changes.borrow_and_update().clone();
    if was.connected {
        say_connected(&link, Why::Connected, &refused).await;
    }
    loop {
        let recheck = async {
            if link.clashing() {
                tokio::time::sleep(CLASH_RECHECK).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = recheck => {
                if link.carrier.state().connected {
                    say_connected(&link, Why::Recheck, &refused).await;
                }
                continue;
            }
        }
        let now = changes.borrow_and_update().clone();
        let dropped = now.disconnects > was.disconnects || (was.connected && !now.connected);
        if dropped {
            tracing::warn!(
                "lost the connection to the broker at {}; reconnecting",
                link.urls
            );
        }
        if now.connected && (dropped || !was.connected) {
            say_connected(&link, Why::Connected, &refused).await;
        } else if now.connected && now.name_clashes > was.name_clashes && !link.clashing() {
            say_connected(&link, Why::Recheck, &refused).await;
        }
        was = now;
    }
}

/// Why we probe our name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// We (re)connected: say how it went.
    Connected,
    /// To see whether another agent serves it: say only what changed.
    Recheck,
}

async fn say_connected(link: &BrokerLink, why: Why, refused: &Notify) {
    match link.carrier.probe(&link.name).await {
        Ok(()) => {
            let before = link.refused(None);
            if why == Why::Connected || before.is_some() {
                tracing::info!("connected to the broker at {} as {}", link.urls, link.name);
            }
        }
        Err(e @ BrokerError::NameClash(_)) => {
            if !matches!(link.refused(Some(&e)), Some(BrokerError::NameClash(_))) {
                tracing::error!("{e}");
            }
        }
        Err(e @ BrokerError::SubscribeRefused(_)) => {
            // Said by the accept loop as it asks again.
            link.refused(Some(&e));
            refused.notify_one();
        }
        Err(e) => tracing::warn!(
            "connected to the broker at {} as {}, but our own check request did not come back: {e}",
            link.urls,
            link.name
        ),
    }
}

/// Ends a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_says_when_another_agent_serves_our_name() {
        let state = ConnectionState {
            connected: true,
            ..ConnectionState::default()
        };
        let clash = BrokerError::NameClash("labpc07".into()).to_string();
        assert_eq!(
            status(&state, "tls://b:4222", "labpc07", Some(&clash)),
            "connected to the broker at tls://b:4222, but two agents answer to the name labpc07 on the broker, so sessions to it fail; give each agent a name of its own (rexec-agent run --name, or name in [broker]; the default is the host name up to its first dot)"
        );
    }
}
