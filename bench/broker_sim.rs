//! Many simulated agents in one process, for broker-mode benchmarks
//! (bench/broker_scale.sh): thousands of agents on one small machine.
//!
//! Each simulated agent is what a real agent is to the broker and to ctl:
//! its own NATS connection, its own open subject (`sim00001`, …), the
//! discovery answer, the real TLS 1.3 handshake with a real identity and
//! the real protocol (hello, then the request). What it does not do is run
//! anything: an exec is answered as an agent answers a command that exits
//! at once (started, an optional small stdout, exit 0) without forking a
//! shell, whatever the command line says. All simulated agents share one
//! identity (one key pair), so ctl sees the same fingerprint under every
//! name.
//!
//! `drive` is a minimal client of the same protocol (no ctl), to check the
//! simulator and to measure the carrier's fan-out without ctl's own costs.

#[path = "peak_rss.rs"]
mod peak_rss;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use rexec_broker::{Announcement, BrokerOptions, BrokerStream, Carrier};
use rexec_protocol::tls::{ClientAuthorizer, HostKeyPolicy, HostKeyVerifier};
use rexec_protocol::{
    AgentCodec, AgentMessage, ClientCodec, ClientMessage, ErrorKind, ErrorReport, ExecRequest,
    ExitStatus, Fingerprint, Hello, Identity, IdentityPaths, PROTOCOL_VERSION,
};
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::codec::{FramedRead, FramedWrite};

const ABOUT: &str = "Simulated rexec agents on a broker, many in one process (benchmarks only)";

const LONG_ABOUT: &str = "\
Simulated rexec agents on a broker, many in one process (benchmarks only).

`serve` connects N simulated agents, each with its own NATS connection, named
PREFIX plus a zero-padded number (sim00001, sim00002, ...). Each does the real
TLS 1.3 handshake (one identity shared by all of them) with the clients it is
told to authorize, and speaks the real protocol. It runs nothing: every exec
is answered as by an agent whose command exited at once (started, the
--output bytes on stdout if any, exit 0), without forking a shell, whatever
the command line says. Pings are answered; copies are refused.

`drive` is a small client of the same protocol (not ctl), for checking the
simulator and measuring the carrier's fan-out without ctl.";

#[derive(Debug, Parser)]
#[command(name = "broker-sim", about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Fleet {
    /// Broker URL(s), comma-separated (nats://HOST:PORT or tls://HOST:PORT).
    #[arg(long)]
    broker: String,
    /// How many agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// The number of the first agent.
    #[arg(long, default_value_t = 1)]
    first: usize,
    /// Agent names: this prefix, then the number.
    #[arg(long, default_value = "sim")]
    name_prefix: String,
    /// Digits of the number, zero-padded.
    #[arg(long, default_value_t = 5)]
    width: usize,
    /// The broker subject prefix.
    #[arg(long, default_value = rexec_broker::DEFAULT_PREFIX)]
    subject_prefix: String,
}

impl Fleet {
    fn names(&self) -> Vec<String> {
        (self.first..self.first + self.agents)
            .map(|n| format!("{}{:0width$}", self.name_prefix, n, width = self.width))
            .collect()
    }

    fn options(&self, client_name: Option<String>) -> BrokerOptions {
        let mut options = BrokerOptions::new(BrokerOptions::split_urls(&self.broker));
        options.subject_prefix = self.subject_prefix.clone();
        options.client_name = client_name;
        options
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect simulated agents and serve until SIGINT or SIGTERM.
    Serve {
        #[command(flatten)]
        fleet: Fleet,
        /// Directory of the agents' one identity (agent.crt, agent.key);
        /// created when absent.
        #[arg(long)]
        identity_dir: PathBuf,
        /// A client fingerprint (SHA256:...) the agents accept (repeatable).
        #[arg(long, required = true)]
        authorize: Vec<Fingerprint>,
        /// Agents connecting at once; the next wave starts when one is up.
        #[arg(long, default_value_t = 250)]
        wave: usize,
        /// What every exec writes to stdout (nothing by default).
        #[arg(long)]
        output: Option<String>,
        /// Written (with the agent count) once every agent is listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Run one command on every agent of the fleet through the broker.
    Drive {
        #[command(flatten)]
        fleet: Fleet,
        /// Directory of the client identity (client.crt, client.key);
        /// created when absent.
        #[arg(long)]
        identity_dir: PathBuf,
        /// Sessions at once.
        #[arg(long, default_value_t = 1024)]
        concurrency: usize,
        /// The command line sent.
        #[arg(long, default_value = "true")]
        command: String,
    },
}

/// Lets the file-descriptor limit up to its hard limit: one NATS connection
/// is one descriptor, and 10,000 agents need more than the usual 1,024.
fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

fn identity(dir: &std::path::Path, name: &str) -> Result<Identity, String> {
    let paths = IdentityPaths::in_dir(dir, name);
    let loaded = if paths.exists() {
        Identity::load(&paths)
    } else {
        Identity::create(&paths)
    };
    loaded.map_err(|e| format!("identity in {}: {e}", dir.display()))
}

#[derive(Debug)]
struct Allow(Vec<Fingerprint>);

impl ClientAuthorizer for Allow {
    fn is_authorized(&self, fingerprint: &Fingerprint) -> bool {
        self.0.contains(fingerprint)
    }
}

/// What the fleet did, printed when it stops.
#[derive(Default)]
struct Counters {
    sessions: AtomicU64,
    execs: AtomicU64,
    pings: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

struct Served {
    acceptor: TlsAcceptor,
    output: Option<bytes::Bytes>,
    counters: Counters,
    pids: AtomicU64,
}

/// How long a session may take from its first byte to its request, as the
/// real agent's handshake timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The keepalive interval a real agent announces by default.
const KEEPALIVE: Duration = Duration::from_secs(15);

fn software() -> String {
    format!("rexec-agent {} (simulated)", env!("CARGO_PKG_VERSION"))
}

/// One session, answered as a real agent answers it, message for message:
/// hello and started in one write, the output, then exit and close.
async fn serve_session(stream: BrokerStream, served: Arc<Served>) {
    served.counters.sessions.fetch_add(1, Ordering::Relaxed);
    let session = async {
        let tls = served.acceptor.accept(stream).await.ok()?;
        let (read, write) = tokio::io::split(tls);
        let mut incoming = FramedRead::new(read, AgentCodec::new());
        let mut outgoing = FramedWrite::new(write, AgentCodec::new());
        let hello_ok = matches!(
            incoming.next().await,
            Some(Ok(ClientMessage::Hello(hello))) if hello.protocol == PROTOCOL_VERSION
        );
        let request = incoming.next().await;
        outgoing
            .feed(AgentMessage::Hello(Hello::new(software())))
            .await
            .ok()?;
        let last = match (hello_ok, request) {
            (false, _) => AgentMessage::Error(ErrorReport::new(
                ErrorKind::Protocol,
                "the simulated agent expected a hello of our protocol version",
            )),
            (true, Some(Ok(ClientMessage::Exec(_)))) => {
                let pid = served.pids.fetch_add(1, Ordering::Relaxed);
                let started = AgentMessage::Started {
                    pid: u32::try_from(pid).unwrap_or(u32::MAX),
                    keepalive: Some(KEEPALIVE),
                };
                outgoing.send(started).await.ok()?;
                if let Some(output) = &served.output {
                    outgoing
                        .feed(AgentMessage::Stdout(output.clone()))
                        .await
                        .ok()?;
                }
                served.counters.execs.fetch_add(1, Ordering::Relaxed);
                AgentMessage::Exit(ExitStatus::Code(0))
            }
            (true, Some(Ok(ClientMessage::Ping))) => {
                served.counters.pings.fetch_add(1, Ordering::Relaxed);
                AgentMessage::Pong
            }
            (true, _) => {
                served.counters.refused.fetch_add(1, Ordering::Relaxed);
                AgentMessage::Error(ErrorReport::new(
                    ErrorKind::BadRequest,
                    "a simulated agent answers exec and ping only",
                ))
            }
        };
        outgoing.feed(last).await.ok()?;
        outgoing.close().await.ok()
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, session).await {
        Ok(Some(())) => {}
        _ => {
            served.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One agent: connects, listens under `name`, answers discovery, and
/// serves each session in a task of its own. Returns once it is listening.
async fn start_agent(
    fleet: &Fleet,
    name: String,
    fingerprint: String,
    served: Arc<Served>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let carrier = Carrier::connect(fleet.options(Some(name.clone())))
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let mut listener = carrier
        .listen(&name)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let responder = carrier
        .announce(Announcement {
            name: name.clone(),
            fingerprint,
            version: software(),
        })
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(tokio::spawn(async move {
        let _carrier = carrier;
        let _responder = responder;
        while let Some(stream) = listener.accept().await {
            tokio::spawn(serve_session(stream, served.clone()));
        }
    }))
}

async fn serve(
    fleet: Fleet,
    identity_dir: PathBuf,
    authorize: Vec<Fingerprint>,
    wave: usize,
    output: Option<String>,
    ready_file: Option<PathBuf>,
) -> Result<(), String> {
    let limit = raise_open_files_limit();
    if (limit as usize) < fleet.agents + 64 {
        return Err(format!(
            "{} agents need {} open files, the limit is {limit}",
            fleet.agents,
            fleet.agents + 64
        ));
    }
    let identity = identity(&identity_dir, "agent")?;
    let fingerprint = identity.fingerprint.to_string();
    println!("identity {fingerprint}");
    let config = rexec_protocol::tls::server_config(&identity, Arc::new(Allow(authorize)))
        .map_err(|e| e.to_string())?;
    let served = Arc::new(Served {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        output: output.map(bytes::Bytes::from),
        counters: Counters::default(),
        pids: AtomicU64::new(100_000),
    });

    let started = Instant::now();
    let names = fleet.names();
    let mut agents = Vec::with_capacity(names.len());
    for chunk in names.chunks(wave.max(1)) {
        let wave = chunk.iter().map(|name| {
            let fleet = &fleet;
            let served = served.clone();
            let fingerprint = fingerprint.clone();
            async move {
                // A wave is many connections at once: a refused or
                // timed-out one gets two more tries before the run fails.
                let mut last = String::new();
                for attempt in 0..3u64 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                    match start_agent(fleet, name.clone(), fingerprint.clone(), served.clone())
                        .await
                    {
                        Ok(task) => return Ok(task),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        });
        for result in futures_util::future::join_all(wave).await {
            agents.push(result?);
        }
    }
    let took = started.elapsed();
    println!(
        "ready: {} agents listening in {:.2} s (waves of {wave}); peak RSS {} MiB",
        agents.len(),
        took.as_secs_f64(),
        peak_rss::peak_rss_kib() / 1024
    );
    if let Some(path) = ready_file {
        std::fs::write(&path, format!("{}\n", agents.len()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    for agent in &agents {
        agent.abort();
    }
    let c = &served.counters;
    println!(
        "stopped: sessions {}, execs {}, pings {}, refused {}, failed {}; peak RSS {} MiB",
        c.sessions.load(Ordering::Relaxed),
        c.execs.load(Ordering::Relaxed),
        c.pings.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        peak_rss::peak_rss_kib() / 1024
    );
    Ok(())
}

/// One exec through the broker as ctl does it; the exit code, or why not.
async fn drive_one(
    carrier: &Carrier,
    connector: &TlsConnector,
    name: &str,
    command: &str,
) -> Result<i32, String> {
    let stream = carrier.dial(name).await.map_err(|e| e.to_string())?;
    let tls = connector
        .connect(rexec_protocol::tls::server_name(name), stream)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (read, write) = tokio::io::split(tls);
    let mut incoming = FramedRead::new(read, ClientCodec::new());
    let mut outgoing = FramedWrite::new(write, ClientCodec::new());
    outgoing
        .feed(ClientMessage::Hello(Hello::new("broker-sim drive")))
        .await
        .map_err(|e| e.to_string())?;
    outgoing
        .send(ClientMessage::Exec(ExecRequest {
            command: command.to_owned(),
            ..ExecRequest::default()
        }))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(message) = incoming.next().await {
        match message.map_err(|e| e.to_string())? {
            AgentMessage::Exit(ExitStatus::Code(code)) => {
                let _ = outgoing.close().await;
                return Ok(code);
            }
            AgentMessage::Exit(other) => return Err(format!("ended: {other:?}")),
            AgentMessage::Error(report) => return Err(report.message),
            _ => {}
        }
    }
    Err("closed before the exit".to_owned())
}

async fn drive(
    fleet: Fleet,
    identity_dir: PathBuf,
    concurrency: usize,
    command: String,
) -> Result<(), String> {
    raise_open_files_limit();
    let identity = identity(&identity_dir, "client")?;
    println!("identity {}", identity.fingerprint);
    let verifier = Arc::new(HostKeyVerifier::new(HostKeyPolicy::TrustOnFirstUse));
    let config =
        rexec_protocol::tls::client_config(Some(&identity), verifier).map_err(|e| e.to_string())?;
    let connector = TlsConnector::from(Arc::new(config));
    let started = Instant::now();
    let carrier = Carrier::connect(fleet.options(Some("broker-sim drive".to_owned())))
        .await
        .map_err(|e| e.to_string())?;
    let connected = started.elapsed();
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut jobs = tokio::task::JoinSet::new();
    for name in fleet.names() {
        let carrier = carrier.clone();
        let connector = connector.clone();
        let limit = limit.clone();
        let command = command.clone();
        jobs.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let result = drive_one(&carrier, &connector, &name, &command).await;
            (name, result)
        });
    }
    let (mut ok, mut nonzero, mut failed) = (0u64, 0u64, 0u64);
    while let Some(joined) = jobs.join_next().await {
        match joined {
            Ok((_, Ok(0))) => ok += 1,
            Ok((_, Ok(_))) => nonzero += 1,
            Ok((name, Err(e))) => {
                if failed < 5 {
                    eprintln!("{name}: {e}");
                }
                failed += 1;
            }
            Err(_) => failed += 1,
        }
    }
    println!(
        "drive: {} agents in {:.3} s (broker connection {:.3} s): exit 0 {ok}, other exits {nonzero}, failed {failed}; peak RSS {} MiB",
        fleet.agents,
        started.elapsed().as_secs_f64(),
        connected.as_secs_f64(),
        peak_rss::peak_rss_kib() / 1024
    );
    if failed > 0 || nonzero > 0 {
        return Err("not every agent answered exit 0".to_owned());
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("broker-sim: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                fleet,
                identity_dir,
                authorize,
                wave,
                output,
                ready_file,
            } => serve(fleet, identity_dir, authorize, wave, output, ready_file).await,
            Command::Drive {
                fleet,
                identity_dir,
                concurrency,
                command,
            } => drive(fleet, identity_dir, concurrency, command).await,
        }
    });
    // The agents' tasks hold connections; leaving without waiting for them
    // is what a stop should do.
    runtime.shutdown_background();
    if let Err(e) = result {
        eprintln!("broker-sim: {e}");
        std::process::exit(1);
    }
}
