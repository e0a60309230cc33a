//! Subject names: which subject carries what, and the checks that keep a
//! name from adding tokens or wildcards to a subject.
//!
//! With the default prefix `rexec`:
//!
//! | subject                                         | who subscribes | carries                   |
//! |-------------------------------------------------|----------------|---------------------------|
//! | `rexec.v1.agent.<name>.open`                    | agent `<name>` | open requests (request/reply) |
//! | `rexec.v1.agent.<name>.session.<id>.from-ctl`   | agent `<name>` | ctl → agent stream messages |
//! | `rexec.v1.agent.<name>.session.<id>.from-agent` | ctl            | agent → ctl stream messages |
//! | `rexec.v1.discover`                             | every agent    | discovery requests        |
//!
//! Session subjects sit under the agent's name so that a broker can confine
//! each agent to `rexec.v1.agent.<its name>.…` (see the example
//! `nats-server.conf.example`).

use std::fmt;

use crate::error::BrokerError;

/// The subject prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "rexec";

/// The longest agent name we accept (subjects stay short on the wire).
pub const MAX_NAME_LEN: usize = 64;

/// Checks that `name` can stand as one subject token: 1 to 64 of ASCII
/// letters, digits, `-` and `_`. Everything else is refused, in particular
/// `.` (a token separator), `*` and `>` (wildcards) and whitespace.
///
/// # Errors
/// [`BrokerError::BadName`] saying what is wrong.
pub fn validate_name(name: &str) -> Result<(), BrokerError> {
    if name.is_empty() {
        return Err(BrokerError::BadName(
            "an agent name on the broker cannot be empty".to_owned(),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(BrokerError::BadName(format!(
            "agent name {name:?} is longer than {MAX_NAME_LEN} characters"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(BrokerError::BadName(format!(
            "agent name {name:?} contains {bad:?}: only letters, digits, '-' and '_' are allowed"
        )));
    }
    Ok(())
}

/// Checks a subject prefix: one or more valid tokens joined by `.`.
///
/// # Errors
/// [`BrokerError::BadName`] saying what is wrong.
pub fn validate_prefix(prefix: &str) -> Result<(), BrokerError> {
    let bad = || {
        BrokerError::BadName(format!(
            "subject prefix {prefix:?} must be words of letters, digits, '-' and '_' joined by '.'"
        ))
    };
    if prefix.is_empty() || prefix.len() > 64 {
        return Err(bad());
    }
    for token in prefix.split('.') {
        validate_name(token).map_err(|_| bad())?;
    }
    Ok(())
}

/// A session's id: 128 random bits, written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// A fresh random id.
    ///
    /// # Errors
    /// When the system's random source fails.
    pub fn random() -> Result<SessionId, BrokerError> {
        let mut bytes = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| BrokerError::Broker("the system's random source failed".to_owned()))?;
        Ok(SessionId(bytes))
    }

    /// Parses the 32-hex-digit form; anything else is `None`.
    pub fn parse(text: &str) -> Option<SessionId> {
        if text.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = text.get(2 * i..2 * i + 2)?;
            if !pair.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return None;
            }
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(SessionId(bytes))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// The subjects of one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (default [`DEFAULT_PREFIX`]).
    ///
    /// # Errors
    /// When the prefix is not valid (see [`validate_prefix`]).
    pub fn new(prefix: &str) -> Result<Subjects, BrokerError> {
        validate_prefix(prefix)?;
        Ok(Subjects {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where agent `name` takes open requests. `name` must be valid.
    pub fn open(&self, name: &str) -> String {
        format!("{}.v1.agent.{name}.open", self.prefix)
    }

    /// Where every agent takes discovery requests.
    pub fn discover(&self) -> String {
        format!("{}.v1.discover", self.prefix)
    }

    /// The ctl → agent subject of a session.
    pub fn from_ctl(&self, name: &str, session: SessionId) -> String {
        format!("{}.v1.agent.{name}.session.{session}.from-ctl", self.prefix)
    }

    /// The prefix of agent `name`'s reply inboxes, so that the broker can
    /// let each agent read its own replies and nobody else's. `name` must
    /// be valid.
    pub fn inbox(&self, name: &str) -> String {
        format!("{}.v1.agent.{name}.inbox", self.prefix)
    }

    /// Whether `subject` is a reply inbox, the only kind of reply subject
    /// an agent answers: NATS's own (`_INBOX.…`, where ctl's requests
    /// ask for their answers) or an agent's under this prefix
    /// (`PREFIX.v1.agent.NAME.inbox.…`). Anything else — an agent's open
    /// subject above all — would let anyone aim our answers at it.
    pub fn is_reply_inbox(&self, subject: &str) -> bool {
        if subject
            .strip_prefix("_INBOX.")
            .is_some_and(|rest| !rest.is_empty())
        {
            return true;
        }
        let Some(rest) = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(".v1.agent."))
        else {
            return false;
        };
        let mut tokens = rest.splitn(3, '.');
        matches!(
            (tokens.next(), tokens.next(), tokens.next()),
            (Some(name), Some("inbox"), Some(tail))
                if validate_name(name).is_ok() && !tail.is_empty()
        )
    }

    /// Every agent → ctl subject of agent `name`'s sessions (a wildcard,
    /// as a broker permission names them).
    pub fn from_agent_all(&self, name: &str) -> String {
        format!("{}.v1.agent.{name}.session.*.from-agent", self.prefix)
    }

    /// The agent → ctl subject of a session.
    pub fn from_agent(&self, name: &str, session: SessionId) -> String {
        format!(
            "{}.v1.agent.{name}.session.{session}.from-agent",
            self.prefix
        )
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_add_tokens_or_wildcards_are_refused() {
        for good in ["labpc07", "node-1", "a_b", "X", &"n".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "lab.pc07",
            "*",
            ">",
            "lab pc",
            "lab\tpc",
            "lab\npc",
            "a>",
            "ü",
            "a/b",
            &"n".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_are_dotted_words() {
        assert!(validate_prefix("rexec").is_ok());
        assert!(validate_prefix("site1.rexec").is_ok());
        for bad in ["", ".rexec", "rexec.", "a..b", "rexec.>", "re xec", "*"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subjects_under_the_default_prefix() {
        let subjects = Subjects::default();
        let id = SessionId::parse("00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(subjects.open("labpc07"), "rexec.v1.agent.labpc07.open");
        assert_eq!(subjects.discover(), "rexec.v1.discover");
        assert_eq!(subjects.inbox("labpc07"), "rexec.v1.agent.labpc07.inbox");
        assert_eq!(
            subjects.from_ctl("labpc07", id),
            "rexec.v1.agent.labpc07.session.00112233445566778899aabbccddeeff.from-ctl"
        );
        assert_eq!(
            subjects.from_agent("labpc07", id),
            "rexec.v1.agent.labpc07.session.00112233445566778899aabbccddeeff.from-agent"
        );
    }

    #[test]
    fn only_reply_inboxes_count_as_reply_subjects() {
        let subjects = Subjects::default();
        for inbox in [
            "_INBOX.abc.1",
            "rexec.v1.agent.labpc07.inbox.abc",
            "rexec.v1.agent.labpc07.inbox.abc.1",
        ] {
            assert!(subjects.is_reply_inbox(inbox), "{inbox}");
        }
        for not in [
            "_INBOX.",
            "_INBOXES.x",
            "rexec.v1.agent.labpc07.open",
            "rexec.v1.agent.labpc07.session.00112233445566778899aabbccddeeff.from-ctl",
            "rexec.v1.agent.labpc07.inbox",
            "rexec.v1.agent.labpc07.inbox.",
            "rexec.v1.discover",
            "other.v1.agent.labpc07.inbox.abc",
            "app.orders",
        ] {
            assert!(!subjects.is_reply_inbox(not), "{not}");
        }
    }

    #[test]
    fn session_ids_are_random_and_parse_back() {
        let a = SessionId::random().unwrap();
        let b = SessionId::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(SessionId::parse(&a.to_string()), Some(a));
        for bad in [
            "",
            "0011",
            "00112233445566778899AABBCCDDEEFF",
            "g0112233445566778899aabbccddeeff",
            "00112233445566778899aabbccddeeff0",
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad}");
        }
    }
}
