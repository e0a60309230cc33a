//! `--diff`: after the run, each distinct output as a unified diff against
//! the most common one, headed by the node sets that produced them, as
//! `clush --diff` prints it. Nothing is printed when every host agreed.
//!
//! Outputs are told apart by their hash (`crate::output::spool`); only the
//! two being compared are read back into memory, and only when each is at
//! most [`DIFF_LIMIT`]: past that a line on stderr says they differ.

use std::sync::Mutex;
use std::time::Duration;

use similar::TextDiff;

use super::lock;
use super::spool::Spool;
use crate::console::{Console, Stream};
use crate::plain;

/// The largest output compared line by line.
pub const DIFF_LIMIT: u64 = 8 << 20;

/// How long one comparison may take before `similar` settles for a
/// coarser (still correct) diff.
const DIFF_TIME: Duration = Duration::from_secs(2);

/// One distinct output of the run, as the gathered modes found it.
pub(super) struct Distinct<'a> {
    /// The hosts that produced it, as a node set with their count.
    pub header: String,
    /// How many hosts produced it.
    pub hosts: usize,
    /// Its length in bytes.
    pub len: u64,
    /// The spool of one of those hosts.
    pub spool: &'a Mutex<Spool>,
}

/// Writes the diffs of `outputs` (in the order of each one's first host,
/// in node order) to our stdout.
pub(super) fn write(console: &Console, outputs: &[Distinct<'_>]) {
    if outputs.len() < 2 {
        return;
    }
    // The most common output; on a tie, the one whose first host comes
    // first in node order.
    let mut reference = 0;
    for (i, output) in outputs.iter().enumerate() {
        if output.hosts > outputs[reference].hosts {
            reference = i;
        }
    }
    let read = |spool: &Mutex<Spool>| match lock(spool).read_all(DIFF_LIMIT) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            console.lose(format!(
                "cannot read output back from a temporary file: {}",
                plain::io_error(&e)
            ));
            None
        }
    };
    let reference_header = &outputs[reference].header;
    let Some(old) = read(outputs[reference].spool) else {
        return;
    };
    for (i, output) in outputs.iter().enumerate() {
        if i == reference || console.output_lost().is_some() || console.broken_pipe() {
            continue;
        }
        let header = &output.header;
        let Some(new) = read(output.spool) else {
            return;
        };
        let (Some(old), Some(new)) = (&old, new) else {
            console.note(&format!(
                "{header}: output of {} bytes differs from that of {reference_header}; \
                 over {} MiB, not compared line by line",
                output.len,
                DIFF_LIMIT >> 20
            ));
            continue;
        };
        // Bytes that are not UTF-8 are shown replaced, as in `diff -a`
        // on a terminal: the diff is for reading.
        let old = String::from_utf8_lossy(old);
        let new = String::from_utf8_lossy(&new);
        let diff = TextDiff::configure()
            .timeout(DIFF_TIME)
            .diff_lines(old.as_ref(), new.as_ref());
        let mut text = Vec::new();
        let written = diff
            .unified_diff()
            .context_radius(3)
            .header(reference_header, header)
            .to_writer(&mut text);
        if written.is_ok() {
            console.write(Stream::Stdout, &text);
        }
    }
}
