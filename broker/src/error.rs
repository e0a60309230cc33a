//! The carrier's typed errors. Every message is one plain line in our own
//! words; the NATS client's text never reaches a user.

use std::io;

/// Why a stream ended without a clean close. All of these are error kind
/// `lost` for ctl: the bytes in flight can no longer be trusted to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LostReason {
    /// A message arrived out of sequence (missing, duplicated or reordered).
    #[error("a message was missing, duplicated or out of order (expected {expected}, got {got})")]
    OutOfSequence {
        /// The sequence number due.
        expected: u64,
        /// The one that came.
        got: u64,
    },
    /// A message that is not a stream message (too short, unknown kind).
    #[error("a message that is not part of the stream arrived")]
    Malformed,
    /// A payload larger than the protocol allows.
    #[error("a message larger than the protocol allows arrived")]
    Oversized,
    /// The peer sent more than the credit it was given.
    #[error("the peer sent more than it was allowed to")]
    OverCredit,
    /// Data arrived after the peer's end of stream.
    #[error("data arrived after the end of the stream")]
    AfterEnd,
    /// The peer abandoned the stream.
    #[error("the peer abandoned the session")]
    PeerReset,
    /// Nothing was heard from the peer for longer than the abandon limit.
    #[error("nothing was heard from the peer for too long")]
    PeerSilent,
    /// The broker says the peer is no longer subscribed: its connection to
    /// the broker is gone (its process died).
    #[error("the peer's connection to the broker is gone")]
    PeerGone,
    /// Our connection to the broker went down while the stream was open.
    #[error("the connection to the broker was lost")]
    BrokerDisconnected,
}

/// What went wrong in the carrier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// No agent of that name is subscribed on the broker (NATS "no responders").
    #[error("agent {0} is not connected to the broker")]
    Offline(String),
    /// The stream ended without a clean close.
    #[error("session lost: {0}")]
    Lost(LostReason),
    /// The agent did not answer the open request in time.
    #[error("agent {0} did not answer through the broker in time")]
    Timeout(String),
    /// The agent refused to open a session (for example: too many sessions).
    #[error("agent {name} refused the session ({reason})")]
    Refused {
        /// The agent.
        name: String,
        /// Its short reason.
        reason: String,
    },
    /// A name or subject prefix that cannot be used in a subject.
    #[error("{0}")]
    BadName(String),
    /// A broker URL, credentials file or CA file that cannot be used.
    #[error("{0}")]
    Config(String),
    /// The broker could not be reached or refused us.
    #[error("{0}")]
    Connect(String),
    /// The broker refused to let us subscribe under a name (permissions).
    #[error("the broker does not let us serve the name {0} (check the broker user's permissions)")]
    SubscribeRefused(String),
    /// The broker refused to let us read the replies to our own requests
    /// under our inbox prefix (permissions; the prefix is given).
    #[error(
        "the broker does not let us read the replies to our own requests under {0} (its user needs to subscribe to {0}.>)"
    )]
    InboxRefused(String),
    /// Two agents serve one name: each session to it reaches both, and
    /// fails. Seen by an agent in its own probe, by ctl as a second
    /// acceptance of one open request.
    #[error(
        "two agents answer to the name {0} on the broker, so sessions to it fail; give each agent a name of its own (rexec-agent run --name, or name in [broker]; the default is the host name up to its first dot)"
    )]
    NameClash(String),
    /// Talking to the broker failed after we had connected.
    #[error("{0}")]
    Broker(String),
}

impl BrokerError {
    /// The short stable name of this failure for logs and `--json`
    /// (`offline`, `lost`, `timeout`, `busy`, `broker`, `config`).
    pub fn kind(&self) -> &'static str {
        match self {
            BrokerError::Offline(_) => "offline",
            BrokerError::Lost(_) => "lost",
            BrokerError::Timeout(_) => "timeout",
            BrokerError::Refused { .. } => "busy",
            BrokerError::BadName(_) | BrokerError::Config(_) => "config",
            BrokerError::Connect(_)
            | BrokerError::SubscribeRefused(_)
            | BrokerError::InboxRefused(_)
            | BrokerError::NameClash(_)
            | BrokerError::Broker(_) => "broker",
        }
    }

    /// The carrier error inside an I/O error returned by a stream (also
    /// when a TLS stream over it passed the error through).
    pub fn from_io(error: &io::Error) -> Option<&BrokerError> {
        error.get_ref()?.downcast_ref::<BrokerError>()
    }

    pub(crate) fn into_io(self) -> io::Error {
        let kind = match self {
            BrokerError::Lost(LostReason::PeerReset) => io::ErrorKind::ConnectionReset,
            BrokerError::Lost(_) => io::ErrorKind::ConnectionAborted,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_carrier_error_survives_the_trip_through_io_error() {
        let io = BrokerError::Lost(LostReason::Malformed).into_io();
        assert_eq!(io.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(
            BrokerError::from_io(&io),
            Some(&BrokerError::Lost(LostReason::Malformed))
        );
        assert_eq!(
            BrokerError::from_io(&io).map(BrokerError::kind),
            Some("lost")
        );
        assert_eq!(BrokerError::from_io(&io::Error::other("x")), None);
    }
}
