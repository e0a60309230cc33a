//! `ctl known-hosts`: list or remove the agents' recorded fingerprints.

use std::path::Path;

use super::{Failure, load_inventory, load_known_hosts, plain, print_out};
use crate::cli::KnownHostsAction;
use crate::config::ConfigDir;
use crate::error::{CtlError, FileError};
use crate::target::TargetSpec;

/// Lists known hosts, or removes one.
pub fn known_hosts(
    config: &ConfigDir,
    inventory: Option<&Path>,
    action: KnownHostsAction,
) -> Result<u8, Failure> {
    let mut hosts = load_known_hosts(config)?;
    match action {
        KnownHostsAction::List => {
            let text: String = hosts
                .entries()
                .iter()
                .map(|(host, fingerprint)| format!("{host} {fingerprint}\n"))
                .collect();
            print_out(&text)
        }
        KnownHostsAction::Remove { host } => {
            // The port the host is reached on: the inventory's, unless given.
            let spec =
                TargetSpec::parse(&host).map_err(|e| plain(CtlError::Usage(e.to_string())))?;
            let key = load_inventory(config, inventory)?
                .complete(spec)
                .host_port();
            let path = hosts.path().to_path_buf();
            let removed = hosts
                .remove(&key)
                .map_err(|source| plain(CtlError::File(FileError::KnownHosts { path, source })))?;
            if removed == 0 {
                return Err(plain(CtlError::Usage(format!(
                    "{key} is not in known hosts"
                ))));
            }
            say!("removed {key} from {}", hosts.path().display());
            Ok(0)
        }
    }
}
