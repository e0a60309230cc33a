//! `--diff`: after the run, each distinct output as a unified diff against
//! the most common one, headed by the node sets that produced them, as
//! `clush --diff` prints it. Nothing is printed when every host agreed.
//!
//! Outputs are told apart by their hash (`crate::output::spool`); only the
//! two being compared are read back into memory, and only when each is at
//! most [`DIFF_LIMIT`]: past that a line on stderr says they differ.

use std::time::Duration;

use similar::TextDiff;

use super::gathered::Gathered;
use crate::console::Stream;
use crate::plain;

/// The largest output compared line by line.
pub const DIFF_LIMIT: u64 = 8 << 20;

/// How long one comparison may take before `similar` settles for a
/// coarser (still correct) diff.
const DIFF_TIME: Duration = Duration::from_secs(2);

/// Writes the diffs of `gathered`'s outputs to our stdout.
pub(super) fn write(gathered: &Gathered) {
    let groups = gathered.groups(gathered.compared().into_iter());
    if groups.len() < 2 {
        return;
    }
    // The most common output; on a tie, the one whose first host comes
    // first in node order.
    let mut reference = 0;
    for (i, (_, hosts)) in groups.iter().enumerate() {
        if hosts.len() > groups[reference].1.len() {
            reference = i;
        }
    }
    let console = gathered.console();
    let read = |host: usize| match gathered.spool(host).read_all(DIFF_LIMIT) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            console.lose(format!(
                "cannot read output back from a temporary file: {}",
                plain::io_error(&e)
            ));
            None
        }
    };
    let (_, reference_hosts) = &groups[reference];
    let reference_header = gathered.header(reference_hosts);
    let Some(old) = read(reference_hosts[0]) else {
        return;
    };
    for (i, (digest, hosts)) in groups.iter().enumerate() {
        if i == reference || console.output_lost().is_some() || console.broken_pipe() {
            continue;
        }
        let header = gathered.header(hosts);
        let Some(new) = read(hosts[0]) else {
            return;
        };
        let (Some(old), Some(new)) = (&old, new) else {
            console.note(&format!(
                "{header}: output of {} bytes differs from that of {reference_header}; \
                 over {} MiB, not compared line by line",
                digest.0,
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
            .header(&reference_header, &header)
            .to_writer(&mut text);
        if written.is_ok() {
            console.write(Stream::Stdout, &text);
        }
    }
}
