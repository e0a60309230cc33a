//! What one host's job came to, and what a multi-host run makes of all of
//! them: the [`Finished`] trait a job's result implements, a
//! [`HostResult`] with its [`HostFailure`], the run's [`Tally`] (exit code
//! and failure summary), and the hosts' short [`labels`].
//!
//! Shared by the fan-out engine, which produces results, and the output
//! modes and commands, which show them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rexec_protocol::ExitStatus;

use crate::error::HostFailure;
use crate::error::exit_code;
use crate::nodeset;
use crate::target::Target;

/// The hosts' short names, shared by every part of a run.
pub type Labels = Arc<[String]>;

/// What a finished job reports, as the engine needs to see it.
/// A result that is always a success (a pong, a copy) keeps the defaults.
pub trait Finished: Send + 'static {
    /// The exit code this host contributes; the run exits with the largest.
    fn exit_code(&self) -> u8 {
        0
    }
    /// The outcome's name in the failure summary (`exit 3`, `timed out`),
    /// or `None` when the host succeeded.
    fn failure(&self) -> Option<String> {
        None
    }
}

impl Finished for ExitStatus {
    fn exit_code(&self) -> u8 {
        exit_code(*self)
    }

    fn failure(&self) -> Option<String> {
        match self {
            ExitStatus::Code(0) => None,
            ExitStatus::Code(code) => Some(format!("exit {code}")),
            ExitStatus::Signal { signal, .. } => Some(format!("signal {signal}")),
            ExitStatus::TimedOut => Some("timed out".into()),
            _ => Some("unknown status".into()),
        }
    }
}

/// One host's result.
#[derive(Debug)]
pub struct HostResult<T> {
    /// The host's position in the target list.
    pub index: usize,
    /// The host.
    pub target: Target,
    /// From the job's start (not its wait for a slot) to its end.
    pub duration: Duration,
    /// What the job yielded.
    pub outcome: Result<T, HostFailure>,
}

impl<T: Finished> HostResult<T> {
    /// The exit code this host contributes.
    pub fn exit_code(&self) -> u8 {
        match &self.outcome {
            Ok(value) => value.exit_code(),
            Err(failure) => failure.exit_code(),
        }
    }

    /// The outcome's name in the failure summary, `None` on success.
    pub fn failure(&self) -> Option<String> {
        match &self.outcome {
            Ok(value) => value.failure(),
            Err(failure) => Some(failure.summary_name()),
        }
    }
}

/// What every multi-host run ends with: the exit code and the failures,
/// grouped by outcome.
#[derive(Debug, Default)]
pub struct Tally {
    total: usize,
    code: u8,
    failures: BTreeMap<String, Vec<String>>,
}

impl Tally {
    /// Counts one host's result under the name `label`.
    pub fn add<T: Finished>(&mut self, label: &str, result: &HostResult<T>) {
        self.total += 1;
        self.code = self.code.max(result.exit_code());
        if let Some(name) = result.failure() {
            self.failures
                .entry(name)
                .or_default()
                .push(label.to_owned());
        }
    }

    /// 0 when every host succeeded, else the largest per-host code.
    pub fn exit_code(&self) -> u8 {
        self.code
    }

    /// One line naming the failed hosts as node sets, grouped by outcome:
    /// `2 of 20 hosts failed: exit 3: node[04-05]; connect: node09`.
    /// `None` when nothing failed.
    pub fn summary(&self) -> Option<String> {
        if self.failures.is_empty() {
            return None;
        }
        let failed: usize = self.failures.values().map(Vec::len).sum();
        let groups: Vec<String> = self
            .failures
            .iter()
            .map(|(name, labels)| {
                format!(
                    "{name}: {}",
                    nodeset::fold(labels.iter().map(String::as_str))
                )
            })
            .collect();
        Some(format!(
            "{failed} of {} hosts failed: {}",
            self.total,
            groups.join("; ")
        ))
    }
}

/// Short names for hosts in prefixes, headers, file names and summaries:
/// the host alone where that is unambiguous in this run, else `host:port`,
/// else the full `user@host:port`.
pub fn labels(targets: &[Target]) -> Vec<String> {
    let mut hosts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut host_ports: BTreeMap<String, usize> = BTreeMap::new();
    for t in targets {
        *hosts.entry(&t.host).or_default() += 1;
        *host_ports.entry(t.host_port()).or_default() += 1;
    }
    targets
        .iter()
        .map(|t| {
            if hosts[t.host.as_str()] == 1 {
                t.host.clone()
            } else if host_ports[&t.host_port()] == 1 {
                t.host_port()
            } else {
                t.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_as_short_as_the_run_allows() {
        let hosts = crate::inventory::Inventory::default()
            .resolve("a,b:1,b:2,u@c:5,v@c:5", &[])
            .unwrap();
        assert_eq!(labels(&hosts), ["a", "b:1", "b:2", "u@c:5", "v@c:5"]);
    }
}
