//! The command line: clap's definitions, the help text, the flag groups
//! several commands share, and the parsers of flag values. Nothing here
//! runs a command; `crate::cmd` does.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::CtlError;
use crate::fanout::DEFAULT_FANOUT;

pub mod job;

pub const EXIT_STATUS_HELP: &str = "\
Exit status of ctl exec (one target):
  N      the remote command exited with N
  128+N  the remote command was killed by signal N
  124    --timeout expired (the remote process group was killed)
  130    interrupted by a second Ctrl-C (the remote group was sent SIGKILL)
  141    our stdout was closed by its reader (ctl ... | head)
  255    ctl could not run the command (bad usage, unreachable, host key
         changed, not authorized, protocol error, the agent stopped answering,
         not connected to the broker, session lost through the broker)
         or could not write its output; one line on stderr says which
Several targets: 0 when every host exited 0, else the largest per-host code
(a host ctl could not run on counts as 255, a timed out one as 124), with a
one-line summary of the failed hosts on stderr; 130, 143 or 129 when Ctrl-C,
SIGTERM or SIGHUP ended the run.";

/// Run commands on rexec agents.
#[derive(Debug, Parser)]
// An option given twice takes its last value (an alias that sets
// `--timeout 30s`, then `--timeout 5m` typed after it), as GNU tools and
// git do; options that gather values (`-e`, `-x`) still gather them.
#[command(name = "ctl", version, after_help = EXIT_STATUS_HELP, args_override_self = true)]
pub struct Cli {
    /// Directory with ctl's identity and known hosts
    /// [default: $XDG_CONFIG_HOME/rexec or ~/.config/rexec]
    #[arg(long, global = true, env = "REXEC_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Inventory of groups and per-host settings
    /// [default: hosts.toml in the config directory]
    #[arg(long, global = true, env = "REXEC_INVENTORY", value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Reach agents through this NATS broker (nats://HOST:PORT or
    /// tls://HOST:PORT; several, comma-separated, are tried in turn): every
    /// target is then an agent's name on the broker
    /// [default: hosts.toml's [broker] url]
    #[arg(long, global = true, env = "REXEC_BROKER", value_name = "URL[,URL...]")]
    pub broker: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this client's identity and print its fingerprint.
    Keygen,
    /// Print this client's fingerprint (what an agent admin authorizes).
    Id,
    /// Run a command on one host or many: ctl exec TARGETS COMMAND...
    #[command(after_help = EXIT_STATUS_HELP)]
    Exec(Deferred<ExecArgs>),
    /// Print the hosts a target list expands to, one per line.
    Hosts(Deferred<HostsArgs>),
    /// Check that agents answer: handshake and one round trip per host.
    Ping(Deferred<PingArgs>),
    /// Copy files: ctl cp [-r] LOCAL... TARGETS:/PATH, or
    /// ctl cp [-r] TARGETS:/PATH LOCAL_DIR.
    #[command(after_help = COPY_HELP)]
    Cp(Deferred<CpArgs>),
    /// List or remove the agents' fingerprints recorded on first contact.
    KnownHosts(Deferred<KnownHostsArgs>),
    /// Detached jobs (ctl exec --detach): list, output, wait, kill, forget.
    #[command(after_help = job::JOB_HELP)]
    Job(Deferred<JobArgs>),
    /// Print a completion script for a shell: bash, zsh or fish
    /// (e.g. ctl completions bash > /etc/bash_completion.d/ctl).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write ctl's man pages (ctl.1, ctl-exec.1, ...) into DIR; for
    /// packaging (scripts/install.sh, the Debian package).
    #[command(hide = true)]
    ManPages {
        /// Where the pages go (created if missing).
        dir: PathBuf,
    },
}

/// A subcommand's arguments, added to its clap command only once that
/// subcommand is the one given (`Command::defer`). Every run of ctl used to
/// build the arguments of all its commands to parse one: with this, `ctl
/// exec` builds exec's alone, about 250,000 instructions fewer per run
/// (callgrind of `ctl exec HOST true`: BENCHMARKS.md, "ctl's command line").
/// Help, man pages and completions build the whole tree as before.
#[derive(Debug)]
pub struct Deferred<T>(pub T);

impl<T: clap::FromArgMatches> clap::FromArgMatches for Deferred<T> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Deferred)
    }

    fn from_arg_matches_mut(matches: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(matches).map(Deferred)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }

    fn update_from_arg_matches_mut(
        &mut self,
        matches: &mut clap::ArgMatches,
    ) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(matches)
    }
}

thread_local! {
    /// Set while [`whole_command`] builds the tree for the documents (man
    /// pages, completions): they walk all of it, and list each command's
    /// own arguments before the global ones only in a tree built at once.
    static EAGER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The whole command tree, built at once, for the documents.
pub fn whole_command() -> clap::Command {
    EAGER.set(true);
    let command = <Cli as clap::CommandFactory>::command();
    EAGER.set(false);
    command
}

impl<T: clap::Args> clap::Args for Deferred<T> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        if EAGER.get() {
            return T::augment_args(cmd);
        }
        cmd.defer(|cmd| keeping_about(cmd, T::augment_args))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        if EAGER.get() {
            return T::augment_args_for_update(cmd);
        }
        cmd.defer(|cmd| keeping_about(cmd, T::augment_args_for_update))
    }
}

/// `augment` applied to `cmd`, whose help text (set from the subcommand's
/// own doc comment before the arguments come) stays: the arguments'
/// struct would set its own.
fn keeping_about(cmd: clap::Command, augment: fn(clap::Command) -> clap::Command) -> clap::Command {
    let about = cmd.get_about().cloned();
    let long_about = cmd.get_long_about().cloned();
    let cmd = augment(cmd);
    let cmd = match about {
        Some(about) => cmd.about(about),
        None => cmd.about(None::<&str>),
    };
    match long_about {
        Some(long_about) => cmd.long_about(long_about),
        None => cmd.long_about(None::<&str>),
    }
}

/// `ctl known-hosts`.
#[derive(Debug, clap::Args)]
pub struct KnownHostsArgs {
    /// What to do with them.
    #[command(subcommand)]
    pub action: KnownHostsAction,
}

/// `ctl job`.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: job::JobAction,
}

#[derive(Debug, Subcommand)]
pub enum KnownHostsAction {
    /// Print every recorded host and fingerprint.
    List,
    /// Forget a host's fingerprint (after a legitimate re-install).
    Remove {
        /// HOST or HOST:PORT (without a port: the inventory's, else 7722);
        /// with a broker given, NAME is the agent of that name on it
        /// (as is broker/NAME, the entry as `list` shows it)
        host: String,
    },
}

/// Which hosts of a target list to leave out: every command that takes
/// a target list has this.
#[derive(Debug, clap::Args)]
pub struct Exclude {
    /// Remove the hosts this target list names, operators included
    /// (repeatable).
    #[arg(short = 'x', long = "exclude", value_name = "TARGETS")]
    pub exclude: Vec<String>,
}

/// How a command that talks to many hosts reaches them.
#[derive(Debug, clap::Args)]
pub struct Reach {
    /// Most hosts at once.
    #[arg(short = 'f', long, default_value_t = DEFAULT_FANOUT, value_parser = parse_fanout)]
    pub fanout: usize,
    /// Bound on connecting and the TLS handshake.
    #[arg(long, value_parser = parse_connect_timeout, default_value = "5s")]
    pub connect_timeout: Duration,
    /// Refuse hosts that are not in known hosts instead of trusting them on
    /// first use.
    #[arg(long)]
    pub strict_host_key: bool,
}

/// When a run that starts work on its hosts stops starting more: exec,
/// ping and cp have it. Requests about jobs already started (`ctl job`)
/// do not: a kill that stopped halfway would leave the job running.
#[derive(Debug, clap::Args)]
pub struct Rolling {
    /// Start no more hosts once K have failed (a rolling run, with
    /// --fanout as the batch); the rest are reported "not started" (255).
    #[arg(long, value_name = "K", value_parser = parse_fanout)]
    pub max_failures: Option<usize>,
}

/// `ctl exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Forward our stdin to the command (otherwise its stdin is empty);
    /// with several targets, every host gets all of it.
    #[arg(short = 'i', long = "stdin")]
    pub stdin: bool,
    /// Run the command on a remote pseudo-terminal (for top, sudo, vim):
    /// our terminal goes to raw mode, keys and window size are forwarded,
    /// stdout and stderr arrive merged, as on a terminal. Implies -i.
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// Kill the remote command's process group after this long (e.g. 30s,
    /// 5m); 0 means no limit, as with GNU timeout.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Set a variable in the command's environment (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory for the command [default: the user's home].
    #[arg(short = 'C', long = "cwd", value_name = "DIR")]
    pub cwd: Option<String>,
    /// Run as this user (also: USER@HOST).
    #[arg(short = 'u', long, value_parser = parse_user)]
    pub user: Option<String>,
    /// Start the command as a detached job and print its id (the same on
    /// every host) once every agent has it running; see `ctl job --help`.
    #[arg(
        short = 'd',
        long,
        conflicts_with_all = [
            "stdin", "tty", "gather", "gather_all", "by_host", "diff", "no_prefix", "out_dir",
            "max_output",
        ]
    )]
    pub detach: bool,
    #[command(flatten)]
    pub reach: Reach,
    #[command(flatten)]
    pub rolling: Rolling,
    #[command(flatten)]
    pub exclude: Exclude,
    /// After all hosts finish, print each distinct stdout once, under the
    /// set of hosts that produced it.
    #[arg(short = 'b', long, conflicts_with_all = ["json", "out_dir"])]
    pub gather: bool,
    /// One JSON object per host per line, as each finishes.
    #[arg(long, conflicts_with = "out_dir")]
    pub json: bool,
    /// Write DIR/HOST.out, DIR/HOST.err and DIR/summary.jsonl.
    #[arg(short = 'o', long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Lines without the `host: ` prefix (and -b without headers).
    #[arg(short = 'N', long, conflicts_with_all = ["json", "out_dir", "diff"])]
    pub no_prefix: bool,
    /// After all hosts finish, each host's lines together, `host: ` before
    /// each, hosts in node order.
    #[arg(short = 'L', long, conflicts_with_all = ["gather", "json", "out_dir", "diff"])]
    pub by_host: bool,
    /// Like -b with stderr gathered too, in the order it came (with -L or
    /// --diff: stderr gathered with stdout there).
    #[arg(short = 'B', long, conflicts_with_all = ["json", "out_dir"])]
    pub gather_all: bool,
    /// After all hosts finish, a unified diff of each distinct stdout
    /// against the most common one, headed by the hosts' node sets.
    #[arg(long, conflicts_with_all = ["gather", "json", "out_dir"])]
    pub diff: bool,
    /// Most bytes of each host's stdout and of its stderr that --json
    /// embeds (512K, 4M, 1GiB; 0: none); the rest is counted in
    /// stdout_omitted and stderr_omitted. Only with --json.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size, requires = "json")]
    pub max_output: usize,
    #[command(flatten)]
    pub select: Select,
    /// HOST, HOST:PORT or USER@HOST[:PORT] (default port 7722), or a list:
    /// node[01-20],@group,!node07 (see `ctl hosts --help`).
    #[arg(value_name = "TARGETS")]
    pub target: String,
    /// The command: one argument is a shell command line; several are quoted
    /// and joined, so they arrive as exactly those words.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub const TARGETS_HELP: &str = "\
TARGETS is a comma-separated list of:
  host, host:port, user@host, [v6addr]:port    one host
  node[01-20], rack[1-3]-n[1,3,5-7]            ranges (zero padding kept)
  @name, @source:name, @source:*               a group from the inventory or a source
  ^FILE                                        hosts from a file, one per line
  !node07, !@name                              exclusions from the whole list
Between two names, as ClusterShell's nodeset reads them from left to right:
  a,b  union   a!b  difference   a&b  intersection   a^b  symmetric difference
A bracket holding a ':' is an IPv6 address, any other bracket a range.";

/// Which of the resolved hosts a command runs on.
#[derive(Debug, clap::Args)]
pub struct Select {
    /// Only N of the hosts, chosen at random (kept in list order).
    #[arg(long, value_name = "N", value_parser = parse_fanout)]
    pub pick: Option<usize>,
}

/// `ctl hosts`.
#[derive(Debug, clap::Args)]
#[command(after_help = TARGETS_HELP)]
pub struct HostsArgs {
    #[command(flatten)]
    pub exclude: Exclude,
    /// Print the hosts folded into one node set instead (node[01-05,07]).
    #[arg(long)]
    pub fold: bool,
    /// Only the agents connected to the broker now (all of them without
    /// TARGETS), in node order.
    #[arg(long, conflicts_with = "groups")]
    pub online: bool,
    /// With --online: one JSON object per agent (name, fingerprint, version).
    #[arg(long, requires = "online", conflicts_with = "fold")]
    pub json: bool,
    /// With --online: how long to wait for the agents' answers (e.g. 5s;
    /// default 1s); an agent that answers later is not listed.
    #[arg(long, value_name = "DURATION", requires = "online", value_parser = parse_wait)]
    pub wait: Option<Duration>,
    /// Print the number of hosts instead.
    #[arg(short = 'c', long, conflicts_with = "fold")]
    pub count: bool,
    #[command(flatten)]
    pub select: Select,
    /// List the groups instead: the inventory's, then each source's
    /// (`@source:group`, from its list command).
    #[arg(long, conflicts_with_all = ["fold", "count", "pick", "exclude"])]
    pub groups: bool,
    /// The target list.
    #[arg(
        value_name = "TARGETS",
        required_unless_present_any = ["groups", "online"],
        conflicts_with = "groups"
    )]
    pub targets: Option<String>,
}

/// `ctl ping`.
#[derive(Debug, clap::Args)]
#[command(after_help = TARGETS_HELP)]
pub struct PingArgs {
    #[command(flatten)]
    pub exclude: Exclude,
    #[command(flatten)]
    pub reach: Reach,
    #[command(flatten)]
    pub rolling: Rolling,
    /// One JSON object per host per line.
    #[arg(long)]
    pub json: bool,
    /// The target list.
    #[arg(value_name = "TARGETS")]
    pub targets: String,
}

pub const COPY_HELP: &str = "\
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

/// `ctl cp`.
#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// Copy directories and everything in them.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Keep numeric owners (user and group ids); the writing side must be
    /// root (on a push, the agent's copy must run as root).
    #[arg(short = 'p', long)]
    pub preserve_owner: bool,
    #[command(flatten)]
    pub exclude: Exclude,
    #[command(flatten)]
    pub reach: Reach,
    #[command(flatten)]
    pub rolling: Rolling,
    /// Give up on a host whose copy (connecting included) takes longer
    /// than this: exit 124, the partial file removed; 0 for no limit.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// One JSON object per host per line: entries, bytes, duration, blake3.
    #[arg(long)]
    pub json: bool,
    /// Sources then destination; exactly one side is remote.
    #[arg(required = true, num_args = 2.., value_name = "PATHS")]
    pub paths: Vec<String>,
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
    parse_nonzero_duration(s, "the connect timeout")
}

/// `hosts --online --wait`: a duration that is not zero.
fn parse_wait(s: &str) -> Result<Duration, String> {
    parse_nonzero_duration(s, "the wait for answers")
}

/// A duration that is not zero; `what` names it in the refusal.
fn parse_nonzero_duration(s: &str, what: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("{what} must be longer than 0")),
        duration => Ok(duration),
    }
}

/// `--fanout`: a number of hosts, at least 1.
fn parse_fanout(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a number of hosts, at least 1, got {s:?}")),
    }
}

/// A size in bytes: `4096`, `512K`, `1M`, `1GiB` (K, M, G are binary).
fn parse_size(s: &str) -> Result<usize, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("{s:?} is not a size (a number of bytes, or 512K, 4M, 1G)"))
}

/// `--user NAME`: a name that is one plain word (see
/// [`crate::target::bad_user_name`]).
fn parse_user(s: &str) -> Result<String, String> {
    match crate::target::bad_user_name(s) {
        Some(reason) => Err(reason.to_owned()),
        None => Ok(s.to_owned()),
    }
}

/// `--env KEY=VALUE`.
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

/// clap's message for bad usage as our one line: its first line without
/// the `error:` tag, then where to look (clap adds a usage block and tips).
pub fn usage_line(e: &clap::Error) -> String {
    let message = rexec_protocol::plain::usage_message(&e.render().to_string());
    format!("{message} (see ctl --help)")
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

    /// What ctl prints for `args` (help, a usage error) with `command`.
    fn answer(command: clap::Command, args: &[&str]) -> String {
        let mut all = vec!["ctl"];
        all.extend_from_slice(args);
        match command.try_get_matches_from(all) {
            Ok(_) => "parsed".into(),
            Err(e) => e.render().to_string(),
        }
    }

    #[test]
    fn an_option_given_twice_takes_its_last_value_and_lists_still_gather() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "ctl",
            "exec",
            "--timeout",
            "30s",
            "-b",
            "-e",
            "A=1",
            "--timeout",
            "5m",
            "-b",
            "-e",
            "B=2",
            "h",
            "true",
        ])
        .unwrap();
        let Command::Exec(Deferred(exec)) = cli.command else {
            panic!("exec");
        };
        assert_eq!(exec.timeout, Some(Duration::from_secs(300)));
        let env = [
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "2".to_owned()),
        ];
        assert_eq!(exec.env, env);
    }

    #[test]
    fn a_deferred_command_line_reads_and_helps_as_the_whole_tree() {
        use clap::CommandFactory;
        whole_command().debug_assert();
        Cli::command().debug_assert();
        for args in [
            &["--help"][..],
            &["exec", "--help"],
            &["exec"],
            &["exec", "--nope", "h", "true"],
            &["cp", "--help"],
            &["hosts", "--help"],
            &["ping", "--help"],
            &["job", "--help"],
            &["job", "wait", "--help"],
            &["job", "output", "--reconnect-for", "1m", "h", "0"],
            &["known-hosts", "remove", "--help"],
            &["help", "job", "wait"],
            &["exec", "-f", "4", "@lab", "true"],
        ] {
            let deferred = answer(Cli::command(), args);
            assert_eq!(deferred, answer(whole_command(), args), "{args:?}");
            assert!(!deferred.is_empty(), "{args:?}");
        }
        // The help of a deferred command is its own, not its arguments'.
        let help = answer(Cli::command(), &["exec", "--help"]);
        assert!(
            help.starts_with("Run a command on one host or many"),
            "{help}"
        );
    }
}
