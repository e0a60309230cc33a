//! The fan-out engine: run one async job per target, at most N at a time,
//! each under its own deadline, and hand every host's result back as soon
//! as that host is done.
//!
//! The engine knows nothing of exec, ping or copy, nor of output formats:
//! a job is any future that yields a value implementing [`Finished`] (how
//! that value counts towards the exit status and the failure summary) or a
//! [`CtlError`], and each result goes to a callback. Everything that must
//! be the same for every multi-host command lives here: the concurrency
//! limit, the per-host deadline, cancellation on Ctrl-C, SIGTERM, SIGHUP or
//! a closed stdout, the runtime ([`Run::drive`]), the exit code and the
//! end-of-run summary ([`Run::conclude`]).
//!
//! A new multi-host command brings a job (`crate::host`) and its result
//! type (implementing [`Finished`] and `crate::output::Describe`) and
//! reuses the rest.
//!
//! A host that hangs holds one slot and nothing else: results are handed
//! over in completion order, and the run ends when the last host has
//! finished or hit its own deadline.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::console::Console;
use crate::error::HostFailure;
use crate::error::{ConnectionError, CtlError, EXIT_BROKEN_PIPE, EXIT_CTL_ERROR, EXIT_INTERRUPTED};
use crate::outcome::{Finished, HostResult, Labels, Tally};
use crate::signals;
use crate::target::Target;

/// How many hosts run at once unless `--fanout` says otherwise.
pub const DEFAULT_FANOUT: usize = 64;

/// ctl's own bound on each host's job, from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The job's own time limit (`ctl cp --timeout`): past it the host
    /// timed out (124).
    Timeout(Duration),
    /// Past this the agent is taken as having stopped answering (`ctl exec`
    /// and `ctl ping`, whose time limits the agent enforces): an error
    /// (255), not a timeout, since nobody killed the command.
    NoAnswer(Duration),
}

impl Deadline {
    fn after(self) -> Duration {
        match self {
            Deadline::Timeout(d) | Deadline::NoAnswer(d) => d,
        }
    }

    fn failure(self) -> HostFailure {
        match self {
            Deadline::Timeout(d) => HostFailure::Deadline(d),
            Deadline::NoAnswer(d) => {
                HostFailure::Ctl(CtlError::Connection(ConnectionError::NoAnswer(d)))
            }
        }
    }
}

/// The engine's settings for one run.
#[derive(Debug, Clone)]
pub struct Fanout {
    /// Most hosts at once (at least 1).
    pub limit: usize,
    /// ctl's own bound on each host's job, from its start.
    pub deadline: Option<Deadline>,
    /// Cancelled on Ctrl-C or when our stdout's reader goes away; running
    /// jobs are dropped (closing their connections, which makes the agents
    /// kill the commands) and no new ones start.
    pub cancel: CancellationToken,
    /// Start no new host once this many have failed (`--max-failures`);
    /// those running go on to their end.
    pub max_failures: Option<usize>,
}

impl Fanout {
    /// Runs `job(index, target)` for every target and calls `done` with
    /// each host's result in the order the hosts finish. Hosts never started
    /// because the run was cancelled are reported as interrupted.
    pub async fn run<T, J, F>(
        &self,
        targets: &[Target],
        console: &Console,
        job: J,
        mut done: impl FnMut(HostResult<T>),
    ) where
        T: Finished,
        J: Fn(usize, Target) -> F,
        F: Future<Output = Result<T, CtlError>> + Send + 'static,
    {
        let mut running = JoinSet::new();
        let mut next = 0;
        let mut failed = 0;
        let limit = self.limit.max(1);
        let failed_enough = |failed: usize| self.max_failures.is_some_and(|k| failed >= k);
        loop {
            while running.len() < limit
                && next < targets.len()
                && !self.cancel.is_cancelled()
                && !failed_enough(failed)
            {
                let target = targets[next].clone();
                let work = job(next, target.clone());
                let cancel = self.cancel.clone();
                let deadline = self.deadline;
                let index = next;
                console.host_started(index);
                running.spawn(async move {
                    let started = tokio::time::Instant::now();
                    let bounded = async {
                        match deadline {
                            Some(limit) => match tokio::time::timeout(limit.after(), work).await {
                                Ok(result) => result.map_err(HostFailure::from),
                                Err(_) => Err(limit.failure()),
                            },
                            None => work.await.map_err(HostFailure::from),
                        }
                    };
                    let outcome = tokio::select! {
                        outcome = bounded => outcome,
                        _ = cancel.cancelled() => Err(HostFailure::Interrupted),
                    };
                    HostResult {
                        index,
                        target,
                        duration: started.elapsed(),
                        outcome,
                    }
                });
                next += 1;
            }
            match running.join_next().await {
                Some(Ok(result)) => {
                    let failure = result.failure().is_some();
                    failed += usize::from(failure);
                    console.host_finished(result.index, failure);
                    done(result);
                }
                // A job panicked: a bug, and the run cannot be trusted.
                Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Some(Err(_)) => {}
                None => break,
            }
        }
        for (index, target) in targets.iter().enumerate().skip(next) {
            let outcome = match self.max_failures {
                Some(k) if failed_enough(failed) && !self.cancel.is_cancelled() => {
                    HostFailure::NotStarted(k)
                }
                _ => HostFailure::Interrupted,
            };
            done(HostResult {
                index,
                target: target.clone(),
                duration: Duration::ZERO,
                outcome: Err(outcome),
            });
        }
    }
}

/// How a multi-host run ended, beyond each host's result.
#[derive(Debug)]
pub struct RunEnd {
    /// Every host's result, counted.
    pub tally: Tally,
    /// The signal (SIGINT, SIGTERM or SIGHUP) that cancelled the run, if any.
    pub interrupted: Option<i32>,
}

/// The longest ctl waits at exit for copies' disk threads to clean up.
const DISK_CLEANUP: Duration = Duration::from_secs(5);

/// One multi-host command's run: its targets with their labels, the
/// engine's settings, and the console every host writes through.
#[derive(Debug)]
pub struct Run {
    /// The hosts, in the order the target list named them.
    pub targets: Vec<Target>,
    /// Their short names.
    pub labels: Labels,
    /// The engine's settings.
    pub fanout: Fanout,
    /// Our stdout and stderr, and the progress line.
    pub console: Arc<Console>,
}

impl Run {
    /// A run over `targets`, at most `limit` at once, each under `deadline`.
    pub fn new(targets: Vec<Target>, limit: usize, deadline: Option<Deadline>) -> Run {
        let fanout = Fanout {
            limit,
            deadline,
            cancel: CancellationToken::new(),
            max_failures: None,
        };
        Run {
            labels: crate::outcome::labels(&targets).into(),
            console: Arc::new(Console::new(targets.len(), fanout.cancel.clone())),
            targets,
            fanout,
        }
    }

    /// Runs `job` on every target through the fan-out engine on a fresh
    /// runtime, Ctrl-C (or SIGTERM, SIGHUP) cancelling the run; `done` sees
    /// each host's result.
    ///
    /// # Errors
    /// The runtime cannot be started.
    pub fn drive<T, J, F>(
        &self,
        job: J,
        mut done: impl FnMut(HostResult<T>),
    ) -> Result<RunEnd, CtlError>
    where
        T: Finished,
        J: Fn(usize, Target) -> F,
        F: Future<Output = Result<T, CtlError>> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
            .enable_all()
            .build()
            .map_err(|e| CtlError::runtime(&e))?;
        let interrupted = Arc::new(AtomicI32::new(0));
        let mut tally = Tally::default();
        runtime.block_on(async {
            let cancel = self.fanout.cancel.clone();
            let flag = interrupted.clone();
            tokio::spawn(async move {
                if let Some(signal) = first_stop_signal().await {
                    flag.store(signal, Ordering::Relaxed);
                    cancel.cancel();
                }
            });
            self.fanout
                .run(&self.targets, &self.console, job, |result| {
                    tally.add(&self.labels[result.index], &result);
                    done(result);
                })
                .await;
        });
        // Copies' disk threads remove a half-written file once their job is
        // dropped (Ctrl-C, a deadline): let them, within reason.
        runtime.shutdown_timeout(DISK_CLEANUP);
        crate::signals::note_stops_after_the_runtime();
        self.console.finish();
        Ok(RunEnd {
            tally,
            interrupted: Some(interrupted.load(Ordering::Relaxed)).filter(|&s| s != 0),
        })
    }

    /// The exit code of the run, after its summary line.
    pub fn conclude(&self, end: &RunEnd) -> u8 {
        // Lost output is a failure of the whole run, whatever the hosts did:
        // that line says it all (the hosts it cut short are no news).
        if let Some(what) = self.console.output_lost() {
            say!("ctl: {what}");
            return EXIT_CTL_ERROR;
        }
        if self.console.broken_pipe() {
            return EXIT_BROKEN_PIPE;
        }
        if let Some(summary) = end.tally.summary() {
            say!("ctl: {summary}");
        }
        match end.interrupted.or_else(crate::signals::stopped_late) {
            // 128 + the signal, as a shell reports a command the signal ended:
            // 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP.
            Some(signal) => u8::try_from(128 + signal).unwrap_or(EXIT_INTERRUPTED),
            None => end.tally.exit_code(),
        }
    }
}

/// Waits for the first SIGINT, SIGTERM or SIGHUP that ctl was not started
/// with ignored and returns its number; `None` when the handlers cannot be
/// installed (the run then goes on, and the signal's default action applies).
async fn first_stop_signal() -> Option<i32> {
    let mut signals = signals::StopSignals::new().ok()?;
    Some(signals.next().await as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EXIT_TIMED_OUT;
    use crate::outcome::labels;

    struct Answer(u8);

    impl Finished for Answer {
        fn exit_code(&self) -> u8 {
            self.0
        }
        fn failure(&self) -> Option<String> {
            (self.0 != 0).then(|| format!("exit {}", self.0))
        }
    }

    fn targets(list: &str) -> Vec<Target> {
        crate::inventory::Inventory::default()
            .resolve(list, &[])
            .unwrap()
    }

    fn engine(limit: usize, deadline: Option<Deadline>) -> Fanout {
        Fanout {
            limit,
            deadline,
            cancel: CancellationToken::new(),
            max_failures: None,
        }
    }

    /// Runs the hosts of `list` through `fanout`: host `hang` never ends,
    /// any other host `i` takes `i` seconds and exits `code(i)`. Every
    /// result in the order they came, and their tally.
    async fn run_all(
        fanout: &Fanout,
        list: &str,
        hang: usize,
        code: fn(usize) -> u8,
    ) -> (Vec<HostResult<Answer>>, Tally) {
        let hosts = targets(list);
        let labels = labels(&hosts);
        let mut results = Vec::new();
        let mut tally = Tally::default();
        fanout
            .run(
                &hosts,
                &Console::quiet(),
                |index, _| async move {
                    if index == hang {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(Duration::from_secs(index as u64)).await;
                    Ok(Answer(code(index)))
                },
                |result| {
                    tally.add(&labels[result.index], &result);
                    results.push(result);
                },
            )
            .await;
        (results, tally)
    }

    fn tally_of(tally: &Tally) -> (u8, Option<String>) {
        (tally.exit_code(), tally.summary())
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_host_holds_one_slot_and_hits_its_deadline() {
        let fanout = engine(2, Some(Deadline::Timeout(Duration::from_secs(20))));
        let (results, tally) = run_all(&fanout, "n[1-5]", 0, |i| if i == 3 { 3 } else { 0 }).await;
        let order: Vec<_> = results
            .iter()
            .map(|r| (r.index, r.duration.as_secs()))
            .collect();
        // The others run through the second slot while n1 hangs.
        assert_eq!(order, [(1, 1), (2, 2), (3, 3), (4, 4), (0, 20)]);
        let summary = "2 of 5 hosts failed: exit 3: n4; timed out: n1";
        assert_eq!(tally_of(&tally), (EXIT_TIMED_OUT, Some(summary.into())));
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_past_its_no_answer_deadline_is_an_error_not_a_timeout() {
        let fanout = engine(2, Some(Deadline::NoAnswer(Duration::from_secs(9))));
        let (results, tally) = run_all(&fanout, "n[1-2]", 0, |_| 0).await;
        let kinds: Vec<_> = results
            .iter()
            .filter_map(|r| {
                let failure = r.outcome.as_ref().err()?;
                Some((failure.kind(), r.duration.as_secs()))
            })
            .collect();
        assert_eq!(kinds, [("no-answer", 9)]);
        let summary = "1 of 2 hosts failed: no-answer: n1";
        assert_eq!(tally_of(&tally), (EXIT_CTL_ERROR, Some(summary.into())));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_interrupts_running_and_waiting_hosts() {
        let fanout = engine(1, None);
        let cancel = fanout.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            cancel.cancel();
        });
        let (results, _) = run_all(&fanout, "n[1-3]", 1, |_| 0).await;
        let seen: Vec<_> = results
            .iter()
            .map(|r| (r.index, r.outcome.is_ok()))
            .collect();
        assert_eq!(seen, [(0, true), (1, false), (2, false)]);
    }

    /// Two slots, hosts 2, 3 and 5 failing: once the second failure is in,
    /// no host starts, the one running ends, and the rest are not started.
    #[tokio::test(start_paused = true)]
    async fn no_host_starts_after_max_failures() {
        let mut fanout = engine(2, None);
        fanout.max_failures = Some(2);
        let failing = |i| if [1, 2, 4].contains(&i) { 1 } else { 0 };
        let (results, tally) = run_all(&fanout, "n[1-8]", 99, failing).await;
        let seen: Vec<_> = results
            .iter()
            .map(|r| (r.index, r.outcome.as_ref().err().map(HostFailure::kind)))
            .collect();
        // n1 and n2 start; n1 ends (0 s) and n3 takes its slot; n2 fails
        // (1 s) and n4 starts; n3 fails (2 s): two failures, n4 runs on.
        assert_eq!(
            seen,
            [
                (0, None),
                (1, None),
                (2, None),
                (3, None),
                (4, Some("not-started")),
                (5, Some("not-started")),
                (6, Some("not-started")),
                (7, Some("not-started")),
            ]
        );
        let summary = "6 of 8 hosts failed: exit 1: n[2-3]; not started: n[5-8]";
        assert_eq!(tally_of(&tally), (EXIT_CTL_ERROR, Some(summary.into())));
    }
}
