//! How the output of many hosts reaches the user: live lines prefixed with
//! the host, gathered blocks of identical output, one JSON object per host,
//! or files in a directory. Also the terminal itself ([`Console`]): the
//! progress line and the writes that must not tear it.
//!
//! Single-target exec does not come here; it streams raw bytes
//! (`crate::exec`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rexec_protocol::ExitStatus;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::fanout::{HostFailure, HostResult};
use crate::nodeset;
use crate::plain;

/// Lines longer than this are cut into pieces of this size, each with its
/// prefix and a newline, rather than held in memory without bound.
pub const MAX_LINE: usize = 1 << 20;

/// Which of a command's outputs a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The hosts' short names, shared by every part of a run.
pub type Labels = Arc<[String]>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Our stdout and stderr during a multi-host run, and the progress line
/// (shown only when stderr is a terminal, never on a pipe).
#[derive(Debug)]
pub struct Console {
    progress: Option<ProgressBar>,
    running: AtomicUsize,
    failed: AtomicUsize,
    broken_pipe: AtomicBool,
    /// The first output of ours that could not be written (stdout on a
    /// full disk, a file of `-o`): the run then fails, whatever the hosts did.
    lost: Mutex<Option<String>>,
    cancel: CancellationToken,
}

impl Console {
    /// A console for `total` hosts; `cancel` is cancelled when our stdout's
    /// reader goes away.
    pub fn new(total: usize, cancel: CancellationToken) -> Console {
        let progress = io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total as u64),
                ProgressDrawTarget::stderr_with_hz(10),
            );
            if let Ok(style) =
                ProgressStyle::with_template("{elapsed} [{bar:30}] {pos}/{len} done, {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Console {
            progress,
            running: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            broken_pipe: AtomicBool::new(false),
            lost: Mutex::new(None),
            cancel,
        }
    }

    /// A console without a progress line, for tests.
    pub fn quiet() -> Console {
        Console {
            progress: None,
            running: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            broken_pipe: AtomicBool::new(false),
            lost: Mutex::new(None),
            cancel: CancellationToken::new(),
        }
    }

    /// A host's job started.
    pub fn host_started(&self) {
        self.running.fetch_add(1, Ordering::Relaxed);
        self.update(false);
    }

    /// A host's job ended.
    pub fn host_finished(&self, failed: bool) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.update(true);
    }

    fn update(&self, finished: bool) {
        if let Some(bar) = &self.progress {
            if finished {
                bar.inc(1);
            }
            bar.set_message(format!(
                "{} running, {} failed",
                self.running.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed)
            ));
        }
    }

    /// Writes `bytes` to our stdout or stderr in one piece, around the
    /// progress line. A stdout that cannot take them (closed by its reader,
    /// or on a full disk) cancels the run.
    pub fn write(&self, stream: Stream, bytes: &[u8]) {
        if bytes.is_empty() || self.broken_pipe() || self.output_lost().is_some() {
            return;
        }
        let write = || match stream {
            Stream::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes).and_then(|()| out.flush())
            }
            Stream::Stderr => {
                let mut err = io::stderr().lock();
                err.write_all(bytes).and_then(|()| err.flush())
            }
        };
        let result = match &self.progress {
            Some(bar) => bar.suspend(write),
            None => write(),
        };
        // Nowhere to report a failing stderr; a failing stdout ends the run.
        match result {
            Err(e) if stream == Stream::Stdout && e.kind() == io::ErrorKind::BrokenPipe => {
                self.broken_pipe.store(true, Ordering::Relaxed);
                self.cancel.cancel();
            }
            Err(e) if stream == Stream::Stdout => {
                self.lose(format!("cannot write to stdout: {}", plain::io_error(&e)));
            }
            _ => {}
        }
    }

    /// Some of our output could not be written (`what` says which and
    /// why): the run stops, and ends in failure with this one line.
    pub fn lose(&self, what: String) {
        lock(&self.lost).get_or_insert(what);
        self.cancel.cancel();
    }

    /// What of our output could not be written, if anything.
    pub fn output_lost(&self) -> Option<String> {
        lock(&self.lost).clone()
    }

    /// One line of ctl's own on stderr.
    pub fn note(&self, line: &str) {
        self.write(Stream::Stderr, format!("ctl: {line}\n").as_bytes());
    }

    /// Whether our stdout was closed by its reader.
    pub fn broken_pipe(&self) -> bool {
        self.broken_pipe.load(Ordering::Relaxed)
    }

    /// Removes the progress line.
    pub fn finish(&self) {
        if let Some(bar) = &self.progress {
            bar.finish_and_clear();
        }
    }
}

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
            let status = match failure {
                HostFailure::Deadline(_) => "timed-out",
                HostFailure::Interrupted => "interrupted",
                HostFailure::Ctl(_) => "error",
            };
            record.insert("status".into(), json!(status));
            record.insert("exit_code".into(), Value::Null);
            record.insert("signal".into(), Value::Null);
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
fn put_bytes(record: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
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

/// Live lines, each prefixed with `host: `; stdout to stdout and stderr to
/// stderr. A line is written in one piece once complete, so lines of
/// different hosts never mix; a last line without a newline is written
/// (with a newline added) when its host ends.
pub struct Prefixed {
    console: Arc<Console>,
    labels: Labels,
    partial: Vec<Mutex<[Pending; 2]>>,
    /// Only stderr is prefixed here; stdout goes elsewhere (gather mode).
    stderr_only: bool,
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
        }
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
                out.extend_from_slice(self.labels[host].as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(piece);
                if !piece.ends_with(b"\n") {
                    out.push(b'\n');
                    *cut = true;
                }
            }
        }
    }
}

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl<T: Describe> Output<T> for Prefixed {
    fn chunk(&self, host: usize, stream: Stream, data: &[u8]) {
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

    fn done(&self, result: &HostResult<T>) {
        let mut partial = lock(&self.partial[result.index]);
        for stream in [Stream::Stdout, Stream::Stderr] {
            let Pending {
                line: rest,
                mut cut,
            } = std::mem::take(&mut partial[slot(stream)]);
            if !rest.is_empty() {
                let mut out = Vec::new();
                self.prefixed(result.index, &rest, &mut cut, &mut out);
                self.console.write(stream, &out);
            }
        }
        if !self.stderr_only
            && let Some(note) = host_note(&self.labels[result.index], result)
        {
            self.console.note(&note);
        }
    }
}

/// `-b/--gather`: stdout kept until the end, then hosts with identical
/// output printed once under a header naming them as a node set, like
/// `clush -b` and `dshbak -c`. Stderr stays live and prefixed.
pub struct Gathered {
    console: Arc<Console>,
    labels: Labels,
    stdout: Vec<Mutex<Vec<u8>>>,
    stderr: Prefixed,
}

impl Gathered {
    /// Gathered output for hosts named `labels`.
    pub fn new(console: Arc<Console>, labels: Labels) -> Gathered {
        let mut stderr = Prefixed::new(console.clone(), labels.clone());
        stderr.stderr_only = true;
        Gathered {
            console,
            stdout: labels.iter().map(|_| Mutex::default()).collect(),
            labels,
            stderr,
        }
    }
}

impl<T: Describe> Output<T> for Gathered {
    fn chunk(&self, host: usize, stream: Stream, data: &[u8]) {
        match stream {
            Stream::Stdout => lock(&self.stdout[host]).extend_from_slice(data),
            Stream::Stderr => Output::<T>::chunk(&self.stderr, host, stream, data),
        }
    }

    fn done(&self, result: &HostResult<T>) {
        self.stderr.done(result);
        if let Some(note) = host_note(&self.labels[result.index], result) {
            self.console.note(&note);
        }
    }

    fn end(&self) {
        let mut groups: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
        let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
        for (host, stdout) in self.stdout.iter().enumerate() {
            let output = std::mem::take(&mut *lock(stdout));
            if output.is_empty() {
                continue;
            }
            match seen.get(&output) {
                Some(&group) => groups[group].1.push(host),
                None => {
                    seen.insert(output.clone(), groups.len());
                    groups.push((output, vec![host]));
                }
            }
        }
        for (output, hosts) in groups {
            let names = nodeset::fold(hosts.iter().map(|&h| self.labels[h].as_str()));
            let rule = "-".repeat(15);
            let mut block = format!("{rule}\n{names} ({})\n{rule}\n", hosts.len()).into_bytes();
            block.extend_from_slice(&output);
            if !output.ends_with(b"\n") {
                block.push(b'\n');
            }
            self.console.write(Stream::Stdout, &block);
        }
    }
}

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
        let mut line = Value::Object(record).to_string();
        line.push('\n');
        self.console.write(Stream::Stdout, line.as_bytes());
    }
}

/// `-o/--out-dir DIR`: each host's stdout and stderr in `DIR/HOST.out` and
/// `DIR/HOST.err` (both always created), and `DIR/summary.jsonl` with the
/// `--json` record of every host minus its output.
pub struct OutDir {
    console: Arc<Console>,
    labels: Labels,
    dir: PathBuf,
    files: Vec<Mutex<[Option<File>; 2]>>,
    records: Mutex<Vec<(usize, String)>>,
}

impl OutDir {
    /// Files in `dir` (which must exist) for hosts named `labels`.
    pub fn new(console: Arc<Console>, labels: Labels, dir: PathBuf) -> OutDir {
        OutDir {
            console,
            files: labels.iter().map(|_| Mutex::default()).collect(),
            dir,
            labels,
            records: Mutex::default(),
        }
    }

    fn path(&self, host: usize, stream: Stream) -> PathBuf {
        let extension = match stream {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        };
        self.dir.join(format!("{}.{extension}", self.labels[host]))
    }

    fn file<'f>(
        &self,
        host: usize,
        stream: Stream,
        files: &'f mut [Option<File>; 2],
    ) -> Option<&'f mut File> {
        let slot = &mut files[slot(stream)];
        if slot.is_none() {
            let path = self.path(host, stream);
            match File::create(&path) {
                Ok(file) => *slot = Some(file),
                Err(e) => self.console.lose(format!(
                    "cannot create {}: {}",
                    path.display(),
                    plain::io_error(&e)
                )),
            }
        }
        slot.as_mut()
    }
}

impl<T: Describe> Output<T> for OutDir {
    fn chunk(&self, host: usize, stream: Stream, data: &[u8]) {
        if self.console.output_lost().is_some() {
            return;
        }
        let mut files = lock(&self.files[host]);
        if let Some(file) = self.file(host, stream, &mut files)
            && let Err(e) = file.write_all(data)
        {
            let path = self.path(host, stream);
            self.console.lose(format!(
                "cannot write {}: {}",
                path.display(),
                plain::io_error(&e)
            ));
        }
    }

    fn done(&self, result: &HostResult<T>) {
        let host = result.index;
        {
            let mut files = lock(&self.files[host]);
            for stream in [Stream::Stdout, Stream::Stderr] {
                self.file(host, stream, &mut files);
            }
            // Closing the files now keeps descriptors bounded by the fan-out.
            *files = [None, None];
        }
        if let Some(note) = host_note(&self.labels[host], result) {
            self.console.note(&note);
        }
        let line = Value::Object(record(&self.labels[host], result)).to_string();
        lock(&self.records).push((host, line));
    }

    fn end(&self) {
        let mut records = std::mem::take(&mut *lock(&self.records));
        records.sort();
        let text: String = records.into_iter().map(|(_, line)| line + "\n").collect();
        let path = self.dir.join("summary.jsonl");
        if let Err(e) = std::fs::write(&path, text) {
            self.console.lose(format!(
                "cannot write {}: {}",
                path.display(),
                plain::io_error(&e)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let failure = HostFailure::Ctl(crate::error::CtlError::ConnectTimeout(
            Duration::from_secs(1),
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
