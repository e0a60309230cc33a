//! The man pages of rexec's binaries, made from the same clap definitions
//! as their command lines so that they never fall behind them: one page
//! for the binary and one `NAME-COMMAND` page for each visible command.
//! Both binaries write them with a hidden `man-pages DIR` command, which
//! the Debian packaging runs.

use std::path::{Path, PathBuf};

/// A page that could not be written, and why.
pub struct WriteError {
    /// The page or the directory that failed.
    pub path: PathBuf,
    /// What went wrong.
    pub error: std::io::Error,
}

/// Writes `NAME.1` and one `NAME-COMMAND.1` per visible command of
/// `command` into `dir`, creating `dir` if needed; every page names
/// `version` (the binary's `CARGO_PKG_VERSION`).
pub fn write(
    mut command: clap::Command,
    version: &'static str,
    dir: &Path,
) -> Result<(), WriteError> {
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |error| WriteError { path, error }
    };
    std::fs::create_dir_all(dir).map_err(failed(dir))?;
    command.build();
    let binary = command.get_name().to_owned();
    let mut pages = vec![(binary.clone(), command.clone())];
    for sub in command
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("{binary}-{}", sub.get_name());
        let page = sub.clone().display_name(&name).version(version);
        pages.push((name, page));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut text = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut text)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(failed(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("tool")
            .subcommand(clap::Command::new("run").about("Runs it"))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn one_page_for_the_binary_and_one_per_visible_command() {
        let dir = std::env::temp_dir().join(format!("rexec-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(cli(), "1.2.3", &dir).unwrap_or_else(|e| panic!("{}: {}", e.path.display(), e.error));
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["tool-run.1", "tool.1"]);
        let run = std::fs::read_to_string(dir.join("tool-run.1")).unwrap();
        assert!(run.contains("tool\\-run"), "{run}");
        assert!(run.contains("1.2.3"), "{run}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_that_cannot_be_made_is_named() {
        let err = write(cli(), "1.2.3", Path::new("/proc/self/no-such/dir"))
            .err()
            .unwrap();
        assert_eq!(err.path, Path::new("/proc/self/no-such/dir"));
    }
}
