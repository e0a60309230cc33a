//! The agent in broker mode: the real `rexec-agent run --broker` against a
//! real `nats-server` on a loopback port the server picks itself. Sessions
//! go through the broker crate directly (a carrier, then the project's own
//! TLS client), so these tests check the agent's side alone: its flags and
//! `[broker]` table, that it opens no port with only a broker and both
//! with `--listen`, that it starts with the broker down and connects
//! later, what it logs and says to systemd, and how it stops. ctl through
//! the broker is tested elsewhere.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rexec_broker::{BrokerError, BrokerOptions, Carrier};
use rexec_protocol::tls::{HostKeyPolicy, HostKeyVerifier, client_config, server_name};
use rexec_protocol::{
    AgentMessage, ClientCodec, ClientMessage, ExecRequest, ExitStatus, Fingerprint, Hello,
    Identity, IdentityPaths,
};
use tokio_util::codec::Framed;

use crate::util::{self, Agent, DEADLINE, Env, NotifySocket, agent_run_command, wait_until};

/// `rexec-agent run` of `env` with `args`, not waited for.
fn spawn_agent(env: &Env, args: &[&str]) -> Agent {
    let mut cmd = agent_run_command(&env.agent_dir);
    cmd.args(args);
    Agent::spawn(cmd)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// What one exec through the broker gave back.
#[derive(Debug)]
struct Ran {
    stdout: Vec<u8>,
    exit: Option<ExitStatus>,
}

/// ctl's side, played with the broker crate and the project's TLS: the
/// client identity `ctl keygen` made, and the agent's fingerprint pinned.
#[derive(Debug, Clone)]
struct Client {
    ctl_dir: PathBuf,
    agent_fingerprint: String,
}

impl Client {
    fn of(env: &Env) -> Client {
        Client {
            ctl_dir: env.ctl_dir.clone(),
            agent_fingerprint: env.agent_fingerprint.clone(),
        }
    }

    /// A carrier on the broker at `url`.
    async fn carrier(url: &str) -> Carrier {
        let mut options = BrokerOptions::new([url]);
        // An agent that is going away may take a request it no longer
        // answers; we ask again rather than wait long.
        options.tuning.open_timeout = Duration::from_secs(2);
        Carrier::connect(options)
            .await
            .expect("connect to the broker")
    }

    /// A mutual TLS session with agent `name` through the broker at
    /// `url` that runs `command`; `started` is called once it runs.
    async fn exec(
        &self,
        url: &str,
        name: &str,
        command: &str,
        started: impl FnOnce(),
    ) -> Result<Ran, BrokerError> {
        let stream = Client::carrier(url).await.dial(name).await?;
        let agent: Fingerprint = self.agent_fingerprint.parse().expect("fingerprint");
        let verifier = Arc::new(HostKeyVerifier::new(HostKeyPolicy::Expect(agent)));
        let identity = Identity::load(&IdentityPaths::in_dir(&self.ctl_dir, "client"))
            .expect("client identity");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(
            client_config(Some(&identity), verifier).expect("client config"),
        ));
        let tls = connector
            .connect(server_name(name), stream)
            .await
            .expect("TLS with the agent through the broker");
        let mut framed = Framed::new(tls, ClientCodec::new());
        framed
            .send(ClientMessage::Hello(Hello::new("broker-agent-test 0")))
            .await
            .expect("hello");
        framed
            .send(ClientMessage::Exec(ExecRequest {
                command: command.to_owned(),
                ..ExecRequest::default()
            }))
            .await
            .expect("exec");
        let mut ran = Ran {
            stdout: Vec::new(),
            exit: None,
        };
        let mut started = Some(started);
        while let Some(message) = framed.next().await {
            match message.expect("a message from the agent") {
                AgentMessage::Started { .. } => {
                    if let Some(started) = started.take() {
                        started();
                    }
                }
                AgentMessage::Stdout(data) => ran.stdout.extend_from_slice(&data),
                AgentMessage::Exit(status) => {
                    ran.exit = Some(status);
                    break;
                }
                AgentMessage::Error(report) => panic!("the agent refused: {report:?}"),
                _ => {}
            }
        }
        Ok(ran)
    }
}

/// TCP sockets of process `pid` that are listening, as `ss -ltnp` shows
/// them: its socket descriptors matched against the kernel's tables.
fn listening_sockets(pid: u32) -> Vec<String> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the agent's descriptors")
        .filter_map(|entry| {
            let link = std::fs::read_link(entry.ok()?.path()).ok()?;
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut listening = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Field 3 is the state (0A: LISTEN), field 9 the inode.
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                listening.push(fields[1].to_owned());
            }
        }
    }
    listening
}

/// No line of the NATS client's own words ("event: client error: nats:
/// IO error") reaches the agent's log: the carrier says it in ours.
#[track_caller]
fn assert_no_library_text(log: &str) {
    for line in log.lines() {
        assert!(
            !line.contains("nats: ") && !line.contains(" event: "),
            "{line}"
        );
    }
}

#[test]
fn with_only_a_broker_the_agent_opens_no_port_and_serves_through_the_broker() {
    let nats = util::require_nats!();
    let env = Env::new();
    let agent = spawn_agent(&env, &["--broker", &nats.url, "--name", "labpc07"]);
    agent.expect_log(&format!(
        "connected to the broker at {} as labpc07",
        nats.url
    ));
    assert_eq!(listening_sockets(agent.child.id()), Vec::<String>::new());
    assert!(!agent.log().contains("listening on"), "{}", agent.log());

    let rt = runtime();
    // "connected" means served: the first dial after it finds the agent.
    let ran = rt
        .block_on(Client::of(&env).exec(
            &nats.url,
            "labpc07",
            "echo through the broker; exit 3",
            || {},
        ))
        .expect("a session through the broker");
    assert_eq!(ran.stdout, b"through the broker\n");
    assert_eq!(ran.exit, Some(ExitStatus::Code(3)));

    let found = rt.block_on(async {
        let carrier = Carrier::connect(BrokerOptions::new([nats.url.as_str()]))
            .await
            .expect("connect");
        carrier
            .discover(Duration::from_secs(3))
            .await
            .expect("discover")
    });
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].name, "labpc07");
    assert_eq!(found[0].fingerprint, env.agent_fingerprint);
    assert_eq!(found[0].version, env!("CARGO_PKG_VERSION"));

    assert_no_library_text(&agent.log());
}

#[test]
fn an_agent_started_while_its_broker_is_down_serves_tcp_and_connects_when_it_comes_up() {
    let mut nats = util::require_nats!();
    nats.stop();
    let env = Env::new();
    let mut agent = spawn_agent(
        &env,
        &[
            "--broker",
            &nats.url,
            "--name",
            "labpc07",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    agent.wait_listening();
    agent.expect_log(&format!("cannot reach the broker at {}", nats.url));
    assert_eq!(listening_sockets(agent.child.id()).len(), 1);
    // TCP serves meanwhile.
    env.trust(&agent);
    let out = env.exec(&agent, &["echo direct"]);
    assert_eq!(
        util::stdout_of(&out),
        "direct\n",
        "{}",
        util::stderr_of(&out)
    );

    nats.restart();
    let connected = format!("connected to the broker at {} as labpc07", nats.url);
    agent.expect_log(&connected);
    let rt = runtime();
    let ran = rt
        .block_on(Client::of(&env).exec(&nats.url, "labpc07", "echo via broker", || {}))
        .expect("a session through the broker");
    assert_eq!(ran.stdout, b"via broker\n");

    // A drop is a warning, and the agent comes back by itself.
    nats.stop();
    agent.expect_log(&format!(
        "WARN lost the connection to the broker at {}; reconnecting",
        nats.url
    ));
    nats.restart();
    assert!(
        wait_until(DEADLINE, || util::log_lines_with(&agent, &connected) >= 2),
        "{}",
        agent.log()
    );
    let ran = rt
        .block_on(Client::of(&env).exec(&nats.url, "labpc07", "echo again", || {}))
        .expect("a session after the reconnect");
    assert_eq!(ran.stdout, b"again\n");
    let out = env.exec(&agent, &["echo still direct"]);
    assert_eq!(util::stdout_of(&out), "still direct\n");
}

#[test]
fn a_refused_password_is_one_plain_line_and_the_agent_keeps_trying() {
    let nats = util::require_nats!("authorization { user: labpc07, password: right }");
    let env = Env::new();
    let password = env.root.path().join("broker.pass");
    util::secret_file(&password, "wrong\n");
    let mut agent = spawn_agent(
        &env,
        &[
            "--broker",
            &nats.url,
            "--broker-user",
            "labpc07",
            "--broker-password-file",
            password.to_str().expect("path"),
        ],
    );
    let refused = format!("the broker at {} refused our credentials", nats.url);
    assert!(
        wait_until(DEADLINE, || util::log_lines_with(&agent, &refused) >= 2),
        "tried again: {}",
        agent.log()
    );
    assert!(
        agent.child.try_wait().expect("wait").is_none(),
        "still runs"
    );
    let log = agent.log();
    assert!(!log.contains("connected to the broker"), "{log}");
    assert_no_library_text(&log);
    // The name defaults to the host name up to its first dot.
    let host = nix::unistd::gethostname().expect("host name");
    let host = host.to_string_lossy();
    let short = host.split('.').next().expect("name");
    assert!(
        log.contains(&format!(
            "connecting to the broker at {} as {short}",
            nats.url
        )),
        "{log}"
    );
}

#[test]
fn sigterm_stops_serving_the_name_and_lets_a_running_command_finish() {
    let nats = util::require_nats!();
    let env = Env::new();
    let mut agent = spawn_agent(&env, &["--broker", &nats.url, "--name", "labpc07"]);
    agent.expect_log("connected to the broker at");
    let rt = runtime();
    let pid = agent.child.id();
    let marker = env.root.path().join("released");
    let wait_for = marker.display().to_string();
    // Released by the test; 20 s at most.
    let command = format!(
        "i=0; while [ ! -e {wait_for} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; echo finished"
    );
    let client = Client::of(&env);
    let url = nats.url.clone();
    let running = rt.spawn(async move {
        client
            .exec(&url, "labpc07", &command, move || {
                util::send_signal(pid, "TERM");
            })
            .await
    });
    agent.expect_log("SIGTERM: no new connections");
    // The name is no longer served: a new session is `offline`, at once
    // once the broker has our unsubscription.
    let offline = rt.block_on(async {
        let carrier = Client::carrier(&nats.url).await;
        let deadline = Instant::now() + DEADLINE;
        loop {
            match carrier.dial("labpc07").await {
                Err(e @ BrokerError::Offline(_)) => break Some(e),
                _ if Instant::now() >= deadline => break None,
                _ => {}
            }
        }
    });
    assert_eq!(offline, Some(BrokerError::Offline("labpc07".to_owned())));
    std::fs::write(&marker, "").expect("release the command");
    let ran = rt
        .block_on(running)
        .expect("task")
        .expect("the running session");
    assert_eq!(ran.stdout, b"finished\n");
    assert_eq!(ran.exit, Some(ExitStatus::Code(0)));
    let status = agent.wait_exit().expect("the agent exits");
    assert!(status.success(), "{status:?}\n{}", agent.log());
}

#[test]
fn the_status_line_says_whether_the_broker_is_connected() {
    let mut nats = util::require_nats!();
    let env = Env::new();
    let mut notify = NotifySocket::new(env.root.path());
    let mut cmd = notify.agent_command(&env.agent_dir);
    cmd.args(["--broker", &nats.url, "--name", "labpc07"]);
    let agent = Agent::spawn(cmd);
    let connected = format!("connected to the broker at {} as labpc07", nats.url);
    agent.expect_log(&connected);
    let end = Instant::now() + DEADLINE;
    let mut up = None;
    while up.is_none() && Instant::now() < end {
        up = notify
            .wait_for("STATUS=")
            .filter(|m| m.contains(&format!("; {connected}; 0 sessions running")));
    }
    let up = up.expect("a status line with the broker connected");
    assert!(up.contains("STATUS=listening on 127.0.0.1:"), "{up}");

    nats.stop();
    let down = format!("; not connected to the broker at {}, retrying", nats.url);
    let mut seen = None;
    while seen.is_none() && Instant::now() < end {
        seen = notify.wait_for("STATUS=").filter(|m| m.contains(&down));
    }
    assert!(seen.is_some(), "a status line with the broker down");
}

#[test]
fn run_check_prints_the_broker_table_and_refuses_bad_broker_settings() {
    let env = Env::new();
    let token = env.root.path().join("broker.token");
    util::secret_file(&token, "s3cret\n");
    let config = env.root.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nurl = \"tls://broker1.lab:4222\"\nname = \"labpc07\"\nfingerprint = \"sha256:{}\"\ntoken_file = \"{}\"\n",
            "ab".repeat(32),
            token.display()
        ),
    )
    .expect("config");
    let check = |args: &[&str]| {
        Command::new(util::bin("rexec-agent"))
            .arg("--dir")
            .arg(&env.agent_dir)
            .arg("--config")
            .arg(&config)
            .args(["run", "--check"])
            .args(args)
            .output()
            .expect("rexec-agent")
    };
    let out = check(&["--broker", "tls://broker1.lab:4222,tls://broker2.lab:4222"]);
    assert_eq!(out.status.code(), Some(0), "{}", util::stderr_of(&out));
    let printed = util::stdout_of(&out);
    assert!(
        printed.contains(&format!(
            "[broker]\nurl = [\"tls://broker1.lab:4222\", \"tls://broker2.lab:4222\"]\nname = \"labpc07\"\nsubject_prefix = \"rexec\"\nfingerprint = \"sha256:{}\"\ntoken_file = \"{}\"\n",
            "ab".repeat(32),
            token.display()
        )),
        "{printed}"
    );
    assert!(!printed.contains("listen"), "no TCP port: {printed}");
    let with_port = check(&["--listen", "127.0.0.1:7722"]);
    assert!(util::stdout_of(&with_port).contains("listen = [\"127.0.0.1:7722\"]"));

    // Each refusal is one line of our own, and nothing runs.
    let one_line = |args: &[&str], code: i32, needle: &str| {
        let out = check(args);
        let stderr = util::stderr_of(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    };
    one_line(
        &["--name", "lab.pc07"],
        2,
        "agent name \"lab.pc07\" contains '.'",
    );
    one_line(
        &["--broker", "broker.lab:4222"],
        2,
        "is not a nats://HOST:PORT or tls://HOST:PORT URL",
    );
    one_line(
        &["--broker-ca", "/etc/ssl/certs/ca-certificates.crt"],
        1,
        "give either a CA file or a fingerprint to trust the broker by, not both",
    );
    one_line(
        &["--broker-creds", "/nonexistent.creds"],
        1,
        "give one kind of broker credentials",
    );
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    one_line(&[], 1, "permissions 0644 for broker token file");
    std::fs::remove_file(&token).expect("rm");
    one_line(&[], 1, "cannot be read");
    std::fs::write(&config, "[broker]\nurl = \"http://broker.lab\"\n").expect("config");
    one_line(&[], 1, "agent.toml:2:7: bad value for `broker.url`");
}
