//! A temp dir with fresh agent and ctl identities, the client authorized,
//! and ctl runs with that config dir; fleets of agents on loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{Agent, bin};

/// A temp dir with an agent identity, a ctl identity, and the client
/// authorized on the agent.
pub struct Env {
    pub root: tempfile::TempDir,
    pub agent_dir: PathBuf,
    pub ctl_dir: PathBuf,
    pub client_fingerprint: String,
    pub agent_fingerprint: String,
}

impl Env {
    pub fn new() -> Env {
        let root = tempfile::tempdir().expect("tempdir");
        let agent_dir = root.path().join("agent");
        let ctl_dir = root.path().join("ctl");
        let agent_fingerprint = stdout_line(
            Command::new(bin("rexec-agent"))
                .args(["init", "--dir"])
                .arg(&agent_dir),
        );
        let client_fingerprint = stdout_line(
            Command::new(bin("ctl"))
                .env("REXEC_CONFIG_DIR", &ctl_dir)
                .arg("keygen"),
        );
        let env = Env {
            root,
            agent_dir,
            ctl_dir,
            client_fingerprint,
            agent_fingerprint,
        };
        env.authorize(&env.client_fingerprint.clone(), "tester");
        env
    }

    /// A new env and one agent, as most tests start.
    pub fn with_agent() -> (Env, Agent) {
        let env = Env::new();
        let agent = env.agent();
        (env, agent)
    }

    /// A new env and one agent started with extra `run` flags.
    pub fn with_agent_flags(extra: &[&str]) -> (Env, Agent) {
        let env = Env::new();
        let agent = env.agent_with(extra);
        (env, agent)
    }

    pub fn authorize(&self, fingerprint: &str, name: &str) {
        let status = Command::new(bin("rexec-agent"))
            .args(["authorize", "--dir"])
            .arg(&self.agent_dir)
            .args([fingerprint, "--name", name])
            .stderr(Stdio::null())
            .status()
            .expect("authorize");
        assert!(status.success());
    }

    /// A second ctl identity in its own config dir, not authorized anywhere.
    pub fn stranger(&self) -> (PathBuf, String) {
        let dir = self.root.path().join("stranger");
        let fp = stdout_line(
            Command::new(bin("ctl"))
                .env("REXEC_CONFIG_DIR", &dir)
                .arg("keygen"),
        );
        (dir, fp)
    }

    /// Starts an agent on 127.0.0.1 with an OS-chosen port, already in
    /// ctl's known hosts (first contact has a test of its own).
    pub fn agent(&self) -> Agent {
        self.agent_with(&[])
    }

    /// Starts an agent with extra `run` flags (e.g. `--handshake-timeout 1s`).
    pub fn agent_with(&self, extra: &[&str]) -> Agent {
        let agent = self.unknown_agent_with(extra);
        self.trust(&agent);
        agent
    }

    /// Starts an agent that ctl has not seen yet.
    pub fn unknown_agent_with(&self, extra: &[&str]) -> Agent {
        Agent::start(&self.agent_dir, "127.0.0.1:0", extra)
    }

    /// Records the agent's fingerprint in ctl's known hosts.
    pub fn trust(&self, agent: &Agent) {
        self.trust_at(&agent.target());
    }

    /// Records the env's agent fingerprint in ctl's known hosts for
    /// `target` (`ADDRESS:PORT`), wherever the agent there came from.
    pub fn trust_at(&self, target: &str) {
        use std::io::Write;
        std::fs::create_dir_all(&self.ctl_dir).expect("ctl dir");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.ctl_dir.join("known_hosts"))
            .expect("known hosts");
        writeln!(file, "{target} {}", self.agent_fingerprint).expect("write");
    }

    /// Writes the agent's config file (`agent.toml` in its dir), read by
    /// agents started afterwards.
    pub fn write_agent_config(&self, contents: impl AsRef<[u8]>) {
        std::fs::write(self.agent_dir.join("agent.toml"), contents).expect("agent.toml");
    }

    /// Replaces ctl's known hosts file with `contents`.
    pub fn write_known_hosts(&self, contents: impl AsRef<[u8]>) {
        std::fs::write(self.ctl_dir.join("known_hosts"), contents).expect("known_hosts");
    }

    /// `ctl` with this env's config dir, and the stop signals at their
    /// default: ctl keeps a signal it was started with ignored (`nohup`),
    /// and a test run started in the background of a script (`cmd &`)
    /// ignores SIGINT, which would turn every Ctrl-C test into a failure.
    pub fn ctl(&self) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin("ctl"));
        cmd.env("REXEC_CONFIG_DIR", &self.ctl_dir);
        cmd.stdin(Stdio::null());
        // SAFETY: between fork and exec only signal(2), which is
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                use nix::sys::signal::{SigHandler, Signal, signal};
                for stop in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
                    signal(stop, SigHandler::SigDfl).map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
        cmd
    }

    /// ctl started with `signal` (e.g. `HUP`) ignored, as `nohup` or a
    /// script's `trap '' HUP` starts it: a shell ignores it, then execs ctl
    /// (same process id).
    pub fn ctl_ignoring(&self, signal: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("trap '' {signal}; exec \"$@\""))
            .arg("sh")
            .arg(bin("ctl"));
        cmd.env("REXEC_CONFIG_DIR", &self.ctl_dir);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `ctl exec TARGET WORDS...`, run to completion.
    pub fn exec(&self, agent: &Agent, words: &[&str]) -> Output {
        self.ctl()
            .arg("exec")
            .arg(agent.target())
            .args(words)
            .output()
            .expect("run ctl")
    }

    /// Starts `n` agents on 127.0.0.2 … 127.0.0.(n+1) (see [`Fleet`]).
    pub fn fleet(&self, n: usize) -> Fleet {
        assert!(n <= 250, "loopback addresses 127.0.0.2 ... 127.0.0.251");
        let mut fleet = Fleet {
            agents: Vec::new(),
            hosts: Vec::new(),
        };
        let mut inventory = format!("[groups]\nlab = \"127.0.0.[2-{}]\"\n", n + 1);
        for i in 0..n {
            let host = format!("127.0.0.{}", i + 2);
            let shell = self.root.path().join(format!("shell-{host}"));
            if !shell.exists() {
                std::os::unix::fs::symlink("/bin/sh", &shell).expect("shell symlink");
            }
            let shell = shell.to_str().expect("utf-8 path").to_owned();
            let agent = Agent::start(&self.agent_dir, &format!("{host}:0"), &["--shell", &shell]);
            self.trust(&agent);
            inventory.push_str(&format!(
                "[hosts.\"{host}\"]\nport = {}\n",
                agent.addr.port()
            ));
            fleet.agents.push(agent);
            fleet.hosts.push(host);
        }
        std::fs::write(self.ctl_dir.join("hosts.toml"), inventory).expect("inventory");
        fleet
    }

    /// `ctl ARGS...`, run to completion.
    pub fn ctl_run(&self, args: &[&str]) -> Output {
        self.ctl().args(args).output().expect("run ctl")
    }

    /// Another ctl identity in its own config dir, knowing the hosts this
    /// env's ctl knows; authorized on the agent as `name` when given.
    pub fn other_client(&self, name: Option<&str>) -> PathBuf {
        let (dir, fingerprint) = self.stranger();
        if let Some(name) = name {
            self.authorize(&fingerprint, name);
        }
        let known = self.ctl_dir.join("known_hosts");
        if known.exists() {
            std::fs::copy(&known, dir.join("known_hosts")).expect("copy known hosts");
        }
        dir
    }

    /// `ctl exec TARGET COMMAND` as the client whose config dir is `dir`.
    pub fn exec_as(&self, dir: &Path, agent: &Agent, command: &str) -> Output {
        self.ctl()
            .env("REXEC_CONFIG_DIR", dir)
            .args(["exec", &agent.target(), command])
            .output()
            .expect("run ctl")
    }
}

fn stdout_line(cmd: &mut Command) -> String {
    let out = cmd.stderr(Stdio::null()).output().expect("run");
    assert!(out.status.success(), "{cmd:?} failed");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// In a command run by a [`Fleet`] agent, sets `H` to the agent's address:
/// each agent's shell is a symlink to /bin/sh named after its host, and
/// `sh -c` sees that name as `$0`.
pub const FLEET_HOST: &str = "H=${0##*shell-};";

/// Agents on 127.0.0.2, 127.0.0.3, …, one process each, trusted by ctl and
/// listed in ctl's inventory (`hosts.toml`: per-host ports, group `lab`).
pub struct Fleet {
    pub agents: Vec<Agent>,
    /// `127.0.0.N`, in order.
    pub hosts: Vec<String>,
}

impl Fleet {
    /// The agent at `host`.
    pub fn agent(&self, host: &str) -> &Agent {
        let i = self
            .hosts
            .iter()
            .position(|h| h == host)
            .expect("a fleet host");
        &self.agents[i]
    }
}
