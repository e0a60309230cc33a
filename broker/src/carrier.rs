//! The connection to the broker and the two ends of a session: the agent
//! listens under its name and answers discovery; ctl dials a name and asks
//! who is there. Owns the NATS client options (URLs, credentials, TLS to
//! the broker, reconnecting) and the connection's receive budget; the
//! stream itself lives in `stream`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, Event, ServerAddr, ServerError, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use rexec_protocol::tls::PresentedServerCert;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::connection::ConnectionState;
use crate::error::BrokerError;
use crate::flow::{INITIAL_WINDOW, MAX_WINDOW};
use crate::pin::CertFingerprint;
use crate::replies::{Replies, ReplyWait};
use crate::stream::{AnswerWatch, BrokerStream, RefusalWatch, StreamParts, StreamTimers};
use crate::subject::{SessionId, Subjects, validate_name};
use crate::wire::{Announcement, OpenAnswer, OpenRequest};

/// How we prove to the broker who we are. Secrets always come from files
/// (mode 0600), never from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials (a broker open to anyone who can reach it).
    #[default]
    None,
    /// A NATS `.creds` file (user JWT and nkey seed).
    CredsFile(PathBuf),
    /// A user name and a file holding the password.
    UserPassword {
        /// The broker user.
        user: String,
        /// The file with the password (its first line).
        password_file: PathBuf,
    },
    /// A file holding a token (its first line).
    TokenFile(PathBuf),
}

/// Limits and timers of a connection; the defaults suit production.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Bytes of receive window all streams of this connection may hold in
    /// total. Half of nats-server's default per-connection pending limit
    /// (`max_pending`, 64 MiB), so even a process that stopped reading its
    /// socket cannot be cut off by the server as a slow consumer.
    pub receive_budget: u32,
    /// How long `dial` waits for the agent's answer.
    pub open_timeout: Duration,
    /// Stream heartbeat and abandon limit.
    pub timers: StreamTimers,
    /// Streams opened but not yet taken by `accept`; more are refused busy.
    pub accept_backlog: usize,
    /// New streams whose start windows a growing window always leaves
    /// room for in the budget (up to half of it): however many bulk
    /// streams run, this many more can still open. The agent sets its
    /// session limit here.
    pub reserved_starts: usize,
    /// Dropped streams that may linger at once to send what they still
    /// owe their peer; beyond this, a dropped stream sends what its credit
    /// allows at once and ends.
    pub max_lingering: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            receive_budget: 32 * 1024 * 1024,
            open_timeout: Duration::from_secs(10),
            timers: StreamTimers::default(),
            accept_backlog: 128,
            // The agent's default max_sessions.
            reserved_starts: 256,
            // Far above what working sessions leave behind (one each, for
            // a round trip), far below what costs the broker anything.
            max_lingering: 1024,
        }
    }
}

/// Where the broker is and how to talk to it.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// One or more `nats://` or `tls://` URLs (host:port), tried in turn.
    pub urls: Vec<String>,
    /// How we authenticate.
    pub credentials: Credentials,
    /// The CA certificate(s) (PEM) that signed the broker's TLS certificate;
    /// without it (and without `fingerprint`) the system's root
    /// certificates are used.
    pub ca_file: Option<PathBuf>,
    /// The broker's certificate itself, pinned by fingerprint instead of a
    /// CA (a broker with a self-signed certificate).
    pub fingerprint: Option<CertFingerprint>,
    /// The subject prefix (default `rexec`).
    pub subject_prefix: String,
    /// The connection's name in the broker's monitoring (e.g. the agent's).
    pub client_name: Option<String>,
    /// The agent name this connection serves (the agent's, `None` for
    /// ctl): its reply inboxes are made under that name
    /// ([`Subjects::inbox`]) instead of `_INBOX`, so that the broker's
    /// permissions can keep each agent to its own replies.
    pub serves: Option<String>,
    /// Keep trying, from the first connection on, for ever (the agent);
    /// otherwise the first connection must succeed at once (ctl).
    pub retry_forever: bool,
    /// Limits and timers.
    pub tuning: Tuning,
}

impl BrokerOptions {
    /// Options for `urls` with defaults for everything else.
    pub fn new(urls: impl IntoIterator<Item = impl Into<String>>) -> BrokerOptions {
        BrokerOptions {
            urls: urls.into_iter().map(Into::into).collect(),
            credentials: Credentials::None,
            ca_file: None,
            fingerprint: None,
            subject_prefix: crate::subject::DEFAULT_PREFIX.to_owned(),
            client_name: None,
            serves: None,
            retry_forever: false,
            tuning: Tuning::default(),
        }
    }

    /// Checks the options and the files they name (secrets, CA) as
    /// [`Carrier::connect`] would, without dialling the broker.
    ///
    /// # Errors
    /// As [`Carrier::connect`] for unusable options.
    pub fn check(&self) -> Result<(), BrokerError> {
        prepare(self).map(drop)
    }

    /// Splits a comma-separated URL list (as given to `--broker`).
    pub fn split_urls(list: &str) -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

struct CarrierInner {
    client: Client,
    subjects: Subjects,
    /// The prefix of our reply inboxes when we serve a name
    /// ([`BrokerOptions::serves`]); NATS's `_INBOX` otherwise.
    inbox: Option<String>,
    state: watch::Receiver<ConnectionState>,
    /// Where the carrier itself notes what it learns (a probe of another
    /// agent under our name); the connection's events note the rest.
    state_tx: Arc<watch::Sender<ConnectionState>>,
    pool: Arc<Semaphore>,
    /// Room for dropped streams still sending what they owe their peer.
    lingering: Arc<Semaphore>,
    /// The ids of this connection's streams, until each stream's task ends.
    live: crate::stream::LiveSessions,
    tuning: Tuning,
    /// A random id of this connection, sent in our probes and in our
    /// answers to probes, so that two agents serving one name tell each
    /// other apart.
    instance: String,
    /// Where the answers to our open requests and probes come back.
    replies: Replies,
}

/// How long a probe waits for more answers after our own: another agent
/// serving the name answers about as soon as we do on one server, and
/// this leaves room for one that is a server or two further away in a
/// cluster.
const PROBE_GRACE: Duration = Duration::from_millis(250);

/// What came of a request sent with [`Carrier::ask`].
enum Asked {
    /// The first answer, and the wait that may bring more.
    Answered(Box<(ReplyWait, async_nats::Message)>),
    /// Nobody subscribes to the subject.
    NoResponders,
    /// No answer within the open timeout.
    TimedOut,
    /// The broker refused us a subject this request needs (its name).
    Refused(String),
}

/// What an open request turned out to be.
enum Opened {
    Session(BrokerStream),
    /// An agent's probe, and the process it came from.
    Probe {
        instance: Option<String>,
    },
}

/// A connection to the broker, shared by every stream over it. Cheap to
/// clone.
#[derive(Clone)]
pub struct Carrier {
    inner: Arc<CarrierInner>,
}

impl std::fmt::Debug for Carrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carrier")
            .field("prefix", &self.inner.subjects.prefix())
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

/// Waits between reconnection attempts: doubling from 250 ms to 30 s, each
/// wait drawn between half and all of that, so a fleet that lost its
/// broker at the same instant does not come back in one wave.
pub fn reconnect_delay(attempts: usize) -> Duration {
    let exponent = u32::try_from(attempts.min(7)).unwrap_or(7);
    let ceiling = (250u64 << exponent).min(30_000);
    let mut random = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    let fraction = u64::from(u16::from_be_bytes(random));
    let millis = ceiling / 2 + ceiling / 2 * fraction / u64::from(u16::MAX);
    Duration::from_millis(millis)
}

/// The wait before connection attempt `attempts` (from 1): none before
/// the very first (the library asks before it connects at all, and every
/// ctl call would pay the wait), [`reconnect_delay`] after that.
fn connect_delay(state: &ConnectionState, attempts: usize) -> Duration {
    let never_connected = !state.connected && state.disconnects == 0;
    if attempts <= 1 && never_connected {
        Duration::ZERO
    } else {
        reconnect_delay(attempts)
    }
}

fn read_secret(path: &Path, what: &str) -> Result<String, BrokerError> {
    let unusable = |why: &str| BrokerError::Config(format!("{what} {}: {why}", path.display()));
    let meta = fs::metadata(path).map_err(|_| unusable("cannot be read"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(BrokerError::Config(format!(
            "permissions {mode:04o} for {what} {} are too open: it must not be readable by group or others (run: chmod 600 {})",
            path.display(),
            path.display()
        )));
    }
    let text = fs::read_to_string(path).map_err(|_| unusable("cannot be read"))?;
    Ok(text)
}

fn first_line(text: &str) -> Option<&str> {
    text.lines().next().map(str::trim).filter(|s| !s.is_empty())
}

/// Why our own check of the broker's certificate failed, in the terms a
/// user fixes it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Untrusted {
    /// Not the certificate whose fingerprint we pin.
    NotPinned,
    /// Not signed by the CA we trust (the CA file, or the system's roots).
    UnknownIssuer,
    /// Outside its validity dates.
    Expired,
    /// Not issued for the host name in the URL.
    WrongName,
    /// Any other reason the certificate is refused.
    Other,
}

/// The last verdict of our certificate check, shared between the TLS
/// configuration and the connection's event handler: on a reconnection the
/// library reports a refused certificate as plain I/O, so the handler reads
/// the reason here instead.
#[derive(Debug, Default)]
struct TrustVerdict(Mutex<Option<Untrusted>>);

impl TrustVerdict {
    fn set(&self, verdict: Option<Untrusted>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = verdict;
    }

    /// The reason of the last refusal, once.
    fn take(&self) -> Option<Untrusted> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Checks the broker's certificate by its pin or by the CA, and notes why
/// it refused one.
#[derive(Debug)]
struct BrokerTrust {
    check: TrustBy,
    /// The provider's, for the handshake's signatures (as the CA's
    /// verifier would check them).
    algorithms: WebPkiSupportedAlgorithms,
    verdict: Arc<TrustVerdict>,
}

/// What the broker's certificate is checked against.
#[derive(Debug)]
enum TrustBy {
    Pin(CertFingerprint),
    Ca(Arc<WebPkiServerVerifier>),
}

fn untrusted(error: &rustls::Error, pinned: bool) -> Untrusted {
    use rustls::CertificateError as E;
    match error {
        rustls::Error::InvalidCertificate(_) if pinned => Untrusted::NotPinned,
        rustls::Error::InvalidCertificate(E::UnknownIssuer | E::BadSignature) => {
            Untrusted::UnknownIssuer
        }
        rustls::Error::InvalidCertificate(
            E::Expired | E::ExpiredContext { .. } | E::NotValidYet | E::NotValidYetContext { .. },
        ) => Untrusted::Expired,
        rustls::Error::InvalidCertificate(
            E::NotValidForName | E::NotValidForNameContext { .. },
        ) => Untrusted::WrongName,
        _ => Untrusted::Other,
    }
}

impl BrokerTrust {
    fn check_server_cert(
        &self,
        cert: PresentedServerCert<'_>,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = match &self.check {
            TrustBy::Pin(pin) => pin.check(cert.end_entity),
            TrustBy::Ca(ca) => ca.verify_server_cert(
                cert.end_entity,
                cert.intermediates,
                cert.server_name,
                cert.ocsp_response,
                cert.now,
            ),
        };
        let pinned = matches!(self.check, TrustBy::Pin(_));
        self.verdict
            .set(result.as_ref().err().map(|error| untrusted(error, pinned)));
        result
    }
}

rexec_protocol::server_cert_verifier_by_provider!(BrokerTrust);

fn broker_tls(
    ca_file: Option<&Path>,
    pin: Option<CertFingerprint>,
    verdict: Arc<TrustVerdict>,
) -> Result<rustls::ClientConfig, BrokerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|_| BrokerError::Config("TLS to the broker cannot be set up".to_owned()))?;
    let trust = |check: TrustBy| {
        Arc::new(BrokerTrust {
            check,
            algorithms: provider.signature_verification_algorithms,
            verdict,
        })
    };
    if let Some(pin) = pin {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(trust(TrustBy::Pin(pin)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = || {
                BrokerError::Config(format!(
                    "the broker CA file {} holds no usable certificate",
                    path.display()
                ))
            };
            let pem = fs::read(path).map_err(|_| {
                BrokerError::Config(format!(
                    "the broker CA file {} cannot be read",
                    path.display()
                ))
            })?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?;
            if certs.is_empty() {
                return Err(bad());
            }
            for cert in certs {
                roots.add(cert).map_err(|_| bad())?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(BrokerError::Config(
                    "this machine has no system root certificates: give the broker's CA file"
                        .to_owned(),
                ));
            }
        }
    }
    let ca = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|_| BrokerError::Config("TLS to the broker cannot be set up".to_owned()))?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(trust(TrustBy::Ca(ca)))
        .with_no_client_auth())
}

fn describe_server_error(error: &ServerError) -> (String, Option<String>) {
    match error {
        ServerError::AuthorizationViolation => {
            ("the broker refused our credentials".to_owned(), None)
        }
        ServerError::SlowConsumer(_) => {
            ("the broker reported us as a slow consumer".to_owned(), None)
        }
        ServerError::Other(text) if text.to_ascii_lowercase().contains("permissions violation") => {
            // The server names the subject; keep only that part.
            let subject = text.split('"').nth(1).unwrap_or("a subject");
            (
                format!("the broker refused us permission for {subject}"),
                Some(subject.to_owned()),
            )
        }
        ServerError::Other(_) => ("the broker reported an error".to_owned(), None),
    }
}

/// Whether the server refused us a publication to `subject`, a reply
/// inbox: an answer to somebody's request, not a subject of our own.
fn answer_refused(error: &ServerError, subjects: &Subjects, subject: &str) -> bool {
    matches!(error, ServerError::Other(text) if text.to_ascii_lowercase().contains("publish"))
        && subjects.is_reply_inbox(subject)
}

/// Whether a connection failed in the TLS handshake (the library reports
/// that as plain I/O).
fn tls_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// What we trust the broker's certificate by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrustedBy {
    /// Its pinned fingerprint.
    Pin,
    /// The CA file we were given.
    CaFile,
    /// The system's root certificates.
    System,
}

/// A failed reconnection attempt, which the library reports as its error
/// kind's text only; `untrusted` is why our own check refused the broker's
/// certificate in that attempt, if it did.
fn describe_retry_error(
    text: &str,
    urls: &str,
    trust: TrustedBy,
    untrusted: Option<Untrusted>,
) -> String {
    let kinds = [
        ConnectErrorKind::AuthorizationViolation,
        ConnectErrorKind::Authentication,
        ConnectErrorKind::Tls,
        ConnectErrorKind::TimedOut,
        ConnectErrorKind::ServerParse,
        ConnectErrorKind::Dns,
    ];
    let kind = kinds
        .into_iter()
        .find(|kind| kind.to_string() == text)
        .unwrap_or(ConnectErrorKind::Io);
    let kind = if untrusted.is_some() {
        ConnectErrorKind::Tls
    } else {
        kind
    };
    describe_connect_error(kind, urls, trust, untrusted)
}

fn describe_connect_error(
    kind: ConnectErrorKind,
    urls: &str,
    trust: TrustedBy,
    untrusted: Option<Untrusted>,
) -> String {
    let tls = |why: &str| format!("TLS with the broker at {urls} failed: {why}");
    match (kind, untrusted) {
        (ConnectErrorKind::Tls, Some(Untrusted::NotPinned)) => {
            tls("its certificate does not match the fingerprint we pin")
        }
        (ConnectErrorKind::Tls, Some(Untrusted::UnknownIssuer)) if trust == TrustedBy::System => {
            tls("its certificate is not signed by a CA this machine trusts")
        }
        (ConnectErrorKind::Tls, Some(Untrusted::UnknownIssuer)) => {
            tls("its certificate is not signed by the CA we were given")
        }
        (ConnectErrorKind::Tls, Some(Untrusted::Expired)) => {
            tls("its certificate has expired or is not valid yet")
        }
        (ConnectErrorKind::Tls, Some(Untrusted::WrongName)) => {
            tls("its certificate is not issued for the host name in the URL")
        }
        (ConnectErrorKind::Tls, Some(Untrusted::Other)) => tls("its certificate is not trusted"),
        (ConnectErrorKind::Tls, None) if trust == TrustedBy::Pin => format!(
            "TLS with the broker at {urls} failed (is its certificate the one whose fingerprint we were given?)"
        ),
        (ConnectErrorKind::Tls, None) => format!(
            "TLS with the broker at {urls} failed (is its certificate signed by the CA we were given?)"
        ),
        (ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation, _) => {
            format!("the broker at {urls} refused our credentials")
        }
        (ConnectErrorKind::TimedOut, _) => format!("the broker at {urls} did not answer in time"),
        (ConnectErrorKind::ServerParse, _) => format!("broker address {urls} is not valid"),
        _ => format!("cannot reach the broker at {urls}"),
    }
}

/// Checks that `url` is a broker URL we can dial: `nats://HOST:PORT` or
/// `tls://HOST:PORT` (the port may be left out: 4222).
///
/// # Errors
/// [`BrokerError::Config`] naming the URL.
pub fn validate_url(url: &str) -> Result<(), BrokerError> {
    parse_url(url).map(drop)
}

fn parse_url(url: &str) -> Result<ServerAddr, BrokerError> {
    let host = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"));
    let scheme_ok = host.is_some_and(|h| !h.is_empty() && !h.starts_with(':'));
    let addr: Option<ServerAddr> = if scheme_ok { url.parse().ok() } else { None };
    addr.ok_or_else(|| {
        BrokerError::Config(format!(
            "broker address {url:?} is not a nats://HOST:PORT or tls://HOST:PORT URL"
        ))
    })
}

/// What `connect` needs from the options once they are checked and the
/// files they name are read.
struct Prepared {
    subjects: Subjects,
    /// Our reply inboxes' prefix, when we serve a name.
    inbox: Option<String>,
    addrs: Vec<ServerAddr>,
    url_list: String,
    /// What the broker's certificate is trusted by.
    trust: TrustedBy,
    /// Why our check last refused the broker's certificate.
    verdict: Arc<TrustVerdict>,
}

/// Checks `options` and reads the files they name (secrets, CA) into the
/// client's options; nothing is dialled yet.
fn prepare(options: &BrokerOptions) -> Result<(Prepared, async_nats::ConnectOptions), BrokerError> {
    let subjects = Subjects::new(&options.subject_prefix)?;
    if options.urls.is_empty() {
        return Err(BrokerError::Config("no broker URL given".to_owned()));
    }
    if options.ca_file.is_some() && options.fingerprint.is_some() {
        return Err(BrokerError::Config(
            "give either a CA file or a fingerprint to trust the broker by, not both".to_owned(),
        ));
    }
    let mut addrs = Vec::new();
    let mut tls_wanted = options.ca_file.is_some() || options.fingerprint.is_some();
    for url in &options.urls {
        addrs.push(parse_url(url)?);
        tls_wanted |= url.starts_with("tls://");
    }
    let mut nats = async_nats::ConnectOptions::new();
    let inbox = match &options.serves {
        Some(name) => {
            validate_name(name)?;
            Some(subjects.inbox(name))
        }
        None => None,
    };
    if let Some(inbox) = &inbox {
        nats = nats.custom_inbox_prefix(inbox);
    }
    match &options.credentials {
        Credentials::None => {}
        Credentials::CredsFile(path) => {
            let text = read_secret(path, "broker credentials file")?;
            nats = nats.credentials(&text).map_err(|_| {
                BrokerError::Config(format!(
                    "broker credentials file {} is not a NATS .creds file",
                    path.display()
                ))
            })?;
        }
        Credentials::UserPassword {
            user,
            password_file,
        } => {
            let text = read_secret(password_file, "broker password file")?;
            let password = first_line(&text).ok_or_else(|| {
                BrokerError::Config(format!(
                    "broker password file {} is empty",
                    password_file.display()
                ))
            })?;
            nats = nats.user_and_password(user.clone(), password.to_owned());
        }
        Credentials::TokenFile(path) => {
            let text = read_secret(path, "broker token file")?;
            let token = first_line(&text).ok_or_else(|| {
                BrokerError::Config(format!("broker token file {} is empty", path.display()))
            })?;
            nats = nats.token(token.to_owned());
        }
    }
    let verdict = Arc::new(TrustVerdict::default());
    if tls_wanted {
        nats = nats
            .tls_client_config(broker_tls(
                options.ca_file.as_deref(),
                options.fingerprint,
                verdict.clone(),
            )?)
            .require_tls(true);
    }
    let trust = match (&options.fingerprint, &options.ca_file) {
        (Some(_), _) => TrustedBy::Pin,
        (None, Some(_)) => TrustedBy::CaFile,
        (None, None) => TrustedBy::System,
    };
    let prepared = Prepared {
        subjects,
        inbox,
        addrs,
        url_list: options.urls.join(","),
        trust,
        verdict,
    };
    Ok((prepared, nats))
}

impl Carrier {
    /// Connects to the broker. With `retry_forever` this returns at once
    /// and the connection comes up in the background (watch
    /// [`Carrier::state`]); otherwise the first connection must succeed.
    ///
    /// # Errors
    /// Unusable options ([`BrokerError::Config`], [`BrokerError::BadName`]),
    /// or, without `retry_forever`, a broker that cannot be reached or
    /// refuses us ([`BrokerError::Connect`]).
    pub async fn connect(options: BrokerOptions) -> Result<Carrier, BrokerError> {
        let (prepared, mut nats) = prepare(&options)?;
        let Prepared {
            subjects,
            inbox,
            addrs,
            url_list,
            trust,
            verdict,
        } = prepared;

        let (state_tx, state_rx) = watch::channel(ConnectionState::default());
        let state_tx = Arc::new(state_tx);
        let events = state_tx.clone();
        let urls_for_events = url_list.clone();
        let verdict_for_events = verdict.clone();
        let subjects_for_events = subjects.clone();
        nats = nats
            // Our own streams hold at most a window of messages each; this
            // is far above it (the buffer grows only as it fills).
            .subscription_capacity(crate::flow::SUBSCRIPTION_CAPACITY)
            .reconnect_delay_callback({
                let state = state_rx.clone();
                move |attempts| connect_delay(&state.borrow(), attempts)
            })
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let events = events.clone();
                let urls_for_events = urls_for_events.clone();
                let verdict = verdict_for_events.clone();
                let subjects_for_events = subjects_for_events.clone();
                async move {
                    match event {
                        Event::Connected => events.send_modify(|s| {
                            s.connected = true;
                        }),
                        Event::Disconnected | Event::Closed => events.send_modify(|s| {
                            if s.connected {
                                s.disconnects += 1;
                            }
                            s.connected = false;
                        }),
                        Event::ServerError(error) => {
                            let (text, refused) = describe_server_error(&error);
                            if refused.as_deref().is_some_and(|subject| {
                                answer_refused(&error, &subjects_for_events, subject)
                            }) {
                                // An answer to a request, refused at its
                                // reply inbox: the asker's business (one
                                // that asks twice with one inbox gets one
                                // answer), and anyone on the broker can
                                // cause as many as they like. Not a line
                                // each, nor a refusal of ours.
                                tracing::debug!("{text}");
                                return;
                            }
                            tracing::warn!("{text}");
                            events.send_modify(|s| {
                                s.last_error = Some(text);
                                if let Some(refused) = refused {
                                    s.permission_violations += 1;
                                    // A name we may not serve refuses both its
                                    // open subject and the inbox beneath it, in
                                    // either order: the first says why, so a
                                    // refusal of the inbox does not hide it.
                                    let serving = |subject: &str| subject.ends_with(".open");
                                    let hides =
                                        s.last_refused_subject.as_deref().is_some_and(serving)
                                            && !serving(&refused);
                                    if !hides {
                                        s.last_refused_subject = Some(refused);
                                    }
                                }
                            });
                        }
                        Event::ClientError(async_nats::ClientError::Other(text)) => {
                            let text = describe_retry_error(
                                &text,
                                &urls_for_events,
                                trust,
                                verdict.take(),
                            );
                            tracing::warn!("{text}");
                            events.send_modify(|s| s.last_error = Some(text));
                        }
                        _ => {}
                    }
                }
            });
        if let Some(name) = &options.client_name {
            nats = nats.name(name);
        }
        if options.retry_forever {
            nats = nats.retry_on_initial_connect().max_reconnects(None);
        }
        let client = nats.connect(addrs).await.map_err(|e| {
            let kind = if tls_refused(&e) {
                ConnectErrorKind::Tls
            } else {
                e.kind()
            };
            BrokerError::Connect(describe_connect_error(
                kind,
                &url_list,
                trust,
                verdict.take(),
            ))
        })?;
        if client.connection_state() == async_nats::connection::State::Connected {
            state_tx.send_modify(|s| s.connected = true);
        }
        let budget = options.tuning.receive_budget.max(INITIAL_WINDOW) as usize;
        Ok(Carrier {
            inner: Arc::new(CarrierInner {
                replies: Replies::new(client.clone()),
                client,
                inbox,
                subjects,
                state: state_rx,
                state_tx,
                pool: Arc::new(Semaphore::new(budget)),
                lingering: Arc::new(Semaphore::new(options.tuning.max_lingering)),
                live: crate::stream::LiveSessions::default(),
                tuning: options.tuning,
                instance: SessionId::random()?.to_string(),
            }),
        })
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// A receiver that sees every change of the connection's state.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// The subjects in use.
    pub fn subjects(&self) -> &Subjects {
        &self.inner.subjects
    }

    /// Bytes of the receive budget not held by any stream now.
    pub fn free_budget(&self) -> usize {
        self.inner.pool.available_permits()
    }

    /// Bytes of the budget that growing windows leave free for new
    /// streams' start windows.
    fn reserve(&self) -> usize {
        let budget = self.inner.tuning.receive_budget.max(INITIAL_WINDOW) as usize;
        self.inner
            .tuning
            .reserved_starts
            .saturating_mul(INITIAL_WINDOW as usize)
            .min(budget / 2)
    }

    // Each argument is one of the stream's own parts, which the two sides
    // come by differently; a struct for them would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn spawn_stream(
        &self,
        subscriber: async_nats::Subscriber,
        in_subject: &str,
        out_subject: String,
        credit: u32,
        permit: tokio::sync::OwnedSemaphorePermit,
        session: SessionId,
        answers: Option<AnswerWatch>,
        refusal: Option<RefusalWatch>,
    ) -> BrokerStream {
        BrokerStream::spawn(StreamParts {
            client: self.inner.client.clone(),
            subscriber,
            in_subject_len: in_subject.len(),
            out_subject,
            window: INITIAL_WINDOW,
            credit,
            permit,
            pool: self.inner.pool.clone(),
            reserve: self.reserve(),
            lingering: self.inner.lingering.clone(),
            live: self.inner.live.clone(),
            connection: self.inner.state.clone(),
            timers: self.inner.tuning.timers,
            session,
            answers,
            refusal,
        })
    }

    /// Serves `name`: subscribes to its open subject and returns the
    /// listener whose [`Listener::accept`] yields each new session. When we
    /// are connected, it checks that the broker let us subscribe.
    ///
    /// # Errors
    /// [`BrokerError::BadName`]; [`BrokerError::SubscribeRefused`] or
    /// [`BrokerError::InboxRefused`] when the broker's permissions do not
    /// let us serve `name`; [`BrokerError::Broker`] when the connection is
    /// closed for good.
    pub async fn listen(&self, name: &str) -> Result<Listener, BrokerError> {
        self.listen_reporting(name, Arc::new(|_| {})).await
    }

    /// [`Carrier::listen`], calling `report` for each open request turned
    /// away before a session existed. Anyone on the broker can send those,
    /// as many as they like, so we log none of them here: the agent counts
    /// them under its limit for refusals before authentication.
    ///
    /// # Errors
    /// As [`Carrier::listen`].
    pub async fn listen_reporting(
        &self,
        name: &str,
        report: RefusalReport,
    ) -> Result<Listener, BrokerError> {
        validate_name(name)?;
        let subject = self.inner.subjects.open(name);
        let subscriber = self.subscribe(subject.clone()).await?;
        let (tx, rx) = mpsc::channel(self.inner.tuning.accept_backlog.max(1));
        let carrier = self.clone();
        let owner = name.to_owned();
        let task = tokio::spawn(async move {
            carrier.serve_opens(owner, subscriber, tx, report).await;
        });
        let listener = Listener {
            incoming: rx,
            task,
            name: name.to_owned(),
        };
        if self.state().connected {
            // We serve the name; whoever else does is the agent's to say,
            // from its own probe. A probe that did not come back (a slow
            // broker, a connection that dropped meanwhile) says nothing of
            // our subscription, which the connection makes again when it
            // comes back: before, it ended the agent's serving on the
            // broker until a restart. Only the broker's refusals count.
            if let Err(error @ (BrokerError::SubscribeRefused(_) | BrokerError::InboxRefused(_))) =
                self.probe(name).await
            {
                return Err(error);
            }
        }
        Ok(listener)
    }

    /// Subscribes to `subject` on the broker.
    async fn subscribe(&self, subject: String) -> Result<async_nats::Subscriber, BrokerError> {
        self.inner
            .client
            .subscribe(subject)
            .await
            .map_err(|_| BrokerError::Broker("subscribing on the broker failed".to_owned()))
    }

    /// The prefix of our reply inboxes.
    fn inbox_prefix(&self) -> &str {
        self.inner.inbox.as_deref().unwrap_or("_INBOX")
    }

    /// Whether `subject` is one of our reply inboxes.
    fn is_our_inbox(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.inbox_prefix())
            .is_some_and(|rest| rest.starts_with('.'))
    }

    /// The count of the broker's refusals so far, to tell a refusal of
    /// what we do next from older ones.
    fn refusals_so_far(&self) -> u64 {
        self.inner.state.borrow().permission_violations
    }

    /// Sends a request on `subject` with a reply subject of its own, so
    /// that every answer can be seen, not only the first. The broker may
    /// refuse us the request itself, our answers' subscription, or one of
    /// `also` (a subject subscribed to for the request since `before`, a
    /// [`Carrier::refusals_so_far`]): its refusal then comes before any
    /// answer.
    async fn ask(
        &self,
        subject: &str,
        payload: Bytes,
        also: &[&str],
        before: u64,
    ) -> Result<Asked, BrokerError> {
        let mut state = self.inner.state.clone();
        let mut wait = self.inner.replies.wait().await?;
        let subscription = wait.subscription.clone();
        let refused = async {
            state
                .wait_for(|s| {
                    s.last_refused_subject.as_deref().is_some_and(|refused| {
                        // Our answers' subscription is refused once, when
                        // it is made; a request that shares it sees that.
                        refused == subscription
                            || (s.permission_violations > before
                                && (refused == subject || also.contains(&refused)))
                    })
                })
                .await
                .ok()
                .and_then(|s| s.last_refused_subject.clone())
        };
        self.inner
            .client
            .publish_with_reply(subject.to_owned(), wait.subject.clone(), payload)
            .await
            .map_err(|_| {
                BrokerError::Broker("sending a request to the broker failed".to_owned())
            })?;
        let timeout = self.inner.tuning.open_timeout;
        let first = tokio::select! {
            // A refusal comes before any answer could.
            biased;
            refused = refused => {
                let refused = refused.unwrap_or_default();
                if refused == wait.subscription {
                    self.inner.replies.refused(&wait).await;
                }
                return Ok(Asked::Refused(refused));
            }
            first = tokio::time::timeout(timeout, wait.next()) => first,
        };
        Ok(match first {
            Ok(Some(message)) if message.status == Some(StatusCode::NO_RESPONDERS) => {
                Asked::NoResponders
            }
            Ok(Some(message)) => Asked::Answered(Box::new((wait, message))),
            Ok(None) => {
                return Err(BrokerError::Broker(
                    "the connection to the broker is closed".to_owned(),
                ));
            }
            Err(_) => Asked::TimedOut,
        })
    }

    /// Asks our own open subject whether anyone serves it, and who: the
    /// server handles our subscription before this request, so "no
    /// responders" means it refused the subscription, and an answer from
    /// another agent process means that two serve the name. The agent asks
    /// after each reconnection, when the subscriptions have been made
    /// again, before it says it serves.
    ///
    /// # Errors
    /// [`BrokerError::SubscribeRefused`], [`BrokerError::InboxRefused`]
    /// (the broker's permissions); [`BrokerError::NameClash`] when another
    /// agent answers too; [`BrokerError::Broker`] when the request does not
    /// come back in time.
    pub async fn probe(&self, name: &str) -> Result<(), BrokerError> {
        let instance = self.inner.instance.as_str();
        let request = OpenRequest {
            session: String::new(),
            window: 0,
            probe: true,
            instance: Some(instance.to_owned()),
        };
        let payload = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
        let subject = self.inner.subjects.open(name);
        let before = self.refusals_so_far();
        let (mut answers, first) = match self.ask(&subject, payload, &[], before).await? {
            Asked::Answered(answered) => *answered,
            Asked::NoResponders => return Err(BrokerError::SubscribeRefused(name.to_owned())),
            Asked::TimedOut => {
                return Err(BrokerError::Broker(
                    "the broker did not pass our own check request back in time".to_owned(),
                ));
            }
            Asked::Refused(refused) if self.is_our_inbox(&refused) => {
                return Err(BrokerError::InboxRefused(self.inbox_prefix().to_owned()));
            }
            Asked::Refused(_) => return Err(BrokerError::SubscribeRefused(name.to_owned())),
        };
        let from_us = |message: &async_nats::Message| {
            serde_json::from_slice::<OpenAnswer>(&message.payload)
                .is_ok_and(|answer| answer.instance.as_deref() == Some(instance))
        };
        let asked_at = tokio::time::Instant::now();
        let mut ours = from_us(&first);
        let mut others = !ours;
        let mut until = if ours {
            asked_at + PROBE_GRACE
        } else {
            asked_at + self.inner.tuning.open_timeout
        };
        while let Ok(Some(message)) = tokio::time::timeout_at(until, answers.next()).await {
            if message.status.is_some() {
                continue;
            }
            if from_us(&message) {
                if !ours {
                    until = tokio::time::Instant::now() + PROBE_GRACE;
                }
                ours = true;
            } else {
                others = true;
            }
        }
        if others {
            Err(BrokerError::NameClash(name.to_owned()))
        } else {
            Ok(())
        }
    }

    async fn serve_opens(
        self,
        name: String,
        mut subscriber: async_nats::Subscriber,
        incoming: mpsc::Sender<BrokerStream>,
        report: RefusalReport,
    ) {
        while let Some(message) = subscriber.next().await {
            // Only a reply inbox gets an answer: anything else would let
            // anyone aim our answers at another agent's subjects.
            let Some(reply) = message
                .reply
                .clone()
                .filter(|reply| self.inner.subjects.is_reply_inbox(reply))
            else {
                report(OpenRefusal::NoReply);
                continue;
            };
            let answer = self.open_one(&name, &message.payload, &incoming).await;
            let answer = match answer {
                Ok(Opened::Session(stream)) => {
                    let answer = OpenAnswer {
                        accepted: true,
                        window: INITIAL_WINDOW,
                        refused: None,
                        instance: None,
                        session: Some(stream.session_id().to_string()),
                    };
                    if let Ok(permit) = incoming.try_reserve() {
                        permit.send(stream);
                        answer
                    } else {
                        report(OpenRefusal::Busy);
                        refused(OpenRefusal::Busy.word())
                    }
                }
                Ok(Opened::Probe { instance }) => {
                    if instance.as_deref() != Some(self.inner.instance.as_str()) {
                        // Another agent serves our name (or someone sends
                        // probes in its name: the agent asks for itself).
                        self.inner.state_tx.send_modify(|s| s.name_clashes += 1);
                    }
                    OpenAnswer {
                        instance: Some(self.inner.instance.clone()),
                        ..refused("probe")
                    }
                }
                Err(why) => {
                    report(why);
                    refused(why.word())
                }
            };
            let payload = serde_json::to_vec(&answer).unwrap_or_default();
            if self
                .inner
                .client
                .publish(reply, Bytes::from(payload))
                .await
                .is_err()
            {
                // Only when our connection is down, not per sender.
                tracing::debug!(agent = %name, "could not answer an open request on the broker");
            }
        }
    }

    /// Checks one open request and, when it is good, sets up its stream.
    async fn open_one(
        &self,
        name: &str,
        payload: &[u8],
        incoming: &mpsc::Sender<BrokerStream>,
    ) -> Result<Opened, OpenRefusal> {
        use OpenRefusal::BadRequest;
        if payload.len() > 1024 {
            return Err(BadRequest);
        }
        let request: OpenRequest = serde_json::from_slice(payload).map_err(|_| BadRequest)?;
        if request.probe {
            return Ok(Opened::Probe {
                instance: request.instance,
            });
        }
        let session = SessionId::parse(&request.session).ok_or(BadRequest)?;
        if request.window == 0 || request.window > 2 * MAX_WINDOW {
            return Err(BadRequest);
        }
        // Anyone who reads a session's subjects knows its id: a second
        // open under it would be a second stream on the same subjects,
        // whose messages collide with the first's and end it.
        if self.inner.live.contains(session) {
            return Err(BadRequest);
        }
        if incoming.capacity() == 0 {
            return Err(OpenRefusal::Busy);
        }
        // Growing windows leave room for this many start windows; only
        // as many sessions as that at once, each holding its own, use it up.
        let permit = self
            .inner
            .pool
            .clone()
            .try_acquire_many_owned(INITIAL_WINDOW)
            .map_err(|_| OpenRefusal::NoRoom)?;
        let in_subject = self.inner.subjects.from_ctl(name, session);
        let subscriber = self
            .subscribe(in_subject.clone())
            .await
            .map_err(|_| OpenRefusal::Internal)?;
        let out_subject = self.inner.subjects.from_agent(name, session);
        Ok(Opened::Session(self.spawn_stream(
            subscriber,
            &in_subject,
            out_subject,
            request.window,
            permit,
            session,
            None,
            None,
        )))
    }

    /// Answers discovery requests with `announcement` until the returned
    /// responder is dropped.
    ///
    /// # Errors
    /// [`BrokerError::BadName`] for an unusable name in the announcement.
    pub async fn announce(
        &self,
        announcement: Announcement,
    ) -> Result<DiscoveryResponder, BrokerError> {
        validate_name(&announcement.name)?;
        let mut subscriber = self.subscribe(self.inner.subjects.discover()).await?;
        let client = self.inner.client.clone();
        let payload = Bytes::from(serde_json::to_vec(&announcement).unwrap_or_default());
        let subjects = self.inner.subjects.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                // Every agent answers each request: a reply subject that
                // is not an inbox (an agent's open subject) would turn one
                // request into an answer from each agent at its target.
                // Silently: that costs no line of log per request either.
                if let Some(reply) = message.reply
                    && subjects.is_reply_inbox(&reply)
                {
                    let _ = client.publish(reply, payload.clone()).await;
                }
            }
        });
        Ok(DiscoveryResponder { task })
    }

    /// Opens a session to agent `name`. A second agent that accepts it too
    /// (two serve the name) fails the stream with
    /// [`BrokerError::NameClash`].
    ///
    /// # Errors
    /// [`BrokerError::Offline`] at once when nobody serves `name`;
    /// [`BrokerError::Timeout`], [`BrokerError::Refused`],
    /// [`BrokerError::BadName`]; [`BrokerError::InboxRefused`] or
    /// [`BrokerError::Broker`] when the broker's permissions refuse us a
    /// subject the session needs.
    pub async fn dial(&self, name: &str) -> Result<BrokerStream, BrokerError> {
        validate_name(name)?;
        let timeout = self.inner.tuning.open_timeout;
        let permit = tokio::time::timeout(
            timeout,
            self.inner.pool.clone().acquire_many_owned(INITIAL_WINDOW),
        )
        .await
        .map_err(|_| BrokerError::Timeout(name.to_owned()))?
        .map_err(|_| BrokerError::Broker("the connection is closed".to_owned()))?;
        let session = SessionId::random()?;
        let in_subject = self.inner.subjects.from_agent(name, session);
        let out_subject = self.inner.subjects.from_ctl(name, session);
        // Subscribed before asking, so the agent's first message has a
        // subscriber waiting.
        let before = self.refusals_so_far();
        let subscriber = self.subscribe(in_subject.clone()).await?;
        let request = OpenRequest {
            session: session.to_string(),
            window: INITIAL_WINDOW,
            probe: false,
            instance: None,
        };
        let payload = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
        let open = self.inner.subjects.open(name);
        let unreadable = BrokerError::Broker(format!(
            "the broker does not let us read sessions from {name}: its user needs to subscribe to {}",
            self.inner.subjects.from_agent_all(name)
        ));
        let (answers, reply) = match self.ask(&open, payload, &[&in_subject], before).await? {
            Asked::Answered(answered) => *answered,
            Asked::NoResponders => return Err(BrokerError::Offline(name.to_owned())),
            Asked::TimedOut => {
                // An agent that answers late must not keep the session
                // waiting for its abandon limit.
                self.reset(&out_subject).await;
                return Err(BrokerError::Timeout(name.to_owned()));
            }
            Asked::Refused(refused) if self.is_our_inbox(&refused) => {
                return Err(BrokerError::InboxRefused(self.inbox_prefix().to_owned()));
            }
            Asked::Refused(refused) if refused == open => {
                return Err(BrokerError::Broker(format!(
                    "the broker does not let us open sessions to {name}: its user needs to publish to {open}"
                )));
            }
            Asked::Refused(_) => return Err(unreadable),
        };
        let ours = session.to_string();
        let (answers, answer) = first_answer_for(answers, &reply, &ours, name, timeout).await?;
        if !answer.accepted || answer.window == 0 {
            // The answer comes before TLS, from anyone who can answer at
            // our inbox: only our own words are passed on, never its text.
            let reason = match answer.refused.as_deref() {
                Some(word) if OpenRefusal::is_word(word) => word,
                Some(_) => "a reason we do not know",
                None => "no reason given",
            };
            return Err(BrokerError::Refused {
                name: name.to_owned(),
                reason: reason.to_owned(),
            });
        }
        // Another agent under the same name accepts the same request and
        // answers on the same subjects; its acceptance comes as late as
        // an answer may.
        let watch = AnswerWatch {
            answers,
            until: tokio::time::Instant::now() + timeout,
            name: name.to_owned(),
            session: ours,
        };
        // The broker's refusal of our subscription may come after the
        // answer: the stream ends on it.
        let refusal = RefusalWatch {
            subject: in_subject.clone(),
            after: before,
            error: unreadable,
        };
        Ok(self.spawn_stream(
            subscriber,
            &in_subject,
            out_subject,
            answer.window.min(2 * MAX_WINDOW),
            permit,
            session,
            Some(watch),
            Some(refusal),
        ))
    }

    async fn reset(&self, subject: &str) {
        let header = crate::wire::Header {
            kind: crate::wire::Kind::Reset,
            seq: 0,
            grant: 0,
        };
        let _ = self
            .inner
            .client
            .publish(subject.to_owned(), Bytes::copy_from_slice(&header.encode()))
            .await;
    }

    /// Asks every agent on the broker to announce itself and collects the
    /// answers that arrive within `window`, sorted by name.
    ///
    /// # Errors
    /// [`BrokerError::Broker`] when the request cannot be sent or the
    /// broker does not let us send it; [`BrokerError::InboxRefused`] when
    /// it does not let us read the answers.
    pub async fn discover(&self, window: Duration) -> Result<Vec<Announcement>, BrokerError> {
        // Ten times the largest fleet we design for: anyone who may answer
        // discovery can send answers without end, and ctl keeps at most
        // this many different ones (a few hundred bytes each), however
        // many copies arrive.
        const MAX_ANSWERS: usize = 100_000;
        let failed = |_| BrokerError::Broker("asking the broker for its agents failed".to_owned());
        let discover = self.inner.subjects.discover();
        let mut state = self.inner.state.clone();
        let before = state.borrow().permission_violations;
        // A broker that refuses us the request or the inbox says so, and
        // answers never come: that is an error, not an empty broker.
        let refused = state.wait_for(|s| {
            s.permission_violations > before
                && s.last_refused_subject
                    .as_deref()
                    .is_some_and(|refused| refused == discover || self.is_our_inbox(refused))
        });
        tokio::pin!(refused);
        let inbox = self.inner.client.new_inbox();
        let mut subscriber = self.subscribe(inbox.clone()).await?;
        self.inner
            .client
            .publish_with_reply(discover.clone(), inbox, Bytes::new())
            .await
            .map_err(failed)?;
        self.inner.client.flush().await.map_err(|_| {
            BrokerError::Broker("asking the broker for its agents failed".to_owned())
        })?;
        let deadline = tokio::time::Instant::now() + window;
        let mut answers = std::collections::HashSet::new();
        while answers.len() < MAX_ANSWERS {
            let message = tokio::select! {
                message = tokio::time::timeout_at(deadline, subscriber.next()) => message,
                refused = &mut refused => {
                    let refused = refused.ok().and_then(|s| s.last_refused_subject.clone());
                    return Err(match refused {
                        Some(refused) if refused == discover => BrokerError::Broker(format!(
                            "the broker does not let us ask for its agents: its user needs to publish to {discover}"
                        )),
                        _ => BrokerError::InboxRefused(self.inbox_prefix().to_owned()),
                    });
                }
            };
            let Ok(Some(message)) = message else {
                break;
            };
            if message.payload.len() > 4096 {
                continue;
            }
            if let Ok(answer) = serde_json::from_slice::<Announcement>(&message.payload)
                && answer.plausible()
            {
                answers.insert(answer);
            }
        }
        let mut answers: Vec<Announcement> = answers.into_iter().collect();
        answers.sort_by(|a, b| {
            (&a.name, &a.fingerprint, &a.version).cmp(&(&b.name, &b.fingerprint, &b.version))
        });
        Ok(answers)
    }
}

/// The first answer on `answers` (`first` already taken) that is not an
/// acceptance of another session: those are someone else's requests
/// answered at our inbox, and are skipped.
async fn first_answer_for(
    mut answers: ReplyWait,
    first: &async_nats::Message,
    session: &str,
    name: &str,
    timeout: Duration,
) -> Result<(ReplyWait, OpenAnswer), BrokerError> {
    let unclear = || BrokerError::Refused {
        name: name.to_owned(),
        reason: "an answer we do not understand".to_owned(),
    };
    let until = tokio::time::Instant::now() + timeout;
    let mut answer: OpenAnswer = serde_json::from_slice(&first.payload).map_err(|_| unclear())?;
    while answer.accepted && !answer.accepts(session) {
        let next = tokio::time::timeout_at(until, answers.next())
            .await
            .map_err(|_| BrokerError::Timeout(name.to_owned()))?
            .ok_or_else(|| {
                BrokerError::Broker("the connection to the broker is closed".to_owned())
            })?;
        answer = serde_json::from_slice(&next.payload).map_err(|_| unclear())?;
    }
    Ok((answers, answer))
}

fn refused(reason: &str) -> OpenAnswer {
    OpenAnswer {
        accepted: false,
        window: 0,
        refused: Some(reason.to_owned()),
        instance: None,
        session: None,
    }
}

/// Why an open request was turned away before any session existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenRefusal {
    /// Not an open request we understand (not our JSON, over 1 KiB, a bad
    /// session id or window).
    BadRequest,
    /// No reply subject, or one that is not a reply inbox: not answered.
    NoReply,
    /// Too many sessions waiting to be taken.
    Busy,
    /// The other sessions' windows hold our connection's whole receive
    /// budget.
    NoRoom,
    /// Subscribing to the session's subject failed.
    Internal,
}

impl OpenRefusal {
    /// Whether `word` is one an agent refuses with: [`OpenRefusal::word`]'s,
    /// or `probe` (the answer to a probe).
    pub fn is_word(word: &str) -> bool {
        use OpenRefusal::{BadRequest, Busy, Internal, NoReply, NoRoom};
        word == "probe"
            || [BadRequest, NoReply, Busy, NoRoom, Internal]
                .iter()
                .any(|refusal| refusal.word() == word)
    }

    /// The word the refusal carries on the wire (and in `reason=` fields).
    pub fn word(self) -> &'static str {
        match self {
            OpenRefusal::BadRequest => "bad-request",
            OpenRefusal::NoReply => "no-reply",
            OpenRefusal::Busy => "busy",
            OpenRefusal::NoRoom => "no-room",
            OpenRefusal::Internal => "internal",
        }
    }
}

impl std::fmt::Display for OpenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpenRefusal::BadRequest => "a request that is not a valid open request",
            OpenRefusal::NoReply => "a request without a reply inbox, not answered",
            OpenRefusal::Busy => "too many sessions waiting to be taken",
            OpenRefusal::NoRoom => {
                "the other sessions' windows hold all of our connection's receive budget"
            }
            OpenRefusal::Internal => "subscribing to the session's subject failed",
        })
    }
}

/// Called by a [`Listener`]'s task for each open request it turned away.
pub type RefusalReport = Arc<dyn Fn(OpenRefusal) + Send + Sync>;

/// The agent's side of a name: yields each session opened to it.
#[derive(Debug)]
pub struct Listener {
    incoming: mpsc::Receiver<BrokerStream>,
    task: JoinHandle<()>,
    name: String,
}

impl Listener {
    /// The next session opened to us; `None` once the connection to the
    /// broker is closed for good.
    pub async fn accept(&mut self) -> Option<BrokerStream> {
        self.incoming.recv().await
    }

    /// The name served.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers discovery requests while it lives.
#[derive(Debug)]
pub struct DiscoveryResponder {
    task: JoinHandle<()>,
}

impl Drop for DiscoveryResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_grow_to_thirty_seconds_with_jitter() {
        for attempts in 0..40 {
            let ceiling = (250u64 << attempts.min(7)).min(30_000);
            let wait = reconnect_delay(attempts).as_millis() as u64;
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{attempts}: {wait} ms"
            );
        }
        let waits: std::collections::HashSet<_> = (0..50).map(|_| reconnect_delay(10)).collect();
        assert!(waits.len() > 1, "waits are drawn, not fixed");
    }

    #[test]
    fn the_first_connection_is_tried_at_once_and_reconnections_wait() {
        let fresh = ConnectionState::default();
        assert_eq!(connect_delay(&fresh, 1), Duration::ZERO);
        assert!(connect_delay(&fresh, 2) >= Duration::from_millis(250));
        let dropped = ConnectionState {
            disconnects: 1,
            ..ConnectionState::default()
        };
        assert!(connect_delay(&dropped, 1) >= Duration::from_millis(250));
    }

    #[test]
    fn the_brokers_refusals_become_our_own_sentences() {
        let (text, subject) = describe_server_error(&ServerError::Other(
            "permissions violation for subscription to \"rexec.v1.agent.labpc08.open\"".to_owned(),
        ));
        assert_eq!(
            text,
            "the broker refused us permission for rexec.v1.agent.labpc08.open"
        );
        assert_eq!(subject.as_deref(), Some("rexec.v1.agent.labpc08.open"));
        let (text, subject) = describe_server_error(&ServerError::AuthorizationViolation);
        assert_eq!(text, "the broker refused our credentials");
        assert_eq!(subject, None);
        assert_eq!(
            describe_retry_error(
                "authorization violation",
                "tls://b:4222",
                TrustedBy::CaFile,
                None
            ),
            "the broker at tls://b:4222 refused our credentials"
        );
        assert_eq!(
            describe_retry_error("IO error", "tls://b:4222", TrustedBy::CaFile, None),
            "cannot reach the broker at tls://b:4222"
        );
        // A certificate our own check refused, which the library passes on
        // as plain I/O when it reconnects.
        assert_eq!(
            describe_retry_error(
                "IO error",
                "tls://b:4222",
                TrustedBy::CaFile,
                Some(Untrusted::UnknownIssuer)
            ),
            "TLS with the broker at tls://b:4222 failed: its certificate is not signed by the CA we were given"
        );
        assert_eq!(
            describe_retry_error(
                "IO error",
                "tls://b:4222",
                TrustedBy::Pin,
                Some(Untrusted::NotPinned)
            ),
            "TLS with the broker at tls://b:4222 failed: its certificate does not match the fingerprint we pin"
        );
    }

    #[tokio::test]
    async fn a_url_that_is_not_nats_or_tls_is_refused_before_connecting() {
        for url in ["http://broker:4222", "broker:4222", "tls://"] {
            let error = Carrier::connect(BrokerOptions::new([url]))
                .await
                .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("broker address {url:?} is not a nats://HOST:PORT or tls://HOST:PORT URL")
            );
        }
        let mut options = BrokerOptions::new(["nats://127.0.0.1:1"]);
        options.subject_prefix = "rexec.>".to_owned();
        assert!(matches!(
            Carrier::connect(options).await,
            Err(BrokerError::BadName(_))
        ));
    }

    #[test]
    fn urls_are_split_on_commas() {
        assert_eq!(
            BrokerOptions::split_urls("tls://a:4222, tls://b:4222,,"),
            ["tls://a:4222", "tls://b:4222"]
        );
    }
}
