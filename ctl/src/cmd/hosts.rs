//! `ctl hosts`: the hosts a target list expands to, folded or counted.

use std::path::Path;

use super::{Failure, pick, print_out, resolve};
use crate::cli::HostsArgs;
use crate::config::ConfigDir;
use crate::nodeset;
use crate::target::Target;

/// Prints the hosts, one per line or folded into one node set.
pub fn hosts(config: &ConfigDir, inventory: Option<&Path>, args: HostsArgs) -> Result<u8, Failure> {
    let targets = resolve(config, inventory, &args.targets, &args.exclude.exclude)?;
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
