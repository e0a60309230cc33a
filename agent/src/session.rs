//! One connection, from its first byte to close, over any byte stream: TLS with an authorized client,
//! the hello exchange, the one request, and the audit log line.
//!
//! Everything up to and including the request must arrive within the
//! handshake timeout; after that an exec may run as long as it needs.

use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use rexec_protocol::{
    AgentCodec, AgentMessage, ClientMessage, ErrorKind, ErrorReport, ExecRequest, Fingerprint,
    FrameError, FrameWriter, Hello, PROTOCOL_VERSION, PullRequest, PushRequest,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio_rustls::server::TlsStream;
use tokio_util::codec::FramedRead;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::audit::{Caller, audit};
use crate::copy::{self, CopyRequest};
use crate::exec;
use crate::job::{Job, finish, name_of, refuse};
use crate::keepalive::Keepalive;
use crate::limits::{Made, StartupTicket};
use crate::peer::Peer;
use crate::run_as::Requester;
use crate::state::{AgentState, Startup};

type Incoming<S> = FramedRead<ReadHalf<S>, AgentCodec>;
type Outgoing<S> = FrameWriter<WriteHalf<S>, AgentMessage>;

/// The software name and version the agent announces.
pub fn software() -> String {
    format!("rexec-agent {}", env!("CARGO_PKG_VERSION"))
}

/// Runs one session that took a place in a startup budget (`entered`),
/// tracked by `tracker` so that shutdown waits for it.
pub(crate) fn spawn<S>(
    stream: S,
    peer: Peer,
    entered: (StartupTicket, Made),
    state: &Arc<AgentState>,
    tracker: &TaskTracker,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ticket, made) = entered;
    if let Some(evicted) = made.evicted {
        state.refusals.evicted(evicted, &state.settings);
    }
    let close = ticket.closed();
    let startup = Startup::new(ticket, state);
    let state = state.clone();
    tracker.spawn(
        async move {
            // Until the client is admitted, giving way means simply
            // dropping the handshake: nothing has started for it.
            tokio::select! {
                () = serve(stream, peer, state, startup) => {}
                () = close.cancelled() => {}
            }
        }
        .instrument(tracing::info_span!("session", %peer)),
    );
}

/// Why a session ended before its request was carried out.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("TLS handshake failed: {}", rexec_protocol::plain::io_error(.0))]
    Handshake(std::io::Error),
    #[error("client did not finish the handshake and request within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("client closed the connection before sending a request")]
    ClosedEarly,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("client speaks protocol {client} ({software}), this agent speaks {PROTOCOL_VERSION}")]
    VersionMismatch { client: u32, software: String },
    #[error("connection error: {0}")]
    Frame(#[from] FrameError),
    #[error("client {0} is no longer authorized")]
    NotAuthorized(Fingerprint),
}

/// Who is on the other end, once TLS has proved it.
struct Client {
    name: String,
    fingerprint: Fingerprint,
}

/// A request the session read and will carry out.
enum Request {
    Exec(ExecRequest),
    Ping,
    Push(PushRequest),
    Pull(PullRequest),
    Job(crate::jobs::serve::JobCall),
}

impl Request {
    /// What the limits call this request; `None` for one they do not count.
    fn kind(&self) -> Option<&'static str> {
        match self {
            // Jobs count against max_jobs, not against the execs.
            Request::Ping | Request::Job(_) => None,
            Request::Exec(_) => Some("exec"),
            Request::Push(_) => Some("push"),
            Request::Pull(_) => Some("pull"),
        }
    }

    /// The command or path the request is about, for the log.
    fn subject(&self) -> &str {
        match self {
            Request::Ping => "",
            Request::Exec(exec) => &exec.command,
            Request::Push(push) => &push.dest,
            Request::Pull(pull) => &pull.path,
            Request::Job(call) => call.subject(),
        }
    }
}

/// Serves one connection to its end, logging how it went. `stream` is the
/// connection's bytes as they arrive, before TLS; `startup` is the
/// connection's place until its client is admitted.
pub async fn serve<S>(stream: S, peer: Peer, state: Arc<AgentState>, startup: Startup)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if let Err(e) = serve_inner(stream, peer, &state, startup).await {
        match e {
            SessionError::Frame(FrameError::Io(_)) | SessionError::ClosedEarly => {
                tracing::info!(%peer, "session ended: {e}");
            }
            // Anyone can cause these, as often as they can connect.
            SessionError::Handshake(_)
            | SessionError::HandshakeTimeout(_)
            | SessionError::NotAuthorized(_) => {
                state.refusals.handshake_failed(&peer, &e);
            }
            _ => tracing::warn!(%peer, "session refused: {e}"),
        }
    }
}

async fn serve_inner<S>(
    stream: S,
    peer: Peer,
    state: &AgentState,
    startup: Startup,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = state.settings.handshake_timeout;
    let opening = tokio::time::timeout(timeout, open(stream, state)).await;
    let (client, mut incoming, mut outgoing, request) = match opening {
        Err(_) => return Err(SessionError::HandshakeTimeout(timeout)),
        Ok(Err(OpenError { error, outgoing })) => {
            if let Some(mut outgoing) = outgoing {
                let kind = match &error {
                    SessionError::VersionMismatch { .. } => ErrorKind::VersionMismatch,
                    _ => ErrorKind::Protocol,
                };
                let _ = outgoing
                    .feed(AgentMessage::Hello(Hello::new(software())))
                    .await;
                refuse(&mut outgoing, ErrorReport::new(kind, error.to_string())).await;
            }
            return Err(error);
        }
        Ok(Ok(opened)) => opened,
    };
    let caller = Caller {
        peer,
        name: client.name.clone(),
        fingerprint: client.fingerprint,
    };

    // Our hello leaves with the first answer: one write, one TLS record.
    outgoing
        .feed(AgentMessage::Hello(Hello::new(software())))
        .await?;
    let _session = match startup.admit(client.fingerprint) {
        Ok(permit) => permit,
        Err(full) => {
            tracing::warn!(%peer, client = client.name.as_str(), "refusing session: {full}");
            let report = ErrorReport::new(ErrorKind::Busy, full.to_string());
            finish(&mut outgoing, AgentMessage::Error(report)).await?;
            return Ok(());
        }
    };
    // Commands and copies are work, under the agent's and the client's limits.
    let slot = match request.kind() {
        None => None,
        Some(kind) => match state.execs.acquire(client.fingerprint) {
            Ok(slot) => Some(slot),
            Err(busy) => {
                audit!(
                    tracing::Level::WARN,
                    caller,
                    request = request.subject(),
                    "{kind} refused: {busy}"
                );
                let report = ErrorReport::new(ErrorKind::Busy, busy.to_string());
                finish(&mut outgoing, AgentMessage::Error(report)).await?;
                return Ok(());
            }
        },
    };
    if let Request::Ping = request {
        finish(&mut outgoing, AgentMessage::Pong).await?;
        tracing::debug!(%peer, client = client.name.as_str(), "ping");
        return Ok(());
    }
    let request = match request {
        Request::Job(call) => {
            crate::jobs::serve(call, caller, state, &mut incoming, &mut outgoing).await?;
            return Ok(());
        }
        other => other,
    };
    if let Request::Push(_) = request {
        // The client waits for our hello before it sends files.
        outgoing.flush().await?;
    }
    let job = Job {
        requester: Requester { name: &client.name },
        settings: &state.settings,
        incoming: &mut incoming,
        outgoing: &mut outgoing,
        kill: &state.shutdown.kill,
        place: slot,
    };
    let started = Instant::now();
    let started_at = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    let copy = match &request {
        Request::Ping | Request::Job(_) => return Ok(()),
        Request::Push(push) => CopyRequest::Push(push),
        Request::Pull(pull) => CopyRequest::Pull(pull),
        Request::Exec(request) => {
            let report = exec::run(request, job).await;
            audit!(
                tracing::Level::INFO,
                caller,
                command = request.command.as_str(),
                started_at = %started_at,
                cwd = report.cwd.as_deref().unwrap_or(""),
                user = report.user.as_deref().unwrap_or(""),
                pid = report.pid.unwrap_or(0),
                outcome = ?report.end.to_string(),
                duration_ms = started.elapsed().as_millis() as u64,
                stdout_bytes = report.stdout_bytes,
                stderr_bytes = report.stderr_bytes,
                "exec"
            );
            // The command is over and gave up its place (exec::run).
            linger(&mut incoming, peer, state).await;
            return Ok(());
        }
    };
    // The copy's place went with its job.
    let report = copy::serve(copy, job).await;
    linger(&mut incoming, peer, state).await;
    audit!(
        tracing::Level::INFO,
        caller,
        direction = copy.direction(),
        path = ?copy.path(),
        user = ?report.user,
        started_at = %started_at,
        outcome = ?report.outcome.to_string(),
        duration_ms = started.elapsed().as_millis() as u64,
        entries = report.entries,
        bytes = report.bytes,
        "copy"
    );
    Ok(())
}

/// Reads and drops what a TCP client still sends after our last message,
/// until it closes the connection (ctl does once it has read that
/// message), for at most the keepalive bound (or the kill grace, with
/// keepalives off), or until the agent stops. Closing a socket with input
/// unread makes the kernel reset the connection and throw away what it
/// has not sent yet: the end of the output and the exit status of a
/// command that exited before reading all its stdin (`ctl exec -i` with
/// a reader slower than the command). A session through the broker has no
/// such reset, and its end reaches the broker as it is.
async fn linger<R: AsyncRead + Unpin>(
    incoming: &mut FramedRead<R, AgentCodec>,
    peer: Peer,
    state: &AgentState,
) {
    if !matches!(peer, Peer::Tcp(_)) {
        return;
    }
    let bound = Keepalive::of(&state.settings).silence_bound(state.settings.kill_grace);
    let until_closed = async { while let Some(Ok(_)) = incoming.next().await {} };
    tokio::select! {
        _ = tokio::time::timeout(bound, until_closed) => {}
        () = state.shutdown.kill.cancelled() => {}
    }
}

struct OpenError<S> {
    error: SessionError,
    /// Present when the error can still be reported to the client.
    outgoing: Option<Outgoing<S>>,
}

impl<S> From<SessionError> for OpenError<S> {
    fn from(error: SessionError) -> Self {
        OpenError {
            error,
            outgoing: None,
        }
    }
}

type Opened<S> = (Client, Incoming<S>, Outgoing<S>, Request);

/// TLS, the client's hello and its request.
async fn open<S>(
    stream: S,
    state: &AgentState,
) -> Result<Opened<TlsStream<S>>, OpenError<TlsStream<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = state
        .acceptor
        .accept(stream)
        .await
        .map_err(SessionError::Handshake)?;
    let client = identify(&tls, state)?;
    let (read, write) = tokio::io::split(tls);
    let mut incoming = FramedRead::new(read, AgentCodec::new());
    let outgoing = FrameWriter::new(write);
    match read_request(&mut incoming).await {
        Ok(request) => Ok((client, incoming, outgoing, request)),
        Err(error @ (SessionError::Protocol(_) | SessionError::VersionMismatch { .. })) => {
            Err(OpenError {
                error,
                outgoing: Some(outgoing),
            })
        }
        Err(error) => Err(error.into()),
    }
}

fn identify<S>(tls: &TlsStream<S>, state: &AgentState) -> Result<Client, SessionError> {
    let certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| SessionError::Protocol("client presented no certificate".into()))?;
    let fingerprint = Fingerprint::of_certificate(certificate)
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    // The handshake's check has just looked at the file.
    client_named(state.authorized.as_loaded(&fingerprint), fingerprint)
}

/// The client TLS accepted, as the file names it now. Revoked or renamed
/// since the handshake: refused, never served under a stand-in name, which
/// no `[run_as]` rule would confine.
fn client_named(
    found: Option<crate::authorized::AuthorizedClient>,
    fingerprint: Fingerprint,
) -> Result<Client, SessionError> {
    match found {
        Some(client) => Ok(Client {
            name: client.name,
            fingerprint,
        }),
        None => Err(SessionError::NotAuthorized(fingerprint)),
    }
}

async fn read_request<S: AsyncRead + AsyncWrite>(
    incoming: &mut Incoming<S>,
) -> Result<Request, SessionError> {
    match next(incoming).await? {
        ClientMessage::Hello(hello) if hello.protocol == PROTOCOL_VERSION => {}
        ClientMessage::Hello(hello) => {
            return Err(SessionError::VersionMismatch {
                client: hello.protocol,
                software: rexec_protocol::plain::short_text(
                    &hello.software,
                    rexec_protocol::SOFTWARE_SHOWN,
                ),
            });
        }
        other => {
            return Err(SessionError::Protocol(format!(
                "expected hello, got {}",
                name_of(&other)
            )));
        }
    }
    match next(incoming).await? {
        ClientMessage::Exec(request) => Ok(Request::Exec(request)),
        ClientMessage::Ping => Ok(Request::Ping),
        ClientMessage::Push(request) => Ok(Request::Push(request)),
        ClientMessage::Pull(request) => Ok(Request::Pull(request)),
        ClientMessage::Detach(request) => {
            Ok(Request::Job(crate::jobs::serve::JobCall::Detach(request)))
        }
        ClientMessage::Job(request) => Ok(Request::Job(crate::jobs::serve::JobCall::Job(request))),
        other => Err(SessionError::Protocol(format!(
            "expected a request, got {}",
            name_of(&other)
        ))),
    }
}

async fn next<S: AsyncRead>(incoming: &mut Incoming<S>) -> Result<ClientMessage, SessionError> {
    match incoming.next().await {
        Some(Ok(message)) => Ok(message),
        Some(Err(FrameError::Io(e))) => Err(SessionError::Frame(FrameError::Io(e))),
        Some(Err(e)) => Err(SessionError::Protocol(e.to_string())),
        None => Err(SessionError::ClosedEarly),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorized::{AuthorizedClient, AuthorizedClients, authorize, revoke};

    #[test]
    fn a_client_revoked_after_its_handshake_is_refused_not_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        let fingerprint: Fingerprint = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            .parse()
            .unwrap();
        let store = AuthorizedClients::open(&path).unwrap();
        let confined = AuthorizedClient {
            fingerprint,
            name: "confined".into(),
        };
        authorize(&path, &confined).unwrap();
        let client = client_named(store.lookup(&fingerprint), fingerprint).unwrap();
        assert_eq!(client.name, "confined");

        // Revoked between TLS accepting the key and the session naming it.
        revoke(&path, "confined").unwrap();
        match client_named(store.lookup(&fingerprint), fingerprint) {
            Err(SessionError::NotAuthorized(refused)) => assert_eq!(refused, fingerprint),
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(client) => panic!("served as {:?}", client.name),
        }
    }
}
