//! What TLS 1.3 session resumption would save a `ctl exec`: full handshakes
//! against resumed ones with this project's configurations (Ed25519 on both
//! sides, client certificates, X25519), in memory, one thread, alternating.
//! Each side's own work is timed apart, as the two processes pay it.
//!
//!   cargo run --release -p rexec-protocol --example tls_resume [ROUNDS]
//!
//! The resumed case adds to the agent's configuration a ticketer and one
//! ticket per connection, and to ctl's an in-memory ticket store; the
//! ticket arrives after the handshake, so reading it is counted too.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rexec_protocol::tls::{
    ClientAuthorizer, ClientCredentials, HostKeyPolicy, HostKeyVerifier, client_config,
    server_config, server_name,
};
use rexec_protocol::{Fingerprint, Identity, IdentityPaths};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

#[derive(Debug)]
struct Everyone;
impl ClientAuthorizer for Everyone {
    fn is_authorized(&self, _: &Fingerprint) -> bool {
        true
    }
}

/// One side's turn: takes in what the peer sent, sends `first` bytes of
/// application data once its handshake is done (once), and leaves its
/// records in `wire`; returns the time it took.
fn turn(
    side: &mut Connection,
    mut incoming: &[u8],
    first: usize,
    sent: &mut bool,
    wire: &mut Vec<u8>,
) -> Duration {
    let t = Instant::now();
    while !incoming.is_empty() {
        side.read_tls(&mut incoming).unwrap();
        side.process_new_packets().unwrap();
    }
    if !side.is_handshaking() && !*sent {
        side.writer().write_all(&vec![0u8; first]).unwrap();
        *sent = true;
    }
    wire.clear();
    while side.wants_write() {
        side.write_tls(wire).unwrap();
    }
    t.elapsed()
}

/// One handshake and the first application bytes each way (hello and
/// request from ctl, Started from the agent, so that the ticket and both
/// sides' first records are processed as they would be); returns the time
/// spent in the client and in the server, and whether it resumed.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> (Duration, Duration, bool) {
    let t = Instant::now();
    let mut c =
        Connection::from(ClientConnection::new(client.clone(), server_name("127.0.0.1")).unwrap());
    let mut tc = t.elapsed();
    let t = Instant::now();
    let mut s = Connection::from(ServerConnection::new(server.clone()).unwrap());
    let mut ts = t.elapsed();
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let (mut sent_c, mut sent_s) = (false, false);
    for _ in 0..8 {
        tc += turn(&mut c, &to_client, 54, &mut sent_c, &mut to_server);
        ts += turn(&mut s, &to_server, 64, &mut sent_s, &mut to_client);
        if sent_c && sent_s && to_server.is_empty() && to_client.is_empty() {
            break;
        }
    }
    assert!(s.peer_certificates().is_some_and(|c| !c.is_empty()));
    let resumed = matches!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    (tc, ts, resumed)
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map_or(2000, |n| n.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let agent = Identity::create(&IdentityPaths::in_dir(dir.path(), "agent")).unwrap();
    let client = Identity::create(&IdentityPaths::in_dir(dir.path(), "client")).unwrap();
    let verifier = || {
        Arc::new(HostKeyVerifier::new(HostKeyPolicy::Expect(
            agent.fingerprint,
        )))
    };

    let full_server = Arc::new(server_config(&agent, Arc::new(Everyone)).unwrap());
    let mut resuming_server = server_config(&agent, Arc::new(Everyone)).unwrap();
    resuming_server.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    resuming_server.send_tls13_tickets = 1;
    let resuming_server = Arc::new(resuming_server);

    let mut full_client = client_config(Some(&client), verifier()).unwrap();
    full_client.resumption = rustls::client::Resumption::disabled();
    let full_client = Arc::new(full_client);
    let resuming_client = Arc::new(client_config(Some(&client), verifier()).unwrap());
    // A first handshake fills the ticket store.
    handshake(&resuming_client, &resuming_server);

    let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for i in 0..rounds * 2 {
        if i % 2 == 0 {
            let (c, s, resumed) = handshake(&full_client, &full_server);
            assert!(!resumed);
            times[0].push(c);
            times[1].push(s);
        } else {
            let (c, s, resumed) = handshake(&resuming_client, &resuming_server);
            assert!(resumed, "a ticket was kept, so the handshake resumes");
            times[2].push(c);
            times[3].push(s);
        }
    }
    let q = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
    };
    // ctl loads its key before every handshake; a resumed one would not
    // need it, if it were loaded only when the agent asks for it.
    let mut load = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(ClientCredentials::new(&client));
            t.elapsed()
        })
        .collect::<Vec<_>>();
    let (load_median, load_p10) = (q(&mut load, 0.5), q(&mut load, 0.1));
    let names = ["full, ctl", "full, agent", "resumed, ctl", "resumed, agent"];
    for (name, v) in names.iter().zip(times.iter_mut()) {
        println!(
            "{name:>15}: median {:6.1} µs  p10 {:6.1} µs",
            q(v, 0.5),
            q(v, 0.1)
        );
    }
    println!("ctl's key load: median {load_median:6.1} µs  p10 {load_p10:6.1} µs");
}
