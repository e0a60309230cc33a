//! The project's own mutual TLS 1.3 session over the carrier: the broker
//! relays ciphertext only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rexec_protocol::identity::{Fingerprint, Identity, IdentityPaths};
use rexec_protocol::tls::{
    ClientAuthorizer, HostKeyOutcome, HostKeyPolicy, HostKeyVerifier, client_config, server_config,
    server_name,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::util::{Nats, agent, rig, wait_until_async};

#[derive(Debug)]
struct Only(Fingerprint);

impl ClientAuthorizer for Only {
    fn is_authorized(&self, fingerprint: &Fingerprint) -> bool {
        *fingerprint == self.0
    }
}

/// Fresh identities called `names`, in a temp dir kept as long as they are.
fn identities<const N: usize>(names: [&str; N]) -> (tempfile::TempDir, [Identity; N]) {
    let keys = tempfile::tempdir().unwrap();
    let made =
        names.map(|name| Identity::create(&IdentityPaths::in_dir(keys.path(), name)).unwrap());
    (keys, made)
}

const SECRET: &[u8] = b"plaintext that only ctl and the agent may ever see";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_session_runs_end_to_end_and_the_broker_sees_only_ciphertext() {
    let Some(server) = Nats::start() else {
        return;
    };
    let (_keys, [agent_id, ctl_id]) = identities(["agent", "ctl"]);

    // Everything anyone on the broker can see.
    let snoop = async_nats::connect(server.url.as_str()).await.unwrap();
    let mut everything = snoop.subscribe(">").await.unwrap();
    snoop.flush().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(message) = everything.next().await {
            sink.lock().unwrap().extend_from_slice(&message.payload);
        }
    });

    let (_agent, mut incoming) = agent(&server, "labpc07").await;
    let ctl = server.carrier().await;
    let acceptor = TlsAcceptor::from(Arc::new(
        server_config(&agent_id, Arc::new(Only(ctl_id.fingerprint))).unwrap(),
    ));
    let verifier = Arc::new(HostKeyVerifier::new(HostKeyPolicy::Expect(
        agent_id.fingerprint,
    )));
    let connector = TlsConnector::from(Arc::new(
        client_config(Some(&ctl_id), verifier.clone()).unwrap(),
    ));

    let agent_side = tokio::spawn(async move {
        let stream = incoming.recv().await.expect("accepted");
        let mut tls = acceptor.accept(stream).await.expect("agent handshake");
        let mut request = Vec::new();
        tls.read_to_end(&mut request).await.expect("read request");
        let mut answer = request.clone();
        answer.reverse();
        tls.write_all(&answer).await.unwrap();
        tls.shutdown().await.unwrap();
        request
    });
    let stream = ctl.dial("labpc07").await.expect("dial");
    let mut tls = connector
        .connect(server_name("labpc07"), stream)
        .await
        .expect("ctl handshake");
    assert_eq!(
        verifier.outcome(),
        HostKeyOutcome::Known(agent_id.fingerprint)
    );
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let request: Vec<u8> = SECRET.iter().copied().cycle().take(1 << 20).collect();
    tls.write_all(&request).await.unwrap();
    tls.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.expect("read answer");
    let at_agent = agent_side.await.unwrap();
    assert!(at_agent == request, "the agent read exactly what ctl wrote");
    let mut expected = request.clone();
    expected.reverse();
    assert!(answer == expected, "ctl read exactly what the agent wrote");

    let relayed = 2 * request.len();
    assert!(
        wait_until_async(Duration::from_secs(10), || seen.lock().unwrap().len()
            >= relayed)
        .await,
        "the snoop saw the session's traffic"
    );
    let seen = seen.lock().unwrap();
    let mut reversed = SECRET.to_vec();
    reversed.reverse();
    for needle in [SECRET, &reversed[..], &SECRET[..16]] {
        assert!(
            !seen.windows(needle.len()).any(|w| w == needle),
            "plaintext crossed the broker"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_under_a_known_name_fails_the_pinned_host_key() {
    let Some(rig) = rig().await else { return };
    let (_keys, [real, impostor, ctl_id]) = identities(["real", "impostor", "ctl"]);

    let mut incoming = rig.incoming;
    let acceptor = TlsAcceptor::from(Arc::new(
        server_config(&impostor, Arc::new(Only(ctl_id.fingerprint))).unwrap(),
    ));
    tokio::spawn(async move {
        let stream = incoming.recv().await.expect("accepted");
        let _ = acceptor.accept(stream).await;
    });
    let verifier = Arc::new(HostKeyVerifier::new(HostKeyPolicy::Expect(
        real.fingerprint,
    )));
    let connector = TlsConnector::from(Arc::new(
        client_config(Some(&ctl_id), verifier.clone()).unwrap(),
    ));
    let stream = rig.ctl.dial("labpc07").await.expect("dial");
    assert!(
        connector
            .connect(server_name("labpc07"), stream)
            .await
            .is_err()
    );
    assert!(matches!(verifier.outcome(), HostKeyOutcome::Changed { .. }));
}
