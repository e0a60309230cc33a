//! `ctl`, the rexec command line client, as a library: the binary's `main`
//! only calls [`main`].
//!
//! Commands: `keygen` and `id` (our identity), `exec` (run a command on a
//! target, streaming its output and passing its exit status through, or on
//! many targets at once), `hosts` (expand a target list), `ping` (check
//! agents), and `known-hosts` (list or remove agents' recorded
//! fingerprints).
//!
//! `exec` keeps the raw single-host path (`exec.rs`) when its target is
//! exactly one literal host (no comma, range, `@group`, `!` or `-x`) and no
//! multi-host output mode (`-b`, `--json`, `-o`) is asked for; anything
//! else goes through the fan-out engine (`fanout.rs`) and an output mode
//! (`output.rs`).

/// `eprintln!` that never panics: when our stderr cannot be written there
/// is nowhere left to tell, and the exit status still says what happened.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod config;
pub mod connect;
pub mod copy;
pub mod error;
pub mod exec;
pub mod fanout;
pub mod inventory;
pub mod known_hosts;
pub mod nodeset;
pub mod output;
pub mod ping;
pub mod plain;
pub mod signals;
pub mod target;
pub mod tty;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use rexec_protocol::{ExecRequest, Identity, IdentityError};
use tokio_util::sync::CancellationToken;

use crate::config::ConfigDir;
use crate::connect::Client;
use crate::error::{CtlError, EXIT_BROKEN_PIPE, EXIT_CTL_ERROR, EXIT_INTERRUPTED, exit_code};
use crate::exec::ExecOutcome;
use crate::fanout::{DEFAULT_FANOUT, Deadline, Fanout, Finished, HostResult, Tally};
use crate::inventory::Inventory;
use crate::known_hosts::KnownHosts;
use crate::output::{Console, Gathered, JsonLines, Labels, OutDir, Output, Prefixed, Stream};
use crate::target::{Target, TargetSpec};

/// ctl's own deadline on a host is its `--timeout` plus the connect timeout
/// plus this: time for the agent to kill the command's group (its kill
/// grace) and report. Past it the agent is taken as hung.
const DEADLINE_SLACK: Duration = Duration::from_secs(5);

const EXIT_STATUS_HELP: &str = "\
Exit status of ctl exec (one target):
  N      the remote command exited with N
  128+N  the remote command was killed by signal N
  124    --timeout expired (the remote process group was killed)
  130    interrupted by a second Ctrl-C (the remote group was sent SIGKILL)
  141    our stdout was closed by its reader (ctl ... | head)
  255    ctl could not run the command (bad usage, unreachable, host key
         changed, not authorized, protocol error, the agent stopped answering)
         or could not write its output; one line on stderr says which
Several targets: 0 when every host exited 0, else the largest per-host code
(a host ctl could not run on counts as 255, a timed out one as 124), with a
one-line summary of the failed hosts on stderr; 130, 143 or 129 when Ctrl-C,
SIGTERM or SIGHUP ended the run.";

/// Run commands on rexec agents.
#[derive(Debug, Parser)]
#[command(name = "ctl", version, after_help = EXIT_STATUS_HELP)]
struct Cli {
    /// Directory with ctl's identity and known hosts
    /// [default: $XDG_CONFIG_HOME/rexec or ~/.config/rexec]
    #[arg(long, global = true, env = "REXEC_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Inventory of groups and per-host settings
    /// [default: hosts.toml in the config directory]
    #[arg(long, global = true, env = "REXEC_INVENTORY", value_name = "FILE")]
    inventory: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create this client's identity and print its fingerprint.
    Keygen,
    /// Print this client's fingerprint (what an agent admin authorizes).
    Id,
    /// Run a command on one host or many: ctl exec TARGETS COMMAND...
    #[command(after_help = EXIT_STATUS_HELP)]
    Exec(ExecArgs),
    /// Print the hosts a target list expands to, one per line.
    Hosts(HostsArgs),
    /// Check that agents answer: handshake and one round trip per host.
    Ping(PingArgs),
    /// Copy files: ctl cp [-r] LOCAL... TARGETS:/PATH, or
    /// ctl cp [-r] TARGETS:/PATH LOCAL_DIR.
    #[command(after_help = COPY_HELP)]
    Cp(CpArgs),
    /// List or remove the agents' fingerprints recorded on first contact.
    KnownHosts {
        #[command(subcommand)]
        action: KnownHostsAction,
    },
}

#[derive(Debug, Subcommand)]
enum KnownHostsAction {
    /// Print every recorded host and fingerprint.
    List,
    /// Forget a host's fingerprint (after a legitimate re-install).
    Remove {
        /// HOST or HOST:PORT (without a port: the inventory's, else 7722)
        host: String,
    },
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    /// Forward our stdin to the command (otherwise its stdin is empty).
    #[arg(short = 'i', long = "stdin")]
    stdin: bool,
    /// Run the command on a remote pseudo-terminal (for top, sudo, vim):
    /// our terminal goes to raw mode, keys and window size are forwarded,
    /// stdout and stderr arrive merged, as on a terminal. Implies -i.
    #[arg(short = 't', long = "tty")]
    tty: bool,
    /// Kill the remote command's process group after this long (e.g. 30s,
    /// 5m); 0 means no limit, as with GNU timeout.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Bound on connecting and the TLS handshake.
    #[arg(long, value_parser = parse_connect_timeout, default_value = "5s")]
    connect_timeout: Duration,
    /// Set a variable in the command's environment (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory for the command [default: the user's home].
    #[arg(short = 'C', long = "cwd", value_name = "DIR")]
    cwd: Option<String>,
    /// Run as this user (also: USER@HOST).
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Refuse hosts that are not in known hosts instead of trusting them on
    /// first use.
    #[arg(long)]
    strict_host_key: bool,
    /// Remove these hosts from the targets (repeatable; a target list).
    #[arg(short = 'x', long = "exclude", value_name = "TARGETS")]
    exclude: Vec<String>,
    /// Most hosts at once.
    #[arg(short = 'f', long, default_value_t = DEFAULT_FANOUT, value_parser = parse_fanout)]
    fanout: usize,
    /// After all hosts finish, print each distinct stdout once, under the
    /// set of hosts that produced it.
    #[arg(short = 'b', long, conflicts_with_all = ["json", "out_dir"])]
    gather: bool,
    /// One JSON object per host per line, as each finishes.
    #[arg(long, conflicts_with = "out_dir")]
    json: bool,
    /// Write DIR/HOST.out, DIR/HOST.err and DIR/summary.jsonl.
    #[arg(short = 'o', long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// HOST, HOST:PORT or USER@HOST[:PORT] (default port 7722), or a list:
    /// node[01-20],@group,!node07 (see `ctl hosts --help`).
    #[arg(value_name = "TARGETS")]
    target: String,
    /// The command: one argument is a shell command line; several are quoted
    /// and joined, so they arrive as exactly those words.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

const TARGETS_HELP: &str = "\
TARGETS is a comma-separated list of:
  host, host:port, user@host, [v6addr]:port    one host
  node[01-20], rack[1-3]-n[1,3,5-7]            ranges (zero padding kept)
  @name                                        a group from the inventory
  !node07, !@name                              exclusions
A bracket holding a ':' is an IPv6 address, any other bracket a range.";

#[derive(Debug, clap::Args)]
#[command(after_help = TARGETS_HELP)]
struct HostsArgs {
    /// Remove these hosts (repeatable; a target list).
    #[arg(short = 'x', long = "exclude", value_name = "TARGETS")]
    exclude: Vec<String>,
    /// Print the hosts folded into one node set instead (node[01-05,07]).
    #[arg(long)]
    fold: bool,
    /// The target list.
    #[arg(value_name = "TARGETS")]
    targets: String,
}

#[derive(Debug, clap::Args)]
#[command(after_help = TARGETS_HELP)]
struct PingArgs {
    /// Remove these hosts (repeatable; a target list).
    #[arg(short = 'x', long = "exclude", value_name = "TARGETS")]
    exclude: Vec<String>,
    /// Most hosts at once.
    #[arg(short = 'f', long, default_value_t = DEFAULT_FANOUT, value_parser = parse_fanout)]
    fanout: usize,
    /// Bound on connecting and the TLS handshake.
    #[arg(long, value_parser = parse_connect_timeout, default_value = "5s")]
    connect_timeout: Duration,
    /// Refuse hosts that are not in known hosts.
    #[arg(long)]
    strict_host_key: bool,
    /// One JSON object per host per line.
    #[arg(long)]
    json: bool,
    /// The target list.
    #[arg(value_name = "TARGETS")]
    targets: String,
}

const COPY_HELP: &str = "\
A remote operand is TARGETS:/ABSOLUTE/PATH (split at the first ':/'; write a
local path containing ':/' as ./like:/this).
As cp and scp do: into the destination when it is an existing directory, else
the one source becomes that path (its parent must exist); a destination ending
in '/' must be a directory. Pull from several hosts: LOCAL_DIR/HOST/NAME.
Links are copied as links and never followed on the receiving side. Each file
is written under a temporary name, checked against its BLAKE3 hash and renamed
into place: readers see the old file or the new one, never a mix. Set-id bits
are kept only with -p.
Exit status: 0 when every host succeeded, else the largest per-host code
(255 when ctl or the agent could not copy), with a summary on stderr.";

#[derive(Debug, clap::Args)]
struct CpArgs {
    /// Copy directories and everything in them.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// Keep numeric owners (user and group ids); the writing side must be
    /// root (on a push, the agent's copy must run as root).
    #[arg(short = 'p', long)]
    preserve_owner: bool,
    /// Remove these hosts (repeatable; a target list).
    #[arg(short = 'x', long = "exclude", value_name = "TARGETS")]
    exclude: Vec<String>,
    /// Most hosts at once.
    #[arg(short = 'f', long, default_value_t = DEFAULT_FANOUT, value_parser = parse_fanout)]
    fanout: usize,
    /// Bound on connecting and the TLS handshake.
    #[arg(long, value_parser = parse_connect_timeout, default_value = "5s")]
    connect_timeout: Duration,
    /// Give up on a host whose copy (connecting included) takes longer
    /// than this: exit 124, the partial file removed; 0 for no limit.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Refuse hosts that are not in known hosts.
    #[arg(long)]
    strict_host_key: bool,
    /// One JSON object per host per line: entries, bytes, duration, blake3.
    #[arg(long)]
    json: bool,
    /// Sources then destination; exactly one side is remote.
    #[arg(required = true, num_args = 2.., value_name = "PATHS")]
    paths: Vec<String>,
}

/// The longest duration any flag takes. Far beyond any real command or
/// copy, and small enough that adding it to a clock can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A duration flag: any humantime duration (`500ms`, `30s`, `1h 30m`) up to
/// [`MAX_DURATION`].
///
/// # Errors
/// A malformed duration, or one over the bound.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(s).map_err(|_| {
        format!("{s:?} is not a duration (a number and a unit: 500ms, 30s, 5m, 1h 30m)")
    })?;
    if duration > MAX_DURATION {
        return Err(format!("{s:?} is too long: at most 366 days"));
    }
    Ok(duration)
}

/// A connect timeout: a duration that is not zero.
fn parse_connect_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err("the connect timeout must be longer than 0".into()),
        duration => Ok(duration),
    }
}

fn parse_fanout(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a number of hosts, at least 1, got {s:?}")),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The command line a list of words becomes: one word is taken as a shell
/// command line as it is; several are each quoted and joined with spaces.
///
/// # Errors
/// When a word contains a NUL byte, which no shell argument can hold.
pub fn command_line(words: &[String]) -> Result<String, CtlError> {
    match words {
        [one] => Ok(one.clone()),
        words => shlex::try_join(words.iter().map(String::as_str))
            .map_err(|_| CtlError::Usage("a word of the command contains a NUL byte".into())),
    }
}

/// Runs ctl with the process's arguments; returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version, as clap writes them.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            say!("ctl: {}", usage_line(&e));
            return ExitCode::from(EXIT_CTL_ERROR);
        }
    };
    let config = ConfigDir::locate(cli.config_dir);
    let result = match cli.command {
        Command::Keygen => keygen(&config),
        Command::Id => load_identity(&config)
            .and_then(|identity| print_out(&format!("{}\n", identity.fingerprint))),
        Command::Exec(args) => exec(&config, cli.inventory.as_deref(), args),
        Command::Hosts(args) => hosts(&config, cli.inventory.as_deref(), args),
        Command::Ping(args) => ping(&config, cli.inventory.as_deref(), args),
        Command::Cp(args) => cp(&config, cli.inventory.as_deref(), args),
        Command::KnownHosts { action } => known_hosts(&config, cli.inventory.as_deref(), action),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err((context, e)) => {
            match context {
                // Whatever an error quotes (an agent's words, a remote
                // file's name) prints as one inert line.
                Some(target) => say!(
                    "ctl: {target}: {}",
                    crate::plain::agent_text(&e.to_string())
                ),
                None => say!("ctl: {}", crate::plain::agent_text(&e.to_string())),
            }
            ExitCode::from(EXIT_CTL_ERROR)
        }
    }
}

/// clap's message for bad usage as our one line: its first line without
/// the `error:` tag, then where to look (clap adds a usage block and tips).
fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    // The message is the first paragraph (a list of missing arguments
    // continues it on indented lines); the usage block and tips follow.
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("tip:"))
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error:").unwrap_or(&message).trim();
    let message = if message.is_empty() {
        "bad usage"
    } else {
        message
    };
    format!("{message} (see ctl --help)")
}

/// An error with the target it concerns, if any.
type Failure = (Option<String>, CtlError);

fn plain(e: CtlError) -> Failure {
    (None, e)
}

fn keygen(config: &ConfigDir) -> Result<u8, Failure> {
    let identity = Identity::create(&config.identity()).map_err(|e| plain(e.into()))?;
    say!("created client identity in {}", config.path().display());
    print_out(&format!("{}\n", identity.fingerprint))
}

fn load_identity(config: &ConfigDir) -> Result<Identity, Failure> {
    let paths = config.identity();
    match Identity::load(&paths) {
        Ok(identity) => Ok(identity),
        Err(IdentityError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(plain(CtlError::NoIdentity(paths.private_key)))
        }
        Err(e) => Err(plain(e.into())),
    }
}

fn load_known_hosts(config: &ConfigDir) -> Result<KnownHosts, Failure> {
    let path = config.known_hosts();
    let hosts = KnownHosts::load(&path).map_err(|source| {
        plain(CtlError::KnownHosts {
            path: path.clone(),
            source,
        })
    })?;
    for line in hosts.malformed() {
        say!(
            "ctl: {}:{line}: not HOST:PORT SHA256:<fingerprint>; line ignored",
            path.display()
        );
    }
    Ok(hosts)
}

fn exec(config: &ConfigDir, inventory: Option<&Path>, args: ExecArgs) -> Result<u8, Failure> {
    let single = target::is_single(&args.target)
        && args.exclude.is_empty()
        && !args.gather
        && !args.json
        && args.out_dir.is_none();
    if !single {
        return exec_many(config, inventory, args);
    }
    let spec =
        TargetSpec::parse(&args.target).map_err(|e| plain(CtlError::Usage(e.to_string())))?;
    let mut target = load_inventory(config, inventory)?.complete(spec);
    if args.user.is_some() {
        target.user = args.user.clone();
    }
    let command = command_line(&args.command).map_err(plain)?;
    let client = Client {
        identity: load_identity(config)?,
        known_hosts: Mutex::new(load_known_hosts(config)?),
        strict_host_key: args.strict_host_key,
        connect_timeout: args.connect_timeout,
    };
    let request = ExecRequest {
        command,
        env: args.env,
        cwd: args.cwd,
        user: target.user.clone(),
        timeout: no_limit_if_zero(args.timeout),
        stdin: args.stdin || args.tty,
        pty: args.tty.then(tty::pty_request),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            plain(CtlError::Local(format!(
                "cannot start the runtime: {}",
                crate::plain::io_error(&e)
            )))
        })?;
    let deadline = no_answer_deadline(request.timeout, args.connect_timeout);
    let outcome = runtime.block_on(async {
        let run = exec::exec_streaming(&client, &target, request);
        match deadline {
            Some(Deadline::NoAnswer(limit)) => tokio::time::timeout(limit, run)
                .await
                .unwrap_or(Err(CtlError::NoAnswer(limit))),
            _ => run.await,
        }
    });
    // The stdin reader thread may be blocked in a read; do not wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(ExecOutcome::Finished(status)) => {
            if status == rexec_protocol::ExitStatus::TimedOut {
                say!("ctl: {target}: command timed out; its process group was killed");
            }
            Ok(exit_code(status))
        }
        Ok(ExecOutcome::BrokenPipe) => Ok(EXIT_BROKEN_PIPE),
        Ok(ExecOutcome::Interrupted) => Ok(EXIT_INTERRUPTED),
        Err(e) => Err((Some(target.to_string()), e)),
    }
}

fn load_inventory(config: &ConfigDir, explicit: Option<&Path>) -> Result<Inventory, Failure> {
    Inventory::load(explicit, config).map_err(|e| plain(CtlError::Usage(e.to_string())))
}

fn resolve(
    config: &ConfigDir,
    inventory: Option<&Path>,
    list: &str,
    exclude: &[String],
) -> Result<Vec<Target>, Failure> {
    load_inventory(config, inventory)?
        .resolve(list, exclude)
        .map_err(|e| plain(CtlError::Usage(e.to_string())))
}

fn hosts(config: &ConfigDir, inventory: Option<&Path>, args: HostsArgs) -> Result<u8, Failure> {
    let targets = resolve(config, inventory, &args.targets, &args.exclude)?;
    let text = if args.fold {
        let names: Vec<String> = targets.iter().map(Target::minimal).collect();
        nodeset::fold(names.iter().map(String::as_str)) + "\n"
    } else {
        targets.iter().map(|t| t.minimal() + "\n").collect()
    };
    print_out(&text)
}

/// Writes `text` to our stdout: 0 once written, 141 when its reader went
/// away, an error when it could not take it (a full disk).
fn print_out(text: &str) -> Result<u8, Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(EXIT_BROKEN_PIPE),
        Err(e) => Err(plain(CtlError::write_failed("to stdout", &e))),
    }
}

/// How a multi-host run ended, beyond each host's result.
struct RunEnd {
    tally: Tally,
    /// The signal (SIGINT, SIGTERM or SIGHUP) that cancelled the run, if any.
    interrupted: Option<i32>,
}

/// The longest ctl waits at exit for copies' disk threads to clean up.
const DISK_CLEANUP: Duration = Duration::from_secs(5);

/// Runs `job` on every target through the fan-out engine on a fresh
/// runtime, Ctrl-C (or SIGTERM, SIGHUP) cancelling the run; `done` sees
/// each host's result.
fn drive<T, J, F>(
    targets: &[Target],
    labels: &Labels,
    fanout: &Fanout,
    console: &Console,
    job: J,
    mut done: impl FnMut(HostResult<T>),
) -> Result<RunEnd, Failure>
where
    T: Finished,
    J: Fn(usize, Target) -> F,
    F: Future<Output = Result<T, CtlError>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
        .enable_all()
        .build()
        .map_err(|e| {
            plain(CtlError::Local(format!(
                "cannot start the runtime: {}",
                crate::plain::io_error(&e)
            )))
        })?;
    let interrupted = Arc::new(AtomicI32::new(0));
    let mut tally = Tally::default();
    runtime.block_on(async {
        let cancel = fanout.cancel.clone();
        let flag = interrupted.clone();
        tokio::spawn(async move {
            if let Some(signal) = first_stop_signal().await {
                flag.store(signal, Ordering::Relaxed);
                cancel.cancel();
            }
        });
        fanout
            .run(targets, console, job, |result| {
                tally.add(&labels[result.index], &result);
                done(result);
            })
            .await;
    });
    // Copies' disk threads remove a half-written file once their job is
    // dropped (Ctrl-C, a deadline): let them, within reason.
    runtime.shutdown_timeout(DISK_CLEANUP);
    console.finish();
    Ok(RunEnd {
        tally,
        interrupted: Some(interrupted.load(Ordering::Relaxed)).filter(|&s| s != 0),
    })
}

/// The exit code of a multi-host run, after its summary line.
fn conclude(end: &RunEnd, console: &Console) -> u8 {
    // Lost output is a failure of the whole run, whatever the hosts did:
    // that line says it all (the hosts it cut short are no news).
    if let Some(what) = console.output_lost() {
        say!("ctl: {what}");
        return EXIT_CTL_ERROR;
    }
    if console.broken_pipe() {
        return EXIT_BROKEN_PIPE;
    }
    if let Some(summary) = end.tally.summary() {
        say!("ctl: {summary}");
    }
    match end.interrupted {
        // 128 + the signal, as a shell reports a command the signal ended:
        // 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP.
        Some(signal) => u8::try_from(128 + signal).unwrap_or(EXIT_INTERRUPTED),
        None => end.tally.exit_code(),
    }
}

/// Waits for the first SIGINT, SIGTERM or SIGHUP that ctl was not started
/// with ignored and returns its number; `None` when the handlers cannot be
/// installed (the run then goes on, and the signal's default action applies).
async fn first_stop_signal() -> Option<i32> {
    let mut signals = signals::StopSignals::new().ok()?;
    Some(signals.next().await as i32)
}

fn client(
    config: &ConfigDir,
    strict_host_key: bool,
    connect_timeout: Duration,
) -> Result<Client, Failure> {
    Ok(Client {
        identity: load_identity(config)?,
        known_hosts: Mutex::new(load_known_hosts(config)?),
        strict_host_key,
        connect_timeout,
    })
}

/// `--timeout 0` asks for no limit, as GNU timeout reads it (and the
/// agent too).
fn no_limit_if_zero(timeout: Option<Duration>) -> Option<Duration> {
    timeout.filter(|t| !t.is_zero())
}

/// How long ctl waits for an exec's end before it takes the agent as
/// unresponsive: the agent enforces the timeout itself, so only an agent
/// that stopped answering gets this far. None without a timeout: a command
/// may run for hours, and keepalives notice a vanished agent.
fn no_answer_deadline(timeout: Option<Duration>, connect: Duration) -> Option<Deadline> {
    timeout.map(|t| Deadline::NoAnswer(t.saturating_add(connect).saturating_add(DEADLINE_SLACK)))
}

fn exec_many(config: &ConfigDir, inventory: Option<&Path>, args: ExecArgs) -> Result<u8, Failure> {
    if args.stdin || args.tty {
        return Err(plain(CtlError::Usage(
            "-i/--stdin and -t/--tty work with a single target only".into(),
        )));
    }
    let mut targets = resolve(config, inventory, &args.target, &args.exclude)?;
    if let Some(user) = &args.user {
        for target in &mut targets {
            target.user = Some(user.clone());
        }
    }
    let command = command_line(&args.command).map_err(plain)?;
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            plain(CtlError::Local(format!(
                "cannot create {}: {}",
                dir.display(),
                crate::plain::io_error(&e)
            )))
        })?;
    }
    let client = Arc::new(client(config, args.strict_host_key, args.connect_timeout)?);
    let request = ExecRequest {
        command,
        env: args.env,
        cwd: args.cwd,
        timeout: no_limit_if_zero(args.timeout),
        ..ExecRequest::default()
    };
    let labels: Labels = fanout::labels(&targets).into();
    let fanout = Fanout {
        limit: args.fanout,
        deadline: no_answer_deadline(request.timeout, args.connect_timeout),
        cancel: CancellationToken::new(),
    };
    let console = Arc::new(Console::new(targets.len(), fanout.cancel.clone()));
    let output: Arc<dyn Output<rexec_protocol::ExitStatus>> = if args.gather {
        Arc::new(Gathered::new(console.clone(), labels.clone()))
    } else if args.json {
        Arc::new(JsonLines::new(console.clone(), labels.clone()))
    } else if let Some(dir) = args.out_dir {
        Arc::new(OutDir::new(console.clone(), labels.clone(), dir))
    } else {
        Arc::new(Prefixed::new(console.clone(), labels.clone()))
    };
    let end = drive(
        &targets,
        &labels,
        &fanout,
        &console,
        |index, target| {
            let mut request = request.clone();
            request.user = target.user.clone();
            fanout::exec::run(client.clone(), target, request, index, output.clone())
        },
        |result| output.done(&result),
    )?;
    output.end();
    Ok(conclude(&end, &console))
}

fn ping(config: &ConfigDir, inventory: Option<&Path>, args: PingArgs) -> Result<u8, Failure> {
    let targets = resolve(config, inventory, &args.targets, &args.exclude)?;
    let client = Arc::new(client(config, args.strict_host_key, args.connect_timeout)?);
    let labels: Labels = fanout::labels(&targets).into();
    let fanout = Fanout {
        limit: args.fanout,
        // Connect is bounded by the client; the round trip gets as long again.
        deadline: Some(Deadline::NoAnswer(args.connect_timeout.saturating_mul(2))),
        cancel: CancellationToken::new(),
    };
    let console = Console::new(targets.len(), fanout.cancel.clone());
    let end = drive(
        &targets,
        &labels,
        &fanout,
        &console,
        |_, target| {
            let client = client.clone();
            async move { ping::ping(&client, &target).await }
        },
        |result| {
            let label = &labels[result.index];
            if args.json {
                let line = serde_json::Value::Object(output::record(label, &result)).to_string();
                console.write(Stream::Stdout, (line + "\n").as_bytes());
                return;
            }
            if let Ok(pong) = &result.outcome {
                let line = format!("{label}: {}\n", pong.line());
                console.write(Stream::Stdout, line.as_bytes());
            } else if let Some(note) = output::host_note(label, &result) {
                console.note(&note);
            }
        },
    )?;
    Ok(conclude(&end, &console))
}

fn cp(config: &ConfigDir, inventory: Option<&Path>, args: CpArgs) -> Result<u8, Failure> {
    let usage = |m: &str| plain(CtlError::Usage(m.to_owned()));
    let (last, sources) = args
        .paths
        .split_last()
        .ok_or_else(|| usage("ctl cp needs a source and a destination"))?;
    let remote_sources: Vec<_> = sources
        .iter()
        .filter_map(|s| copy::remote_operand(s))
        .collect();
    let pushing = copy::remote_operand(last);
    let (targets_text, direction) = match (&pushing, remote_sources.as_slice()) {
        (Some(dest), []) => (dest.targets.clone(), true),
        (None, [source]) if sources.len() == 1 => (source.targets.clone(), false),
        (Some(_), _) => return Err(usage("copy either to remote hosts or from them, not both")),
        (None, []) => return Err(usage("one side of ctl cp must be remote: TARGETS:/PATH")),
        (None, _) => {
            return Err(usage(
                "pull one remote path at a time: ctl cp TARGETS:/PATH LOCAL_DIR",
            ));
        }
    };
    let targets = resolve(config, inventory, &targets_text, &args.exclude)?;
    let client = Arc::new(client(config, args.strict_host_key, args.connect_timeout)?);
    let labels: Labels = fanout::labels(&targets).into();
    let fanout = Fanout {
        limit: args.fanout,
        // ctl itself enforces a copy's timeout, from the start of the
        // host's job (connecting included); 0 means none, as for exec.
        deadline: no_limit_if_zero(args.timeout).map(Deadline::Timeout),
        cancel: CancellationToken::new(),
    };
    let console = Console::new(targets.len(), fanout.cancel.clone());
    let report = |result: HostResult<copy::Copied>| {
        let label = &labels[result.index];
        if args.json {
            let line = serde_json::Value::Object(output::record(label, &result)).to_string();
            console.write(Stream::Stdout, (line + "\n").as_bytes());
        } else if let Some(note) = output::host_note(label, &result) {
            console.note(&note);
        } else if let Ok(copied) = &result.outcome {
            for note in copied.notes() {
                console.note(&format!("{label}: {note}"));
            }
        }
    };
    let options = copy::CopyOptions {
        recursive: args.recursive,
        preserve_owner: args.preserve_owner,
    };
    let end = if direction {
        let dest = pushing.map(|d| d.path).unwrap_or_default();
        let sources: Arc<[PathBuf]> = sources.iter().map(PathBuf::from).collect();
        drive(
            &targets,
            &labels,
            &fanout,
            &console,
            |_, target| {
                let (client, sources, dest) = (client.clone(), sources.clone(), dest.clone());
                async move { copy::push(&client, &target, &sources, options, &dest).await }
            },
            report,
        )?
    } else {
        let path = remote_sources
            .first()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        let local = PathBuf::from(last);
        // From one host, as cp does: into an existing directory, else the
        // new name. From several, one directory per host inside LOCAL_DIR.
        let into: Vec<copy::LocalDestination> = if targets.len() > 1 {
            if !local.is_dir() {
                return Err(usage(&format!(
                    "{} is not a directory (a pull from several hosts needs one)",
                    local.display()
                )));
            }
            labels
                .iter()
                .map(|label| copy::LocalDestination::HostDirectory {
                    dir: local.clone(),
                    label: label.clone(),
                })
                .collect()
        } else {
            vec![copy::LocalDestination::Path(local)]
        };
        let into: Arc<[copy::LocalDestination]> = into.into();
        drive(
            &targets,
            &labels,
            &fanout,
            &console,
            |index, target| {
                let (client, into, path) = (client.clone(), into.clone(), path.clone());
                async move { copy::pull(&client, &target, &path, options, &into[index]).await }
            },
            report,
        )?
    };
    Ok(conclude(&end, &console))
}

fn known_hosts(
    config: &ConfigDir,
    inventory: Option<&Path>,
    action: KnownHostsAction,
) -> Result<u8, Failure> {
    let mut hosts = load_known_hosts(config)?;
    match action {
        KnownHostsAction::List => {
            let text: String = hosts
                .entries()
                .iter()
                .map(|(host, fingerprint)| format!("{host} {fingerprint}\n"))
                .collect();
            print_out(&text)
        }
        KnownHostsAction::Remove { host } => {
            // The port the host is reached on: the inventory's, unless given.
            let spec =
                TargetSpec::parse(&host).map_err(|e| plain(CtlError::Usage(e.to_string())))?;
            let key = load_inventory(config, inventory)?
                .complete(spec)
                .host_port();
            let path = hosts.path().to_path_buf();
            let removed = hosts
                .remove(&key)
                .map_err(|source| plain(CtlError::KnownHosts { path, source }))?;
            if removed == 0 {
                return Err(plain(CtlError::Usage(format!(
                    "{key} is not in known hosts"
                ))));
            }
            say!("removed {key} from {}", hosts.path().display());
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_word_is_a_command_line_several_are_quoted() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_line(&words(&["echo a; exit 3"])).unwrap(),
            "echo a; exit 3"
        );
        let several = words(&["printf", "%s\\n", "a b", "c", "$HOME", "it's"]);
        let line = command_line(&several).unwrap();
        assert_eq!(shlex::split(&line).unwrap(), several, "{line}");
        assert!(command_line(&words(&["a", "b\0"])).is_err());
    }
}
