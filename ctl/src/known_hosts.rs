//! Known hosts: which agent fingerprint belongs to which `host:port`.
//!
//! Plain text, one host per line: `HOST:PORT SHA256:<base64>`, `#` comments
//! allowed. First contact adds a line (trust on first use, unless refused by
//! option); a different fingerprint later is refused, never silently
//! re-trusted: the user removes the old entry with `ctl known-hosts remove`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rexec_protocol::Fingerprint;

/// The known hosts file, read into memory.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<(String, Fingerprint)>,
}

impl KnownHosts {
    /// Reads `path`; a missing file is an empty list.
    ///
    /// # Errors
    /// When the file exists but cannot be read.
    pub fn load(path: &Path) -> io::Result<KnownHosts> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let (host, fp) = l.split_once(char::is_whitespace)?;
                Some((host.to_owned(), fp.trim().parse().ok()?))
            })
            .collect();
        Ok(KnownHosts {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
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

    /// Records a new host, appending one line to the file.
    ///
    /// # Errors
    /// When the file or its directory cannot be written.
    pub fn add(&mut self, host_port: &str, fingerprint: Fingerprint) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        writeln!(file, "{host_port} {fingerprint}")?;
        self.entries.push((host_port.to_owned(), fingerprint));
        Ok(())
    }

    /// Removes every line for `host_port`; returns how many were removed.
    ///
    /// # Errors
    /// When the file cannot be rewritten.
    pub fn remove(&mut self, host_port: &str) -> io::Result<usize> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut kept = String::new();
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
            let tmp = self.path.with_extension("tmp");
            fs::write(&tmp, kept)?;
            fs::rename(&tmp, &self.path)?;
            self.entries.retain(|(h, _)| h != host_port);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_get_remove_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        let a: Fingerprint = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            .parse()
            .unwrap();
        let mut hosts = KnownHosts::load(&path).unwrap();
        assert_eq!(hosts.get("h:7722"), None);
        hosts.add("h:7722", a).unwrap();
        hosts.add("g:1", a).unwrap();
        let mut reloaded = KnownHosts::load(&path).unwrap();
        assert_eq!(reloaded.get("h:7722"), Some(a));
        assert_eq!(reloaded.remove("h:7722").unwrap(), 1);
        let reloaded = KnownHosts::load(&path).unwrap();
        assert_eq!(reloaded.get("h:7722"), None);
        assert_eq!(reloaded.get("g:1"), Some(a));
    }
}
