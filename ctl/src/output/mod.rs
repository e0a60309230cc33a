//! How the output of a multi-host run reaches the user, one mode per
//! file: live lines prefixed with the host ([`prefixed`]), gathered blocks
//! of identical output ([`gathered`]), one JSON object per host ([`mod@json`]),
//! or files in a directory ([`outdir`]). This module holds what they share:
//! the [`Output`] interface the exec job writes to, the [`Describe`] trait
//! by which a job's result shows, the JSON record and the per-host note.
//!
//! Single-target exec does not come here; it streams raw bytes
//! (`crate::host::stream`). The terminal itself (progress line, writes
//! that must not tear it) is `crate::console`.

pub mod diff;
pub mod gathered;
pub mod json;
pub mod outdir;
pub mod prefixed;
pub mod spool;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine;
use rexec_protocol::ExitStatus;
use serde_json::{Map, Value, json};

use crate::console::Stream;
use crate::error::HostFailure;
use crate::outcome::HostResult;
use crate::plain;

/// Lines longer than this are cut into pieces of this size, each with its
/// prefix and a newline, rather than held in memory without bound.
pub const MAX_LINE: usize = 1 << 20;

/// Where the output of a multi-host run goes, for jobs whose result is a
/// `T` (the remote exit status for exec).
pub trait Output<T>: Send + Sync {
    /// A chunk of host `host`'s output, as it arrived.
    fn chunk(&self, host: usize, stream: Stream, data: &[u8]);
    /// Host `result.index` finished; nothing more comes from it.
    fn done(&self, result: &HostResult<T>);
    /// Every host finished.
    fn end(&self) {}
}

/// How a job's result shows in the output modes.
pub trait Describe {
    /// Sets `status` and the fields that go with it in the JSON record.
    fn describe(&self, record: &mut Map<String, Value>);
    /// What to tell the user on stderr about this result, if anything
    /// (a timeout, a signal); a plain exit needs no words.
    fn note(&self) -> Option<String> {
        None
    }
}

impl Describe for ExitStatus {
    fn describe(&self, record: &mut Map<String, Value>) {
        let (status, code, signal) = match *self {
            ExitStatus::Code(code) => ("exited", json!(code), Value::Null),
            ExitStatus::Signal { signal, .. } => ("killed", Value::Null, json!(signal)),
            ExitStatus::TimedOut => ("timed-out", Value::Null, Value::Null),
            _ => ("unknown", Value::Null, Value::Null),
        };
        record.insert("status".into(), json!(status));
        record.insert("exit_code".into(), code);
        record.insert("signal".into(), signal);
    }

    fn note(&self) -> Option<String> {
        match self {
            ExitStatus::TimedOut => Some("command timed out; its process group was killed".into()),
            ExitStatus::Signal { signal, .. } => Some(format!("command killed by signal {signal}")),
            _ => None,
        }
    }
}

/// The `exit_code` and `signal` of a record whose result is not a
/// command's end: null, so that every record has the same fields.
pub fn no_exit(record: &mut Map<String, Value>) {
    record.insert("exit_code".into(), Value::Null);
    record.insert("signal".into(), Value::Null);
}

/// The JSON record of one host: `target` (`user@host:port`), `host` (the
/// label used elsewhere in the run), `status`, `exit_code`, `signal`,
/// `error` (`{kind, message}` when ctl could not get a result, else null),
/// `duration_ms`, and what the result itself adds.
pub fn record<T: Describe>(label: &str, result: &HostResult<T>) -> Map<String, Value> {
    let mut record = Map::new();
    record.insert("target".into(), json!(result.target.to_string()));
    record.insert("host".into(), json!(label));
    match &result.outcome {
        Ok(value) => {
            value.describe(&mut record);
            record.insert("error".into(), Value::Null);
        }
        Err(failure) => {
            record.insert("status".into(), json!(failure.status()));
            no_exit(&mut record);
            record.insert(
                "error".into(),
                json!({"kind": failure.kind(), "message": plain::agent_text(&failure.to_string())}),
            );
        }
    }
    record.insert("duration_ms".into(), json!(millis(result.duration)));
    record
}

/// A duration in milliseconds with microsecond precision.
pub fn millis(duration: Duration) -> f64 {
    (duration.as_micros() as f64) / 1000.0
}

/// Adds `NAME` (text, or base64 when not UTF-8) and `NAME_base64` (which).
pub(super) fn put_bytes(record: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    let (text, base64) = match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            true,
        ),
    };
    record.insert(name.into(), json!(text));
    record.insert(format!("{name}_base64"), json!(base64));
}

/// The line ctl prints on stderr about a host whose end needs explaining
/// (an error, a timeout, a signal); `None` for a plain exit.
pub fn host_note<T: Describe>(label: &str, result: &HostResult<T>) -> Option<String> {
    match &result.outcome {
        Err(HostFailure::Interrupted) => None,
        Err(failure) => Some(format!(
            "{label}: {}",
            plain::agent_text(&failure.to_string())
        )),
        Ok(value) => value.note().map(|note| format!("{label}: {note}")),
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ConnectionError;
    use crate::target::Target;

    fn result(index: usize, outcome: Result<ExitStatus, HostFailure>) -> HostResult<ExitStatus> {
        HostResult {
            index,
            target: Target::parse("root@h:7").unwrap(),
            duration: Duration::from_micros(1500),
            outcome,
        }
    }

    #[test]
    fn records_keep_exit_255_and_ctl_errors_apart() {
        let remote = record("h", &result(0, Ok(ExitStatus::Code(255))));
        assert_eq!(remote["status"], "exited");
        assert_eq!(remote["exit_code"], 255);
        assert_eq!(remote["error"], Value::Null);
        assert_eq!(remote["target"], "root@h:7");
        assert_eq!(remote["duration_ms"], 1.5);
        let failure = HostFailure::Ctl(crate::error::CtlError::Connection(
            ConnectionError::ConnectTimeout(Duration::from_secs(1)),
        ));
        let unreachable = record("h", &result(0, Err(failure)));
        assert_eq!(unreachable["status"], "error");
        assert_eq!(unreachable["exit_code"], Value::Null);
        assert_eq!(unreachable["error"]["kind"], "connect-timeout");
    }

    #[test]
    fn bytes_are_text_or_flagged_base64() {
        let mut record = Map::new();
        put_bytes(&mut record, "stdout", b"hi\n");
        put_bytes(&mut record, "stderr", &[0xff, 0x00]);
        assert_eq!(record["stdout"], "hi\n");
        assert_eq!(record["stdout_base64"], false);
        assert_eq!(record["stderr"], "/wA=");
        assert_eq!(record["stderr_base64"], true);
    }
}
