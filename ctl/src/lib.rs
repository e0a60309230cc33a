//! `ctl`, the rexec command line client, as a library: the binary's `main`
//! only calls [`main`], which parses the command line (`cli`) and
//! dispatches to the command's body (`cmd`).
//!
//! Commands: `keygen` and `id` (our identity), `exec` (run a command on a
//! target, streaming its output and passing its exit status through, or on
//! many targets at once), `hosts` (expand a target list), `ping` (check
//! agents), `cp` (copy files to or from many hosts), and `known-hosts`
//! (list or remove agents' recorded fingerprints).
//!
//! `exec` keeps the raw single-host path (`host::stream`) when its target
//! is exactly one literal host (no comma, range, `@group`, `!` or `-x`) and
//! no multi-host output mode (`-b`, `--json`, `-o`) is asked for; anything
//! else goes through the fan-out engine (`fanout`), the per-host exec job
//! (`host::exec`) and an output mode (`output`).

/// `eprintln!` that never panics: when our stderr cannot be written there
/// is nowhere left to tell, and the exit status still says what happened.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod broker;
pub mod broker_config;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod connect;
pub mod console;
pub mod error;
pub mod fanout;
pub mod host;
pub mod inventory;
pub mod known_hosts;
pub mod limits;
pub mod liveness;
pub mod nodeset;
pub mod outcome;
pub mod output;
pub mod plain;
pub mod signals;
pub mod sources;
pub mod target;
pub mod tty;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command, Deferred, usage_line};
use crate::config::ConfigDir;
use crate::error::EXIT_CTL_ERROR;

/// The process's arguments, as `Cli::try_parse` reads them, except that
/// the clap command tree is left to the process's exit instead of being
/// freed here: a few thousand allocations fewer to undo on every run
/// (BENCHMARKS.md, "ctl's command line").
fn parse() -> Result<Cli, clap::Error> {
    let mut command = Cli::command();
    let parsed = command
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|mut matches| {
            Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command))
        });
    std::mem::forget(command);
    parsed
}

/// Runs ctl with the process's arguments; returns its exit code.
pub fn main() -> ExitCode {
    limits::raise_open_files();
    let cli = match parse() {
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
    let globals = cmd::Globals {
        config: ConfigDir::locate(cli.config_dir),
        inventory: cli.inventory.as_deref(),
        broker: cli.broker.as_deref(),
    };
    let result = match cli.command {
        Command::Keygen => cmd::identity::keygen(&globals.config),
        Command::Id => cmd::identity::id(&globals.config),
        Command::Exec(Deferred(args)) => cmd::exec::exec(&globals, args),
        Command::Hosts(Deferred(args)) => cmd::hosts::hosts(&globals, args),
        Command::Ping(Deferred(args)) => cmd::ping::ping(&globals, args),
        Command::Cp(Deferred(args)) => cmd::cp::cp(&globals, args),
        Command::KnownHosts(Deferred(args)) => cmd::known_hosts::known_hosts(&globals, args.action),
        Command::Job(Deferred(args)) => cmd::job::job(&globals, args.action),
        Command::Completions { shell } => cmd::docs::completions(shell),
        Command::ManPages { dir } => cmd::docs::man_pages(&dir),
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
