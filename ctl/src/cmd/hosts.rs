//! `ctl hosts`: the hosts a target list expands to, folded or counted.

use std::path::Path;

use super::{Failure, load_inventory, pick, plain, print_out, resolve};
use crate::cli::HostsArgs;
use crate::config::ConfigDir;
use crate::error::CtlError;
use crate::nodeset;
use crate::target::Target;

/// Prints the hosts, one per line or folded into one node set.
pub fn hosts(config: &ConfigDir, inventory: Option<&Path>, args: HostsArgs) -> Result<u8, Failure> {
    let Some(list) = &args.targets else {
        let names = load_inventory(config, inventory)?
            .group_names()
            .map_err(|e| plain(CtlError::Usage(e.to_string())))?;
        return print_out(&names.iter().map(|n| format!("{n}\n")).collect::<String>());
    };
    let targets = resolve(config, inventory, list, &args.exclude.exclude)?;
    let targets = pick(targets, &args.select);
    let text = if args.count {
        format!("{}\n", targets.len())
    } else if args.fold {
        let names: Vec<String> = targets.iter().map(Target::minimal).collect();
        nodeset::fold(names.iter().map(String::as_str)) + "\n"
    } else {
        targets.iter().map(|t| t.minimal() + "\n").collect()
    };
    print_out(&text)
}
