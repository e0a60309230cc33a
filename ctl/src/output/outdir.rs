//! `-o/--out-dir DIR`: each host's output in files of its own, and a
//! summary of every host.

use std::fs::File;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Describe, Output, host_note, lock, record, slot};
use crate::console::{Console, Stream};
use crate::outcome::{HostResult, Labels};
use crate::plain;

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

/// Whether `label` names a file in the directory itself: one plain path
/// component, not empty, `.`, `..` or a path through other directories.
fn is_plain_file_name(label: &str) -> bool {
    let mut components = Path::new(label).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(name)), None) if name == label
    ) && !label.contains('\0')
}

/// Creates or empties the regular file `path`, never through a link and
/// never a FIFO or device put there: `-o DIR` may be a directory others
/// can write in, and ctl often runs as root, so a link planted at
/// `DIR/summary.jsonl` must not make it overwrite the file it points to.
/// The reason in plain words when it cannot.
fn create(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        // Not O_NONBLOCK's effect on a regular file: none. A FIFO without
        // a reader fails at once instead of holding ctl.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => "it is a link, which ctl does not write through".to_owned(),
            Some(nix::libc::ENXIO) => "it is not a regular file".to_owned(),
            _ => plain::io_error(&e),
        })?;
    match file.metadata() {
        Ok(meta) if meta.is_file() => Ok(file),
        Ok(_) => Err("it is not a regular file".to_owned()),
        Err(e) => Err(plain::io_error(&e)),
    }
}

impl OutDir {
    /// Files in `dir` (which must exist) for hosts named `labels`.
    ///
    /// # Errors
    /// A label that is not one plain file name: its files would land
    /// outside `dir` (`../x`) or be no file at all.
    pub fn new(console: Arc<Console>, labels: Labels, dir: PathBuf) -> Result<OutDir, String> {
        if let Some(bad) = labels.iter().find(|l| !is_plain_file_name(l)) {
            return Err(format!(
                "cannot write {bad:?}'s output in {}: the name is not one plain file name",
                dir.display()
            ));
        }
        Ok(OutDir {
            console,
            files: labels.iter().map(|_| Mutex::default()).collect(),
            dir,
            labels,
            records: Mutex::default(),
        })
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
            match create(&path) {
                Ok(file) => *slot = Some(file),
                Err(why) => self
                    .console
                    .lose(format!("cannot create {}: {why}", path.display())),
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
        lock(&self.records).push((host, super::json::line(record(&self.labels[host], result))));
    }

    fn end(&self) {
        let mut records = std::mem::take(&mut *lock(&self.records));
        records.sort();
        let text: String = records.into_iter().map(|(_, line)| line).collect();
        let path = self.dir.join("summary.jsonl");
        let written = create(&path).and_then(|mut file| {
            file.write_all(text.as_bytes())
                .map_err(|e| plain::io_error(&e))
        });
        if let Err(why) = written {
            self.console
                .lose(format!("cannot write {}: {why}", path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels carry user names, which once could hold '/': `-o DIR` then
    /// wrote `DIR/../../esc@h:7722.out`.
    #[test]
    fn a_label_that_is_not_one_plain_file_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../../esc@h:7722", "a/b", ".", "..", "", "/abs", "a\0b"] {
            let labels: Labels = vec!["ok".to_owned(), bad.to_owned()].into();
            let made = OutDir::new(Arc::new(Console::quiet()), labels, dir.path().into());
            assert!(made.is_err(), "{bad:?}");
        }
        for good in ["labpc07", "root@h:7722", "[::1]:7722", "..x", "a..b"] {
            let labels: Labels = vec![good.to_owned()].into();
            let made = OutDir::new(Arc::new(Console::quiet()), labels, dir.path().into());
            assert!(made.is_ok(), "{good:?}");
        }
    }
}
