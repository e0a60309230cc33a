//! What every session shares: the settings, the identity, the authorized
//! clients, the budgets and limits, and the two shutdown tokens; and a
//! connection's place in the startup budget until it is admitted.
//!
//! The accept loop ([`crate::server`]) builds these and the session
//! ([`crate::session`]) uses them; neither needs the other to do so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rexec_protocol::tls::server_config;
use rexec_protocol::{Fingerprint, Identity, IdentityError};
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
    /// The sessions each client key holds.
    pub client_sessions: Arc<ClientSessions>,
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
            client_sessions: Arc::default(),
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
    client_sessions: Arc<ClientSessions>,
    max_sessions: usize,
}

/// How many sessions each client key holds. One key may hold at most half
/// of `max_sessions`: its jobs' waits and follows, and connections that
/// linger after their last message, are sessions without a command, which
/// the exec limits do not see; without this one key could take every
/// place and shut every other client out.
#[derive(Debug, Default)]
pub struct ClientSessions {
    held: Mutex<HashMap<Fingerprint, usize>>,
}

/// The most one client key may hold of `limit` places (sessions, jobs):
/// half, so that one key cannot shut the others out.
pub fn one_clients_share(limit: usize) -> usize {
    limit.div_ceil(2)
}

/// A session's place: one of the agent's and one of its client's, both
/// given back when dropped.
#[derive(Debug)]
pub struct SessionPlace {
    _permit: OwnedSemaphorePermit,
    sessions: Arc<ClientSessions>,
    client: Fingerprint,
}

impl Drop for SessionPlace {
    fn drop(&mut self) {
        let mut held = self
            .sessions
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(mine) = held.get_mut(&self.client) {
            *mine -= 1;
            if *mine == 0 {
                held.remove(&self.client);
            }
        }
    }
}

impl Startup {
    /// A place held by `ticket`, to be exchanged for one of `state`'s
    /// session places.
    pub fn new(ticket: StartupTicket, state: &AgentState) -> Startup {
        Startup {
            ticket,
            sessions: state.sessions.clone(),
            client_sessions: state.client_sessions.clone(),
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
    /// This client's key holds as many sessions as one key may.
    #[error(
        "this client already holds {0} sessions here, the most one client may (half of max_sessions); try again later"
    )]
    ClientSessionsFull(usize),
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
    /// [`NotAdmitted`] when `max_sessions` sessions run, when `client`
    /// holds as many as one client may, or when the connection was closed
    /// to make room an instant before.
    pub fn admit(self, client: Fingerprint) -> Result<SessionPlace, NotAdmitted> {
        if !self.ticket.finish() {
            return Err(NotAdmitted::GaveWay);
        }
        let most = one_clients_share(self.max_sessions);
        let mut held = self
            .client_sessions
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let permit = self
            .sessions
            .try_acquire_owned()
            .map_err(|_| NotAdmitted::SessionsFull(self.max_sessions))?;
        if held.get(&client).is_some_and(|&mine| mine >= most) {
            return Err(NotAdmitted::ClientSessionsFull(most));
        }
        *held.entry(client).or_insert(0) += 1;
        drop(held);
        Ok(SessionPlace {
            _permit: permit,
            sessions: self.client_sessions,
            client,
        })
    }
}
