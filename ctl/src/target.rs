//! Targets as typed on the command line: one host `[user@]host[:port]`,
//! or a list of them with ranges, `@groups` and `!exclusions`.
//!
//! IPv6 addresses take brackets when a port is given (`[::1]:7722`); a bare
//! address with several colons is a host without a port. In a list, a
//! bracket holding a `:` is such an address and any other bracket is a
//! range (see [`crate::nodeset`]), so `[::1]:7722,127.0.0.[2-3]` means three
//! hosts.

use std::fmt;

use rexec_protocol::DEFAULT_PORT;

use crate::nodeset::{self, SyntaxError};

/// The port of a target reached by name through a broker, where there is
/// no TCP port: such a target prints as its name alone. No port a user
/// types is 0, so it cannot be mistaken for one.
pub const NO_PORT: u16 = 0;

/// Where to run a command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The user to run as, if named.
    pub user: Option<String>,
    /// Host name or address, without brackets; in broker mode, the
    /// agent's name on the broker.
    pub host: String,
    /// TCP port; [`NO_PORT`] in broker mode.
    pub port: u16,
}

/// Why `name` cannot be a user to run as, if it cannot: it must be one
/// plain word for a file name too, since `-o DIR` names a host's files
/// `user@host:port.out` when the run needs the user to tell two apart.
pub fn bad_user_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("a user name cannot be empty")
    } else if name == "." || name == ".." {
        Some("a user name cannot be '.' or '..'")
    } else if name.chars().any(|c| c == '/' || c.is_control()) {
        Some("a user name cannot hold '/' or a control character")
    } else {
        None
    }
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
        let spec = TargetSpec::parse(input)?;
        Ok(Target {
            user: spec.user,
            host: spec.host,
            port: spec.port.unwrap_or(DEFAULT_PORT),
        })
    }

    /// `host:port` (`[v6]:port`), the key used in known hosts; the name
    /// alone for an agent on a broker.
    pub fn host_port(&self) -> String {
        if self.port == NO_PORT {
            self.host.clone()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl Target {
    /// The shortest spelling that parses back to this target: the port only
    /// when it is not the default, brackets around an IPv6 address only
    /// when a port follows (what `ctl hosts` prints for shell loops).
    pub fn minimal(&self) -> String {
        let user = self
            .user
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        if self.port == DEFAULT_PORT || self.port == NO_PORT {
            format!("{user}{}", self.host)
        } else {
            format!("{user}{}", self.host_port())
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

/// A target as written, before the inventory fills in what it leaves out:
/// the port and user are `None` unless given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetSpec {
    /// The user, if named.
    pub user: Option<String>,
    /// Host name or address, without brackets.
    pub host: String,
    /// The port, if given.
    pub port: Option<u16>,
}

impl TargetSpec {
    /// Parses `[user@]host[:port]`.
    ///
    /// # Errors
    /// When the host is empty, the port is not a number from 1 to 65535, or
    /// brackets do not match.
    pub fn parse(input: &str) -> Result<TargetSpec, TargetError> {
        let err = |reason| TargetError {
            input: input.to_owned(),
            reason,
        };
        let (user, rest) = match input.rsplit_once('@') {
            Some(("", _)) => return Err(err("empty user name before '@'")),
            Some((user, rest)) => match bad_user_name(user) {
                Some(reason) => return Err(err(reason)),
                None => (Some(user.to_owned()), rest),
            },
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
        // Without brackets, a host with several ':' can only be an IPv6
        // address (`::1`, `fe80::1%eth0`); `h:22:33` is a mistyped port.
        let address = host.split_once('%').map_or(host, |(address, _)| address);
        if port.is_none() && host.contains(':') && address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(err(
                "a host with several ':' must be an IPv6 address (with a port: [ADDRESS]:PORT)",
            ));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(err("host contains a space, '/' or a control character"));
        }
        // A host's name becomes a directory of its own in a pull from
        // several hosts; these two would be the directory itself or its parent.
        if host == "." || host == ".." {
            return Err(err("host cannot be '.' or '..'"));
        }
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => return Err(err("port must be a number from 1 to 65535")),
            },
        };
        Ok(TargetSpec {
            user,
            host: host.to_owned(),
            port,
        })
    }

    /// Whether this spec, used as an exclusion, removes `target`: the host
    /// must be the same, and the port and user too where they are given.
    pub fn excludes(&self, target: &Target) -> bool {
        self.host == target.host
            && self.port.is_none_or(|p| p == target.port)
            && self
                .user
                .as_ref()
                .is_none_or(|u| target.user.as_ref() == Some(u))
    }
}

/// One item of a target list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListItem {
    /// Hosts written out or as a range: `node[01-04]`, `root@h:7000`.
    Hosts(Vec<TargetSpec>),
    /// An inventory group, `@lab`, or a group of a source, `@slurm:gpu`
    /// (the text after the `@`); `root@@lab` is the group's hosts as user
    /// `root`, as `root@node[1-4]` is for a range.
    Group {
        /// The group's name.
        name: String,
        /// The user every member runs as, when given.
        user: Option<String>,
    },
    /// A file of hosts, one per line: `^hosts.txt` (the path after the `^`).
    File(String),
}

/// How a term of a target list combines with what the terms before it
/// chose: ClusterShell's operators, read from left to right, all of the
/// same precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `,`: add the term's hosts.
    Union,
    /// `!` between two names: remove them.
    Difference,
    /// `&`: keep only the hosts the term names too.
    Intersection,
    /// `^`: keep the hosts in exactly one of the two.
    Xor,
}

/// One term of a target list: its operator, whether it is an exclusion
/// item (`,!node07`, which removes from the whole list whatever the
/// order), and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// How it combines with the terms before it.
    pub operator: Operator,
    /// A `!` item of its own: removed from the whole list at the end.
    pub exclude: bool,
    /// What it names.
    pub item: ListItem,
}

/// A target list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// The bracket or list syntax is wrong at one character.
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    /// One of the expanded names is not a target.
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// Parses a target list into its terms. Ranges are expanded here.
///
/// # Errors
/// The first syntax error, pointing at its character.
pub fn parse_list(input: &str) -> Result<Vec<Term>, ListError> {
    let error = |position: usize, reason: String| -> ListError {
        SyntaxError {
            input: input.to_owned(),
            position,
            reason,
        }
        .into()
    };
    let mut terms = Vec::new();
    for (offset, operator, item) in nodeset::split_terms(input)? {
        let operator = match operator {
            '!' => Operator::Difference,
            '&' => Operator::Intersection,
            '^' => Operator::Xor,
            _ => Operator::Union,
        };
        let (exclude, body, at) = match item.strip_prefix('!') {
            Some(body) => (true, body, offset + 1),
            None => (false, item, offset),
        };
        if let Some(path) = body.strip_prefix('^') {
            if path.trim().is_empty() {
                return Err(error(at + 1, "expected a file name after '^'".into()));
            }
            terms.push(Term {
                operator,
                exclude,
                item: ListItem::File(path.to_owned()),
            });
            continue;
        }
        // A '/' is a step inside a range bracket (`n[0-10/2]`) and nothing
        // anywhere else: outside brackets it would be a path, not a host.
        let mut depth = 0usize;
        if let Some((bad, c)) = body.char_indices().find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            c.is_whitespace() || c.is_control() || c == '!' || (c == '/' && depth == 0)
        }) {
            return Err(error(at + bad, format!("{c:?} cannot appear in a target")));
        }
        // `USER@@GROUP`: a user name may hold an '@' (`alice@corp@@lab`),
        // never end in one.
        let (user, group, group_at) = match body.rsplit_once("@@") {
            Some((user, group)) if !body.starts_with('@') => {
                if let Some(reason) = bad_user_name(user) {
                    return Err(error(at, reason.into()));
                }
                if user.ends_with('@') {
                    return Err(error(
                        at + user.len() - 1,
                        "a user name cannot end in '@'".into(),
                    ));
                }
                (Some(user.to_owned()), Some(group), at + user.len() + 2)
            }
            _ => (None, body.strip_prefix('@'), at + 1),
        };
        if let Some(group) = group {
            if let Some(bad) = bad_group_name(group) {
                return Err(error(
                    group_at + bad.0,
                    match bad.1 {
                        '@' => "expected a group name after '@' (or SOURCE:)".into(),
                        ':' => "expected a source name before ':'".into(),
                        c => format!("{c:?} cannot appear in a group name"),
                    },
                ));
            }
            terms.push(Term {
                operator,
                exclude,
                item: ListItem::Group {
                    name: group.to_owned(),
                    user,
                },
            });
            continue;
        }
        let names = nodeset::expand(body).map_err(|e| e.within(input, at))?;
        let specs = names
            .iter()
            .map(|name| TargetSpec::parse(name))
            .collect::<Result<Vec<_>, _>>()?;
        terms.push(Term {
            operator,
            exclude,
            item: ListItem::Hosts(specs),
        });
    }
    Ok(terms)
}

/// The first character that cannot be in `NAME` or `SOURCE:NAME` (a
/// source's name, then a group's, or `*` for all of the source's hosts),
/// with its byte offset; the name's end when it is empty.
fn bad_group_name(group: &str) -> Option<(usize, char)> {
    let name_char = |c: char| c.is_alphanumeric() || "_-.".contains(c);
    let (source, name, offset) = match group.split_once(':') {
        Some((source, name)) => (Some(source), name, source.len() + 1),
        None => (None, group, 0),
    };
    if let Some(source) = source {
        if source.is_empty() {
            return Some((0, ':'));
        }
        if let Some(bad) = source.char_indices().find(|&(_, c)| !name_char(c)) {
            return Some(bad);
        }
        if name == "*" {
            return None;
        }
    }
    if name.is_empty() {
        return Some((offset, '@'));
    }
    name.char_indices()
        .find(|&(_, c)| !name_char(c))
        .map(|(i, c)| (offset + i, c))
}

/// Whether `input` names exactly one literal host: no list, range, group
/// or exclusion. Such a target keeps ctl's raw single-host output.
pub fn is_single(input: &str) -> bool {
    let host = input.rsplit_once('@').map_or(input, |(_, rest)| rest);
    let v6_literal = host.starts_with('[')
        && host
            .split_once(']')
            .is_some_and(|(inner, _)| inner.contains(':'));
    !input.contains([',', '!', '&', '^'])
        && !input.starts_with('@')
        && !input.contains("@@")
        && (!input.contains('[') || (v6_literal && input.matches('[').count() == 1))
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
        for typed in ["h", "u@h:1", "::1", "[::1]:8", "u@[::1]:8"] {
            assert_eq!(Target::parse(typed).unwrap().minimal(), typed);
        }
    }

    #[test]
    fn refuses_what_cannot_be_a_target() {
        for bad in [
            "", ":7722", "h:", "h:0", "h:70000", "h:x", "@h", "[::1", "[::1]x", "a b", "a/b", ".",
            "..", "..:7722", "root@..", "h:22:33", "[h:1]",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// A user name with a '/' used to pass, and `-o DIR` then wrote
    /// `DIR/../../esc@h:7722.out`, outside DIR.
    #[test]
    fn refuses_user_names_that_are_not_one_plain_word() {
        for bad in ["../../esc@h", "a/b@h", ".@h", "..@h", "a\tb@h", "a\u{1b}@h"] {
            let error = Target::parse(bad).unwrap_err().to_string();
            assert!(error.contains("a user name cannot"), "{bad:?}: {error}");
        }
        for good in ["root@h", "alice@corp.example@h", "lab.user@h", "a..b@h"] {
            assert!(Target::parse(good).is_ok(), "{good:?}");
        }
        assert_eq!(bad_user_name("root"), None);
        assert!(bad_user_name("").is_some());
    }

    fn hosts(term: &Term) -> Vec<String> {
        match &term.item {
            ListItem::Hosts(specs) => specs
                .iter()
                .map(|s| {
                    let port = s.port.map(|p| format!(":{p}")).unwrap_or_default();
                    let user = s.user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
                    format!("{user}{}{port}", s.host)
                })
                .collect(),
            ListItem::Group { name, user } => {
                let user = user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
                vec![format!("{user}@{name}")]
            }
            ListItem::File(path) => vec![format!("^{path}")],
        }
    }

    #[test]
    fn user_at_group_is_the_group_with_a_user() {
        let items = parse_list("root@@lab,!alice@corp@@gpu,@slurm:*").unwrap();
        let shown: Vec<Vec<String>> = items.iter().map(hosts).collect();
        assert_eq!(shown, [["root@@lab"], ["alice@corp@@gpu"], ["@slurm:*"]]);
        assert!(items[1].exclude);
        assert!(is_single("root@h") && !is_single("root@@lab"));
        for bad in ["root@@", "/@@lab", "root@@la b", "root@@@lab"] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lists_hold_ranges_groups_exclusions_and_addresses() {
        let items =
            parse_list("root@node[1-2]:7000,@lab,!node2,127.0.0.[2-3],[::1]:8,::1").unwrap();
        let shown: Vec<_> = items.iter().map(|i| (i.exclude, hosts(i))).collect();
        assert_eq!(
            shown,
            [
                (
                    false,
                    vec!["root@node1:7000".to_owned(), "root@node2:7000".to_owned()]
                ),
                (false, vec!["@lab".to_owned()]),
                (true, vec!["node2".to_owned()]),
                (false, vec!["127.0.0.2".to_owned(), "127.0.0.3".to_owned()]),
                (false, vec!["::1:8".to_owned()]),
                (false, vec!["::1".to_owned()]),
            ]
        );
        let steps = parse_list("n[0-10/2],m[1-9/4]").unwrap();
        assert_eq!(
            steps.iter().flat_map(hosts).collect::<Vec<_>>(),
            ["n0", "n2", "n4", "n6", "n8", "n10", "m1", "m5", "m9"]
        );
        let algebra = parse_list("n[1-3]!n2&@lab^m,!@slurm:gpu,^hosts.txt,@s:*").unwrap();
        let shown: Vec<_> = algebra
            .iter()
            .map(|t| (t.operator, t.exclude, hosts(t).join(" ")))
            .collect();
        assert_eq!(
            shown,
            [
                (Operator::Union, false, "n1 n2 n3".to_owned()),
                (Operator::Difference, false, "n2".to_owned()),
                (Operator::Intersection, false, "@lab".to_owned()),
                (Operator::Xor, false, "m".to_owned()),
                (Operator::Union, true, "@slurm:gpu".to_owned()),
                (Operator::Union, false, "^hosts.txt".to_owned()),
                (Operator::Union, false, "@s:*".to_owned()),
            ]
        );
        let spec = TargetSpec::parse("127.0.0.1:7722").unwrap();
        assert_eq!((spec.host.as_str(), spec.port), ("127.0.0.1", Some(7722)));
    }

    #[test]
    fn list_errors_point_at_the_character() {
        for (input, position) in [
            ("a,b c", 3),
            ("a,!", 3),
            ("@", 1),
            ("@la b", 3),
            ("n[1-3],m[2-a]", 11),
            ("ok,@g$", 5),
            ("n[1-4]/2", 6),
            ("a/b", 1),
            ("@:g", 1),
            ("@s:", 3),
            ("@s:g:h", 4),
            ("a,^", 3),
            ("a&&b", 2),
        ] {
            match parse_list(input) {
                Err(ListError::Syntax(e)) => assert_eq!(e.position, position, "{input}: {e}"),
                other => panic!("{input}: {other:?}"),
            }
        }
        assert!(matches!(parse_list("h:0"), Err(ListError::Target(_))));
    }

    #[test]
    fn only_one_literal_host_is_single() {
        for single in [
            "h",
            "h:1",
            "root@h",
            "[::1]:7722",
            "u@[fe80::1]",
            "::1",
            "10.0.0.1",
        ] {
            assert!(is_single(single), "{single}");
        }
        for several in [
            "a,b",
            "n[1-2]",
            "n[1]",
            "@lab",
            "!h",
            "[::1]:[1-2]",
            "[1-2]x",
            "a&b",
            "a^b",
            "a!b",
            "^f",
        ] {
            assert!(!is_single(several), "{several}");
        }
    }

    #[test]
    fn exclusions_match_what_they_name() {
        let target = Target::parse("root@h:7000").unwrap();
        for (spec, excludes) in [
            ("h", true),
            ("h:7000", true),
            ("root@h", true),
            ("h:7001", false),
            ("bob@h", false),
            ("g", false),
        ] {
            assert_eq!(
                TargetSpec::parse(spec).unwrap().excludes(&target),
                excludes,
                "{spec}"
            );
        }
    }
}
