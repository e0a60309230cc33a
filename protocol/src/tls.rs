//! rustls configurations for both ends: TLS 1.3 only, mutual authentication,
//! and peers identified by fingerprint instead of by a certificate authority.
//!
//! Certificates are never checked for names, dates or issuers; what counts is
//! the fingerprint of the public key and the proof, by rustls's own signature
//! check in the handshake, that the peer holds the matching private key. This
//! module decides nothing about *which* fingerprints to trust: the agent
//! supplies a [`ClientAuthorizer`], `ctl` a [`HostKeyPolicy`].

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::ServerCertVerified;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, ClientConfig, DistinguishedName, OtherError, ServerConfig};

use crate::identity::{Fingerprint, Identity};

/// The TLS stack could not be configured.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsError(#[from] rustls::Error);

fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    // AES-128-GCM first: ten AES rounds against fourteen, and 128-bit
    // secure. For 1 GiB of output it saves about 5 % of the CPU of each
    // side (BENCHMARKS.md, "Cipher order"). ring's own order puts AES-256
    // first; a peer that offers only that one still agrees on it.
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// Decides which clients the agent accepts.
pub trait ClientAuthorizer: fmt::Debug + Send + Sync {
    /// Whether a client that proved it holds the key with this fingerprint
    /// may connect.
    fn is_authorized(&self, fingerprint: &Fingerprint) -> bool;
}

/// The agent's TLS configuration: presents `identity`, requires a client
/// certificate, and accepts only clients `authorizer` approves.
///
/// # Errors
/// When the identity's key is unusable.
pub fn server_config(
    identity: &Identity,
    authorizer: Arc<dyn ClientAuthorizer>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(AuthorizedClientVerifier {
        authorizer,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![identity.certificate.clone()],
            identity.private_key.clone_key(),
        )?;
    // Every ctl call is a new process with no ticket store to resume from,
    // so tickets would be bytes on the wire that nobody uses.
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The handshake-signature half of a certificate verifier, the same for
/// every verifier in rexec: signatures are checked with the provider's
/// algorithms (a field `algorithms`); only the certificate checks differ.
/// Exported for the broker crate's check of the broker's certificate.
#[doc(hidden)]
#[macro_export]
macro_rules! signature_checks_by_provider {
    () => {
        $crate::signature_checks_by_provider!(verify_tls12_signature, verify_tls13_signature);

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
    // Each trait method is named after the rustls function that does it.
    ($($check:ident),+) => {
        $(
            fn $check(
                &self,
                message: &[u8],
                cert: &::rustls::pki_types::CertificateDer<'_>,
                dss: &::rustls::DigitallySignedStruct,
            ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
                ::rustls::crypto::$check(message, cert, dss, &self.algorithms)
            }
        )+
    };
}

/// What a server's certificate check is shown: the certificates the
/// server presented and the name the client dialled.
#[derive(Debug, Clone, Copy)]
pub struct PresentedServerCert<'a> {
    /// The server's own certificate.
    pub end_entity: &'a CertificateDer<'a>,
    /// The certificates it sent along, towards a root.
    pub intermediates: &'a [CertificateDer<'a>],
    /// The name the client dialled.
    pub server_name: &'a ServerName<'a>,
    /// The OCSP response stapled to the certificate (empty without one).
    pub ocsp_response: &'a [u8],
    /// The time the certificates must be valid at.
    pub now: UnixTime,
}

/// Implements rustls's `ServerCertVerifier` for `$verifier`, a type with a
/// method `check_server_cert(&self, PresentedServerCert) -> Result<ServerCertVerified, rustls::Error>`
/// and a field `algorithms` (the provider's signature algorithms): every
/// server check in rexec (ctl's host keys, the broker's pin or CA) differs
/// only in what it makes of the certificate.
#[macro_export]
macro_rules! server_cert_verifier_by_provider {
    ($verifier:ty) => {
        impl ::rustls::client::danger::ServerCertVerifier for $verifier {
            fn verify_server_cert(
                &self,
                end_entity: &::rustls::pki_types::CertificateDer<'_>,
                intermediates: &[::rustls::pki_types::CertificateDer<'_>],
                server_name: &::rustls::pki_types::ServerName<'_>,
                ocsp_response: &[u8],
                now: ::rustls::pki_types::UnixTime,
            ) -> Result<::rustls::client::danger::ServerCertVerified, ::rustls::Error> {
                self.check_server_cert($crate::tls::PresentedServerCert {
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                })
            }

            $crate::signature_checks_by_provider!();
        }
    };
}

#[derive(Debug)]
struct AuthorizedClientVerifier {
    authorizer: Arc<dyn ClientAuthorizer>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AuthorizedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.authorizer.is_authorized(&fingerprint) {
            Ok(ClientCertVerified::assertion())
        } else {
            // Sent to the client as an access_denied alert.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    signature_checks_by_provider!();
}

/// How `ctl` treats the agent's fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// The host is known: only this fingerprint is accepted.
    Expect(Fingerprint),
    /// The host is unknown: accept whatever it presents (the caller records it).
    TrustOnFirstUse,
    /// The host is unknown: refuse it.
    RefuseUnknown,
}

/// What the host key check saw, for the caller to act on and report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyOutcome {
    /// No certificate was checked (the connection failed earlier).
    NotChecked,
    /// The known fingerprint was presented.
    Known(Fingerprint),
    /// An unknown host was trusted on first use; the caller should record it.
    FirstUse(Fingerprint),
    /// An unknown host was refused by policy.
    RefusedUnknown(Fingerprint),
    /// A known host presented a different key; refused.
    Changed {
        /// The fingerprint on record.
        known: Fingerprint,
        /// The fingerprint the peer presented.
        presented: Fingerprint,
    },
}

/// The client's server-certificate check: compares the agent's fingerprint
/// with a [`HostKeyPolicy`] and keeps the outcome for the caller.
#[derive(Debug)]
pub struct HostKeyVerifier {
    policy: HostKeyPolicy,
    outcome: Mutex<HostKeyOutcome>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl HostKeyVerifier {
    /// A verifier applying `policy`.
    pub fn new(policy: HostKeyPolicy) -> Self {
        HostKeyVerifier {
            policy,
            outcome: Mutex::new(HostKeyOutcome::NotChecked),
            algorithms: provider().signature_verification_algorithms,
        }
    }

    /// What the check saw during the handshake.
    pub fn outcome(&self) -> HostKeyOutcome {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a host key was refused; carried inside the rustls error.
#[derive(Debug, thiserror::Error)]
enum HostKeyRefused {
    #[error("host key changed: known {known}, presented {presented}")]
    Changed {
        known: Fingerprint,
        presented: Fingerprint,
    },
    #[error("host is not in known hosts (fingerprint {0}) and unknown hosts are refused")]
    Unknown(Fingerprint),
}

impl HostKeyVerifier {
    fn check_server_cert(
        &self,
        cert: PresentedServerCert<'_>,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of_certificate(cert.end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let (outcome, refusal) = match self.policy {
            HostKeyPolicy::Expect(known) if known == presented => {
                (HostKeyOutcome::Known(known), None)
            }
            HostKeyPolicy::Expect(known) => (
                HostKeyOutcome::Changed { known, presented },
                Some(HostKeyRefused::Changed { known, presented }),
            ),
            HostKeyPolicy::TrustOnFirstUse => (HostKeyOutcome::FirstUse(presented), None),
            HostKeyPolicy::RefuseUnknown => (
                HostKeyOutcome::RefusedUnknown(presented),
                Some(HostKeyRefused::Unknown(presented)),
            ),
        };
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = outcome;
        match refusal {
            None => Ok(ServerCertVerified::assertion()),
            Some(refusal) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(refusal)),
            ))),
        }
    }
}

crate::server_cert_verifier_by_provider!(HostKeyVerifier);

/// The client's TLS configuration: checks the agent with `verifier` and,
/// when `identity` is given, presents it. (Without an identity every agent
/// refuses the connection; that form exists for tests and probes.)
///
/// # Errors
/// When the identity's key is unusable.
pub fn client_config(
    identity: Option<&Identity>,
    verifier: Arc<HostKeyVerifier>,
) -> Result<ClientConfig, TlsError> {
    let credentials = identity.map(ClientCredentials::new);
    credentials_config(credentials.as_ref(), verifier)
}

/// A client's certificate and signing key, made ready once for all the
/// connections of a run.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    key: Arc<rustls::sign::CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl ClientCredentials {
    /// `identity`'s certificate and key (checked against each other when
    /// the identity was loaded).
    pub fn new(identity: &Identity) -> ClientCredentials {
        let key = rustls::sign::CertifiedKey::new(
            vec![identity.certificate.clone()],
            identity.signing_key.clone(),
        );
        ClientCredentials {
            key: Arc::new(key),
            provider: provider(),
        }
    }

    /// A client configuration presenting these credentials and checking
    /// the agent with `verifier`: [`client_config`] without loading the
    /// key again.
    ///
    /// # Errors
    /// When rustls refuses the protocol version (it never does for ours).
    pub fn config(&self, verifier: Arc<HostKeyVerifier>) -> Result<ClientConfig, TlsError> {
        credentials_config(Some(self), verifier)
    }
}

fn credentials_config(
    credentials: Option<&ClientCredentials>,
    verifier: Arc<HostKeyVerifier>,
) -> Result<ClientConfig, TlsError> {
    let provider = credentials.map_or_else(provider, |c| c.provider.clone());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(match credentials {
        Some(credentials) => builder.with_client_cert_resolver(Arc::new(
            rustls::sign::SingleCertAndKey::from(credentials.key.clone()),
        )),
        None => builder.with_no_client_auth(),
    })
}

/// A client configuration for tests of the peer's signature check: it
/// presents the certificate of `certificate_of` but signs with the private
/// key of `key_of`, as an impostor holding a copied certificate would.
/// rustls refuses to build such a pair by the usual route, so the impostor
/// hands it over through a resolver of its own.
///
/// # Errors
/// When `key_of`'s key is unusable.
#[cfg(any(test, feature = "test-support"))]
pub fn impostor_client_config(
    certificate_of: &Identity,
    key_of: &Identity,
    verifier: Arc<HostKeyVerifier>,
) -> Result<ClientConfig, TlsError> {
    #[derive(Debug)]
    struct Impostor(Arc<rustls::sign::CertifiedKey>);
    impl rustls::client::ResolvesClientCert for Impostor {
        fn resolve(
            &self,
            _: &[&[u8]],
            _: &[rustls::SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_of.private_key)?;
    let certified =
        rustls::sign::CertifiedKey::new(vec![certificate_of.certificate.clone()], signing_key);
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(Impostor(Arc::new(certified)))))
}

/// The name to put in the TLS ClientHello for `host`. The agent ignores it
/// (trust is by fingerprint), so a host string that is not a valid DNS name
/// or address is sent as no name at all rather than failing the connection.
pub fn server_name(host: &str) -> ServerName<'static> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityPaths;
    use rustls::crypto::ring::cipher_suite;
    use rustls::{ClientConnection, ServerConnection};

    #[derive(Debug)]
    struct Everyone;
    impl ClientAuthorizer for Everyone {
        fn is_authorized(&self, _: &Fingerprint) -> bool {
            true
        }
    }

    fn identities() -> (tempfile::TempDir, Identity, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let agent = Identity::create(&IdentityPaths::in_dir(dir.path(), "agent")).unwrap();
        let client = Identity::create(&IdentityPaths::in_dir(dir.path(), "client")).unwrap();
        (dir, agent, client)
    }

    /// Runs a handshake in memory; returns the suite both sides agreed on.
    fn handshake(client: ClientConfig, server: ServerConfig) -> rustls::SupportedCipherSuite {
        let mut client = ClientConnection::new(Arc::new(client), server_name("127.0.0.1")).unwrap();
        let mut server = ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            wire.clear();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        let agreed = client.negotiated_cipher_suite().unwrap();
        assert_eq!(Some(agreed), server.negotiated_cipher_suite());
        agreed
    }

    #[test]
    fn ctl_and_agent_agree_on_aes_128_gcm() {
        let (_dir, agent, client) = identities();
        let verifier = Arc::new(HostKeyVerifier::new(HostKeyPolicy::TrustOnFirstUse));
        let agreed = handshake(
            client_config(Some(&client), verifier).unwrap(),
            server_config(&agent, Arc::new(Everyone)).unwrap(),
        );
        assert_eq!(
            agreed.suite(),
            cipher_suite::TLS13_AES_128_GCM_SHA256.suite()
        );
    }

    #[test]
    fn a_peer_that_offers_only_aes_256_gcm_still_connects() {
        let (_dir, agent, client) = identities();
        let verifier = Arc::new(HostKeyVerifier::new(HostKeyPolicy::TrustOnFirstUse));
        let mut only_256 = rustls::crypto::ring::default_provider();
        only_256.cipher_suites = vec![cipher_suite::TLS13_AES_256_GCM_SHA384];
        let old_client = ClientConfig::builder_with_provider(Arc::new(only_256))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                vec![client.certificate.clone()],
                client.private_key.clone_key(),
            )
            .unwrap();
        let agreed = handshake(
            old_client,
            server_config(&agent, Arc::new(Everyone)).unwrap(),
        );
        assert_eq!(
            agreed.suite(),
            cipher_suite::TLS13_AES_256_GCM_SHA384.suite()
        );
    }
}
