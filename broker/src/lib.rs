//! Broker mode's carrier: an ordered, flow-controlled byte stream between
//! ctl and an agent, carried in NATS messages, on which the usual mutual
//! TLS session runs unchanged. The broker relays ciphertext only.
//!
//! This crate owns the connection to the broker (URLs, credentials, TLS to
//! the broker, reconnecting), the subjects, and the stream rules: sequence
//! numbers, credit, clean close and the abandon rule. It knows nothing of
//! rexec's messages, identities or commands; the agent and ctl run their
//! session over a [`BrokerStream`] as they do over TCP.
//!
//! - agent: [`Carrier::connect`], [`Carrier::listen`] then
//!   [`Listener::accept`] in a loop, and [`Carrier::announce`] for discovery;
//! - ctl: [`Carrier::connect`], [`Carrier::dial`] (an agent nobody serves is
//!   [`BrokerError::Offline`] at once), [`Carrier::discover`].
//!
//! The wire rules are written down in `protocol/README.md` ("Broker mode")
//! and in the module docs of `wire`, `flow` and `stream`.

mod carrier;
mod connection;
mod error;
pub mod flow;
mod peer_check;
mod pin;
mod replies;
mod stream;
mod subject;
pub mod wire;

pub use carrier::{
    BrokerOptions, Carrier, Credentials, DiscoveryResponder, Listener, OpenRefusal, RefusalReport,
    Tuning, reconnect_delay, validate_url,
};
pub use connection::ConnectionState;
pub use error::{BrokerError, LostReason};
pub use pin::{CertFingerprint, ParseCertFingerprintError};
pub use stream::{BrokerStream, StreamTimers};
pub use subject::{
    DEFAULT_PREFIX, MAX_NAME_LEN, SessionId, Subjects, validate_name, validate_prefix,
};
pub use wire::Announcement;
