//! The commands' bodies, one file each, and what they share: loading our
//! identity, known hosts and inventory, resolving a target list, and
//! writing to our stdout. `lib.rs` dispatches here from the parsed
//! command line (`crate::cli`).

pub mod cp;
pub mod docs;
pub mod exec;
pub mod hosts;
pub mod identity;
pub mod job;
pub mod known_hosts;
pub mod ping;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rexec_protocol::{Identity, IdentityError};

use crate::broker::BrokerLink;
use crate::broker_config::BrokerConfig;
use crate::cli::{Reach, Select};
use crate::config::ConfigDir;
use crate::connect::{Carrier, Client, software};
use crate::error::{CtlError, EXIT_BROKEN_PIPE, FileError};
use crate::inventory::Inventory;
use crate::known_hosts::KnownHosts;
use crate::target::{Target, TargetSpec};

/// An error with the target it concerns, if any.
pub type Failure = (Option<String>, CtlError);

/// An error that concerns no one target.
pub(crate) fn plain(e: CtlError) -> Failure {
    (None, e)
}

/// Our identity; a missing one says how to create it. A key without its
/// certificate is not a missing identity (`ctl keygen` would refuse to
/// overwrite the key): the certificate is named.
pub(crate) fn load_identity(config: &ConfigDir) -> Result<Identity, Failure> {
    let paths = config.identity();
    match Identity::load(&paths) {
        Ok(identity) => Ok(identity),
        Err(IdentityError::Io { path, source })
            if source.kind() == std::io::ErrorKind::NotFound && path == paths.private_key =>
        {
            Err(plain(CtlError::File(FileError::NoIdentity(path))))
        }
        Err(e) => Err(plain(e.into())),
    }
}

/// Known hosts, each malformed line named on stderr.
pub(crate) fn load_known_hosts(config: &ConfigDir) -> Result<KnownHosts, Failure> {
    let path = config.known_hosts();
    let hosts = KnownHosts::load(&path).map_err(|source| {
        plain(CtlError::File(FileError::KnownHosts {
            path: path.clone(),
            source,
        }))
    })?;
    for line in hosts.malformed() {
        say!(
            "ctl: {}:{line}: not HOST:PORT SHA256:<fingerprint>; line ignored",
            path.display()
        );
    }
    Ok(hosts)
}

/// The inventory: `explicit`, else the config directory's.
pub(crate) fn load_inventory(
    config: &ConfigDir,
    explicit: Option<&Path>,
) -> Result<Inventory, Failure> {
    Inventory::load(explicit, config).map_err(|e| plain(CtlError::Usage(e.to_string())))
}

/// Where a command's targets are: the inventory, and the broker when
/// there is one (then every target is an agent's name on it).
pub(crate) struct Fleet {
    pub inventory: Inventory,
    pub broker: Option<BrokerConfig>,
}

/// What the global flags give every command: the config directory, and
/// where its targets are (`--inventory`, `--broker`).
pub struct Globals<'a> {
    pub config: ConfigDir,
    pub inventory: Option<&'a Path>,
    pub broker: Option<&'a str>,
}

impl Globals<'_> {
    /// The inventory and the broker `--broker` (or `REXEC_BROKER`, or the
    /// inventory's `[broker]`) names.
    pub(crate) fn fleet(&self) -> Result<Fleet, Failure> {
        let inventory = load_inventory(&self.config, self.inventory)?;
        let broker = crate::broker::choose(self.broker, &inventory).map_err(plain)?;
        Ok(Fleet { inventory, broker })
    }
}

impl Fleet {
    /// The targets `list` names, less `exclude`; none left is an error.
    pub fn resolve(&self, list: &str, exclude: &[String]) -> Result<Vec<Target>, Failure> {
        let targets = self.resolve_any(list, exclude)?;
        if targets.is_empty() {
            let empty = crate::inventory::InventoryError::Empty;
            return Err(plain(CtlError::Usage(empty.to_string())));
        }
        Ok(targets)
    }

    /// The same where none left is an empty list (`ctl hosts --count`).
    pub fn resolve_any(&self, list: &str, exclude: &[String]) -> Result<Vec<Target>, Failure> {
        if self.broker.is_some() {
            for list in std::iter::once(list).chain(exclude.iter().map(String::as_str)) {
                crate::broker::refuse_ports(list).map_err(plain)?;
            }
        }
        let targets = self
            .inventory
            .resolve_any(list, exclude)
            .map_err(|e| plain(CtlError::Usage(e.to_string())))?;
        match self.broker {
            Some(_) => crate::broker::agents(targets).map_err(plain),
            None => Ok(targets),
        }
    }

    /// The one target `text` names.
    pub fn target(&self, text: &str) -> Result<Target, Failure> {
        let spec = TargetSpec::parse(text).map_err(|e| plain(CtlError::Usage(e.to_string())))?;
        match self.broker {
            Some(_) => crate::broker::agent_from_spec(spec, &self.inventory).map_err(plain),
            None => Ok(self.inventory.complete(spec)),
        }
    }

    /// What every connection of this run shares, from our files and
    /// `reach`; in broker mode, connected to the broker.
    pub fn client(&self, config: &ConfigDir, reach: &Reach) -> Result<Client, Failure> {
        let identity = load_identity(config)?;
        let known_hosts = Mutex::new(load_known_hosts(config)?);
        let carrier = match &self.broker {
            Some(broker) => Carrier::Broker(Arc::new(
                BrokerLink::connect(broker, reach.connect_timeout, software()).map_err(plain)?,
            )),
            None => Carrier::Tcp,
        };
        Ok(Client {
            identity,
            known_hosts,
            strict_host_key: reach.strict_host_key,
            connect_timeout: reach.connect_timeout,
            carrier,
            config_dir_flag: config.flag(),
        })
    }
}

/// `--pick N`: N of `targets` at random, in their order; all of them when
/// there are no more than N.
pub(crate) fn pick(targets: Vec<Target>, select: &Select) -> Vec<Target> {
    let Some(n) = select.pick.filter(|&n| n < targets.len()) else {
        return targets;
    };
    let mut chosen = fastrand::choose_multiple(0..targets.len(), n);
    chosen.sort_unstable();
    let mut chosen = chosen.into_iter().peekable();
    targets
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| chosen.next_if_eq(&i).map(|_| t))
        .collect()
}

/// Writes `text` to our stdout: 0 once written, 141 when its reader went
/// away, an error when it could not take it (a full disk).
pub(crate) fn print_out(text: &str) -> Result<u8, Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(EXIT_BROKEN_PIPE),
        Err(e) => Err(plain(CtlError::write_failed("to stdout", &e))),
    }
}

/// `--timeout 0` asks for no limit, as GNU timeout reads it (and the
/// agent too).
pub(crate) fn no_limit_if_zero(timeout: Option<Duration>) -> Option<Duration> {
    timeout.filter(|t| !t.is_zero())
}
