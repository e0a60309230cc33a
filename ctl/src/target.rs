//! One target host as typed on the command line: `[user@]host[:port]`.
//!
//! IPv6 addresses take brackets when a port is given (`[::1]:7722`); a bare
//! address with several colons is a host without a port.

use std::fmt;

use rexec_protocol::DEFAULT_PORT;

/// Where to run a command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The user to run as, if named.
    pub user: Option<String>,
    /// Host name or address, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// A target that does not parse; the message says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad target {input:?}: {reason}")]
pub struct TargetError {
    input: String,
    reason: &'static str,
}

impl Target {
    /// Parses `[user@]host[:port]`.
    ///
    /// # Errors
    /// When the host is empty, the port is not a number from 1 to 65535, or
    /// brackets do not match.
    pub fn parse(input: &str) -> Result<Target, TargetError> {
        let err = |reason| TargetError {
            input: input.to_owned(),
            reason,
        };
        let (user, rest) = match input.rsplit_once('@') {
            Some((user, rest)) if !user.is_empty() => (Some(user.to_owned()), rest),
            Some(_) => return Err(err("empty user name before '@'")),
            None => (None, input),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(|| err("missing ']'"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| err("expected ':' after ']'"))?,
                    ),
                ),
            }
        } else if rest.matches(':').count() == 1 {
            let (host, port) = rest.split_once(':').ok_or_else(|| err("bad port"))?;
            (host, Some(port))
        } else {
            (rest, None)
        };
        if host.is_empty() {
            return Err(err("empty host"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(err("host contains a space, '/' or a control character"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(err("port must be a number from 1 to 65535")),
            },
        };
        Ok(Target {
            user,
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port` (`[v6]:port`), the key used in known hosts.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        f.write_str(&self.host_port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(user: Option<&str>, host: &str, port: u16) -> Target {
        Target {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn parses_the_forms_users_type() {
        assert_eq!(Target::parse("labpc07").unwrap(), t(None, "labpc07", 7722));
        assert_eq!(
            Target::parse("10.0.0.1:99").unwrap(),
            t(None, "10.0.0.1", 99)
        );
        assert_eq!(Target::parse("root@h:1").unwrap(), t(Some("root"), "h", 1));
        assert_eq!(Target::parse("::1").unwrap(), t(None, "::1", 7722));
        assert_eq!(Target::parse("[::1]:8").unwrap(), t(None, "::1", 8));
        assert_eq!(
            Target::parse("[fe80::1]").unwrap(),
            t(None, "fe80::1", 7722)
        );
        assert_eq!(Target::parse("[::1]:8").unwrap().host_port(), "[::1]:8");
        assert_eq!(Target::parse("h").unwrap().to_string(), "h:7722");
    }

    #[test]
    fn refuses_what_cannot_be_a_target() {
        for bad in [
            "", ":7722", "h:", "h:0", "h:70000", "h:x", "@h", "[::1", "[::1]x", "a b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }
}
