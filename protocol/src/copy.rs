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
//! paths, `..`, `.` and empty components, and the writer resolves every
//! name beneath its destination's open directory without following any
//! link (Linux `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so
//! a link the same stream placed, or one planted beforehand, is never
//! written through: an entry can only land below the destination, whatever
//! the sender says. Modes, owners and times are changed through the open
//! descriptor of what was written, never by path. The reader likewise
//! opens each entry beneath its parent's descriptor without following
//! links, refuses anything but regular files, directories and links after
//! looking at the descriptor it opened (a FIFO swapped in is never read),
//! and sends exactly the size it announced.

use std::ffi::{OsStr, OsString};
use std::fs::{File, FileTimes, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rustix::fs::{AtFlags, CWD, FallocateFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

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

    /// `path` is no file a copy takes (a device, a FIFO, a socket).
    pub fn not_copyable(path: &Path) -> Self {
        CopyError::new(
            ErrorKind::BadRequest,
            format!(
                "{} is not a regular file, directory or link",
                path.display()
            ),
        )
    }

    /// An I/O error on `path`, with the kind the error's cause suggests.
    pub fn io(path: &Path, action: &str, e: &io::Error) -> Self {
        if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) {
            return CopyError::new(
                ErrorKind::BadRequest,
                format!(
                    "cannot {action} {}: a link is in the way (links are never followed)",
                    path.display()
                ),
            );
        }
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
        let why = crate::plain::io_error(e);
        CopyError::new(kind, format!("cannot {action} {}: {why}", path.display()))
    }

    fn errno(path: &Path, action: &str, e: Errno) -> Self {
        CopyError::io(path, action, &io::Error::from(e))
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

/// The name a copy of `path` carries as its top-level entry: its last
/// component, as the reader sends it and a puller expects it.
///
/// # Errors
/// When `path` names no file (`/`, or ends in `..`).
pub fn entry_name(path: &Path) -> Result<Vec<u8>, CopyError> {
    path.file_name()
        .map(|n| n.as_bytes().to_vec())
        .ok_or_else(|| {
            CopyError::new(
                ErrorKind::BadRequest,
                format!("{} names no file", path.display()),
            )
        })
}

/// Link-free resolution beneath a directory: no link is followed on the
/// way or at the end, nothing outside the directory is reachable.
fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Opens `rel` (plain components only, see [`relative_path`]) beneath
/// `dir` without following any link.
fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    match rustix::fs::openat2(dir, rel, flags, Mode::empty(), beneath()) {
        // A kernel before 5.6 (or a filter that hides the call): one
        // component at a time with O_NOFOLLOW is as strict, because the
        // names have no `..`.
        Err(Errno::NOSYS) => {
            let mut parts = rel.iter().peekable();
            let mut at: Option<OwnedFd> = None;
            while let Some(part) = parts.next() {
                let here = if parts.peek().is_some() {
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW
                } else {
                    flags
                };
                let from = at.as_ref().map_or(dir, |fd| fd.as_fd());
                at = Some(rustix::fs::openat(from, part, here, Mode::empty())?);
            }
            at.ok_or(Errno::INVAL)
        }
        other => other,
    }
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

fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// The most a file whose `stat` size is 0 may hold (files of `/proc` and
/// `/sys` say 0 and have content): such a file is read whole before its
/// header is sent, since the header announces the size.
pub const MAX_UNSIZED_FILE: usize = 16 << 20;

/// An entry still to send.
#[derive(Debug)]
struct Pending {
    /// The open directory it is in (for the top-level entry, the one its
    /// path names).
    parent: Arc<OwnedFd>,
    /// Its name in `parent`.
    name: PathBuf,
    /// Its path, for messages.
    shown: PathBuf,
    /// Its name in the stream.
    stream: Vec<u8>,
}

/// What identifies a file's state: a change of any means it was written.
fn state_of(meta: &std::fs::Metadata) -> (u64, i64, i64, i64, i64) {
    (
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// The regular file being sent.
#[derive(Debug)]
struct Sending {
    shown: PathBuf,
    file: File,
    hasher: Checksum,
    /// Bytes still to send of the size announced.
    remaining: u64,
    /// The whole content, for a file read before its header was sent.
    buffered: Option<Bytes>,
    /// Its state when the header was sent.
    state: (u64, i64, i64, i64, i64),
}

/// Reads a file or tree as copy items, one chunk at a time.
#[derive(Debug)]
pub struct TreeReader {
    pending: Vec<Pending>,
    reach: Reach,
    recursive: bool,
    owners: bool,
    current: Option<Sending>,
    /// Entries sent so far.
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
        TreeReader::within(path, recursive, Reach::Anywhere)
    }

    /// [`TreeReader::new`], with `path` resolved per `reach` and, for
    /// [`Reach::OutsideProc`], no directory of the tree in `/proc`.
    ///
    /// # Errors
    /// As there, and a path outside `reach` (a permission).
    pub fn within(path: &Path, recursive: bool, reach: Reach) -> Result<TreeReader, CopyError> {
        let name = entry_name(path)?;
        // The entry itself is taken from its directory as it is there, a
        // link as a link; only the way to that directory is resolved.
        let parent_path = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let last = OsStr::from_bytes(&name);
        let parent = open_dir(parent_path, reach).map_err(|e| CopyError::errno(path, "read", e))?;
        let stat = rustix::fs::statat(&parent, last, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| CopyError::errno(path, "read", e))?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory && !recursive {
            return Err(CopyError::new(
                ErrorKind::BadRequest,
                format!("{} is a directory (copy it with -r)", path.display()),
            ));
        }
        Ok(TreeReader {
            pending: vec![Pending {
                parent: Arc::new(parent),
                name: PathBuf::from(last),
                shown: path.to_path_buf(),
                stream: name,
            }],
            reach,
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
    /// When an entry cannot be read, is of a kind we do not copy, or
    /// shrank while it was read.
    pub fn next_item(&mut self) -> Result<Option<CopyItem>, CopyError> {
        if let Some(sending) = &mut self.current {
            if let Some(chunk) = next_chunk(sending)? {
                self.bytes += chunk.len() as u64;
                return Ok(Some(CopyItem::Data(chunk)));
            }
            let sending = self
                .current
                .take()
                .ok_or_else(|| CopyError::new(ErrorKind::Internal, "copy reader lost its file"))?;
            let changed = sending.buffered.is_none()
                && sending
                    .file
                    .metadata()
                    .map_or(true, |now| state_of(&now) != sending.state);
            let blake3 = Bytes::copy_from_slice(&sending.hasher.finish());
            return Ok(Some(CopyItem::End(FileEnd { blake3, changed })));
        }
        let Some(entry) = self.pending.pop() else {
            return Ok(None);
        };
        let dir = entry.parent.as_fd();
        let shown = &entry.shown;
        let stat = rustix::fs::statat(dir, &entry.name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| CopyError::errno(shown, "read", e))?;
        let (kind, meta) = match FileType::from_raw_mode(stat.st_mode) {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, &entry.name, Vec::new())
                    .map_err(|e| CopyError::errno(shown, "read", e))?;
                let link = LinkMeta {
                    mode: stat.st_mode & 0o7777,
                    mtime: stat.st_mtime as i64,
                    uid: stat.st_uid,
                    gid: stat.st_gid,
                };
                let kind = FileKind::Symlink {
                    target: Bytes::from(target.into_bytes()),
                };
                (kind, link)
            }
            FileType::Directory => {
                let (file, meta) =
                    open_as(dir, &entry.name, OFlags::DIRECTORY, shown, Metadata::is_dir)?;
                check_reach(&file, self.reach).map_err(|e| CopyError::errno(shown, "read", e))?;
                if self.recursive {
                    self.list(OwnedFd::from(file), &entry)?;
                }
                (FileKind::Directory, LinkMeta::of(&meta))
            }
            FileType::RegularFile => {
                let (mut file, meta) = open_regular(dir, &entry.name, shown)?;
                let (remaining, buffered) = if meta.size() == 0 {
                    let whole = read_unsized(&mut file, shown)?;
                    (whole.len() as u64, Some(whole))
                } else {
                    (meta.size(), None)
                };
                let size = remaining;
                self.current = Some(Sending {
                    shown: shown.clone(),
                    file,
                    hasher: Checksum::default(),
                    remaining,
                    buffered,
                    state: state_of(&meta),
                });
                (FileKind::File { size }, LinkMeta::of(&meta))
            }
            _ => return Err(CopyError::not_copyable(shown)),
        };
        self.entries += 1;
        Ok(Some(CopyItem::File(FileHeader {
            path: Bytes::from(entry.stream),
            kind,
            mode: meta.mode,
            mtime: meta.mtime,
            owner: self.owners.then_some(Owner {
                uid: meta.uid,
                gid: meta.gid,
            }),
        })))
    }

    /// Queues the children of the open directory `dir`, in name order.
    fn list(&mut self, dir: OwnedFd, entry: &Pending) -> Result<(), CopyError> {
        let listing = rustix::fs::Dir::read_from(&dir)
            .map_err(|e| CopyError::errno(&entry.shown, "list", e))?;
        let dir = Arc::new(dir);
        let mut children = Vec::new();
        for child in listing {
            let child = child.map_err(|e| CopyError::errno(&entry.shown, "list", e))?;
            let name = OsStr::from_bytes(child.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let mut stream = entry.stream.clone();
            stream.push(b'/');
            stream.extend_from_slice(name.as_bytes());
            children.push(Pending {
                parent: dir.clone(),
                name: PathBuf::from(name),
                shown: entry.shown.join(name),
                stream,
            });
        }
        // Popped from the end: reverse name order gives name order.
        children.sort_by(|a, b| b.stream.cmp(&a.stream));
        self.pending.extend(children);
        Ok(())
    }
}

/// The metadata a header carries.
struct LinkMeta {
    mode: u32,
    mtime: i64,
    uid: u32,
    gid: u32,
}

impl LinkMeta {
    fn of(meta: &std::fs::Metadata) -> LinkMeta {
        LinkMeta {
            mode: meta.mode() & 0o7777,
            mtime: meta.mtime(),
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

/// Something that is not a directory (a link, never followed, or a file)
/// stands where a directory of the copy must be.
fn in_the_way(path: &Path) -> CopyError {
    CopyError::new(
        ErrorKind::BadRequest,
        format!(
            "cannot write beneath {}: a link or a file is in the way (links are never followed)",
            path.display()
        ),
    )
}

fn swapped(path: &Path) -> CopyError {
    CopyError::new(
        ErrorKind::BadRequest,
        format!(
            "{} changed kind while it was copied (now not what it was when listed)",
            path.display()
        ),
    )
}

/// Opens an entry to read, not following a link in its place.
fn open_entry(
    dir: BorrowedFd<'_>,
    name: &Path,
    flags: OFlags,
    shown: &Path,
) -> Result<OwnedFd, CopyError> {
    rustix::fs::openat(
        dir,
        name,
        flags | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| CopyError::errno(shown, "open", e))
}

/// Opens a file listed as regular, and checks that what was opened is
/// one. Non-blocking: should a FIFO or device have been swapped in since
/// the listing, opening it must not wait for a writer.
fn open_regular(
    dir: BorrowedFd<'_>,
    name: &Path,
    shown: &Path,
) -> Result<(File, Metadata), CopyError> {
    open_as(
        dir,
        name,
        OFlags::NONBLOCK | OFlags::NOCTTY,
        shown,
        Metadata::is_file,
    )
}

/// Opens `name` with `flags` and checks that what was opened is still of
/// the kind listed (`is_kind`): a swap since the listing is refused.
fn open_as(
    dir: BorrowedFd<'_>,
    name: &Path,
    flags: OFlags,
    shown: &Path,
    is_kind: fn(&Metadata) -> bool,
) -> Result<(File, Metadata), CopyError> {
    let file = File::from(open_entry(dir, name, flags, shown)?);
    let meta = file
        .metadata()
        .map_err(|e| CopyError::io(shown, "read", &e))?;
    if !is_kind(&meta) {
        return Err(swapped(shown));
    }
    Ok((file, meta))
}

/// Reads a file whose size says 0 to its end, up to [`MAX_UNSIZED_FILE`].
fn read_unsized(file: &mut File, shown: &Path) -> Result<Bytes, CopyError> {
    let mut whole = Vec::new();
    let limit = MAX_UNSIZED_FILE as u64 + 1;
    file.take(limit)
        .read_to_end(&mut whole)
        .map_err(|e| CopyError::io(shown, "read", &e))?;
    if whole.len() > MAX_UNSIZED_FILE {
        return Err(CopyError::new(
            ErrorKind::TooLarge,
            format!(
                "{} reports a size of 0 but holds more than {MAX_UNSIZED_FILE} bytes",
                shown.display()
            ),
        ));
    }
    Ok(Bytes::from(whole))
}

/// The next chunk of the file being sent, `None` once its announced size
/// is sent. A file that grew is cut at that size; one that shrank fails.
fn next_chunk(sending: &mut Sending) -> Result<Option<Bytes>, CopyError> {
    if sending.remaining == 0 {
        return Ok(None);
    }
    let want = sending.remaining.min(MAX_CHUNK_LEN as u64) as usize;
    let chunk = match &mut sending.buffered {
        Some(whole) => whole.split_to(want),
        None => {
            let mut buf = vec![0u8; want];
            let n = read_full(&mut sending.file, &mut buf)
                .map_err(|e| CopyError::io(&sending.shown, "read", &e))?;
            if n < want {
                return Err(CopyError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "{} shrank while it was copied; nothing was put in its place",
                        sending.shown.display()
                    ),
                ));
            }
            Bytes::from(buf)
        }
    };
    sending.hasher.update(&chunk);
    sending.remaining -= chunk.len() as u64;
    Ok(Some(chunk))
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

/// Where a received tree goes: an open directory, so that nothing the
/// tree or anyone else does to the path later changes where it lands.
#[derive(Debug)]
pub enum Placement {
    /// Entries land below this existing directory under their own names.
    Into {
        /// The directory, open.
        dir: OwnedFd,
        /// Its path, for messages.
        path: PathBuf,
    },
    /// The one top-level entry becomes `name` in this existing directory;
    /// its children go below it.
    As {
        /// The directory it goes in, open.
        parent: OwnedFd,
        /// That directory's path, for messages.
        parent_path: PathBuf,
        /// Its new name.
        name: OsString,
    },
}

/// Where the user-given path of a copy (the source of a pull, the
/// destination of a push) may lead. Never through a magic link of
/// `/proc` (`/proc/PID/fd/N`, `cwd`, `root`): those reach files by what a
/// process holds open, not by the permissions on their path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Wherever the path's user may go.
    Anywhere,
    /// Nowhere in `/proc`, either: for a copy an agent runs as another
    /// user on a thread of its own process, which `/proc` shows that
    /// thread as its own (its memory map, its environment).
    OutsideProc,
}

/// Opens the directory at the user-given `path`, resolved per `reach`.
fn open_dir(path: &Path, reach: Reach) -> Result<OwnedFd, Errno> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let dir =
        match rustix::fs::openat2(CWD, path, flags, Mode::empty(), ResolveFlags::NO_MAGICLINKS) {
            // A kernel before 5.6: as the path says.
            Err(Errno::NOSYS) => rustix::fs::open(path, flags, Mode::empty())?,
            opened => opened?,
        };
    check_reach(&dir, reach)?;
    Ok(dir)
}

/// Refuses (as a permission) an open directory outside `reach`.
fn check_reach(dir: impl AsFd, reach: Reach) -> Result<(), Errno> {
    if reach == Reach::OutsideProc
        && rustix::fs::fstatfs(dir)?.f_type == rustix::fs::PROC_SUPER_MAGIC
    {
        return Err(Errno::ACCESS);
    }
    Ok(())
}

impl Placement {
    /// As `cp` and `scp` do: into `dest` when it is an existing directory
    /// (the path is the user's own, so a link to a directory counts);
    /// otherwise the one top-level entry becomes `dest`, whose parent must
    /// be an existing directory. A `dest` that ends in `/` must be a
    /// directory.
    ///
    /// # Errors
    /// A parent that does not exist, a `dest` that names no file, a
    /// directory that cannot be opened.
    pub fn for_destination(dest: &Path) -> Result<Placement, CopyError> {
        Placement::for_destination_within(dest, Reach::Anywhere)
    }

    /// [`Placement::for_destination`], with `dest` resolved per `reach`.
    ///
    /// # Errors
    /// As there, and a `dest` outside `reach` (a permission).
    pub fn for_destination_within(dest: &Path, reach: Reach) -> Result<Placement, CopyError> {
        let no_such_dir = |dir: &Path| {
            CopyError::new(
                ErrorKind::NoSuchFile,
                format!("no such directory: {}", dir.display()),
            )
        };
        let missing = match open_dir(dest, reach) {
            Ok(dir) => {
                return Ok(Placement::Into {
                    dir,
                    path: dest.to_path_buf(),
                });
            }
            Err(e @ (Errno::NOENT | Errno::NOTDIR)) => e,
            Err(e) => return Err(CopyError::errno(dest, "open", e)),
        };
        if dest.as_os_str().as_bytes().ends_with(b"/") {
            return Err(if missing == Errno::NOTDIR {
                CopyError::new(
                    ErrorKind::NoSuchFile,
                    format!("{} is not a directory", dest.display()),
                )
            } else {
                no_such_dir(dest)
            });
        }
        let name = dest.file_name().ok_or_else(|| {
            CopyError::new(
                ErrorKind::BadRequest,
                format!("{} names no file", dest.display()),
            )
        })?;
        let parent_path = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let parent = match open_dir(parent_path, reach) {
            Ok(parent) => parent,
            Err(Errno::NOENT | Errno::NOTDIR) => return Err(no_such_dir(parent_path)),
            Err(e) => return Err(CopyError::errno(parent_path, "open", e)),
        };
        Ok(Placement::As {
            parent,
            parent_path: parent_path.to_path_buf(),
            name: name.to_os_string(),
        })
    }

    /// Into the existing directory `dir`.
    ///
    /// # Errors
    /// When `dir` is not a directory that can be opened.
    pub fn into_dir(dir: &Path) -> Result<Placement, CopyError> {
        let fd = open_dir(dir, Reach::Anywhere).map_err(|e| CopyError::errno(dir, "open", e))?;
        Ok(Placement::Into {
            dir: fd,
            path: dir.to_path_buf(),
        })
    }

    /// Into `dir/name`, created when missing: a pull's directory for one
    /// of several hosts. An existing `name` that is a link (planted by
    /// someone else) is refused, never followed.
    ///
    /// # Errors
    /// A `name` that is not one plain component, a link or a file in its
    /// place, a directory that cannot be created.
    pub fn subdirectory(dir: &Path, name: &str) -> Result<Placement, CopyError> {
        let relative = relative_path(name.as_bytes())?;
        let path = dir.join(&relative);
        if relative.components().count() != 1 {
            return Err(CopyError::new(
                ErrorKind::BadRequest,
                format!("{name:?} cannot name one directory"),
            ));
        }
        let parent =
            open_dir(dir, Reach::Anywhere).map_err(|e| CopyError::errno(dir, "open", e))?;
        match rustix::fs::mkdirat(&parent, &relative, Mode::from_raw_mode(0o777)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(CopyError::errno(&path, "create directory", e)),
        }
        let fd = open_beneath(
            parent.as_fd(),
            &relative,
            OFlags::DIRECTORY | OFlags::RDONLY,
        )
        .map_err(|e| match e {
            Errno::NOTDIR | Errno::LOOP => in_the_way(&path),
            e => CopyError::errno(&path, "open", e),
        })?;
        Ok(Placement::Into { dir: fd, path })
    }
}

/// A regular file being received under a temporary name beside its final
/// one; removed unless it was completed.
#[derive(Debug)]
struct Incoming {
    /// The directory it goes in, open.
    parent: Arc<OwnedFd>,
    temp: OsString,
    name: OsString,
    /// Its final path, for messages.
    shown: PathBuf,
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
        let _ = rustix::fs::unlinkat(&*self.parent, &self.temp, AtFlags::empty());
    }
}

/// A directory of the tree whose entries are still arriving. Meanwhile a
/// new one has its owner's read, write and search bits, so that a
/// read-only directory (a Go module cache) can still receive its entries;
/// it takes its own mode once they are written, as with cp and scp.
#[derive(Debug)]
struct OpenDirectory {
    /// Its name in the stream.
    stream: Bytes,
    dir: HeldDirectory,
    mode: u32,
    /// Its path, for messages.
    shown: PathBuf,
}

/// How many directories of a tree a writer keeps open until their modes
/// are set; those deeper down are opened again beneath the destination,
/// without following links, once their entries are written. A tree as
/// deep as a path can name (2,048 levels) would otherwise hold as many
/// descriptors, and a fan-out of pulls from hostile agents could take all
/// that ctl may open.
const HELD_DIRECTORIES: usize = 32;

/// A directory waiting for its mode.
#[derive(Debug)]
enum HeldDirectory {
    /// Open: its mode is set through this, never by name.
    Open(File),
    /// Its path beneath the writer's root, past [`HELD_DIRECTORIES`].
    Beneath(PathBuf),
}

impl OpenDirectory {
    /// Whether the entry named `raw` in the stream is inside it.
    fn holds(&self, raw: &[u8]) -> bool {
        raw.strip_prefix(self.stream.as_ref())
            .is_some_and(|rest| rest.starts_with(b"/"))
    }

    fn close(self, root: BorrowedFd<'_>) -> Result<(), CopyError> {
        let dir = match self.dir {
            HeldDirectory::Open(dir) => dir,
            HeldDirectory::Beneath(within) => {
                open_beneath(root, &within, OFlags::DIRECTORY | OFlags::RDONLY)
                    .map(File::from)
                    .map_err(|e| CopyError::errno(&self.shown, "set the mode of", e))?
            }
        };
        dir.set_permissions(std::fs::Permissions::from_mode(self.mode))
            .map_err(|e| CopyError::io(&self.shown, "set the mode of", &e))
    }
}

/// What a puller asked for: the one top-level entry it may receive.
#[derive(Debug, Clone)]
struct Expected {
    name: Vec<u8>,
    recursive: bool,
}

/// Writes received entries. Each regular file is written to a temporary
/// name in its destination directory, synced, checked against its BLAKE3 hash,
/// and only then renamed over its final name: a reader sees the old file or
/// the new one, never a mix, and a failed or abandoned transfer leaves the
/// old file and no temporary behind.
#[derive(Debug)]
pub struct TreeWriter {
    /// The directory names are resolved beneath.
    root: Arc<OwnedFd>,
    root_path: PathBuf,
    /// The new name of the top-level entry, for [`Placement::As`].
    rename_top: Option<OsString>,
    expected: Option<Expected>,
    /// `-p`: set-id bits are kept, and a directory that exists takes the
    /// sent mode and owner.
    preserve: bool,
    /// Whether files get their blocks before their data.
    allocate: bool,
    /// The first top-level entry's name, and whether it is a directory.
    top: Option<(Vec<u8>, bool)>,
    current: Option<Incoming>,
    /// The directories still receiving entries, outermost first: one
    /// descriptor per level of depth.
    open_dirs: Vec<OpenDirectory>,
    /// Refuse more than this many bytes of data in all.
    limit: Option<u64>,
    /// Entries put in place.
    pub entries: u64,
    /// Bytes of file data put in place.
    pub bytes: u64,
}

impl TreeWriter {
    /// A writer placing entries per `placement`, refusing more than `limit`
    /// bytes of data when given. Set-user-id and set-group-id bits are
    /// dropped, and directories that exist are left as they are, unless
    /// [`TreeWriter::preserving`] says otherwise.
    pub fn new(placement: Placement, limit: Option<u64>) -> TreeWriter {
        let (root, root_path, rename_top) = match placement {
            Placement::Into { dir, path } => (dir, path, None),
            Placement::As {
                parent,
                parent_path,
                name,
            } => (parent, parent_path, Some(name)),
        };
        TreeWriter {
            root: Arc::new(root),
            root_path,
            rename_top,
            expected: None,
            preserve: false,
            allocate: false,
            top: None,
            current: None,
            open_dirs: Vec::new(),
            limit,
            entries: 0,
            bytes: 0,
        }
    }

    /// Accepts only what a pull of an entry called `name` can send: that
    /// entry, first, once, and entries below it only when `recursive` and
    /// it is a directory. Anything else is a protocol error.
    pub fn expecting(mut self, name: &[u8], recursive: bool) -> Self {
        self.expected = Some(Expected {
            name: name.to_vec(),
            recursive,
        });
        self
    }

    /// Does what `-p` asks: keeps set-user-id and set-group-id bits, and
    /// gives directories that exist already the sent mode and owner.
    pub fn preserving(mut self, preserve: bool) -> Self {
        self.preserve = preserve;
        self
    }

    /// Allocates each file's blocks for its whole announced size before
    /// its data arrives (`fallocate`), so writeback finds them in place: a
    /// push of 1 GiB took 0.75-0.97x the time in medians, the most on a
    /// loaded machine (BENCHMARKS.md, "The agent's spawn path"); allocating
    /// ahead in windows of 64 or 256 MiB gave nothing measurable. The size is
    /// already within the copy limit, and the temporary file is removed
    /// as before when the copy fails. Where it cannot be done (the file
    /// system, a full disk), the writes go on as without it and fail as
    /// they would.
    pub fn allocating_whole_files(mut self) -> Self {
        self.allocate = true;
        self
    }

    /// Checks the entry named `raw` against what this copy may receive;
    /// the directory it goes in (open), its name there, its path.
    fn destination(
        &mut self,
        raw: &[u8],
        kind: &FileKind,
    ) -> Result<(Arc<OwnedFd>, OsString, PathBuf), CopyError> {
        let relative = relative_path(raw)?;
        let mut parts: Vec<&OsStr> = relative.iter().collect();
        let first = parts
            .first()
            .map(|p| p.as_bytes().to_vec())
            .unwrap_or_default();
        let is_top = parts.len() == 1;
        let shown_raw = String::from_utf8_lossy(raw);
        if let Some(expected) = &self.expected {
            let asked = String::from_utf8_lossy(&expected.name);
            if first != expected.name {
                return Err(CopyError::new(
                    ErrorKind::Protocol,
                    format!(
                        "the agent sent {shown_raw:?}, which was not asked for (asked for {asked:?})"
                    ),
                ));
            }
            if is_top && self.top.is_some() {
                return Err(CopyError::new(
                    ErrorKind::Protocol,
                    format!("the agent sent {asked:?} twice"),
                ));
            }
            if is_top && !expected.recursive && matches!(kind, FileKind::Directory) {
                return Err(CopyError::new(
                    ErrorKind::Protocol,
                    format!("the agent sent {asked:?} as a directory, for a pull without -r"),
                ));
            }
            let below_a_directory = expected.recursive && matches!(self.top, Some((_, true)));
            if !is_top && !below_a_directory {
                return Err(CopyError::new(
                    ErrorKind::Protocol,
                    format!(
                        "the agent sent {shown_raw:?}, which was not asked for (a pull without -r, or {asked:?} is no directory)"
                    ),
                ));
            }
        }
        match &self.top {
            None if !is_top => {
                return Err(CopyError::new(
                    ErrorKind::Protocol,
                    format!("{shown_raw:?} came before its top-level entry"),
                ));
            }
            None => self.top = Some((first, matches!(kind, FileKind::Directory))),
            Some((top, _)) if *top == first => {}
            Some(_) if self.rename_top.is_none() => {}
            Some(_) => {
                return Err(CopyError::new(
                    ErrorKind::BadRequest,
                    "several entries cannot all become one path: the destination must be an existing directory",
                ));
            }
        }
        if let Some(name) = &self.rename_top {
            parts[0] = name;
        }
        let shown = parts.iter().fold(self.root_path.clone(), |p, c| p.join(c));
        let (name, dirs) = parts
            .split_last()
            .ok_or_else(|| CopyError::new(ErrorKind::BadRequest, "an entry without a name"))?;
        let parent = if dirs.is_empty() {
            self.root.clone()
        } else {
            let within: PathBuf = dirs.iter().collect();
            let fd = open_beneath(
                self.root.as_fd(),
                &within,
                OFlags::DIRECTORY | OFlags::RDONLY,
            )
            .map_err(|e| {
                let at = self.root_path.join(&within);
                match e {
                    Errno::NOTDIR | Errno::LOOP => in_the_way(&at),
                    e => CopyError::errno(&at, "write beneath", e),
                }
            })?;
            Arc::new(fd)
        };
        Ok((parent, name.to_os_string(), shown))
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
        self.close_directories(Some(&header.path))?;
        let (parent, name, path) = self.destination(&header.path, &header.kind)?;
        let mode = header.mode & if self.preserve { 0o7777 } else { 0o1777 };
        let owner = header.owner;
        match header.kind {
            FileKind::Directory => {
                let created = match rustix::fs::mkdirat(&*parent, &name, Mode::from_raw_mode(0o700))
                {
                    Ok(()) => true,
                    Err(Errno::EXIST) => false,
                    Err(e) => return Err(CopyError::errno(&path, "create directory", e)),
                };
                // What is there now, never through a link: a directory we
                // made or one that was there already.
                let dir = rustix::fs::openat(
                    &*parent,
                    &name,
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| match e {
                    Errno::NOTDIR | Errno::LOOP => in_the_way(&path),
                    e => CopyError::errno(&path, "create directory", e),
                })?;
                // As cp and scp: a directory that was there keeps its
                // owner and mode (a private home, the sticky bit of /tmp)
                // unless -p asks for the sender's. The mode waits until
                // the directory's entries are written; until then a new
                // one is its owner's to write in.
                if created || self.preserve {
                    let dir = File::from(dir);
                    apply_owner(&dir, owner, &path)?;
                    if created {
                        dir.set_permissions(std::fs::Permissions::from_mode(mode | 0o700))
                            .map_err(|e| CopyError::io(&path, "set the mode of", &e))?;
                    }
                    let dir = if self.open_dirs.len() < HELD_DIRECTORIES {
                        HeldDirectory::Open(dir)
                    } else {
                        let within = path.strip_prefix(&self.root_path).map_err(|_| {
                            CopyError::new(ErrorKind::Internal, "a directory outside the copy")
                        })?;
                        HeldDirectory::Beneath(within.to_path_buf())
                    };
                    self.open_dirs.push(OpenDirectory {
                        stream: header.path.clone(),
                        dir,
                        mode,
                        shown: path,
                    });
                }
                self.entries += 1;
            }
            FileKind::Symlink { target } => {
                let temp = temp_name(&name);
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &*parent, &temp)
                    .map_err(|e| CopyError::errno(&path, "create link", e))?;
                let placed = own_link(&parent, &temp, owner, &path).and_then(|()| {
                    rustix::fs::renameat(&*parent, &temp, &*parent, &name)
                        .map_err(|e| CopyError::errno(&path, "put in place", e))
                });
                if let Err(e) = placed {
                    let _ = rustix::fs::unlinkat(&*parent, &temp, AtFlags::empty());
                    return Err(e);
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
                let temp = temp_name(&name);
                let file = rustix::fs::openat(
                    &*parent,
                    &temp,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| CopyError::errno(&path, "create", e))?;
                if self.allocate && size > 0 {
                    let _ = rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, size);
                }
                self.current = Some(Incoming {
                    parent,
                    temp,
                    name,
                    shown: path,
                    file: File::from(file),
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
                    incoming.shown.display(),
                    incoming.size
                ),
            ));
        }
        incoming.hasher.update(chunk);
        incoming
            .file
            .write_all(chunk)
            .map_err(|e| CopyError::io(&incoming.shown, "write", &e))?;
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
        let path = incoming.shown.clone();
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
        // Through the descriptor, never the name: whatever is at the
        // temporary name by now is not what we change. Owner before mode:
        // a change of owner clears set-id bits.
        apply_owner(&incoming.file, incoming.owner, &path)?;
        incoming
            .file
            .set_permissions(std::fs::Permissions::from_mode(incoming.mode))
            .map_err(|e| CopyError::io(&path, "set the mode of", &e))?;
        incoming
            .file
            .set_times(FileTimes::new().set_modified(system_time(incoming.mtime)))
            .map_err(|e| CopyError::io(&path, "set the time of", &e))?;
        incoming
            .file
            .sync_all()
            .map_err(|e| CopyError::io(&path, "sync", &e))?;
        // Someone who can write the directory may have swapped the
        // temporary name for something else meanwhile: never put that in
        // place of the file.
        let ours =
            rustix::fs::fstat(&incoming.file).map_err(|e| CopyError::errno(&path, "sync", e))?;
        let there =
            rustix::fs::statat(&*incoming.parent, &incoming.temp, AtFlags::SYMLINK_NOFOLLOW);
        if !there.is_ok_and(|t| t.st_ino == ours.st_ino && t.st_dev == ours.st_dev) {
            return Err(CopyError::new(
                ErrorKind::BadRequest,
                format!(
                    "{}: its temporary file was replaced while it was written; nothing was put in place",
                    path.display()
                ),
            ));
        }
        rustix::fs::renameat(
            &*incoming.parent,
            &incoming.temp,
            &*incoming.parent,
            &incoming.name,
        )
        .map_err(|e| CopyError::errno(&path, "put in place", e))?;
        self.entries += 1;
        self.bytes += incoming.size;
        // `incoming` drops here; its temporary name no longer exists.
        Ok(())
    }

    /// Whether a file is still open (the stream ended early).
    pub fn in_file(&self) -> bool {
        self.current.is_some()
    }

    /// The sender says the tree is complete: the directories still open
    /// take their modes; the entries and bytes put in place.
    ///
    /// # Errors
    /// A protocol error saying `unfinished` when a file is still open, or
    /// when a pull's entry never came (an agent sends it or says why not);
    /// a mode that cannot be set.
    pub fn complete(&mut self, unfinished: &str) -> Result<(u64, u64), CopyError> {
        if self.in_file() {
            return Err(CopyError::new(ErrorKind::Protocol, unfinished));
        }
        if let (Some(expected), None) = (&self.expected, &self.top) {
            return Err(CopyError::new(
                ErrorKind::Protocol,
                format!(
                    "the agent ended the copy without sending {:?}",
                    String::from_utf8_lossy(&expected.name)
                ),
            ));
        }
        self.close_directories(None)?;
        Ok((self.entries, self.bytes))
    }

    /// Gives each open directory that the entry named `next` is not inside
    /// (at the end, `None`: all) its mode, innermost first. The stream is
    /// depth first, so such a directory has received all its entries; and
    /// each open directory is inside the one before it, so those that hold
    /// `next` come first.
    fn close_directories(&mut self, next: Option<&[u8]>) -> Result<(), CopyError> {
        let holding = self
            .open_dirs
            .iter()
            .take_while(|open| next.is_some_and(|raw| open.holds(raw)))
            .count();
        for open in self.open_dirs.drain(holding..).rev() {
            open.close(self.root.as_fd())?;
        }
        Ok(())
    }
}

/// Gives the open `file` the sent owner, when the copy keeps owners.
fn apply_owner(file: &File, owner: Option<Owner>, path: &Path) -> Result<(), CopyError> {
    let Some(owner) = owner else {
        return Ok(());
    };
    std::os::unix::fs::fchown(file, Some(owner.uid), Some(owner.gid))
        .map_err(|e| CopyError::io(path, "set the owner of", &e))
}

/// Gives the link we just made at `temp` the sent owner: through a
/// descriptor of the link itself, checked to be a link, so that nothing
/// swapped in at that name is changed.
fn own_link(
    parent: &OwnedFd,
    temp: &OsStr,
    owner: Option<Owner>,
    path: &Path,
) -> Result<(), CopyError> {
    let Some(owner) = owner else {
        return Ok(());
    };
    let link = rustix::fs::openat(
        parent,
        temp,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| CopyError::errno(path, "set the owner of", e))?;
    let stat =
        rustix::fs::fstat(&link).map_err(|e| CopyError::errno(path, "set the owner of", e))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Symlink {
        return Err(swapped(path));
    }
    rustix::fs::chownat(
        &link,
        "",
        Some(rustix::fs::Uid::from_raw(owner.uid)),
        Some(rustix::fs::Gid::from_raw(owner.gid)),
        AtFlags::EMPTY_PATH,
    )
    .map_err(|e| CopyError::errno(path, "set the owner of", e))
}

/// The longest name a directory entry may have, in bytes (Linux's
/// `NAME_MAX`).
const NAME_MAX: usize = 255;

/// A fresh temporary name beside `name`: `.NAME.rexec-RANDOM`, hidden,
/// in the same directory so the final rename is atomic. A long NAME is cut
/// short so that the whole fits in [`NAME_MAX`] and any name can be
/// copied; 64 random bits keep it unique. Random, not the process id and a
/// counter: anyone who may write in a shared destination could plant the
/// names to come, and every copy there would fail on the first.
fn temp_name(name: &OsStr) -> OsString {
    use ring::rand::SecureRandom;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut random = [0u8; 8];
    let suffix = if ring::rand::SystemRandom::new().fill(&mut random).is_ok() {
        format!(".rexec-{:016x}", u64::from_le_bytes(random))
    } else {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!(".rexec-{}-{n}", std::process::id())
    };
    let room = NAME_MAX.saturating_sub(1 + suffix.len());
    let name = name.as_bytes();
    let mut temp = Vec::with_capacity(NAME_MAX);
    temp.push(b'.');
    // Names are bytes here: a cut inside a UTF-8 character is still a
    // valid name.
    temp.extend_from_slice(&name[..name.len().min(room)]);
    temp.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(temp)
}

/// Whether `name` is one of our temporary names (for tests and cleanup).
pub fn is_temp_name(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.starts_with(b".") && name.windows(7).any(|w| w == b".rexec-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn header(path: &'static [u8], kind: FileKind, mode: u32) -> CopyItem {
        CopyItem::File(FileHeader {
            path: Bytes::from_static(path),
            kind,
            mode,
            mtime: 0,
            owner: None,
        })
    }

    fn link(path: &'static [u8], target: &'static [u8]) -> CopyItem {
        header(
            path,
            FileKind::Symlink {
                target: Bytes::from_static(target),
            },
            0o777,
        )
    }

    /// Writes `items` in order; the first error.
    fn write_all(writer: &mut TreeWriter, items: Vec<CopyItem>) -> Result<(), CopyError> {
        for item in items {
            writer.item(item)?;
        }
        Ok(())
    }

    /// Announces a file `f` of `size` bytes and writes `data` of it,
    /// leaving the file unfinished.
    fn start_file_f(writer: &mut TreeWriter, size: u64, data: &'static [u8]) {
        let items = vec![
            header(b"f", FileKind::File { size }, 0o644),
            CopyItem::Data(Bytes::from_static(data)),
        ];
        write_all(writer, items).unwrap();
    }

    fn file(path: &'static [u8], data: &'static [u8]) -> Vec<CopyItem> {
        vec![
            header(
                path,
                FileKind::File {
                    size: data.len() as u64,
                },
                0o644,
            ),
            CopyItem::Data(Bytes::from_static(data)),
            CopyItem::End(FileEnd {
                blake3: Bytes::copy_from_slice(blake3::hash(data).as_bytes()),
                changed: false,
            }),
        ]
    }

    #[test]
    fn links_the_stream_placed_are_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::create_dir(&victim).unwrap();
        let dest = dir.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let victim_target = victim.as_os_str().as_bytes().to_vec().leak();
        // A link then a file beneath it; a link to the parent; a link to
        // an absolute path then a directory beneath it.
        let attempts: Vec<Vec<CopyItem>> = vec![
            [
                vec![
                    header(b"t", FileKind::Directory, 0o755),
                    link(b"t/s", victim_target),
                ],
                file(b"t/s/pwned", b"x"),
            ]
            .concat(),
            [
                vec![
                    header(b"t", FileKind::Directory, 0o755),
                    link(b"t/up", b".."),
                ],
                file(b"t/up/pwned", b"x"),
            ]
            .concat(),
            vec![
                header(b"t", FileKind::Directory, 0o755),
                link(b"t/abs", victim_target),
                header(b"t/abs/d", FileKind::Directory, 0o777),
            ],
        ];
        for items in attempts {
            let mut writer = TreeWriter::new(Placement::into_dir(&dest).unwrap(), None);
            let err = write_all(&mut writer, items).unwrap_err();
            assert!(err.message.contains("is in the way"), "{err}");
            assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
            assert!(!dir.path().join("pwned").exists());
        }
    }

    #[test]
    fn a_planted_link_is_refused_as_a_directory_and_replaced_as_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        std::os::unix::fs::symlink(&victim, shared.join("site")).unwrap();
        let mut writer = TreeWriter::new(Placement::into_dir(&shared).unwrap(), None);
        let items = [
            vec![header(b"site", FileKind::Directory, 0o777)],
            file(b"site/index", b"x"),
        ]
        .concat();
        let err = write_all(&mut writer, items).unwrap_err();
        assert!(err.message.contains("is in the way"), "{err}");
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
        let mode = fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the link's target keeps its mode");
        // As the final component a file replaces the link itself.
        let mut writer = TreeWriter::new(Placement::into_dir(&shared).unwrap(), None);
        write_all(&mut writer, file(b"site", b"new")).unwrap();
        assert!(fs::symlink_metadata(shared.join("site")).unwrap().is_file());
        assert_eq!(fs::read(shared.join("site")).unwrap(), b"new");
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
    }

    #[test]
    fn a_pull_accepts_only_the_entry_it_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(bool, Vec<CopyItem>)> = vec![
            (
                false,
                [file(b"syslog", b"log"), file(b".bashrc", b"evil")].concat(),
            ),
            (false, file(b".bashrc", b"evil")),
            (
                false,
                [file(b"syslog", b"log"), file(b"syslog", b"again")].concat(),
            ),
            (
                true,
                [file(b"syslog", b"log"), file(b"syslog/x", b"x")].concat(),
            ),
            (
                false,
                [
                    vec![header(b"syslog", FileKind::Directory, 0o755)],
                    file(b"syslog/x", b"x"),
                ]
                .concat(),
            ),
        ];
        for (recursive, items) in cases {
            let local = tempfile::tempdir_in(dir.path()).unwrap();
            let mut writer = TreeWriter::new(Placement::into_dir(local.path()).unwrap(), None)
                .expecting(b"syslog", recursive);
            let err = write_all(&mut writer, items).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Protocol, "{err}");
            assert!(!local.path().join(".bashrc").exists());
            assert!(!local.path().join("syslog/x").exists());
        }
        let local = dir.path().join("ok");
        fs::create_dir(&local).unwrap();
        let mut writer =
            TreeWriter::new(Placement::into_dir(&local).unwrap(), None).expecting(b"etc", true);
        let items = [
            vec![header(b"etc", FileKind::Directory, 0o755)],
            file(b"etc/hosts", b"h"),
        ]
        .concat();
        write_all(&mut writer, items).unwrap();
        assert_eq!(fs::read(local.join("etc/hosts")).unwrap(), b"h");
    }

    #[test]
    fn a_read_only_directory_takes_its_mode_once_its_entries_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |name: &str| {
            fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        let mut writer = TreeWriter::new(Placement::into_dir(dir.path()).unwrap(), None);
        let items = [
            vec![
                header(b"cache", FileKind::Directory, 0o555),
                header(b"cache/mod", FileKind::Directory, 0o555),
            ],
            file(b"cache/mod/go.mod", b"module"),
        ]
        .concat();
        write_all(&mut writer, items).unwrap();
        // Still receiving entries: their owner may write in them.
        assert_eq!((mode("cache"), mode("cache/mod")), (0o755, 0o755));
        // An entry beside it: cache/mod is complete.
        write_all(&mut writer, file(b"cache/sum", b"sum")).unwrap();
        assert_eq!((mode("cache"), mode("cache/mod")), (0o755, 0o555));
        writer.complete("unfinished").unwrap();
        assert_eq!((mode("cache"), mode("cache/mod")), (0o555, 0o555));
        assert_eq!(
            fs::read(dir.path().join("cache/mod/go.mod")).unwrap(),
            b"module"
        );
        // So that a user who is not root can remove the temporary tree.
        for name in ["cache", "cache/mod"] {
            fs::set_permissions(dir.path().join(name), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn a_deep_tree_holds_few_descriptors_and_every_directory_takes_its_mode() {
        const DEPTH: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let opened_inside = || {
            fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter_map(|fd| fs::read_link(fd.path()).ok())
                .filter(|to| to.starts_with(dir.path()))
                .count()
        };
        let mut writer = TreeWriter::new(Placement::into_dir(dir.path()).unwrap(), None);
        let mut path = Vec::new();
        for _ in 0..DEPTH {
            if !path.is_empty() {
                path.push(b'/');
            }
            path.push(b'd');
            let item = CopyItem::File(FileHeader {
                path: Bytes::from(path.clone()),
                kind: FileKind::Directory,
                mode: 0o555,
                mtime: 0,
                owner: None,
            });
            writer.item(item).unwrap();
        }
        // The root and the directories held, not one per level.
        const { assert!(HELD_DIRECTORIES + 1 < DEPTH / 4) };
        let held = opened_inside();
        assert!(held <= HELD_DIRECTORIES + 1, "{held} open");
        writer.complete("unfinished").unwrap();
        drop(writer);
        assert_eq!(opened_inside(), 0);
        let mut at = dir.path().to_path_buf();
        for level in 0..DEPTH {
            at.push("d");
            let mode = fs::symlink_metadata(&at).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o555, "level {level}");
        }
        // So that a user who is not root can remove the temporary tree.
        while at != dir.path() {
            fs::set_permissions(&at, fs::Permissions::from_mode(0o755)).unwrap();
            at.pop();
        }
    }

    #[test]
    fn a_temporary_name_fits_in_a_directory_entry_whatever_the_name() {
        let longest = "\u{e9}".repeat(127) + "x";
        for name in ["f", longest.as_str()] {
            let temp = temp_name(OsStr::new(name));
            assert!(temp.len() <= NAME_MAX, "{} bytes", temp.len());
            assert!(is_temp_name(&temp), "{temp:?}");
        }
        assert_ne!(
            temp_name(OsStr::new(&longest)),
            temp_name(OsStr::new(&longest))
        );
        // Nothing another user could work out ahead: 64 random bits.
        let temp = temp_name(OsStr::new("f")).into_vec();
        let random = temp.strip_prefix(b".f.rexec-").expect("our form");
        assert_eq!(random.len(), 16, "{temp:?}");
        assert!(random.iter().all(u8::is_ascii_hexdigit), "{temp:?}");
    }

    #[test]
    fn a_pull_that_ends_before_its_entry_came_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = TreeWriter::new(Placement::into_dir(dir.path()).unwrap(), None)
            .expecting(b"syslog", false);
        let err = writer.complete("unfinished").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Protocol, "{err}");
        // A push expects nothing in particular: an empty one is done.
        let mut writer = TreeWriter::new(Placement::into_dir(dir.path()).unwrap(), None);
        assert_eq!(writer.complete("unfinished").unwrap(), (0, 0));
    }

    #[test]
    fn set_id_bits_are_dropped_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        for (keep, want) in [(false, 0o755), (true, 0o6755)] {
            let mut items = file(b"tool", b"#!");
            if let CopyItem::File(h) = &mut items[0] {
                h.mode = 0o6755;
            }
            let mut writer =
                TreeWriter::new(Placement::into_dir(dir.path()).unwrap(), None).preserving(keep);
            write_all(&mut writer, items).unwrap();
            let mode = fs::metadata(dir.path().join("tool"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, want, "keep {keep}");
        }
    }

    #[test]
    fn a_new_name_takes_the_file_and_its_parent_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        for exists in [false, true] {
            let target = dir.path().join("app.conf");
            if exists {
                fs::write(&target, b"old").unwrap();
            }
            let mut writer = TreeWriter::new(Placement::for_destination(&target).unwrap(), None);
            write_all(&mut writer, file(b"local.conf", b"new")).unwrap();
            assert_eq!(fs::read(&target).unwrap(), b"new");
        }
        for bad in ["missing/app.conf", "nodir/"] {
            let err = Placement::for_destination(&dir.path().join(bad)).unwrap_err();
            assert!(err.message.contains("no such directory"), "{err}");
        }
    }

    #[test]
    fn an_allocating_writer_holds_a_files_blocks_before_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let probe = File::create(dir.path().join("probe")).unwrap();
        if rustix::fs::fallocate(&probe, FallocateFlags::empty(), 0, 4096).is_err() {
            eprintln!("skipped: this file system does not allocate ahead");
            return;
        }
        drop(probe);
        fs::remove_file(dir.path().join("probe")).unwrap();
        let into = || Placement::into_dir(dir.path()).unwrap();
        let size = 1 << 20;
        let mut writer = TreeWriter::new(into(), None).allocating_whole_files();
        start_file_f(&mut writer, size, b"x");
        let temp = fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap();
        let meta = temp.metadata().unwrap();
        assert!(meta.blocks() * 512 >= size, "{} blocks", meta.blocks());
        drop(writer);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "removed");
        // A finished file holds its data and no more.
        let mut writer = TreeWriter::new(into(), None).allocating_whole_files();
        write_all(&mut writer, file(b"g", b"new")).unwrap();
        assert_eq!(fs::read(dir.path().join("g")).unwrap(), b"new");
    }

    fn read_everything(reader: &mut TreeReader) -> Result<Vec<CopyItem>, CopyError> {
        let mut items = Vec::new();
        while let Some(item) = reader.next_item()? {
            items.push(item);
        }
        Ok(items)
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(CWD, &fifo, Mode::from_raw_mode(0o644)).unwrap();
        let err = read_everything(&mut TreeReader::new(&fifo, false).unwrap()).unwrap_err();
        assert!(err.message.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_fifo_swapped_in_for_a_listed_file_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("was-a-file");
        rustix::fs::mkfifoat(CWD, &fifo, Mode::from_raw_mode(0o644)).unwrap();
        // No writer ever opens it: a blocking open would wait forever.
        let err = open_regular(CWD, &fifo, &fifo).unwrap_err();
        assert!(err.message.contains("changed kind"), "{err}");
    }

    #[test]
    fn a_file_that_grows_is_cut_at_its_size_and_marked_changed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        fs::write(&log, vec![1u8; 1000]).unwrap();
        let mut reader = TreeReader::new(&log, false).unwrap();
        let first = reader.next_item().unwrap();
        assert!(matches!(
            first,
            Some(CopyItem::File(FileHeader {
                kind: FileKind::File { size: 1000 },
                ..
            }))
        ));
        fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(&[2u8; 500])
            .unwrap();
        let rest = read_everything(&mut reader).unwrap();
        let data: usize = rest
            .iter()
            .map(|i| {
                if let CopyItem::Data(d) = i {
                    d.len()
                } else {
                    0
                }
            })
            .sum();
        assert_eq!(data, 1000);
        assert!(matches!(
            rest.last(),
            Some(CopyItem::End(FileEnd { changed: true, .. }))
        ));
    }

    #[test]
    fn a_proc_file_of_size_zero_is_copied_whole() {
        let status = Path::new("/proc/self/status");
        assert_eq!(fs::metadata(status).unwrap().len(), 0);
        let items = read_everything(&mut TreeReader::new(status, false).unwrap()).unwrap();
        let Some(CopyItem::File(FileHeader {
            kind: FileKind::File { size },
            ..
        })) = items.first()
        else {
            panic!("{items:?}");
        };
        let data: Vec<u8> = items
            .iter()
            .flat_map(|i| {
                if let CopyItem::Data(d) = i {
                    d.to_vec()
                } else {
                    Vec::new()
                }
            })
            .collect();
        assert!(*size > 0);
        assert_eq!(data.len() as u64, *size);
        assert!(data.starts_with(b"Name:"));
    }

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
        let mut writer = TreeWriter::new(Placement::into_dir(&dest).unwrap(), None);
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
        let writer = copy_tree(&src, Placement::into_dir(&out).unwrap()).unwrap();
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
        copy_tree(&src, Placement::for_destination(&renamed).unwrap()).unwrap();
        assert_eq!(fs::read(renamed.join("new\nline")).unwrap(), b"x");
    }

    #[test]
    fn a_bad_checksum_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"old").unwrap();
        let mut writer = TreeWriter::new(Placement::for_destination(&target).unwrap(), None);
        start_file_f(&mut writer, 3, b"new");
        let err = writer
            .item(CopyItem::End(FileEnd {
                blake3: Bytes::from_static(&[0; 32]),
                changed: false,
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
        let mut writer = TreeWriter::new(Placement::into_dir(dir.path()).unwrap(), None);
        start_file_f(&mut writer, 10, b"half");
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
        let mut writer = TreeWriter::new(Placement::into_dir(dir.path()).unwrap(), Some(5));
        let err = writer
            .item(header(b"f", FileKind::File { size: 6 }, 0o644))
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
