#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod codec;
pub mod copy;
pub mod exec;
pub mod frame_writer;
pub mod identity;
pub mod job;
pub mod message;
pub mod plain;
pub mod tls;

pub use codec::{AgentCodec, ClientCodec, FrameError, MAX_CHUNK_LEN, MAX_FRAME_LEN};
pub use frame_writer::FrameWriter;
pub use identity::{Fingerprint, Identity, IdentityError, IdentityPaths, KeyMismatch};
pub use job::{DetachRequest, JobId, JobRequest, JobState, JobStream, JobSummary};
pub use message::*;

/// The TCP port agents listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7722;

/// The most characters of a peer's software string (its hello's
/// `software`) that a message or log line quotes.
pub const SOFTWARE_SHOWN: usize = 64;

#[cfg(test)]
mod handshake_tests {
    //! Full TLS handshakes over an in-memory pipe, checking who gets in.

    use std::collections::HashSet;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use crate::tls::HostKeyPolicy::{Expect, RefuseUnknown, TrustOnFirstUse};
    use crate::tls::*;
    use crate::{Fingerprint, Identity, IdentityPaths};

    #[derive(Debug)]
    struct Allow(HashSet<Fingerprint>);

    impl ClientAuthorizer for Allow {
        fn is_authorized(&self, fingerprint: &Fingerprint) -> bool {
            self.0.contains(fingerprint)
        }
    }

    struct Keys {
        _dir: tempfile::TempDir,
        agent: Identity,
        client: Identity,
        stranger: Identity,
    }

    fn keys() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str| Identity::create(&IdentityPaths::in_dir(dir.path(), name));
        Keys {
            agent: make("agent").unwrap(),
            client: make("client").unwrap(),
            stranger: make("stranger").unwrap(),
            _dir: dir,
        }
    }

    impl Keys {
        /// A handshake with the agent that authorizes only the client,
        /// `client` presenting its certificate (or none).
        async fn connect(
            &self,
            client: Option<&Identity>,
            policy: HostKeyPolicy,
        ) -> (Result<(), String>, HostKeyOutcome) {
            handshake(&self.agent, &[self.client.fingerprint], client, policy).await
        }

        /// [`Keys::connect`] as the authorized client, which must get in;
        /// returns what the host key check saw.
        async fn connect_as_client(&self, policy: HostKeyPolicy) -> HostKeyOutcome {
            let (result, outcome) = self.connect(Some(&self.client), policy).await;
            assert_eq!(result, Ok(()));
            outcome
        }
    }

    /// Runs one handshake plus a one-byte echo; returns the client's result
    /// and the host key outcome.
    async fn handshake(
        agent: &Identity,
        allowed: &[Fingerprint],
        client: Option<&Identity>,
        policy: HostKeyPolicy,
    ) -> (Result<(), String>, HostKeyOutcome) {
        let verifier = Arc::new(HostKeyVerifier::new(policy));
        let config = client_config(client, verifier.clone()).unwrap();
        handshake_with(agent, allowed, config, verifier).await
    }

    async fn handshake_with(
        agent: &Identity,
        allowed: &[Fingerprint],
        config: rustls::ClientConfig,
        verifier: Arc<HostKeyVerifier>,
    ) -> (Result<(), String>, HostKeyOutcome) {
        let authorizer = Arc::new(Allow(allowed.iter().copied().collect()));
        let acceptor = TlsAcceptor::from(Arc::new(server_config(agent, authorizer).unwrap()));
        let connector = TlsConnector::from(Arc::new(config));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut tls = acceptor
                .accept(server_io)
                .await
                .map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            tls.write_all(&byte).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())
        });
        let result = async {
            let mut tls = connector
                .connect(server_name("127.0.0.1"), client_io)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"x").await.map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            Ok(())
        }
        .await;
        let _ = server.await;
        (result, verifier.outcome())
    }

    #[tokio::test]
    async fn authorized_client_and_known_host_connect() {
        let k = keys();
        let outcome = k.connect_as_client(Expect(k.agent.fingerprint)).await;
        assert_eq!(outcome, HostKeyOutcome::Known(k.agent.fingerprint));
    }

    #[tokio::test]
    async fn first_use_reports_the_new_fingerprint() {
        let k = keys();
        let outcome = k.connect_as_client(TrustOnFirstUse).await;
        assert_eq!(outcome, HostKeyOutcome::FirstUse(k.agent.fingerprint));
    }

    #[tokio::test]
    async fn unauthorized_client_is_denied() {
        let k = keys();
        let (result, _) = k.connect(Some(&k.stranger), TrustOnFirstUse).await;
        let err = result.unwrap_err();
        assert!(err.contains("AccessDenied"), "{err}");
    }

    #[tokio::test]
    async fn client_without_certificate_is_refused() {
        let k = keys();
        let (result, _) = k.connect(None, TrustOnFirstUse).await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn authorized_certificate_with_wrong_key_fails_signature_check() {
        let k = keys();
        // The client's certificate, but the stranger's private key.
        let verifier = Arc::new(HostKeyVerifier::new(TrustOnFirstUse));
        let config = impostor_client_config(&k.client, &k.stranger, verifier.clone()).unwrap();
        let (result, _) = handshake_with(&k.agent, &[k.client.fingerprint], config, verifier).await;
        let err = result.unwrap_err();
        assert!(
            err.contains("DecryptError") || err.contains("alert"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn changed_host_key_is_refused_with_both_fingerprints() {
        let k = keys();
        let (result, outcome) = k
            .connect(Some(&k.client), Expect(k.stranger.fingerprint))
            .await;
        let err = result.unwrap_err();
        assert!(err.contains(&k.agent.fingerprint.to_string()), "{err}");
        assert_eq!(
            outcome,
            HostKeyOutcome::Changed {
                known: k.stranger.fingerprint,
                presented: k.agent.fingerprint
            }
        );
    }

    #[tokio::test]
    async fn unknown_host_refused_when_policy_says_so() {
        let k = keys();
        let (result, outcome) = k.connect(Some(&k.client), RefuseUnknown).await;
        assert!(result.is_err());
        assert_eq!(outcome, HostKeyOutcome::RefusedUnknown(k.agent.fingerprint));
    }
}
