//! Broker mode, ctl's side: which broker a command uses (`--broker` or
//! `REXEC_BROKER` over hosts.toml's `[broker]`, which
//! `crate::broker_config` reads), the one
//! connection to it that every host of a run shares ([`BrokerLink`]),
//! what a target is on a broker (an agent's name), how its host key is
//! recorded, and how the carrier's errors read to a user.
//!
//! The session itself is not here: `crate::connect` runs the same TLS,
//! host key check and hello over the broker's byte stream as over TCP.

use std::time::Duration;

use rexec_broker::{Announcement, BrokerError, BrokerOptions, BrokerStream, Carrier};
use rexec_protocol::{ErrorKind, ErrorReport};

use crate::broker_config::{BrokerConfig, known_hosts_key};
use crate::error::{ConnectionError, CtlError};
use crate::inventory::Inventory;
use crate::target::{self, ListItem, NO_PORT, Target, TargetSpec};

/// How long `ctl hosts --online` collects the agents' answers. Every agent
/// answers from its open connection, without forking anything, so on a LAN
/// all answers are in within milliseconds; a second leaves room for a
/// broker on another continent (a few hundred ms there and back) and for a
/// loaded broker relaying ten thousand answers, and is still short enough
/// to type at a prompt or call in a loop. An agent slower than that is in
/// no state to run commands either.
pub const DISCOVERY_WINDOW: Duration = Duration::from_secs(1);

/// The broker a command uses: the `--broker` URLs (or `REXEC_BROKER`'s)
/// with hosts.toml's other `[broker]` settings, else hosts.toml's
/// `[broker]` when it names a URL, else none (direct mode).
///
/// # Errors
/// `--broker` with nothing but commas and spaces.
pub fn choose(flag: Option<&str>, inventory: &Inventory) -> Result<Option<BrokerConfig>, CtlError> {
    let configured = inventory.broker().cloned();
    match flag {
        // An empty REXEC_BROKER means none, as an empty variable usually does.
        Some(list) if list.trim().is_empty() => {
            Ok(configured.filter(|config| !config.urls.is_empty()))
        }
        Some(list) => {
            let urls = BrokerOptions::split_urls(list);
            if urls.is_empty() {
                return Err(CtlError::Usage(format!(
                    "--broker {list:?} names no broker URL (nats://HOST:PORT or tls://HOST:PORT)"
                )));
            }
            Ok(Some(BrokerConfig {
                urls,
                ..configured.unwrap_or_default()
            }))
        }
        None => Ok(configured.filter(|config| !config.urls.is_empty())),
    }
}

/// A target that is an agent's name on the broker: a port means nothing
/// there. Checked on the list as typed, before the inventory fills ports
/// in: an inventory's ports are for direct mode and are left out, so one
/// hosts.toml serves both modes.
///
/// # Errors
/// A host of the list written with a port.
pub fn refuse_ports(list: &str) -> Result<(), CtlError> {
    // A list that does not parse is reported by the resolution itself.
    let Ok(items) = target::parse_list(list) else {
        return Ok(());
    };
    for term in items {
        if let ListItem::Hosts(specs) = term.item
            && let Some(spec) = specs.iter().find(|s| s.port.is_some())
        {
            return Err(port_refused(spec));
        }
    }
    Ok(())
}

fn port_refused(spec: &TargetSpec) -> CtlError {
    CtlError::Usage(format!(
        "{}:{}: a port means nothing in broker mode (an agent is reached by its name on the broker)",
        spec.host,
        spec.port.unwrap_or_default()
    ))
}

/// `target` (resolved through the inventory) as an agent on the broker:
/// its name checked, the port the inventory may have given it left out.
///
/// # Errors
/// A host that cannot be an agent's name on the broker.
pub fn agent(mut target: Target) -> Result<Target, CtlError> {
    rexec_broker::validate_name(&target.host)
        .map_err(|e| CtlError::Usage(format!("bad target: {e}")))?;
    target.port = NO_PORT;
    Ok(target)
}

/// One target typed on the command line, in broker mode.
///
/// # Errors
/// A port, or a host that cannot be an agent's name.
pub fn agent_from_spec(spec: TargetSpec, inventory: &Inventory) -> Result<Target, CtlError> {
    if spec.port.is_some() {
        return Err(port_refused(&spec));
    }
    agent(inventory.complete(spec))
}

/// Every target of a resolved list as an agent on the broker, without the
/// duplicates that dropping inventory ports may leave.
///
/// # Errors
/// A host that cannot be an agent's name.
pub fn agents(targets: Vec<Target>) -> Result<Vec<Target>, CtlError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(targets.len());
    for target in targets {
        let target = agent(target)?;
        if seen.insert(target.clone()) {
            out.push(target);
        }
    }
    Ok(out)
}

/// The one connection to the broker of this ctl process, shared by every
/// host of a run. It lives on a runtime of its own (one thread), so it is
/// made before a run starts, whichever runtime the run then uses: a broker
/// that cannot be reached is one line, not one failure per host.
pub struct BrokerLink {
    carrier: Carrier,
    prefix: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for BrokerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerLink")
            .field("carrier", &self.carrier)
            .finish_non_exhaustive()
    }
}

impl BrokerLink {
    /// Connects to the broker of `config`, within `timeout`, naming
    /// ourselves `client_name` to it (ctl's name and version, as in the
    /// hello).
    ///
    /// # Errors
    /// Unusable settings (a bad URL, a credentials file others can read),
    /// or a broker that cannot be reached, refuses our credentials or
    /// presents a certificate we do not trust: one line each.
    pub fn connect(
        config: &BrokerConfig,
        timeout: Duration,
        client_name: String,
    ) -> Result<BrokerLink, CtlError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ctl-broker")
            .enable_all()
            .build()
            .map_err(|e| CtlError::runtime(&e))?;
        let mut options = BrokerOptions::new(config.urls.clone());
        options.credentials = config.credentials.clone();
        options.ca_file = config.ca_file.clone();
        options.fingerprint = config.fingerprint;
        options.subject_prefix = config.prefix().to_owned();
        options.client_name = Some(client_name);
        options.retry_forever = false;
        // An agent that does not answer the open request counts against the
        // same bound as a host that does not answer TCP.
        options.tuning.open_timeout = timeout;
        let urls = config.urls.join(",");
        let carrier = runtime
            .block_on(async { tokio::time::timeout(timeout, Carrier::connect(options)).await })
            .map_err(|_| {
                CtlError::Connection(ConnectionError::Broker(format!(
                    "the broker at {urls} did not answer within the connect timeout of {}",
                    humantime::format_duration(timeout)
                )))
            })?
            .map_err(|e| failure(e, timeout))?;
        Ok(BrokerLink {
            carrier,
            prefix: config.prefix().to_owned(),
            runtime: Some(runtime),
        })
    }

    /// The known hosts key of agent `name` on this broker.
    pub fn known_hosts_key(&self, name: &str) -> String {
        known_hosts_key(&self.prefix, name)
    }

    /// A byte stream to agent `name`, for TLS to run over.
    ///
    /// # Errors
    /// [`ConnectionError::Offline`] at once when no agent of that name is
    /// connected to the broker; a busy or silent agent; a broken broker
    /// connection.
    pub async fn dial(&self, name: &str, timeout: Duration) -> Result<BrokerStream, CtlError> {
        self.carrier
            .dial(name)
            .await
            .map_err(|e| failure(e, timeout))
    }

    /// The agents connected to the broker now, sorted by name. A name two
    /// agents answer to is said on stderr, one line each: sessions to it
    /// fail, and the list shows it once.
    ///
    /// # Errors
    /// The request cannot be sent, or the broker's permissions do not let
    /// us ask or read the answers.
    pub fn discover(&self, window: Duration) -> Result<Vec<Announcement>, CtlError> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| CtlError::Local("the broker connection is closed".into()))?;
        let found = runtime
            .block_on(self.carrier.discover(window))
            .map_err(|e| failure(e, window))?;
        for name in shared_names(&found) {
            say!("ctl: {name}: {}", BrokerError::NameClash(name.to_owned()));
        }
        Ok(found)
    }
}

impl Drop for BrokerLink {
    fn drop(&mut self) {
        // Possibly dropped on a task of the run's runtime, where waiting
        // for this one to stop is not allowed; nothing on it needs waiting
        // for once the run is over.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The names agents of more than one identity answered to, once each, in
/// order (`found` is sorted by name). One agent's answers repeated (anyone
/// on the broker can send our discovery request again, with our inbox as
/// its reply) are not two agents.
fn shared_names(found: &[Announcement]) -> Vec<&str> {
    let mut shared: Vec<&str> = found
        .windows(2)
        .filter(|pair| pair[0].name == pair[1].name && pair[0].fingerprint != pair[1].fingerprint)
        .map(|pair| pair[0].name.as_str())
        .collect();
    shared.dedup();
    shared
}

/// A carrier error as ctl's own: `offline` and `lost` for the agent,
/// `broker` for the broker, bad usage for unusable settings.
pub fn failure(error: BrokerError, timeout: Duration) -> CtlError {
    match error {
        BrokerError::Offline(_) => CtlError::Connection(ConnectionError::Offline),
        BrokerError::Lost(reason) => {
            CtlError::Connection(ConnectionError::SessionLost(reason.to_string()))
        }
        BrokerError::Timeout(_) => CtlError::Connection(ConnectionError::ConnectTimeout(timeout)),
        // Retried within the connect timeout, as an agent that had no room
        // for our TCP handshake is.
        BrokerError::Refused { reason, .. } if reason == "busy" => {
            CtlError::Agent(ErrorReport::new(
                ErrorKind::Busy,
                "the agent has too many sessions being set up; try again later",
            ))
        }
        BrokerError::Refused { reason, .. } if reason == "no-room" => {
            CtlError::Agent(ErrorReport::new(
                ErrorKind::Busy,
                "the agent's sessions through the broker hold all the room its connection has; try again later",
            ))
        }
        BrokerError::Refused { reason, .. } => {
            CtlError::Connection(ConnectionError::Protocol(format!(
                "the agent refused the session through the broker ({})",
                crate::plain::agent_text(&reason)
            )))
        }
        BrokerError::BadName(text) | BrokerError::Config(text) => CtlError::Usage(text),
        other => CtlError::Connection(ConnectionError::Broker(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rexec_broker::Credentials;

    use super::*;

    /// An inventory file (`/h/hosts.toml`) holding `text`.
    fn hosts_toml(text: &str) -> Inventory {
        Inventory::parse(text, PathBuf::from("/h/hosts.toml")).unwrap()
    }

    #[test]
    fn the_flag_overrides_the_files_urls_and_keeps_its_credentials() {
        let inventory = hosts_toml("[broker]\nurl = \"tls://file:4222\"\ntoken_file = \"/t\"\n");
        let chosen = choose(Some("tls://flag:1, tls://flag:2"), &inventory)
            .unwrap()
            .unwrap();
        assert_eq!(chosen.urls, ["tls://flag:1", "tls://flag:2"]);
        assert_eq!(chosen.credentials, Credentials::TokenFile("/t".into()));
        assert_eq!(
            choose(None, &inventory).unwrap().unwrap().urls,
            ["tls://file:4222"]
        );
        assert_eq!(
            choose(Some(""), &inventory).unwrap().unwrap().urls,
            ["tls://file:4222"]
        );
        assert_eq!(choose(None, &Inventory::default()).unwrap(), None);
        assert!(choose(Some(","), &Inventory::default()).is_err());
        // Credentials alone do not turn broker mode on.
        let credentials_only = hosts_toml("[broker]\ntoken_file = \"/t\"\n");
        assert_eq!(choose(None, &credentials_only).unwrap(), None);
    }

    #[test]
    fn targets_on_a_broker_are_names_without_ports() {
        let inventory = hosts_toml(
            "[groups]\nlab = \"pc[1-2]\"\n[hosts.\"pc[1-2]\"]\nport = 7000\nuser = \"lab\"\n",
        );
        let targets = agents(inventory.resolve("@lab,pc1", &[]).unwrap()).unwrap();
        let shown: Vec<String> = targets.iter().map(Target::to_string).collect();
        assert_eq!(shown, ["lab@pc1", "lab@pc2"]);
        assert_eq!(targets[0].minimal(), "lab@pc1");
        assert_eq!(
            refuse_ports("pc1,pc2:7722").unwrap_err().to_string(),
            "pc2:7722: a port means nothing in broker mode (an agent is reached by its name on the broker)"
        );
        assert!(refuse_ports("@lab,pc[1-3]").is_ok());
        let spec = TargetSpec::parse("labpc07:7000").unwrap();
        assert!(agent_from_spec(spec, &inventory).is_err());
        let spec = TargetSpec::parse("10.0.0.1").unwrap();
        assert_eq!(
            agent_from_spec(spec, &inventory).unwrap_err().to_string(),
            "bad target: agent name \"10.0.0.1\" contains '.': only letters, digits, '-' and '_' are allowed"
        );
    }

    #[test]
    fn names_two_agents_answer_to_are_found_once_each() {
        let agent = |(name, key): (&str, &str)| Announcement {
            name: name.to_owned(),
            fingerprint: key.to_owned(),
            version: String::new(),
        };
        let found = [
            ("a1", "k1"),
            ("a1", "k1"),
            ("a1", "k2"),
            ("a2", "k3"),
            ("a3", "k4"),
            ("a3", "k5"),
            ("a4", "k6"),
            ("a4", "k6"),
        ]
        .map(agent);
        // a4's one agent answered twice: not two agents.
        assert_eq!(shared_names(&found), ["a1", "a3"]);
        assert!(shared_names(&[agent(("a1", "k1")), agent(("a2", "k1"))]).is_empty());
    }

    #[test]
    fn the_carriers_errors_get_our_kinds() {
        let kind = |e| failure(e, Duration::from_secs(5)).kind();
        assert_eq!(kind(BrokerError::Offline("a".into())), "offline");
        assert_eq!(
            kind(BrokerError::Lost(
                rexec_broker::LostReason::BrokerDisconnected
            )),
            "lost"
        );
        assert_eq!(
            kind(BrokerError::Connect("cannot reach the broker at x".into())),
            "broker"
        );
        assert_eq!(kind(BrokerError::Config("bad".into())), "usage");
        let busy = BrokerError::Refused {
            name: "a".into(),
            reason: "busy".into(),
        };
        assert_eq!(kind(busy), "busy");
        let no_room = BrokerError::Refused {
            name: "a".into(),
            reason: "no-room".into(),
        };
        assert_eq!(
            failure(no_room, Duration::ZERO).to_string(),
            "agent error (busy): the agent's sessions through the broker hold all the room its connection has; try again later"
        );
        assert_eq!(
            failure(BrokerError::Offline("a".into()), Duration::ZERO).to_string(),
            "not connected to the broker"
        );
        let clash = failure(BrokerError::NameClash("a1".into()), Duration::ZERO);
        assert_eq!(clash.kind(), "broker");
        assert!(
            clash
                .to_string()
                .starts_with("two agents answer to the name a1 on the broker"),
            "{clash}"
        );
    }
}
