//! The agent's config file (`/etc/rexec/agent.toml`): reading it into
//! [`AgentSettings`] and writing settings back out as TOML.
//!
//! Every key is optional; a key left out keeps the default from
//! [`crate::config`]. The file is strict: an unknown key, a value of the
//! wrong type or a malformed duration is an error that names the key and its
//! line, so a typo never silently leaves a limit at its default. The `run`
//! flags are the same struct, parsed by clap, laid over the file's values
//! before they become settings. Which file is read, and when, is
//! `main.rs`'s business.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use rexec_broker::{CertFingerprint, Credentials};

use crate::config::{AgentSettings, BrokerSettings, RunAsPolicy};
use crate::limits::MaxStartups;

/// The file name of the config file inside the agent's directory.
pub const CONFIG_FILE_NAME: &str = "agent.toml";
/// Where the agent listens unless told otherwise: every IPv4 address, port 7722.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7722";

/// The settings as the config file and the `run` flags give them: every
/// one optional, each declared here once for both.
///
/// Field names are the file's keys and, with `-` for `_`, the `run` flags;
/// the doc comments are the flags' help. A flag given is laid over the
/// file's value of the same name ([`ConfigFile::over`]). A duration is a
/// string in humantime form: `"10s"`, `"1m 30s"`, `"2h"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// The directory with the identity and the authorized clients file (the
    /// `--dir` flag is global, so not one of these).
    #[arg(skip)]
    pub dir: Option<PathBuf>,
    /// Address to listen on (repeatable) [default: 0.0.0.0:7722]. Port 0
    /// picks a free port; the bound address is logged as "listening on
    /// ADDR". Ignored when systemd passes listening sockets (LISTEN_FDS).
    #[arg(long)]
    #[serde(deserialize_with = "one_or_more_addresses")]
    pub listen: Option<Vec<SocketAddr>>,
    /// Most concurrent sessions of clients that finished their handshake,
    /// at most half of them one client key's; more are told the agent is
    /// busy [default: 256].
    #[arg(long)]
    pub max_sessions: Option<NonZeroUsize>,
    /// Connections still in their handshake, as sshd's MaxStartups
    /// START:RATE:FULL: from START on, new connections from an address that
    /// already has one are dropped at random (RATE percent, rising to all
    /// at FULL) [default: 32:30:128].
    #[arg(long)]
    #[serde(with = "text_opt")]
    pub max_startups: Option<MaxStartups>,
    /// Connections still in their handshake from one address (IPv6: one
    /// /48); more from it are closed at once [default: 16].
    #[arg(long)]
    pub per_source_max_startups: Option<NonZeroUsize>,
    /// Most commands running at once for all clients; more are refused as
    /// busy [default: 128].
    #[arg(long)]
    pub max_execs: Option<NonZeroUsize>,
    /// Most concurrent execs per client; more are refused as busy
    /// [default: 64].
    #[arg(long)]
    pub max_execs_per_client: Option<NonZeroUsize>,
    /// Time a connection has to complete TLS and send its request
    /// [default: 5s].
    #[arg(long, value_parser = crate::config::parse_duration)]
    #[serde(with = "text_opt")]
    pub handshake_timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when a command's group is killed
    /// [default: 2s].
    #[arg(long, value_parser = crate::config::parse_duration)]
    #[serde(with = "text_opt")]
    pub kill_grace: Option<Duration>,
    /// On SIGTERM, how long running commands may go on before they are
    /// killed [default: 10s].
    #[arg(long, value_parser = crate::config::parse_duration)]
    #[serde(with = "text_opt")]
    pub shutdown_grace: Option<Duration>,
    /// The longest any command may run (e.g. 1h); applied when the client
    /// asks for no timeout or a longer one. 0 means no limit [default: no
    /// limit].
    #[arg(long, value_parser = crate::config::parse_duration)]
    #[serde(with = "text_opt")]
    pub max_timeout: Option<Duration>,
    /// Quiet time after which a keepalive is sent to the client; 0
    /// disables keepalives [default: 15s].
    #[arg(long, value_parser = crate::config::parse_duration)]
    #[serde(with = "text_opt")]
    pub keepalive_interval: Option<Duration>,
    /// Unanswered keepalive intervals after which a client counts as gone
    /// and its command is killed [default: 4].
    #[arg(long)]
    pub keepalive_count: Option<NonZeroU32>,
    /// The shell that runs commands as SHELL -c COMMAND [default: /bin/sh].
    #[arg(long)]
    pub shell: Option<PathBuf>,
    /// The most file data one `ctl cp` push may write, in bytes; 0 means
    /// no limit [default: no limit].
    #[arg(long)]
    pub max_copy_bytes: Option<u64>,
    /// Directory for detached jobs' records and output [default:
    /// /var/lib/rexec/jobs; DIR/jobs when --dir names another directory].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Most detached jobs running at once; more are refused as busy
    /// [default: 64].
    #[arg(long)]
    pub max_jobs: Option<NonZeroUsize>,
    /// Bytes kept of each output stream of a detached job; past it the
    /// oldest are dropped [default: 67108864].
    #[arg(long)]
    pub max_job_output: Option<NonZeroU64>,
    /// How long an ended job is kept before it is removed [default: 7days].
    #[arg(long, value_parser = crate::config::parse_duration)]
    #[serde(with = "text_opt")]
    pub job_retention: Option<Duration>,
    /// The most bytes all kept jobs may hold; a new job first removes ended
    /// ones past it, the oldest of the client holding the most first
    /// [default: a tenth of the state
    /// directory's file system, at most 4294967296].
    #[arg(long)]
    pub max_kept_job_bytes: Option<NonZeroU64>,
    /// `[jobs]`: `admins`, client names that see and control every
    /// client's jobs; in the file only.
    #[arg(skip)]
    pub jobs: Option<JobsTable>,
    /// Client name to the users it may run commands as (`"*"`: any), the
    /// first being its default; in the file only.
    #[arg(skip)]
    #[serde(deserialize_with = "run_as_rules")]
    pub run_as: Option<BTreeMap<String, Vec<String>>>,
    /// Broker mode: the `[broker]` table and the `--broker*` flags.
    #[command(flatten)]
    #[serde(skip_serializing_if = "BrokerFile::is_empty")]
    pub broker: BrokerFile,
}

/// The `[broker]` table and its flags: serve sessions through a NATS
/// broker the agent dials out to. Secrets are read from files only, never
/// given on the command line, where other users could see them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerFile {
    /// Serve sessions through the NATS broker at URL too (nats://HOST:PORT
    /// or tls://HOST:PORT; several, comma-separated, are tried in turn).
    /// With a broker and no --listen (nor `listen` in the file), the agent
    /// opens no TCP port. File: `url` in [broker].
    #[arg(long = "broker", value_name = "URL[,URL...]", value_delimiter = ',', value_parser = broker_url)]
    #[serde(deserialize_with = "one_or_more_urls")]
    pub url: Option<Vec<String>>,
    /// The agent's name on the broker, which ctl names as its target
    /// (letters, digits, - and _) [default: the host name up to its first
    /// dot]. File: `name` in [broker].
    #[arg(long = "name", value_parser = broker_name)]
    #[serde(deserialize_with = "agent_name")]
    pub name: Option<String>,
    /// The first words of every subject on the broker [default: rexec].
    /// File: `subject_prefix` in [broker].
    #[arg(long = "broker-prefix", value_name = "PREFIX", value_parser = subject_prefix)]
    #[serde(deserialize_with = "prefix")]
    pub subject_prefix: Option<String>,
    /// The CA certificate (PEM) that signed the broker's certificate
    /// [default: the system's]. File: `ca_file` in [broker].
    #[arg(long = "broker-ca", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Trust the broker by its certificate's fingerprint instead of a CA:
    /// sha256:HEX, as `openssl x509 -noout -fingerprint -sha256` prints it.
    /// File: `fingerprint` in [broker].
    #[arg(long = "broker-fingerprint", value_name = "sha256:HEX")]
    #[serde(with = "text_opt")]
    pub fingerprint: Option<CertFingerprint>,
    /// A NATS .creds file (user JWT and key) to log in to the broker with.
    /// File: `creds_file` in [broker].
    #[arg(long = "broker-creds", value_name = "FILE")]
    pub creds_file: Option<PathBuf>,
    /// The broker user to log in as, with --broker-password-file. File:
    /// `user` in [broker].
    #[arg(long = "broker-user", value_name = "USER")]
    pub user: Option<String>,
    /// The file whose first line is the broker user's password (mode
    /// 0600). File: `password_file` in [broker].
    #[arg(long = "broker-password-file", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// The file whose first line is a token to log in to the broker with
    /// (mode 0600). File: `token_file` in [broker].
    #[arg(long = "broker-token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Calls `$apply!` with every key of [`BrokerFile`].
macro_rules! every_broker_key {
    ($apply:ident) => {
        $apply!(
            url,
            name,
            subject_prefix,
            ca_file,
            fingerprint,
            creds_file,
            user,
            password_file,
            token_file
        )
    };
}

impl BrokerFile {
    /// Whether no key is set (no `[broker]` table, no flag).
    pub fn is_empty(&self) -> bool {
        *self == BrokerFile::default()
    }

    /// `self` (the flags given) laid over `file`, key by key.
    pub fn over(self, file: BrokerFile) -> BrokerFile {
        macro_rules! merge {
            ($($key:ident),*) => {
                BrokerFile { $($key: self.$key.or(file.$key)),* }
            };
        }
        every_broker_key!(merge)
    }

    /// The broker settings these keys ask for; `None` without a broker.
    /// `default_name` gives the name when none is set.
    ///
    /// # Errors
    /// Keys without a URL, more than one kind of credentials, a user
    /// without a password file or the other way round, or no name.
    pub fn settings(
        &self,
        default_name: impl FnOnce() -> Result<String, String>,
    ) -> Result<Option<BrokerSettings>, String> {
        let Some(urls) = &self.url else {
            if self.is_empty() {
                return Ok(None);
            }
            return Err(
                "[broker] settings are given without a broker URL: give url in [broker] or --broker"
                    .to_owned(),
            );
        };
        let credentials = match (
            &self.creds_file,
            &self.user,
            &self.password_file,
            &self.token_file,
        ) {
            (None, None, None, None) => Credentials::None,
            (Some(creds), None, None, None) => Credentials::CredsFile(creds.clone()),
            (None, Some(user), Some(password_file), None) => Credentials::UserPassword {
                user: user.clone(),
                password_file: password_file.clone(),
            },
            (None, None, None, Some(token)) => Credentials::TokenFile(token.clone()),
            (None, Some(user), None, None) => {
                return Err(format!(
                    "broker user {user:?} has no password file: give password_file in [broker] or --broker-password-file (a password is read from a file only)"
                ));
            }
            (None, None, Some(_), None) => {
                return Err(
                    "a broker password file is given without a user: give user in [broker] or --broker-user"
                        .to_owned(),
                );
            }
            _ => {
                return Err(
                    "give one kind of broker credentials: creds_file, user with password_file, or token_file"
                        .to_owned(),
                );
            }
        };
        let name = match &self.name {
            Some(name) => name.clone(),
            None => default_name()?,
        };
        Ok(Some(BrokerSettings {
            urls: urls.clone(),
            name,
            subject_prefix: self
                .subject_prefix
                .clone()
                .unwrap_or_else(|| rexec_broker::DEFAULT_PREFIX.to_owned()),
            ca_file: self.ca_file.clone(),
            fingerprint: self.fingerprint,
            credentials,
        }))
    }

    /// Every key of `settings` spelled out.
    pub fn from_settings(settings: Option<&BrokerSettings>) -> BrokerFile {
        let Some(settings) = settings else {
            return BrokerFile::default();
        };
        let mut file = BrokerFile {
            url: Some(settings.urls.clone()),
            name: Some(settings.name.clone()),
            subject_prefix: Some(settings.subject_prefix.clone()),
            ca_file: settings.ca_file.clone(),
            fingerprint: settings.fingerprint,
            ..BrokerFile::default()
        };
        match &settings.credentials {
            Credentials::None => {}
            Credentials::CredsFile(path) => file.creds_file = Some(path.clone()),
            Credentials::UserPassword {
                user,
                password_file,
            } => {
                file.user = Some(user.clone());
                file.password_file = Some(password_file.clone());
            }
            Credentials::TokenFile(path) => file.token_file = Some(path.clone()),
        }
        file
    }
}

/// The `[jobs]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsTable {
    /// Client names that see and control every client's jobs.
    pub admins: Vec<String>,
}

/// Calls `$apply!` with every key of [`ConfigFile`], so that code that
/// goes through them all names them in one place.
macro_rules! every_key {
    ($apply:ident) => {
        $apply!(
            dir,
            listen,
            max_sessions,
            max_startups,
            per_source_max_startups,
            max_execs,
            max_execs_per_client,
            handshake_timeout,
            kill_grace,
            shutdown_grace,
            max_timeout,
            keepalive_interval,
            keepalive_count,
            shell,
            max_copy_bytes,
            state_dir,
            max_jobs,
            max_job_output,
            job_retention,
            max_kept_job_bytes,
            jobs,
            run_as
        )
    };
}

/// Calls `$apply!` with every key of [`ConfigFile`] that is one setting
/// of [`AgentSettings`] as it is (a count that may not be zero is the
/// setting's number): `key => field`.
macro_rules! every_plain_key {
    ($apply:ident) => {
        $apply!(
            max_sessions => max_sessions,
            max_startups => max_startups,
            per_source_max_startups => per_source_max_startups,
            max_execs => max_execs,
            max_execs_per_client => max_execs_per_client,
            handshake_timeout => handshake_timeout,
            kill_grace => kill_grace,
            shutdown_grace => shutdown_grace,
            keepalive_interval => keepalive_interval,
            keepalive_count => keepalive_count,
            shell => shell,
            state_dir => jobs.state_dir,
            max_jobs => jobs.max_jobs,
            max_job_output => jobs.max_output,
            job_retention => jobs.retention
        )
    };
}

/// A key's value as the file holds it, and the setting it stands for.
trait FileValue: Sized {
    /// The setting's type.
    type Setting;
    /// The setting this value asks for.
    fn setting(self) -> Self::Setting;
    /// The value that reads back to `setting`, if the file can write it.
    fn of_setting(setting: &Self::Setting) -> Option<Self>;
}

/// Counts that may not be zero: the setting is the plain number.
macro_rules! nonzero_file_values {
    ($($nonzero:ty => $number:ty),*) => {
        $(impl FileValue for $nonzero {
            type Setting = $number;
            fn setting(self) -> $number {
                self.get()
            }
            fn of_setting(setting: &$number) -> Option<Self> {
                <$nonzero>::new(*setting)
            }
        })*
    };
}
nonzero_file_values!(NonZeroUsize => usize, NonZeroU32 => u32, NonZeroU64 => u64);

/// Values the setting holds as the file gives them.
macro_rules! same_file_values {
    ($($value:ty),*) => {
        $(impl FileValue for $value {
            type Setting = $value;
            fn setting(self) -> $value {
                self
            }
            fn of_setting(setting: &$value) -> Option<Self> {
                Some(setting.clone())
            }
        })*
    };
}
same_file_values!(Duration, MaxStartups, PathBuf);

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a bad value.
    #[error("{path}:{line}:{column}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column (in characters) of the offending key or value.
        column: usize,
        /// What is wrong, naming the key.
        problem: String,
    },
}

impl ConfigFile {
    /// Reads and checks the config file at `path`.
    ///
    /// # Errors
    /// When the file cannot be read, is not TOML, has an unknown key or a
    /// value of the wrong type.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        ConfigFile::parse(&text, path)
    }

    /// Parses `text`, the contents of the file at `path` (used in errors).
    ///
    /// # Errors
    /// As [`ConfigFile::load`], after reading.
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigFileError> {
        let invalid = |error: &toml::de::Error, key: Option<String>| {
            let (line, column) = error
                .span()
                .map(|span| line_and_column(text, span.start))
                .unwrap_or((1, 1));
            let message = plain_expectation(error.message().trim_end());
            let message = message.as_str();
            let problem = match key {
                Some(key) => format!("bad value for `{key}`: {message}"),
                None if message.starts_with("unknown field") => {
                    message.replace("unknown field", "unknown key")
                }
                // A syntax error: quote the line, which names the key.
                None => format!(
                    "{message}: `{}`",
                    text.lines().nth(line - 1).unwrap_or("").trim()
                ),
            };
            ConfigFileError::Invalid {
                path: path.to_owned(),
                line,
                column,
                problem,
            }
        };
        let document = toml::Deserializer::parse(text).map_err(|e| invalid(&e, None))?;
        serde_path_to_error::deserialize(document).map_err(|e| {
            // An unknown key is reported at the table holding it, so its
            // path names the table, not the key; the message names the key.
            let path = e.path().to_string();
            let key =
                (path != "." && !e.inner().message().starts_with("unknown field")).then_some(path);
            invalid(e.inner(), key)
        })
    }

    /// The settings this file asks for: its values over the defaults, with
    /// files in `dir` when given (the `--dir` flag wins over the file's key).
    pub fn settings(&self, dir: Option<PathBuf>) -> AgentSettings {
        let dir = dir
            .or_else(|| self.dir.clone())
            .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_DIR));
        let mut settings = AgentSettings::new(dir);
        macro_rules! apply {
            ($($key:ident => $($field:ident).+),*) => {
                $(if let Some(value) = &self.$key {
                    settings.$($field).+ = value.clone().setting();
                })*
            };
        }
        every_plain_key!(apply);
        if let Some(d) = self.max_timeout {
            settings.max_timeout = limit(d);
        }
        if let Some(bytes) = self.max_copy_bytes {
            settings.max_copy_bytes = (bytes > 0).then_some(bytes);
        }
        if let Some(bytes) = self.max_kept_job_bytes {
            settings.jobs.max_kept_bytes = Some(bytes.get());
        }
        if let Some(table) = &self.jobs {
            settings.jobs.admins = table.admins.clone();
        }
        if let Some(run_as) = &self.run_as {
            settings.run_as = RunAsPolicy {
                by_client: run_as.clone(),
            };
        }
        settings
    }

    /// The listen addresses this file asks for; without any, the default,
    /// unless a broker is configured: an agent that dials out to a broker
    /// opens a port only when told to.
    pub fn listen(&self) -> Vec<SocketAddr> {
        match &self.listen {
            Some(listen) => listen.clone(),
            None if self.broker.url.is_some() => Vec::new(),
            None => default_listen(),
        }
    }

    /// Every setting of `settings` and `listen` spelled out, as a file that
    /// reads back to the same settings.
    pub fn from_settings(settings: &AgentSettings, listen: &[SocketAddr]) -> ConfigFile {
        macro_rules! spell_out {
            ($($key:ident => $($field:ident).+),*) => {
                ConfigFile {
                    $($key: FileValue::of_setting(&settings.$($field).+),)*
                    dir: Some(settings.dir.clone()),
                    // An agent with a broker may listen nowhere: the key is
                    // then left out, which with a broker means no TCP port.
                    listen: (!listen.is_empty()).then(|| listen.to_vec()),
                    max_timeout: Some(settings.max_timeout.unwrap_or(Duration::ZERO)),
                    max_copy_bytes: Some(settings.max_copy_bytes.unwrap_or(0)),
                    max_kept_job_bytes: settings.jobs.max_kept_bytes.and_then(NonZeroU64::new),
                    jobs: (!settings.jobs.admins.is_empty()).then(|| JobsTable {
                        admins: settings.jobs.admins.clone(),
                    }),
                    run_as: (!settings.run_as.by_client.is_empty())
                        .then(|| settings.run_as.by_client.clone()),
                    broker: BrokerFile::from_settings(settings.broker.as_ref()),
                }
            };
        }
        every_plain_key!(spell_out)
    }

    /// This file as TOML text.
    pub fn to_toml(&self) -> String {
        // Every field is a string, number, list or table of those: the
        // serializer has nothing it could refuse.
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }

    /// Names of the keys whose values differ between `self` and `other`.
    pub fn changed_keys(&self, other: &ConfigFile) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! compare {
            ($($key:ident),*) => {
                $(if self.$key != other.$key {
                    changed.push(stringify!($key));
                })*
            };
        }
        every_key!(compare);
        macro_rules! compare_broker {
            ($($key:ident),*) => {
                $(if self.broker.$key != other.broker.$key {
                    changed.push(concat!("broker.", stringify!($key)));
                })*
            };
        }
        every_broker_key!(compare_broker);
        changed
    }

    /// `self` (the flags given) laid over `file`: a key set here wins.
    pub fn over(self, file: ConfigFile) -> ConfigFile {
        macro_rules! merge {
            ($($key:ident),*) => {
                ConfigFile {
                    $($key: self.$key.or(file.$key),)*
                    broker: self.broker.over(file.broker),
                }
            };
        }
        every_key!(merge)
    }
}

/// The default listen addresses.
pub fn default_listen() -> Vec<SocketAddr> {
    DEFAULT_LISTEN.parse().map(|a| vec![a]).unwrap_or_default()
}

/// A maximum command run time as the settings hold it: zero means no limit.
pub fn limit(max_timeout: Duration) -> Option<Duration> {
    (!max_timeout.is_zero()).then_some(max_timeout)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
/// A value error in our words: what serde expects is named by Rust types
/// (`a nonzero usize`, `u64`, `a sequence`), which an admin editing a
/// config file should not have to read.
fn plain_expectation(message: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        (" as i128", ""),
        (" as u128", ""),
        (
            "expected a nonzero usize",
            "expected a whole number from 1 up",
        ),
        (
            "expected a nonzero u64",
            "expected a whole number from 1 up",
        ),
        (
            "expected a nonzero u32",
            "expected a whole number from 1 up",
        ),
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected a table"),
        ("expected path string", "expected a path"),
        ("invalid type: ", ""),
        ("invalid value: ", ""),
    ];
    let mut message = message.to_owned();
    for (rust, ours) in WORDS {
        message = message.replace(rust, ours);
    }
    message
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// `listen = "ADDR"` or `listen = ["ADDR", ...]`.
fn one_or_more_addresses<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<SocketAddr>>, D::Error> {
    struct Addresses;

    impl<'de> serde::de::Visitor<'de> for Addresses {
        type Value = Vec<SocketAddr>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an address such as \"0.0.0.0:7722\", or a list of them")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            text.parse()
                .map(|a| vec![a])
                .map_err(|e| E::custom(format!("invalid address {text:?}: {e}")))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut addresses: Vec<SocketAddr> = Vec::new();
            while let Some(a) = seq.next_element()? {
                if addresses.contains(&a) {
                    return Err(serde::de::Error::custom(format!("{a} is listed twice")));
                }
                addresses.push(a);
            }
            if addresses.is_empty() {
                return Err(serde::de::Error::custom(
                    "no address to listen on: give at least one, such as \"0.0.0.0:7722\"",
                ));
            }
            Ok(addresses)
        }
    }

    d.deserialize_any(Addresses).map(Some)
}

/// `--broker`'s values, each a broker URL.
fn broker_url(text: &str) -> Result<String, String> {
    rexec_broker::validate_url(text.trim())
        .map(|()| text.trim().to_owned())
        .map_err(|e| e.to_string())
}

/// `--name`: an agent name on the broker.
fn broker_name(text: &str) -> Result<String, String> {
    rexec_broker::validate_name(text)
        .map(|()| text.to_owned())
        .map_err(|e| e.to_string())
}

/// `--broker-prefix`: a subject prefix.
fn subject_prefix(text: &str) -> Result<String, String> {
    rexec_broker::validate_prefix(text)
        .map(|()| text.to_owned())
        .map_err(|e| e.to_string())
}

/// `url = "URL"` or `url = ["URL", ...]` in `[broker]`.
fn one_or_more_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(String),
        More(Vec<String>),
    }
    let urls = match OneOrMore::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected a broker URL such as \"tls://broker.lab:4222\", or a list of them",
        )
    })? {
        OneOrMore::One(url) => vec![url],
        OneOrMore::More(urls) => urls,
    };
    if urls.is_empty() {
        return Err(serde::de::Error::custom(
            "no broker URL: give at least one, such as \"tls://broker.lab:4222\"",
        ));
    }
    for url in &urls {
        broker_url(url).map_err(serde::de::Error::custom)?;
    }
    Ok(Some(urls))
}

/// `name` in `[broker]`.
fn agent_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let name = String::deserialize(d)?;
    broker_name(&name)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `subject_prefix` in `[broker]`.
fn prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let prefix = String::deserialize(d)?;
    subject_prefix(&prefix)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// The `[run_as]` table: each client needs at least one user, and no user
/// name is empty.
fn run_as_rules<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, Vec<String>>>, D::Error> {
    let rules = BTreeMap::<String, Vec<String>>::deserialize(d)?;
    for (client, users) in &rules {
        if users.is_empty() {
            return Err(serde::de::Error::custom(format!(
                "client {client:?} has no user to run as: list at least one, or remove it"
            )));
        }
        if users.iter().any(String::is_empty) {
            return Err(serde::de::Error::custom(format!(
                "client {client:?} has an empty user name"
            )));
        }
    }
    Ok(Some(rules))
}

/// A value the file writes as a string: a duration (`"10s"`, `"1m 30s"`),
/// or `max_startups` (`"10:30:100"`, or `100` for a plain cap).
trait Text: Sized {
    /// What the file should say instead, for the error message.
    const EXPECTING: &'static str;
    /// Whether a bare number stands for its own digits.
    const NUMBER: bool;
    /// The value as the file writes it.
    fn render(&self) -> String;
    /// The value the file's text says, or what is wrong with it.
    fn read(text: &str) -> Result<Self, String>;
}

impl Text for Duration {
    const EXPECTING: &'static str = "a duration in quotes, such as \"10s\", \"1m 30s\" or \"2h\"";
    const NUMBER: bool = false;

    fn render(&self) -> String {
        humantime::format_duration(*self).to_string()
    }

    fn read(text: &str) -> Result<Self, String> {
        crate::config::parse_duration(text)
    }
}

impl Text for MaxStartups {
    const EXPECTING: &'static str =
        "\"START:RATE:FULL\" in quotes, such as \"32:30:128\", or one number";
    const NUMBER: bool = true;

    fn render(&self) -> String {
        self.to_string()
    }

    fn read(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|e: crate::limits::ParseMaxStartupsError| e.to_string())
    }
}

impl Text for CertFingerprint {
    const EXPECTING: &'static str =
        "a fingerprint in quotes, such as \"sha256:3f2a…\" (64 hex digits)";
    const NUMBER: bool = false;

    fn render(&self) -> String {
        self.to_string()
    }

    fn read(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|e: rexec_broker::ParseCertFingerprintError| e.to_string())
    }
}

/// `Option<T: Text>` fields, as their text.
mod text_opt {
    use std::marker::PhantomData;

    use serde::de::{Error, Unexpected};

    use super::*;

    pub fn serialize<T: Text, S: Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => s.serialize_str(&value.render()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_any(Visitor(PhantomData)).map(Some)
    }

    struct Visitor<T>(PhantomData<T>);

    impl<T: Text> serde::de::Visitor<'_> for Visitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(T::EXPECTING)
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<T, E> {
            T::read(text).map_err(E::custom)
        }

        fn visit_i64<E: Error>(self, n: i64) -> Result<T, E> {
            if T::NUMBER {
                self.visit_str(&n.to_string())
            } else {
                Err(E::invalid_type(Unexpected::Signed(n), &self))
            }
        }

        fn visit_u64<E: Error>(self, n: u64) -> Result<T, E> {
            if T::NUMBER {
                self.visit_str(&n.to_string())
            } else {
                Err(E::invalid_type(Unexpected::Unsigned(n), &self))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, ConfigFileError> {
        ConfigFile::parse(text, Path::new("/etc/rexec/agent.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    /// The error for `text`, checked to begin with `start`.
    fn error_starting(text: &str, start: &str) -> String {
        let e = error(text);
        assert!(e.starts_with(start), "{e}");
        e
    }

    #[test]
    fn value_errors_name_no_rust_types() {
        for text in [
            "max_sessions = \"5\"\n",
            "max_sessions = 0\n",
            "max_sessions = 99999999999999999999999\n",
            "max_copy_bytes = \"x\"\n",
            "[run_as]\nalice = 3\n",
            "run_as = 3\n",
            "dir = 5\n",
        ] {
            let e = error(text);
            for rust in [
                "usize",
                "u64",
                "i128",
                "sequence",
                "map",
                "path string",
                "invalid type",
            ] {
                assert!(!e.contains(rust), "{text:?}: {e}");
            }
        }
        assert!(
            error("max_sessions = 0\n").ends_with("expected a whole number from 1 up"),
            "{}",
            error("max_sessions = 0\n")
        );
    }

    #[test]
    fn empty_file_means_defaults() {
        let file = parse("# nothing set\n").unwrap();
        assert_eq!(file, ConfigFile::default());
        let settings = file.settings(None);
        let defaults = AgentSettings::new(crate::config::DEFAULT_DIR);
        assert_eq!(
            ConfigFile::from_settings(&settings, &file.listen()),
            ConfigFile::from_settings(&defaults, &default_listen())
        );
    }

    #[test]
    fn every_key_reaches_the_settings() {
        let file = parse(
            r#"
dir = "/srv/rexec"
listen = ["127.0.0.1:7000", "[::1]:7000"]
max_sessions = 10
max_startups = "5:50:20"
per_source_max_startups = 4
max_execs = 8
max_execs_per_client = 3
handshake_timeout = "5s"
kill_grace = "1s"
shutdown_grace = "1m"
max_timeout = "2h"
keepalive_interval = "30s"
keepalive_count = 2
shell = "/bin/bash"
max_copy_bytes = 1000
state_dir = "/srv/jobs"
max_jobs = 5
max_job_output = 4096
job_retention = "1h"

[jobs]
admins = ["ops"]

[run_as]
alice = ["www-data", "backup"]
ops = ["*"]
"#,
        )
        .unwrap();
        let s = file.settings(None);
        assert_eq!(s.dir, Path::new("/srv/rexec"));
        assert_eq!(file.listen().len(), 2);
        assert_eq!(s.max_sessions, 10);
        assert_eq!(s.max_startups.to_string(), "5:50:20");
        assert_eq!(s.per_source_max_startups, 4);
        assert_eq!(s.max_execs, 8);
        assert_eq!(s.max_execs_per_client, 3);
        assert_eq!(s.handshake_timeout, Duration::from_secs(5));
        assert_eq!(s.kill_grace, Duration::from_secs(1));
        assert_eq!(s.shutdown_grace, Duration::from_secs(60));
        assert_eq!(s.max_timeout, Some(Duration::from_secs(7200)));
        assert_eq!(s.keepalive_interval, Duration::from_secs(30));
        assert_eq!(s.keepalive_count, 2);
        assert_eq!(s.shell, Path::new("/bin/bash"));
        assert_eq!(s.max_copy_bytes, Some(1000));
        assert_eq!(s.jobs.state_dir, Path::new("/srv/jobs"));
        assert_eq!(s.jobs.max_jobs, 5);
        assert_eq!(s.jobs.max_output, 4096);
        assert_eq!(s.jobs.retention, Duration::from_secs(3600));
        assert!(s.jobs.is_admin("ops") && !s.jobs.is_admin("alice"));
        assert!(s.run_as.allows("alice", "backup"));
        assert!(s.run_as.allows("ops", "root"));
        assert!(!s.run_as.allows("alice", "root"));
        // What --check prints reads back to the same settings.
        let rendered = ConfigFile::from_settings(&s, &file.listen()).to_toml();
        let again = parse(&rendered).unwrap();
        assert_eq!(again.changed_keys(&file), Vec::<&str>::new(), "{rendered}");
    }

    /// The example shipped in systemd/agent.toml, installed as
    /// /etc/rexec/agent.toml.
    const EXAMPLE: &str = include_str!("../../systemd/agent.toml");

    #[test]
    fn example_config_parses_as_defaults() {
        let file = parse(EXAMPLE).unwrap();
        assert_eq!(file, ConfigFile::default(), "every key is commented out");
    }

    #[test]
    fn example_config_documents_every_key_with_its_default() {
        // Uncomment each `# key = value` line (the run_as example lines are
        // indented, so they stay comments).
        let uncommented: String = EXAMPLE
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    format!("{rest}\n")
                }
                _ => format!("{line}\n"),
            })
            .collect();
        let file = parse(&uncommented).unwrap();
        let defaults = AgentSettings::new(crate::config::DEFAULT_DIR);
        let mut documented = ConfigFile::from_settings(&defaults, &default_listen());
        documented.run_as = None;
        assert_eq!(file, documented, "{uncommented}");
    }

    #[test]
    fn example_broker_table_parses_when_uncommented() {
        let start = EXAMPLE.find("# [broker]").expect("a [broker] example");
        let table: String = EXAMPLE[start..]
            .lines()
            .filter_map(|line| {
                let line = line.strip_prefix("# ")?.trim_start();
                (!line.starts_with('#')).then(|| format!("{line}\n"))
            })
            .collect();
        let b = broker(&table).unwrap_or_else(|| panic!("{table}"));
        assert_eq!(b.name, "labpc07");
        assert!(matches!(b.credentials, Credentials::UserPassword { .. }));
    }

    #[test]
    fn dir_flag_wins_over_the_file() {
        let file = parse("dir = \"/srv/rexec\"\n").unwrap();
        let s = file.settings(Some("/tmp/x".into()));
        assert_eq!(s.dir, Path::new("/tmp/x"));
    }

    #[test]
    fn zero_max_timeout_means_no_limit() {
        let file = parse("max_timeout = \"0s\"\n").unwrap();
        assert_eq!(file.settings(None).max_timeout, None);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        error_starting(
            "max_sessions = 4\n\nmax_sesions = 5\n",
            "/etc/rexec/agent.toml:3:1: unknown key `max_sesions`",
        );
    }

    #[test]
    fn unknown_key_in_a_table_names_key_and_line() {
        let e = error("[run_as]\nalice = [\"x\"]\n[limits]\nfoo = 1\n");
        assert!(e.starts_with("/etc/rexec/agent.toml:3:"), "{e}");
        assert!(e.contains("unknown key `limits`"), "{e}");
    }

    #[test]
    fn bad_duration_names_key_line_and_column() {
        error_starting(
            "# limits\nhandshake_timeout = \"10 parsecs\"\n",
            "/etc/rexec/agent.toml:2:21: bad value for `handshake_timeout`: invalid duration \"10 parsecs\"",
        );
    }

    #[test]
    fn unquoted_duration_says_what_is_expected() {
        let e = error_starting(
            "kill_grace = 10\n",
            "/etc/rexec/agent.toml:1:14: bad value for `kill_grace`",
        );
        assert!(e.contains("a duration in quotes"), "{e}");
    }

    #[test]
    fn wrong_type_and_zero_limits_are_refused() {
        error_starting(
            "max_sessions = \"many\"\n",
            "/etc/rexec/agent.toml:1:16: bad value for `max_sessions`",
        );
        let e = error_starting(
            "\nmax_execs_per_client = 0\n",
            "/etc/rexec/agent.toml:2:24: bad value for `max_execs_per_client`",
        );
        assert!(e.contains("from 1 up"), "{e}");
    }

    #[test]
    fn bad_listen_address_and_run_as_entry_name_their_place() {
        error_starting(
            "listen = [\"127.0.0.1:7722\", \"localhost\"]\n",
            "/etc/rexec/agent.toml:1:29: bad value for `listen[1]`",
        );
        error_starting(
            "[run_as]\nalice = [\"www-data\", 3]\n",
            "/etc/rexec/agent.toml:2:22: bad value for `run_as.alice[1]`",
        );
    }

    #[test]
    fn extreme_durations_and_empty_or_repeated_lists_are_refused() {
        let e = error("max_timeout = \"18446744073709551615s\"\n");
        assert!(
            e.starts_with("/etc/rexec/agent.toml:1:15: bad value for `max_timeout`")
                && e.ends_with("longer than 10 years"),
            "{e}"
        );
        let e = error("kill_grace = \"99999999999999999999999999h\"\n");
        assert!(e.ends_with("longer than 10 years"), "{e}");
        let e = error("listen = []\n");
        assert!(e.contains("no address to listen on"), "{e}");
        let e = error("listen = [\"127.0.0.1:7000\", \"127.0.0.1:7000\"]\n");
        assert!(e.contains("127.0.0.1:7000 is listed twice"), "{e}");
        let e = error("[run_as]\nalice = []\n");
        assert!(e.contains("\"alice\" has no user to run as"), "{e}");
        let e = error("[run_as]\nalice = [\"\"]\n");
        assert!(e.contains("empty user name"), "{e}");
    }

    #[test]
    fn listen_takes_one_address_or_a_list() {
        let one = parse("listen = \"127.0.0.1:7000\"\n").unwrap();
        assert_eq!(one.listen(), vec!["127.0.0.1:7000".parse().unwrap()]);
        error_starting(
            "listen = \"localhost\"\n",
            "/etc/rexec/agent.toml:1:10: bad value for `listen`: invalid address \"localhost\"",
        );
    }

    #[test]
    fn toml_syntax_error_names_the_line() {
        let e = error("max_sessions = 4\nshell = /bin/sh\n");
        assert!(e.starts_with("/etc/rexec/agent.toml:2:9: "), "{e}");
        assert!(e.ends_with("`shell = /bin/sh`"), "{e}");
        let e = error("max_sessions = 4\nmax_sessions = 5\n");
        assert!(e.starts_with("/etc/rexec/agent.toml:2:"), "{e}");
        assert!(e.ends_with("`max_sessions = 5`"), "{e}");
    }

    #[test]
    fn max_startups_takes_sshd_form_or_a_number_and_refuses_nonsense() {
        let plain = parse("max_startups = 50\n").unwrap().settings(None);
        assert_eq!(plain.max_startups.to_string(), "50:100:50");
        for bad in [
            "\"0:30:100\"",
            "\"10:130:100\"",
            "\"20:30:10\"",
            "\"10:30\"",
            "-1",
        ] {
            error_starting(
                &format!("max_startups = {bad}\n"),
                "/etc/rexec/agent.toml:1:16: bad value for `max_startups`",
            );
        }
    }

    #[test]
    fn changed_keys_lists_what_differs() {
        let a = parse("max_sessions = 4\nshell = \"/bin/sh\"\n").unwrap();
        let b = parse("max_sessions = 5\nshell = \"/bin/sh\"\nkill_grace = \"1s\"\n").unwrap();
        assert_eq!(a.changed_keys(&b), vec!["max_sessions", "kill_grace"]);
    }

    const PIN: &str = "sha256:3f2a6c0d9b1e4f5a8c7d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b";

    fn broker(text: &str) -> Option<BrokerSettings> {
        parse(text)
            .unwrap()
            .broker
            .settings(|| Ok("thishost".to_owned()))
            .unwrap()
    }

    fn broker_error(text: &str) -> String {
        parse(text)
            .unwrap()
            .broker
            .settings(|| Ok("thishost".to_owned()))
            .unwrap_err()
    }

    #[test]
    fn the_broker_table_reaches_the_broker_settings() {
        let text = format!(
            r#"
[broker]
url = ["tls://broker1.lab:4222", "tls://broker2.lab:4222"]
name = "labpc07"
subject_prefix = "lab.rexec"
fingerprint = "{PIN}"
user = "labpc07"
password_file = "/etc/rexec/broker.pass"
"#
        );
        let b = broker(&text).unwrap();
        assert_eq!(b.urls, ["tls://broker1.lab:4222", "tls://broker2.lab:4222"]);
        assert_eq!(b.name, "labpc07");
        assert_eq!(b.subject_prefix, "lab.rexec");
        assert_eq!(b.fingerprint.unwrap().to_string(), PIN);
        assert_eq!(
            b.credentials,
            Credentials::UserPassword {
                user: "labpc07".into(),
                password_file: "/etc/rexec/broker.pass".into()
            }
        );
        let options = b.options();
        assert!(
            options.retry_forever,
            "an agent never gives up on its broker"
        );
        assert_eq!(options.subject_prefix, "lab.rexec");
        assert_eq!(
            options.serves.as_deref(),
            Some("labpc07"),
            "its replies come back under its name"
        );

        let b = broker("[broker]\nurl = \"nats://b:4222\"\ncreds_file = \"/c\"\n").unwrap();
        assert_eq!(b.urls, ["nats://b:4222"]);
        assert_eq!(b.name, "thishost", "the host name by default");
        assert_eq!(b.subject_prefix, "rexec");
        assert_eq!(b.credentials, Credentials::CredsFile("/c".into()));
        let b = broker("[broker]\nurl = \"nats://b\"\ntoken_file = \"/t\"\nca_file = \"/ca\"\n")
            .unwrap();
        assert_eq!(b.credentials, Credentials::TokenFile("/t".into()));
        assert_eq!(b.ca_file.as_deref(), Some(Path::new("/ca")));
        assert_eq!(broker("# none\n"), None);
    }

    #[test]
    fn a_broker_without_listen_opens_no_tcp_port_and_with_it_both() {
        let only = parse("[broker]\nurl = \"nats://b:4222\"\n").unwrap();
        assert_eq!(only.listen(), Vec::<SocketAddr>::new());
        let both =
            parse("listen = \"127.0.0.1:7722\"\n[broker]\nurl = \"nats://b:4222\"\n").unwrap();
        assert_eq!(both.listen(), vec!["127.0.0.1:7722".parse().unwrap()]);
        assert_eq!(parse("").unwrap().listen(), default_listen());
    }

    #[test]
    fn bad_broker_values_name_their_key_and_line() {
        let e = error_starting(
            "[broker]\nurl = \"http://b:4222\"\n",
            "/etc/rexec/agent.toml:2:7: bad value for `broker.url`",
        );
        assert!(
            e.contains("is not a nats://HOST:PORT or tls://HOST:PORT URL"),
            "{e}"
        );
        error_starting(
            "[broker]\nurl = [\"nats://a\", \"b:4222\"]\n",
            "/etc/rexec/agent.toml:2:7: bad value for `broker.url`",
        );
        let e = error("[broker]\nurl = []\n");
        assert!(e.contains("no broker URL"), "{e}");
        let e = error_starting(
            "[broker]\nurl = \"nats://b\"\nname = \"lab.pc07\"\n",
            "/etc/rexec/agent.toml:3:8: bad value for `broker.name`",
        );
        assert!(e.contains("only letters, digits"), "{e}");
        error_starting(
            "[broker]\nsubject_prefix = \"rexec.>\"\n",
            "/etc/rexec/agent.toml:2:18: bad value for `broker.subject_prefix`",
        );
        let e = error_starting(
            "[broker]\nfingerprint = \"SHA256:abc\"\n",
            "/etc/rexec/agent.toml:2:15: bad value for `broker.fingerprint`",
        );
        assert!(e.contains("sha256: and 64 hex digits"), "{e}");
        let e = error_starting("[broker]\npassword = \"x\"\n", "/etc/rexec/agent.toml:");
        assert!(e.contains("unknown key `password`"), "{e}");
        for e in [
            error("[broker]\nurl = 3\n"),
            error("[broker]\nfingerprint = 3\n"),
        ] {
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn broker_credentials_are_one_kind_and_a_user_has_a_password_file() {
        let e = broker_error(
            "[broker]\nurl = \"nats://b\"\ncreds_file = \"/c\"\ntoken_file = \"/t\"\n",
        );
        assert_eq!(
            e,
            "give one kind of broker credentials: creds_file, user with password_file, or token_file"
        );
        let e = broker_error("[broker]\nurl = \"nats://b\"\nuser = \"u\"\n");
        assert!(
            e.starts_with("broker user \"u\" has no password file"),
            "{e}"
        );
        let e = broker_error("[broker]\nurl = \"nats://b\"\npassword_file = \"/p\"\n");
        assert!(e.contains("without a user"), "{e}");
        let e = broker_error("[broker]\nname = \"labpc07\"\n");
        assert!(e.contains("without a broker URL"), "{e}");
        let e = parse("[broker]\nurl = \"nats://b\"\n")
            .unwrap()
            .broker
            .settings(|| Err("no host name".to_owned()))
            .unwrap_err();
        assert_eq!(e, "no host name");
    }

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        flags: ConfigFile,
    }

    fn flags(args: &[&str]) -> ConfigFile {
        use clap::Parser;
        let mut argv = vec!["run"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv).unwrap().flags
    }

    #[test]
    fn broker_flags_lie_over_the_table_key_by_key() {
        let file = parse(
            "[broker]\nurl = \"nats://file:4222\"\nname = \"labpc07\"\ntoken_file = \"/t\"\n",
        )
        .unwrap();
        let given = flags(&[
            "--broker",
            "tls://a:4222,tls://b:4222",
            "--broker-prefix",
            "lab",
        ])
        .over(file);
        let b = given.broker.settings(|| Ok("x".into())).unwrap().unwrap();
        assert_eq!(b.urls, ["tls://a:4222", "tls://b:4222"]);
        assert_eq!(b.name, "labpc07", "the file's name stays");
        assert_eq!(b.subject_prefix, "lab");
        assert_eq!(b.credentials, Credentials::TokenFile("/t".into()));

        let given = flags(&[
            "--broker",
            "nats://a",
            "--broker",
            "nats://b",
            "--name",
            "node_01",
            "--broker-user",
            "node01",
            "--broker-password-file",
            "/p",
            "--broker-fingerprint",
            PIN,
        ]);
        let b = given.broker.settings(|| Ok("x".into())).unwrap().unwrap();
        assert_eq!(b.urls, ["nats://a", "nats://b"]);
        assert_eq!(b.name, "node_01");
        assert_eq!(b.fingerprint.unwrap().to_string(), PIN);

        use clap::Parser;
        for bad in [
            &["--broker", "broker.lab:4222"][..],
            &["--broker", "nats://a", "--name", "a.b"],
            &["--broker-prefix", "a..b"],
            &["--broker-fingerprint", "sha256:00"],
            &["--broker-password", "secret"],
        ] {
            let mut argv = vec!["run"];
            argv.extend_from_slice(bad);
            assert!(Flags::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_broker_settings_print_and_read_back() {
        let text =
            "[broker]\nurl = \"tls://b:4222\"\nca_file = \"/ca.crt\"\ncreds_file = \"/a.creds\"\n";
        let file = parse(text).unwrap();
        let mut settings = file.settings(None);
        settings.broker = file.broker.settings(|| Ok("labpc07".into())).unwrap();
        let rendered = ConfigFile::from_settings(&settings, &file.listen()).to_toml();
        assert!(!rendered.contains("listen"), "no TCP port: {rendered}");
        assert!(rendered.contains("[broker]\nurl = [\"tls://b:4222\"]\nname = \"labpc07\"\nsubject_prefix = \"rexec\"\n"), "{rendered}");
        let again = parse(&rendered).unwrap();
        assert_eq!(again.listen(), Vec::<SocketAddr>::new());
        assert_eq!(
            again.broker.settings(|| Ok("other".into())).unwrap(),
            settings.broker
        );
        let b = parse("[broker]\nurl = \"nats://b\"\nname = \"a\"\n").unwrap();
        let c = parse("[broker]\nurl = \"nats://b\"\nname = \"c\"\n").unwrap();
        assert_eq!(b.changed_keys(&c), vec!["broker.name"]);
        let pinned = format!("[broker]\nurl = \"nats://b\"\nfingerprint = \"{PIN}\"\n");
        let file = parse(&pinned).unwrap();
        let mut settings = file.settings(None);
        settings.broker = file.broker.settings(|| Ok("labpc07".into())).unwrap();
        let rendered = ConfigFile::from_settings(&settings, &[]).to_toml();
        assert!(
            rendered.contains(&format!("fingerprint = \"{PIN}\"")),
            "{rendered}"
        );
    }
}
