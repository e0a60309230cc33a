//! `ctl exec`: one literal target with no multi-host output mode streams
//! raw through `crate::host::stream`; anything else runs the exec job of
//! `crate::host::exec` on every host through the fan-out engine, into the
//! output mode asked for.

use std::sync::Arc;

use rexec_protocol::ExecRequest;

use super::{Failure, Fleet, Globals, no_limit_if_zero, pick, plain};
use crate::cli::{ExecArgs, command_line};
use crate::config::ConfigDir;
use crate::error::{CtlError, EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, exit_code};
use crate::fanout::Run;
use crate::host;
use crate::host::input::SharedInput;
use crate::host::stream::ExecOutcome;
use crate::output::Output;
use crate::output::gathered::{Gathered, Layout};
use crate::output::json::JsonLines;
use crate::output::outdir::OutDir;
use crate::output::prefixed::Prefixed;
use crate::target;
use crate::tty;

/// Runs the command on the targets.
pub fn exec(globals: &Globals, args: ExecArgs) -> Result<u8, Failure> {
    let config = &globals.config;
    let mut fleet = globals.fleet()?;
    fleet.inventory.run_as(args.user.clone());
    if args.detach {
        return super::job::detach(config, &fleet, args);
    }
    let single = target::is_single(&args.target)
        && args.exclude.exclude.is_empty()
        && args.select.pick.is_none()
        && !args.gather
        && !args.gather_all
        && !args.by_host
        && !args.diff
        && !args.json
        && args.out_dir.is_none();
    if !single {
        return exec_many(config, &fleet, args);
    }
    let target = fleet.target(&args.target)?;
    let command = command_line(&args.command).map_err(plain)?;
    let client = fleet.client(config, &args.reach)?;
    let request = ExecRequest {
        command,
        env: args.env,
        cwd: args.cwd,
        user: target.user.clone(),
        timeout: no_limit_if_zero(args.timeout),
        stdin: args.stdin || args.tty,
        pty: args.tty.then(tty::pty_request),
        target: Some(target.host.clone()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| plain(CtlError::runtime(&e)))?;
    // An agent that stops answering is given up by the silence rules of
    // `liveness` (with a timeout, `no_answer_bound`).
    let outcome = runtime.block_on(host::stream::exec_streaming(&client, &target, request));
    // The stdin reader thread may be blocked in a read; do not wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(ExecOutcome::Finished(status)) => {
            if status == rexec_protocol::ExitStatus::TimedOut {
                say!("ctl: {target}: command timed out; its process group was killed");
            }
            Ok(exit_code(status))
        }
        Ok(ExecOutcome::BrokenPipe) => Ok(EXIT_BROKEN_PIPE),
        Ok(ExecOutcome::Interrupted) => Ok(EXIT_INTERRUPTED),
        Err(e) => Err((Some(target.to_string()), e)),
    }
}

fn exec_many(config: &ConfigDir, fleet: &Fleet, args: ExecArgs) -> Result<u8, Failure> {
    if args.tty {
        return Err(plain(CtlError::Usage(
            "-t/--tty works with a single target only".into(),
        )));
    }
    let targets = fleet.resolve(&args.target, &args.exclude.exclude)?;
    let targets = pick(targets, &args.select);
    let command = command_line(&args.command).map_err(plain)?;
    if let Some(dir) = &args.out_dir {
        // create_dir_all says "it already exists" of a file in the way.
        if dir.exists() && !dir.is_dir() {
            return Err(plain(CtlError::Output(format!(
                "{} is not a directory (-o names the directory for the hosts' output files)",
                dir.display()
            ))));
        }
        std::fs::create_dir_all(dir).map_err(|e| {
            plain(CtlError::Output(format!(
                "cannot create {}: {}",
                dir.display(),
                crate::plain::io_error(&e)
            )))
        })?;
    }
    let client = Arc::new(fleet.client(config, &args.reach)?);
    let request = ExecRequest {
        command,
        env: args.env,
        cwd: args.cwd,
        timeout: no_limit_if_zero(args.timeout),
        stdin: args.stdin,
        ..ExecRequest::default()
    };
    let mut run = Run::new(targets, args.reach.fanout, None);
    run.fanout.max_failures = args.rolling.max_failures;
    let (console, labels) = (&run.console, &run.labels);
    let layout = if args.diff {
        Some(Layout::Diff)
    } else if args.by_host {
        Some(Layout::ByHost)
    } else if args.gather || args.gather_all {
        Some(Layout::Blocks)
    } else {
        None
    };
    let output: Arc<dyn Output<rexec_protocol::ExitStatus>> = if let Some(layout) = layout {
        let gathered = Gathered::new(console.clone(), labels.clone(), layout, args.gather_all);
        Arc::new(if args.no_prefix {
            gathered.without_prefix()
        } else {
            gathered
        })
    } else if args.json {
        Arc::new(JsonLines::new(
            console.clone(),
            labels.clone(),
            args.max_output,
        ))
    } else if let Some(dir) = args.out_dir {
        Arc::new(
            OutDir::new(console.clone(), labels.clone(), dir)
                .map_err(|e| plain(CtlError::Output(e)))?,
        )
    } else if args.no_prefix {
        Arc::new(Prefixed::new(console.clone(), labels.clone()).without_prefix())
    } else {
        Arc::new(Prefixed::new(console.clone(), labels.clone()))
    };
    let stdin = if args.stdin {
        let input = SharedInput::from_stdin(console.clone()).map_err(|e| {
            plain(CtlError::Local(format!(
                "cannot make a temporary file for our stdin: {}",
                crate::plain::io_error(&e)
            )))
        })?;
        Some(input)
    } else {
        console.report_on_enter(labels.clone());
        None
    };
    let end = run
        .drive(
            |index, target| {
                let mut request = request.clone();
                request.user = target.user.clone();
                request.target = Some(target.host.clone());
                host::exec::run(
                    client.clone(),
                    target,
                    request,
                    index,
                    output.clone(),
                    stdin.clone(),
                )
            },
            |result| output.done(&result),
        )
        .map_err(plain)?;
    if end.interrupted.is_some() {
        let running = console.running_hosts();
        if !running.is_empty() {
            let names = crate::nodeset::fold(running.iter().map(|&h| labels[h].as_str()));
            say!("ctl: interrupted; still running then: {names}");
        }
    }
    output.end();
    Ok(run.conclude(&end))
}
