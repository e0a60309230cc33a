//! The accept loop: takes connections from one or more listeners, keeps
//! connections that have not proved who they are within their own budget
//! (see [`crate::limits::Startups`]), caps how many sessions run at once,
//! and shuts down in two steps.
//!
//! Anyone who can reach the port can open connections, so nothing they do
//! before the handshake may cost a line of log each: refusals are logged
//! through [`crate::refusals::RefusalLog`]. What happens on the connection
//! after the accept (TLS, hello, the request) is [`crate::session`]'s, over
//! any byte stream.
//!
//! Shutdown is driven by the two tokens of [`Shutdown`]: `stop` ends the
//! accept loops and starts the grace period in which running commands may
//! finish; `kill` ends every command still running. SIGTERM cancels `stop`
//! and, after the grace, `kill`; SIGINT cancels both at once. The signal
//! sources live in `main.rs`, so tests drive shutdown through the tokens.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use crate::broker::BrokerLink;
use crate::peer::Peer;
use crate::refusals::REFUSAL_SUMMARY_INTERVAL;
use crate::session;
pub use crate::state::{AgentState, Shutdown, StartError};

pub use crate::exec::spawn::raise_open_files_limit;

/// Longest pause after a failed accept (for example, out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `listeners` until `state.shutdown.stop` is cancelled, then waits
/// for running sessions: up to `grace` before cancelling `kill`, then until
/// every session has ended.
pub async fn serve(listeners: Vec<TcpListener>, state: Arc<AgentState>, grace: Duration) {
    serve_with_broker(listeners, None, state, grace).await;
}

/// [`serve`], and with `broker` the sessions opened through the broker as
/// well, under the same session cap and the same shutdown.
pub async fn serve_with_broker(
    listeners: Vec<TcpListener>,
    broker: Option<BrokerLink>,
    state: Arc<AgentState>,
    grace: Duration,
) {
    let tracker = TaskTracker::new();
    let accept_loops = TaskTracker::new();
    for listener in listeners {
        accept_loops.spawn(accept_loop(listener, state.clone(), tracker.clone()));
    }
    if let Some(link) = broker {
        accept_loops.spawn(crate::broker::accept_loop(
            link,
            state.clone(),
            tracker.clone(),
        ));
    }
    accept_loops.close();
    let summaries = tokio::spawn(summarize_refusals(state.clone()));
    accept_loops.wait().await;
    summaries.abort();
    state.refusals.summarize();

    tracker.close();
    let running = tracker.len();
    if running > 0 {
        tracing::info!(sessions = running, grace = ?grace, "waiting for running sessions");
    }
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            sessions = tracker.len(),
            "grace period over; killing the commands still running"
        );
        state.shutdown.kill.cancel();
        tracker.wait().await;
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<AgentState>, tracker: TaskTracker) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            // Stop first: a connection that arrives after the stop, while
            // this loop had not run yet, must not be taken.
            biased;
            () = state.shutdown.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let peer = Peer::Tcp(peer);
        let entered = match state.startups.enter(peer.source(), Some(&stream)) {
            Ok(entered) => entered,
            Err(refusal) => {
                state.refusals.refused(peer, refusal, &state.settings);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        session::spawn(stream, peer, entered, &state, &tracker);
    }
}

async fn summarize_refusals(state: Arc<AgentState>) {
    let mut ticks = tokio::time::interval(REFUSAL_SUMMARY_INTERVAL);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        state.refusals.summarize();
    }
}
