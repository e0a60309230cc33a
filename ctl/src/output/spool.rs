//! One host's output kept until the end of a run, in bounded memory: the
//! first [`SPOOL_MEMORY`] bytes in memory, the rest in a temporary file,
//! with a hash of the whole so that gathering compares outputs without
//! reading them back.
//!
//! The gathering modes (`-b`, `-B`, `-L`, `--diff`) keep every host's
//! output until the last host ends; holding it in memory made forty hosts
//! with a big log take the workstation down. A file costs disk instead,
//! and the page cache decides what stays in memory.

use std::fs::File;
use std::io::{self, Read, Write};

use tempfile::TempPath;

/// How much of one stream of one host is kept in memory; the rest goes
/// to a temporary file.
pub const SPOOL_MEMORY: usize = 1 << 20;

/// How much is read back from a spool at once.
const READ_CHUNK: usize = 64 * 1024;

/// What identifies an output for gathering: its length and BLAKE3 hash.
pub type Digest = (u64, [u8; 32]);

/// One host's output (one stream, or both merged), as it arrived.
#[derive(Default)]
pub struct Spool {
    memory: Vec<u8>,
    /// Open while the host writes; closed at its end, so that descriptors
    /// stay bounded by the fan-out, not by the number of hosts.
    file: Option<File>,
    /// The temporary file, removed when the spool is dropped.
    path: Option<TempPath>,
    len: u64,
    hash: blake3::Hasher,
    last: Option<u8>,
}

impl Spool {
    /// Appends `data`.
    ///
    /// # Errors
    /// The temporary file cannot be made or written.
    pub fn push(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.hash.update(data);
        self.len += data.len() as u64;
        self.last = data.last().copied();
        let room = SPOOL_MEMORY - self.memory.len();
        let (now, rest) = if self.path.is_none() {
            data.split_at(room.min(data.len()))
        } else {
            (&[][..], data)
        };
        self.memory.extend_from_slice(now);
        if rest.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            let (file, path) = tempfile::NamedTempFile::new()?.into_parts();
            self.file = Some(file);
            self.path = Some(path);
        }
        match &mut self.file {
            Some(file) => file.write_all(rest),
            None => Err(io::Error::other("the spool was closed")),
        }
    }

    /// The host ended: nothing more comes, and the file is closed.
    pub fn close(&mut self) {
        self.file = None;
    }

    /// Bytes kept.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the output ends with a newline (or is empty).
    pub fn ends_in_newline(&self) -> bool {
        self.last.is_none_or(|b| b == b'\n')
    }

    /// Length and hash of the whole output.
    pub fn digest(&self) -> Digest {
        (self.len, *self.hash.finalize().as_bytes())
    }

    /// Hands the output to `each` in pieces of at most 64 KiB, in order,
    /// while `each` returns true.
    ///
    /// # Errors
    /// The temporary file cannot be read back.
    pub fn replay(&self, mut each: impl FnMut(&[u8]) -> bool) -> io::Result<()> {
        for piece in self.memory.chunks(READ_CHUNK) {
            if !each(piece) {
                return Ok(());
            }
        }
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut file = File::open(path)?;
        let mut buf = vec![0; READ_CHUNK];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    if !each(&buf[..n]) {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The whole output, when it is at most `limit` bytes.
    ///
    /// # Errors
    /// The temporary file cannot be read back.
    pub fn read_all(&self, limit: u64) -> io::Result<Option<Vec<u8>>> {
        if self.len > limit {
            return Ok(None);
        }
        let mut all = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        self.replay(|piece| {
            all.extend_from_slice(piece);
            true
        })?;
        Ok(Some(all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replayed(spool: &Spool) -> Vec<u8> {
        let mut out = Vec::new();
        spool
            .replay(|piece| {
                out.extend_from_slice(piece);
                true
            })
            .unwrap();
        out
    }

    #[test]
    fn output_past_the_memory_part_goes_to_a_file_and_comes_back_whole() {
        let mut spool = Spool::default();
        let mut expected = Vec::new();
        for i in 0..40u32 {
            let chunk: Vec<u8> = (0..70_000u32).map(|j| (i * 7 + j) as u8).collect();
            spool.push(&chunk).unwrap();
            expected.extend_from_slice(&chunk);
        }
        spool.close();
        assert!(spool.memory.len() <= SPOOL_MEMORY);
        assert!(spool.path.is_some(), "spilled to a file");
        assert_eq!(replayed(&spool), expected);
        assert_eq!(spool.len(), expected.len() as u64);
        assert_eq!(
            spool.digest().1,
            *blake3::hash(&expected).as_bytes(),
            "the hash covers the whole output"
        );
        assert_eq!(spool.read_all(10).unwrap(), None);
        let path = spool.path.as_ref().unwrap().to_path_buf();
        drop(spool);
        assert!(!path.exists(), "the file goes with the spool");
    }

    #[test]
    fn small_output_stays_in_memory() {
        let mut spool = Spool::default();
        spool.push(b"one\n").unwrap();
        spool.push(b"two").unwrap();
        assert!(spool.path.is_none());
        assert!(!spool.ends_in_newline());
        assert_eq!(spool.read_all(100).unwrap().unwrap(), b"one\ntwo");
        assert!(Spool::default().ends_in_newline());
    }
}
