//! Known hosts: which agent fingerprint belongs to which `host:port`.
//!
//! Plain text, one host per line: `HOST:PORT SHA256:<base64>`, `#` comments
//! allowed. First contact adds a line (trust on first use, unless refused by
//! option); a different fingerprint later is refused, never silently
//! re-trusted: the user removes the old entry with `ctl known-hosts remove`.
//!
//! People edit the file by hand, and several ctl processes may meet new
//! hosts at once, so every change is made under a lock (`known_hosts.lock`
//! beside it), from the file as it is then: a line we do not understand is
//! reported and kept as it is, and no update can lose another's. A first
//! contact appends its line in one write, after reading only what others
//! appended since we last looked (a fan-out to 10,000 new hosts would
//! otherwise read, parse and rewrite the whole file 10,000 times); a
//! removal rewrites the file to a temporary one renamed into place.
//!
//! Host names are compared as DNS compares them, without regard to case,
//! as ssh does: `LabPC07:7722` and `labpc07:7722` are one entry, written
//! in lower case ([`canonical`]).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use rexec_protocol::Fingerprint;

/// The known hosts file, read into memory.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<(String, Fingerprint)>,
    /// Host to its first entry's place in `entries` (the one that counts).
    index: HashMap<String, usize>,
    malformed: Vec<usize>,
    /// How far we have read the file, to read only what others append.
    seen: Seen,
}

/// The file as we last read it: which file, how much of it, how many
/// lines, and whether it ended in a newline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    inode: Option<(u64, u64)>,
    len: u64,
    lines: usize,
    ends_with_newline: bool,
}

/// `host_port` as entries are compared and recorded: the host's letters
/// in lower case, since DNS names (and IPv6 hex digits) are the same in
/// either; an IPv6 zone (`%eth0`, an interface name, which is not) and an
/// agent's name on a broker (`broker/…`, a case-sensitive subject) as
/// they are.
pub fn canonical(host_port: &str) -> String {
    if host_port.starts_with(crate::broker_config::KNOWN_HOSTS_PREFIX) {
        return host_port.to_owned();
    }
    match host_port.split_once('%') {
        Some((address, zone)) => format!("{}%{zone}", address.to_ascii_lowercase()),
        None => host_port.to_ascii_lowercase(),
    }
}

/// What recording a first contact did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The host is now on record.
    New,
    /// Another ctl recorded the same fingerprint meanwhile.
    AlreadyKnown,
    /// Another ctl recorded a different fingerprint meanwhile: this one is
    /// not trusted.
    Conflict(Fingerprint),
}

/// The entries of a known hosts text whose first line is line `first + 1`
/// of the file, and the numbers of the lines that are neither an entry, a
/// comment nor blank. A line that is not UTF-8 text (a comment may be in
/// Latin-1) is one of those, unless it is a comment.
fn parse_from(text: &[u8], first: usize) -> (Vec<(String, Fingerprint)>, Vec<usize>) {
    let mut entries = Vec::new();
    let mut malformed = Vec::new();
    for (number, line) in lines(text).enumerate() {
        let number = number + first;
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let entry = std::str::from_utf8(line).ok().and_then(|line| {
            let mut fields = line.split_whitespace();
            match (fields.next(), fields.next(), fields.next()) {
                (Some(host), Some(fingerprint), None) if is_key(host) => fingerprint
                    .parse::<Fingerprint>()
                    .ok()
                    .map(|fp| (host.to_owned(), fp)),
                _ => None,
            }
        });
        match entry {
            Some(entry) => entries.push(entry),
            None => malformed.push(number + 1),
        }
    }
    (entries, malformed)
}

/// Whether `host` is a key ctl records: `HOST:PORT` (`[ADDRESS]:PORT` for
/// IPv6) or an agent's name on a broker. A host without its port, as ssh
/// users write it, would never match, and so pin nothing.
fn is_key(host: &str) -> bool {
    if host.starts_with(crate::broker_config::KNOWN_HOSTS_PREFIX) {
        return true;
    }
    let Some((name, port)) = host.rsplit_once(':') else {
        return false;
    };
    let bracketed = name.starts_with('[') && name.ends_with(']');
    !name.is_empty() && (bracketed || !name.contains(':')) && port.parse::<u16>().is_ok()
}

/// The lines of `text`, split as `str::lines` splits them: a last line may
/// lack its newline.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let count = if text.is_empty() { 0 } else { usize::MAX };
    body.split(|&b| b == b'\n').take(count)
}

/// The file's bytes; a missing file is empty. Bytes, not text: a line
/// that is not UTF-8 is reported and kept as it is, not the end of ctl.
fn read(path: &Path) -> io::Result<Vec<u8>> {
    match fs::read(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The file's identity (device, inode), if it exists.
fn inode(path: &Path) -> io::Result<Option<(u64, u64)>> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some((meta.dev(), meta.ino()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Seen {
    /// After reading `text` at its start, or after it at `self`.
    fn after(self, inode: Option<(u64, u64)>, text: &[u8]) -> Seen {
        // Text behind a last line that lacked its newline (our own first
        // contact finishes it) starts by ending that line, not a new one.
        let continues = self.len > 0 && !self.ends_with_newline;
        let added = lines(text).count().saturating_sub(usize::from(continues));
        Seen {
            inode,
            len: self.len + text.len() as u64,
            lines: self.lines + added,
            ends_with_newline: if text.is_empty() {
                self.ends_with_newline
            } else {
                text.ends_with(b"\n")
            },
        }
    }
}

impl KnownHosts {
    /// Reads `path`; a missing file is an empty list.
    ///
    /// # Errors
    /// When the file exists but cannot be read.
    pub fn load(path: &Path) -> io::Result<KnownHosts> {
        let mut hosts = KnownHosts {
            path: path.to_path_buf(),
            entries: Vec::new(),
            index: HashMap::new(),
            malformed: Vec::new(),
            seen: Seen::default(),
        };
        hosts.reread()?;
        Ok(hosts)
    }

    /// Reads the whole file again.
    fn reread(&mut self) -> io::Result<()> {
        let inode = inode(&self.path)?;
        let text = read(&self.path)?;
        self.entries.clear();
        self.index.clear();
        self.malformed.clear();
        self.seen = Seen::default();
        self.take(inode, &text);
        Ok(())
    }

    /// Files `text`, read from where `seen` ends.
    fn take(&mut self, inode: Option<(u64, u64)>, text: &[u8]) {
        let (entries, malformed) = parse_from(text, self.seen.lines);
        for (host, fingerprint) in entries {
            self.index
                .entry(canonical(&host))
                .or_insert(self.entries.len());
            self.entries.push((host, fingerprint));
        }
        self.malformed.extend(malformed);
        self.seen = self.seen.after(inode, text);
    }

    /// Brings us up to date with the file, under the lock: what others
    /// appended is read; a file replaced, shortened or ending mid-line
    /// when we looked is read again whole.
    fn catch_up(&mut self) -> io::Result<()> {
        let inode = inode(&self.path)?;
        let Some(_) = inode else {
            return self.reread();
        };
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.reread(),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let appended_to = inode == self.seen.inode
            && len >= self.seen.len
            && (self.seen.len == 0 || self.seen.ends_with_newline);
        if !appended_to {
            return self.reread();
        }
        if len == self.seen.len {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.seen.len))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)?;
        self.take(inode, &text);
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The numbers (from 1) of the lines that are not `HOST:PORT
    /// SHA256:…`, a comment or blank; they are ignored, and kept.
    pub fn malformed(&self) -> &[usize] {
        &self.malformed
    }

    /// The fingerprint on record for `host_port`, its host in any case.
    pub fn get(&self, host_port: &str) -> Option<Fingerprint> {
        self.index
            .get(&canonical(host_port))
            .map(|&i| self.entries[i].1)
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[(String, Fingerprint)] {
        &self.entries
    }

    /// Records a first contact: one line appended to the file as it is
    /// now, in one write.
    ///
    /// # Errors
    /// When the file or its directory cannot be written.
    pub fn add(&mut self, host_port: &str, fingerprint: Fingerprint) -> io::Result<Added> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let _lock = self.lock()?;
        self.catch_up()?;
        match self.get(host_port) {
            Some(fp) if fp == fingerprint => return Ok(Added::AlreadyKnown),
            Some(fp) => return Ok(Added::Conflict(fp)),
            None => {}
        }
        let mut line = String::new();
        // A last line without its newline (a hand edit) must not swallow
        // ours.
        if self.seen.len > 0 && !self.seen.ends_with_newline {
            line.push('\n');
        }
        line.push_str(&format!("{} {fingerprint}\n", canonical(host_port)));
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&self.path)?;
        file.write_all(line.as_bytes())?;
        let inode = inode(&self.path)?;
        self.take(inode, line.as_bytes());
        Ok(Added::New)
    }

    /// Removes every line for `host_port`, its host written in any case;
    /// returns how many were removed.
    ///
    /// # Errors
    /// When the file cannot be rewritten.
    pub fn remove(&mut self, host_port: &str) -> io::Result<usize> {
        if !self.path.exists() {
            return Ok(0);
        }
        let _lock = self.lock()?;
        let text = read(&self.path)?;
        let mut kept = Vec::with_capacity(text.len());
        let mut removed = 0;
        let key = canonical(host_port);
        for line in lines(&text) {
            let host = std::str::from_utf8(line)
                .ok()
                .and_then(|line| line.split_whitespace().next());
            if host.map(canonical) == Some(key.clone()) {
                removed += 1;
            } else {
                kept.extend_from_slice(line);
                kept.push(b'\n');
            }
        }
        if removed > 0 {
            self.replace(&kept)?;
        }
        self.reread()?;
        Ok(removed)
    }

    /// Holds the update lock until dropped.
    fn lock(&self) -> io::Result<Flock<File>> {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "known_hosts".into());
        name.push(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_file_name(name))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| io::Error::from(errno))
    }

    /// Puts `text` in place of the file in one step: written beside it
    /// under another name, then renamed over it, keeping its permissions.
    fn replace(&self, text: &[u8]) -> io::Result<()> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mode = fs::metadata(&self.path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
        let mut temporary = tempfile::Builder::new()
            .prefix(".known_hosts.")
            .tempfile_in(dir)?;
        temporary.write_all(text)?;
        temporary
            .as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
        temporary.as_file().sync_all()?;
        temporary.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(c: char) -> Fingerprint {
        format!("SHA256:{}", c.to_string().repeat(43))
            .parse()
            .unwrap()
    }

    /// A known hosts file holding `text` in a new directory, and its path.
    fn file_holding(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn add_get_remove_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        let a = fingerprint('A');
        let mut hosts = KnownHosts::load(&path).unwrap();
        assert_eq!(hosts.get("h:7722"), None);
        assert_eq!(hosts.add("h:7722", a).unwrap(), Added::New);
        assert_eq!(hosts.add("g:1", a).unwrap(), Added::New);
        let mut reloaded = KnownHosts::load(&path).unwrap();
        assert_eq!(reloaded.get("h:7722"), Some(a));
        assert_eq!(reloaded.remove("h:7722").unwrap(), 1);
        let reloaded = KnownHosts::load(&path).unwrap();
        assert_eq!(reloaded.get("h:7722"), None);
        assert_eq!(reloaded.get("g:1"), Some(a));
    }

    #[test]
    fn lines_not_utf8_or_without_a_port_are_reported_and_kept_byte_for_byte() {
        let a = fingerprint('A');
        let mut text = b"# \xe9quipe du labo\n".to_vec();
        text.extend_from_slice(format!("labpc07 {a}\n").as_bytes());
        text.extend_from_slice(format!("h\u{e9}:1 {a}\n").as_bytes());
        text.extend_from_slice(b"h\xe9:1 ");
        text.extend_from_slice(format!("{a}\nfe80::1 {a}\n[fe80::1]:22 {a}\n").as_bytes());
        text.extend_from_slice(format!("broker/pc1 {a}\ng:2 {a}\n").as_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        fs::write(&path, &text).unwrap();
        let mut hosts = KnownHosts::load(&path).unwrap();
        assert_eq!(hosts.malformed(), &[2, 4, 5]);
        for key in ["h\u{e9}:1", "[fe80::1]:22", "broker/pc1", "g:2"] {
            assert_eq!(hosts.get(key), Some(a), "{key}");
        }
        assert_eq!(hosts.remove("g:2").unwrap(), 1);
        let kept = fs::read(&path).unwrap();
        assert_eq!(kept, text[..text.len() - format!("g:2 {a}\n").len()]);
        assert_eq!(hosts.add("n:3", a).unwrap(), Added::New);
        assert!(fs::read(&path).unwrap().starts_with(&kept));
    }

    #[test]
    fn lines_appended_after_a_line_without_newline_are_numbered_right() {
        let (a, b) = (fingerprint('A'), fingerprint('Q'));
        let (_dir, path) = file_holding(&format!("h:1 {a}"));
        let mut hosts = KnownHosts::load(&path).unwrap();
        assert_eq!(hosts.add("g:2", b).unwrap(), Added::New);
        // Another hand appends a bad third line; our next contact reads it.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"junk\n").unwrap();
        assert_eq!(hosts.add("n:4", b).unwrap(), Added::New);
        assert_eq!(hosts.malformed(), &[3]);
    }

    #[test]
    fn a_last_line_without_newline_keeps_its_pin() {
        let (a, b) = (fingerprint('A'), fingerprint('Q'));
        let (_dir, path) = file_holding(&format!("# by hand\nh:1 {a}"));
        let mut hosts = KnownHosts::load(&path).unwrap();
        assert_eq!(hosts.add("g:2", b).unwrap(), Added::New);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("# by hand\nh:1 {a}\ng:2 {b}\n"));
        let reloaded = KnownHosts::load(&path).unwrap();
        assert_eq!(reloaded.get("h:1"), Some(a));
        assert_eq!(reloaded.get("g:2"), Some(b));
        assert!(reloaded.malformed().is_empty());
    }

    #[test]
    fn malformed_lines_are_reported_and_kept() {
        let a = fingerprint('A');
        let (_dir, path) = file_holding(&format!(
            "h:1 {a}\nnonsense\n\nh:2 {a} extra\nh:3 SHA256:short\n"
        ));
        let mut hosts = KnownHosts::load(&path).unwrap();
        assert_eq!(hosts.malformed(), [2, 4, 5]);
        assert_eq!(hosts.add("g:9", a).unwrap(), Added::New);
        assert_eq!(hosts.remove("h:1").unwrap(), 1);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("nonsense\n") && text.contains("h:3 SHA256:short\n"),
            "{text}"
        );
    }

    /// Two ctl runs that loaded the same known hosts file (none yet) in a
    /// new directory, and two host keys for them to record.
    fn two_runs() -> (
        tempfile::TempDir,
        PathBuf,
        KnownHosts,
        KnownHosts,
        (Fingerprint, Fingerprint),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let first = KnownHosts::load(&path).unwrap();
        let second = KnownHosts::load(&path).unwrap();
        (
            dir,
            path,
            first,
            second,
            (fingerprint('A'), fingerprint('Q')),
        )
    }

    #[test]
    fn a_contact_recorded_meanwhile_is_not_written_twice() {
        let (_dir, path, mut first, mut second, (a, b)) = two_runs();
        assert_eq!(first.add("h:1", a).unwrap(), Added::New);
        assert_eq!(second.add("h:1", a).unwrap(), Added::AlreadyKnown);
        assert_eq!(second.add("h:1", b).unwrap(), Added::Conflict(a));
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("h:1 {a}\n"));
    }

    #[test]
    fn what_others_append_or_remove_meanwhile_is_seen_before_adding() {
        let (_dir, path, mut first, mut second, (a, b)) = two_runs();
        assert_eq!(first.add("f:1", a).unwrap(), Added::New);
        assert_eq!(second.add("g:1", a).unwrap(), Added::New);
        // A hand edit appends a line, and a broken one.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "h:2 {a}\nbroken\n").unwrap();
        drop(file);
        assert_eq!(first.add("g:1", b).unwrap(), Added::Conflict(a));
        assert_eq!(first.get("h:2"), Some(a));
        assert_eq!(first.malformed(), [4]);
        // Another ctl removes an entry (the file is rewritten).
        assert_eq!(second.remove("g:1").unwrap(), 1);
        assert_eq!(first.add("g:1", b).unwrap(), Added::New);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("f:1 {a}\nh:2 {a}\nbroken\ng:1 {b}\n")
        );
        let reloaded = KnownHosts::load(&path).unwrap();
        assert_eq!(reloaded.get("g:1"), Some(b));
        assert_eq!(reloaded.malformed(), [3]);
    }

    /// Names differing only in case were two entries: a changed key refused
    /// under `labpc07` was trusted on first use under `LabPC07`.
    #[test]
    fn host_names_match_in_any_case() {
        let (a, b) = (fingerprint('A'), fingerprint('Q'));
        let (_dir, path) = file_holding(&format!("LOCALHOST:1 {a}\n"));
        let mut hosts = KnownHosts::load(&path).unwrap();
        assert_eq!(hosts.get("localhost:1"), Some(a));
        assert_eq!(hosts.add("LocalHost:1", b).unwrap(), Added::Conflict(a));
        assert_eq!(hosts.add("LabPC07:7722", b).unwrap(), Added::New);
        assert_eq!(hosts.get("labpc07:7722"), Some(b));
        assert_eq!(hosts.add("labpc07:7722", a).unwrap(), Added::Conflict(b));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("LOCALHOST:1 {a}\nlabpc07:7722 {b}\n")
        );
        assert_eq!(hosts.remove("localhost:1").unwrap(), 1);
        assert_eq!(hosts.remove("LABPC07:7722").unwrap(), 1);
        assert_eq!(fs::read_to_string(&path).unwrap(), "");
        // An interface name and an agent's name on a broker keep their case.
        assert_eq!(canonical("[FE80::1%ETH0]:7722"), "[fe80::1%ETH0]:7722");
        assert_eq!(canonical("broker/LabPC07"), "broker/LabPC07");
    }

    #[test]
    fn the_first_entry_for_a_host_is_the_one_that_counts() {
        let (a, b) = (fingerprint('A'), fingerprint('Q'));
        let (_dir, path) = file_holding(&format!("h:1 {a}\nh:1 {b}\n"));
        let mut hosts = KnownHosts::load(&path).unwrap();
        assert_eq!(hosts.get("h:1"), Some(a));
        assert_eq!(hosts.add("h:1", b).unwrap(), Added::Conflict(a));
    }
}
