//! What can keep `ctl` from running a command, and the exit codes it uses.
//!
//! Every such failure exits 255, like ssh, with one line on stderr saying
//! which; the kind names stay stable for machine-readable output.

use std::path::PathBuf;
use std::time::Duration;

use rexec_protocol::{ErrorReport, ExitStatus, Fingerprint, FrameError, IdentityError};

use crate::plain;

/// ctl could not run the command.
pub const EXIT_CTL_ERROR: u8 = 255;
/// The command's timeout expired.
pub const EXIT_TIMED_OUT: u8 = 124;
/// Our stdout was closed by its reader (`ctl … | head`): 128 + SIGPIPE, as
/// a shell reports a process killed by SIGPIPE.
pub const EXIT_BROKEN_PIPE: u8 = 141;
/// Interrupted by a second Ctrl-C: 128 + SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The exit code `ctl` passes on for a remote status.
pub fn exit_code(status: ExitStatus) -> u8 {
    match status {
        // No process ends with a code outside 0-255 or a signal outside
        // 1-127: an agent that says so (a broken or hostile one) gets
        // ctl's own failure, never a wrapped 0 beside "1 of 1 hosts failed".
        ExitStatus::Code(code) => u8::try_from(code).unwrap_or(EXIT_CTL_ERROR),
        ExitStatus::Signal { signal, .. } if (1..=127).contains(&signal) => (128 + signal) as u8,
        ExitStatus::TimedOut => EXIT_TIMED_OUT,
        _ => EXIT_CTL_ERROR,
    }
}

/// Why ctl could not run a command on a target, by where the failure
/// arose. Each source decides its own kinds; [`CtlError::kind`] and
/// [`HostFailure`] map them to `--json` kinds and exit codes, here only.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// One of our own files: identity, known hosts, a copy's files.
    #[error(transparent)]
    File(#[from] FileError),
    /// Reaching the agent, or the conversation with it.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The agent reported an error.
    #[error("agent error ({}): {}", .0.kind, plain::agent_text(&.0.message))]
    Agent(ErrorReport),
    /// Our output (stdout, an output directory, the terminal) could not
    /// be written or set up.
    #[error("{0}")]
    Output(String),
    /// What ctl itself needs (a runtime, signal handlers) is not there.
    #[error("{0}")]
    Local(String),
}

/// A local file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// There is no client identity yet.
    #[error("no client identity at {0} (create one with: ctl keygen)")]
    NoIdentity(PathBuf),
    /// The identity exists but cannot be used.
    #[error("{}", plain::identity_error(.0))]
    Identity(#[from] IdentityError),
    /// The known hosts file cannot be read or written.
    #[error("known hosts {}: {}", .path.display(), plain::io_error(.source))]
    KnownHosts {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file a copy reads or writes on this side.
    #[error("{0}")]
    Copy(String),
}

/// Reaching an agent, or talking to it, failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The host name did not resolve.
    #[error("cannot resolve the host name: {}", plain::io_error(.0))]
    Resolve(std::io::Error),
    /// TCP connect failed.
    #[error("cannot connect: {}", plain::io_error(.0))]
    Connect(std::io::Error),
    /// Connecting plus the handshake took longer than allowed.
    #[error("no answer within the connect timeout of {}", humantime::format_duration(*.0))]
    ConnectTimeout(Duration),
    /// The agent's key differs from the one on record.
    #[error(
        "HOST KEY CHANGED: known hosts has {known}, the agent presented {presented}. \
         This may be an attack, or the agent was re-installed. If you know it was \
         re-installed, run: {remove}"
    )]
    HostKeyChanged {
        /// The command that forgets the old key, as the user can paste it:
        /// `ctl [--config-dir DIR] known-hosts remove HOST:PORT`.
        remove: String,
        /// On record.
        known: Fingerprint,
        /// Presented.
        presented: Fingerprint,
    },
    /// An unknown host was refused by --strict-host-key.
    #[error(
        "unknown host (fingerprint {0}) refused by --strict-host-key; add it to known hosts first"
    )]
    UnknownHost(Fingerprint),
    /// The agent refused our identity.
    #[error(
        "the agent refused this client: is {0} authorized there? (on the agent: rexec-agent authorize {0})"
    )]
    NotAuthorized(Fingerprint),
    /// The TLS handshake failed for another reason.
    #[error("TLS handshake failed: {}", plain::io_error(.0))]
    Handshake(std::io::Error),
    /// The peers speak different protocol versions.
    #[error(
        "the agent speaks protocol {agent} ({}), this ctl speaks {ours}",
        plain::short_text(.software, rexec_protocol::SOFTWARE_SHOWN)
    )]
    VersionMismatch {
        /// The agent's version.
        agent: u32,
        /// The agent's software.
        software: String,
        /// Ours.
        ours: u32,
    },
    /// The agent sent something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The agent did not report within ctl's own deadline (its `--timeout`
    /// plus the connect timeout plus a margin): it stopped answering.
    #[error(
        "no answer from the agent within {}; ctl gave up on this host (the command may still be running there)",
        humantime::format_duration(*.0)
    )]
    NoAnswer(Duration),
    /// The connection broke before the command's end was reported.
    #[error("connection lost: {0}")]
    Lost(String),
    /// No agent of that name is connected to the broker (the broker said
    /// so at once: nobody serves the name).
    #[error("not connected to the broker")]
    Offline,
    /// The broker dropped or damaged the session's messages (or our
    /// connection to it went down) before the command's end was reported.
    #[error("the session through the broker was lost: {0}")]
    SessionLost(String),
    /// The broker cannot be reached, refused us, or failed us.
    #[error("{0}")]
    Broker(String),
}

impl From<IdentityError> for CtlError {
    fn from(e: IdentityError) -> CtlError {
        CtlError::File(FileError::Identity(e))
    }
}

impl CtlError {
    /// The connection to the agent broke, in plain words.
    pub fn lost(e: &FrameError) -> CtlError {
        match e {
            FrameError::Io(io) => CtlError::lost_io(io),
            other => ConnectionError::Protocol(plain::frame_error(other)).into(),
        }
    }

    /// The stream to the agent broke: through a broker, the carrier says
    /// why (kind `lost`); over TCP, the system does.
    pub fn lost_io(io: &std::io::Error) -> CtlError {
        match rexec_broker::BrokerError::from_io(io) {
            Some(rexec_broker::BrokerError::Lost(reason)) => {
                ConnectionError::SessionLost(reason.to_string()).into()
            }
            Some(other) => ConnectionError::Broker(other.to_string()).into(),
            None => ConnectionError::Lost(plain::io_error(io)).into(),
        }
    }

    /// A frame from the agent could not be read.
    pub fn frame(e: FrameError) -> CtlError {
        CtlError::lost(&e)
    }

    /// The agent sent a message that has no place here.
    pub fn unexpected(message: &impl std::fmt::Debug) -> CtlError {
        // The variant's name only: its contents may be large, or hostile.
        let text = format!("{message:?}");
        let name: String = text
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        ConnectionError::Protocol(format!("the agent sent an unexpected {name} message")).into()
    }

    /// A runtime for ctl's own tasks could not be started.
    pub fn runtime(e: &std::io::Error) -> CtlError {
        CtlError::Local(format!("cannot start the runtime: {}", plain::io_error(e)))
    }

    /// `what` (our stdout, a file) could not be written.
    pub fn write_failed(what: &str, e: &std::io::Error) -> CtlError {
        CtlError::Output(format!("cannot write {what}: {}", plain::io_error(e)))
    }

    /// A short stable name for the kind of failure.
    pub fn kind(&self) -> &'static str {
        match self {
            CtlError::Usage(_) => "usage",
            CtlError::File(e) => match e {
                FileError::NoIdentity(_) | FileError::Identity(_) => "identity",
                FileError::KnownHosts { .. } => "known-hosts",
                FileError::Copy(_) => "local",
            },
            CtlError::Connection(e) => match e {
                ConnectionError::Resolve(_) => "resolve",
                ConnectionError::Connect(_) => "connect",
                ConnectionError::ConnectTimeout(_) => "connect-timeout",
                ConnectionError::HostKeyChanged { .. } => "host-key-changed",
                ConnectionError::UnknownHost(_) => "unknown-host",
                ConnectionError::NotAuthorized(_) => "not-authorized",
                ConnectionError::Handshake(_) => "handshake",
                ConnectionError::VersionMismatch { .. } => "version-mismatch",
                ConnectionError::Protocol(_) => "protocol",
                ConnectionError::Lost(_) => "connection-lost",
                ConnectionError::NoAnswer(_) => "no-answer",
                ConnectionError::Offline => "offline",
                ConnectionError::SessionLost(_) => "lost",
                ConnectionError::Broker(_) => "broker",
            },
            CtlError::Agent(report) => report.kind.as_str(),
            CtlError::Output(_) | CtlError::Local(_) => "local",
        }
    }
}

/// Why a host of a multi-host run has no result of its own.
#[derive(Debug, thiserror::Error)]
pub enum HostFailure {
    /// ctl could not run the job there.
    #[error(transparent)]
    Ctl(#[from] CtlError),
    /// The job did not finish within its own time limit; ctl gave up on it.
    #[error("not done within the timeout of {}; ctl gave up on this host", humantime::format_duration(*.0))]
    Deadline(Duration),
    /// The run was interrupted (Ctrl-C) before this host finished.
    #[error("interrupted")]
    Interrupted,
    /// `--max-failures K` hosts had failed before this one's turn came,
    /// so it was never started.
    #[error("not started: {0} hosts had failed (--max-failures {0})")]
    NotStarted(usize),
}

impl HostFailure {
    /// A short stable name for the kind of failure.
    pub fn kind(&self) -> &'static str {
        match self {
            HostFailure::Ctl(e) => e.kind(),
            HostFailure::Deadline(_) => "deadline",
            HostFailure::Interrupted => "interrupted",
            HostFailure::NotStarted(_) => "not-started",
        }
    }

    /// The `status` of the host's `--json` record.
    pub fn status(&self) -> &'static str {
        match self {
            HostFailure::Ctl(_) => "error",
            HostFailure::Deadline(_) => "timed-out",
            HostFailure::Interrupted => "interrupted",
            HostFailure::NotStarted(_) => "not-started",
        }
    }

    /// The exit code this failure contributes.
    pub fn exit_code(&self) -> u8 {
        match self {
            HostFailure::Ctl(_) | HostFailure::NotStarted(_) => EXIT_CTL_ERROR,
            HostFailure::Deadline(_) => EXIT_TIMED_OUT,
            HostFailure::Interrupted => EXIT_INTERRUPTED,
        }
    }

    /// The failure's name in the summary.
    pub fn summary_name(&self) -> String {
        match self {
            HostFailure::Deadline(_) => "timed out".into(),
            HostFailure::NotStarted(_) => "not started".into(),
            other => other.kind().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_status_maps_like_ssh() {
        assert_eq!(exit_code(ExitStatus::Code(0)), 0);
        assert_eq!(exit_code(ExitStatus::Code(3)), 3);
        assert_eq!(exit_code(ExitStatus::Code(255)), 255);
        assert_eq!(exit_code(ExitStatus::Code(256)), 255);
        assert_eq!(exit_code(ExitStatus::Code(-256)), 255);
        let killed = |signal| ExitStatus::Signal {
            signal,
            core_dumped: false,
        };
        assert_eq!(exit_code(killed(9)), 137);
        assert_eq!(exit_code(killed(15)), 143);
        assert_eq!(exit_code(killed(-122)), 255);
        assert_eq!(exit_code(killed(200)), 255);
        assert_eq!(exit_code(ExitStatus::TimedOut), 124);
    }

    #[test]
    fn a_session_the_broker_lost_is_kind_lost_however_it_surfaces() {
        use rexec_broker::{BrokerError, LostReason};
        // As the stream hands it to TLS, and TLS on to the codec.
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            BrokerError::Lost(LostReason::BrokerDisconnected),
        );
        let lost = CtlError::lost(&FrameError::Io(io));
        assert_eq!(lost.kind(), "lost");
        assert_eq!(
            lost.to_string(),
            "the session through the broker was lost: the connection to the broker was lost"
        );
        let failure = HostFailure::Ctl(lost);
        assert_eq!(
            (
                failure.exit_code(),
                failure.status(),
                failure.summary_name().as_str()
            ),
            (EXIT_CTL_ERROR, "error", "lost")
        );
        let offline = HostFailure::Ctl(ConnectionError::Offline.into());
        assert_eq!(
            (offline.exit_code(), offline.summary_name().as_str()),
            (EXIT_CTL_ERROR, "offline")
        );
        // A direct connection's break keeps its own kind.
        let tcp = CtlError::lost_io(&std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(tcp.kind(), "connection-lost");
    }
}
