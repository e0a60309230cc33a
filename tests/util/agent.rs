//! A real `rexec-agent run` process: started, its stderr collected as a
//! log one can wait on, stopped when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{DEADLINE, bin, wait_until};

/// The agent's log, shared with the thread that drains its stderr.
#[derive(Default)]
struct Log {
    text: Mutex<String>,
    grew: Condvar,
}

/// A running `rexec-agent run`, killed when dropped.
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Log>,
}

impl Agent {
    pub fn start(dir: &Path, listen: &str, extra: &[&str]) -> Agent {
        let mut cmd = run_command(dir, extra);
        cmd.args(["--listen", listen]);
        let mut agent = Agent::spawn(cmd);
        agent.wait_listening();
        agent
    }

    /// `127.0.0.1:PORT`, as ctl takes it.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.log.text.lock().expect("log").clone()
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_for_log(&self, needle: &str) -> Option<String> {
        self.wait_for_any_log(&[needle])
    }

    /// Waits for a log line containing `needle`; fails the test, showing
    /// the whole log, when none comes.
    #[track_caller]
    pub fn expect_log(&self, needle: &str) -> String {
        self.wait_for_log(needle)
            .unwrap_or_else(|| panic!("no log line with {needle:?}:\n{}", self.log()))
    }

    /// Sends a signal to the agent process.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Spawns `cmd` (an agent, perhaps under a wrapper) and collects its
    /// stderr, without waiting for it to listen; `addr` is unset until
    /// [`Agent::wait_listening`].
    pub fn spawn(mut cmd: Command) -> Agent {
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("start agent");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.text.lock().expect("log");
                text.push_str(&line);
                text.push('\n');
                sink.grew.notify_all();
            }
        });
        Agent {
            child,
            addr: "0.0.0.0:0".parse().expect("addr"),
            log,
        }
    }

    /// Waits for the agent's "listening on ADDR" line; records and returns ADDR.
    pub fn wait_listening(&mut self) -> SocketAddr {
        let line = self
            .wait_for_log("listening on ")
            .unwrap_or_else(|| panic!("agent did not start:\n{}", self.log()));
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address in log");
        self.addr = addr.parse().expect("socket address");
        self.addr
    }

    /// Waits for a log line containing any of `needles`; returns it.
    pub fn wait_for_any_log(&self, needles: &[&str]) -> Option<String> {
        let end = Instant::now() + DEADLINE;
        let mut text = self.log.text.lock().expect("log");
        loop {
            if let Some(line) = text
                .lines()
                .find(|l| needles.iter().any(|needle| l.contains(needle)))
            {
                return Some(line.to_owned());
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            text = self.log.grew.wait_timeout(text, end - now).expect("log").0;
        }
    }

    /// Waits for the agent process to exit; returns its status.
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(DEADLINE, || {
            status = self.child.try_wait().expect("wait");
            status.is_some()
        });
        status
    }
}

/// Sends `signal` (a name such as "INT") to `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -s {signal} {pid}");
}

impl Drop for Agent {
    /// SIGINT first, the agent's fast stop, which kills the commands it
    /// still runs: a SIGKILLed agent would leave them behind, orphaned.
    /// SIGKILL only for an agent that does not stop within 2 s (a frozen one).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Not send_signal: a panic in drop during a failing test's
            // unwinding would abort the whole run.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = wait_until(Duration::from_secs(2), || {
                !matches!(self.child.try_wait(), Ok(None))
            });
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rexec-agent run --dir DIR` as [`Agent::start`] runs it, without
/// `--listen`, stderr piped for [`Agent::spawn`].
pub fn agent_run_command(dir: &Path) -> Command {
    run_command(dir, &[])
}

/// `rexec-agent run --dir DIR EXTRA...`, logging at info level.
fn run_command(dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("rexec-agent"));
    cmd.args(["run", "--dir"])
        .arg(dir)
        // A short kill grace keeps the tests quick, unless one sets its own.
        .args(if extra.contains(&"--kill-grace") {
            &[][..]
        } else {
            &["--kill-grace", "500ms"][..]
        })
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}
