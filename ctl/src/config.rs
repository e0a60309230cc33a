//! Where ctl keeps its files: `$XDG_CONFIG_HOME/rexec/` (normally
//! `~/.config/rexec/`), or the directory given with `--config-dir` or
//! `REXEC_CONFIG_DIR`.

use std::path::{Path, PathBuf};

use rexec_protocol::IdentityPaths;

/// ctl's configuration directory.
#[derive(Debug, Clone)]
pub struct ConfigDir(PathBuf);

impl ConfigDir {
    /// `explicit` if given, else `$XDG_CONFIG_HOME/rexec`, else
    /// `$HOME/.config/rexec`.
    pub fn locate(explicit: Option<PathBuf>) -> ConfigDir {
        if let Some(dir) = explicit {
            return ConfigDir(dir);
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        ConfigDir(base.join("rexec"))
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `client.crt` and `client.key`.
    pub fn identity(&self) -> IdentityPaths {
        IdentityPaths::in_dir(&self.0, "client")
    }

    /// `known_hosts`.
    pub fn known_hosts(&self) -> PathBuf {
        self.0.join("known_hosts")
    }

    /// `cache/sources/`: what the inventory's group sources answered,
    /// kept for their `cache_time`.
    pub fn source_cache(&self) -> PathBuf {
        self.0.join("cache").join("sources")
    }
}
