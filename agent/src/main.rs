//! `rexec-agent`: create the agent's identity, manage who may connect, run.
//!
//! Settings come from the defaults in `config`, then the config file, then
//! the `run` flags, each overriding the one before. Under systemd the agent
//! takes its listening sockets from socket activation when there are any
//! and reports readiness, status and stopping (see `notify`).

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use listenfd::ListenFd;
use nix::sys::socket::{getsockopt, sockopt};
use rexec_agent::authorized::{self, AuthorizeError, AuthorizedClient};
use rexec_agent::broker::BrokerLink;
use rexec_agent::config::{self, AgentSettings};
use rexec_agent::config_file::{self, ConfigFile};
use rexec_agent::exec;
use rexec_agent::notify;
use rexec_agent::server;
use rexec_agent::state::{AgentState, Shutdown};
use rexec_broker::Carrier;
use rexec_protocol::{Fingerprint, Identity, IdentityError};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// The rexec agent: runs shell commands for authorized ctl clients.
#[derive(Debug, Parser)]
#[command(name = "rexec-agent", version)]
struct Cli {
    /// Directory with the agent's identity (agent.crt, agent.key) and the
    /// authorized_clients file [default: the config file's `dir`, else
    /// /etc/rexec].
    #[arg(long, global = true, env = "REXEC_AGENT_DIR")]
    dir: Option<PathBuf>,
    /// Config file (TOML). Default: agent.toml in --dir, that is
    /// /etc/rexec/agent.toml, read when it exists. Flags override it.
    #[arg(long, global = true, env = "REXEC_AGENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of `Run`'s settings costs nothing.
#[allow(clippy::large_enum_variant)]
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
        /// A name for the logs, run-as rules and `revoke`, which no other
        /// key has [default: the fingerprint's start, SHA256:AbCdEfGh].
        #[arg(long)]
        name: Option<String>,
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
    /// Write the agent's man pages (rexec-agent.1, rexec-agent-run.1, ...)
    /// into DIR; for packaging.
    #[command(hide = true)]
    ManPages {
        /// Where the pages go (created if missing).
        dir: PathBuf,
    },
    /// Started by `run` itself: ends the agent's commands if it dies.
    #[command(name = "keeper", hide = true)]
    Keeper {
        /// SIGTERM-to-SIGKILL grace, in milliseconds.
        grace_ms: u64,
    },
    /// Started by `run` itself: runs one detached job, spec on stdin.
    #[command(name = "job-runner", hide = true)]
    JobRunner,
}

/// Every `run` flag is optional: one given overrides the config file's key
/// of the same name, which overrides the default.
#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    flags: ConfigFile,
    /// Check the config file and the identity, print the effective settings
    /// (file and flags combined) as a config file, and exit.
    #[arg(long)]
    check: bool,
}

/// Where the settings come from: the `--dir` and `--config` flags, the
/// config file they lead to, and the `run` flags. Kept whole so SIGHUP can
/// read the file again and compare.
#[derive(Debug, Clone)]
struct SettingsSource {
    dir: Option<PathBuf>,
    config: Option<PathBuf>,
    run: Option<RunArgs>,
}

/// The settings as resolved from a [`SettingsSource`].
struct Resolved {
    settings: AgentSettings,
    listen: Vec<SocketAddr>,
    /// Whether the listen addresses were asked for (flag or file key)
    /// rather than defaulted.
    listen_given: bool,
    /// The config file read, if any.
    file: Option<PathBuf>,
}

impl SettingsSource {
    /// The config file to read: `--config` (which must exist), else
    /// `agent.toml` in `--dir` or /etc/rexec when it exists.
    fn config_file(&self) -> Option<PathBuf> {
        if let Some(path) = &self.config {
            return Some(path.clone());
        }
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_DIR));
        let path = dir.join(config_file::CONFIG_FILE_NAME);
        path.exists().then_some(path)
    }

    fn resolve(&self) -> anyhow::Result<Resolved> {
        let path = self.config_file();
        let file = match &path {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let given = match &self.run {
            Some(run) => run.flags.clone().over(file),
            None => file,
        };
        let mut settings = given.settings(self.dir.clone());
        settings.broker = given
            .broker
            .settings(config::default_broker_name)
            .map_err(anyhow::Error::msg)?;
        Ok(Resolved {
            settings,
            listen: given.listen(),
            listen_given: given.listen.is_some(),
            file: path,
        })
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // clap's first paragraph says what is wrong; the usage block
            // after it is what --help is for.
            eprintln!(
                "rexec-agent: {} (see rexec-agent --help)",
                rexec_protocol::plain::usage_message(&e.render().to_string())
            );
            return ExitCode::from(2);
        }
    };
    if let Command::Keeper { grace_ms } = cli.command {
        exec::keeper::run(Duration::from_millis(grace_ms));
        return ExitCode::SUCCESS;
    }
    if let Command::JobRunner = cli.command {
        return ExitCode::from(rexec_agent::jobs::runner::run().clamp(0, 255) as u8);
    }
    if let Command::ManPages { dir } = &cli.command {
        return match man_pages(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rexec-agent: error: {}", one_line(&e));
                ExitCode::FAILURE
            }
        };
    }
    init_logging();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rexec-agent: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes as one line, each said once: a cause whose
/// text its context already quotes is left out, and so is the system's
/// "(os error N)" tail.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = plain(&cause.to_string());
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace(['\n', '\r'], " ")
}

/// `text` without the " (os error N)" that the system's messages end with.
fn plain(text: &str) -> String {
    let mut out = text.to_owned();
    while let Some(start) = out.find(" (os error ") {
        match out[start..].find(')') {
            Some(end) => out.replace_range(start..start + end + 1, ""),
            None => break,
        }
    }
    out
}

/// Loads the agent's identity from `dir`, saying plainly what is wrong.
fn load_identity(dir: &std::path::Path) -> anyhow::Result<Identity> {
    match Identity::load(&config::identity_paths(dir)) {
        Ok(identity) => Ok(identity),
        Err(IdentityError::Io { path, source })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            bail!(
                "no agent identity in {} ({} is missing): create one with: rexec-agent --dir {} init",
                dir.display(),
                path.file_name().unwrap_or_default().to_string_lossy(),
                dir.display()
            )
        }
        Err(IdentityError::Io { path, source }) => {
            bail!(
                "cannot read {}: {}",
                path.display(),
                plain(&source.to_string())
            )
        }
        Err(e) => bail!("{}", plain(&e.to_string())),
    }
}

fn init_logging() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The NATS client logs in its own words (the carrier says what
    // matters in ours), unless someone asks for it by name to debug.
    let asked = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("async_nats"));
    if !asked && let Ok(quiet) = "async_nats=off".parse() {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // Under systemd the journal stamps each line itself.
    if stderr_is_the_journal() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

/// Whether our stderr is the journal stream systemd connected us to.
///
/// systemd sets `JOURNAL_STREAM=DEVICE:INODE` for the stream it connected,
/// and the variable is inherited by everything started from there (an
/// admin's shell in a unit, a command the agent runs); so, as systemd.exec(5)
/// advises, we compare it with what stderr actually is. An agent started
/// by hand from such a shell, with stderr on a terminal or a file, keeps
/// its timestamps.
fn stderr_is_the_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    device.parse() == Ok(stat.st_dev) && inode.parse() == Ok(stat.st_ino)
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let run_args = match &cli.command {
        Command::Run(args) => Some(args.clone()),
        _ => None,
    };
    let source = SettingsSource {
        dir: cli.dir,
        config: cli.config,
        run: run_args,
    };
    let resolved = source.resolve()?;
    let dir = resolved.settings.dir.clone();
    match cli.command {
        Command::Init => {
            // Made 0755, not from the umask: the agent refuses a directory
            // of its clients file that group or others can write.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let paths = config::identity_paths(&dir);
            let identity = Identity::create(&paths)?;
            let clients = config::authorized_clients_path(&dir);
            authorized::create(&clients)
                .with_context(|| format!("cannot create {}", clients.display()))?;
            eprintln!("created agent identity in {}", dir.display());
            println!("{}", identity.fingerprint);
        }
        Command::Id => {
            let identity = load_identity(&dir)?;
            println!("{}", identity.fingerprint);
        }
        Command::Authorize { fingerprint, name } => {
            let name = name.unwrap_or_else(|| authorized::default_name(&fingerprint));
            authorized::check_name(&name).map_err(anyhow::Error::msg)?;
            let path = config::authorized_clients_path(&dir);
            let client = AuthorizedClient {
                fingerprint,
                name: name.clone(),
            };
            let replaced = match authorized::authorize(&path, &client) {
                Ok(replaced) => replaced,
                Err(AuthorizeError::Io(e)) => {
                    return Err(e).with_context(|| format!("cannot update {}", path.display()));
                }
                Err(e) => bail!("{e}"),
            };
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
            let text =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let (clients, bad) = authorized::parse(&text);
            for c in clients {
                println!("{} {}", c.fingerprint, c.name);
            }
            // What the agent ignores is said, so the list is not taken
            // for all the file holds.
            for bad in bad {
                eprintln!(
                    "{}:{}: {}; line ignored",
                    path.display(),
                    bad.line,
                    bad.reason
                );
            }
        }
        Command::Run(args) if args.check => check(&resolved)?,
        Command::Run(_) => run(source, resolved)?,
        Command::Keeper { .. } | Command::JobRunner | Command::ManPages { .. } => {}
    }
    Ok(())
}

/// Writes the man pages into `dir` (see `rexec_man`).
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    rexec_man::write(Cli::command(), env!("CARGO_PKG_VERSION"), dir).map_err(|e| {
        let action = if e.path == dir { "create" } else { "write" };
        anyhow::Error::new(e.error).context(format!("cannot {action} {}", e.path.display()))
    })
}

/// What `run` refuses beyond the config file's own checks, so that
/// `run --check` refuses it too.
fn validate(resolved: &Resolved) -> anyhow::Result<()> {
    let shell = &resolved.settings.shell;
    let usable = std::fs::metadata(shell).is_ok_and(|meta| {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    });
    if !usable {
        bail!(
            "the shell {} does not exist or is not an executable file (see `shell` in the config file or --shell)",
            shell.display()
        );
    }
    if resolved.settings.dir.as_os_str().is_empty() {
        bail!(
            "the agent's directory is empty (`dir` in the config file, or --dir): give a path such as /etc/rexec"
        );
    }
    if resolved.settings.handshake_timeout.is_zero() {
        bail!(
            "handshake_timeout is 0s, within which no client can connect: give it a length (default 5s)"
        );
    }
    if resolved.listen.is_empty() && resolved.settings.broker.is_none() {
        bail!("no address to listen on: give --listen or `listen` in the config file");
    }
    if let Some(broker) = &resolved.settings.broker {
        broker.options().check()?;
    }
    for (index, addr) in resolved.listen.iter().enumerate() {
        if resolved.listen[..index].contains(addr) {
            bail!("{addr} is given twice as an address to listen on");
        }
    }
    load_identity(&resolved.settings.dir)?;
    Ok(())
}

/// `run --check`: the settings are valid and the identity loads.
fn check(resolved: &Resolved) -> anyhow::Result<()> {
    validate(resolved)?;
    AgentState::load(resolved.settings.clone(), Shutdown::default())?;
    match &resolved.file {
        Some(path) => println!("# settings from {} and flags", path.display()),
        None => println!("# no config file; settings from defaults and flags"),
    }
    print!(
        "{}",
        ConfigFile::from_settings(&resolved.settings, &resolved.listen).to_toml()
    );
    Ok(())
}

fn run(source: SettingsSource, resolved: Resolved) -> anyhow::Result<()> {
    validate(&resolved)?;
    // Before the keeper, the runtime and any command: what the agent's
    // starter ignored is not for the commands.
    exec::default_signal_dispositions();
    // Descriptors we were started with (a shell's, a supervisor's) are not
    // for the commands we run; systemd's listening sockets, taken below,
    // are ours alone too.
    exec::mark_close_on_exec_from(3);
    // Before the keeper and the runtime's threads: from here on no process
    // of ours holds the terminal we were started from.
    if !exec::give_up_terminal() {
        tracing::debug!("keeping a controlling terminal; commands start in sessions of their own");
    }
    if let Err(e) = exec::keeper::start(resolved.settings.kill_grace) {
        tracing::warn!(
            "cannot start the keeper, so commands would outlive a killed agent: {}",
            plain(&e.to_string())
        );
    }
    if let Some(limit) = server::raise_open_files_limit() {
        tracing::debug!(limit, "open files limit");
    }
    // Taken before any thread starts: the listenfd crate removes the
    // LISTEN_* variables from the environment.
    let mut inherited = ListenFd::from_env();
    let shutdown = Shutdown::default();
    let state = Arc::new(AgentState::load(
        resolved.settings.clone(),
        shutdown.clone(),
    )?);
    if let Some(path) = &resolved.file {
        tracing::info!("settings from {}", path.display());
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let from_systemd = inherited.len() > 0;
    let result = runtime.block_on(async move {
        let listeners = if from_systemd {
            if resolved.listen_given {
                tracing::warn!(
                    "systemd passed {} listening socket(s); the configured listen addresses are not used",
                    inherited.len()
                );
            }
            systemd_listeners(&mut inherited)?
        } else if resolved.listen.is_empty() {
            // Broker mode only: validate() made sure there is a broker.
            Vec::new()
        } else {
            bind(&resolved.listen).await?
        };
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<Result<Vec<_>, _>>()?;
        let bound = addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        // A broker that is down does not keep us from starting: the
        // carrier returns at once and keeps trying for as long as we run.
        let broker = match &state.settings.broker {
            Some(settings) => Some(BrokerLink::new(
                Carrier::connect(rexec_agent::broker::carrier_options(
                    settings,
                    &state.settings,
                ))
                .await?,
                settings.name.clone(),
                settings.url_list(),
            )),
            None => None,
        };
        // The handlers are in place before "listening on" is said: whoever
        // waits for that line (a script, a test) may signal the agent at
        // once, and a SIGHUP before them would end it.
        spawn_signal_handlers(
            &shutdown,
            state.clone(),
            source,
            resolved,
            bound.clone(),
            broker.clone(),
        )?;
        let from = if from_systemd { " (socket from systemd)" } else { "" };
        for addr in &addrs {
            tracing::info!(fingerprint = %state.fingerprint, "listening on {addr}{from}");
        }
        if let Some(link) = &broker {
            tracing::info!(
                fingerprint = %state.fingerprint,
                "connecting to the broker at {} as {}",
                link.urls,
                link.name
            );
        }

        let limit = state.settings.max_sessions;
        let broker_status = broker.as_ref().map(BrokerLink::status);
        notify::ready(&notify::status_line(
            &bound,
            broker_status.as_deref(),
            0,
            limit,
        ));
        if notify::enabled() {
            tokio::spawn(notify::report_sessions(
                state.sessions.clone(),
                limit,
                bound,
                broker.clone(),
                state.shutdown.stop.clone(),
            ));
        }
        if let Some(interval) = notify::watchdog_interval() {
            tracing::info!(interval = ?interval, "systemd watchdog enabled");
            tokio::spawn(notify::watchdog(interval));
        }

        tokio::spawn(rexec_agent::jobs::watch::watch(state.clone()));
        let grace = state.settings.shutdown_grace;
        server::serve_with_broker(listeners, broker, state, grace).await;
        tracing::info!("agent stopped");
        Ok(())
    });
    // A name lookup of the broker's host may still be running on a
    // blocking thread; it must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Binds every address in `listen`.
async fn bind(listen: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    if listen.is_empty() {
        bail!("no address to listen on: give --listen or `listen` in the config file");
    }
    let mut listeners = Vec::new();
    for addr in listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The listening sockets systemd passed (socket activation). Each must be
/// a listening TCP socket: a `.socket` unit with `Accept=yes` passes
/// connections instead, which this agent does not serve.
fn systemd_listeners(inherited: &mut ListenFd) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for index in 0..inherited.len() {
        let fd = 3 + index;
        let listener = inherited
            .take_tcp_listener(index)
            .with_context(|| format!("socket {fd} from systemd is not a TCP socket"))?
            .with_context(|| format!("socket {fd} from systemd was taken twice"))?;
        let listening = getsockopt(&listener, sockopt::AcceptConn)
            .with_context(|| format!("cannot inspect socket {fd} from systemd"))?;
        if !listening {
            bail!("socket {fd} from systemd is not listening (the .socket unit needs Accept=no)");
        }
        listener.set_nonblocking(true)?;
        listeners.push(TcpListener::from_std(listener)?);
    }
    Ok(listeners)
}

/// SIGTERM: graceful stop; SIGINT: stop and kill now; SIGHUP: re-read the
/// authorized clients, and check the config file for changes that need a
/// restart.
fn spawn_signal_handlers(
    shutdown: &Shutdown,
    state: Arc<AgentState>,
    source: SettingsSource,
    running: Resolved,
    bound: String,
    broker: Option<BrokerLink>,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let sessions = || {
            state
                .settings
                .max_sessions
                .saturating_sub(state.sessions.available_permits())
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: no new connections; running commands may finish");
                    notify::stopping(&format!(
                        "stopping; {} finishing",
                        notify::sessions(sessions())
                    ));
                    shutdown.stop.cancel();
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: stopping now");
                    notify::stopping("stopping now; killing running commands");
                    shutdown.stop.cancel();
                    shutdown.kill.cancel();
                }
                _ = hup.recv() => {
                    notify::reloading();
                    let count = state.authorized.reload();
                    tracing::info!(clients = count, "SIGHUP: authorized clients re-read");
                    check_reloaded_settings(&source, &running);
                    let broker = broker.as_ref().map(BrokerLink::status);
                    notify::ready(&notify::status_line(
                        &bound,
                        broker.as_deref(),
                        sessions(),
                        state.settings.max_sessions,
                    ));
                }
            }
        }
    });
    Ok(())
}

/// On SIGHUP, reads the config file again and says what a restart would
/// change: the settings are fixed for the agent's lifetime (running
/// sessions hold them), so only the authorized clients change in place.
fn check_reloaded_settings(source: &SettingsSource, running: &Resolved) {
    // What a restart would refuse, `run`'s own checks included (a shell
    // that is not there, a broker's missing files), is said now.
    let reloaded = match source.resolve().and_then(|reloaded| {
        validate(&reloaded)?;
        Ok(reloaded)
    }) {
        Ok(reloaded) => reloaded,
        Err(e) => {
            tracing::error!(
                "SIGHUP: the agent would not restart with these settings: {}",
                one_line(&e)
            );
            return;
        }
    };
    let before = ConfigFile::from_settings(&running.settings, &running.listen);
    let after = ConfigFile::from_settings(&reloaded.settings, &reloaded.listen);
    let changed = before.changed_keys(&after);
    if !changed.is_empty() {
        tracing::warn!(
            "SIGHUP: changed settings take effect on restart (systemctl restart rexec-agent): {}",
            changed.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn run_long_help() -> String {
        Cli::command()
            .find_subcommand_mut("run")
            .expect("run subcommand")
            .render_long_help()
            .to_string()
    }

    /// The `run` flags have no clap defaults (a flag applies only when
    /// given), so their help states the defaults in words; they must be
    /// the ones `config` applies.
    #[test]
    fn run_help_states_the_defaults_that_apply() {
        let help = run_long_help();
        let d = AgentSettings::new(config::DEFAULT_DIR);
        let time = |t: Duration| humantime::format_duration(t).to_string();
        let mut expected = vec![
            format!("[default: {}]", config_file::DEFAULT_LISTEN),
            format!("[default: {}]", d.max_sessions),
            format!("[default: {}]", d.max_startups),
            format!("[default: {}]", d.per_source_max_startups),
            format!("[default: {}]", d.max_execs_per_client),
            format!("[default: {}]", d.max_execs),
            format!("[default: {}]", time(d.keepalive_interval)),
            format!("[default: {}]", d.keepalive_count),
            format!("[default: {}]", time(d.handshake_timeout)),
            format!("[default: {}]", time(d.kill_grace)),
            format!("[default: {}]", time(d.shutdown_grace)),
            format!("[default: {}]", d.shell.display()),
        ];
        assert_eq!(d.max_timeout, None);
        expected.push("[default: no limit]".into());
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for text in expected {
            assert!(help.contains(&text), "{text} in:\n{help}");
        }
    }

    /// Every text that says how IPv6 addresses are grouped for
    /// `per_source_max_startups` names the block the limit counts.
    #[test]
    fn the_per_source_limit_is_documented_with_the_ipv6_block_it_counts() {
        let help = run_long_help();
        let example = include_str!("../../systemd/agent.toml");
        let readme = include_str!("../../README.md");
        let block = format!("/{}", rexec_agent::limits::IPV6_PREFIX);
        for (name, text) in [
            ("run --help", help.as_str()),
            ("agent.toml", example),
            ("README.md", readme),
        ] {
            let text = text
                .replace("#", " ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let said: Vec<&str> = text
                .match_indices("IPv6: one /")
                .map(|(at, found)| {
                    let rest = &text[at + found.len() - 1..];
                    let end = rest[1..]
                        .find(|c: char| !c.is_ascii_digit())
                        .map_or(rest.len(), |e| e + 1);
                    &rest[..end]
                })
                .collect();
            assert!(!said.is_empty(), "{name} says how IPv6 is grouped");
            assert!(
                said.iter().all(|s| *s == block),
                "{name} says {said:?}, the code counts {block}"
            );
        }
    }
}
