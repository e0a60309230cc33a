//! `--json`: one JSON object per host per line, output included.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::{Describe, Output, lock, put_bytes, record, slot};
use crate::console::{Console, Stream};
use crate::outcome::{HostResult, Labels};

/// `--json`: one JSON object per host per line on stdout, written when the
/// host finishes, with its stdout and stderr in it.
pub struct JsonLines {
    console: Arc<Console>,
    labels: Labels,
    captured: Vec<Mutex<[Vec<u8>; 2]>>,
}

impl JsonLines {
    /// JSON output for hosts named `labels`.
    pub fn new(console: Arc<Console>, labels: Labels) -> JsonLines {
        JsonLines {
            console,
            captured: labels.iter().map(|_| Mutex::default()).collect(),
            labels,
        }
    }
}

impl<T: Describe> Output<T> for JsonLines {
    fn chunk(&self, host: usize, stream: Stream, data: &[u8]) {
        lock(&self.captured[host])[slot(stream)].extend_from_slice(data);
    }

    fn done(&self, result: &HostResult<T>) {
        let [stdout, stderr] = std::mem::take(&mut *lock(&self.captured[result.index]));
        let mut record = record(&self.labels[result.index], result);
        put_bytes(&mut record, "stdout", &stdout);
        put_bytes(&mut record, "stderr", &stderr);
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
