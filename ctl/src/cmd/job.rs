//! `ctl exec --detach` and `ctl job …`, through the fan-out engine: one
//! job id for every host, then per host the request about it, and the
//! exit status as `ctl exec` gives it.

use std::sync::Arc;
use std::time::Duration;

use rexec_protocol::{DetachRequest, ExecRequest, JobId, JobRequest};

use super::{Failure, Fleet, Globals, no_limit_if_zero, pick, plain};
use crate::cli::job::{JobAction, JobTarget};
use crate::cli::{ExecArgs, command_line};
use crate::config::ConfigDir;
use crate::console::{Console, Stream};
use crate::error::CtlError;
use crate::fanout::{Deadline, Run, RunEnd};
use crate::host::job::{self, JobEnd, state_text, time_text};
use crate::outcome::{HostResult, Labels};
use crate::output::{self, Output, host_note};
use crate::target;

/// A new job id: 128 bits from the system's random source.
fn new_job_id() -> Result<JobId, Failure> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| {
            plain(CtlError::Local(
                "cannot get random bytes for a job id".into(),
            ))
        })?;
    Ok(JobId::from_bytes(bytes))
}

/// `ctl exec --detach`: starts the command as one job on every target and
/// prints its id once, when at least one host runs it.
pub(crate) fn detach(config: &ConfigDir, fleet: &Fleet, args: ExecArgs) -> Result<u8, Failure> {
    let single = target::is_single(&args.target)
        && args.exclude.exclude.is_empty()
        && args.select.pick.is_none();
    let targets = fleet.resolve(&args.target, &args.exclude.exclude)?;
    let targets = pick(targets, &args.select);
    let command = command_line(&args.command).map_err(plain)?;
    let client = Arc::new(fleet.client(config, &args.reach)?);
    let id = new_job_id()?;
    let exec = ExecRequest {
        command,
        env: args.env,
        cwd: args.cwd,
        timeout: no_limit_if_zero(args.timeout),
        ..ExecRequest::default()
    };
    let deadline = Deadline::NoAnswer(args.reach.connect_timeout.saturating_mul(2));
    let mut run = Run::new(targets, args.reach.fanout, Some(deadline));
    run.fanout.max_failures = args.rolling.max_failures;
    let mut accepted = 0usize;
    let end = run
        .drive(
            |_, target| {
                let mut exec = exec.clone();
                exec.user = target.user.clone();
                exec.target = Some(target.host.clone());
                let request = DetachRequest {
                    id: id.clone(),
                    exec,
                };
                job::detach(client.clone(), target, request)
            },
            |result| {
                let label = &run.labels[result.index];
                if result.outcome.is_ok() {
                    accepted += 1;
                }
                if args.json {
                    output::json::write_record(&run.console, label, &result);
                } else if let Some(note) = host_note(label, &result) {
                    run.console.note(&note);
                }
            },
        )
        .map_err(plain)?;
    if accepted > 0 && !args.json {
        run.console
            .write(Stream::Stdout, format!("{id}\n").as_bytes());
    }
    Ok(conclude(&run, &end, single && !args.json))
}

/// `ctl job ACTION`.
pub fn job(globals: &Globals, action: JobAction) -> Result<u8, Failure> {
    let config = &globals.config;
    let fleet = &globals.fleet()?;
    match action {
        JobAction::List {
            json,
            reach,
            exclude,
            targets,
        } => list(config, fleet, &targets, &exclude.exclude, &reach, json),
        JobAction::Output {
            follow,
            reconnect_for,
            job,
        } => {
            let request = JobRequest::Output {
                id: job.id.clone(),
                follow,
            };
            let reconnect = if follow {
                reconnect_for
            } else {
                Duration::ZERO
            };
            about(config, fleet, job, request, reconnect)
        }
        JobAction::Wait { reconnect_for, job } => {
            let request = JobRequest::Wait { id: job.id.clone() };
            about(config, fleet, job, request, reconnect_for)
        }
        JobAction::Kill { job } => {
            let request = JobRequest::Kill { id: job.id.clone() };
            about(config, fleet, job, request, Duration::ZERO)
        }
        JobAction::Forget { job } => {
            let request = JobRequest::Forget { id: job.id.clone() };
            about(config, fleet, job, request, Duration::ZERO)
        }
    }
}

fn list(
    config: &ConfigDir,
    fleet: &Fleet,
    targets: &str,
    exclude: &[String],
    reach: &crate::cli::Reach,
    json: bool,
) -> Result<u8, Failure> {
    let single = target::is_single(targets) && exclude.is_empty();
    let targets = fleet.resolve(targets, exclude)?;
    let client = Arc::new(fleet.client(config, reach)?);
    let deadline = Deadline::NoAnswer(reach.connect_timeout.saturating_mul(2));
    let run = Run::new(targets, reach.fanout, Some(deadline));
    let end = run
        .drive(
            |_, target| job::list(client.clone(), target),
            |result| {
                let label = &run.labels[result.index];
                let Ok(listed) = &result.outcome else {
                    if json {
                        output::json::write_record(&run.console, label, &result);
                    } else if let Some(note) = host_note(label, &result) {
                        run.console.note(&note);
                    }
                    return;
                };
                let mut text = String::new();
                for summary in &listed.0 {
                    if json {
                        let mut record = serde_json::Map::new();
                        record.insert("target".into(), result.target.to_string().into());
                        record.insert("host".into(), label.as_str().into());
                        job::describe_job(summary, &mut record);
                        text.push_str(&output::json::line(record));
                    } else {
                        text.push_str(&format!(
                            "{label}  {}  {}  {}  {} B  {}\n",
                            summary.id,
                            state_text(&summary.state),
                            time_text(summary.started_ms),
                            summary.stdout_bytes + summary.stderr_bytes,
                            crate::plain::agent_text(&summary.command)
                        ));
                    }
                }
                run.console.write(Stream::Stdout, text.as_bytes());
            },
        )
        .map_err(plain)?;
    Ok(conclude(&run, &end, single && !json))
}

/// A single literal host's output goes out raw, as `ctl exec` prints it.
struct Raw {
    console: Arc<Console>,
    labels: Labels,
}

impl Output<JobEnd> for Raw {
    fn chunk(&self, _host: usize, stream: Stream, data: &[u8]) {
        self.console.write(stream, data);
    }

    fn done(&self, result: &HostResult<JobEnd>) {
        if let Some(note) = host_note(&self.labels[result.index], result) {
            self.console.note(&note);
        }
    }
}

fn about(
    config: &ConfigDir,
    fleet: &Fleet,
    job: JobTarget,
    request: JobRequest,
    reconnect: Duration,
) -> Result<u8, Failure> {
    let single = target::is_single(&job.targets) && job.exclude.exclude.is_empty();
    let targets = fleet.resolve(&job.targets, &job.exclude.exclude)?;
    let client = Arc::new(fleet.client(config, &job.reach)?);
    // Output and wait last as long as the job: keepalives notice a
    // vanished agent. Kill and forget answer within the kill grace.
    let deadline = match request {
        JobRequest::Kill { .. } | JobRequest::Forget { .. } => Some(Deadline::NoAnswer(
            job.reach.connect_timeout.saturating_mul(2) + std::time::Duration::from_secs(60),
        )),
        _ => None,
    };
    let run = Run::new(targets, job.reach.fanout, deadline);
    let output: Arc<dyn Output<JobEnd>> = if single {
        Arc::new(Raw {
            console: run.console.clone(),
            labels: run.labels.clone(),
        })
    } else {
        Arc::new(output::prefixed::Prefixed::new(
            run.console.clone(),
            run.labels.clone(),
        ))
    };
    let end = run
        .drive(
            |index, target| {
                let console = run.console.clone();
                let label = run.labels[index].clone();
                let notes: Arc<dyn Fn(String) + Send + Sync> =
                    Arc::new(move |note| console.note(&format!("{label}: {note}")));
                job::request(
                    client.clone(),
                    target,
                    request.clone(),
                    index,
                    output.clone(),
                    notes,
                    reconnect,
                )
            },
            |result| output.done(&result),
        )
        .map_err(plain)?;
    output.end();
    Ok(conclude(&run, &end, single))
}

/// The exit code of a run on `single` literal target or on many. One host
/// reads as ctl exec on one host: its status, and on a failure its one
/// line, without a summary of one.
fn conclude(run: &Run, end: &RunEnd, single: bool) -> u8 {
    let plain_end = single
        && end.interrupted.is_none()
        && run.console.output_lost().is_none()
        && !run.console.broken_pipe();
    if plain_end {
        return end.tally.exit_code();
    }
    run.conclude(end)
}
