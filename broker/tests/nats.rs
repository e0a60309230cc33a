//! A real `nats-server` for tests, on a loopback port it picks itself, with
//! a config file the test writes (plain, or the repository's example with
//! TLS and per-agent users): its log, its monitoring endpoint (`/varz`), a
//! stop and a restart on the same ports, and the test CA it trusts.
//!
//! One rig for both test crates: the carrier's tests include this file from
//! `broker/tests/util.rs` and the end-to-end tests from
//! `tests/util/nats.rs`, each by `#[path]`, so it uses only what both have
//! (std, tempfile, serde_json, rcgen, ring) and the `wait_until` of the
//! module it is included in. Whether nats-server is installed, and what a
//! missing one means, is the including crate's business.

// Each crate uses part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_until;

/// The example configuration shipped to users.
pub const EXAMPLE_CONFIG: &str = include_str!("../nats-server.conf.example");

/// How long the server may take to start, and a monitoring request to be
/// answered.
const WAIT: Duration = Duration::from_secs(20);

/// The loopback listening lines every config here starts with.
const LOOPBACK: &str = "host: 127.0.0.1\nport: -1\nhttp: \"127.0.0.1:-1\"\n";

/// A running `nats-server`, stopped and reaped when dropped.
pub struct Nats {
    child: Option<Child>,
    /// Holds the config, the log, the ports file and any TLS material.
    pub dir: tempfile::TempDir,
    /// The config without its listening ports (`port: -1` for the client
    /// port, `http: "127.0.0.1:-1"` for monitoring).
    config: String,
    /// `nats://127.0.0.1:PORT`, or `tls://…` when the config has TLS.
    pub url: String,
    pub port: u16,
    /// The monitoring endpoint, `127.0.0.1:PORT`.
    pub monitor: String,
    scheme: &'static str,
}

impl Nats {
    /// A plain server open to anyone on loopback, with `extra` config
    /// lines.
    pub fn plain(extra: &str) -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        Nats::launch_new(format!("{LOOPBACK}{extra}\n"), dir, "nats")
    }

    /// The repository's example config, made to run here: loopback ports,
    /// a certificate for 127.0.0.1 signed by a CA the test makes (see
    /// [`BrokerCa`]). Every line replaced must be in the example as
    /// shipped, so the test notices when the example changes shape.
    pub fn example() -> (Nats, BrokerCa) {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = BrokerCa::make(dir.path(), "broker");
        let mut config = EXAMPLE_CONFIG.to_owned();
        for (from, to) in [
            ("listen: 0.0.0.0:4222\n", LOOPBACK.to_owned()),
            ("/etc/nats/rexec/broker.crt", path_text(&ca.cert)),
            ("/etc/nats/rexec/broker.key", path_text(&ca.key)),
        ] {
            assert!(config.contains(from), "the example config has {from:?}");
            config = config.replace(from, &to);
        }
        (Nats::launch_new(config, dir, "tls"), ca)
    }

    fn launch_new(config: String, dir: tempfile::TempDir, scheme: &'static str) -> Nats {
        let mut nats = Nats {
            child: None,
            dir,
            config,
            url: String::new(),
            port: 0,
            monitor: String::new(),
            scheme,
        };
        let config = nats.config.clone();
        assert!(
            nats.launch(&config),
            "nats-server did not start:\n{}",
            nats.log()
        );
        nats
    }

    /// Starts nats-server with `config` and waits for its ports file;
    /// false when it exits first (a port not yet free after a restart).
    fn launch(&mut self, config: &str) -> bool {
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let path = self.dir.path().join("nats-server.conf");
        std::fs::write(
            &path,
            format!("{config}\nports_file_dir: \"{}\"\n", ports_dir.display()),
        )
        .expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats-server.log"))
            .expect("log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let mut ports = None;
        wait_until(WAIT, || {
            ports = read_ports(&ports_dir);
            ports.is_some() || self.exited()
        });
        match ports {
            Some((client, monitor)) if !self.exited() => {
                self.port = port_of(&client);
                self.url = format!("{}://127.0.0.1:{}", self.scheme, self.port);
                self.monitor = monitor.trim_start_matches("http://").to_owned();
                true
            }
            _ => {
                self.stop();
                false
            }
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|child| !matches!(child.try_wait(), Ok(None)))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("nats-server runs").id()
    }

    /// Stops the server at once (SIGKILL: what a crash or a pulled cable
    /// looks like to its clients) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again with the same config on the same client and
    /// monitoring ports.
    pub fn restart(&mut self) {
        self.stop();
        let fixed = self.config_on_our_ports();
        let port = self.port;
        // The ports may be briefly unbindable after the kill; nats-server
        // then exits at once, and we try again, a bounded number of times.
        for _ in 0..50 {
            if self.launch(&fixed) {
                assert_eq!(self.port, port, "restarted on the same port");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nats-server did not start again:\n{}", self.log());
    }

    /// The config with the ports the server runs on in place of `-1`.
    fn config_on_our_ports(&self) -> String {
        let monitor_port = port_of(&self.monitor);
        self.config
            .replacen("port: -1", &format!("port: {}", self.port), 1)
            .replacen(
                "http: \"127.0.0.1:-1\"",
                &format!("http: \"127.0.0.1:{monitor_port}\""),
                1,
            )
    }

    /// The config, as a restart or a reload gives it to the server.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Starts the server again, on the same ports, with `config` (from
    /// [`Nats::config`]) instead of its own.
    pub fn restart_with(&mut self, config: String) {
        self.config = config;
        self.restart();
    }

    /// Gives the running server `config` instead of its own, as an admin's
    /// `systemctl reload nats-server` does (SIGHUP): its clients stay
    /// connected. Returns once the server says it reloaded.
    pub fn reload_with(&mut self, config: String) {
        self.config = config;
        let path = self.dir.path().join("nats-server.conf");
        let ports_dir = self.dir.path().join("ports");
        std::fs::write(
            &path,
            format!(
                "{}\nports_file_dir: \"{}\"\n",
                self.config_on_our_ports(),
                ports_dir.display()
            ),
        )
        .expect("write config");
        let reloads = |log: &str| log.matches("Reloaded server configuration").count();
        let before = reloads(&self.log());
        let sent = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(sent.success(), "kill -HUP nats-server");
        assert!(
            wait_until(WAIT, || reloads(&self.log()) > before),
            "nats-server did not reload:\n{}",
            self.log()
        );
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }

    /// `GET /varz` from the monitoring endpoint, over plain HTTP on
    /// loopback.
    pub fn varz(&self) -> serde_json::Value {
        self.monitoring("/varz")
    }

    /// `GET PATH` (e.g. `/connz`) from the monitoring endpoint, as JSON.
    pub fn monitoring(&self, path: &str) -> serde_json::Value {
        let mut tcp = TcpStream::connect(&self.monitor).expect("monitoring endpoint");
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        write!(tcp, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.monitor).expect("request");
        let mut response = String::new();
        tcp.read_to_string(&mut response).expect("response");
        let body = response.split("\r\n\r\n").nth(1).expect("HTTP body");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
    }

    /// The number of client connections the server holds now.
    pub fn connections(&self) -> u64 {
        self.varz()["connections"].as_u64().expect("connections")
    }

    /// How many slow consumers the server has cut off since it started.
    pub fn slow_consumers(&self) -> u64 {
        self.varz()["slow_consumers"]
            .as_u64()
            .expect("slow_consumers")
    }

    /// A file in the server's temp dir.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {address:?}"))
}

fn read_ports(dir: &Path) -> Option<(String, String)> {
    // The server writes one file; a half-written one fails to parse and is
    // read again on the next poll.
    let entry = std::fs::read_dir(dir).ok()?.next()?.ok()?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let client = value["nats"][0].as_str()?.to_owned();
    let monitor = value["monitoring"][0].as_str()?.to_owned();
    Some((client, monitor))
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

/// A CA made for the test and a broker certificate for 127.0.0.1 and
/// localhost signed by it.
pub struct BrokerCa {
    /// The CA certificate (PEM): what agents and ctl are told to trust.
    pub ca: PathBuf,
    /// The broker's certificate and key (PEM), for nats-server.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The broker certificate's pin, `sha256:HEX` of its DER, as
    /// `openssl x509 -noout -fingerprint -sha256` shows it.
    pub fingerprint: String,
}

impl BrokerCa {
    /// Writes `NAME-ca.crt`, `NAME.crt` and `NAME.key` (0600) into `dir`.
    pub fn make(dir: &Path, name: &str) -> BrokerCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("broker key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("broker params");
        let cert = params.signed_by(&key, &issuer).expect("broker certificate");
        let made = BrokerCa {
            ca: dir.join(format!("{name}-ca.crt")),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            fingerprint: format!(
                "sha256:{}",
                ring::digest::digest(&ring::digest::SHA256, cert.der())
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
        };
        std::fs::write(&made.ca, ca_cert.pem()).expect("write CA");
        std::fs::write(&made.cert, cert.pem()).expect("write certificate");
        secret_file(&made.key, &key.serialize_pem());
        made
    }
}

/// Writes a secret file with mode 0600 (the agent, ctl and the carrier
/// refuse secrets others can read).
pub fn secret_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write secret");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}
