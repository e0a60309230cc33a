//! `rexec-agent`: create the agent's identity, manage who may connect, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rexec_agent::authorized::{self, AuthorizedClient, AuthorizedClients};
use rexec_agent::config::{self, AgentSettings};
use rexec_agent::server::{self, AgentState, Shutdown};
use rexec_protocol::{Fingerprint, Identity};
use tokio::signal::unix::{SignalKind, signal};

/// The rexec agent: runs shell commands for authorized ctl clients.
#[derive(Debug, Parser)]
#[command(name = "rexec-agent", version)]
struct Cli {
    /// Directory with the agent's identity (agent.crt, agent.key) and the
    /// authorized_clients file.
    #[arg(long, global = true, env = "REXEC_AGENT_DIR", default_value = config::DEFAULT_DIR)]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the agent's identity in --dir and print its fingerprint.
    Init,
    /// Print the agent's fingerprint.
    Id,
    /// Allow a client (by the fingerprint `ctl id` prints) to connect.
    Authorize {
        /// The client's fingerprint, SHA256:...
        fingerprint: Fingerprint,
        /// A name for the logs and for `revoke`.
        #[arg(long, default_value = "unnamed")]
        name: String,
    },
    /// Remove a client by name or fingerprint; its new connections fail at once.
    Revoke {
        /// The client's name or fingerprint.
        client: String,
    },
    /// List the authorized clients.
    Clients,
    /// Run the agent in the foreground.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Address to listen on (repeatable). Port 0 picks a free port; the
    /// bound address is logged as "listening on ADDR".
    #[arg(long = "listen", default_value = "0.0.0.0:7722")]
    listen: Vec<SocketAddr>,
    /// Most concurrent sessions; further connections are closed at once.
    #[arg(long, default_value_t = config::DEFAULT_MAX_SESSIONS)]
    max_sessions: usize,
    /// Most concurrent execs per client; more are refused as busy.
    #[arg(long, default_value_t = config::DEFAULT_MAX_EXECS_PER_CLIENT)]
    max_execs_per_client: usize,
    /// The longest any command may run (e.g. 1h); applied when the client
    /// asks for no timeout or a longer one. Default: no limit.
    #[arg(long, value_parser = humantime::parse_duration)]
    max_timeout: Option<Duration>,
    /// Quiet time after which a keepalive is sent to the client (0 disables).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    keepalive_interval: Duration,
    /// Unanswered keepalive intervals after which a client counts as gone
    /// and its command is killed.
    #[arg(long, default_value_t = config::DEFAULT_KEEPALIVE_COUNT)]
    keepalive_count: u32,
    /// Time a connection has to complete TLS and send its request.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    handshake_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a command's group is killed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    kill_grace: Duration,
    /// On SIGTERM, how long running commands may go on before they are killed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    shutdown_grace: Duration,
    /// The shell that runs commands as SHELL -c COMMAND.
    #[arg(long, default_value = config::DEFAULT_SHELL)]
    shell: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rexec-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // Under systemd the journal stamps each line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.dir;
    match cli.command {
        Command::Init => {
            let paths = config::identity_paths(&dir);
            let host = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "rexec-agent".into());
            let identity = Identity::create(&paths, &host)?;
            let clients = config::authorized_clients_path(&dir);
            if !clients.exists() {
                std::fs::write(
                    &clients,
                    "# Clients allowed to connect: one per line, SHA256:<fingerprint> NAME\n",
                )
                .with_context(|| format!("cannot create {}", clients.display()))?;
            }
            eprintln!("created agent identity in {}", dir.display());
            println!("{}", identity.fingerprint);
        }
        Command::Id => {
            let identity = Identity::load(&config::identity_paths(&dir))?;
            println!("{}", identity.fingerprint);
        }
        Command::Authorize { fingerprint, name } => {
            if name.chars().any(char::is_control) {
                bail!("a client name cannot contain control characters");
            }
            let path = config::authorized_clients_path(&dir);
            let replaced = authorized::authorize(
                &path,
                &AuthorizedClient {
                    fingerprint,
                    name: name.clone(),
                },
            )
            .with_context(|| format!("cannot update {}", path.display()))?;
            let verb = if replaced { "updated" } else { "authorized" };
            eprintln!("{verb} {fingerprint} as {name:?} in {}", path.display());
        }
        Command::Revoke { client } => {
            let path = config::authorized_clients_path(&dir);
            let removed = authorized::revoke(&path, &client)
                .with_context(|| format!("cannot update {}", path.display()))?;
            if removed.is_empty() {
                bail!(
                    "no authorized client named or with fingerprint {client:?} in {}",
                    path.display()
                );
            }
            for c in removed {
                eprintln!("revoked {} ({})", c.fingerprint, c.name);
            }
        }
        Command::Clients => {
            let path = config::authorized_clients_path(&dir);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            for c in authorized::parse(&text).0 {
                println!("{} {}", c.fingerprint, c.name);
            }
        }
        Command::Run(args) => run(dir, args)?,
    }
    Ok(())
}

fn run(dir: PathBuf, args: RunArgs) -> anyhow::Result<()> {
    let mut settings = AgentSettings::new(dir);
    settings.max_sessions = args.max_sessions;
    settings.max_execs_per_client = args.max_execs_per_client;
    settings.handshake_timeout = args.handshake_timeout;
    settings.kill_grace = args.kill_grace;
    settings.shutdown_grace = args.shutdown_grace;
    settings.max_timeout = args.max_timeout;
    settings.keepalive_interval = args.keepalive_interval;
    settings.keepalive_count = args.keepalive_count;
    settings.shell = args.shell;
    let shutdown = Shutdown::default();
    let state = Arc::new(AgentState::load(settings, shutdown.clone())?);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut listeners = Vec::new();
        for addr in &args.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let bound = listener.local_addr()?;
            tracing::info!(fingerprint = %state.fingerprint, "listening on {bound}");
            listeners.push(listener);
        }
        spawn_signal_handlers(&shutdown, state.authorized.clone())?;
        let grace = state.settings.shutdown_grace;
        server::serve(listeners, state, grace).await;
        tracing::info!("agent stopped");
        Ok(())
    })
}

/// SIGTERM: graceful stop; SIGINT: stop and kill now; SIGHUP: re-read the
/// authorized clients.
fn spawn_signal_handlers(
    shutdown: &Shutdown,
    authorized: Arc<AuthorizedClients>,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: no new connections; running commands may finish");
                    shutdown.stop.cancel();
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: stopping now");
                    shutdown.stop.cancel();
                    shutdown.kill.cancel();
                }
                _ = hup.recv() => {
                    let count = authorized.reload();
                    tracing::info!(clients = count, "SIGHUP: authorized clients re-read");
                }
            }
        }
    });
    Ok(())
}
