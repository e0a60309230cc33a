//! Known hosts: which agent fingerprint belongs to which `host:port`.
//!
//! Plain text, one host per line: `HOST:PORT SHA256:<base64>`, `#` comments
//! allowed. First contact adds a line (trust on first use, unless refused by
//! option); a different fingerprint later is refused, never silently
//! re-trusted: the user removes the old entry with `ctl known-hosts remove`.
//!
//! People edit the file by hand, and several ctl processes may meet new
//! hosts at once, so every change is made under a lock (`known_hosts.lock`
//! beside it), from the file as it is then, written to a temporary file and
//! renamed into place: a line we do not understand is reported and kept as
//! it is, and no update can lose another's.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use rexec_protocol::Fingerprint;

/// The known hosts file, read into memory.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<(String, Fingerprint)>,
    malformed: Vec<usize>,
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

/// The entries of a known hosts text, and the numbers of the lines that
/// are neither an entry, a comment nor blank.
fn parse(text: &str) -> (Vec<(String, Fingerprint)>, Vec<usize>) {
    let mut entries = Vec::new();
    let mut malformed = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let entry = match (fields.next(), fields.next(), fields.next()) {
            (Some(host), Some(fingerprint), None) => fingerprint
                .parse::<Fingerprint>()
                .ok()
                .map(|fp| (host.to_owned(), fp)),
            _ => None,
        };
        match entry {
            Some(entry) => entries.push(entry),
            None => malformed.push(number + 1),
        }
    }
    (entries, malformed)
}

fn read(path: &Path) -> io::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

impl KnownHosts {
    /// Reads `path`; a missing file is an empty list.
    ///
    /// # Errors
    /// When the file exists but cannot be read.
    pub fn load(path: &Path) -> io::Result<KnownHosts> {
        let (entries, malformed) = parse(&read(path)?);
        Ok(KnownHosts {
            path: path.to_path_buf(),
            entries,
            malformed,
        })
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

    /// The fingerprint on record for `host_port`.
    pub fn get(&self, host_port: &str) -> Option<Fingerprint> {
        self.entries
            .iter()
            .find(|(h, _)| h == host_port)
            .map(|(_, fp)| *fp)
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[(String, Fingerprint)] {
        &self.entries
    }

    /// Records a first contact: one line added to the file as it is now.
    ///
    /// # Errors
    /// When the file or its directory cannot be written.
    pub fn add(&mut self, host_port: &str, fingerprint: Fingerprint) -> io::Result<Added> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let _lock = self.lock()?;
        let mut text = read(&self.path)?;
        let (entries, _) = parse(&text);
        let existing = entries
            .iter()
            .find(|(h, _)| h == host_port)
            .map(|(_, fp)| *fp);
        let added = match existing {
            Some(fp) if fp == fingerprint => Added::AlreadyKnown,
            Some(fp) => Added::Conflict(fp),
            None => {
                // A last line without its newline (a hand edit) must not
                // swallow ours.
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&format!("{host_port} {fingerprint}\n"));
                self.replace(&text)?;
                Added::New
            }
        };
        (self.entries, self.malformed) = parse(&text);
        Ok(added)
    }

    /// Removes every line for `host_port`; returns how many were removed.
    ///
    /// # Errors
    /// When the file cannot be rewritten.
    pub fn remove(&mut self, host_port: &str) -> io::Result<usize> {
        if !self.path.exists() {
            return Ok(0);
        }
        let _lock = self.lock()?;
        let text = read(&self.path)?;
        let mut kept = String::with_capacity(text.len());
        let mut removed = 0;
        for line in text.lines() {
            if line.split_whitespace().next() == Some(host_port) {
                removed += 1;
            } else {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        if removed > 0 {
            self.replace(&kept)?;
        }
        (self.entries, self.malformed) = parse(&kept);
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
    fn replace(&self, text: &str) -> io::Result<()> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mode = fs::metadata(&self.path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
        let mut temporary = tempfile::Builder::new()
            .prefix(".known_hosts.")
            .tempfile_in(dir)?;
        temporary.write_all(text.as_bytes())?;
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
    fn a_last_line_without_newline_keeps_its_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let (a, b) = (fingerprint('A'), fingerprint('Q'));
        fs::write(&path, format!("# by hand\nh:1 {a}")).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let a = fingerprint('A');
        fs::write(
            &path,
            format!("h:1 {a}\nnonsense\n\nh:2 {a} extra\nh:3 SHA256:short\n"),
        )
        .unwrap();
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

    #[test]
    fn a_contact_recorded_meanwhile_is_not_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let (a, b) = (fingerprint('A'), fingerprint('Q'));
        let mut first = KnownHosts::load(&path).unwrap();
        let mut second = KnownHosts::load(&path).unwrap();
        assert_eq!(first.add("h:1", a).unwrap(), Added::New);
        assert_eq!(second.add("h:1", a).unwrap(), Added::AlreadyKnown);
        assert_eq!(second.add("h:1", b).unwrap(), Added::Conflict(a));
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("h:1 {a}\n"));
    }
}
