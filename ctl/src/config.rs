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

    /// `--config-dir DIR`, for a command ctl tells the user to run, when
    /// this is not the default directory: the command must act on these
    /// files wherever it is pasted (another shell, without
    /// `REXEC_CONFIG_DIR`, in another directory). DIR is absolute and
    /// quoted for the shell.
    pub fn flag(&self) -> Option<String> {
        let absolute = |dir: &Path| std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        let dir = absolute(&self.0);
        if dir == absolute(&ConfigDir::locate(None).0) {
            return None;
        }
        let text = dir.to_string_lossy();
        let quoted = shlex::try_quote(&text).map_or_else(|_| text.to_string(), |q| q.into_owned());
        Some(format!("--config-dir {quoted}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_another_directory_than_the_default_gives_a_flag() {
        assert_eq!(ConfigDir::locate(None).flag(), None);
        let default = ConfigDir::locate(None).path().to_owned();
        assert_eq!(ConfigDir::locate(Some(default)).flag(), None);
        assert_eq!(
            ConfigDir::locate(Some("/srv/my ctl".into()))
                .flag()
                .as_deref(),
            Some("--config-dir '/srv/my ctl'")
        );
        let relative = ConfigDir::locate(Some("cfg".into())).flag().unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            relative,
            format!(
                "--config-dir {}",
                shlex::try_quote(&cwd.join("cfg").to_string_lossy()).unwrap()
            )
        );
    }
}
