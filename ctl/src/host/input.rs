//! `ctl exec -i` with several targets: our stdin read once and the same
//! bytes fed to every host, each at its own pace.
//!
//! We spool rather than pace every host by the slowest: with `--fanout`
//! smaller than the number of hosts, the hosts still waiting for a slot
//! have not started reading, so pacing would hold the whole input anyway,
//! and a command that never reads its stdin would stall all the others.
//! The first [`INPUT_MEMORY`] bytes stay in memory and the rest goes to an
//! unlinked temporary file (gone with ctl, however it ends), so memory
//! stays bounded whatever the size of the input; each host keeps only its
//! own position. A host that fails or ends early just stops reading.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use rexec_protocol::ClientMessage;
use tokio::sync::{mpsc, watch};

use crate::console::Console;
use crate::plain;

/// How much of our stdin is kept in memory; the rest goes to a file.
pub const INPUT_MEMORY: usize = 4 << 20;

/// How much of the input one message carries.
const CHUNK: usize = 64 * 1024;

/// Our stdin, read once by a thread of its own and kept for every host.
pub struct SharedInput {
    memory: RwLock<Vec<u8>>,
    file: File,
    /// How much has been read so far, and whether that is all of it.
    read: watch::Sender<(u64, bool)>,
}

impl SharedInput {
    /// Starts reading our stdin. A read or spool error loses the run on
    /// `console`: a command fed part of a script would run part of it.
    ///
    /// # Errors
    /// The temporary file cannot be made.
    pub fn from_stdin(console: Arc<Console>) -> io::Result<Arc<SharedInput>> {
        let input = Arc::new(SharedInput {
            memory: RwLock::default(),
            file: tempfile::tempfile()?,
            read: watch::Sender::new((0, false)),
        });
        let writer = input.clone();
        std::thread::spawn(move || {
            if let Err(e) = writer.fill(io::stdin().lock()) {
                console.lose(format!(
                    "cannot pass our stdin on to the hosts: {}",
                    plain::io_error(&e)
                ));
            }
            writer.read.send_modify(|(_, all)| *all = true);
        });
        Ok(input)
    }

    /// Reads `source` to its end into the spool.
    fn fill(&self, mut source: impl Read) -> io::Result<()> {
        let mut buf = vec![0; CHUNK];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let len = self.read.borrow().0;
            let mut data = &buf[..n];
            {
                let mut memory = self
                    .memory
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let room = INPUT_MEMORY - memory.len();
                let now = room.min(data.len());
                memory.extend_from_slice(&data[..now]);
                data = &data[now..];
            }
            if !data.is_empty() {
                let at = (len + (n - data.len()) as u64).saturating_sub(INPUT_MEMORY as u64);
                self.file.write_all_at(data, at)?;
            }
            self.read.send_modify(|(read, _)| *read += n as u64);
        }
    }

    /// Up to [`CHUNK`] bytes from `offset`, which must be below what was read.
    fn chunk_at(&self, offset: u64, read: u64) -> io::Result<Bytes> {
        let want = usize::try_from((read - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
        if offset < INPUT_MEMORY as u64 {
            let memory = self
                .memory
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let start = offset as usize;
            let end = memory.len().min(start + want);
            return Ok(Bytes::copy_from_slice(&memory[start..end]));
        }
        let mut buf = vec![0; want];
        // A read of what was just written: the page cache's, not a
        // disk's, so it may run on the runtime's thread.
        let n = self.file.read_at(&mut buf, offset - INPUT_MEMORY as u64)?;
        buf.truncate(n);
        Ok(Bytes::from(buf))
    }

    /// Feeds the whole input, then its end, to one host through `tx`.
    /// Returns when all is sent or the host no longer takes it.
    pub async fn feed(self: Arc<SharedInput>, tx: mpsc::Sender<ClientMessage>) {
        let mut offset = 0;
        let mut read = self.read.subscribe();
        loop {
            let (len, all) = match read.wait_for(|&(len, all)| len > offset || all).await {
                Ok(state) => *state,
                Err(_) => return,
            };
            if len > offset {
                let Ok(chunk) = self.chunk_at(offset, len) else {
                    // The spool's file failed under us: this host gets no end
                    // of input, and the run is lost by the reading side.
                    return;
                };
                if chunk.is_empty() {
                    return;
                }
                offset += chunk.len() as u64;
                if tx.send(ClientMessage::Stdin(chunk)).await.is_err() {
                    return;
                }
            } else if all {
                let _ = tx.send(ClientMessage::StdinEof).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_reader_gets_the_whole_input_past_the_memory_part() {
        let input = Arc::new(SharedInput {
            memory: RwLock::default(),
            file: tempfile::tempfile().unwrap(),
            read: watch::Sender::new((0, false)),
        });
        let data: Vec<u8> = (0..INPUT_MEMORY + 300_000)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (tx, mut rx) = mpsc::channel(4);
            tokio::spawn(input.clone().feed(tx));
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    match rx.recv().await {
                        Some(ClientMessage::Stdin(chunk)) => got.extend_from_slice(&chunk),
                        Some(ClientMessage::StdinEof) => return (got, true),
                        _ => return (got, false),
                    }
                }
            }));
        }
        let writer = input.clone();
        let source = data.clone();
        tokio::task::spawn_blocking(move || {
            writer.fill(&source[..]).unwrap();
            writer.read.send_modify(|(_, all)| *all = true);
        })
        .await
        .unwrap();
        for reader in readers {
            let (got, ended) = reader.await.unwrap();
            assert!(ended, "the end of input came last");
            assert!(got == data, "the same bytes, in order");
        }
    }
}
