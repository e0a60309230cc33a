//! The agent started the ways systemd starts it: socket activation, a
//! passed socket, a notification socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{Agent, DEADLINE, agent_run_command};

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
        let listen = format!("127.0.0.1:{port}");
        let cmd = wrapped(
            "systemd-socket-activate",
            &["-l", &listen],
            &agent_run_command(dir),
            extra,
        );
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

    /// `rexec-agent run --dir DIR` on 127.0.0.1:0, notifying this socket
    /// as systemd's.
    pub fn agent_command(&self, dir: &Path) -> Command {
        let mut cmd = agent_run_command(dir);
        cmd.args(["--listen", "127.0.0.1:0"])
            .env("NOTIFY_SOCKET", &self.path);
        cmd
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
            // A read with a receive timeout is not restarted after a
            // signal handler runs (signal(7)), whatever SA_RESTART says:
            // once anything in the test process catches SIGCHLD (tokio
            // does when it cannot use a pidfd for a child), every child
            // of the test process that exits can interrupt it. A timeout
            // is looked at above, with the deadline.
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => panic!("cannot read the notify socket: {e}"),
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

/// Starts `rexec-agent run` with `socket` passed the way systemd passes a
/// socket unit's sockets: as fd 3, with LISTEN_FDS=1 and LISTEN_PID set to
/// the agent's pid. A shell moves the socket from stdin to fd 3 and execs
/// the agent, so the pid it exports is the agent's.
pub fn agent_with_passed_socket(dir: &Path, socket: std::os::fd::OwnedFd, extra: &[&str]) -> Agent {
    let mut cmd = in_shell(
        "exec 3<&0 0</dev/null; export LISTEN_FDS=1 LISTEN_PID=$$; exec \"$@\"",
        &agent_run_command(dir),
        extra,
    );
    cmd.stdin(Stdio::from(socket));
    Agent::spawn(cmd)
}

/// `run` with `extra` arguments, started by `sh -c SCRIPT`: the script
/// prepares what systemd would and ends in `exec "$@"`, so the agent keeps
/// the shell's pid.
pub fn in_shell(script: &str, run: &Command, extra: &[&str]) -> Command {
    wrapped("/bin/sh", &["-c", script, "sh"], run, extra)
}

/// `PROGRAM ARGS... RUN EXTRA...`: `run` (its program and arguments only)
/// started by a wrapper, logging at info level, stdin and stdout null.
fn wrapped(program: &str, args: &[&str], run: &Command, extra: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .arg(run.get_program())
        .args(run.get_args())
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}
