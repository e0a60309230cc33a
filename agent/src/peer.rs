//! Who is at the other end of a session before TLS says who they are: the
//! address a connection came from. A session knows its peer only through
//! this type, so that a stream carried by something other than TCP can
//! name its own kind of peer.

use std::fmt;
use std::net::SocketAddr;

use rexec_broker::SessionId;

use crate::limits::Source;

/// The far end of a session's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A TCP connection from this address.
    Tcp(SocketAddr),
    /// A session opened to us through the broker. The broker does not say
    /// who opened it (TLS will); its id names it in the logs.
    Broker {
        /// The session's id on the broker.
        session: SessionId,
    },
}

impl Peer {
    /// What the peer counts against in the logs' refusal budget.
    pub fn source(&self) -> Source {
        match self {
            Peer::Tcp(addr) => Source::of(addr.ip()),
            Peer::Broker { session } => Source::broker_session(*session),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Broker { session } => write!(f, "broker session {session}"),
        }
    }
}
