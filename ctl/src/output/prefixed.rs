//! The default output of a multi-host exec: live lines, each prefixed with
//! its host.

use std::sync::{Arc, Mutex};

use super::{Describe, MAX_LINE, Output, host_note, lock, slot};
use crate::console::{Console, Stream};
use crate::outcome::{HostResult, Labels};

/// Live lines, each prefixed with `host: ` (unless `-N`); stdout to stdout
/// and stderr to stderr. A line is written in one piece once complete, so lines of
/// different hosts never mix; a last line without a newline is written
/// (with a newline added) when its host ends.
pub struct Prefixed {
    console: Arc<Console>,
    labels: Labels,
    partial: Vec<Mutex<[Pending; 2]>>,
    /// Only stderr is prefixed here; stdout goes elsewhere (gather mode).
    pub(super) stderr_only: bool,
    /// Whether lines carry `host: ` (not under `-N`).
    prefix: bool,
}

/// What of one host's stream is not written yet.
#[derive(Debug, Default)]
struct Pending {
    /// The unfinished line.
    line: Vec<u8>,
    /// The last piece written was cut at [`MAX_LINE`], a newline added: the
    /// line's own newline, when it comes next, is already written.
    cut: bool,
}

impl Prefixed {
    /// Prefixed output for hosts named `labels`.
    pub fn new(console: Arc<Console>, labels: Labels) -> Prefixed {
        Prefixed {
            console,
            partial: labels.iter().map(|_| Mutex::default()).collect(),
            labels,
            stderr_only: false,
            prefix: true,
        }
    }

    /// `-N`: whole lines as before, without the `host: ` in front.
    pub fn without_prefix(mut self) -> Prefixed {
        self.prefix = false;
        self
    }

    /// Writes what is left of host `host`'s unfinished lines, each with a
    /// newline added: the host ended.
    pub(super) fn flush(&self, host: usize) {
        let mut partial = lock(&self.partial[host]);
        for stream in [Stream::Stdout, Stream::Stderr] {
            let Pending {
                line: rest,
                mut cut,
            } = std::mem::take(&mut partial[slot(stream)]);
            if !rest.is_empty() {
                let mut out = Vec::new();
                self.prefixed(host, &rest, &mut cut, &mut out);
                self.console.write(stream, &out);
            }
        }
    }

    /// Takes a chunk of host `host`'s output: what completes lines goes out.
    pub(super) fn write_chunk(&self, host: usize, stream: Stream, data: &[u8]) {
        let mut partial = lock(&self.partial[host]);
        let Pending { line: buffer, cut } = &mut partial[slot(stream)];
        buffer.extend_from_slice(data);
        let mut complete = buffer
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |end| end + 1);
        // Whole MAX_LINE pieces of an unfinished line go out now, so that
        // memory stays bounded; the cuts fall at the same places however
        // the line arrived.
        let unfinished = buffer.len() - complete;
        complete += unfinished - unfinished % MAX_LINE;
        if complete == 0 {
            return;
        }
        let lines: Vec<u8> = buffer.drain(..complete).collect();
        let mut out = Vec::with_capacity(complete + 64);
        self.prefixed(host, &lines, cut, &mut out);
        self.console.write(stream, &out);
    }

    /// Appends `lines` to `out`, each line (or [`MAX_LINE`] piece of an
    /// overlong one) with the host's prefix and a newline. `cut` carries
    /// over whether the last piece was cut, so that a line of exactly
    /// N × [`MAX_LINE`] bytes gets no empty line after it.
    fn prefixed(&self, host: usize, lines: &[u8], cut: &mut bool, out: &mut Vec<u8>) {
        for line in lines.split_inclusive(|&b| b == b'\n') {
            for piece in line.chunks(MAX_LINE) {
                if std::mem::take(cut) && piece == b"\n" {
                    continue;
                }
                if self.prefix {
                    out.extend_from_slice(self.labels[host].as_bytes());
                    out.extend_from_slice(b": ");
                }
                out.extend_from_slice(piece);
                if !piece.ends_with(b"\n") {
                    out.push(b'\n');
                    *cut = true;
                }
            }
        }
    }
}

impl<T: Describe> Output<T> for Prefixed {
    fn chunk(&self, host: usize, stream: Stream, data: &[u8]) {
        self.write_chunk(host, stream, data);
    }

    fn done(&self, result: &HostResult<T>) {
        self.flush(result.index);
        if !self.stderr_only
            && let Some(note) = host_note(&self.labels[result.index], result)
        {
            self.console.note(&note);
        }
    }
}
