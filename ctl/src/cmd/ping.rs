//! `ctl ping`: the handshake and one round trip per host, through the
//! fan-out engine.

use std::sync::Arc;

use super::{Failure, Globals, plain};
use crate::cli::PingArgs;
use crate::console::Stream;
use crate::fanout::{Deadline, Run};
use crate::host::ping;
use crate::output;

/// Pings every target; one line (or JSON object) per host.
pub fn ping(globals: &Globals, args: PingArgs) -> Result<u8, Failure> {
    let config = &globals.config;
    let fleet = globals.fleet()?;
    let targets = fleet.resolve(&args.targets, &args.exclude.exclude)?;
    let client = Arc::new(fleet.client(config, &args.reach)?);
    // Connect is bounded by the client; the round trip gets as long again.
    let deadline = Deadline::NoAnswer(args.reach.connect_timeout.saturating_mul(2));
    let mut run = Run::new(targets, args.reach.fanout, Some(deadline));
    run.fanout.max_failures = args.rolling.max_failures;
    let end = run
        .drive(
            |_, target| {
                let client = client.clone();
                async move { ping::ping(&client, &target).await }
            },
            |result| {
                let label = &run.labels[result.index];
                if args.json {
                    output::json::write_record(&run.console, label, &result);
                } else if let Ok(pong) = &result.outcome {
                    let line = format!("{label}: {}\n", pong.line());
                    run.console.write(Stream::Stdout, line.as_bytes());
                } else if let Some(note) = output::host_note(label, &result) {
                    run.console.note(&note);
                }
            },
        )
        .map_err(plain)?;
    Ok(run.conclude(&end))
}
