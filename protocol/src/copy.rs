//! Files on both ends of a copy: reading a file or tree into the entries the
//! protocol carries, and writing received entries so that no reader ever
//! sees a half-written file.
//!
//! Both `ctl` (pull) and the agent (push) receive trees, and both send
//! them, so the file system side lives here once, beside the messages it
//! fills. It knows nothing of connections: the sender pulls [`CopyItem`]s
//! from a [`TreeReader`] one chunk at a time (memory stays bounded by one
//! chunk), and the receiver hands each item to a [`TreeWriter`].
//!
//! Received names are never trusted: [`relative_path`] refuses absolute
//! paths, `..`, `.` and empty components, so an entry can only land below
//! the writer's root, whatever the sender says.

use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::codec::MAX_CHUNK_LEN;
use crate::message::{ErrorKind, FileEnd, FileHeader, FileKind, Owner};

/// What went wrong with a copy, with the protocol's kind for it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CopyError {
    /// The kind reported to the peer.
    pub kind: ErrorKind,
    /// What happened, naming the path.
    pub message: String,
}

impl CopyError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CopyError {
            kind,
            message: message.into(),
        }
    }

    /// An I/O error on `path`, with the kind the error's cause suggests.
    pub fn io(path: &Path, action: &str, e: &io::Error) -> Self {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NoSuchFile,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            io::ErrorKind::StorageFull
            | io::ErrorKind::ReadOnlyFilesystem
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::FileTooLarge => ErrorKind::WriteFailed,
            io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory => ErrorKind::BadRequest,
            _ => ErrorKind::WriteFailed,
        };
        CopyError::new(kind, format!("cannot {action} {}: {e}", path.display()))
    }
}

/// One piece of a copy stream, in order: an entry's header, then for a
/// regular file its data chunks and its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyItem {
    /// An entry begins.
    File(FileHeader),
    /// A chunk of the current file.
    Data(Bytes),
    /// The current file is complete.
    End(FileEnd),
}

/// Turns a received entry path into a relative path with at least one
/// component, refusing anything that could leave the destination.
///
/// # Errors
/// [`ErrorKind::BadRequest`] for an empty or absolute path, a `.`, `..` or
/// empty component, or a NUL byte.
pub fn relative_path(raw: &[u8]) -> Result<PathBuf, CopyError> {
    let refuse = |why: &str| {
        CopyError::new(
            ErrorKind::BadRequest,
            format!(
                "refusing entry name {:?}: {why}",
                String::from_utf8_lossy(raw)
            ),
        )
    };
    if raw.is_empty() {
        return Err(refuse("empty"));
    }
    if raw.contains(&0) {
        return Err(refuse("contains a NUL byte"));
    }
    if raw.starts_with(b"/") {
        return Err(refuse("absolute"));
    }
    let mut path = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" => return Err(refuse("empty component")),
            b"." | b".." => return Err(refuse("'.' or '..' component")),
            _ => path.push(OsStr::from_bytes(part)),
        }
    }
    // Belt and braces: what we built has normal components only.
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(refuse("not a plain relative path"));
    }
    Ok(path)
}

/// A running BLAKE3 hash of a file's data. BLAKE3 rather than SHA-256:
/// both are 256-bit cryptographic hashes, but here SHA-256 (even with the
/// CPU's SHA instructions) took 0.54 s per GiB on each end and was the
/// largest single cost of a copy, BLAKE3 takes 0.11 s.
#[derive(Debug, Clone, Default)]
struct Checksum(blake3::Hasher);

impl Checksum {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn finish(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

fn mtime_of(meta: &fs::Metadata) -> i64 {
    meta.mtime()
}

fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Reads a file or tree as copy items, one chunk at a time.
#[derive(Debug)]
pub struct TreeReader {
    /// Entries still to send: (path on disk, name in the stream).
    pending: Vec<(PathBuf, Vec<u8>)>,
    recursive: bool,
    owners: bool,
    /// The regular file being sent, its hasher and bytes left.
    current: Option<(PathBuf, File, Checksum)>,
    /// Entries and bytes sent so far.
    pub entries: u64,
    /// Bytes of file data sent so far.
    pub bytes: u64,
}

impl TreeReader {
    /// A reader for `path`, whose entries are named after its last
    /// component. A directory needs `recursive`.
    ///
    /// # Errors
    /// When `path` does not exist, has no name, or is a directory without
    /// `recursive`.
    pub fn new(path: &Path, recursive: bool) -> Result<TreeReader, CopyError> {
        let meta = fs::symlink_metadata(path).map_err(|e| CopyError::io(path, "read", &e))?;
        if meta.is_dir() && !recursive {
            return Err(CopyError::new(
                ErrorKind::BadRequest,
                format!("{} is a directory (copy it with -r)", path.display()),
            ));
        }
        let name = path
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .ok_or_else(|| {
                CopyError::new(
                    ErrorKind::BadRequest,
                    format!("{} names no file", path.display()),
                )
            })?;
        Ok(TreeReader {
            pending: vec![(path.to_path_buf(), name)],
            recursive,
            owners: false,
            current: None,
            entries: 0,
            bytes: 0,
        })
    }

    /// Sends each entry's numeric owner too.
    pub fn with_owners(mut self, owners: bool) -> Self {
        self.owners = owners;
        self
    }

    /// The next item, or `None` at the end of the tree.
    ///
    /// # Errors
    /// When an entry cannot be read.
    pub fn next_item(&mut self) -> Result<Option<CopyItem>, CopyError> {
        if let Some((path, file, hasher)) = &mut self.current {
            let mut buf = vec![0u8; MAX_CHUNK_LEN];
            let n = read_full(file, &mut buf).map_err(|e| CopyError::io(path, "read", &e))?;
            if n > 0 {
                buf.truncate(n);
                hasher.update(&buf);
                self.bytes += n as u64;
                return Ok(Some(CopyItem::Data(Bytes::from(buf))));
            }
            let (_, _, hasher) = self
                .current
                .take()
                .ok_or_else(|| CopyError::new(ErrorKind::Internal, "copy reader lost its file"))?;
            let blake3 = Bytes::copy_from_slice(&hasher.finish());
            return Ok(Some(CopyItem::End(FileEnd { blake3 })));
        }
        let Some((path, name)) = self.pending.pop() else {
            return Ok(None);
        };
        let meta = fs::symlink_metadata(&path).map_err(|e| CopyError::io(&path, "read", &e))?;
        let mode = meta.permissions().mode() & 0o7777;
        let kind = if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(|e| CopyError::io(&path, "read", &e))?;
            FileKind::Symlink {
                target: Bytes::copy_from_slice(target.as_os_str().as_bytes()),
            }
        } else if meta.is_dir() {
            if self.recursive {
                let mut children = Vec::new();
                for entry in fs::read_dir(&path).map_err(|e| CopyError::io(&path, "list", &e))? {
                    let entry = entry.map_err(|e| CopyError::io(&path, "list", &e))?;
                    let mut child = name.clone();
                    child.push(b'/');
                    child.extend_from_slice(entry.file_name().as_bytes());
                    children.push((entry.path(), child));
                }
                // Popped from the end: reverse name order gives name order.
                children.sort_by(|a, b| b.1.cmp(&a.1));
                self.pending.extend(children);
            }
            FileKind::Directory
        } else if meta.is_file() {
            let file = File::open(&path).map_err(|e| CopyError::io(&path, "open", &e))?;
            self.current = Some((path.clone(), file, Checksum::default()));
            FileKind::File { size: meta.len() }
        } else {
            return Err(CopyError::new(
                ErrorKind::BadRequest,
                format!(
                    "{} is not a regular file, directory or link",
                    path.display()
                ),
            ));
        };
        self.entries += 1;
        Ok(Some(CopyItem::File(FileHeader {
            path: Bytes::from(name),
            kind,
            mode,
            mtime: mtime_of(&meta),
            owner: self.owners.then(|| Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            }),
        })))
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Where a received tree goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Entries land below this existing directory under their own names.
    Into(PathBuf),
    /// The one top-level entry becomes this path; its children go below it.
    As(PathBuf),
}

impl Placement {
    /// `Into(dest)` when `dest` is an existing directory, else `As(dest)`.
    pub fn for_destination(dest: &Path) -> Placement {
        if dest.is_dir() {
            Placement::Into(dest.to_path_buf())
        } else {
            Placement::As(dest.to_path_buf())
        }
    }
}

/// A regular file being received under a temporary name beside its final
/// one; removed unless it was completed.
#[derive(Debug)]
struct Incoming {
    temp: PathBuf,
    final_path: PathBuf,
    file: File,
    hasher: Checksum,
    size: u64,
    written: u64,
    /// Bytes written whose writeback has been started.
    flushing: u64,
    mode: u32,
    mtime: i64,
    owner: Option<Owner>,
}

/// How much of a file is written before its writeback is started.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Asks the kernel to start writing `from..to` of `file` to disk now, so
/// that the disk works while the rest arrives and the final sync has little
/// left to wait for. Only a hint: where it is not supported, the sync does
/// all the work, as it would without it.
fn start_writeback(file: &File, from: u64, to: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    // SAFETY: the descriptor is `file`'s, open for the duration of the
    // call; the call reads no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Completed files were renamed away; this only removes leftovers.
        let _ = fs::remove_file(&self.temp);
    }
}

/// Writes received entries. Each regular file is written to a temporary
/// name in its destination directory, synced, checked against its BLAKE3 hash,
/// and only then renamed over its final name: a reader sees the old file or
/// the new one, never a mix, and a failed or abandoned transfer leaves the
/// old file and no temporary behind.
#[derive(Debug)]
pub struct TreeWriter {
    placement: Placement,
    top: Option<Vec<u8>>,
    current: Option<Incoming>,
    /// Refuse more than this many bytes of data in all.
    limit: Option<u64>,
    /// Entries put in place.
    pub entries: u64,
    /// Bytes of file data put in place.
    pub bytes: u64,
}

impl TreeWriter {
    /// A writer placing entries per `placement`, refusing more than `limit`
    /// bytes of data when given.
    pub fn new(placement: Placement, limit: Option<u64>) -> TreeWriter {
        TreeWriter {
            placement,
            top: None,
            current: None,
            limit,
            entries: 0,
            bytes: 0,
        }
    }

    /// Where the entry named `raw` goes.
    fn destination(&mut self, raw: &[u8]) -> Result<PathBuf, CopyError> {
        let relative = relative_path(raw)?;
        let first = raw
            .split(|b| *b == b'/')
            .next()
            .unwrap_or_default()
            .to_vec();
        match &self.top {
            None => self.top = Some(first),
            Some(top) if *top == first => {}
            Some(_) if matches!(self.placement, Placement::Into(_)) => {}
            Some(_) => {
                return Err(CopyError::new(
                    ErrorKind::BadRequest,
                    "several entries cannot all become one path: the destination must be an existing directory",
                ));
            }
        }
        Ok(match &self.placement {
            Placement::Into(dir) => dir.join(relative),
            Placement::As(path) => {
                let mut parts = relative.components();
                parts.next();
                path.join(parts.as_path())
            }
        })
    }

    /// Handles the next item of the stream.
    ///
    /// # Errors
    /// A refused name, a file system error, a size over the limit, a
    /// checksum that does not match, an item out of order.
    pub fn item(&mut self, item: CopyItem) -> Result<(), CopyError> {
        match item {
            CopyItem::File(header) => self.begin(header),
            CopyItem::Data(chunk) => self.data(&chunk),
            CopyItem::End(end) => self.end(&end),
        }
    }

    fn begin(&mut self, header: FileHeader) -> Result<(), CopyError> {
        if self.current.is_some() {
            return Err(CopyError::new(
                ErrorKind::Protocol,
                "a new entry began before the last file ended",
            ));
        }
        let path = self.destination(&header.path)?;
        let mode = header.mode & 0o7777;
        let owner = header.owner;
        match header.kind {
            FileKind::Directory => {
                match fs::create_dir(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
                    Err(e) => return Err(CopyError::io(&path, "create directory", &e)),
                }
                apply_owner(&path, owner, false)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(|e| CopyError::io(&path, "set the mode of", &e))?;
                self.entries += 1;
            }
            FileKind::Symlink { target } => {
                let temp = temp_name(&path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &temp)
                    .map_err(|e| CopyError::io(&path, "create link", &e))?;
                if let Err(e) = apply_owner(&temp, owner, true) {
                    let _ = fs::remove_file(&temp);
                    return Err(e);
                }
                if let Err(e) = fs::rename(&temp, &path) {
                    let _ = fs::remove_file(&temp);
                    return Err(CopyError::io(&path, "put in place", &e));
                }
                self.entries += 1;
            }
            FileKind::File { size } => {
                if let Some(limit) = self.limit {
                    if self.bytes.saturating_add(size) > limit {
                        return Err(CopyError::new(
                            ErrorKind::TooLarge,
                            format!(
                                "{} would take the copy past the agent's limit of {limit} bytes",
                                path.display()
                            ),
                        ));
                    }
                }
                let temp = temp_name(&path)?;
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&temp)
                    .map_err(|e| CopyError::io(&path, "create", &e))?;
                self.current = Some(Incoming {
                    temp,
                    final_path: path,
                    file,
                    hasher: Checksum::default(),
                    size,
                    written: 0,
                    flushing: 0,
                    mode,
                    mtime: header.mtime,
                    owner,
                });
            }
        }
        Ok(())
    }

    fn data(&mut self, chunk: &[u8]) -> Result<(), CopyError> {
        let incoming = self
            .current
            .as_mut()
            .ok_or_else(|| CopyError::new(ErrorKind::Protocol, "file data outside of a file"))?;
        incoming.written += chunk.len() as u64;
        if incoming.written > incoming.size {
            return Err(CopyError::new(
                ErrorKind::Protocol,
                format!(
                    "{}: more data than the {} bytes announced",
                    incoming.final_path.display(),
                    incoming.size
                ),
            ));
        }
        incoming.hasher.update(chunk);
        incoming
            .file
            .write_all(chunk)
            .map_err(|e| CopyError::io(&incoming.final_path, "write", &e))?;
        if incoming.written - incoming.flushing >= WRITEBACK_STEP {
            start_writeback(&incoming.file, incoming.flushing, incoming.written);
            incoming.flushing = incoming.written;
        }
        Ok(())
    }

    fn end(&mut self, end: &FileEnd) -> Result<(), CopyError> {
        let incoming = self
            .current
            .take()
            .ok_or_else(|| CopyError::new(ErrorKind::Protocol, "a file end outside of a file"))?;
        let path = incoming.final_path.clone();
        if incoming.written != incoming.size {
            return Err(CopyError::new(
                ErrorKind::Protocol,
                format!(
                    "{}: {} bytes arrived, {} were announced",
                    path.display(),
                    incoming.written,
                    incoming.size
                ),
            ));
        }
        if incoming.hasher.finish().as_slice() != end.blake3.as_ref() {
            return Err(CopyError::new(
                ErrorKind::ChecksumMismatch,
                format!(
                    "{}: the data does not match its checksum; the old file is kept",
                    path.display()
                ),
            ));
        }
        // Owner before mode: a change of owner clears set-id bits.
        apply_owner(&incoming.temp, incoming.owner, false)?;
        incoming
            .file
            .set_permissions(fs::Permissions::from_mode(incoming.mode))
            .map_err(|e| CopyError::io(&path, "set the mode of", &e))?;
        incoming
            .file
            .set_times(FileTimes::new().set_modified(system_time(incoming.mtime)))
            .map_err(|e| CopyError::io(&path, "set the time of", &e))?;
        incoming
            .file
            .sync_all()
            .map_err(|e| CopyError::io(&path, "sync", &e))?;
        fs::rename(&incoming.temp, &path).map_err(|e| CopyError::io(&path, "put in place", &e))?;
        self.entries += 1;
        self.bytes += incoming.size;
        // `incoming` drops here; its temporary name no longer exists.
        Ok(())
    }

    /// Whether a file is still open (the stream ended early).
    pub fn in_file(&self) -> bool {
        self.current.is_some()
    }
}

/// Gives `path` the sent owner, when the copy keeps owners; a link itself,
/// not what it points to, when `link`.
fn apply_owner(path: &Path, owner: Option<Owner>, link: bool) -> Result<(), CopyError> {
    let Some(owner) = owner else {
        return Ok(());
    };
    let result = if link {
        std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))
    } else {
        std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
    };
    result.map_err(|e| CopyError::io(path, "set the owner of", &e))
}

/// A fresh temporary name beside `path`: `.NAME.rexec-PID-N`, hidden, in
/// the same directory so the final rename is atomic.
fn temp_name(path: &Path) -> Result<PathBuf, CopyError> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        CopyError::new(
            ErrorKind::BadRequest,
            format!("{} names no file", path.display()),
        )
    })?;
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut temp = OsStr::new(".").to_os_string();
    temp.push(name);
    temp.push(format!(".rexec-{}-{n}", std::process::id()));
    Ok(path.with_file_name(temp))
}

/// Whether `name` is one of our temporary names (for tests and cleanup).
pub fn is_temp_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.starts_with(b".") && name.windows(7).any(|w| w == b".rexec-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_tree(source: &Path, placement: Placement) -> Result<TreeWriter, CopyError> {
        let mut reader = TreeReader::new(source, true)?;
        let mut writer = TreeWriter::new(placement, None);
        while let Some(item) = reader.next_item()? {
            writer.item(item)?;
        }
        Ok(writer)
    }

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../../etc/x",
            b"a/../../x",
            b"a/./b",
            b"a//b",
            b"a/",
            b".",
            b"..",
            b"a\0b",
        ] {
            assert!(
                relative_path(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            relative_path(b"a/b c/\xff").unwrap(),
            Path::new("a/b c").join(OsStr::from_bytes(b"\xff"))
        );
    }

    #[test]
    fn a_hostile_name_never_lands_outside_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let mut writer = TreeWriter::new(Placement::Into(dest.clone()), None);
        let header = FileHeader {
            path: Bytes::from_static(b"../../etc/x"),
            kind: FileKind::File { size: 1 },
            mode: 0o644,
            mtime: 0,
            owner: None,
        };
        let err = writer.item(CopyItem::File(header)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest);
        assert!(!dir.path().join("etc").exists());
    }

    #[test]
    fn a_tree_with_links_and_odd_names_copies_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("sub dir")).unwrap();
        fs::write(src.join("empty"), b"").unwrap();
        fs::write(src.join("new\nline"), b"x").unwrap();
        fs::write(src.join(OsStr::from_bytes(b"bad\xffutf8")), b"bytes").unwrap();
        fs::write(src.join("sub dir/big"), vec![7u8; MAX_CHUNK_LEN * 2 + 3]).unwrap();
        fs::set_permissions(src.join("empty"), fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("sub dir/big", src.join("link")).unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let writer = copy_tree(&src, Placement::Into(out.clone())).unwrap();
        assert_eq!(writer.entries, 7);
        let copy = out.join("src");
        assert_eq!(fs::read(copy.join("new\nline")).unwrap(), b"x");
        assert_eq!(
            fs::read(copy.join(OsStr::from_bytes(b"bad\xffutf8"))).unwrap(),
            b"bytes"
        );
        assert_eq!(
            fs::read(copy.join("sub dir/big")).unwrap().len(),
            MAX_CHUNK_LEN * 2 + 3
        );
        assert_eq!(
            fs::read_link(copy.join("link")).unwrap(),
            Path::new("sub dir/big")
        );
        let mode = fs::metadata(copy.join("empty"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o751);
        assert_eq!(
            fs::metadata(copy.join("sub dir/big")).unwrap().mtime(),
            fs::metadata(src.join("sub dir/big")).unwrap().mtime()
        );
        // `As`: the tree itself becomes the destination path.
        let renamed = dir.path().join("renamed");
        copy_tree(&src, Placement::As(renamed.clone())).unwrap();
        assert_eq!(fs::read(renamed.join("new\nline")).unwrap(), b"x");
    }

    #[test]
    fn a_bad_checksum_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"old").unwrap();
        let mut writer = TreeWriter::new(Placement::As(target.clone()), None);
        writer
            .item(CopyItem::File(FileHeader {
                path: Bytes::from_static(b"f"),
                kind: FileKind::File { size: 3 },
                mode: 0o644,
                mtime: 0,
                owner: None,
            }))
            .unwrap();
        writer
            .item(CopyItem::Data(Bytes::from_static(b"new")))
            .unwrap();
        let err = writer
            .item(CopyItem::End(FileEnd {
                blake3: Bytes::from_static(&[0; 32]),
            }))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::ChecksumMismatch);
        assert_eq!(fs::read(&target).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"]);
    }

    #[test]
    fn an_abandoned_transfer_removes_its_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = TreeWriter::new(Placement::Into(dir.path().to_path_buf()), None);
        writer
            .item(CopyItem::File(FileHeader {
                path: Bytes::from_static(b"f"),
                kind: FileKind::File { size: 10 },
                mode: 0o644,
                mtime: 0,
                owner: None,
            }))
            .unwrap();
        writer
            .item(CopyItem::Data(Bytes::from_static(b"half")))
            .unwrap();
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the temporary exists"
        );
        drop(writer);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_size_limit_refuses_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = TreeWriter::new(Placement::Into(dir.path().to_path_buf()), Some(5));
        let err = writer
            .item(CopyItem::File(FileHeader {
                path: Bytes::from_static(b"f"),
                kind: FileKind::File { size: 6 },
                mode: 0o644,
                mtime: 0,
                owner: None,
            }))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
