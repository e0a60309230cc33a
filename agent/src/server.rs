//! The accept loop: takes connections from one or more listeners, caps how
//! many sessions run at once, and shuts down in two steps.
//!
//! Shutdown is driven by the two tokens of [`Shutdown`]: `stop` ends the
//! accept loops and starts the grace period in which running commands may
//! finish; `kill` ends every command still running. SIGTERM cancels `stop`
//! and, after the grace, `kill`; SIGINT cancels both at once. The signal
//! sources live in `main.rs`, so tests drive shutdown through the tokens.

use std::sync::Arc;
use std::time::Duration;

use rexec_protocol::tls::server_config;
use rexec_protocol::{Identity, IdentityError};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::authorized::AuthorizedClients;
use crate::config::AgentSettings;
use crate::limits::ExecLimits;
use crate::session;

/// Raises this process's soft limit on open files to its hard limit, so that
/// a burst of connections meets the session cap, not the descriptor limit.
/// Returns the limit now in force.
pub fn raise_open_files_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// A peer that vanished (machine off, cable pulled) while we had output on
/// the way stops acknowledging it; without a bound, the kernel would retry
/// for a quarter of an hour before our writes fail and the command is
/// cleaned up. We give it as long as a quiet session gets (keepalive
/// interval times count). A slow but present reader still acknowledges the
/// kernel's probes, so flow control is unaffected.
fn bound_unacknowledged_data(stream: &tokio::net::TcpStream, settings: &AgentSettings) {
    let bound = settings.keepalive_interval * settings.keepalive_count;
    if bound.is_zero() {
        return;
    }
    let millis = u32::try_from(bound.as_millis()).unwrap_or(u32::MAX);
    if let Err(e) =
        nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::TcpUserTimeout, &millis)
    {
        tracing::debug!(error = %e, "cannot bound unacknowledged data on this socket");
    }
}

/// Longest pause after a failed accept (for example, out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The two steps of shutting down.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop accepting connections; running commands may finish.
    pub stop: CancellationToken,
    /// Kill every running command now.
    pub kill: CancellationToken,
}

/// What every session shares.
pub struct AgentState {
    /// The settings the agent was started with.
    pub settings: AgentSettings,
    /// The agent's identity's fingerprint.
    pub fingerprint: rexec_protocol::Fingerprint,
    /// Who may connect.
    pub authorized: Arc<AuthorizedClients>,
    /// TLS with the agent's identity and the authorized clients.
    pub acceptor: TlsAcceptor,
    /// One permit per running session.
    pub sessions: Arc<Semaphore>,
    /// Running execs, against the agent's and the per-client limits.
    pub execs: ExecLimits,
    /// The shutdown tokens.
    pub shutdown: Shutdown,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("settings", &self.settings)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The identity could not be loaded.
    #[error("cannot load the agent identity: {0} (create one with: rexec-agent init)")]
    Identity(#[from] IdentityError),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] rexec_protocol::tls::TlsError),
}

impl AgentState {
    /// Loads the identity and the authorized clients from `settings.dir`.
    ///
    /// # Errors
    /// When the identity is missing, unreadable or too open.
    pub fn load(settings: AgentSettings, shutdown: Shutdown) -> Result<AgentState, StartError> {
        let identity = Identity::load(&settings.identity_paths())?;
        let authorized = Arc::new(AuthorizedClients::open(settings.authorized_clients_path()));
        let config = server_config(&identity, authorized.clone())?;
        Ok(AgentState {
            sessions: Arc::new(Semaphore::new(settings.max_sessions)),
            execs: ExecLimits::new(settings.max_execs, settings.max_execs_per_client),
            fingerprint: identity.fingerprint,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            authorized,
            settings,
            shutdown,
        })
    }
}

/// Serves `listeners` until `state.shutdown.stop` is cancelled, then waits
/// for running sessions: up to `grace` before cancelling `kill`, then until
/// every session has ended.
pub async fn serve(listeners: Vec<TcpListener>, state: Arc<AgentState>, grace: Duration) {
    let tracker = TaskTracker::new();
    let accept_loops = TaskTracker::new();
    for listener in listeners {
        accept_loops.spawn(accept_loop(listener, state.clone(), tracker.clone()));
    }
    accept_loops.close();
    accept_loops.wait().await;

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
        let Ok(permit) = state.sessions.clone().try_acquire_owned() else {
            tracing::warn!(
                %peer,
                max_sessions = state.settings.max_sessions,
                "refusing connection: all sessions in use"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        bound_unacknowledged_data(&stream, &state.settings);
        let state = state.clone();
        tracker.spawn(
            async move {
                session::serve(stream, peer, state).await;
                drop(permit);
            }
            .instrument(tracing::info_span!("session", %peer)),
        );
    }
}
