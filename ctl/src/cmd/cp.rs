//! `ctl cp`: the operands read, the direction decided, and the push or
//! pull of each host run through the fan-out engine.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Failure, Globals, no_limit_if_zero, plain};
use crate::cli::CpArgs;
use crate::error::CtlError;
use crate::fanout::{Deadline, Run};
use crate::host::copy;
use crate::outcome::HostResult;
use crate::output;

/// Copies to or from every target.
pub fn cp(globals: &Globals, args: CpArgs) -> Result<u8, Failure> {
    let config = &globals.config;
    let usage = |m: &str| plain(CtlError::Usage(m.to_owned()));
    let (last, sources) = args
        .paths
        .split_last()
        .ok_or_else(|| usage("ctl cp needs a source and a destination"))?;
    let remote_sources: Vec<_> = sources
        .iter()
        .filter_map(|s| copy::remote_operand(s))
        .collect();
    let pushing = copy::remote_operand(last);
    let (targets_text, direction) = match (&pushing, remote_sources.as_slice()) {
        (Some(dest), []) => (dest.targets.clone(), true),
        (None, [source]) if sources.len() == 1 => (source.targets.clone(), false),
        (Some(_), _) => return Err(usage("copy either to remote hosts or from them, not both")),
        (None, []) => {
            return Err(usage(
                "one side of ctl cp must be remote, as TARGETS:/ABSOLUTE/PATH (web1:/tmp/, not web1:tmp/)",
            ));
        }
        (None, _) => {
            return Err(usage(
                "pull one remote path at a time: ctl cp TARGETS:/PATH LOCAL_DIR",
            ));
        }
    };
    let fleet = globals.fleet()?;
    let targets = fleet.resolve(&targets_text, &args.exclude.exclude)?;
    let client = Arc::new(fleet.client(config, &args.reach)?);
    // ctl itself enforces a copy's timeout, from the start of the host's
    // job (connecting included); 0 means none, as for exec.
    let deadline = no_limit_if_zero(args.timeout).map(Deadline::Timeout);
    let mut run = Run::new(targets, args.reach.fanout, deadline);
    run.fanout.max_failures = args.rolling.max_failures;
    let (console, labels) = (&run.console, &run.labels);
    let report = |result: HostResult<copy::Copied>| {
        let label = &labels[result.index];
        if args.json {
            output::json::write_record(console, label, &result);
        } else if let Some(note) = output::host_note(label, &result) {
            console.note(&note);
        } else if let Ok(copied) = &result.outcome {
            for note in copied.notes() {
                console.note(&format!("{label}: {note}"));
            }
        }
    };
    let options = copy::CopyOptions {
        recursive: args.recursive,
        preserve_owner: args.preserve_owner,
    };
    let end = if direction {
        let mut dest = pushing.map(|d| d.path).unwrap_or_default();
        // Several sources go into a directory that exists, as with cp: the
        // agent refuses a DEST ending in `/` that is not one before it
        // writes anything, where it would otherwise put the first source
        // at DEST and refuse only the second.
        if sources.len() > 1 && !dest.ends_with('/') {
            dest.push('/');
        }
        let sources: Arc<[PathBuf]> = sources.iter().map(PathBuf::from).collect();
        copy::check_sources(&sources, options).map_err(plain)?;
        run.drive(
            |_, target| {
                let (client, sources, dest) = (client.clone(), sources.clone(), dest.clone());
                async move { copy::push(&client, &target, &sources, options, &dest).await }
            },
            report,
        )
        .map_err(plain)?
    } else {
        let path = remote_sources
            .first()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        let local = PathBuf::from(last);
        // From one host, as cp does: into an existing directory, else the
        // new name. From several, or from a list, range or group that
        // happens to name one (as exec decides whether to prefix), one
        // directory per host inside LOCAL_DIR: a script's paths do not
        // change when its group shrinks to one machine.
        let several = run.targets.len() > 1
            || !crate::target::is_single(&targets_text)
            || !args.exclude.exclude.is_empty();
        let into: Vec<copy::LocalDestination> = if several {
            if !local.is_dir() {
                return Err(usage(&format!(
                    "{} is not a directory (a pull from several hosts needs one)",
                    local.display()
                )));
            }
            labels
                .iter()
                .map(|label| copy::LocalDestination::HostDirectory {
                    dir: local.clone(),
                    label: label.clone(),
                })
                .collect()
        } else {
            vec![copy::LocalDestination::Path(local)]
        };
        let into: Arc<[copy::LocalDestination]> = into.into();
        run.drive(
            |index, target| {
                let (client, into, path) = (client.clone(), into.clone(), path.clone());
                async move { copy::pull(&client, &target, &path, options, &into[index]).await }
            },
            report,
        )
        .map_err(plain)?
    };
    Ok(run.conclude(&end))
}
