//! The agent's settings: where its files are and the limits it enforces.
//!
//! Every setting has a default here and a command line flag in `main.rs`;
//! the defaults are the ones documented in the README.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rexec_broker::{BrokerOptions, CertFingerprint, Credentials};
use rexec_protocol::IdentityPaths;

use crate::limits::MaxStartups;

/// Where the agent keeps its files unless told otherwise.
pub const DEFAULT_DIR: &str = "/etc/rexec";
/// Concurrent sessions (connections) the agent serves before refusing more.
pub const DEFAULT_MAX_SESSIONS: usize = 256;
/// Concurrent execs the agent runs for all clients together.
pub const DEFAULT_MAX_EXECS: usize = 128;
/// Concurrent execs one client (by fingerprint) may run.
pub const DEFAULT_MAX_EXECS_PER_CLIENT: usize = 64;
/// Time a new connection has to finish TLS and send its request: ample for
/// a client's one and a half round trips, short for a peer holding a place.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections still in their handshake: random early drop from 32, all
/// refused or made to give way at 128. sshd's 10:30:100 is sized for
/// password logins; ours take a millisecond, and scripted loops open many.
pub const DEFAULT_MAX_STARTUPS: MaxStartups = MaxStartups {
    start: 32,
    rate: 30,
    full: 128,
};
/// Connections still in their handshake from one address (IPv6: one /48).
pub const DEFAULT_PER_SOURCE_MAX_STARTUPS: usize = 16;
/// Time between SIGTERM and SIGKILL when a command's process group is killed.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// On SIGTERM, how long running commands may go on before they are killed.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a session may be quiet before the agent sends a keepalive.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How many unanswered keepalive intervals make a client count as gone.
pub const DEFAULT_KEEPALIVE_COUNT: u32 = 4;
/// The shell that runs commands, as `SHELL -c COMMAND`.
pub const DEFAULT_SHELL: &str = "/bin/sh";
/// The longest duration the agent takes anywhere (a setting, a flag, a
/// client's timeout): far beyond any real use, and far enough below the
/// clock's range that every deadline computed from it exists.
pub const LONGEST_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// [`LONGEST_DURATION`] in words, for messages.
pub const LONGEST_DURATION_TEXT: &str = "10 years";

/// Parses a duration in humantime form (`"10s"`, `"1m 30s"`, `"2h"`), at
/// most [`LONGEST_DURATION`].
///
/// # Errors
/// A one-line message saying what is wrong with `text`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => {
            format!("invalid duration {text:?}: longer than {LONGEST_DURATION_TEXT}")
        }
        e => format!("invalid duration {text:?}: {e}"),
    })?;
    if duration > LONGEST_DURATION {
        return Err(format!(
            "invalid duration {text:?}: longer than {LONGEST_DURATION_TEXT}"
        ));
    }
    Ok(duration)
}

/// Everything a running agent needs to know.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The directory holding the identity and the authorized clients file.
    pub dir: PathBuf,
    /// Most concurrent sessions of clients that finished their handshake,
    /// at most half of them one client key's; more are told the agent is
    /// busy.
    pub max_sessions: usize,
    /// The budget of connections that have not finished their handshake.
    pub max_startups: MaxStartups,
    /// Most unfinished handshakes from one address.
    pub per_source_max_startups: usize,
    /// Most concurrent execs for all clients; more are refused "busy".
    pub max_execs: usize,
    /// Most concurrent execs per client fingerprint; more are refused "busy".
    pub max_execs_per_client: usize,
    /// Limit on TLS handshake plus hello plus request.
    pub handshake_timeout: Duration,
    /// SIGTERM-to-SIGKILL grace when killing a command's process group.
    pub kill_grace: Duration,
    /// On SIGTERM, how long running commands may go on before they are killed.
    pub shutdown_grace: Duration,
    /// The longest a command may run; applied when the client asks for no
    /// timeout or a longer one. `None`: no limit.
    pub max_timeout: Option<Duration>,
    /// Quiet time after which the agent sends a keepalive; zero disables
    /// keepalives (and so the detection of vanished clients on quiet sessions).
    pub keepalive_interval: Duration,
    /// Unanswered keepalive intervals after which a client counts as gone.
    pub keepalive_count: u32,
    /// The shell commands run under.
    pub shell: PathBuf,
    /// The most file data one push may write; `None`: no limit.
    pub max_copy_bytes: Option<u64>,
    /// Which users each client may run commands as (when the agent runs as
    /// root). See [`RunAsPolicy`].
    pub run_as: RunAsPolicy,
    /// Detached jobs: where they are kept, and their limits.
    pub jobs: JobSettings,
    /// Broker mode: serve sessions through a NATS broker too (or only).
    pub broker: Option<BrokerSettings>,
}

/// Where job directories go for an agent whose files are in the default
/// place (/etc/rexec); the systemd unit's `StateDirectory=rexec`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rexec/jobs";
/// Jobs running at once, all clients together.
pub const DEFAULT_MAX_JOBS: usize = 64;
/// Bytes kept of each stream of a job's output.
pub const DEFAULT_MAX_JOB_OUTPUT: u64 = 64 << 20;
/// How long an ended job is kept.
pub const DEFAULT_JOB_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most bytes the kept jobs may hold by default, whatever the size of
/// their file system (a tenth of it, if that is less), as journald bounds
/// its files.
pub const DEFAULT_MAX_KEPT_JOB_BYTES: u64 = 4 << 30;

/// The agent's settings for detached jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSettings {
    /// The directory holding one directory per job.
    pub state_dir: PathBuf,
    /// Most jobs running at once.
    pub max_jobs: usize,
    /// Bytes kept of each output stream; past it the oldest go.
    pub max_output: u64,
    /// How long an ended job is kept before it is removed.
    pub retention: Duration,
    /// The most bytes the jobs kept may hold, when set; by default a tenth
    /// of the state directory's file system, at most
    /// [`DEFAULT_MAX_KEPT_JOB_BYTES`].
    pub max_kept_bytes: Option<u64>,
    /// Client names that see and control every client's jobs.
    pub admins: Vec<String>,
}

impl JobSettings {
    /// The defaults for an agent whose files are in `dir`: the system's
    /// state directory for the default `/etc/rexec`, else `DIR/jobs`, so
    /// that an agent run by hand (the quick start, the tests) keeps its
    /// jobs beside its identity and needs no root.
    pub fn for_dir(dir: &Path) -> JobSettings {
        let state_dir = if dir == Path::new(DEFAULT_DIR) {
            PathBuf::from(DEFAULT_STATE_DIR)
        } else {
            dir.join("jobs")
        };
        JobSettings {
            state_dir,
            max_jobs: DEFAULT_MAX_JOBS,
            max_output: DEFAULT_MAX_JOB_OUTPUT,
            retention: DEFAULT_JOB_RETENTION,
            max_kept_bytes: None,
            admins: Vec::new(),
        }
    }

    /// Whether the client named `name` sees every job.
    pub fn is_admin(&self, name: &str) -> bool {
        self.admins.iter().any(|admin| admin == name)
    }
}

/// Broker mode: the broker the agent dials out to, its name there, and how
/// it proves to the broker who it is and knows the broker is the right one.
/// These decide only who may use the broker: every session through it is
/// the same mutual TLS session as on TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// `nats://` or `tls://` URLs, tried in turn.
    pub urls: Vec<String>,
    /// The agent's name on the broker (ctl's target).
    pub name: String,
    /// The subject prefix.
    pub subject_prefix: String,
    /// The CA that signed the broker's certificate.
    pub ca_file: Option<PathBuf>,
    /// The broker's certificate, pinned instead of a CA.
    pub fingerprint: Option<CertFingerprint>,
    /// Our credentials on the broker.
    pub credentials: Credentials,
}

impl BrokerSettings {
    /// The carrier's options: an agent keeps trying to reach its broker
    /// for as long as it runs, shows its name in the broker's monitoring,
    /// and takes its replies under its own name.
    pub fn options(&self) -> BrokerOptions {
        let mut options = BrokerOptions::new(self.urls.clone());
        options.credentials = self.credentials.clone();
        options.ca_file = self.ca_file.clone();
        options.fingerprint = self.fingerprint;
        options.subject_prefix = self.subject_prefix.clone();
        options.client_name = Some(format!("rexec-agent {}", self.name));
        options.serves = Some(self.name.clone());
        options.retry_forever = true;
        options
    }

    /// The URLs as one would give them to `--broker`.
    pub fn url_list(&self) -> String {
        self.urls.join(",")
    }
}

/// The agent's name on the broker when none is given: the host name up to
/// its first dot (`labpc07` for `labpc07.lab.example.org`), as `hostname
/// -s` prints it and as people name lab machines to ctl.
///
/// # Errors
/// When the host name cannot be read or cannot be a name on the broker.
pub fn default_broker_name() -> Result<String, String> {
    let host = nix::unistd::gethostname()
        .map_err(|_| "cannot read this machine's host name: give the agent's name on the broker (--name or name in [broker])".to_owned())?;
    let host = host.to_string_lossy();
    let short = host.split('.').next().unwrap_or_default();
    rexec_broker::validate_name(short).map_err(|e| {
        format!("the host name cannot be the agent's name on the broker ({e}): give one with --name or name in [broker]")
    })?;
    Ok(short.to_owned())
}

/// Which users a client may run commands (and copies) as.
///
/// Keys are client names from the authorized clients file; values are user
/// names, where `*` means any user. A listed client runs only as one of its
/// users, by default the first (the agent's own user when that is `*`); a
/// client not listed runs only as the agent's own user. An agent that does
/// not run as root can run commands as its own user only, whatever this says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunAsPolicy {
    /// Client name to allowed user names.
    pub by_client: BTreeMap<String, Vec<String>>,
}

impl RunAsPolicy {
    /// The users the client named `client` is confined to, if it has a rule.
    pub fn rule(&self, client: &str) -> Option<&[String]> {
        self.by_client.get(client).map(Vec::as_slice)
    }

    /// Whether the client named `client` may run commands as `user`.
    pub fn allows(&self, client: &str, user: &str) -> bool {
        self.rule(client)
            .is_some_and(|users| users.iter().any(|u| u == "*" || u == user))
    }

    /// Whom a listed client runs as when it names no user: the first user
    /// of its rule, unless that is `*`.
    pub fn default_user(&self, client: &str) -> Option<&str> {
        self.rule(client)
            .and_then(|users| users.first())
            .map(String::as_str)
            .filter(|user| *user != "*")
    }
}

impl AgentSettings {
    /// Defaults, with files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        AgentSettings {
            jobs: JobSettings::for_dir(&dir),
            dir,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_startups: DEFAULT_MAX_STARTUPS,
            per_source_max_startups: DEFAULT_PER_SOURCE_MAX_STARTUPS,
            max_execs: DEFAULT_MAX_EXECS,
            max_execs_per_client: DEFAULT_MAX_EXECS_PER_CLIENT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            kill_grace: DEFAULT_KILL_GRACE,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_timeout: None,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_count: DEFAULT_KEEPALIVE_COUNT,
            shell: PathBuf::from(DEFAULT_SHELL),
            max_copy_bytes: None,
            run_as: RunAsPolicy::default(),
            broker: None,
        }
    }

    /// The agent's identity files: `DIR/agent.crt`, `DIR/agent.key`.
    pub fn identity_paths(&self) -> IdentityPaths {
        identity_paths(&self.dir)
    }

    /// `DIR/authorized_clients`.
    pub fn authorized_clients_path(&self) -> PathBuf {
        authorized_clients_path(&self.dir)
    }
}

/// The identity files in `dir`.
pub fn identity_paths(dir: &Path) -> IdentityPaths {
    IdentityPaths::in_dir(dir, "agent")
}

/// The authorized clients file in `dir`.
pub fn authorized_clients_path(dir: &Path) -> PathBuf {
    dir.join("authorized_clients")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded_with_a_one_line_message() {
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3650d"), Ok(LONGEST_DURATION));
        for text in [
            "18446744073709551615s",
            "5000000000000000h",
            "99999999999999999999999s",
            "3651d",
        ] {
            let e = parse_duration(text).unwrap_err();
            assert!(e.ends_with("longer than 10 years"), "{text}: {e}");
        }
        for text in ["", "10 parsecs", "-1s", "1e9s", "s", "\u{0}"] {
            let e = parse_duration(text).unwrap_err();
            assert!(
                e.starts_with("invalid duration") && !e.contains('\n'),
                "{e}"
            );
        }
    }

    #[test]
    fn run_as_policy_allows_listed_users_and_stars_only() {
        let mut policy = RunAsPolicy::default();
        policy
            .by_client
            .insert("alice".into(), vec!["www-data".into(), "backup".into()]);
        policy.by_client.insert("ops".into(), vec!["*".into()]);
        assert!(policy.allows("alice", "backup"));
        assert!(!policy.allows("alice", "root"));
        assert!(policy.allows("ops", "root"));
        assert!(!policy.allows("bob", "backup"));
        assert_eq!(policy.default_user("alice"), Some("www-data"));
        assert_eq!(policy.default_user("ops"), None, "* names no one");
        assert_eq!(policy.default_user("bob"), None);
    }
}
