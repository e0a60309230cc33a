//! A job's output stream on disk, capped: the bytes go into segment files
//! named `NAME.OFFSET` (the offset of their first byte in the stream), each
//! an eighth of the cap; once the stream has more than the cap, its oldest
//! segments are removed whole. So between seven eighths of the cap and the
//! cap itself are kept, the first kept byte's offset is the count of bytes
//! dropped, and a reader at any offset finds its place by name alone.
//!
//! A write the file system refuses (a full disk) ends the recording of that
//! stream but not the counting: the command goes on, and the offset where
//! recording stopped is kept for the job's state to tell.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How many segments a full stream holds.
const SEGMENTS: u64 = 8;

/// Writes one stream of a job's output into its directory.
#[derive(Debug)]
pub struct SegmentWriter {
    dir: PathBuf,
    name: &'static str,
    cap: u64,
    segment: u64,
    /// Bytes the command wrote, kept or not.
    pub total: u64,
    starts: VecDeque<u64>,
    current: Option<File>,
    current_len: u64,
    /// Where recording stopped, if the file system refused a write.
    pub lost_at: Option<u64>,
}

impl SegmentWriter {
    /// A writer of stream `name` (`stdout`, `stderr`) into `dir`, keeping
    /// at most `cap` bytes (at least one).
    pub fn new(dir: &Path, name: &'static str, cap: u64) -> SegmentWriter {
        let cap = cap.max(1);
        SegmentWriter {
            dir: dir.to_owned(),
            name,
            cap,
            segment: (cap / SEGMENTS).max(1),
            total: 0,
            starts: VecDeque::new(),
            current: None,
            current_len: 0,
            lost_at: None,
        }
    }

    /// Appends `data`.
    pub fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.lost_at.is_some() {
                self.total += data.len() as u64;
                return;
            }
            if (self.current.is_none() || self.current_len >= self.segment)
                && self.open_segment().is_err()
            {
                self.lost_at = Some(self.total);
                continue;
            }
            let room = (self.segment - self.current_len).min(data.len() as u64) as usize;
            let Some(file) = self.current.as_mut() else {
                self.lost_at = Some(self.total);
                continue;
            };
            match file.write(&data[..room]) {
                Ok(0) | Err(_) => {
                    self.lost_at = Some(self.total);
                    self.current = None;
                }
                Ok(n) => {
                    self.total += n as u64;
                    self.current_len += n as u64;
                    data = &data[n..];
                }
            }
        }
    }

    fn open_segment(&mut self) -> io::Result<()> {
        let start = self.total;
        // Room for the new segment within the cap: the oldest go first.
        while !self.starts.is_empty()
            && (start + self.segment).saturating_sub(self.starts[0]) > self.cap
        {
            if let Some(oldest) = self.starts.pop_front() {
                let _ = std::fs::remove_file(self.dir.join(segment_name(self.name, oldest)));
            }
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.dir.join(segment_name(self.name, start)))?;
        self.starts.push_back(start);
        self.current = Some(file);
        self.current_len = 0;
        Ok(())
    }

    /// Bytes dropped from the start of the stream for the cap.
    pub fn dropped(&self) -> u64 {
        self.starts.front().copied().unwrap_or(self.total)
    }
}

fn segment_name(name: &str, start: u64) -> String {
    format!("{name}.{start:020}")
}

/// The segments of stream `name` in `dir`: (offset, path), in order.
fn segments(dir: &Path, name: &str) -> Vec<(u64, PathBuf)> {
    let prefix = format!("{name}.");
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name();
            let digits = file.to_str()?.strip_prefix(&prefix)?;
            let start = (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse().ok())
                .flatten()?;
            Some((start, entry.path()))
        })
        .collect();
    found.sort();
    found
}

/// What is on disk of one stream: bytes dropped before the first kept
/// one, and the offset just past the last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extent {
    /// Offset of the first byte kept.
    pub dropped: u64,
    /// Offset just past the last byte kept.
    pub end: u64,
}

/// The extent of stream `name` in `dir`.
pub fn extent(dir: &Path, name: &str) -> Extent {
    let found = segments(dir, name);
    let (Some((first, _)), Some((last, path))) = (found.first(), found.last()) else {
        return Extent::default();
    };
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    Extent {
        dropped: *first,
        end: last + len,
    }
}

/// Up to `max` bytes of stream `name` from offset `at`; the offset they
/// really start at is returned with them: later than `at` when the bytes
/// there were dropped meanwhile. No bytes: nothing past `at` yet.
///
/// # Errors
/// A segment that cannot be read.
pub fn read_at(dir: &Path, name: &str, at: u64, max: usize) -> io::Result<(u64, Vec<u8>)> {
    let found = segments(dir, name);
    for (index, (start, path)) in found.iter().enumerate() {
        let next = found.get(index + 1).map(|(s, _)| *s);
        if next.is_some_and(|next| next <= at) {
            continue;
        }
        let from = at.max(*start);
        let mut file = match File::open(path) {
            Ok(file) => file,
            // Dropped between the listing and now: the next one has it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(from - start))?;
        let mut buf = Vec::with_capacity(max.min(1 << 20));
        file.take(max as u64).read_to_end(&mut buf)?;
        if buf.is_empty() && next.is_some() {
            continue;
        }
        return Ok((from, buf));
    }
    Ok((at, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everything(dir: &Path, name: &str) -> (u64, Vec<u8>) {
        let mut at = extent(dir, name).dropped;
        let first = at;
        let mut all = Vec::new();
        loop {
            let (from, bytes) = read_at(dir, name, at, 7).unwrap();
            assert_eq!(from, at);
            if bytes.is_empty() {
                return (first, all);
            }
            at += bytes.len() as u64;
            all.extend(bytes);
        }
    }

    /// `len` bytes counting up modulo `modulus`: a prime, so that a piece
    /// read from the wrong place does not match by chance.
    fn pattern(len: u32, modulus: u32) -> Vec<u8> {
        (0..len).map(|i| (i % modulus) as u8).collect()
    }

    /// A writer capped at 800 bytes, given `data` in pieces of `piece`.
    fn written(dir: &Path, name: &'static str, data: &[u8], piece: usize) -> SegmentWriter {
        let mut w = SegmentWriter::new(dir, name, 800);
        for piece in data.chunks(piece) {
            w.write(piece);
        }
        w
    }

    #[test]
    fn a_stream_under_its_cap_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(700, 251);
        let w = written(dir.path(), "stdout", &data, 33);
        assert_eq!(w.dropped(), 0);
        assert_eq!(everything(dir.path(), "stdout"), (0, data));
        assert_eq!(
            extent(dir.path(), "stdout"),
            Extent {
                dropped: 0,
                end: 700
            }
        );
    }

    #[test]
    fn past_the_cap_the_oldest_bytes_go_and_the_rest_is_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(5000, 253);
        let w = written(dir.path(), "stderr", &data, 61);
        let (dropped, kept) = everything(dir.path(), "stderr");
        assert_eq!(dropped, w.dropped());
        assert!(
            kept.len() as u64 <= 800 && kept.len() as u64 > 700,
            "{}",
            kept.len()
        );
        assert_eq!(dropped as usize + kept.len(), data.len());
        assert_eq!(&data[dropped as usize..], &kept[..]);
        // A reader left behind the drop skips to what is kept.
        let (from, _) = read_at(dir.path(), "stderr", 3, 10).unwrap();
        assert_eq!(from, dropped);
    }

    #[test]
    fn a_refused_write_stops_recording_and_keeps_counting() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::new(&dir.path().join("gone"), "stdout", 800);
        w.write(b"hello");
        assert_eq!((w.lost_at, w.total), (Some(0), 5));
    }
}
