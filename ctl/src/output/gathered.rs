//! The modes that show output after the run: `-b/--gather` (identical
//! stdout printed once under the hosts that produced it), `-B` (the same
//! with stderr in it), `-L` (each host's lines together, in node order) and
//! `--diff` (`crate::output::diff`).
//!
//! Each host's output is kept in a [`Spool`] (bounded memory, the rest on
//! disk) and compared by its hash, so the size of the outputs costs disk,
//! not memory.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering as Atomic};
use std::sync::{Arc, Mutex};

use super::diff::{self, Distinct};
use super::prefixed::Prefixed;
use super::spool::{Digest, Spool};
use super::{Describe, Output, host_note, lock};
use crate::console::Console;
use crate::console::Stream;
use crate::nodeset;
use crate::outcome::{HostResult, Labels};
use crate::plain;

/// How gathered output is shown once every host ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `-b`, `-B`: each distinct output once, under a header naming its
    /// hosts as a node set, like `clush -b` and `dshbak -c`.
    Blocks,
    /// `-L`: each host's lines together, `host: ` before each, hosts in
    /// node order, like `clush -L`.
    ByHost,
    /// `--diff`: a unified diff of each distinct output against the most
    /// common one, like `clush --diff`.
    Diff,
}

/// Output kept until the end of the run, then shown in one [`Layout`].
/// Stderr stays live and prefixed unless it is gathered too (`-B`).
pub struct Gathered {
    console: Arc<Console>,
    labels: Labels,
    layout: Layout,
    /// Stderr goes into the same spool as stdout (`-B`).
    merged: bool,
    /// Headers (`-b`) and line prefixes (`-L`) are left out (`-N`).
    prefix: bool,
    spools: Vec<Mutex<Spool>>,
    /// Hosts ctl could not get a result from: `--diff` leaves them out.
    failed: Vec<AtomicBool>,
    stderr: Prefixed,
}

impl Gathered {
    /// Gathered output for hosts named `labels`, shown in `layout`, with
    /// stderr gathered too when `merged`.
    pub fn new(console: Arc<Console>, labels: Labels, layout: Layout, merged: bool) -> Gathered {
        let mut stderr = Prefixed::new(console.clone(), labels.clone());
        stderr.stderr_only = true;
        Gathered {
            console,
            spools: labels.iter().map(|_| Mutex::default()).collect(),
            failed: labels.iter().map(|_| AtomicBool::default()).collect(),
            labels,
            layout,
            merged,
            prefix: true,
            stderr,
        }
    }

    /// `-N`: no headers and no line prefixes.
    pub fn without_prefix(mut self) -> Gathered {
        self.prefix = false;
        self
    }

    fn spool_failed(&self, e: &std::io::Error) {
        self.console.lose(format!(
            "cannot keep output in a temporary file: {}",
            plain::io_error(e)
        ));
    }

    /// Whether writing on is pointless (our stdout is gone or failed) or
    /// unwanted (Ctrl-C while the hosts' outputs are written out).
    fn stopped(&self) -> bool {
        self.console.broken_pipe()
            || self.console.output_lost().is_some()
            || crate::signals::stopped_late().is_some()
    }

    /// Host indices in node order: names compared piece by piece, numbers
    /// as numbers (`n2` before `n10`).
    fn node_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.labels.len()).collect();
        order.sort_by(|&a, &b| node_cmp(&self.labels[a], &self.labels[b]));
        order
    }

    /// The distinct outputs of `hosts` (in that order), each with its
    /// hosts, in the order of each one's first host.
    fn groups(&self, hosts: impl Iterator<Item = usize>) -> Vec<(Digest, Vec<usize>)> {
        let mut groups: Vec<(Digest, Vec<usize>)> = Vec::new();
        let mut seen: HashMap<Digest, usize> = HashMap::new();
        for host in hosts {
            let digest = lock(&self.spools[host]).digest();
            match seen.get(&digest) {
                Some(&group) => groups[group].1.push(host),
                None => {
                    seen.insert(digest, groups.len());
                    groups.push((digest, vec![host]));
                }
            }
        }
        groups
    }

    /// `hosts` as a node set with their count: `node[1-3] (3)`.
    fn header(&self, hosts: &[usize]) -> String {
        let names = nodeset::fold(hosts.iter().map(|&h| self.labels[h].as_str()));
        format!("{names} ({})", hosts.len())
    }

    /// Writes host `host`'s output to our stdout as it is.
    fn write_raw(&self, host: usize) {
        let spool = lock(&self.spools[host]);
        let replayed = spool.replay(|piece| {
            self.console.write(Stream::Stdout, piece);
            !self.stopped()
        });
        if let Err(e) = replayed {
            self.spool_failed(&e);
        }
        if !spool.ends_in_newline() {
            self.console.write(Stream::Stdout, b"\n");
        }
    }

    /// As `clush -b` orders them: the blocks of the most hosts first, then
    /// by each one's first host in node order, whatever order the targets
    /// were given in.
    fn blocks(&self) {
        let with_output = self
            .node_order()
            .into_iter()
            .filter(|&h| !lock(&self.spools[h]).is_empty());
        let mut groups = self.groups(with_output);
        groups.sort_by_key(|(_, hosts)| std::cmp::Reverse(hosts.len()));
        for (_, hosts) in groups {
            if self.stopped() {
                return;
            }
            if self.prefix {
                let rule = "-".repeat(15);
                let header = format!("{rule}\n{}\n{rule}\n", self.header(&hosts));
                self.console.write(Stream::Stdout, header.as_bytes());
            }
            self.write_raw(hosts[0]);
        }
    }

    fn by_host(&self) {
        let mut lines = Prefixed::new(self.console.clone(), self.labels.clone());
        if !self.prefix {
            lines = lines.without_prefix();
        }
        for host in self.node_order() {
            if self.stopped() {
                return;
            }
            let replayed = lock(&self.spools[host]).replay(|piece| {
                lines.write_chunk(host, Stream::Stdout, piece);
                !self.stopped()
            });
            if let Err(e) = replayed {
                self.spool_failed(&e);
            }
            lines.flush(host);
        }
    }

    /// `--diff`: the distinct outputs of the hosts ctl got a result from,
    /// in node order, handed to `diff`.
    fn diff(&self) {
        let compared = self
            .node_order()
            .into_iter()
            .filter(|&h| !self.failed[h].load(Atomic::Relaxed));
        let outputs: Vec<Distinct<'_>> = self
            .groups(compared)
            .into_iter()
            .map(|((len, _), hosts)| Distinct {
                header: self.header(&hosts),
                hosts: hosts.len(),
                len,
                spool: &self.spools[hosts[0]],
            })
            .collect();
        diff::write(&self.console, &outputs);
    }
}

/// Compares host names as `nodeset` sorts them: digit runs as numbers.
pub fn node_cmp(a: &str, b: &str) -> Ordering {
    fn pieces(name: &str) -> Vec<(bool, u128, &str)> {
        let mut out = Vec::new();
        let mut rest = name;
        while let Some(first) = rest.chars().next() {
            let digit = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digit)
                .unwrap_or(rest.len());
            let (piece, tail) = rest.split_at(end);
            let value = if digit {
                piece.parse().unwrap_or(u128::MAX)
            } else {
                0
            };
            // Digits before text, as in ASCII; text compared as text.
            out.push((!digit, value, piece));
            rest = tail;
        }
        out
    }
    pieces(a).cmp(&pieces(b)).then_with(|| a.cmp(b))
}

impl<T: Describe> Output<T> for Gathered {
    fn chunk(&self, host: usize, stream: Stream, data: &[u8]) {
        if stream == Stream::Stderr && !self.merged {
            return Output::<T>::chunk(&self.stderr, host, stream, data);
        }
        if self.stopped() {
            return;
        }
        if let Err(e) = lock(&self.spools[host]).push(data) {
            self.spool_failed(&e);
        }
    }

    fn done(&self, result: &HostResult<T>) {
        self.stderr.done(result);
        lock(&self.spools[result.index]).close();
        if result.outcome.is_err() {
            self.failed[result.index].store(true, Atomic::Relaxed);
        }
        if let Some(note) = host_note(&self.labels[result.index], result) {
            self.console.note(&note);
        }
    }

    fn end(&self) {
        match self.layout {
            Layout::Blocks => self.blocks(),
            Layout::ByHost => self.by_host(),
            Layout::Diff => self.diff(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_order_takes_numbers_as_numbers() {
        let mut names = vec!["n10", "n2", "m1", "n1-b", "n1", "10.0.0.9", "10.0.0.10"];
        names.sort_by(|a, b| node_cmp(a, b));
        assert_eq!(
            names,
            ["10.0.0.9", "10.0.0.10", "m1", "n1", "n1-b", "n2", "n10"]
        );
    }
}
