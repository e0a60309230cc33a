//! `--json`: one JSON object per host per line, output included up to
//! `--max-output` per stream, with the number of bytes left out.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::{Describe, Output, lock, put_bytes, record, slot};
use crate::console::{Console, Stream};
use crate::outcome::{HostResult, Labels};

/// How much of each stream of each host `--json` embeds unless
/// `--max-output` says otherwise.
pub const DEFAULT_MAX_OUTPUT: usize = 1 << 20;

/// `--json`: one JSON object per host per line on stdout, written when the
/// host finishes, with its stdout and stderr in it.
///
/// A record is one line built in memory, so what it embeds is capped
/// (`--max-output`) rather than spooled: past the cap the bytes are
/// counted, not kept, and memory stays bounded by the cap whatever the
/// command prints.
pub struct JsonLines {
    console: Arc<Console>,
    labels: Labels,
    max_output: usize,
    captured: Vec<Mutex<[Captured; 2]>>,
}

/// What of one stream of one host the record gets.
#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    omitted: u64,
}

impl Captured {
    fn take(&mut self, data: &[u8], max: usize) {
        let room = max.saturating_sub(self.kept.len()).min(data.len());
        self.kept.extend_from_slice(&data[..room]);
        self.omitted += (data.len() - room) as u64;
    }

    /// A cut that fell inside a UTF-8 character would turn the whole
    /// text into base64: the broken character goes with the rest.
    fn trim_cut_character(&mut self) {
        if self.omitted == 0 {
            return;
        }
        if let Err(e) = std::str::from_utf8(&self.kept)
            && e.error_len().is_none()
        {
            let broken = self.kept.len() - e.valid_up_to();
            self.kept.truncate(e.valid_up_to());
            self.omitted += broken as u64;
        }
    }
}

impl JsonLines {
    /// JSON output for hosts named `labels`, embedding at most
    /// `max_output` bytes of each stream of each host.
    pub fn new(console: Arc<Console>, labels: Labels, max_output: usize) -> JsonLines {
        JsonLines {
            console,
            captured: labels.iter().map(|_| Mutex::default()).collect(),
            labels,
            max_output,
        }
    }
}

impl<T: Describe> Output<T> for JsonLines {
    fn chunk(&self, host: usize, stream: Stream, data: &[u8]) {
        lock(&self.captured[host])[slot(stream)].take(data, self.max_output);
    }

    fn done(&self, result: &HostResult<T>) {
        let captured = std::mem::take(&mut *lock(&self.captured[result.index]));
        let mut record = record(&self.labels[result.index], result);
        for (mut captured, name) in captured.into_iter().zip(["stdout", "stderr"]) {
            captured.trim_cut_character();
            put_bytes(&mut record, name, &captured.kept);
            record.insert(format!("{name}_omitted"), captured.omitted.into());
        }
        self.console.write(Stream::Stdout, line(record).as_bytes());
    }
}

/// One JSON record as a line of output.
pub fn line(record: Map<String, Value>) -> String {
    let mut line = Value::Object(record).to_string();
    line.push('\n');
    line
}

/// `--json` for ping and cp: the record of host `label`, without output,
/// as a line on our stdout.
pub fn write_record<T: Describe>(console: &Console, label: &str, result: &HostResult<T>) {
    console.write(Stream::Stdout, line(record(label, result)).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_bytes_are_counted_and_a_cut_character_goes_too() {
        let mut captured = Captured::default();
        captured.take("ab".as_bytes(), 4);
        captured.take("cé!".as_bytes(), 4);
        assert_eq!(captured.kept, b"abc\xc3");
        assert_eq!(captured.omitted, 2);
        captured.trim_cut_character();
        assert_eq!(captured.kept, b"abc");
        assert_eq!(captured.omitted, 3);

        let mut whole = Captured::default();
        whole.take(b"\xff\xfe", 4);
        whole.trim_cut_character();
        assert_eq!(whole.kept, b"\xff\xfe", "binary output is left as it is");
    }
}
