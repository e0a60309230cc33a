//! `ctl completions SHELL` and the hidden `ctl man-pages DIR`: shell
//! completions and man pages made from the same clap definitions as the
//! command line itself (`crate::cli`), so they never fall behind it.

use std::path::Path;

use super::{Failure, plain, print_out};
use crate::cli::whole_command;
use crate::error::CtlError;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<u8, Failure> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut whole_command(), "ctl", &mut script);
    print_out(&String::from_utf8_lossy(&script))
}

/// Writes `ctl.1` and one `ctl-COMMAND.1` per visible command into `dir`.
pub fn man_pages(dir: &Path) -> Result<u8, Failure> {
    rexec_man::write(whole_command(), env!("CARGO_PKG_VERSION"), dir).map_err(|e| {
        plain(CtlError::Output(format!(
            "cannot write {}: {}",
            e.path.display(),
            crate::plain::io_error(&e.error)
        )))
    })?;
    Ok(0)
}
