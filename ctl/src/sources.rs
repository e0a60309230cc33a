//! Group sources, as ClusterShell's `groups.conf` has them: a
//! `[sources.NAME]` table of the inventory gives shell commands that map a
//! group to its hosts (`map`), list the groups (`list`) and give every
//! host (`all`), so `@slurm:gpu` can come from `sinfo -h -o %N -p $GROUP`.
//!
//! The group's name reaches `map` as the environment variable `GROUP`,
//! which the shell expands where the command says `$GROUP`: it is data,
//! never spliced into the command's text, so no group name can run
//! anything. A command runs as `/bin/sh -c COMMAND` with an empty stdin in
//! a process group of its own, bounded by the source's `timeout`; one that
//! fails or runs out of time is one error with its stderr. What a command
//! printed may be kept for `cache_time` in ctl's config directory.
//!
//! This module runs the commands and keeps their answers; reading what
//! they printed as hosts is [`crate::inventory`]'s business.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// A source command's time limit when the inventory gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a source command may print; more is surely not a host list.
const MAX_OUTPUT: u64 = 16 << 20;

/// How much of a failed command's stderr its error shows.
const MAX_STDERR_SHOWN: usize = 400;

/// How long we wait for a killed command's pipes to close before giving
/// up on them (a process that left the group may still hold them).
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Which of a source's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upcall {
    /// `map`: the hosts of the group in `GROUP`.
    Map,
    /// `list`: the names of the source's groups.
    List,
    /// `all`: every host of the source.
    All,
}

impl Upcall {
    /// The key that gives this command in the inventory.
    pub fn key(self) -> &'static str {
        match self {
            Upcall::Map => "map",
            Upcall::List => "list",
            Upcall::All => "all",
        }
    }
}

/// One `[sources.NAME]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSource {
    /// The source's name, as in `@NAME:group`.
    pub name: String,
    /// The command giving a group's hosts.
    pub map: Option<String>,
    /// The command listing the groups.
    pub list: Option<String>,
    /// The command giving every host.
    pub all: Option<String>,
    /// How long an answer is kept; zero keeps none.
    pub cache_time: Duration,
    /// How long a command may run.
    pub timeout: Duration,
}

/// A source command that did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The source has no such command.
    #[error("group source {name}: it has no `{key}` command in {}", .path.display())]
    NoCommand {
        /// The source.
        name: String,
        /// `map`, `list` or `all`.
        key: &'static str,
        /// The inventory.
        path: PathBuf,
    },
    /// The shell could not be started.
    #[error("group source {name}: cannot start /bin/sh: {reason}")]
    Spawn {
        /// The source.
        name: String,
        /// Why.
        reason: String,
    },
    /// The command exited with a failure.
    #[error("group source {name}: its {what} command failed ({how}){}", stderr_shown(.stderr))]
    Failed {
        /// The source.
        name: String,
        /// Which command, and for which group.
        what: String,
        /// `exit 3`, `killed by signal 9`.
        how: String,
        /// What it said on stderr, made one plain line.
        stderr: String,
    },
    /// The command ran out of time and was killed.
    #[error("group source {name}: its {what} command gave no answer within {} and was killed{}", humantime::format_duration(*.timeout), stderr_shown(.stderr))]
    Hung {
        /// The source.
        name: String,
        /// Which command, and for which group.
        what: String,
        /// Its limit.
        timeout: Duration,
        /// What it had said on stderr, made one plain line.
        stderr: String,
    },
    /// The command printed too much or not text.
    #[error("group source {name}: its {what} command printed {reason}")]
    Output {
        /// The source.
        name: String,
        /// Which command, and for which group.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn stderr_shown(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Several lines of a command's stderr as one inert line.
fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let mut shown: String = joined
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_STDERR_SHOWN)
        .collect();
    if joined.chars().count() > MAX_STDERR_SHOWN {
        shown.push('…');
    }
    shown
}

impl GroupSource {
    /// What `upcall` printed for `group` (`map` only), from the cache in
    /// `cache_dir` when it is fresh, else by running the command.
    ///
    /// # Errors
    /// No such command, or a command that cannot start, fails, hangs or
    /// prints more than 16 MiB or something that is not text.
    pub fn ask(
        &self,
        upcall: Upcall,
        group: Option<&str>,
        cache_dir: Option<&Path>,
        inventory: &Path,
    ) -> Result<String, SourceError> {
        let command = match upcall {
            Upcall::Map => &self.map,
            Upcall::List => &self.list,
            Upcall::All => &self.all,
        };
        let Some(command) = command else {
            return Err(SourceError::NoCommand {
                name: self.name.clone(),
                key: upcall.key(),
                path: inventory.to_path_buf(),
            });
        };
        let what = match group {
            Some(group) => format!("{} (GROUP={group})", upcall.key()),
            None => upcall.key().to_owned(),
        };
        let cache = cache_dir
            .filter(|_| !self.cache_time.is_zero())
            .map(|dir| Cache::new(dir, &self.name, upcall, group, command));
        if let Some(answer) = cache.as_ref().and_then(|c| c.fresh(self.cache_time)) {
            return Ok(answer);
        }
        let answer = self.run(command, group, &what)?;
        if let Some(cache) = &cache {
            cache.keep(&answer);
        }
        Ok(answer)
    }

    fn run(&self, command: &str, group: Option<&str>, what: &str) -> Result<String, SourceError> {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let mut shell = Command::new("/bin/sh");
        shell
            .arg("-c")
            .arg(command)
            .env("SOURCE", &self.name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a timeout kills whatever it started too.
            .process_group(0);
        if let Some(group) = group {
            shell.env("GROUP", group);
        }
        crate::limits::start_with_the_original_limit(&mut shell);
        let mut child = shell.spawn().map_err(|e| SourceError::Spawn {
            name: self.name.clone(),
            reason: crate::plain::io_error(&e),
        })?;
        let (sender, events) = mpsc::channel::<Event>();
        let mut pipes: Vec<Box<dyn Read + Send>> = Vec::new();
        if let Some(out) = child.stdout.take() {
            pipes.push(Box::new(out));
        }
        if let Some(err) = child.stderr.take() {
            pipes.push(Box::new(err));
        }
        for (index, pipe) in pipes.into_iter().enumerate() {
            let sender = sender.clone();
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let read = pipe.take(MAX_OUTPUT + 1).read_to_end(&mut bytes);
                let _ = sender.send(match (index, read) {
                    (0, _) => Event::Stdout(bytes),
                    _ => Event::Stderr(bytes),
                });
            });
        }
        let pid = child.id();
        std::thread::spawn(move || {
            let _ = sender.send(Event::Exited(child.wait().ok()));
        });
        let deadline = std::time::Instant::now() + self.timeout;
        let (mut stdout, mut stderr, mut status) = (None, None, None);
        let mut hung = false;
        while stdout.is_none() || stderr.is_none() || status.is_none() {
            let now = std::time::Instant::now();
            let wait = if hung {
                KILL_GRACE
            } else {
                deadline.saturating_duration_since(now)
            };
            match events.recv_timeout(wait) {
                Ok(Event::Stdout(bytes)) => stdout = Some(bytes),
                Ok(Event::Stderr(bytes)) => stderr = Some(bytes),
                Ok(Event::Exited(s)) => status = Some(s),
                Err(_) if hung => break,
                Err(_) => {
                    hung = true;
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        let stderr = one_line(stderr.as_deref().unwrap_or_default());
        if hung {
            return Err(SourceError::Hung {
                name: self.name.clone(),
                what: what.to_owned(),
                timeout: self.timeout,
                stderr,
            });
        }
        let failed = |how: String| SourceError::Failed {
            name: self.name.clone(),
            what: what.to_owned(),
            how,
            stderr: stderr.clone(),
        };
        match status.flatten() {
            Some(s) if s.success() => {}
            Some(s) => {
                return Err(failed(match (s.code(), s.signal()) {
                    (Some(code), _) => format!("exit {code}"),
                    (None, Some(signal)) => format!("killed by signal {signal}"),
                    _ => "it ended abnormally".to_owned(),
                }));
            }
            None => return Err(failed("ctl could not wait for it".to_owned())),
        }
        let stdout = stdout.unwrap_or_default();
        let output = |reason: &str| SourceError::Output {
            name: self.name.clone(),
            what: what.to_owned(),
            reason: reason.to_owned(),
        };
        if stdout.len() as u64 > MAX_OUTPUT {
            return Err(output("more than 16 MiB"));
        }
        String::from_utf8(stdout).map_err(|_| output("something that is not UTF-8 text"))
    }
}

/// What a command's threads report.
enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited(Option<std::process::ExitStatus>),
}

/// One answer kept on disk: the command it came from and what it printed,
/// fresh while the file is younger than the source's `cache_time`. A
/// changed command is a miss, never a stale answer. Failing to read or
/// write the cache only costs running the command.
struct Cache {
    path: PathBuf,
    command: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    command: String,
    output: String,
}

impl Cache {
    fn new(dir: &Path, source: &str, upcall: Upcall, group: Option<&str>, command: &str) -> Cache {
        // Source and group names hold only letters, digits, `_`, `-` and
        // `.`, so they make a file name as they are.
        let name = match group {
            Some(group) => format!("{source}.{}.{group}.json", upcall.key()),
            None => format!("{source}.{}.json", upcall.key()),
        };
        Cache {
            path: dir.join(name),
            command: command.to_owned(),
        }
    }

    fn fresh(&self, cache_time: Duration) -> Option<String> {
        let age = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())?;
        if age >= cache_time {
            return None;
        }
        let kept: Kept = serde_json::from_slice(&std::fs::read(&self.path).ok()?).ok()?;
        (kept.command == self.command).then_some(kept.output)
    }

    fn keep(&self, output: &str) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let kept = Kept {
            command: self.command.clone(),
            output: output.to_owned(),
        };
        let _ = std::fs::create_dir_all(dir)
            .and_then(|()| tempfile::NamedTempFile::new_in(dir))
            .and_then(|mut file| {
                serde_json::to_writer(&mut file, &kept)?;
                file.persist(&self.path).map_err(|e| e.error)?;
                Ok(())
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(map: &str, timeout: Duration) -> GroupSource {
        GroupSource {
            name: "test".into(),
            map: Some(map.into()),
            timeout,
            ..GroupSource::default()
        }
    }

    fn ask(source: &GroupSource, group: &str) -> Result<String, SourceError> {
        source.ask(Upcall::Map, Some(group), None, Path::new("hosts.toml"))
    }

    #[test]
    fn the_group_arrives_as_data_never_as_code() {
        let s = source("printf '%s\\n' \"$GROUP\" \"$SOURCE\"", DEFAULT_TIMEOUT);
        assert_eq!(ask(&s, "gpu").unwrap(), "gpu\ntest\n");
        assert_eq!(ask(&s, "a;b$(x)").unwrap(), "a;b$(x)\ntest\n");
    }

    #[test]
    fn failures_and_hangs_are_one_line_with_stderr() {
        let s = source(
            "echo 'no such' >&2; echo partition >&2; exit 3",
            DEFAULT_TIMEOUT,
        );
        assert_eq!(
            ask(&s, "gpu").unwrap_err().to_string(),
            "group source test: its map (GROUP=gpu) command failed (exit 3): no such; partition"
        );
        let s = source(
            "echo waiting >&2; sleep 30 & sleep 30",
            Duration::from_millis(200),
        );
        assert_eq!(
            ask(&s, "gpu").unwrap_err().to_string(),
            "group source test: its map (GROUP=gpu) command gave no answer within 200ms and was killed: waiting"
        );
        let none = GroupSource::default();
        assert!(
            none.ask(Upcall::List, None, None, Path::new("h.toml"))
                .unwrap_err()
                .to_string()
                .contains("no `list` command in h.toml")
        );
    }

    #[test]
    fn answers_are_kept_for_the_cache_time_and_only_for_the_same_command() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("runs");
        let mut s = source(
            &format!("echo x >> {0}; wc -l < {0}", counter.display()),
            DEFAULT_TIMEOUT,
        );
        s.cache_time = Duration::from_secs(3600);
        let cached = |s: &GroupSource| {
            s.ask(Upcall::Map, Some("g"), Some(dir.path()), Path::new("h"))
                .unwrap()
        };
        assert_eq!(cached(&s).trim(), "1");
        assert_eq!(cached(&s).trim(), "1", "kept");
        s.map = Some(format!("{}; true", s.map.clone().unwrap()));
        assert_eq!(cached(&s).trim(), "2", "another command");
        s.cache_time = Duration::ZERO;
        assert_eq!(cached(&s).trim(), "3", "no cache time, no cache");
    }
}
