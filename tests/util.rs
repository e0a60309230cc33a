//! Shared helpers: a fresh set of identities in a temp dir, real agents on
//! loopback, the real `ctl`, and checks on the machine's process table.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long any wait in these tests may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A built binary of the workspace, next to this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/e2e-HASH -> target/<profile>/NAME
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// Polls `condition` until it holds or `within` passes; returns whether it held.
pub fn wait_until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
        use std::io::Write;
        std::fs::create_dir_all(&self.ctl_dir).expect("ctl dir");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.ctl_dir.join("known_hosts"))
            .expect("known hosts");
        writeln!(file, "{} {}", agent.target(), self.agent_fingerprint).expect("write");
    }

    /// `ctl` with this env's config dir.
    pub fn ctl(&self) -> Command {
        let mut cmd = Command::new(bin("ctl"));
        cmd.env("REXEC_CONFIG_DIR", &self.ctl_dir);
        cmd.stdin(Stdio::null());
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
}

fn stdout_line(cmd: &mut Command) -> String {
    let out = cmd.stderr(Stdio::null()).output().expect("run");
    assert!(out.status.success(), "{cmd:?} failed");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

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
        let mut child = Command::new(bin("rexec-agent"))
            .args(["run", "--dir"])
            .arg(dir)
            .args(["--listen", listen])
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
            .stderr(Stdio::piped())
            .spawn()
            .expect("start agent");
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
        let mut agent = Agent {
            child,
            addr: "0.0.0.0:0".parse().expect("addr"),
            log,
        };
        let line = agent
            .wait_for_log("listening on ")
            .unwrap_or_else(|| panic!("agent did not start:\n{}", agent.log()));
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address in log");
        agent.addr = addr.parse().expect("socket address");
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
        let end = Instant::now() + DEADLINE;
        let mut text = self.log.text.lock().expect("log");
        loop {
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Some(line.to_owned());
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            text = self.log.grew.wait_timeout(text, end - now).expect("log").0;
        }
    }

    /// Sends a signal to the agent process.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
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

/// Live (not zombie) processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(marker) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state_and_parent(&stat).is_some_and(|(state, _)| state == "Z");
        if !zombie && pid != std::process::id() {
            found.push((pid, cmdline));
        }
    }
    found
}

/// How many `sleep` processes with this argument run (not the shells or
/// ctl whose command lines merely contain it).
pub fn sleeps_running(pattern: &str) -> usize {
    processes_with(pattern)
        .iter()
        .filter(|(_, cmd)| cmd.starts_with("sleep "))
        .count()
}

/// ctl's stdout as JSON lines (`--json`), one value per line.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout_of(out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Children of `parent` that have exited but were not reaped (zombies).
pub fn zombie_children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (state, ppid) = state_and_parent(&stat)?;
            (state == "Z" && ppid == parent).then_some(pid)
        })
        .collect()
}

/// A process's state letter and parent pid from its /proc/PID/stat line,
/// where they follow the parenthesised command name.
fn state_and_parent(stat: &str) -> Option<(&str, u32)> {
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// A marker unique to this test run, for finding a command's processes.
pub fn marker(name: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}{}{}", name, std::process::id(), n)
}

/// A `sleep` duration that is unique, so its process can be found by
/// command line: `sleep 600.<digits>`.
pub fn unique_sleep(seconds: u32) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{seconds}.{}{:04}", std::process::id(), n)
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for tens of MiB.
pub fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// Helpers for the systemd tests (tests/systemd.rs).

/// The workspace root, for `scripts/` and `systemd/`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The variable under which a skip is a failure. CI (`.ci/run`) sets it,
/// having installed every tool the tests need and running as root, so a
/// test that would skip there points at a broken CI machine, not at a
/// missing optional tool.
pub const REQUIRE_ALL: &str = "REXEC_TEST_REQUIRE_ALL";

/// Says on stderr that `test` is skipped and why. Written to the process's
/// stderr directly, past the test harness's capture of `eprintln!`, so a
/// skipped test shows in every run, not only with `--nocapture`. With
/// REXEC_TEST_REQUIRE_ALL=1 the test fails instead.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    if std::env::var_os(REQUIRE_ALL).is_some_and(|v| v == "1") {
        panic!("{test} cannot run here ({why}), and {REQUIRE_ALL}=1 makes a skip a failure");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The Debian package that installs `tool`, for the hint of a skipped test.
pub fn debian_package_of(tool: &str) -> &str {
    match tool {
        "systemd-analyze" | "systemctl" | "systemd-socket-activate" => "systemd",
        "systemd-nspawn" => "systemd-container",
        "mount" | "umount" => "mount",
        "kill" | "ps" => "procps",
        other => other,
    }
}

/// Whether `tool` is on the PATH. When it is not, says on stderr that
/// `test` is skipped and why, with the Debian package to install, so a
/// skipped test is never silent (and fails under REXEC_TEST_REQUIRE_ALL=1).
pub fn have_tool(tool: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    if !found {
        skipped(
            test,
            &format!(
                "`{tool}` is not installed (Debian: apt-get install {})",
                debian_package_of(tool)
            ),
        );
    }
    found
}

/// `rexec-agent run --dir DIR` as [`Agent::start`] runs it, without
/// `--listen`, stderr piped for [`Agent::spawn`].
pub fn agent_run_command(dir: &Path) -> Command {
    let mut cmd = Command::new(bin("rexec-agent"));
    cmd.args(["run", "--dir"])
        .arg(dir)
        .args(["--kill-grace", "500ms"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

impl Agent {
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

/// Starts `rexec-agent run` under `systemd-socket-activate -l
/// 127.0.0.1:PORT`, which binds the port, waits for the first connection
/// and then execs the agent with the socket as LISTEN_FDS.
///
/// systemd-socket-activate needs a port number (0 would leave the port
/// unknown to us), so we never guess one blindly: the kernel names a free
/// port (bind 127.0.0.1:0, read it, close), and if another process takes
/// it before systemd-socket-activate binds it, that fails with "Address
/// already in use" and we start over with a new port.
pub fn socket_activated_agent(dir: &Path, extra: &[&str]) -> Agent {
    for _ in 0..10 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let agent_run = agent_run_command(dir);
        let mut cmd = Command::new("systemd-socket-activate");
        cmd.arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .arg(agent_run.get_program())
            .args(agent_run.get_args())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut agent = Agent::spawn(cmd);
        let line = agent
            .wait_for_any_log(&["Listening on", "Failed to"])
            .unwrap_or_else(|| panic!("systemd-socket-activate said nothing:\n{}", agent.log()));
        if line.contains("Listening on") {
            agent.addr = SocketAddr::from(([127, 0, 0, 1], port));
            return agent;
        }
        assert!(
            line.contains("Address already in use"),
            "systemd-socket-activate failed:\n{}",
            agent.log()
        );
    }
    panic!("no free port for systemd-socket-activate in 10 attempts");
}

/// A datagram socket standing in for systemd's notification socket: give
/// `path` to the agent as NOTIFY_SOCKET. Every message received is kept,
/// in order, in `received`.
pub struct NotifySocket {
    pub path: PathBuf,
    socket: std::os::unix::net::UnixDatagram,
    pub received: Vec<String>,
}

impl NotifySocket {
    pub fn new(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket {
            path,
            socket,
            received: Vec::new(),
        }
    }

    /// Waits for a message with a line starting with `prefix` (such as
    /// "READY=1" or "STATUS="), keeping every message that came before;
    /// returns the message.
    pub fn wait_for(&mut self, prefix: &str) -> Option<String> {
        let end = Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 4096];
        loop {
            let now = Instant::now();
            if now >= end {
                return None;
            }
            self.socket
                .set_read_timeout(Some(end - now))
                .expect("read timeout");
            let Ok(n) = self.socket.recv(&mut buf) else {
                return None;
            };
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.received.push(message.clone());
            if message.lines().any(|l| l.starts_with(prefix)) {
                return Some(message);
            }
        }
    }

    /// Index in `received` of the first message with a line starting `prefix`.
    pub fn position(&self, prefix: &str) -> Option<usize> {
        self.received
            .iter()
            .position(|m| m.lines().any(|l| l.starts_with(prefix)))
    }
}

/// Starts `rexec-agent run` with `socket` passed the way systemd passes a
/// socket unit's sockets: as fd 3, with LISTEN_FDS=1 and LISTEN_PID set to
/// the agent's pid. A shell moves the socket from stdin to fd 3 and execs
/// the agent, so the pid it exports is the agent's.
pub fn agent_with_passed_socket(dir: &Path, socket: std::os::fd::OwnedFd, extra: &[&str]) -> Agent {
    let agent_run = agent_run_command(dir);
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("exec 3<&0 0</dev/null; export LISTEN_FDS=1 LISTEN_PID=$$; exec \"$@\"")
        .arg("sh")
        .arg(agent_run.get_program())
        .args(agent_run.get_args())
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::from(socket))
        .stdout(Stdio::null());
    Agent::spawn(cmd)
}

/// Connections waiting in the accept queue of the IPv4 loopback listener
/// on `port`, from /proc/net/tcp (for a listening socket, the rx_queue
/// column counts them).
pub fn accept_queue(port: u16) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (address, state, queues) = (fields.get(1)?, fields.get(3)?, fields.get(4)?);
        if !address.ends_with(&local) || *state != "0A" {
            return None;
        }
        u32::from_str_radix(queues.split(':').nth(1)?, 16).ok()
    })
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

impl Env {
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
}

/// Frames from a client, as a fake agent reads them.
pub type FakeIncoming = tokio_util::codec::FramedRead<
    tokio::io::ReadHalf<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    rexec_protocol::AgentCodec,
>;
/// Frames to a client, as a fake agent writes them.
pub type FakeOutgoing = tokio_util::codec::FramedWrite<
    tokio::io::WriteHalf<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    rexec_protocol::AgentCodec,
>;

/// A TLS server with the env's agent identity that takes any client, for
/// playing an agent that misbehaves (another protocol version, hostile
/// names). Already in ctl's known hosts.
pub struct FakeAgent {
    pub addr: SocketAddr,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

/// Runs `ctl ARGS` to its end on a blocking thread, so that a fake agent
/// served on the test's runtime can answer it meanwhile.
pub async fn ctl_output_off_the_runtime(env: &Env, args: &[&str]) -> Output {
    let mut ctl = env.ctl();
    ctl.args(args);
    tokio::task::spawn_blocking(move || ctl.output())
        .await
        .expect("ctl thread")
        .expect("run ctl")
}

impl FakeAgent {
    pub async fn bind(env: &Env) -> FakeAgent {
        #[derive(Debug)]
        struct Anyone;
        impl rexec_protocol::tls::ClientAuthorizer for Anyone {
            fn is_authorized(&self, _: &rexec_protocol::Fingerprint) -> bool {
                true
            }
        }
        let identity = rexec_protocol::Identity::load(&rexec_protocol::IdentityPaths::in_dir(
            &env.agent_dir,
            "agent",
        ))
        .expect("agent identity");
        let config = rexec_protocol::tls::server_config(&identity, Arc::new(Anyone)).expect("tls");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        std::fs::create_dir_all(&env.ctl_dir).expect("ctl dir");
        let mut known = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.ctl_dir.join("known_hosts"))
            .expect("known hosts");
        std::io::Write::write_all(
            &mut known,
            format!("{addr} {}\n", env.agent_fingerprint).as_bytes(),
        )
        .expect("write known hosts");
        FakeAgent {
            addr,
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }

    /// Accepts one client and completes TLS.
    pub async fn accept(self) -> (FakeIncoming, FakeOutgoing) {
        let (tcp, _) = self.listener.accept().await.expect("accept");
        let tls = self.acceptor.accept(tcp).await.expect("tls handshake");
        let (read, write) = tokio::io::split(tls);
        (
            tokio_util::codec::FramedRead::new(read, rexec_protocol::AgentCodec::new()),
            tokio_util::codec::FramedWrite::new(write, rexec_protocol::AgentCodec::new()),
        )
    }
}

impl Env {
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

/// Whether this process runs as root (user switches and mounts need it).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        .unwrap_or(false)
}

impl NotifySocket {
    /// Takes every message already waiting, without waiting for more:
    /// once the agent has exited, all it sent.
    pub fn drain(&mut self) {
        let mut buf = vec![0u8; 4096];
        self.socket.set_nonblocking(true).expect("nonblocking");
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.received
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.socket.set_nonblocking(false).expect("blocking");
    }
}
