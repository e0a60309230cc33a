//! The bytes of one stream message and of the open, accept and discovery
//! messages. Owns the header layout and its checks; knows nothing of NATS
//! connections or of flow control (see `flow`).
//!
//! Every message on a session subject starts with a 13-byte header:
//!
//! | offset | size | field                                                 |
//! |--------|------|-------------------------------------------------------|
//! | 0      | 1    | kind: 1 data, 2 end (EOF), 3 credit, 4 reset          |
//! | 1      | 8    | sequence number, big-endian, 0 for the first message  |
//! | 9      | 4    | grant: bytes of credit given to the peer, big-endian  |
//! | 13     | ≤ 64 KiB | payload (data only; empty for the other kinds)    |
//!
//! The open request, its answer and the discovery answer are small JSON
//! objects: they happen once per session, and JSON lets them grow fields
//! without a version bump.

use serde::{Deserialize, Serialize};

use crate::error::LostReason;

/// Bytes of the header in front of every stream message.
pub const HEADER_LEN: usize = 13;

/// The most payload one stream message carries. The server's default
/// `max_payload` is 1 MiB; staying well below it keeps every message far
/// from that limit and the per-message copy small.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// What a stream message means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Stream bytes; costs credit.
    Data = 1,
    /// The sender writes no more (EOF in this direction).
    End = 2,
    /// Credit only (also the heartbeat, with a grant of 0).
    Credit = 3,
    /// The sender abandoned the stream; the peer's side ends with `lost`.
    Reset = 4,
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the message means.
    pub kind: Kind,
    /// Position of this message among all messages of its direction.
    pub seq: u64,
    /// Credit, in bytes, the sender adds to what the receiver may send it.
    pub grant: u32,
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.kind as u8;
        out[1..9].copy_from_slice(&self.seq.to_be_bytes());
        out[9..13].copy_from_slice(&self.grant.to_be_bytes());
        out
    }

    /// Splits a message into its header and payload, refusing anything that
    /// is not a well-formed message.
    ///
    /// # Errors
    /// [`LostReason::Malformed`] for a short message, an unknown kind or a
    /// payload on a kind that carries none; [`LostReason::Oversized`] for a
    /// payload above [`MAX_PAYLOAD`].
    pub fn decode(message: &[u8]) -> Result<(Header, &[u8]), LostReason> {
        let Some((head, payload)) = message.split_first_chunk::<HEADER_LEN>() else {
            return Err(LostReason::Malformed);
        };
        let kind = match head[0] {
            1 => Kind::Data,
            2 => Kind::End,
            3 => Kind::Credit,
            4 => Kind::Reset,
            _ => return Err(LostReason::Malformed),
        };
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&head[1..9]);
        let mut grant = [0u8; 4];
        grant.copy_from_slice(&head[9..13]);
        if payload.len() > MAX_PAYLOAD {
            return Err(LostReason::Oversized);
        }
        if kind != Kind::Data && !payload.is_empty() {
            return Err(LostReason::Malformed);
        }
        Ok((
            Header {
                kind,
                seq: u64::from_be_bytes(seq),
                grant: u32::from_be_bytes(grant),
            },
            payload,
        ))
    }
}

/// ctl's request on an agent's open subject.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenRequest {
    /// The session id: 32 lowercase hex digits (128 random bits).
    pub session: String,
    /// The credit, in bytes, ctl gives the agent to start with.
    pub window: u32,
    /// An agent checking that the broker passes its own open subject to it;
    /// answered, never opened.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
    /// A probe's sender: a random id of the agent process asking, so that
    /// an agent that receives a probe not its own knows that another
    /// agent serves its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// The agent's answer to an [`OpenRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenAnswer {
    /// Whether the agent took the session.
    pub accepted: bool,
    /// The credit, in bytes, the agent gives ctl to start with.
    #[serde(default)]
    pub window: u32,
    /// Why not, when refused, in a short word: `busy` (too many sessions
    /// waiting to be taken), `no-room` (the receive budget of the agent's
    /// connection is held by its other sessions), `bad-request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// In the answer to a probe: the answering agent process's random id
    /// (see [`OpenRequest::instance`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// In an acceptance: the session accepted. Anyone who reads our inbox's
    /// traffic can have an agent accept another session there (a request
    /// of theirs, with our inbox as its reply); this tells it apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl OpenAnswer {
    /// Whether this accepts `session` (an acceptance that names none is
    /// taken as ours, as older agents send).
    pub fn accepts(&self, session: &str) -> bool {
        self.accepted && self.session.as_deref().is_none_or(|s| s == session)
    }
}

/// What an agent answers to a discovery request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Announcement {
    /// The agent's name on the broker.
    pub name: String,
    /// The agent's TLS fingerprint (`SHA256:…`). Only a hint: the pinned
    /// fingerprint is checked in the TLS handshake, never this field.
    pub fingerprint: String,
    /// The agent's software version.
    pub version: String,
}

impl Announcement {
    /// Whether this could be an agent's answer: a usable name, a
    /// fingerprint of our form and a short printable version. Anyone who
    /// may answer discovery can send anything; ctl shows only these.
    pub fn plausible(&self) -> bool {
        crate::subject::validate_name(&self.name).is_ok()
            && self
                .fingerprint
                .parse::<rexec_protocol::Fingerprint>()
                .is_ok()
            && (1..=64).contains(&self.version.len())
            && self
                .version
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plausible_announcements_are_shown() {
        let real = Announcement {
            name: "labpc07".into(),
            fingerprint: "SHA256:XiqeskhnIcIL1/EU6dpcSdWbEywa8xwMTccBdhGcQwM".into(),
            version: "0.1.0".into(),
        };
        assert!(real.plausible());
        for lie in [
            Announcement {
                fingerprint: "SHA256:\u{9b}2J\u{9b}31mFAKE\u{202e}".into(),
                ..real.clone()
            },
            Announcement {
                version: "0.1.0\u{7f}\u{85}\u{2028}x".into(),
                ..real.clone()
            },
            Announcement {
                version: "A".repeat(3000),
                ..real.clone()
            },
            Announcement {
                version: String::new(),
                ..real.clone()
            },
            Announcement {
                name: "lab.pc07".into(),
                ..real.clone()
            },
        ] {
            assert!(!lie.plausible(), "{lie:?}");
        }
    }

    #[test]
    fn header_round_trips() {
        let header = Header {
            kind: Kind::Data,
            seq: 0x0102_0304_0506_0708,
            grant: 0x0a0b_0c0d,
        };
        let mut message = header.encode().to_vec();
        assert_eq!(message, [1, 1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d]);
        message.extend_from_slice(b"hello");
        let (decoded, payload) = Header::decode(&message).unwrap();
        assert_eq!(decoded, header);
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn short_unknown_and_oversized_messages_are_refused() {
        assert_eq!(Header::decode(b""), Err(LostReason::Malformed));
        assert_eq!(Header::decode(&[1; 12]), Err(LostReason::Malformed));
        let mut unknown = Header {
            kind: Kind::Data,
            seq: 0,
            grant: 0,
        }
        .encode();
        unknown[0] = 9;
        assert_eq!(Header::decode(&unknown), Err(LostReason::Malformed));
        let mut big = Header {
            kind: Kind::Data,
            seq: 0,
            grant: 0,
        }
        .encode()
        .to_vec();
        big.resize(HEADER_LEN + MAX_PAYLOAD, 0);
        assert!(Header::decode(&big).is_ok());
        big.push(0);
        assert_eq!(Header::decode(&big), Err(LostReason::Oversized));
    }

    #[test]
    fn only_data_carries_a_payload() {
        for kind in [Kind::End, Kind::Credit, Kind::Reset] {
            let mut message = Header {
                kind,
                seq: 0,
                grant: 0,
            }
            .encode()
            .to_vec();
            assert!(Header::decode(&message).is_ok());
            message.push(b'x');
            assert_eq!(Header::decode(&message), Err(LostReason::Malformed));
        }
    }
}
