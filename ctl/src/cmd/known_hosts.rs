//! `ctl known-hosts`: list or remove the agents' recorded fingerprints.

use super::{Failure, Globals, load_known_hosts, plain, print_out};
use crate::cli::KnownHostsAction;
use crate::error::{CtlError, FileError};
use crate::target::TargetSpec;

/// Lists known hosts, or removes one.
pub fn known_hosts(globals: &Globals, action: KnownHostsAction) -> Result<u8, Failure> {
    let config = &globals.config;
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
            let fleet = globals.fleet()?;
            let key = if host.starts_with(crate::broker_config::KNOWN_HOSTS_PREFIX) {
                // The key as `list` shows it (and HOST KEY CHANGED names it).
                host
            } else {
                let spec =
                    TargetSpec::parse(&host).map_err(|e| plain(CtlError::Usage(e.to_string())))?;
                match &fleet.broker {
                    // An agent's name on the broker; HOST:PORT still means a
                    // direct entry, which cannot be meant otherwise.
                    Some(broker) if spec.port.is_none() => broker.known_hosts_key(
                        &crate::broker::agent_from_spec(spec, &fleet.inventory)
                            .map_err(plain)?
                            .host,
                    ),
                    // The port the host is reached on: the inventory's,
                    // unless given; the name in lower case, as recorded.
                    _ => crate::known_hosts::canonical(&fleet.inventory.complete(spec).host_port()),
                }
            };
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
