//! The accept loop: takes connections from one or more listeners, keeps
//! connections that have not proved who they are within their own budget
//! (see [`crate::limits::Startups`]), caps how many sessions run at once,
//! and shuts down in two steps.
//!
//! Anyone who can reach the port can open connections, so nothing they do
//! before the handshake may cost a line of log each: refusals and failed
//! handshakes are logged one by one up to a burst, then counted and
//! summed up in one line per interval ([`RefusalLog`]).
//!
//! Shutdown is driven by the two tokens of [`Shutdown`]: `stop` ends the
//! accept loops and starts the grace period in which running commands may
//! finish; `kill` ends every command still running. SIGTERM cancels `stop`
//! and, after the grace, `kill`; SIGINT cancels both at once. The signal
//! sources live in `main.rs`, so tests drive shutdown through the tokens.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rexec_protocol::tls::server_config;
use rexec_protocol::{Identity, IdentityError};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::authorized::AuthorizedClients;
use crate::config::AgentSettings;
use crate::limits::{ExecLimits, Source, StartupRefusal, StartupTicket, Startups};
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
    /// Connections that have not finished their handshake.
    pub startups: Arc<Startups>,
    /// Lines about connections refused or failed before authentication.
    pub refusals: RefusalLog,
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
            startups: Startups::new(settings.max_startups, settings.per_source_max_startups),
            refusals: RefusalLog::default(),
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
        let source = Source::of(peer.ip());
        let (ticket, made) = match state.startups.enter(source, Some(&stream)) {
            Ok(entered) => entered,
            Err(refusal) => {
                state.refusals.refused(peer, refusal, &state.settings);
                continue;
            }
        };
        if let Some(evicted) = made.evicted {
            state.refusals.evicted(evicted, &state.settings);
        }
        let _ = stream.set_nodelay(true);
        bound_unacknowledged_data(&stream, &state.settings);
        let close = ticket.closed();
        let startup = Startup {
            ticket,
            sessions: state.sessions.clone(),
            max_sessions: state.settings.max_sessions,
        };
        let state = state.clone();
        tracker.spawn(
            async move {
                // Until the client is admitted, giving way means simply
                // dropping the handshake: nothing has started for it.
                tokio::select! {
                    () = session::serve(stream, peer, state, startup) => {}
                    () = close.cancelled() => {}
                }
            }
            .instrument(tracing::info_span!("session", %peer)),
        );
    }
}

/// A connection's standing until its client has proved who it is and sent
/// its request: a place in the startup budget.
#[derive(Debug)]
pub struct Startup {
    ticket: StartupTicket,
    sessions: Arc<Semaphore>,
    max_sessions: usize,
}

/// Why an authenticated client gets no session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    /// Every session place is taken.
    #[error("the agent already serves {0} sessions, its limit (max_sessions); try again later")]
    SessionsFull(usize),
    /// The connection had just been made to give way to another.
    #[error("the agent closed this connection to make room for others; try again later")]
    GaveWay,
}

impl Startup {
    /// The client is authenticated and has sent its request: it leaves the
    /// startup budget and takes a session place, or is told the agent is
    /// busy.
    ///
    /// # Errors
    /// [`NotAdmitted`] when `max_sessions` sessions run, or when the
    /// connection was closed to make room an instant before.
    pub fn admit(self) -> Result<OwnedSemaphorePermit, NotAdmitted> {
        if !self.ticket.finish() {
            return Err(NotAdmitted::GaveWay);
        }
        self.sessions
            .try_acquire_owned()
            .map_err(|_| NotAdmitted::SessionsFull(self.max_sessions))
    }
}

/// How long refusals are counted before their sum is logged.
const REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
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
    last_source: Option<Source>,
}

impl RefusalWindow {
    fn unlogged(&self) -> u64 {
        self.per_source + self.early_drop + self.evicted + self.handshake
    }
}

impl RefusalLog {
    /// Takes a line from this interval's budget; `false` when it is spent
    /// and the caller should count instead.
    fn line(&self, count: impl FnOnce(&mut RefusalWindow), source: Source) -> bool {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.started.get_or_insert_with(Instant::now);
        window.last_source = Some(source);
        if window.lines < REFUSAL_LINES_PER_INTERVAL {
            window.lines += 1;
            return true;
        }
        count(&mut window);
        false
    }

    /// A new connection closed at accept for a startup limit.
    pub fn refused(&self, peer: SocketAddr, why: StartupRefusal, settings: &AgentSettings) {
        let source = Source::of(peer.ip());
        let logged = self.line(
            |w| match why {
                StartupRefusal::PerSource => w.per_source += 1,
                StartupRefusal::EarlyDrop => w.early_drop += 1,
            },
            source,
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
        if self.line(|w| w.evicted += 1, source) {
            tracing::warn!(
                "closing the oldest unfinished handshake from {source} to make room: {} unfinished handshakes, the limit (max_startups {})",
                settings.max_startups.full,
                settings.max_startups
            );
        }
    }

    /// A connection failed or timed out in its handshake; `message` says how.
    pub fn handshake_failed(&self, peer: SocketAddr, message: &dyn std::fmt::Display) {
        if self.line(|w| w.handshake += 1, Source::of(peer.ip())) {
            tracing::warn!(%peer, "session refused: {message}");
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
                .map(|s| s.to_string())
                .unwrap_or_default();
            tracing::warn!(
                "{} more connections refused before authentication in the last {}s, not logged one by one: {} past per_source_max_startups, {} dropped early past max_startups, {} closed to make room, {} failed or timed out in the handshake; the latest from {last}",
                window.unlogged(),
                started.elapsed().as_secs(),
                window.per_source,
                window.early_drop,
                window.evicted,
                window.handshake,
            );
        }
        *window = RefusalWindow::default();
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
