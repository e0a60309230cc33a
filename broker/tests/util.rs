//! Helpers for the carrier's tests: a real `nats-server` per test on a
//! loopback port it picks itself (the rig in `nats.rs`), carriers on it,
//! sessions and their bytes, waiting on conditions with a deadline.

use std::time::{Duration, Instant};

use rexec_broker::{BrokerOptions, BrokerStream, Carrier, StreamTimers, Tuning};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Polls `condition` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// [`wait_until`] from an async test. The tests run on the multi-threaded
/// runtime, so the tasks the condition waits on go on elsewhere meanwhile.
pub async fn wait_until_async(limit: Duration, condition: impl FnMut() -> bool) -> bool {
    tokio::task::block_in_place(|| wait_until(limit, condition))
}

// The nats-server rig, shared with the end-to-end tests by path.
#[path = "nats.rs"]
mod nats;

pub use nats::*;

impl Nats {
    /// A plain server on loopback with monitoring; `None` (the test is
    /// skipped, said on stderr) when nats-server is not installed.
    pub fn start() -> Option<Nats> {
        Nats::start_with("")
    }

    /// A server with `extra` appended to the loopback base config.
    pub fn start_with(extra: &str) -> Option<Nats> {
        installed().then(|| Nats::plain(extra))
    }

    /// The repository's example config, made to run here (see
    /// [`Nats::example`]).
    pub fn start_example() -> Option<(Nats, BrokerCa)> {
        installed().then(Nats::example)
    }

    /// Options for a carrier on this server.
    pub fn options(&self) -> BrokerOptions {
        let mut options = BrokerOptions::new([self.url.clone()]);
        options.tuning = Tuning::default();
        options
    }

    /// Options whose streams give up a peer that says nothing, or never
    /// reads, within a second: heartbeats every 100 ms, abandoned after
    /// 800 ms.
    pub fn impatient_options(&self) -> BrokerOptions {
        let mut options = self.options();
        options.tuning.timers = StreamTimers {
            heartbeat: Duration::from_millis(100),
            abandon_after: Duration::from_millis(800),
            ..StreamTimers::default()
        };
        options
    }

    /// A carrier on this server with default options.
    pub async fn carrier(&self) -> Carrier {
        Carrier::connect(self.options())
            .await
            .expect("connect to nats-server")
    }
}

/// `len` random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let rng = ring::rand::SystemRandom::new();
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(1 << 20) {
        ring::rand::SecureRandom::fill(&rng, chunk).expect("random");
    }
    out
}

/// Asserts that `got` is `sent` byte for byte; a failure says `what` and
/// how much came rather than showing megabytes of both.
#[track_caller]
pub fn assert_bytes(got: &[u8], sent: &[u8], what: &str) {
    assert!(
        got == sent,
        "{what}: {} bytes came, not the {} sent",
        got.len(),
        sent.len()
    );
}

/// Whether nats-server is on the PATH. Without it the broker tests are
/// skipped with a line on stderr, as the end-to-end tests skip what the
/// machine lacks, except under `REXEC_TEST_REQUIRE_ALL=1` (CI), where a
/// skip is a failure.
fn installed() -> bool {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("nats-server").is_file())
    });
    if !found {
        let why = "nats-server is not installed (Debian package nats-server)";
        assert!(
            std::env::var("REXEC_TEST_REQUIRE_ALL").as_deref() != Ok("1"),
            "REXEC_TEST_REQUIRE_ALL=1 and {why}"
        );
        eprintln!("SKIPPED: {why}");
    }
    found
}

/// An agent carrier serving `name`, accepting sessions into a channel.
pub async fn agent(
    server: &Nats,
    name: &str,
) -> (Carrier, tokio::sync::mpsc::Receiver<BrokerStream>) {
    let carrier = server.carrier().await;
    let mut listener = carrier.listen(name).await.expect("listen");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(stream) = listener.accept().await {
            if tx.send(stream).await.is_err() {
                break;
            }
        }
    });
    (carrier, rx)
}

/// What most tests start from: a server, an agent carrier serving labpc07
/// whose sessions arrive on `incoming`, and a ctl carrier.
pub struct Rig {
    pub server: Nats,
    _agent: Carrier,
    pub incoming: tokio::sync::mpsc::Receiver<BrokerStream>,
    pub ctl: Carrier,
}

/// A [`Rig`]; `None` (the test is skipped) when nats-server is not
/// installed.
pub async fn rig() -> Option<Rig> {
    let server = Nats::start()?;
    let (_agent, incoming) = agent(&server, "labpc07").await;
    let ctl = server.carrier().await;
    Some(Rig {
        server,
        _agent,
        incoming,
        ctl,
    })
}

impl Rig {
    /// A new session from ctl to labpc07: ctl's end, then the agent's.
    pub async fn session(&mut self) -> (BrokerStream, BrokerStream) {
        let stream = self.ctl.dial("labpc07").await.expect("dial");
        let accepted = self.incoming.recv().await.expect("accepted");
        (stream, accepted)
    }
}

/// Writes `data` then shuts down, while reading everything the peer sends
/// until its EOF; returns what was read.
pub async fn exchange(stream: BrokerStream, data: Vec<u8>) -> Vec<u8> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async move {
        writer.write_all(&data).await.expect("write");
        writer.shutdown().await.expect("shutdown");
        writer
    };
    let read = async move {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.expect("read to EOF");
        (got, reader)
    };
    let (_writer, (got, _reader)) = tokio::join!(write, read);
    got
}

/// Dials `name` from `ctl`, takes the session from `accept` (a listener's
/// `accept()` or a channel's `recv()`, awaited once the dial is done) and
/// checks that "hi" and "ok" cross it exact, one each way.
pub async fn exchange_and_check(
    accept: impl Future<Output = Option<BrokerStream>>,
    ctl: &Carrier,
    name: &str,
) {
    let stream = ctl.dial(name).await.expect("dial");
    let accepted = accept.await.expect("accepted");
    let (a, c) = tokio::join!(
        exchange(accepted, b"ok".to_vec()),
        exchange(stream, b"hi".to_vec())
    );
    assert_eq!((a.as_slice(), c.as_slice()), (&b"hi"[..], &b"ok"[..]));
}
