//! Test doubles that speak the wire protocol: a fake agent with the env's
//! identity for playing one that misbehaves.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;

use super::Env;

/// Frames from a client, as a fake agent reads them.
pub type FakeIncoming = tokio_util::codec::FramedRead<
    tokio::io::ReadHalf<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    rexec_protocol::AgentCodec,
>;
/// Frames to a client, as a fake agent writes them.
pub type FakeOutgoing = tokio_util::codec::FramedWrite<
    tokio::io::WriteHalf<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    rexec_protocol::AgentCodec,
>;

/// A TLS server with the env's agent identity that takes any client, for
/// playing an agent that misbehaves (another protocol version, hostile
/// names). Already in ctl's known hosts.
pub struct FakeAgent {
    pub addr: SocketAddr,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// Runs `ctl ARGS` to its end on a blocking thread, so that a fake agent
/// served on the test's runtime can answer it meanwhile.
pub async fn ctl_output_off_the_runtime(env: &Env, args: &[&str]) -> Output {
    let mut ctl = env.ctl();
    ctl.args(args);
    tokio::task::spawn_blocking(move || ctl.output())
        .await
        .expect("ctl thread")
        .expect("run ctl")
}

impl FakeAgent {
    pub async fn bind(env: &Env) -> FakeAgent {
        #[derive(Debug)]
        struct Anyone;
        impl rexec_protocol::tls::ClientAuthorizer for Anyone {
            fn is_authorized(&self, _: &rexec_protocol::Fingerprint) -> bool {
                true
            }
        }
        let identity = rexec_protocol::Identity::load(&rexec_protocol::IdentityPaths::in_dir(
            &env.agent_dir,
            "agent",
        ))
        .expect("agent identity");
        let config = rexec_protocol::tls::server_config(&identity, Arc::new(Anyone)).expect("tls");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        env.trust_at(&addr.to_string());
        FakeAgent {
            addr,
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }

    /// Accepts one client and completes TLS.
    pub async fn accept(self) -> (FakeIncoming, FakeOutgoing) {
        let (tcp, _) = self.listener.accept().await.expect("accept");
        let tls = self.acceptor.accept(tcp).await.expect("tls handshake");
        let (read, write) = tokio::io::split(tls);
        (
            tokio_util::codec::FramedRead::new(read, rexec_protocol::AgentCodec::new()),
            tokio_util::codec::FramedWrite::new(write, rexec_protocol::AgentCodec::new()),
        )
    }
}
