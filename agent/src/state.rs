//! What every session shares: the settings, the identity, the authorized
//! clients, the budgets and limits, and the two shutdown tokens; and a
//! connection's place in the startup budget until it is admitted.
//!
//! The accept loop ([`crate::server`]) builds these and the session
//! ([`crate::session`]) uses them; neither needs the other to do so.

use std::sync::Arc;

use rexec_protocol::tls::server_config;
use rexec_protocol::{Identity, IdentityError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::authorized::{AuthorizedClients, Untrusted};
use crate::config::AgentSettings;
use crate::limits::{ExecLimits, StartupTicket, Startups};
use crate::refusals::RefusalLog;

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
    /// TCP connections that have not finished their handshake.
    pub startups: Arc<Startups>,
    /// Sessions through the broker that have not finished their handshake:
    /// a budget of the same size apart from TCP's, so that a flood on the
    /// broker cannot keep direct clients out nor the other way round. Each
    /// session is a source of its own there (they all arrive through one
    /// connection, so a per-source limit would fail a fan-out of many ctls
    /// that happen to use the same broker); only the total is bounded, and
    /// at the total the oldest unfinished one gives way.
    pub broker_startups: Arc<Startups>,
    /// Lines about connections refused or failed before authentication.
    pub refusals: RefusalLog,
    /// Running execs, against the agent's and the per-client limits.
    pub execs: ExecLimits,
    /// The shutdown tokens.
    pub shutdown: Shutdown,
    /// What sessions share about detached jobs.
    pub jobs: crate::jobs::Jobs,
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
    /// Someone other than root and the agent's user can change the
    /// authorized clients file or its directory.
    #[error(transparent)]
    Clients(#[from] Untrusted),
}

impl AgentState {
    /// Loads the identity and the authorized clients from `settings.dir`.
    ///
    /// # Errors
    /// When the identity is missing, unreadable or too open, or the
    /// authorized clients file is not to be trusted.
    pub fn load(settings: AgentSettings, shutdown: Shutdown) -> Result<AgentState, StartError> {
        let identity = Identity::load(&settings.identity_paths())?;
        let authorized = Arc::new(AuthorizedClients::open(settings.authorized_clients_path())?);
        let config = server_config(&identity, authorized.clone())?;
        Ok(AgentState {
            sessions: Arc::new(Semaphore::new(settings.max_sessions)),
            startups: Startups::new(settings.max_startups, settings.per_source_max_startups),
            broker_startups: Startups::new(settings.max_startups, 1),
            refusals: RefusalLog::default(),
            execs: ExecLimits::new(settings.max_execs, settings.max_execs_per_client),
            fingerprint: identity.fingerprint,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            authorized,
            settings,
            shutdown,
            jobs: crate::jobs::Jobs::default(),
        })
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

impl Startup {
    /// A place held by `ticket`, to be exchanged for one of `state`'s
    /// session places.
    pub fn new(ticket: StartupTicket, state: &AgentState) -> Startup {
        Startup {
            ticket,
            sessions: state.sessions.clone(),
            max_sessions: state.settings.max_sessions,
        }
    }
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
