//! `ctl cp`: push local files or trees to many hosts, or pull a remote path
//! from many hosts, each over its own authenticated connection.
//!
//! A remote operand is `TARGETS:/ABSOLUTE/PATH`: it splits at the first
//! `:/`, so `h:7723:/tmp`, `[::1]:7722:/tmp` and `node[1-4]:/srv` all work;
//! a local path that contains `:/` is written `./like:/this`. Files move as
//! protocol entries (`rexec_protocol::copy`), one chunk in memory at a
//! time; the receiving side writes each file under a temporary name and
//! renames it into place only once its checksum matched.
//!
//! The jobs here are one host's work; `lib.rs` runs them through the
//! fan-out engine like every multi-host command.

use std::path::{Path, PathBuf};

use futures_util::{SinkExt, StreamExt};
use rexec_protocol::copy::{CopyItem, Placement, TreeReader, TreeWriter};
use rexec_protocol::{AgentMessage, ClientMessage, FrameError, PullRequest, PushRequest};
use serde_json::{Map, Value, json};

use crate::connect::Client;
use crate::error::CtlError;
use crate::fanout::{self, Finished};
use crate::output::Describe;
use crate::target::Target;

/// A `TARGETS:PATH` operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOperand {
    /// The target list.
    pub targets: String,
    /// The absolute remote path.
    pub path: String,
}

/// Splits `TARGETS:/PATH`, or `None` for a local path.
pub fn remote_operand(arg: &str) -> Option<RemoteOperand> {
    if arg.starts_with('/') || arg.starts_with("./") || arg.starts_with("../") {
        return None;
    }
    let at = arg.find(":/")?;
    let (targets, path) = (&arg[..at], &arg[at + 1..]);
    (!targets.is_empty()).then(|| RemoteOperand {
        targets: targets.to_owned(),
        path: path.to_owned(),
    })
}

/// How to copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    /// Directories and everything in them.
    pub recursive: bool,
    /// Keep numeric owners (`-p`; the writing side must be root).
    pub preserve_owner: bool,
}

/// What a host's copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Entries written (files, directories, links).
    pub entries: u64,
    /// Bytes of file data.
    pub bytes: u64,
    /// SHA-256 of the data, when the copy was one regular file.
    pub sha256: Option<String>,
}

impl Finished for Copied {
    fn exit_code(&self) -> u8 {
        0
    }

    fn failure(&self) -> Option<String> {
        None
    }
}

impl Describe for Copied {
    fn describe(&self, record: &mut Map<String, Value>) {
        record.insert("status".into(), json!("copied"));
        record.insert("exit_code".into(), Value::Null);
        record.insert("signal".into(), Value::Null);
        record.insert("entries".into(), json!(self.entries));
        record.insert("bytes".into(), json!(self.bytes));
        record.insert("sha256".into(), json!(self.sha256));
    }
}

impl Copied {
    /// `3 entries, 1048576 bytes`
    pub fn line(&self) -> String {
        format!("{} entries, {} bytes", self.entries, self.bytes)
    }
}

fn local(e: rexec_protocol::copy::CopyError) -> CtlError {
    CtlError::Local(e.message)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Remembers the checksum of a copy that turns out to be one regular file.
#[derive(Debug, Default)]
struct SingleFile {
    files: u32,
    entries: u32,
    sha256: Option<String>,
}

impl SingleFile {
    fn see(&mut self, item: &CopyItem) {
        match item {
            CopyItem::File(_) => self.entries += 1,
            CopyItem::End(end) => {
                self.files += 1;
                self.sha256 = Some(hex(&end.sha256));
            }
            CopyItem::Data(_) => {}
        }
    }

    fn checksum(&self) -> Option<String> {
        (self.files == 1 && self.entries == 1)
            .then(|| self.sha256.clone())
            .flatten()
    }
}

/// Pushes `sources` to `dest` on `target`.
///
/// # Errors
/// Connecting, a local file that cannot be read, the agent's refusal.
pub async fn push(
    client: &Client,
    target: &Target,
    sources: &[PathBuf],
    options: CopyOptions,
    dest: &str,
) -> Result<Copied, CtlError> {
    let mut readers = Vec::new();
    for source in sources {
        let reader = TreeReader::new(source, options.recursive).map_err(local)?;
        readers.push(reader.with_owners(options.preserve_owner));
    }
    let request = ClientMessage::Push(PushRequest {
        dest: dest.to_owned(),
        user: target.user.clone(),
        preserve_owner: options.preserve_owner,
    });
    let session = fanout::open(client, target, request).await?;
    let mut incoming = session.connection.incoming;
    let mut outgoing = session.connection.outgoing;
    let lost = |e: FrameError| CtlError::ConnectionLost(e.to_string());
    let mut single = SingleFile::default();

    let send = async {
        for reader in &mut readers {
            while let Some(item) = reader.next_item().map_err(local)? {
                single.see(&item);
                let message = match item {
                    CopyItem::File(header) => ClientMessage::File(header),
                    CopyItem::Data(chunk) => ClientMessage::FileData(chunk),
                    CopyItem::End(end) => ClientMessage::FileEnd(end),
                };
                outgoing.feed(message).await.map_err(lost)?;
            }
        }
        outgoing.feed(ClientMessage::CopyEnd).await.map_err(lost)?;
        outgoing.flush().await.map_err(lost)?;
        // The agent's answer decides; this side has said everything.
        std::future::pending::<Result<std::convert::Infallible, CtlError>>().await
    };
    // The agent may refuse at any point (disk full, a bad path): listen
    // while sending, so that its reason is what the user sees.
    let answer = async {
        loop {
            match incoming.next().await {
                Some(Ok(AgentMessage::CopyDone(done))) => return Ok(done),
                Some(Ok(AgentMessage::Keepalive)) => continue,
                Some(Ok(AgentMessage::Error(report))) => return Err(CtlError::Agent(report)),
                Some(Ok(other)) => {
                    return Err(CtlError::Protocol(format!(
                        "unexpected message during a push: {other:?}"
                    )));
                }
                Some(Err(FrameError::Io(e))) => {
                    return Err(CtlError::ConnectionLost(e.to_string()));
                }
                Some(Err(e)) => return Err(CtlError::Protocol(e.to_string())),
                None => {
                    return Err(CtlError::ConnectionLost(
                        "the agent closed the connection before confirming the copy".into(),
                    ));
                }
            }
        }
    };
    let done = tokio::select! {
        done = answer => done?,
        failed = send => match failed {
            Err(e) => return Err(e),
            Ok(never) => match never {},
        },
    };
    Ok(Copied {
        entries: done.entries,
        bytes: done.bytes,
        sha256: single.checksum(),
    })
}

/// Pulls `path` from `target` into the existing directory `into`.
///
/// # Errors
/// Connecting, the agent's refusal, a name that would leave `into`, a local
/// write that fails.
pub async fn pull(
    client: &Client,
    target: &Target,
    path: &str,
    options: CopyOptions,
    into: &Path,
) -> Result<Copied, CtlError> {
    let request = ClientMessage::Pull(PullRequest {
        path: path.to_owned(),
        recursive: options.recursive,
        user: target.user.clone(),
        preserve_owner: options.preserve_owner,
    });
    let session = fanout::open(client, target, request).await?;
    let mut incoming = session.connection.incoming;
    // Dropped on every way out, which removes a half-received file.
    let mut writer = TreeWriter::new(Placement::Into(into.to_path_buf()), None);
    let mut single = SingleFile::default();
    loop {
        let item = match incoming.next().await {
            Some(Ok(AgentMessage::File(header))) => CopyItem::File(header),
            Some(Ok(AgentMessage::FileData(chunk))) => CopyItem::Data(chunk),
            Some(Ok(AgentMessage::FileEnd(end))) => CopyItem::End(end),
            Some(Ok(AgentMessage::CopyEnd)) if !writer.in_file() => break,
            Some(Ok(AgentMessage::Keepalive)) => continue,
            Some(Ok(AgentMessage::Error(report))) => return Err(CtlError::Agent(report)),
            Some(Ok(other)) => {
                return Err(CtlError::Protocol(format!(
                    "unexpected message during a pull: {other:?}"
                )));
            }
            Some(Err(FrameError::Io(e))) => return Err(CtlError::ConnectionLost(e.to_string())),
            Some(Err(e)) => return Err(CtlError::Protocol(e.to_string())),
            None => {
                return Err(CtlError::ConnectionLost(
                    "the agent closed the connection before the copy ended".into(),
                ));
            }
        };
        single.see(&item);
        writer.item(item).map_err(local)?;
    }
    Ok(Copied {
        entries: writer.entries,
        bytes: writer.bytes,
        sha256: single.checksum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_operands_split_at_the_first_colon_slash() {
        let r = |t: &str, p: &str| {
            Some(RemoteOperand {
                targets: t.into(),
                path: p.into(),
            })
        };
        assert_eq!(remote_operand("h:/tmp/x"), r("h", "/tmp/x"));
        assert_eq!(remote_operand("h:7723:/tmp"), r("h:7723", "/tmp"));
        assert_eq!(
            remote_operand("[::1]:7722:/srv/a:b"),
            r("[::1]:7722", "/srv/a:b")
        );
        assert_eq!(
            remote_operand("node[1-4],@lab:/srv/"),
            r("node[1-4],@lab", "/srv/")
        );
        assert_eq!(remote_operand("root@h:/etc/motd"), r("root@h", "/etc/motd"));
        for local in [
            "file",
            "./odd:/name",
            "/abs:/x",
            "dir/",
            ":/x",
            "h:relative",
        ] {
            assert_eq!(remote_operand(local), None, "{local}");
        }
    }
}
