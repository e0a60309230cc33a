//! The job runner: `rexec-agent job-runner`, started by the agent in the
//! job's directory (its working directory) in a session of its own, with
//! the job's spec on its stdin. It builds the command exactly as an exec
//! would (the same shell, environment, user and directory rules), says on
//! its stdout whether it started (one JSON line, then stdout is closed),
//! and from then on owns the command's process group: it writes the
//! output into capped segments, ends the group on SIGTERM (a kill
//! request) or at the command's timeout, and records the end.
//!
//! It holds the job's lock for as long as it lives, which is how the
//! agent, started again or not, tells a running job from a lost one.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{SigHandler, Signal, killpg, signal};
use nix::unistd::Pid;
use rexec_protocol::{AgentMessage, ErrorKind, ErrorReport, ExecRequest, ExitStatus};
use serde::{Deserialize, Serialize};

use super::segments::SegmentWriter;
use super::store::{LOCK, RunnerStatus, StatusFile};
use crate::config::{AgentSettings, RunAsPolicy};
use crate::exec::group::exit_status;
use crate::exec::pipes::Output;
use crate::exec::spawn::{chdir_refusal, prepare};
use crate::run_as::Requester;

/// The hidden `rexec-agent` subcommand that runs a job.
pub const SUBCOMMAND: &str = "job-runner";
/// The most a spec may take on the runner's stdin.
const MAX_SPEC: u64 = 4 << 20;
/// After the group was sent SIGKILL, how long output may still come from
/// a process that escaped it before the runner stops reading.
const AFTER_KILL: Duration = Duration::from_secs(2);

/// What the agent tells the runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerSpec {
    /// The command, as a plain exec would run it (no stdin, no terminal).
    pub exec: ExecRequest,
    /// The name of the client that asked, for the run-as rules.
    pub requester: String,
    /// The agent's shell.
    pub shell: PathBuf,
    /// The agent's run-as rules.
    pub run_as: BTreeMap<String, Vec<String>>,
    /// The agent's longest command run time.
    pub max_timeout: Option<Duration>,
    /// SIGTERM to SIGKILL.
    pub kill_grace: Duration,
    /// Bytes kept of each stream.
    pub max_output: u64,
}

/// What the runner does on SIGINT, SIGHUP and SIGQUIT: nothing.
extern "C" fn outlived(_: nix::libc::c_int) {}

/// The runner's one line to the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Ready {
    /// The command runs; its shell's process id.
    Started(u32),
    /// It could not be started.
    Refused(ErrorReport),
}

/// Runs the job in the working directory; the process's exit code.
pub fn run() -> i32 {
    // Sockets systemd passed to the agent are not close-on-exec; neither
    // the runner nor the command may hold them.
    // SAFETY: closes descriptors this process does not use; no Rust object
    // owns any of them yet.
    let _ = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // The runner outlives these (a hangup or an interrupt meant for the
    // agent's session must not orphan the job), but its command gets them
    // as an exec's command does: an ignored signal stays ignored across
    // exec, a caught one is set back to its default there. So they are
    // caught and do nothing, rather than ignored.
    for sig in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT] {
        // SAFETY: the handler does nothing, which is async-signal-safe.
        let _ = unsafe { signal(sig, SigHandler::Handler(outlived)) };
    }
    let mut text = Vec::new();
    if std::io::stdin()
        .lock()
        .take(MAX_SPEC)
        .read_to_end(&mut text)
        .is_err()
    {
        return 2;
    }
    let Ok(spec) = serde_json::from_slice::<RunnerSpec>(&text) else {
        return cannot_start("the job runner got a spec it cannot read");
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return cannot_start("the job runner cannot start its runtime");
    };
    runtime.block_on(run_job(spec))
}

/// Tells the agent how the start went, then lets go of the pipe.
fn ready(line: &Ready) {
    let mut text = serde_json::to_vec(line).unwrap_or_default();
    text.push(b'\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&text);
    let _ = out.flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto our own stdout, which nothing else uses now.
        unsafe { nix::libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// The runner itself could not get going: the agent is told so, and the
/// exit code is 2 (1 is a refused command).
fn cannot_start(why: &str) -> i32 {
    ready(&Ready::Refused(ErrorReport::new(ErrorKind::Internal, why)));
    2
}

fn refuse(report: ErrorReport) -> i32 {
    ready(&Ready::Refused(report));
    1
}

async fn run_job(spec: RunnerSpec) -> i32 {
    let here = Path::new(".");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(LOCK);
    let _lock = match lock
        .map(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock))
    {
        Ok(Ok(held)) => held,
        _ => {
            return refuse(ErrorReport::new(
                ErrorKind::Internal,
                "the job's lock cannot be taken",
            ));
        }
    };
    let mut status = RunnerStatus {
        runner_pid: std::process::id(),
        ..RunnerStatus::default()
    };
    let mut status_file = match StatusFile::create(here, &status) {
        Ok(file) => file,
        Err(e) => {
            return refuse(ErrorReport::new(
                ErrorKind::WriteFailed,
                format!(
                    "cannot record the job in the state directory: {}",
                    super::io_text(&e)
                ),
            ));
        }
    };
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                return refuse(ErrorReport::new(
                    ErrorKind::Internal,
                    "the job runner cannot handle signals",
                ));
            }
        };
    let mut settings = AgentSettings::new("/");
    settings.shell = spec.shell.clone();
    settings.run_as = RunAsPolicy {
        by_client: spec.run_as.clone(),
    };
    let mut request = spec.exec.clone();
    request.stdin = false;
    request.pty = None;
    let prepared = match prepare(
        &request,
        Requester {
            name: &spec.requester,
        },
        &settings,
    ) {
        Ok(prepared) => prepared,
        Err(report) => return refuse(report),
    };
    let mut command = prepared.command;
    let spawned = command.spawn();
    drop(command);
    let chdir_failed = spawned.is_err() && prepared.chdir_probe.failed();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if chdir_failed => {
            return refuse(chdir_refusal(&prepared.cwd, &prepared.user, &e));
        }
        Err(e) => {
            return refuse(ErrorReport::new(
                ErrorKind::SpawnFailed,
                crate::exec::cannot_start(&spec.shell, &e),
            ));
        }
    };
    let Some(pid) = child.id() else {
        return refuse(ErrorReport::new(
            ErrorKind::Internal,
            "the command exited before it was seen",
        ));
    };
    let pgid = Pid::from_raw(pid as i32);
    status.pid = Some(pid);
    status.user = prepared.user.clone();
    status.cwd = prepared.cwd.clone();
    let _ = status_file.write(&status);
    ready(&Ready::Started(pid));

    let mut output = Output::take_pipes(&mut child);
    let mut stdout = SegmentWriter::new(here, "stdout", spec.max_output);
    let mut stderr = SegmentWriter::new(here, "stderr", spec.max_output);

    let timeout = match (request.timeout, spec.max_timeout) {
        (Some(asked), Some(max)) => Some(asked.min(max)),
        (asked, max) => asked.or(max),
    };
    let far = || tokio::time::Instant::now() + Duration::from_secs(86400 * 365 * 30);
    let mut deadline = timeout
        .and_then(|t| tokio::time::Instant::now().checked_add(t))
        .unwrap_or_else(far);
    let mut timed_out = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut give_up_at: Option<tokio::time::Instant> = None;
    let begin_end = |kill_at: &mut Option<tokio::time::Instant>| {
        let _ = killpg(pgid, Signal::SIGTERM);
        kill_at.get_or_insert(tokio::time::Instant::now() + spec.kill_grace);
    };
    let waited = loop {
        tokio::select! {
            message = output.next(), if output.is_open() => match message {
                Some(AgentMessage::Stdout(chunk)) => stdout.write(&chunk),
                Some(AgentMessage::Stderr(chunk)) => stderr.write(&chunk),
                _ => {}
            },
            status = child.wait(), if !output.is_open() => break status,
            _ = terminate.recv(), if !status.killed => {
                status.killed = true;
                begin_end(&mut kill_at);
            }
            () = tokio::time::sleep_until(deadline) => {
                timed_out = true;
                deadline = far();
                begin_end(&mut kill_at);
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or_else(far)), if kill_at.is_some() => {
                kill_at = None;
                let _ = killpg(pgid, Signal::SIGKILL);
                give_up_at = Some(tokio::time::Instant::now() + AFTER_KILL);
            }
            () = tokio::time::sleep_until(give_up_at.unwrap_or_else(far)), if give_up_at.is_some() => {
                // A process that left the group holds the output open.
                give_up_at = None;
                output = Output::default();
            }
        }
    };
    let end = match waited {
        _ if timed_out => ExitStatus::TimedOut,
        Ok(exit) => exit_status(exit),
        Err(_) => {
            status.problem = Some("the command's end could not be seen".into());
            ExitStatus::Code(-1)
        }
    };
    status.end = Some(end);
    status.ended_ms = Some(super::now_ms());
    status.stdout_bytes = Some(stdout.total);
    status.stderr_bytes = Some(stderr.total);
    status.stdout_lost_at = stdout.lost_at;
    status.stderr_lost_at = stderr.lost_at;
    match status_file.write(&status) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
