//! One command on the wire: the request that runs it ([`ExecRequest`],
//! with its terminal and size), the signals a client may send it, and how
//! it ended ([`ExitStatus`]). Both the plain exec of [`crate::message`] and
//! the detached job of [`crate::job`] carry these.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A request to run one command through the agent's shell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The command line, run as `$SHELL -c COMMAND`.
    pub command: String,
    /// Variables added to the child's clean base environment, in order.
    pub env: Vec<(String, String)>,
    /// Working directory; the target user's home when absent.
    pub cwd: Option<String>,
    /// Run as this user instead of the agent's own.
    pub user: Option<String>,
    /// Kill the command's process group when it runs longer than this.
    pub timeout: Option<Duration>,
    /// Whether [`crate::ClientMessage::Stdin`] chunks follow; when false the child's
    /// stdin is empty (`/dev/null`).
    pub stdin: bool,
    /// Run the command on a pseudo-terminal of this kind and size. Its
    /// output then arrives as [`crate::AgentMessage::Stdout`] only (a terminal has
    /// one output stream).
    pub pty: Option<PtyRequest>,
    /// The name the client used for this agent (`labpc07`, from
    /// `ctl exec @lab …`); the command sees it as `REXEC_TARGET`, as pssh
    /// gives `PSSH_HOST`. Added in protocol 3.
    pub target: Option<String>,
}

/// A pseudo-terminal for an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyRequest {
    /// The `TERM` value for the command (e.g. `xterm-256color`).
    pub term: String,
    /// The initial size.
    pub size: WindowSize,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// A signal the client may ask the agent to deliver. Named rather than
/// numbered because numbers differ between systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RemoteSignal {
    /// SIGINT, what Ctrl-C sends.
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGHUP.
    Hangup,
    /// SIGKILL.
    Kill,
    /// SIGQUIT.
    Quit,
}

/// How a remote command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal {
        /// The signal number on the agent's system.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// Its timeout expired and the agent killed its process group.
    TimedOut,
}
