//! The agent's settings: where its files are and the limits it enforces.
//!
//! Every setting has a default here and a command line flag in `main.rs`;
//! the defaults are the ones documented in the README.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rexec_protocol::IdentityPaths;

/// Where the agent keeps its files unless told otherwise.
pub const DEFAULT_DIR: &str = "/etc/rexec";
/// Concurrent sessions (connections) the agent serves before refusing more.
pub const DEFAULT_MAX_SESSIONS: usize = 256;
/// Time a new connection has to finish TLS and send its request.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time between SIGTERM and SIGKILL when a command's process group is killed.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// The shell that runs commands, as `SHELL -c COMMAND`.
pub const DEFAULT_SHELL: &str = "/bin/sh";

/// Everything a running agent needs to know.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The directory holding the identity and the authorized clients file.
    pub dir: PathBuf,
    /// Most concurrent sessions; connections beyond it are closed at once.
    pub max_sessions: usize,
    /// Limit on TLS handshake plus hello plus request.
    pub handshake_timeout: Duration,
    /// SIGTERM-to-SIGKILL grace when killing a command's process group.
    pub kill_grace: Duration,
    /// The shell commands run under.
    pub shell: PathBuf,
}

impl AgentSettings {
    /// Defaults, with files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AgentSettings {
            dir: dir.into(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            kill_grace: DEFAULT_KILL_GRACE,
            shell: PathBuf::from(DEFAULT_SHELL),
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
