//! The one way ctl reaches an agent: how to get a byte stream to it (a
//! [`Carrier`]: TCP, or a broker), TLS with our identity over that stream, the
//! host key check against known hosts, the framed halves, and the hello
//! exchange that opens every request ([`greet`], [`open`]).
//!
//! Reaching the stream and the TLS handshake run under the connect
//! timeout. What the host key check saw turns into the precise error a
//! user needs ("host key changed" with both fingerprints, "unknown host
//! refused", "agent refused this client"). TLS and the hello take any
//! [`Io`] stream, so the broker's byte stream is one more variant of
//! [`Carrier`], never a second copy of the session.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rexec_protocol::tls::{
    ClientCredentials, HostKeyOutcome, HostKeyPolicy, HostKeyVerifier, server_name,
};
use rexec_protocol::{
    AgentMessage, ClientCodec, ClientMessage, FrameError, FrameWriter, Hello, Identity,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::FramedRead;

use rexec_broker::BrokerError;

use crate::broker::BrokerLink;
use crate::error::{ConnectionError, CtlError, FileError};
use crate::known_hosts::{Added, KnownHosts};
use crate::target::Target;

/// How much of the agent's stream we buffer for decoding.
const READ_BUFFER: usize = 4 * rexec_protocol::MAX_FRAME_LEN;
/// How much we read from the socket at once. rustls asks for at most one
/// TLS record (16 KiB) per read; buffering below it turns bulk output into
/// one system call per quarter mebibyte instead of one per record.
const SOCKET_READ_BUFFER: usize = 256 * 1024;

/// A byte stream to an agent that TLS can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The stream under TLS, whichever carrier brought it.
type Transport = Box<dyn Io>;
/// Frames from the agent.
pub type Incoming = FramedRead<ReadHalf<TlsStream<Transport>>, ClientCodec>;
/// Frames to the agent.
pub type Outgoing = FrameWriter<WriteHalf<TlsStream<Transport>>, ClientMessage>;

/// How ctl gets a byte stream to a target's agent.
#[derive(Debug, Clone, Default)]
pub enum Carrier {
    /// A TCP connection to the target's host and port.
    #[default]
    Tcp,
    /// A session through the broker to the agent of the target's name,
    /// over the one broker connection of this process.
    Broker(Arc<BrokerLink>),
}

impl Carrier {
    /// A stream to `target`'s agent, before TLS.
    ///
    /// # Errors
    /// The name does not resolve, or no address takes the connection;
    /// through a broker, no agent of that name is connected, or it does
    /// not answer within `timeout`.
    async fn reach(&self, target: &Target, timeout: Duration) -> Result<Transport, CtlError> {
        match self {
            Carrier::Tcp => {
                let tcp = connect_tcp(target).await?;
                Ok(Box::new(BufReader::with_capacity(SOCKET_READ_BUFFER, tcp)))
            }
            Carrier::Broker(link) => Ok(Box::new(link.dial(&target.host, timeout).await?)),
        }
    }

    /// The known hosts key of `target`: `host:port` for a direct
    /// connection (a DNS name in lower case, as ssh records it), the
    /// agent's name under `broker/` through a broker.
    pub fn known_hosts_key(&self, target: &Target) -> String {
        match self {
            Carrier::Tcp => crate::known_hosts::canonical(&target.host_port()),
            Carrier::Broker(link) => link.known_hosts_key(&target.host),
        }
    }
}

/// What every connection from this ctl process shares.
#[derive(Debug)]
pub struct Client {
    /// Our identity.
    pub identity: Identity,
    /// Known hosts; updated on first contact.
    pub known_hosts: Mutex<KnownHosts>,
    /// Refuse hosts not in known hosts instead of trusting them on first use.
    pub strict_host_key: bool,
    /// Bound on resolve + connect + TLS handshake.
    pub connect_timeout: Duration,
    /// How targets are reached.
    pub carrier: Carrier,
    /// `--config-dir DIR` for the commands ctl tells the user to run; none
    /// for the default directory.
    pub config_dir_flag: Option<String>,
}

/// An established, verified connection.
pub struct Connection {
    /// Messages from the agent.
    pub incoming: Incoming,
    /// Messages to the agent.
    pub outgoing: Outgoing,
}

impl Client {
    /// The command that forgets `host_port`'s recorded key, in our config
    /// directory wherever it is pasted.
    fn remove_command(&self, host_port: &str) -> String {
        match &self.config_dir_flag {
            Some(flag) => format!("ctl {flag} known-hosts remove {host_port}"),
            None => format!("ctl known-hosts remove {host_port}"),
        }
    }

    /// Connects to `target` and checks its host key.
    ///
    /// # Errors
    /// Every way connecting can fail, each with its own [`CtlError`].
    pub async fn connect(&self, target: &Target) -> Result<Connection, CtlError> {
        // An agent with no room for another handshake closes the connection
        // before TLS (its defence against floods, which costs it nothing);
        // a burst of ctl calls from one workstation then tries again after a
        // short, random pause, within the connect timeout, as a person would.
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let mut pause = FIRST_BUSY_PAUSE;
        loop {
            let result = self
                .secure(
                    target,
                    self.carrier.reach(target, self.connect_timeout),
                    deadline,
                )
                .await;
            let busy = matches!(&result, Err(CtlError::Agent(report))
                if report.kind == rexec_protocol::ErrorKind::Busy);
            let wait = jittered(pause);
            if !busy || tokio::time::Instant::now() + wait >= deadline {
                return result;
            }
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(LAST_BUSY_PAUSE);
        }
    }

    /// TLS with our identity and the host key check over the stream that
    /// `reach` yields, both under the connect timeout.
    ///
    /// # Errors
    /// Every way the handshake can fail, each with its own [`CtlError`].
    async fn secure(
        &self,
        target: &Target,
        reach: impl std::future::Future<Output = Result<Transport, CtlError>>,
        deadline: tokio::time::Instant,
    ) -> Result<Connection, CtlError> {
        let host_port = self.carrier.known_hosts_key(target);
        let policy = match self.known_hosts().get(&host_port) {
            Some(known) => HostKeyPolicy::Expect(known),
            None if self.strict_host_key => HostKeyPolicy::RefuseUnknown,
            None => HostKeyPolicy::TrustOnFirstUse,
        };
        let verifier = Arc::new(HostKeyVerifier::new(policy));
        let config = credentials(&self.identity)
            .config(verifier.clone())
            .map_err(|e| {
                CtlError::Connection(ConnectionError::Handshake(std::io::Error::other(e)))
            })?;
        let connector = TlsConnector::from(Arc::new(config));

        let attempt = async {
            let stream = reach.await?;
            connector
                .connect(server_name(&target.host), stream)
                .await
                .map_err(|e| match verifier.outcome() {
                    // Through a broker, the carrier's own word on a
                    // session it lost beats any guess from the I/O kind.
                    _ if BrokerError::from_io(&e).is_some() => CtlError::lost_io(&e),
                    HostKeyOutcome::Changed { known, presented } => {
                        CtlError::Connection(ConnectionError::HostKeyChanged {
                            remove: self.remove_command(&host_port),
                            known,
                            presented,
                        })
                    }
                    HostKeyOutcome::RefusedUnknown(presented) => {
                        CtlError::Connection(ConnectionError::UnknownHost(presented))
                    }
                    // The agent closes connections it has no room for
                    // before any TLS, without a word (there is no TLS
                    // alert for "busy").
                    _ if matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                    ) =>
                    {
                        CtlError::Agent(rexec_protocol::ErrorReport::new(
                            rexec_protocol::ErrorKind::Busy,
                            "the agent closed the connection before the TLS handshake: \
                             too many connections being set up; try again later",
                        ))
                    }
                    _ => CtlError::Connection(ConnectionError::Handshake(e)),
                })
        };
        let tls = tokio::time::timeout_at(deadline, attempt)
            .await
            .map_err(|_| {
                CtlError::Connection(ConnectionError::ConnectTimeout(self.connect_timeout))
            })??;

        if let HostKeyOutcome::FirstUse(fingerprint) = verifier.outcome() {
            let mut known = self.known_hosts();
            let added = known.add(&host_port, fingerprint).map_err(|source| {
                CtlError::File(FileError::KnownHosts {
                    path: known.path().to_path_buf(),
                    source,
                })
            })?;
            match added {
                Added::New => say!(
                    "ctl: new host {host_port}, fingerprint {fingerprint}: added to {}",
                    known.path().display()
                ),
                Added::AlreadyKnown => {}
                // Another ctl met a different key under this name meanwhile.
                Added::Conflict(known) => {
                    return Err(CtlError::Connection(ConnectionError::HostKeyChanged {
                        remove: self.remove_command(&host_port),
                        known,
                        presented: fingerprint,
                    }));
                }
            }
        }

        let (read, write) = tokio::io::split(tls);
        Ok(Connection {
            // Room for several full frames, so that bulk output is read
            // from TLS in large pieces rather than a frame's worth at a time.
            incoming: FramedRead::with_capacity(read, ClientCodec::new(), READ_BUFFER),
            outgoing: FrameWriter::new(write),
        })
    }

    fn known_hosts(&self) -> std::sync::MutexGuard<'_, KnownHosts> {
        self.known_hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Turns an error from the first read after the handshake into what it
    /// means: with TLS 1.3 the agent's verdict on our certificate arrives
    /// only then, as an alert.
    pub fn explain_first_read_error(&self, error: std::io::Error) -> CtlError {
        match BrokerError::from_io(&error) {
            // Through a broker, the agent's TLS alert does not always
            // arrive ahead of its reset, so an agent that abandons the
            // session between the handshake and its hello is taken for
            // what it nearly always is: it refused our key (a busy agent
            // refuses before TLS, with a word of its own).
            Some(BrokerError::Lost(rexec_broker::LostReason::PeerReset)) => {
                return CtlError::Connection(ConnectionError::NotAuthorized(
                    self.identity.fingerprint,
                ));
            }
            Some(_) => return CtlError::lost_io(&error),
            None => {}
        }
        let refused = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| {
                matches!(
                    e,
                    rustls::Error::AlertReceived(
                        rustls::AlertDescription::AccessDenied
                            | rustls::AlertDescription::CertificateRequired
                            | rustls::AlertDescription::BadCertificate
                    )
                )
            });
        if refused {
            CtlError::Connection(ConnectionError::NotAuthorized(self.identity.fingerprint))
        } else {
            CtlError::lost_io(&error)
        }
    }
}

/// `identity`'s TLS credentials, made once per process and shared by every
/// connection of a fan-out.
fn credentials(identity: &Identity) -> ClientCredentials {
    static LOADED: Mutex<Option<(rexec_protocol::Fingerprint, ClientCredentials)>> =
        Mutex::new(None);
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((fingerprint, credentials)) = loaded.as_ref()
        && *fingerprint == identity.fingerprint
    {
        return credentials.clone();
    }
    let credentials = ClientCredentials::new(identity);
    *loaded = Some((identity.fingerprint, credentials.clone()));
    credentials
}

/// A connection past the hello exchange, with the agent's hello.
pub struct Session {
    /// The verified connection.
    pub connection: Connection,
    /// What the agent announced.
    pub hello: Hello,
}

/// Connects to `target`, sends our hello and `request` in one write, and
/// reads the agent's hello.
///
/// # Errors
/// Every way connecting can fail, a refused client, a version mismatch.
pub async fn open(
    client: &Client,
    target: &Target,
    request: ClientMessage,
) -> Result<Session, CtlError> {
    let connection = client.connect(target).await?;
    greet(client, connection, request).await
}

/// Sends our hello and `request` in one write on an established
/// connection (no round trip waits for the agent's hello), and reads the
/// agent's hello.
///
/// # Errors
/// A refused client, a version mismatch, a broken connection.
pub async fn greet(
    client: &Client,
    mut connection: Connection,
    request: ClientMessage,
) -> Result<Session, CtlError> {
    // Before the agent's hello, a broken stream says what the agent made
    // of our key, whichever of our writes or reads meets it first.
    let lost = |e: FrameError| match e {
        FrameError::Io(io) => client.explain_first_read_error(io),
        other => CtlError::lost(&other),
    };
    connection
        .outgoing
        .feed(ClientMessage::Hello(Hello::new(software())))
        .await
        .map_err(lost)?;
    connection.outgoing.feed(request).await.map_err(lost)?;
    connection.outgoing.flush().await.map_err(lost)?;
    let hello = match connection.incoming.next().await {
        Some(Ok(AgentMessage::Hello(hello))) => hello,
        Some(Ok(_)) => {
            return Err(CtlError::Connection(ConnectionError::Protocol(
                "the agent did not start with a hello".into(),
            )));
        }
        Some(Err(FrameError::Io(e))) => return Err(client.explain_first_read_error(e)),
        Some(Err(e)) => return Err(CtlError::lost(&e)),
        None => {
            return Err(CtlError::Connection(ConnectionError::Lost(
                "the agent closed the connection before answering (busy, or this client is not authorized)".into(),
            )));
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(CtlError::Connection(ConnectionError::VersionMismatch {
            agent: hello.protocol,
            software: hello.software,
            ours: PROTOCOL_VERSION,
        }));
    }
    Ok(Session { connection, hello })
}

/// ctl's name and version, for the hello and for the broker (`cmd` hands
/// it to `BrokerLink::connect`).
pub fn software() -> String {
    format!("ctl {}", env!("CARGO_PKG_VERSION"))
}

/// The first pause before trying an agent again that had no room for our
/// handshake, and the longest; each retry doubles it.
const FIRST_BUSY_PAUSE: Duration = Duration::from_millis(10);
const LAST_BUSY_PAUSE: Duration = Duration::from_millis(400);

/// `pause` scaled by a random factor between ½ and 1, so that the calls of
/// a burst do not all come back at the same moment. std's `RandomState`
/// is seeded afresh for each one, which is all the randomness this needs.
fn jittered(pause: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let fraction = (hasher.finish() % 1000) as u32;
    pause / 2 + pause * fraction / 2000
}

async fn connect_tcp(target: &Target) -> Result<TcpStream, ConnectionError> {
    let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(ConnectionError::Resolve)?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => ConnectionError::Connect(e),
        None => ConnectionError::Resolve(std::io::Error::other("no addresses found")),
    })
}
