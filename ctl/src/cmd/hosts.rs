//! `ctl hosts`: the hosts a target list expands to, folded or counted;
//! the groups there are; or, with `--online`, the agents connected to the
//! broker now.

use super::{Failure, Globals, pick, plain, print_out};
use crate::broker::{BrokerLink, DISCOVERY_WINDOW};
use crate::cli::HostsArgs;
use crate::error::CtlError;
use crate::nodeset;
use crate::target::Target;

/// How long connecting to the broker may take for `--online`: as long as
/// ctl's default connect timeout.
const BROKER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Prints the hosts, one per line or folded into one node set.
pub fn hosts(globals: &Globals, args: HostsArgs) -> Result<u8, Failure> {
    let fleet = globals.fleet()?;
    if args.groups {
        let names = fleet
            .inventory
            .group_names()
            .map_err(|e| plain(CtlError::Usage(e.to_string())))?;
        return print_out(&names.iter().map(|n| format!("{n}\n")).collect::<String>());
    }
    let mut targets = match &args.targets {
        Some(list) if args.online => Some(fleet.resolve(list, &args.exclude.exclude)?),
        _ => None,
    };
    if args.online {
        let Some(broker) = &fleet.broker else {
            return Err(plain(CtlError::Usage(
                "--online lists the agents on a broker: give one with --broker URL, REXEC_BROKER or hosts.toml's [broker]".into(),
            )));
        };
        let link = BrokerLink::connect(broker, BROKER_CONNECT_TIMEOUT, crate::connect::software())
            .map_err(plain)?;
        let mut online = link
            .discover(args.wait.unwrap_or(DISCOVERY_WINDOW))
            .map_err(plain)?;
        online.sort_by(|a, b| nodeset::node_order(&a.name, &b.name));
        online.dedup_by(|a, b| a.name == b.name);
        if targets.is_none() {
            // `-x` without a target list leaves those out of all of them.
            let mut excluded = Vec::new();
            for list in &args.exclude.exclude {
                excluded.extend(fleet.resolve(list, &[])?.into_iter().map(|t| t.host));
            }
            online.retain(|agent| !excluded.contains(&agent.name));
        }
        // Named targets keep their user, so that the names feed ctl again.
        let listed: Vec<(String, &rexec_broker::Announcement)> = match &mut targets {
            Some(targets) => online
                .iter()
                .flat_map(|agent| {
                    targets
                        .iter()
                        .filter(|t| t.host == agent.name)
                        .map(move |t| (t.minimal(), agent))
                })
                .collect(),
            None => online.iter().map(|a| (a.name.clone(), a)).collect(),
        };
        let text: String = if args.json {
            listed
                .iter()
                .map(|(_, agent)| {
                    let record = serde_json::json!({
                        "name": agent.name,
                        "fingerprint": agent.fingerprint,
                        "version": agent.version,
                    });
                    format!("{record}\n")
                })
                .collect()
        } else if args.fold {
            if listed.is_empty() {
                String::new()
            } else {
                nodeset::fold(listed.iter().map(|(name, _)| name.as_str())) + "\n"
            }
        } else {
            listed.iter().map(|(name, _)| format!("{name}\n")).collect()
        };
        return print_out(&text);
    }
    // Only here may a list name no host: counted 0, listed as nothing.
    if let (Some(list), None) = (&args.targets, &targets) {
        targets = Some(fleet.resolve_any(list, &args.exclude.exclude)?);
    }
    let targets = pick(targets.unwrap_or_default(), &args.select);
    let text = if args.count {
        format!("{}\n", targets.len())
    } else if args.fold && targets.is_empty() {
        String::new()
    } else if args.fold {
        let names: Vec<String> = targets.iter().map(Target::minimal).collect();
        nodeset::fold(names.iter().map(String::as_str)) + "\n"
    } else {
        targets.iter().map(|t| t.minimal() + "\n").collect()
    };
    print_out(&text)
}
