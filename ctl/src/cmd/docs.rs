//! `ctl completions SHELL` and the hidden `ctl man-pages DIR`: shell
//! completions and man pages made from the same clap definitions as the
//! command line itself (`crate::cli`), so they never fall behind it.

use std::path::Path;

use clap::CommandFactory;

use super::{Failure, plain, print_out};
use crate::cli::Cli;
use crate::error::CtlError;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<u8, Failure> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "ctl", &mut script);
    print_out(&String::from_utf8_lossy(&script))
}

/// Writes `ctl.1` and one `ctl-COMMAND.1` per visible command into `dir`.
pub fn man_pages(dir: &Path) -> Result<u8, Failure> {
    let failed = |what: &Path, e: &std::io::Error| {
        plain(CtlError::Output(format!(
            "cannot write {}: {}",
            what.display(),
            crate::plain::io_error(e)
        )))
    };
    std::fs::create_dir_all(dir).map_err(|e| failed(dir, &e))?;
    let mut command = Cli::command();
    command.build();
    let mut pages = vec![("ctl".to_owned(), command.clone())];
    for sub in command
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("ctl-{}", sub.get_name());
        pages.push((
            name.clone(),
            sub.clone()
                .display_name(name)
                .version(env!("CARGO_PKG_VERSION")),
        ));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut text = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut text)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|e| failed(&path, &e))?;
    }
    Ok(0)
}
