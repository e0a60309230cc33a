//! Opening a connection to an agent: resolve, TCP, TLS with our identity,
//! the host key check against known hosts, and the framed halves.
//!
//! All of it runs under the connect timeout. What the host key check saw
//! turns into the precise error a user needs ("host key changed" with both
//! fingerprints, "unknown host refused", "agent refused this client").

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rexec_protocol::tls::{
    HostKeyOutcome, HostKeyPolicy, HostKeyVerifier, client_config, server_name,
};
use rexec_protocol::{ClientCodec, Identity};
use tokio::io::{BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::CtlError;
use crate::known_hosts::{Added, KnownHosts};
use crate::target::Target;

/// How much of the agent's stream we buffer for decoding.
const READ_BUFFER: usize = 4 * rexec_protocol::MAX_FRAME_LEN;
/// How much we read from the socket at once. rustls asks for at most one
/// TLS record (16 KiB) per read; buffering below it turns bulk output into
/// one system call per quarter mebibyte instead of one per record.
const SOCKET_READ_BUFFER: usize = 256 * 1024;

/// The socket under TLS.
type Socket = BufReader<TcpStream>;
/// Frames from the agent.
pub type Incoming = FramedRead<ReadHalf<TlsStream<Socket>>, ClientCodec>;
/// Frames to the agent.
pub type Outgoing = FramedWrite<WriteHalf<TlsStream<Socket>>, ClientCodec>;

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
}

/// An established, verified connection.
#[derive(Debug)]
pub struct Connection {
    /// Messages from the agent.
    pub incoming: Incoming,
    /// Messages to the agent.
    pub outgoing: Outgoing,
}

impl Client {
    /// Connects to `target` and checks its host key.
    ///
    /// # Errors
    /// Every way connecting can fail, each with its own [`CtlError`].
    pub async fn connect(&self, target: &Target) -> Result<Connection, CtlError> {
        let host_port = target.host_port();
        let policy = match self.known_hosts().get(&host_port) {
            Some(known) => HostKeyPolicy::Expect(known),
            None if self.strict_host_key => HostKeyPolicy::RefuseUnknown,
            None => HostKeyPolicy::TrustOnFirstUse,
        };
        let verifier = Arc::new(HostKeyVerifier::new(policy));
        let config = client_config(Some(&self.identity), verifier.clone())
            .map_err(|e| CtlError::Handshake(std::io::Error::other(e)))?;
        let connector = TlsConnector::from(Arc::new(config));

        let attempt = async {
            let tcp = BufReader::with_capacity(SOCKET_READ_BUFFER, connect_tcp(target).await?);
            connector
                .connect(server_name(&target.host), tcp)
                .await
                .map_err(|e| match verifier.outcome() {
                    HostKeyOutcome::Changed { known, presented } => CtlError::HostKeyChanged {
                        host_port: host_port.clone(),
                        known,
                        presented,
                    },
                    HostKeyOutcome::RefusedUnknown(presented) => CtlError::UnknownHost(presented),
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
                    _ => CtlError::Handshake(e),
                })
        };
        let tls = tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| CtlError::ConnectTimeout(self.connect_timeout))??;

        if let HostKeyOutcome::FirstUse(fingerprint) = verifier.outcome() {
            let mut known = self.known_hosts();
            let added =
                known
                    .add(&host_port, fingerprint)
                    .map_err(|source| CtlError::KnownHosts {
                        path: known.path().to_path_buf(),
                        source,
                    })?;
            match added {
                Added::New => say!(
                    "ctl: new host {host_port}, fingerprint {fingerprint}: added to {}",
                    known.path().display()
                ),
                Added::AlreadyKnown => {}
                // Another ctl met a different key under this name meanwhile.
                Added::Conflict(known) => {
                    return Err(CtlError::HostKeyChanged {
                        host_port,
                        known,
                        presented: fingerprint,
                    });
                }
            }
        }

        let (read, write) = tokio::io::split(tls);
        Ok(Connection {
            // Room for several full frames, so that bulk output is read
            // from TLS in large pieces rather than a frame's worth at a time.
            incoming: FramedRead::with_capacity(read, ClientCodec::new(), READ_BUFFER),
            outgoing: FramedWrite::new(write, ClientCodec::new()),
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
            CtlError::NotAuthorized(self.identity.fingerprint)
        } else {
            CtlError::ConnectionLost(crate::plain::io_error(&error))
        }
    }
}

async fn connect_tcp(target: &Target) -> Result<TcpStream, CtlError> {
    let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(CtlError::Resolve)?;
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
        Some(e) => CtlError::Connect(e),
        None => CtlError::Resolve(std::io::Error::other("no addresses found")),
    })
}
