//! Broker mode's rig: a real `nats-server` on a loopback port it picks
//! itself (the carrier's tests' rig, `broker/tests/nats.rs`: plain, or the
//! repository's example with TLS and per-agent users, its monitoring
//! `/varz`, a stop and a restart on the same port); agents on it under
//! names, ctl through it, and a raw NATS client to publish what no real
//! peer would.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use super::{Agent, DEADLINE, Env, agent_run_command, have_tool, wait_until};

// The nats-server itself is the carrier's tests' rig, shared by path: one
// rig for both test crates.
#[path = "../../broker/tests/nats.rs"]
mod server;

pub use server::*;

impl Nats {
    /// A plain server open to anyone on loopback; `None` (said on stderr,
    /// a failure under REXEC_TEST_REQUIRE_ALL=1) without nats-server.
    pub fn start(test: &str) -> Option<Nats> {
        Nats::start_with(test, "")
    }

    /// A plain server with `extra` config lines.
    pub fn start_with(test: &str, extra: &str) -> Option<Nats> {
        have_tool("nats-server", test).then(|| Nats::plain(extra))
    }

    /// The repository's example config, made to run here (see
    /// [`Nats::example`]).
    pub fn start_example(test: &str) -> Option<(Nats, BrokerCa)> {
        have_tool("nats-server", test).then(Nats::example)
    }
}

/// A plain nats-server (with the extra config lines given, if any) for the
/// test this is expanded in; returns from the test, skipped, without
/// nats-server (see [`Nats::start`]).
macro_rules! require_nats {
    () => {
        $crate::util::require_nats!("")
    };
    ($extra:expr) => {
        match $crate::util::Nats::start_with($crate::util::test_name!(), $extra) {
            Some(nats) => nats,
            None => return,
        }
    };
}

/// [`Nats::start_example`] for the test this is expanded in: the server
/// and its CA; returns from the test, skipped, without nats-server.
macro_rules! require_example_nats {
    () => {
        match $crate::util::Nats::start_example($crate::util::test_name!()) {
            Some(started) => started,
            None => return,
        }
    };
}

pub(crate) use {require_example_nats, require_nats};

/// How many times `agent` said it serves `name` on the broker: its log
/// line `connected to the broker at URL as NAME`, written when it
/// connects and again after each reconnection.
pub fn times_connected(agent: &Agent, name: &str) -> usize {
    let tail = format!(" as {name}");
    agent
        .log()
        .lines()
        .filter(|l| l.contains("connected to the broker at") && l.trim_end().ends_with(&tail))
        .count()
}

impl Env {
    /// `rexec-agent run --broker URL --name NAME EXTRA...` (no `--listen`),
    /// not waited for.
    pub fn spawn_broker_agent(&self, url: &str, name: &str, extra: &[&str]) -> Agent {
        self.spawn_broker_agent_in(&self.agent_dir, url, name, extra)
    }

    /// The same with the agent identity in `dir`.
    pub fn spawn_broker_agent_in(
        &self,
        dir: &Path,
        url: &str,
        name: &str,
        extra: &[&str],
    ) -> Agent {
        let mut cmd = agent_run_command(dir);
        cmd.args(["--broker", url, "--name", name]).args(extra);
        Agent::spawn(cmd)
    }

    /// A broker agent serving `name` on `nats`, waited for until it says
    /// it is connected.
    pub fn broker_agent(&self, nats: &Nats, name: &str, extra: &[&str]) -> Agent {
        self.broker_agent_in(&self.agent_dir, nats, name, extra)
    }

    /// The same with the agent identity in `dir`.
    pub fn broker_agent_in(&self, dir: &Path, nats: &Nats, name: &str, extra: &[&str]) -> Agent {
        let agent = self.spawn_broker_agent_in(dir, &nats.url, name, extra);
        wait_connected(&agent, name);
        agent
    }

    /// `ctl --broker URL` with this env's config dir.
    pub fn broker_ctl(&self, nats: &Nats) -> Command {
        let mut cmd = self.ctl();
        cmd.args(["--broker", &nats.url]);
        cmd
    }

    /// `ctl --broker URL ARGS...`, run to completion.
    pub fn broker_run(&self, nats: &Nats, args: &[&str]) -> Output {
        self.broker_ctl(nats).args(args).output().expect("run ctl")
    }

    /// `ctl --broker URL exec NAME WORDS...`, run to completion.
    pub fn broker_exec(&self, nats: &Nats, name: &str, words: &[&str]) -> Output {
        self.broker_ctl(nats)
            .arg("exec")
            .arg(name)
            .args(words)
            .output()
            .expect("run ctl")
    }

    /// Pins the agents serving `targets` in ctl's known hosts by a first
    /// contact (`ctl ping`), whatever form the pins take, and checks that
    /// each pin is this env's agent key.
    pub fn trust_broker(&self, nats: &Nats, targets: &str) {
        let out = self.broker_run(nats, &["ping", targets]);
        assert!(
            out.status.success(),
            "first contact with {targets}: {}",
            super::stderr_of(&out)
        );
        let known = std::fs::read_to_string(self.ctl_dir.join("known_hosts")).unwrap_or_default();
        assert!(
            known.contains(&self.agent_fingerprint),
            "the agents' key is pinned: {known}"
        );
    }
}

/// Waits until `agent` logs that it serves `name` on the broker; fails the
/// test with its log when it does not.
#[track_caller]
pub fn wait_connected(agent: &Agent, name: &str) {
    assert!(
        wait_until(DEADLINE, || times_connected(agent, name) >= 1),
        "the agent did not connect to the broker as {name}:\n{}",
        agent.log()
    );
}

/// How many log lines of `agent` contain `needle`.
pub fn log_lines_with(agent: &Agent, needle: &str) -> usize {
    agent.log().lines().filter(|l| l.contains(needle)).count()
}

/// The resident set size of process `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A raw NATS client: a hostile peer on the broker that publishes what
/// no real agent or ctl would, and watches subjects.
pub struct RawNats {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
}

impl RawNats {
    /// Connects to `url` without credentials.
    pub fn connect(url: &str) -> RawNats {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = runtime
            .block_on(async_nats::connect(url))
            .expect("raw NATS client connects");
        RawNats { runtime, client }
    }

    /// Publishes `payload` on `subject`, flushed to the server.
    pub fn publish(&self, subject: &str, payload: Vec<u8>) {
        self.runtime.block_on(async {
            self.client
                .publish(subject.to_owned(), payload.into())
                .await
                .expect("publish");
            self.client.flush().await.expect("flush");
        });
    }

    /// Publishes `payload` on `subject` `times` times, each with `reply`
    /// as its reply subject when given, then flushes.
    pub fn publish_many(&self, subject: &str, reply: Option<&str>, payload: &[u8], times: usize) {
        self.runtime.block_on(async {
            for _ in 0..times {
                let payload = bytes::Bytes::copy_from_slice(payload);
                match reply {
                    Some(reply) => self
                        .client
                        .publish_with_reply(subject.to_owned(), reply.to_owned(), payload)
                        .await
                        .expect("publish"),
                    None => self
                        .client
                        .publish(subject.to_owned(), payload)
                        .await
                        .expect("publish"),
                }
            }
            self.client.flush().await.expect("flush");
        });
    }

    /// Sends a request on `subject`; returns the answer's payload, or
    /// `None` when nobody answers within a few seconds (or nobody serves
    /// the subject).
    pub fn request(&self, subject: &str, payload: Vec<u8>) -> Option<Vec<u8>> {
        self.runtime.block_on(async {
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                self.client.request(subject.to_owned(), payload.into()),
            )
            .await;
            match answer {
                Ok(Ok(message)) => Some(message.payload.to_vec()),
                _ => None,
            }
        })
    }

    /// Subscribes to `subject` (wildcards allowed), the subscription in
    /// place on the server when this returns.
    pub fn subscribe(&self, subject: &str) -> async_nats::Subscriber {
        self.runtime.block_on(async {
            let subscriber = self
                .client
                .subscribe(subject.to_owned())
                .await
                .expect("subscribe");
            self.client.flush().await.expect("flush");
            subscriber
        })
    }

    /// The subject of the next message on `subscriber`, within
    /// [`DEADLINE`].
    pub fn next_subject(&self, subscriber: &mut async_nats::Subscriber) -> Option<String> {
        use futures_util::StreamExt;
        self.runtime.block_on(async {
            tokio::time::timeout(DEADLINE, subscriber.next())
                .await
                .ok()
                .flatten()
                .map(|message| message.subject.to_string())
        })
    }
}
