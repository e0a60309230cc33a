//! Node sets in the ClusterShell/pdsh syntax: `node[01-20]` expands to
//! twenty names, and a list of names folds back into the shortest such
//! form (`node[01-05,07]`) for headers and summaries.
//!
//! This module owns the bracket syntax and nothing else: splitting a target
//! list at its top-level operators, expanding one pattern, folding names. What
//! a name means (user, port, group, exclusion) is [`crate::target`]'s and
//! [`crate::inventory`]'s business.
//!
//! A bracket holds ranges (`[1-3]`, `[01-10]`, `[1,3,5-7]`, `[0-10/2]`);
//! zero padding comes from the lower bound (`[08-10]` gives `08 09 10`).
//! A bracket that holds a `:` is an IPv6 literal (`[::1]:7722`), never a
//! range: range brackets only ever hold digits, `,`, `-` and `/`, so the
//! two cannot be confused. Folding keeps such a literal whole, since a
//! range inside it would nest brackets.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// The most names one pattern or list may expand to; more is surely a typo
/// (`node[1-1000000000]`) and would only exhaust memory.
pub const MAX_NAMES: usize = 100_000;

/// A node set that does not parse, with the character at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SyntaxError {
    /// The whole text the user typed.
    pub input: String,
    /// Byte offset of the offending character in `input`.
    pub position: usize,
    /// What is wrong there.
    pub reason: String,
}

impl SyntaxError {
    fn new(input: &str, position: usize, reason: impl Into<String>) -> SyntaxError {
        SyntaxError {
            input: input.to_owned(),
            position,
            reason: reason.into(),
        }
    }

    /// The same error seen from a larger text in which `input` starts at
    /// byte `offset`.
    pub fn within(self, whole: &str, offset: usize) -> SyntaxError {
        SyntaxError {
            input: whole.to_owned(),
            position: offset + self.position,
            reason: self.reason,
        }
    }
}

impl SyntaxError {
    /// The character (counted from 1) at fault.
    fn column(&self) -> usize {
        self.input
            .get(..self.position)
            .map_or(self.position, |before| before.chars().count())
            + 1
    }
}

impl fmt::Display for SyntaxError {
    /// One line, as every message of ctl's: `reason at character N of "INPUT"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at character {} of {:?}",
            self.reason,
            self.column(),
            self.input
        )
    }
}

/// Splits a target list at its top-level operators, ClusterShell's
/// extended node-set syntax: `,` (union), `!` (difference), `&`
/// (intersection) and `^` (symmetric difference), none inside brackets.
/// Each term comes with its byte offset and the operator before it (`,`
/// for the first).
///
/// Two places are not operators: a `!` that starts the list or follows a
/// comma begins an exclusion item (`a,!b`, ours), and a `^` there begins a
/// host file (`^hosts.txt`, as pdsh has it), whose name runs to the next
/// operator and is not read for brackets.
///
/// # Errors
/// An empty term, a `]` without `[`, a `[` without `]`, or nested brackets.
pub fn split_terms(input: &str) -> Result<Vec<(usize, char, &str)>, SyntaxError> {
    let empty = |at: usize, operator: char| match operator {
        ',' => SyntaxError::new(input, at, "empty name in the list"),
        other => SyntaxError::new(input, at, format!("expected a name after {other:?}")),
    };
    let mut terms = Vec::new();
    let mut operator = ',';
    let mut start = 0;
    // Where the term's name begins: after an exclusion's '!'.
    let mut body = 0;
    let mut file = false;
    let mut open: Option<usize> = None;
    for (i, c) in input.char_indices() {
        let is_operator = matches!(c, ',' | '!' | '&' | '^');
        if file && !is_operator {
            continue;
        }
        match c {
            '!' if i == start && operator == ',' => body = i + 1,
            '^' if i == body && open.is_none() => file = true,
            '[' if open.is_some() => {
                return Err(SyntaxError::new(input, i, "brackets cannot nest"));
            }
            '[' => open = Some(i),
            ']' if open.is_none() => {
                return Err(SyntaxError::new(input, i, "']' without a matching '['"));
            }
            ']' => open = None,
            _ if is_operator && open.is_none() => {
                if i == body {
                    return Err(if i == start {
                        match c {
                            ',' => empty(i, operator),
                            _ if terms.is_empty() => {
                                SyntaxError::new(input, i, format!("expected a name before {c:?}"))
                            }
                            _ => empty(i, operator),
                        }
                    } else {
                        SyntaxError::new(input, i, "expected a name after '!'")
                    });
                }
                terms.push((start, operator, &input[start..i]));
                operator = c;
                start = i + 1;
                body = start;
                file = false;
            }
            _ => {}
        }
    }
    if let Some(at) = open {
        return Err(SyntaxError::new(input, at, "'[' is never closed"));
    }
    if body == input.len() {
        return Err(if start == body {
            empty(start, operator)
        } else {
            SyntaxError::new(input, body, "expected a name after '!'")
        });
    }
    terms.push((start, operator, &input[start..]));
    Ok(terms)
}

/// Checks that brackets pair up and do not nest.
fn check_brackets(input: &str) -> Result<(), SyntaxError> {
    let mut open: Option<usize> = None;
    for (i, c) in input.char_indices() {
        match (c, open) {
            ('[', Some(_)) => return Err(SyntaxError::new(input, i, "brackets cannot nest")),
            ('[', None) => open = Some(i),
            (']', None) => {
                return Err(SyntaxError::new(input, i, "']' without a matching '['"));
            }
            (']', Some(_)) => open = None,
            _ => {}
        }
    }
    match open {
        Some(at) => Err(SyntaxError::new(input, at, "'[' is never closed")),
        None => Ok(()),
    }
}

/// One piece of a pattern: literal text, or the alternatives of a range.
enum Piece {
    Text(String),
    Range(Vec<String>),
}

/// Expands one pattern (no top-level commas) into its names, in order:
/// `rack[1-2]-n[1,3]` gives `rack1-n1 rack1-n3 rack2-n1 rack2-n3`.
///
/// # Errors
/// Anything in a range bracket that is not a number, a range or a step;
/// a range that runs backwards; more than [`MAX_NAMES`] names.
pub fn expand(pattern: &str) -> Result<Vec<String>, SyntaxError> {
    check_brackets(pattern)?;
    let mut pieces = Vec::new();
    let mut rest_start = 0;
    let mut search = 0;
    while let Some(found) = pattern[search..].find('[') {
        let open = search + found;
        let Some(len) = pattern[open..].find(']') else {
            return Err(SyntaxError::new(pattern, open, "'[' is never closed"));
        };
        let close = open + len;
        let inner = &pattern[open + 1..close];
        search = close + 1;
        if inner.contains(':') {
            // An IPv6 literal: left for the target parser, brackets and all.
            continue;
        }
        if open > rest_start {
            pieces.push(Piece::Text(pattern[rest_start..open].to_owned()));
        }
        pieces.push(Piece::Range(
            range(inner).map_err(|e| e.within(pattern, open + 1))?,
        ));
        rest_start = close + 1;
    }
    if rest_start < pattern.len() {
        pieces.push(Piece::Text(pattern[rest_start..].to_owned()));
    }

    let count = pieces.iter().try_fold(1usize, |n, piece| match piece {
        Piece::Text(_) => Some(n),
        Piece::Range(values) => n.checked_mul(values.len()).filter(|&n| n <= MAX_NAMES),
    });
    if count.is_none() {
        return Err(SyntaxError::new(
            pattern,
            0,
            format!("expands to more than {MAX_NAMES} names"),
        ));
    }
    let mut names = vec![String::new()];
    for piece in &pieces {
        names = match piece {
            Piece::Text(text) => names.into_iter().map(|n| n + text).collect(),
            Piece::Range(values) => names
                .iter()
                .flat_map(|n| values.iter().map(move |v| format!("{n}{v}")))
                .collect(),
        };
    }
    Ok(names)
}

/// The values of one range bracket's contents, formatted with their padding.
fn range(inner: &str) -> Result<Vec<String>, SyntaxError> {
    if inner.is_empty() {
        return Err(SyntaxError::new(inner, 0, "empty range '[]'"));
    }
    let mut values = Vec::new();
    let mut offset = 0;
    for element in inner.split(',') {
        let at = |i: usize| offset + i;
        if element.is_empty() {
            return Err(SyntaxError::new(inner, at(0), "empty element in a range"));
        }
        let (span, step) = match element.split_once('/') {
            Some((span, step)) => {
                let step_at = at(span.len() + 1);
                let step = number(step, inner, step_at)?;
                if step == 0 {
                    return Err(SyntaxError::new(
                        inner,
                        step_at,
                        "a step must be at least 1",
                    ));
                }
                (span, step)
            }
            None => (element, 1),
        };
        let (low, high) = match span.split_once('-') {
            Some((low, high)) => (low, Some(high)),
            None => (span, None),
        };
        if high.is_none() && element.contains('/') {
            // `[5/2]` has nothing to step through; ClusterShell refuses it too.
            return Err(SyntaxError::new(
                inner,
                at(span.len()),
                "a step needs a range before it (like 0-10/2)",
            ));
        }
        let first = number(low, inner, at(0))?;
        let pad = if low.len() > 1 && low.starts_with('0') {
            low.len()
        } else {
            0
        };
        let last = match high {
            Some(high) => {
                let high_at = at(low.len() + 1);
                let last = number(high, inner, high_at)?;
                if last < first {
                    return Err(SyntaxError::new(
                        inner,
                        high_at,
                        format!("range {low}-{high} runs backwards"),
                    ));
                }
                last
            }
            None => first,
        };
        let count = (last - first) / step + 1;
        if values.len() as u64 + count > MAX_NAMES as u64 {
            return Err(SyntaxError::new(
                inner,
                at(0),
                format!("expands to more than {MAX_NAMES} names"),
            ));
        }
        let mut value = first;
        while value <= last {
            values.push(format!("{value:0pad$}"));
            match value.checked_add(step) {
                Some(next) => value = next,
                None => break,
            }
        }
        offset += element.len() + 1;
    }
    Ok(values)
}

/// Parses the digits of a range bound at `position` in `inner`.
fn number(digits: &str, inner: &str, position: usize) -> Result<u64, SyntaxError> {
    if let Some(bad) = digits.find(|c: char| !c.is_ascii_digit()) {
        let c = digits[bad..].chars().next().unwrap_or(' ');
        return Err(SyntaxError::new(
            inner,
            position + bad,
            format!("unexpected {c:?} in a range (ranges look like [1-5,7] or [01-10])"),
        ));
    }
    if digits.is_empty() {
        return Err(SyntaxError::new(inner, position, "expected a number"));
    }
    digits
        .parse()
        .map_err(|_| SyntaxError::new(inner, position, "number too large"))
}

/// A name cut into text and numbers, or a folded pattern: the same shape
/// with some numbers widened into sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Part {
    Text(String),
    Numbers { values: BTreeSet<u64>, pad: usize },
}

/// Folds names into the shortest node set that expands back to the same
/// names: `node01 node02 node03 node07` gives `node[01-03,07]`, and
/// `rack1-n1 rack1-n2 rack2-n1 rack2-n2` gives `rack[1-2]-n[1-2]`.
/// The result is sorted and has no duplicates.
pub fn fold<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let unique: BTreeSet<&str> = names.into_iter().collect();
    let mut patterns: Vec<Vec<Part>> = unique.into_iter().map(parts).collect();
    let dimensions = patterns
        .iter()
        .map(|p| {
            p.iter()
                .filter(|x| matches!(x, Part::Numbers { .. }))
                .count()
        })
        .max()
        .unwrap_or(0);
    // Merge along the last number first, as ClusterShell does: it is the
    // one that varies fastest in names people give their machines.
    for from_end in 0..dimensions {
        patterns = merge(patterns, from_end);
    }
    let mut folded: Vec<String> = patterns.iter().map(|p| render(p)).collect();
    folded.sort();
    folded.join(",")
}

/// Cuts a name at its digit runs. An IPv6 literal in brackets
/// (`[::1]:7723`) stays one piece of text: a range folded inside it
/// (`[::[1-2]]`) would nest brackets, which no target list may.
fn parts(name: &str) -> Vec<Part> {
    let mut out = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        if rest.starts_with('[') {
            let address = rest
                .find(']')
                .filter(|&end| rest[..end].contains(':'))
                .map_or(1, |end| end + 1);
            push_text(&mut out, &rest[..address]);
            rest = &rest[address..];
            continue;
        }
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits > 0 {
            let run = &rest[..digits];
            match run.parse::<u64>() {
                Ok(value) => out.push(Part::Numbers {
                    values: BTreeSet::from([value]),
                    pad: if run.len() > 1 && run.starts_with('0') {
                        run.len()
                    } else {
                        0
                    },
                }),
                Err(_) => push_text(&mut out, run),
            }
            rest = &rest[digits..];
        } else {
            let text = rest
                .find(|c: char| c.is_ascii_digit() || c == '[')
                .unwrap_or(rest.len());
            push_text(&mut out, &rest[..text]);
            rest = &rest[text..];
        }
    }
    out
}

fn push_text(out: &mut Vec<Part>, text: &str) {
    if let Some(Part::Text(last)) = out.last_mut() {
        last.push_str(text);
    } else {
        out.push(Part::Text(text.to_owned()));
    }
}

/// A pattern with one number position blanked out, and that position:
/// the patterns that share it differ only there.
type Shape = (Vec<Part>, usize);

/// Merges patterns that differ only in their `from_end`-th number from the
/// end, keeping numbers of different zero padding apart.
fn merge(patterns: Vec<Vec<Part>>, from_end: usize) -> Vec<Vec<Part>> {
    let mut out: Vec<Vec<Part>> = Vec::new();
    let mut groups: HashMap<Shape, Vec<(u64, usize)>> = HashMap::new();
    let mut order: Vec<Shape> = Vec::new();
    for pattern in patterns {
        let position = pattern
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Part::Numbers { .. }))
            .map(|(i, _)| i)
            .rev()
            .nth(from_end);
        let Some(position) = position else {
            out.push(pattern);
            continue;
        };
        let mut key = pattern.clone();
        let Part::Numbers { values, pad } =
            std::mem::replace(&mut key[position], Part::Text(String::new()))
        else {
            continue;
        };
        let entry = groups.entry((key.clone(), position)).or_insert_with(|| {
            order.push((key, position));
            Vec::new()
        });
        entry.extend(values.into_iter().map(|v| (v, pad)));
    }
    for key in order {
        let Some(numbers) = groups.remove(&key) else {
            continue;
        };
        let (shape, position) = key;
        // An unpadded number at least as wide as a padded set belongs to
        // it, since padding leaves it as it is: node09 and node10 fold to
        // node[09-10], not node09,node10, and n01…n1000 to n[01-1000].
        let pads: BTreeSet<usize> = numbers.iter().map(|&(_, pad)| pad).collect();
        let mut by_pad: HashMap<usize, BTreeSet<u64>> = HashMap::new();
        for (value, pad) in numbers {
            let width = value.to_string().len();
            let pad = if pad == 0 {
                pads.range(1..=width).next_back().copied().unwrap_or(0)
            } else {
                pad
            };
            by_pad.entry(pad).or_default().insert(value);
        }
        let mut by_pad: Vec<_> = by_pad.into_iter().collect();
        by_pad.sort();
        for (pad, values) in by_pad {
            let mut pattern = shape.clone();
            pattern[position] = Part::Numbers { values, pad };
            out.push(pattern);
        }
    }
    out
}

fn render(pattern: &[Part]) -> String {
    let mut out = String::new();
    for part in pattern {
        match part {
            Part::Text(text) => out.push_str(text),
            Part::Numbers { values, pad } => {
                let spans = spans(values);
                let bracketed = values.len() > 1;
                if bracketed {
                    out.push('[');
                }
                let rendered: Vec<String> = spans
                    .iter()
                    .map(|&(low, high)| {
                        if low == high {
                            format!("{low:0pad$}")
                        } else {
                            format!("{low:0pad$}-{high:0pad$}")
                        }
                    })
                    .collect();
                out.push_str(&rendered.join(","));
                if bracketed {
                    out.push(']');
                }
            }
        }
    }
    out
}

/// Consecutive runs in a sorted set, as (first, last).
fn spans(values: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for &value in values {
        match spans.last_mut() {
            Some((_, high)) if high.checked_add(1) == Some(value) => *high = value,
            _ => spans.push((value, value)),
        }
    }
    spans
}

/// Node order: names compared run by run, digit runs by their value,
/// so `node2` comes before `node10` (as `ctl hosts --fold` and
/// ClusterShell order them); equal values fall back to the text.
pub fn node_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn runs(name: &str) -> impl Iterator<Item = &str> {
        let mut rest = name;
        std::iter::from_fn(move || {
            let first = rest.chars().next()?;
            let digit = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digit)
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(end);
            rest = tail;
            Some(run)
        })
    }
    let mut left = runs(a);
    let mut right = runs(b);
    loop {
        match (left.next(), right.next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => {
                let both_numbers = x.starts_with(|c: char| c.is_ascii_digit())
                    && y.starts_with(|c: char| c.is_ascii_digit());
                let order = if both_numbers {
                    let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                    x.len().cmp(&y.len()).then_with(|| x.cmp(y))
                } else {
                    x.cmp(y)
                };
                if order.is_ne() {
                    return order;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_list(list: &str) -> Vec<String> {
        split_terms(list)
            .unwrap()
            .into_iter()
            .flat_map(|(_, _, item)| expand(item).unwrap())
            .collect()
    }

    #[test]
    fn ranges_expand_in_order_with_padding() {
        assert_eq!(
            expand("node[01-03]").unwrap(),
            ["node01", "node02", "node03"]
        );
        assert_eq!(expand("n[8-10]").unwrap(), ["n8", "n9", "n10"]);
        assert_eq!(expand("n[08-10]").unwrap(), ["n08", "n09", "n10"]);
        assert_eq!(expand("n[0-6/3]").unwrap(), ["n0", "n3", "n6"]);
        assert_eq!(
            expand("rack[1-2]-n[1,3,5-6]").unwrap(),
            [
                "rack1-n1", "rack1-n3", "rack1-n5", "rack1-n6", "rack2-n1", "rack2-n3", "rack2-n5",
                "rack2-n6"
            ]
        );
        assert_eq!(expand("[1-2]x").unwrap(), ["1x", "2x"]);
        assert_eq!(expand("plain").unwrap(), ["plain"]);
        assert_eq!(
            expand("127.0.0.[2-4]").unwrap(),
            ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        );
    }

    #[test]
    fn a_bracket_with_a_colon_is_an_ipv6_literal() {
        assert_eq!(expand("[::1]:7722").unwrap(), ["[::1]:7722"]);
        assert_eq!(
            expand("[fe80::1]:[7001-7002]").unwrap(),
            ["[fe80::1]:7001", "[fe80::1]:7002"]
        );
        assert_eq!(
            split_terms("[::1]:7722,n[1,2]").unwrap(),
            [(0, ',', "[::1]:7722"), (11, ',', "n[1,2]")]
        );
    }

    #[test]
    fn bad_syntax_points_at_the_character() {
        let cases = [
            ("node[1-x]", 7, "unexpected 'x'"),
            ("node[5-2]", 7, "runs backwards"),
            ("node[1-3", 4, "never closed"),
            ("node1-3]", 7, "without a matching"),
            ("node[]", 5, "empty range"),
            ("node[1,,2]", 7, "empty element"),
            ("n[1-2/0]", 6, "step"),
            ("n[5/2]", 3, "a step needs a range"),
        ];
        for (input, position, reason) in cases {
            let error = split_terms(input)
                .and_then(|items| {
                    items
                        .into_iter()
                        .map(|(at, _, item)| expand(item).map_err(|e| e.within(input, at)))
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap_err();
            assert_eq!(error.position, position, "{input}: {error}");
            assert!(error.reason.contains(reason), "{input}: {error}");
        }
        let shown = expand("node[1-x]").unwrap_err().to_string();
        assert!(
            shown.ends_with(" at character 8 of \"node[1-x]\""),
            "{shown}"
        );
        assert_eq!(split_terms("a,,b").unwrap_err().position, 2);
        assert_eq!(split_terms("a,").unwrap_err().position, 2);
        assert_eq!(split_terms("a&").unwrap_err().position, 2);
        assert_eq!(split_terms("&a").unwrap_err().position, 0);
        assert_eq!(split_terms("a&!b").unwrap_err().position, 2);
        assert_eq!(split_terms("a,!").unwrap_err().position, 3);
    }

    #[test]
    fn lists_split_at_operators_outside_brackets() {
        assert_eq!(
            split_terms("n[1-9]!n6&n[6-12],m^n1,!x,^f[1].txt&y").unwrap(),
            [
                (0, ',', "n[1-9]"),
                (7, '!', "n6"),
                (10, '&', "n[6-12]"),
                (18, ',', "m"),
                (20, '^', "n1"),
                (23, ',', "!x"),
                (26, ',', "^f[1].txt"),
                (36, '&', "y"),
            ]
        );
        assert!(expand("n[1-1000000000]").is_err());
        assert!(expand("n[1-1000]m[1-1000]").is_err());
    }

    #[test]
    fn names_fold_into_the_shortest_set() {
        let fold_all = |names: &[&str]| fold(names.iter().copied());
        assert_eq!(
            fold_all(&["node01", "node02", "node03", "node05", "node07"]),
            "node[01-03,05,07]"
        );
        assert_eq!(fold_all(&["node09", "node10", "node11"]), "node[09-11]");
        assert_eq!(fold_all(&["n9", "n10"]), "n[9-10]");
        assert_eq!(
            fold(expand_list("n[01-1000]").iter().map(String::as_str)),
            "n[01-1000]"
        );
        assert_eq!(fold_all(&["n1", "n01", "n100"]), "n1,n[01,100]");
        assert_eq!(fold_all(&["n1", "n01"]), "n01,n1");
        assert_eq!(fold_all(&["solo"]), "solo");
        assert_eq!(fold_all(&["b", "a", "a"]), "a,b");
        assert_eq!(
            fold_all(&["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
            "rack[1-2]-n[1-2]"
        );
        assert_eq!(
            fold_all(&["127.0.0.2", "127.0.0.3", "127.0.0.9"]),
            "127.0.0.[2-3,9]"
        );
    }

    /// Digits inside `[v6]` used to be folded too: `[::1]:7723` and
    /// `[::2]:7723` gave `[::[1-2]]:7723`, which ctl refuses to read.
    #[test]
    fn an_ipv6_literal_in_brackets_folds_as_one_word() {
        let fold_all = |names: &[&str]| fold(names.iter().copied());
        assert_eq!(
            fold_all(&["[::1]:7723", "[::2]:7723"]),
            "[::1]:7723,[::2]:7723"
        );
        assert_eq!(fold_all(&["[::1]:7723", "[::1]:7724"]), "[::1]:[7723-7724]");
        assert_eq!(
            fold_all(&["root@[fe80::1]:7001", "root@[fe80::1]:7002"]),
            "root@[fe80::1]:[7001-7002]"
        );
        for names in [
            &["[::1]:7723", "[::2]:7723", "[::1]:7724"][..],
            &["[fe80::a1]:1", "[fe80::a2]:1", "n1", "n2"],
        ] {
            let folded = fold_all(names);
            let mut again = expand_list(&folded);
            again.sort();
            let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            want.sort();
            assert_eq!(again, want, "{folded}");
        }
    }

    #[test]
    fn expansion_and_folding_round_trip() {
        for list in [
            "node[01-20]",
            "rack[1-3]-n[1,3,5-7]",
            "node[1-9],node[10-12],web[001-003,010]",
            "127.0.0.[2-21]",
            "a[1-3]b[4-5]c,x,y[7-8]",
            "n[098-101]",
            "n[01-1000]",
            "n1,n01,n100,n0100",
        ] {
            let names = expand_list(list);
            let folded = fold(names.iter().map(String::as_str));
            let mut again = expand_list(&folded);
            let mut names = names.clone();
            names.sort();
            again.sort();
            assert_eq!(again, names, "{list} folded to {folded}");
        }
        assert_eq!(
            fold(
                expand_list("rack[1-3]-n[1,3,5-7]")
                    .iter()
                    .map(String::as_str)
            ),
            "rack[1-3]-n[1,3,5-7]"
        );
    }

    #[test]
    fn node_order_counts_numbers_by_value() {
        let mut names = vec![
            "pc10",
            "pc2",
            "b",
            "pc02",
            "a-1",
            "pc1",
            "rack2-n10",
            "rack2-n9",
            "a",
        ];
        names.sort_by(|a, b| node_order(a, b));
        assert_eq!(
            names,
            [
                "a",
                "a-1",
                "b",
                "pc1",
                "pc02",
                "pc2",
                "pc10",
                "rack2-n9",
                "rack2-n10"
            ]
        );
    }
}
