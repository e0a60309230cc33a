//! The authorized clients file: which client fingerprints may connect, each
//! with a name for the logs.
//!
//! The file is plain text, one client per line: `SHA256:<base64> NAME`, with
//! `#` comments (a whole line, or the rest of one) and blank lines allowed.
//! A name is unique: `authorize` refuses one that another key already has.
//! A client given no name, on the command line or in the file, is named
//! after its fingerprint ([`default_name`]), so that each has its own.
//!
//! `authorize` and `revoke` change the file under a lock
//! (`authorized_clients.lock` beside it), from the file as it is then, so
//! that several run at once lose no update and a revocation is never undone
//! by an authorization that read the file before it. The new text goes to a
//! temporary file created exclusively beside the old one, with the old one's
//! mode and owner (0644 and ours for a new file), and is renamed into place
//! once on disk.
//!
//! Whoever can write the file can authorize themselves, so, as ssh's
//! `StrictModes`, the file and its directory must not be writable by group
//! or others, and must belong to root or to the agent's own user. The agent
//! refuses to start with a file that fails this; a file that comes to fail
//! it while the agent runs grants nothing new: the clients already
//! authorized stay (under their names as last read), less any the file no
//! longer lists, until it is fixed. `authorize` refuses to add to such a
//! file; `revoke`, which only takes access away, still works.
//!
//! The agent notices edits by itself:
//! every lookup compares the file's modification time, size, inode, mode
//! and owner, and its directory's mode and owner, with what it last read
//! (two `stat`s, far cheaper than the handshake they guard) and re-reads it
//! when they differ; SIGHUP forces a re-read. A missing or unreadable file
//! authorizes nobody: the agent fails closed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use rexec_protocol::Fingerprint;
use rexec_protocol::tls::ClientAuthorizer;

/// One authorized client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedClient {
    /// The client's key fingerprint.
    pub fingerprint: Fingerprint,
    /// A name for logs and for `revoke`.
    pub name: String,
}

/// A malformed line in the authorized clients file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// How many characters of the fingerprint, after `SHA256:`, name a client
/// that was given no name: 48 bits, so two keys of one site do not share
/// one by chance (and `authorize` refuses the second if they ever do).
const DEFAULT_NAME_CHARS: usize = 8;

/// The name of a client given none: the start of its fingerprint, as
/// `SHA256:AbCdEfGh`, which tells its holder which key it is.
pub fn default_name(fingerprint: &Fingerprint) -> String {
    fingerprint
        .to_string()
        .chars()
        .take("SHA256:".len() + DEFAULT_NAME_CHARS)
        .collect()
}

/// Parses the file's bytes; good lines are kept even when others are bad.
/// A comment may be in any encoding (an admin's `# café` in Latin-1); an
/// entry must be UTF-8. A key listed twice, or a name a second key claims,
/// is a bad line: the first line counts, so that a hand edit cannot give
/// one client's name, and with it its `[run_as]` rules, to another key.
pub fn parse(text: impl AsRef<[u8]>) -> (Vec<AuthorizedClient>, Vec<BadLine>) {
    let mut clients: Vec<AuthorizedClient> = Vec::new();
    let mut lines_of: Vec<usize> = Vec::new();
    let mut bad = Vec::new();
    for (index, raw) in text.as_ref().split(|b| *b == b'\n').enumerate() {
        let number = index + 1;
        let mut complain = |reason: String| {
            bad.push(BadLine {
                line: number,
                reason,
            });
        };
        // Neither fingerprints nor names contain `#`: the rest is a comment.
        let entry = raw.split(|b| *b == b'#').next().unwrap_or_default();
        let Ok(line) = std::str::from_utf8(entry) else {
            complain("not UTF-8 text".to_owned());
            continue;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (fingerprint, name) = match line.split_once(char::is_whitespace) {
            Some((fp, name)) => (fp, name.trim()),
            None => (line, ""),
        };
        let fingerprint = match fingerprint.parse::<Fingerprint>() {
            Ok(fingerprint) => fingerprint,
            Err(e) => {
                complain(e.to_string());
                continue;
            }
        };
        let name = if name.is_empty() {
            default_name(&fingerprint)
        } else {
            name.to_owned()
        };
        if let Some(i) = clients.iter().position(|c| c.fingerprint == fingerprint) {
            complain(format!(
                "this key is listed on line {} already, which counts",
                lines_of[i]
            ));
            continue;
        }
        if let Some(i) = clients.iter().position(|c| c.name == name) {
            complain(format!(
                "the name {name:?} belongs to the key on line {}",
                lines_of[i]
            ));
            continue;
        }
        clients.push(AuthorizedClient { name, fingerprint });
        lines_of.push(number);
    }
    (clients, bad)
}

/// The key a line of the file lists, if it lists one.
fn listed_key(line: &[u8]) -> Option<Fingerprint> {
    parse(line).0.first().map(|c| c.fingerprint)
}

/// Why the clients file, or its directory, is not to be trusted: someone
/// other than root and the agent's user can change what it says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// Group or others may write it.
    #[error(
        "{} is writable by {who} (mode {mode:04o}), who could authorize themselves: the agent does not trust it (run: chmod go-w {})",
        .path.display(),
        .path.display()
    )]
    Writable {
        /// The file or the directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// `group`, `others`, or both.
        who: &'static str,
    },
    /// It belongs to someone else.
    #[error(
        "{} belongs to uid {uid}, neither root nor the agent's user: the agent does not trust it (run: chown {owner} {})",
        .path.display(),
        .path.display()
    )]
    Owner {
        /// The file or the directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Whom it should belong to: root, or the agent's user when that
        /// is not root.
        owner: String,
    },
}

/// Whether `meta`, the metadata of `path`, lets only root or us change it.
fn check_trusted(path: &Path, meta: &fs::Metadata) -> Result<(), Untrusted> {
    let us = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != us {
        return Err(Untrusted::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
            owner: if us == 0 {
                "root".into()
            } else {
                us.to_string()
            },
        });
    }
    let mode = meta.mode() & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "group",
        (false, true) => "others",
        (true, true) => "group and others",
    };
    Err(Untrusted::Writable {
        path: path.to_path_buf(),
        mode,
        who,
    })
}

/// Whether the clients file at `path`, if there is one, and its directory
/// let only root or us change them.
///
/// # Errors
/// What is wrong with the first of the two that fails (the directory
/// first). One that cannot be looked at is left to the read that follows.
pub fn check_file(path: &Path) -> Result<(), Untrusted> {
    let dir = dir_of(path);
    if let Ok(meta) = fs::metadata(dir) {
        check_trusted(dir, &meta)?;
    }
    match fs::metadata(path) {
        Ok(meta) => check_trusted(path, &meta),
        Err(_) => Ok(()),
    }
}

/// What of a file and its directory tells us it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    /// Mode and owner, of the file and of its directory: fixing either is
    /// seen without a SIGHUP.
    access: (u32, u32),
    dir_access: Option<(u32, u32)>,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = fs::metadata(path).ok()?;
        Some(FileStamp::from(path, &meta))
    }

    fn from(path: &Path, meta: &fs::Metadata) -> FileStamp {
        FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
            access: (meta.mode(), meta.uid()),
            dir_access: fs::metadata(dir_of(path))
                .ok()
                .map(|dir| (dir.mode(), dir.uid())),
        }
    }
}

#[derive(Debug, Default)]
struct Loaded {
    stamp: Option<FileStamp>,
    clients: Vec<AuthorizedClient>,
}

/// What reading the file found.
enum Reading {
    /// The clients it lists, and its lines we could not read.
    Trusted(Vec<AuthorizedClient>, Vec<BadLine>),
    /// Someone else could have written it; what it lists, for revocations
    /// only.
    Untrusted(Untrusted, Vec<AuthorizedClient>),
    /// It could not be read.
    Unreadable(io::Error),
}

/// Reads the file at `path`: its stamp, taken from the file we read, and
/// what it says.
fn read_clients(path: &Path) -> (Option<FileStamp>, Reading) {
    use std::io::Read;
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) => return (FileStamp::of(path), Reading::Unreadable(e)),
    };
    let meta = match file.metadata() {
        Ok(meta) => meta,
        Err(e) => return (None, Reading::Unreadable(e)),
    };
    let stamp = Some(FileStamp::from(path, &meta));
    let mut text = Vec::new();
    if let Err(e) = file.read_to_end(&mut text) {
        return (stamp, Reading::Unreadable(e));
    }
    let (clients, bad) = parse(&text);
    let dir = dir_of(path);
    let trusted = match fs::metadata(dir) {
        Ok(dir_meta) => check_trusted(dir, &dir_meta),
        Err(_) => Ok(()),
    }
    .and_then(|()| check_trusted(path, &meta));
    match trusted {
        Ok(()) => (stamp, Reading::Trusted(clients, bad)),
        Err(untrusted) => (stamp, Reading::Untrusted(untrusted, clients)),
    }
}

/// The authorized clients file, kept current as it changes.
#[derive(Debug)]
pub struct AuthorizedClients {
    path: PathBuf,
    loaded: RwLock<Loaded>,
    /// Anyone can present a certificate, as often as they can connect.
    refused: Mutex<RefusedKeys>,
}

/// How long refused keys are counted before a line sums them up.
const REFUSED_KEYS_INTERVAL: Duration = Duration::from_secs(10);
/// Refused keys logged one by one per interval; the rest are counted.
const REFUSED_KEY_LINES: u32 = 20;

/// This interval's lines about unknown keys, and those not logged.
#[derive(Debug, Default)]
struct RefusedKeys {
    started: Option<Instant>,
    lines: u32,
    unlogged: u64,
}

impl RefusedKeys {
    /// Whether this refusal gets a line of its own; past the interval, what
    /// was only counted is logged first.
    fn take_line(&mut self, now: Instant) -> bool {
        let started = *self.started.get_or_insert(now);
        if now.duration_since(started) >= REFUSED_KEYS_INTERVAL {
            if self.unlogged > 0 {
                tracing::warn!(
                    "{} more clients refused in the last {}s for a fingerprint not authorized, not logged one by one",
                    self.unlogged,
                    now.duration_since(started).as_secs()
                );
            }
            *self = RefusedKeys {
                started: Some(now),
                ..RefusedKeys::default()
            };
        }
        if self.lines < REFUSED_KEY_LINES {
            self.lines += 1;
            return true;
        }
        self.unlogged += 1;
        false
    }
}

impl AuthorizedClients {
    /// Watches `path`; reads it now. A missing or unreadable file
    /// authorizes nobody until it can be read.
    ///
    /// # Errors
    /// When the file or its directory can be changed by someone other
    /// than root and the agent's user ([`Untrusted`]).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, Untrusted> {
        let store = AuthorizedClients {
            path: path.into(),
            loaded: RwLock::new(Loaded::default()),
            refused: Mutex::default(),
        };
        let (stamp, reading) = read_clients(&store.path);
        if let Reading::Untrusted(untrusted, _) = reading {
            return Err(untrusted);
        }
        store.take(stamp, reading);
        Ok(store)
    }

    /// The file this store reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file now, whether or not it changed. Returns how many
    /// clients are authorized now.
    pub fn reload(&self) -> usize {
        let (stamp, reading) = read_clients(&self.path);
        self.take(stamp, reading)
    }

    /// Puts what reading the file found in place of what it said before.
    /// A file someone else could have written grants nothing new: of the
    /// clients authorized, those it no longer lists are dropped, the rest
    /// stay as they were (a rename there could change what run-as rules
    /// allow).
    fn take(&self, stamp: Option<FileStamp>, reading: Reading) -> usize {
        let mut loaded = self.loaded.write().unwrap_or_else(PoisonError::into_inner);
        let clients = match reading {
            Reading::Trusted(clients, bad) => {
                for bad in bad {
                    tracing::warn!(
                        file = %self.path.display(),
                        line = bad.line,
                        reason = %bad.reason,
                        "ignoring a line of the authorized clients file"
                    );
                }
                clients
            }
            Reading::Untrusted(untrusted, listed) => {
                let kept: Vec<AuthorizedClient> = loaded
                    .clients
                    .iter()
                    .filter(|c| listed.iter().any(|l| l.fingerprint == c.fingerprint))
                    .cloned()
                    .collect();
                let clients = match kept.len() {
                    1 => "the 1 client".to_owned(),
                    n => format!("the {n} clients"),
                };
                tracing::warn!(
                    "{untrusted}; keeping {clients} authorized before that it still lists, and no other, until it is fixed"
                );
                kept
            }
            Reading::Unreadable(e) => {
                tracing::warn!(
                    file = %self.path.display(),
                    error = %rexec_protocol::plain::io_error(&e),
                    "cannot read authorized clients file; no client is authorized"
                );
                Vec::new()
            }
        };
        let count = clients.len();
        *loaded = Loaded { stamp, clients };
        tracing::debug!(file = %self.path.display(), clients = count, "authorized clients loaded");
        count
    }

    fn reload_if_changed(&self) {
        let current = FileStamp::of(&self.path);
        let seen = self
            .loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .stamp;
        if current != seen {
            self.reload();
        }
    }

    /// The client with this fingerprint, if authorized (re-reading the file
    /// first if it changed).
    pub fn lookup(&self, fingerprint: &Fingerprint) -> Option<AuthorizedClient> {
        self.reload_if_changed();
        self.as_loaded(fingerprint)
    }

    /// The client with this fingerprint as the file read last says, without
    /// looking whether it changed since: for the session naming the client
    /// that the handshake has just checked with [`Self::lookup`], one look at
    /// the file per connection being enough. A change since then that is already
    /// loaded is seen; one not yet loaded counts as made a moment later.
    pub fn as_loaded(&self, fingerprint: &Fingerprint) -> Option<AuthorizedClient> {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clients
            .iter()
            .find(|c| c.fingerprint == *fingerprint)
            .cloned()
    }
}

impl ClientAuthorizer for AuthorizedClients {
    fn is_authorized(&self, fingerprint: &Fingerprint) -> bool {
        let found = self.lookup(fingerprint).is_some();
        let line = || {
            self.refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take_line(Instant::now())
        };
        if !found && line() {
            tracing::warn!(fingerprint = %fingerprint, "refusing client: fingerprint not authorized");
        }
        found
    }
}

/// Why a client could not be authorized.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// Another key already has the name.
    #[error(
        "the name {name:?} is already taken by {fingerprint}: choose another, or revoke that one first"
    )]
    NameTaken {
        /// The name asked for.
        name: String,
        /// The key that has it.
        fingerprint: Fingerprint,
    },
    /// The file or its directory can be changed by someone else: the
    /// agent would not take the new entry.
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    /// The file could not be read or written.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Whether `name` can name a client: not empty, no `#` (which starts a
/// comment in the file), no control characters, no space at either end.
///
/// # Errors
/// A one-line message saying what is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("a client name cannot be empty".into());
    }
    if name.trim() != name {
        return Err("a client name cannot begin or end with a space".into());
    }
    if name.contains('#') {
        return Err("a client name cannot contain `#`, which starts a comment in the file".into());
    }
    if name.chars().any(char::is_control) {
        return Err("a client name cannot contain control characters".into());
    }
    if name.parse::<Fingerprint>().is_ok() {
        return Err(
            "a client name cannot be a fingerprint, which `revoke` would take for that key".into(),
        );
    }
    Ok(())
}

/// Adds a client to the file (creating it), replacing any entry with the
/// same fingerprint. Comments and other lines are kept. Returns whether an
/// entry was replaced.
///
/// # Errors
/// When another key has the same name, the file or its directory is not
/// trusted ([`check_file`]), or the file cannot be read or written.
pub fn authorize(path: &Path, client: &AuthorizedClient) -> Result<bool, AuthorizeError> {
    let _lock = lock(path)?;
    check_file(path)?;
    let text = read_or_empty(path)?;
    if let Some(other) = parse(&text)
        .0
        .into_iter()
        .find(|c| c.name == client.name && c.fingerprint != client.fingerprint)
    {
        return Err(AuthorizeError::NameTaken {
            name: client.name.clone(),
            fingerprint: other.fingerprint,
        });
    }
    let mut replaced = false;
    let mut lines: Vec<&[u8]> = Vec::new();
    for line in file_lines(&text) {
        if listed_key(line) == Some(client.fingerprint) {
            replaced = true;
            continue;
        }
        lines.push(line);
    }
    let entry = format!("{} {}", client.fingerprint, client.name);
    lines.push(entry.as_bytes());
    write_atomically(path, &lines)?;
    Ok(replaced)
}

/// Removes every entry whose fingerprint or name is `who`. Returns the
/// removed entries.
///
/// # Errors
/// When the file cannot be read or written.
pub fn revoke(path: &Path, who: &str) -> io::Result<Vec<AuthorizedClient>> {
    let _lock = match lock(path) {
        Ok(lock) => lock,
        // No directory, so no file: nobody to revoke.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let text = read_or_empty(path)?;
    let mut removed = Vec::new();
    let mut lines: Vec<&[u8]> = Vec::new();
    for line in file_lines(&text) {
        let (entry, _) = parse(line);
        match entry.first() {
            Some(c) if c.name == who || c.fingerprint.to_string() == who => removed.push(c.clone()),
            _ => lines.push(line),
        }
    }
    if !removed.is_empty() {
        write_atomically(path, &lines)?;
    }
    Ok(removed)
}

fn read_or_empty(path: &Path) -> io::Result<Vec<u8>> {
    match fs::read(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The file's lines, as bytes and without their newlines (kept as they
/// are when the file is written again).
fn file_lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    text.split(|b| *b == b'\n')
        .filter(move |_| !text.is_empty())
}

/// The mode of a clients file `authorize` creates: the list is not secret,
/// and group and others must not write it.
const NEW_FILE_MODE: u32 = 0o644;

/// What a clients file made by `rexec-agent init` says.
const NEW_FILE_HEADER: &str =
    "# Clients allowed to connect: one per line, SHA256:<fingerprint> NAME\n";

/// The directory `path` is in.
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `path`'s file name, with `before` and `after` it: the names of the
/// files we keep beside it.
fn named_after(path: &Path, before: &str, after: &str) -> std::ffi::OsString {
    let mut name = std::ffi::OsString::from(before);
    name.push(path.file_name().unwrap_or("authorized_clients".as_ref()));
    name.push(after);
    name
}

/// Creates an empty clients file (a comment saying what goes in it), mode
/// 0644 whatever the umask, unless there is one. Returns whether it made one.
///
/// # Errors
/// When the file cannot be created or written.
pub fn create(path: &Path) -> io::Result<bool> {
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(NEW_FILE_MODE)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    // The umask may have taken bits off.
    file.set_permissions(fs::Permissions::from_mode(NEW_FILE_MODE))?;
    file.write_all(NEW_FILE_HEADER.as_bytes())?;
    file.sync_all()?;
    Ok(true)
}

/// Holds the update lock, `NAME.lock` beside the file, until dropped.
fn lock(path: &Path) -> io::Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(dir_of(path).join(named_after(path, "", ".lock")))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io::Error::from(errno))
}

/// Writes `lines` to a temporary file beside `path` and renames it into
/// place, so the running agent reads either the old file or the new one.
/// The temporary file is created exclusively under a name nobody can guess
/// (no link or file planted in advance is followed or reused), gets the
/// old file's mode and owner before it takes its place, and both it and
/// the directory reach the disk before we say it is done.
fn write_atomically(path: &Path, lines: &[&[u8]]) -> io::Result<()> {
    let dir = dir_of(path);
    let old = match fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut temporary = tempfile::Builder::new()
        .prefix(&named_after(path, ".", ".tmp."))
        .tempfile_in(dir)?;
    for line in lines {
        temporary.write_all(line)?;
        temporary.write_all(b"\n")?;
    }
    let file = temporary.as_file();
    let mode = old
        .as_ref()
        .map_or(NEW_FILE_MODE, |meta| meta.permissions().mode() & 0o7777);
    if let Some(meta) = &old {
        let made = file.metadata()?;
        if (made.uid(), made.gid()) != (meta.uid(), meta.gid()) {
            std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()))?;
        }
    }
    // After the owner: a change of owner clears the set-id bits.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.sync_all()?;
    temporary.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const B: &str = "SHA256:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA";

    #[test]
    fn parses_names_comments_and_reports_bad_lines() {
        let text = format!("# admins\n{A} alice laptop\n\nnot-a-key bob\n{B}\n");
        let (clients, bad) = parse(&text);
        assert_eq!(clients.len(), 2);
        assert_eq!(clients[0].name, "alice laptop");
        assert_eq!(clients[1].name, "SHA256:BBBBBBBB");
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 4);
    }

    #[test]
    fn a_comment_in_any_encoding_is_kept_and_an_entry_must_be_text() {
        let text = [
            b"# caf\xe9 (Latin-1)\n".as_slice(),
            format!("{A} alice\n{B} ").as_bytes(),
            b"b\xe9\n",
        ]
        .concat();
        let (clients, bad) = parse(&text);
        assert_eq!(clients.len(), 1);
        assert_eq!(clients[0].name, "alice");
        assert_eq!(bad.len(), 1);
        assert_eq!((bad[0].line, bad[0].reason.as_str()), (3, "not UTF-8 text"));
        // authorize and revoke keep the comment byte for byte.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        fs::write(&path, b"# caf\xe9\n").unwrap();
        let client = AuthorizedClient {
            fingerprint: A.parse().unwrap(),
            name: "alice".into(),
        };
        authorize(&path, &client).unwrap();
        assert_eq!(revoke(&path, "alice").unwrap().len(), 1);
        assert_eq!(fs::read(&path).unwrap(), b"# caf\xe9\n");
    }

    #[test]
    fn a_key_listed_twice_and_a_name_two_keys_claim_count_once() {
        let text = format!("{A} alice\n{B} alice\n{A} bob\n");
        let (clients, bad) = parse(&text);
        assert_eq!(clients.len(), 1);
        assert_eq!(clients[0].fingerprint.to_string(), A);
        let lines: Vec<(usize, &str)> = bad.iter().map(|b| (b.line, b.reason.as_str())).collect();
        assert_eq!(
            lines,
            [
                (2, "the name \"alice\" belongs to the key on line 1"),
                (3, "this key is listed on line 1 already, which counts"),
            ]
        );
        assert!(check_name(A).is_err());
    }

    #[test]
    fn authorize_replaces_an_entry_with_a_comment_after_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        fs::write(&path, format!("{A}#old\n")).unwrap();
        let client = AuthorizedClient {
            fingerprint: A.parse().unwrap(),
            name: "alice".into(),
        };
        assert!(authorize(&path, &client).unwrap(), "replaced");
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{A} alice\n"));
    }

    #[test]
    fn a_comment_after_a_name_is_not_part_of_it() {
        let text = format!("{A} ok   # the lab's laptop\n{B}# no name\n");
        let (clients, bad) = parse(&text);
        assert_eq!(bad, vec![]);
        assert_eq!(clients[0].name, "ok");
        assert_eq!(clients[1].name, "SHA256:BBBBBBBB");
    }

    #[test]
    fn a_name_is_unique_and_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        let client = |fp: &str, name: &str| AuthorizedClient {
            fingerprint: fp.parse().unwrap(),
            name: name.into(),
        };
        authorize(&path, &client(A, "other")).unwrap();
        let e = authorize(&path, &client(B, "other")).unwrap_err();
        assert!(matches!(e, AuthorizeError::NameTaken { .. }), "{e}");
        assert_eq!(parse(fs::read_to_string(&path).unwrap()).0.len(), 1);
        // The same key may be renamed.
        assert!(authorize(&path, &client(A, "renamed")).unwrap());
        for name in ["", " ", " x", "x ", "a#b", "a\tb"] {
            assert!(check_name(name).is_err(), "{name:?}");
        }
        assert_eq!(check_name("alice laptop"), Ok(()));
    }

    #[test]
    fn clients_without_names_each_have_one_of_their_own() {
        let (a, b): (Fingerprint, Fingerprint) = (A.parse().unwrap(), nth_fingerprint(1));
        assert_eq!(default_name(&a), "SHA256:AAAAAAAA");
        assert_eq!(default_name(&b), "SHA256:u1AAAAAA");
        assert_eq!(check_name(&default_name(&b)), Ok(()));
        let (clients, bad) = parse(format!("{a}\n{b}   # no name\n"));
        assert_eq!(bad, vec![]);
        assert_ne!(clients[0].name, clients[1].name);
        // Each can be revoked by its name alone.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        for fingerprint in [a, b] {
            let name = default_name(&fingerprint);
            authorize(&path, &AuthorizedClient { fingerprint, name }).unwrap();
        }
        let removed = revoke(&path, &default_name(&a)).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].fingerprint, a);
    }

    /// A store watching a file in `dir` that does not exist yet.
    fn store_in(dir: &tempfile::TempDir) -> (PathBuf, AuthorizedClients) {
        let path = dir.path().join("authorized_clients");
        let store = AuthorizedClients::open(&path).unwrap();
        (path, store)
    }

    #[test]
    fn authorize_revoke_and_notice_changes_without_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(&dir);
        let a: Fingerprint = A.parse().unwrap();
        let b: Fingerprint = B.parse().unwrap();
        assert!(!store.is_authorized(&a), "missing file authorizes nobody");

        let alice = AuthorizedClient {
            fingerprint: a,
            name: "alice".into(),
        };
        assert!(!authorize(&path, &alice).unwrap());
        assert!(authorize(&path, &alice).unwrap(), "second add replaces");
        authorize(
            &path,
            &AuthorizedClient {
                fingerprint: b,
                name: "bob".into(),
            },
        )
        .unwrap();
        assert_eq!(store.lookup(&a).unwrap().name, "alice");
        assert!(store.is_authorized(&b));

        let removed = revoke(&path, "alice").unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!store.is_authorized(&a), "revocation seen without a reload");
        assert!(store.is_authorized(&b));
        assert_eq!(revoke(&path, B).unwrap().len(), 1);
        assert!(!store.is_authorized(&b));
    }

    #[test]
    fn the_name_after_a_handshake_is_what_its_check_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(&dir);
        let alice = AuthorizedClient {
            fingerprint: A.parse().unwrap(),
            name: "alice".into(),
        };
        let a = alice.fingerprint;
        authorize(&path, &alice).unwrap();
        assert!(store.as_loaded(&a).is_none(), "not looked at yet");
        assert!(store.is_authorized(&a));
        assert_eq!(store.as_loaded(&a), Some(alice));
        revoke(&path, "alice").unwrap();
        // The next handshake's check reads the change; whoever asks after
        // it is refused too.
        assert!(!store.is_authorized(&a));
        assert!(store.as_loaded(&a).is_none());
    }

    /// A valid fingerprint of its own for each `i`.
    fn nth_fingerprint(i: usize) -> Fingerprint {
        format!("SHA256:{:A<43}", format!("u{i}")).parse().unwrap()
    }

    #[test]
    fn parallel_authorizations_and_a_revocation_lose_no_update() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("authorized_clients");
            let mallory = AuthorizedClient {
                fingerprint: B.parse().unwrap(),
                name: "mallory".into(),
            };
            authorize(&path, &mallory).unwrap();
            let start = std::sync::Arc::new(std::sync::Barrier::new(21));
            let mut threads = Vec::new();
            for i in 0..20 {
                let (path, start) = (path.clone(), start.clone());
                threads.push(std::thread::spawn(move || {
                    let client = AuthorizedClient {
                        fingerprint: nth_fingerprint(i),
                        name: format!("u{i}"),
                    };
                    start.wait();
                    authorize(&path, &client)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }));
            }
            let revoker = {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    revoke(&path, "mallory").map_err(|e| e.to_string())
                })
            };
            for thread in threads {
                thread.join().unwrap().unwrap();
            }
            assert_eq!(revoker.join().unwrap().unwrap(), vec![mallory]);
            let mut names: Vec<String> = parse(fs::read_to_string(&path).unwrap())
                .0
                .into_iter()
                .map(|c| c.name)
                .collect();
            names.sort();
            let mut expected: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
            expected.sort();
            assert_eq!(names, expected);
            let left: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp"))
                .collect();
            assert!(left.is_empty(), "temporary files left: {left:?}");
        }
    }

    #[test]
    fn a_rewrite_keeps_the_files_mode_and_a_new_file_is_0644() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        let client = |i| AuthorizedClient {
            fingerprint: nth_fingerprint(i),
            name: format!("u{i}"),
        };
        authorize(&path, &client(0)).unwrap();
        assert_eq!(mode(&path), NEW_FILE_MODE);
        for kept in [0o600, 0o640, 0o444] {
            fs::set_permissions(&path, fs::Permissions::from_mode(kept)).unwrap();
            authorize(&path, &client(kept as usize)).unwrap();
            assert_eq!(mode(&path), kept, "after authorize");
            revoke(&path, &format!("u{kept}")).unwrap();
            assert_eq!(mode(&path), kept, "after revoke");
        }
    }

    #[test]
    fn a_link_planted_where_the_old_temporary_file_went_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        let target = dir.path().join("target");
        fs::write(&target, "precious\n").unwrap();
        std::os::unix::fs::symlink(
            &target,
            dir.path()
                .join(format!(".authorized_clients.tmp.{}", std::process::id())),
        )
        .unwrap();
        authorize(
            &path,
            &AuthorizedClient {
                fingerprint: A.parse().unwrap(),
                name: "alice".into(),
            },
        )
        .unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
        assert!(
            !fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_file_or_directory_others_can_write_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        fs::write(&path, format!("{A} alice\n")).unwrap();
        for (mode, who) in [
            (0o646, "others"),
            (0o620, "group"),
            (0o622, "group and others"),
        ] {
            chmod(&path, mode);
            let e = AuthorizedClients::open(&path).unwrap_err();
            assert_eq!(
                e,
                Untrusted::Writable {
                    path: path.clone(),
                    mode,
                    who
                }
            );
            assert!(e.to_string().contains("chmod go-w"), "{e}");
        }
        chmod(&path, 0o640);
        assert!(
            AuthorizedClients::open(&path)
                .unwrap()
                .is_authorized(&A.parse().unwrap())
        );
        chmod(dir.path(), 0o777);
        let e = AuthorizedClients::open(&path).unwrap_err();
        assert!(
            matches!(&e, Untrusted::Writable { path, .. } if path == dir.path()),
            "{e}"
        );
        chmod(dir.path(), 0o700);
        // A missing file is no reason to stop: it authorizes nobody.
        fs::remove_file(&path).unwrap();
        assert!(
            !AuthorizedClients::open(&path)
                .unwrap()
                .is_authorized(&A.parse().unwrap())
        );
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        // Only root can give a file away.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        fs::write(&path, format!("{A} alice\n")).unwrap();
        std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
        let e = AuthorizedClients::open(&path).unwrap_err();
        assert!(matches!(e, Untrusted::Owner { uid: 4242, .. }), "{e}");
        assert!(e.to_string().contains("chown root"), "{e}");
    }

    #[test]
    fn a_file_that_others_can_write_grants_nothing_new_but_still_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        let (a, b, c): (Fingerprint, Fingerprint, Fingerprint) =
            (A.parse().unwrap(), B.parse().unwrap(), nth_fingerprint(7));
        fs::write(&path, format!("{a} alice\n{b} bob\n")).unwrap();
        chmod(&path, 0o644);
        let store = AuthorizedClients::open(&path).unwrap();
        assert!(store.is_authorized(&a) && store.is_authorized(&b));

        // Made writable by all, and written: bob gone, mallory added, and
        // alice renamed to what a run-as rule may allow more.
        chmod(&path, 0o666);
        fs::write(&path, format!("{a} admin\n{c} mallory\n")).unwrap();
        assert!(!store.is_authorized(&c), "nothing new");
        assert!(!store.is_authorized(&b), "a removal applies");
        assert_eq!(store.lookup(&a).unwrap().name, "alice", "names as before");
        assert_eq!(store.reload(), 1);
        assert_eq!(store.lookup(&a).unwrap().name, "alice");

        // Fixed: what it says counts again, seen without a reload.
        chmod(&path, 0o644);
        assert!(store.is_authorized(&c));
        assert_eq!(store.lookup(&a).unwrap().name, "admin");
    }

    #[test]
    fn authorize_refuses_a_file_others_can_write_and_revoke_still_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_clients");
        let client = |fp: &str, name: &str| AuthorizedClient {
            fingerprint: fp.parse().unwrap(),
            name: name.into(),
        };
        authorize(&path, &client(A, "alice")).unwrap();
        chmod(&path, 0o646);
        let before = fs::read_to_string(&path).unwrap();
        let e = authorize(&path, &client(B, "bob")).unwrap_err();
        assert!(matches!(e, AuthorizeError::Untrusted(_)), "{e}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            before,
            "nothing written"
        );
        assert_eq!(revoke(&path, "alice").unwrap().len(), 1);
    }

    #[test]
    fn unknown_keys_get_a_bounded_number_of_lines_per_interval() {
        let mut refused = RefusedKeys::default();
        let start = Instant::now();
        let logged = (0..1000).filter(|_| refused.take_line(start)).count();
        assert_eq!(logged, REFUSED_KEY_LINES as usize);
        assert_eq!(refused.unlogged, 1000 - u64::from(REFUSED_KEY_LINES));
        // A new interval: lines again, the count summed up and reset.
        assert!(refused.take_line(start + REFUSED_KEYS_INTERVAL));
        assert_eq!(refused.unlogged, 0);
    }
}
