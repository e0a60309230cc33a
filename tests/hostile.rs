//! Bad input from the network: each case gets its connection closed and a
//! log line, and the agent goes on serving well-behaved clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rexec_protocol::tls::{HostKeyPolicy, HostKeyVerifier, client_config, server_name};
use rexec_protocol::{Identity, IdentityPaths};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use crate::util::*;

/// Reads until the peer closes; returns how long that took, or None if it
/// stayed open past `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
            Err(_) => return Some(start.elapsed()),
        }
    }
}

fn still_serves(env: &Env, agent: &Agent) {
    let out = env.exec(agent, &["echo alive"]);
    assert_eq!(stdout_of(&out), "alive\n", "{}", stderr_of(&out));
}

#[test]
fn garbage_instead_of_tls_is_closed_and_logged() {
    let env = Env::new();
    let agent = env.agent();
    let mut stream = TcpStream::connect(agent.addr).unwrap();
    stream.write_all(&random_bytes(4096, 3)).unwrap();
    assert!(closed_within(&mut stream, DEADLINE).is_some());
    assert!(
        agent.wait_for_log("TLS handshake failed").is_some(),
        "{}",
        agent.log()
    );
    still_serves(&env, &agent);
}

#[test]
fn silent_client_is_closed_after_the_handshake_timeout() {
    let env = Env::new();
    let agent = env.agent_with(&["--handshake-timeout", "1s"]);
    let mut stream = TcpStream::connect(agent.addr).unwrap();
    let took = closed_within(&mut stream, DEADLINE).expect("closed");
    assert!(
        took >= Duration::from_millis(900),
        "not before the timeout: {took:?}"
    );
    assert!(agent.wait_for_log("did not finish the handshake").is_some());
    still_serves(&env, &agent);
}

/// A TLS session as an authorized client (or, with `identity: None`, with
/// no certificate at all), for writing raw bytes after the handshake.
async fn tls_session(
    env: &Env,
    agent: &Agent,
    identity: Option<&Identity>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let verifier = Arc::new(HostKeyVerifier::new(HostKeyPolicy::TrustOnFirstUse));
    let config = client_config(identity, verifier).unwrap();
    let tcp = tokio::net::TcpStream::connect(agent.addr).await?;
    let _ = env;
    TlsConnector::from(Arc::new(config))
        .connect(server_name("127.0.0.1"), tcp)
        .await
}

fn client_identity(env: &Env) -> Identity {
    Identity::load(&IdentityPaths::in_dir(&env.ctl_dir, "client")).unwrap()
}

/// Writes `bytes` after the handshake and reads until the agent closes.
async fn send_raw_and_wait_for_close(env: &Env, agent: &Agent, bytes: &[u8]) {
    let identity = client_identity(env);
    let mut tls = tls_session(env, agent, Some(&identity)).await.unwrap();
    tls.write_all(bytes).await.unwrap();
    tls.flush().await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "agent should close the connection");
}

#[tokio::test]
async fn length_prefix_of_4_gib_is_refused_before_allocation() {
    let env = Env::new();
    let agent = env.agent();
    send_raw_and_wait_for_close(&env, &agent, &[0xff, 0xff, 0xff, 0xff, 0, 0]).await;
    assert!(
        agent.wait_for_log("frame of 4294967295 bytes").is_some(),
        "{}",
        agent.log()
    );
    still_serves(&env, &agent);
}

#[tokio::test]
async fn garbage_frames_inside_tls_are_refused() {
    let env = Env::new();
    let agent = env.agent();
    // A well-formed frame whose body is no message.
    send_raw_and_wait_for_close(&env, &agent, &[0, 0, 0, 3, 0xee, 0xee, 0xee]).await;
    assert!(
        agent.wait_for_log("malformed message").is_some(),
        "{}",
        agent.log()
    );
    still_serves(&env, &agent);
}

#[tokio::test]
async fn tls_client_without_a_certificate_is_refused() {
    let env = Env::new();
    let agent = env.agent();
    let refused = match tls_session(&env, &agent, None).await {
        Err(_) => true,
        Ok(mut tls) => {
            // TLS 1.3: the refusal arrives as an alert on the first read.
            let _ = tls.write_all(b"x").await;
            let mut buf = [0u8; 16];
            !matches!(tls.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused);
    assert!(
        agent.wait_for_log("TLS handshake failed").is_some(),
        "{}",
        agent.log()
    );
    still_serves(&env, &agent);
}
