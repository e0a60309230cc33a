//! `ctl`, the rexec command line client, as a library: the binary's `main`
//! only calls [`main`].
//!
//! Commands: `keygen` and `id` (our identity), `exec` (run a command on a
//! target, streaming its output and passing its exit status through), and
//! `known-hosts` (list or remove agents' recorded fingerprints).

pub mod config;
pub mod connect;
pub mod error;
pub mod exec;
pub mod fanout;
pub mod inventory;
pub mod known_hosts;
pub mod nodeset;
pub mod output;
pub mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rexec_protocol::{ExecRequest, Identity, IdentityError};

use crate::config::ConfigDir;
use crate::connect::Client;
use crate::error::{CtlError, EXIT_BROKEN_PIPE, EXIT_CTL_ERROR, EXIT_INTERRUPTED, exit_code};
use crate::exec::ExecOutcome;
use crate::known_hosts::KnownHosts;
use crate::target::Target;

const EXIT_STATUS_HELP: &str = "\
Exit status of ctl exec:
  N      the remote command exited with N
  128+N  the remote command was killed by signal N
  124    --timeout expired (the remote process group was killed)
  130    interrupted by a second Ctrl-C (the remote group was sent SIGKILL)
  141    our stdout was closed by its reader (ctl ... | head)
  255    ctl could not run the command (bad usage, unreachable, host key
         changed, not authorized, protocol error); one line on stderr says which";

/// Run commands on rexec agents.
#[derive(Debug, Parser)]
#[command(name = "ctl", version, after_help = EXIT_STATUS_HELP)]
struct Cli {
    /// Directory with ctl's identity and known hosts
    /// [default: $XDG_CONFIG_HOME/rexec or ~/.config/rexec]
    #[arg(long, global = true, env = "REXEC_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create this client's identity and print its fingerprint.
    Keygen,
    /// Print this client's fingerprint (what an agent admin authorizes).
    Id,
    /// Run a command on a target: ctl exec HOST[:PORT] COMMAND...
    #[command(after_help = EXIT_STATUS_HELP)]
    Exec(ExecArgs),
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
        /// HOST or HOST:PORT
        host: String,
    },
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    /// Forward our stdin to the command (otherwise its stdin is empty).
    #[arg(short = 'i', long = "stdin")]
    stdin: bool,
    /// Kill the remote command's process group after this long (e.g. 30s, 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Bound on connecting and the TLS handshake.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
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
    /// HOST, HOST:PORT or USER@HOST[:PORT]; default port 7722.
    target: String,
    /// The command: one argument is a shell command line; several are quoted
    /// and joined, so they arrive as exactly those words.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
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
            .map_err(|e| CtlError::Usage(format!("cannot quote the command: {e}"))),
    }
}

/// Runs ctl with the process's arguments; returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage_error = e.use_stderr();
            let _ = e.print();
            return ExitCode::from(if usage_error { EXIT_CTL_ERROR } else { 0 });
        }
    };
    let config = ConfigDir::locate(cli.config_dir);
    let result = match cli.command {
        Command::Keygen => keygen(&config),
        Command::Id => load_identity(&config).map(|identity| {
            println!("{}", identity.fingerprint);
            0
        }),
        Command::Exec(args) => exec(&config, args),
        Command::KnownHosts { action } => known_hosts(&config, action),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err((context, e)) => {
            match context {
                Some(target) => eprintln!("ctl: {target}: {e}"),
                None => eprintln!("ctl: {e}"),
            }
            ExitCode::from(EXIT_CTL_ERROR)
        }
    }
}

/// An error with the target it concerns, if any.
type Failure = (Option<String>, CtlError);

fn plain(e: CtlError) -> Failure {
    (None, e)
}

fn keygen(config: &ConfigDir) -> Result<u8, Failure> {
    let identity = Identity::create(&config.identity(), "ctl").map_err(|e| plain(e.into()))?;
    eprintln!("created client identity in {}", config.path().display());
    println!("{}", identity.fingerprint);
    Ok(0)
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
    KnownHosts::load(&path).map_err(|source| plain(CtlError::KnownHosts { path, source }))
}

fn exec(config: &ConfigDir, args: ExecArgs) -> Result<u8, Failure> {
    let mut target =
        Target::parse(&args.target).map_err(|e| plain(CtlError::Usage(e.to_string())))?;
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
        timeout: args.timeout,
        stdin: args.stdin,
        pty: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            plain(CtlError::ConnectionLost(format!(
                "cannot start the runtime: {e}"
            )))
        })?;
    let outcome = runtime.block_on(exec::exec_streaming(&client, &target, request));
    // The stdin reader thread may be blocked in a read; do not wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(ExecOutcome::Finished(status)) => {
            if status == rexec_protocol::ExitStatus::TimedOut {
                eprintln!("ctl: {target}: command timed out; its process group was killed");
            }
            Ok(exit_code(status))
        }
        Ok(ExecOutcome::BrokenPipe) => Ok(EXIT_BROKEN_PIPE),
        Ok(ExecOutcome::Interrupted) => Ok(EXIT_INTERRUPTED),
        Err(e) => Err((Some(target.to_string()), e)),
    }
}

fn known_hosts(config: &ConfigDir, action: KnownHostsAction) -> Result<u8, Failure> {
    let mut hosts = load_known_hosts(config)?;
    match action {
        KnownHostsAction::List => {
            for (host, fingerprint) in hosts.entries() {
                println!("{host} {fingerprint}");
            }
            Ok(0)
        }
        KnownHostsAction::Remove { host } => {
            let key = Target::parse(&host)
                .map_err(|e| plain(CtlError::Usage(e.to_string())))?
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
            eprintln!("removed {key} from {}", hosts.path().display());
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
