//! Helpers for the carrier's tests: a real `nats-server` per test on a
//! loopback port it picks itself, its monitoring endpoint, waiting on
//! conditions with a deadline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rexec_broker::{BrokerOptions, BrokerStream, Carrier, Tuning};
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

/// A running `nats-server`, stopped (and reaped) on drop.
pub struct NatsServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    config: String,
    /// `nats://127.0.0.1:PORT` (or `tls://` when the config has TLS).
    pub url: String,
    pub port: u16,
    /// The monitoring endpoint, `127.0.0.1:PORT`.
    pub monitor: String,
}

impl NatsServer {
    /// A plain server on loopback with monitoring; `None` (the test is
    /// skipped, said on stderr) when nats-server is not installed.
    pub fn start() -> Option<NatsServer> {
        NatsServer::start_with("")
    }

    /// A server with `extra` appended to the loopback base config.
    pub fn start_with(extra: &str) -> Option<NatsServer> {
        let config = format!("host: 127.0.0.1\nport: -1\nhttp: \"127.0.0.1:-1\"\n{extra}\n");
        NatsServer::start_config(config, tempfile::tempdir().expect("temp dir"), "nats")
    }

    /// A server with exactly `config` (which must listen on a port of its
    /// choice and may use files in `dir`); URLs use `scheme`.
    pub fn start_config(
        config: String,
        dir: tempfile::TempDir,
        scheme: &str,
    ) -> Option<NatsServer> {
        if !installed() {
            return None;
        }
        let mut server = NatsServer {
            child: None,
            dir,
            config,
            url: String::new(),
            port: 0,
            monitor: String::new(),
        };
        server.launch(scheme);
        Some(server)
    }

    fn launch(&mut self, scheme: &str) {
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let config = format!(
            "{}\nports_file_dir: \"{}\"\n",
            self.config,
            ports_dir.display()
        );
        let path = self.dir.path().join("nats-server.conf");
        std::fs::write(&path, config).expect("write config");
        let log = std::fs::File::create(self.dir.path().join("nats-server.log")).expect("log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("nats-server is installed (apt-get install nats-server)");
        self.child = Some(child);
        let mut ports = None;
        let found = wait_until(Duration::from_secs(10), || {
            ports = read_ports(&ports_dir);
            ports.is_some()
        });
        assert!(found, "nats-server did not start: {}", self.log());
        let (client, monitor) = ports.expect("ports");
        let port: u16 = client
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("client port");
        self.port = port;
        self.url = format!("{scheme}://127.0.0.1:{port}");
        self.monitor = monitor.trim_start_matches("http://").to_owned();
    }

    /// Options for a carrier on this server.
    pub fn options(&self) -> BrokerOptions {
        let mut options = BrokerOptions::new([self.url.clone()]);
        options.tuning = Tuning::default();
        options
    }

    /// A carrier on this server with default options.
    pub async fn carrier(&self) -> Carrier {
        Carrier::connect(self.options())
            .await
            .expect("connect to nats-server")
    }

    /// Kills the server at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same client port.
    pub fn restart(&mut self, scheme: &str) {
        self.kill();
        let fixed = self
            .config
            .replace("port: -1", &format!("port: {}", self.port));
        let old = std::mem::replace(&mut self.config, fixed);
        self.launch(scheme);
        self.config = old;
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }

    /// `GET /varz` from the monitoring endpoint.
    pub fn varz(&self) -> serde_json::Value {
        let mut tcp = TcpStream::connect(&self.monitor).expect("monitoring endpoint");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(tcp, "GET /varz HTTP/1.0\r\nHost: {}\r\n\r\n", self.monitor).expect("request");
        let mut response = String::new();
        tcp.read_to_string(&mut response).expect("response");
        let body = response.split("\r\n\r\n").nth(1).expect("body");
        serde_json::from_str(body).expect("varz is JSON")
    }

    /// The path of a file in the server's temp dir.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_ports(dir: &Path) -> Option<(String, String)> {
    // The server writes one file; a half-written one fails to parse and is
    // read again on the next poll.
    let entry = std::fs::read_dir(dir).ok()?.next()?.ok()?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let client = value["nats"][0].as_str()?.to_owned();
    let monitor = value["monitoring"][0].as_str().unwrap_or("").to_owned();
    Some((client, monitor))
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

/// Writes a secret file with mode 0600.
pub fn secret_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write secret");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
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
    server: &NatsServer,
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
    pub server: NatsServer,
    _agent: Carrier,
    pub incoming: tokio::sync::mpsc::Receiver<BrokerStream>,
    pub ctl: Carrier,
}

/// A [`Rig`]; `None` (the test is skipped) when nats-server is not
/// installed.
pub async fn rig() -> Option<Rig> {
    let server = NatsServer::start()?;
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
