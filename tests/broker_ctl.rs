//! ctl's side of broker mode against a real `nats-server` on a loopback
//! port of its own: how the broker is given (`--broker` before or after
//! the subcommand, `REXEC_BROKER`, hosts.toml's `[broker]`), an agent
//! nobody serves (`offline`, at once), `ctl hosts --online`, the known
//! hosts form of broker agents, and the one-line errors of a broker that
//! cannot be used.
//!
//! The agents are real `rexec-agent` processes serving the broker only;
//! the whole of broker mode end to end (exec's every feature, faults,
//! scale) is `broker_mode`'s.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Agent, Env, assert_failed_saying, stderr_of, stdout_of};

/// ctl of `env` with no broker from our own environment.
fn ctl(env: &Env) -> Command {
    let mut cmd = env.ctl();
    cmd.env_remove("REXEC_BROKER").env_remove("REXEC_INVENTORY");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run ctl")
}

fn known_hosts(env: &Env) -> String {
    std::fs::read_to_string(env.ctl_dir.join("known_hosts")).unwrap_or_default()
}

#[test]
fn an_agent_nobody_serves_is_offline_at_once() {
    let nats = util::require_nats!();
    let env = Env::new();
    let started = Instant::now();
    let out = run(ctl(&env).args(["exec", "--broker", &nats.url, "labpc07", "true"]));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    assert_eq!(
        stderr_of(&out),
        "ctl: labpc07: not connected to the broker\n"
    );
    // A bound, not a speed claim: no timeout was waited for (the connect
    // timeout is 5 s).
    assert!(took < Duration::from_secs(4), "offline took {took:?}");

    let out = run(ctl(&env).args(["--broker", &nats.url, "exec", "--json", "pc[1-2]", "true"]));
    assert_eq!(out.status.code(), Some(255));
    let records = util::json_lines(&out);
    assert_eq!(records.len(), 2);
    for record in &records {
        assert_eq!(record["status"], "error");
        assert_eq!(record["error"]["kind"], "offline");
        assert_eq!(record["error"]["message"], "not connected to the broker");
    }
    assert_eq!(
        stderr_of(&out),
        "ctl: 2 of 2 hosts failed: offline: pc[1-2]\n"
    );
    let out = run(ctl(&env).args(["--broker", &nats.url, "ping", "pc[1-2]"]));
    assert_eq!(out.status.code(), Some(255));
    let stderr = stderr_of(&out);
    let mut lines: Vec<&str> = stderr.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "ctl: 2 of 2 hosts failed: offline: pc[1-2]",
            "ctl: pc1: not connected to the broker",
            "ctl: pc2: not connected to the broker",
        ]
    );
}

#[test]
fn the_broker_is_given_before_or_after_the_command_by_env_or_by_hosts_toml() {
    let nats = util::require_nats!();
    let env = Env::new();
    let _agent = env.broker_agent(&nats, "labpc07", &[]);
    let inventory = env.root.path().join("hosts.toml");
    std::fs::write(
        &inventory,
        format!(
            "[broker]\nurl = \"{}\"\n\n[hosts.labpc07]\nport = 7000\n",
            nats.url
        ),
    )
    .expect("hosts.toml");
    let (url, file) = (nats.url.as_str(), inventory.to_str().expect("path"));
    let command = "echo through the broker";
    let ways: [(&str, Vec<&str>, Option<&str>); 4] = [
        (
            "--broker after",
            vec!["exec", "--broker", url, "labpc07", command],
            None,
        ),
        (
            "--broker before",
            vec!["--broker", url, "exec", "labpc07", command],
            None,
        ),
        ("REXEC_BROKER", vec!["exec", "labpc07", command], Some(url)),
        // The inventory's port is for direct mode, and left out here.
        (
            "hosts.toml",
            vec!["--inventory", file, "exec", "labpc07", command],
            None,
        ),
    ];
    for (way, args, variable) in &ways {
        let mut cmd = ctl(&env);
        if let Some(url) = variable {
            cmd.env("REXEC_BROKER", url);
        }
        let out = run(cmd.args(args));
        assert_eq!(out.status.code(), Some(0), "{way}: {}", stderr_of(&out));
        assert_eq!(stdout_of(&out), "through the broker\n", "{way}");
    }
    // Without any of them, the same name is a direct target (and there is
    // no such host).
    let out = run(ctl(&env).args(["exec", "--connect-timeout", "2s", "labpc07.invalid", "true"]));
    assert_eq!(out.status.code(), Some(255));
    assert!(!stderr_of(&out).contains("broker"), "{}", stderr_of(&out));
    // A port means nothing on a broker: refused before anything is dialled.
    let out = run(ctl(&env).args(["--broker", &nats.url, "exec", "labpc07:7722", "true"]));
    assert_failed_saying(
        &out,
        255,
        "ctl: labpc07:7722: a port means nothing in broker mode",
    );
}

#[test]
fn hosts_online_lists_the_agents_on_the_broker_in_node_order() {
    let nats = util::require_nats!();
    let env = Env::new();
    let fingerprint = env.agent_fingerprint.clone();
    let _agents: Vec<Agent> = ["pc10", "pc2", "pc1", "db1"]
        .iter()
        .map(|name| env.broker_agent(&nats, name, &[]))
        .collect();
    let broker = ["--broker", nats.url.as_str()];

    let out = run(ctl(&env).args(broker).args(["hosts", "--online"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "db1\npc1\npc2\npc10\n");

    // A longer wait for the answers, as Salt's -t gives: the same list,
    // after the whole wait (it cannot know how many will answer).
    let started = Instant::now();
    let out = run(ctl(&env)
        .args(broker)
        .args(["hosts", "--online", "--wait", "2s"]));
    assert_eq!(
        stdout_of(&out),
        "db1\npc1\npc2\npc10\n",
        "{}",
        stderr_of(&out)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the whole wait"
    );
    for (wait, says) in [("0s", "longer than 0"), ("soon", "not a duration")] {
        let out = run(ctl(&env)
            .args(broker)
            .args(["hosts", "--online", "--wait", wait]));
        let line = util::checks::assert_one_ctl_line(&out, "--wait");
        assert!(line.contains(says), "{line}");
    }
    let out = run(ctl(&env)
        .args(broker)
        .args(["hosts", "--wait", "2s", "pc1"]));
    assert!(
        util::checks::assert_one_ctl_line(&out, "--wait without --online").contains("--online")
    );

    let out = run(ctl(&env).args(broker).args(["hosts", "--online", "--json"]));
    let records = util::json_lines(&out);
    let names: Vec<&str> = records.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["db1", "pc1", "pc2", "pc10"]);
    for record in &records {
        assert_eq!(record["fingerprint"], fingerprint.as_str());
        assert_eq!(record["version"], env!("CARGO_PKG_VERSION"));
    }

    // Limited to a target list: only those of them that are online.
    let out = run(ctl(&env)
        .args(broker)
        .args(["hosts", "--online", "pc[1-5],web1"]));
    assert_eq!(stdout_of(&out), "pc1\npc2\n", "{}", stderr_of(&out));
    let out = run(ctl(&env)
        .args(broker)
        .args(["hosts", "--online", "--fold", "pc[1-20]"]));
    assert_eq!(stdout_of(&out), "pc[1-2,10]\n");
    let out = run(ctl(&env)
        .args(broker)
        .args(["hosts", "--online", "-x", "pc[1-2]"]));
    assert_eq!(stdout_of(&out), "db1\npc10\n", "{}", stderr_of(&out));

    let out = run(ctl(&env).args(["hosts", "--online"]));
    assert_failed_saying(
        &out,
        255,
        "ctl: --online lists the agents on a broker: give one with --broker URL, REXEC_BROKER or hosts.toml's [broker]",
    );
}

#[test]
fn broker_agents_are_pinned_by_name_apart_from_direct_entries() {
    let nats = util::require_nats!();
    // The agent is known directly (env.agent() records it as ADDRESS:PORT).
    let (env, agent) = Env::with_agent();
    let direct = format!("{} {}", agent.target(), env.agent_fingerprint);
    assert_eq!(known_hosts(&env), format!("{direct}\n"));
    let genuine = env.broker_agent(&nats, "labpc07", &[]);
    let broker = ["--broker", nats.url.as_str()];

    // First contact through the broker: trusted on first use, as directly.
    let out = run(ctl(&env).args(broker).args(["exec", "labpc07", "true"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let pinned = format!("broker/labpc07 {}", env.agent_fingerprint);
    assert!(
        stderr_of(&out).contains(&format!(
            "ctl: new host broker/labpc07, fingerprint {}",
            env.agent_fingerprint
        )),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(known_hosts(&env), format!("{direct}\n{pinned}\n"));
    let out = run(ctl(&env).args(["known-hosts", "list"]));
    assert_eq!(stdout_of(&out), format!("{direct}\n{pinned}\n"));

    // An impostor under the known name: another agent identity.
    drop(genuine);
    let impostor_dir = env.root.path().join("impostor");
    let impostor_fingerprint = init_agent(&impostor_dir);
    authorize(&impostor_dir, &env.client_fingerprint);
    let _impostor = env.broker_agent_in(&impostor_dir, &nats, "labpc07", &[]);
    let out = run(ctl(&env).args(broker).args(["exec", "labpc07", "echo ran"]));
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(stdout_of(&out), "", "nothing ran on the impostor");
    assert_eq!(
        stderr_of(&out),
        format!(
            "ctl: labpc07: HOST KEY CHANGED: known hosts has {}, the agent presented {impostor_fingerprint}. \
             This may be an attack, or the agent was re-installed. If you know it was re-installed, \
             run: ctl --config-dir {} known-hosts remove broker/labpc07\n",
            env.agent_fingerprint,
            env.ctl_dir.display()
        )
    );
    // An unknown name under --strict-host-key is refused, as directly.
    let _other = env.broker_agent_in(&impostor_dir, &nats, "labpc08", &[]);
    let out = run(ctl(&env)
        .args(broker)
        .args(["exec", "--strict-host-key", "labpc08", "true"]));
    assert_failed_saying(&out, 255, "refused by --strict-host-key");

    // With a broker given, NAME is the broker entry; the direct one stays.
    let out = run(ctl(&env)
        .args(broker)
        .args(["known-hosts", "remove", "labpc07"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(stderr_of(&out).starts_with("removed broker/labpc07 from "));
    assert_eq!(known_hosts(&env), format!("{direct}\n"));
    // The re-installed agent is trusted again on first use.
    let out = run(ctl(&env).args(broker).args(["exec", "labpc07", "echo ran"]));
    assert_eq!(stdout_of(&out), "ran\n", "{}", stderr_of(&out));
    assert_eq!(
        known_hosts(&env),
        format!("{direct}\nbroker/labpc07 {impostor_fingerprint}\n")
    );
    // The entry as `list` shows it is removed without a broker too.
    let out = run(ctl(&env).args(["known-hosts", "remove", "broker/labpc07"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(known_hosts(&env), format!("{direct}\n"));
    drop(agent);
}

#[test]
fn a_broker_that_cannot_be_used_is_one_line() {
    let mut nats = util::require_nats!("authorization {\n  user: alice\n  password: right\n}");
    let env = Env::new();
    let dir = env.root.path();
    let password = dir.join("broker.password");
    std::fs::write(&password, "wrong\n").expect("password");
    set_mode(&password, 0o600);
    let inventory = dir.join("hosts.toml");
    std::fs::write(
        &inventory,
        format!(
            "[broker]\nurl = \"{}\"\nuser = \"alice\"\npassword_file = \"broker.password\"\n",
            nats.url
        ),
    )
    .expect("hosts.toml");
    let with_inventory = |args: &[&str]| {
        let mut cmd = ctl(&env);
        cmd.arg("--inventory").arg(&inventory).args(args);
        run(&mut cmd)
    };
    let refused = with_inventory(&["exec", "pc[1-3]", "true"]);
    assert_eq!(refused.status.code(), Some(255));
    assert_eq!(
        stderr_of(&refused),
        format!("ctl: the broker at {} refused our credentials\n", nats.url)
    );
    // The right password gets as far as the agents (none is connected).
    std::fs::write(&password, "right\n").expect("password");
    let out = with_inventory(&["exec", "pc1", "true"]);
    assert_eq!(stderr_of(&out), "ctl: pc1: not connected to the broker\n");
    // A secret others can read is refused before it is sent.
    set_mode(&password, 0o644);
    let out = with_inventory(&["exec", "pc1", "true"]);
    assert_failed_saying(&out, 255, "are too open");
    assert_eq!(stderr_of(&out).lines().count(), 1, "{}", stderr_of(&out));
    // A broker that is not there.
    let url = nats.url.clone();
    nats.stop();
    let out = run(ctl(&env).args(["--broker", &url, "ping", "pc[1-3]"]));
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        stderr_of(&out),
        format!("ctl: cannot reach the broker at {url}\n")
    );
    let out = run(ctl(&env).args(["--broker", "http://broker:4222", "ping", "pc1"]));
    assert_eq!(
        stderr_of(&out),
        "ctl: broker address \"http://broker:4222\" is not a nats://HOST:PORT or tls://HOST:PORT URL\n"
    );
}

/// A ctl user whose broker permissions do not let it receive replies is
/// told so in one line, at once. Before, `exec` waited out the connect
/// timeout and said the agent did not answer, and `hosts --online` printed
/// nothing and exited 0.
#[test]
fn a_ctl_user_the_broker_does_not_let_read_replies_is_told_so() {
    let nats = util::require_nats!(
        r#"authorization { users = [
            { user: agent, password: right }
            { user: viewer, password: right, permissions: {
                subscribe: { allow: ["rexec.v1.agent.*.session.*.from-agent"] } } }
        ] }"#
    );
    let env = Env::new();
    let dir = env.root.path();
    let password = dir.join("broker.password");
    std::fs::write(&password, "right\n").expect("password");
    set_mode(&password, 0o600);
    let password_arg = password.to_str().expect("utf-8");
    let _agent = env.broker_agent(
        &nats,
        "a5",
        &[
            "--broker-user",
            "agent",
            "--broker-password-file",
            password_arg,
        ],
    );
    let inventory = dir.join("hosts.toml");
    std::fs::write(
        &inventory,
        format!(
            "[broker]\nurl = \"{}\"\nuser = \"viewer\"\npassword_file = \"broker.password\"\n",
            nats.url
        ),
    )
    .expect("hosts.toml");
    let line = "the broker does not let us read the replies to our own requests under _INBOX (its user needs to subscribe to _INBOX.>)";
    for args in [&["exec", "a5", "true"][..], &["hosts", "--online"]] {
        let started = Instant::now();
        let out = run(ctl(&env).arg("--inventory").arg(&inventory).args(args));
        let took = started.elapsed();
        assert_eq!(
            out.status.code(),
            Some(255),
            "{args:?}: {}",
            stderr_of(&out)
        );
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("ctl: ") && err.trim_end().ends_with(line),
            "{args:?}: {err}"
        );
        assert!(
            took < Duration::from_secs(4),
            "{args:?}: told after {took:?}"
        );
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn init_agent(dir: &PathBuf) -> String {
    let out = Command::new(util::bin("rexec-agent"))
        .args(["init", "--dir"])
        .arg(dir)
        .output()
        .expect("init");
    assert!(out.status.success(), "{}", stderr_of(&out));
    stdout_of(&out).trim().to_owned()
}

fn authorize(dir: &Path, fingerprint: &str) {
    let status = Command::new(util::bin("rexec-agent"))
        .args(["authorize", "--dir"])
        .arg(dir)
        .args([fingerprint, "--name", "tester"])
        .stderr(Stdio::null())
        .status()
        .expect("authorize");
    assert!(status.success());
}

/// The commands of the README's "Broker mode: ctl", run as written
/// against a nats-server and two agents on it, `labpc07` and `labpc08`
/// (the group `@lab`); `labpc09` is not connected. Only the broker's URL
/// and the remote directory are changed, and `SHA256:...` in what the
/// README shows is the agents' fingerprint.
#[test]
fn the_readme_broker_examples_run_as_written() {
    use crate::readme::{SECTIONS_RUN_ELSEWHERE, check, section_examples};
    let nats = util::require_nats!();
    let readme = std::fs::read_to_string(util::repo_root().join("README.md")).expect("README");
    let heading = SECTIONS_RUN_ELSEWHERE[0].0;
    let examples = section_examples(&readme, heading);
    assert!(examples.len() >= 8, "{examples:?}");

    let env = Env::new();
    let _agents = [
        env.broker_agent(&nats, "labpc07", &[]),
        env.broker_agent(&nats, "labpc08", &[]),
    ];
    let root = env.root.path();
    let (work, remote) = (root.join("work"), root.join("remote/etc/app"));
    std::fs::create_dir_all(&work).expect("work");
    std::fs::create_dir_all(&remote).expect("remote");
    std::fs::write(work.join("app.conf"), "key = value\n").expect("app.conf");
    let inventory = root.join("hosts.toml");
    std::fs::write(&inventory, "[groups]\nlab = \"labpc[07-08]\"\n").expect("hosts.toml");
    let bin_dir = util::bin("ctl").parent().expect("bin dir").to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(&path)))
        .expect("PATH");
    let substitute = |text: &str| {
        text.replace("tls://broker.lab:4222", &nats.url).replace(
            "/etc/app/",
            &format!("{}/", remote.to_str().expect("utf-8 path")),
        )
    };

    // The [broker] example parses as an inventory.
    let example = readme
        .split(heading)
        .nth(1)
        .and_then(|rest| rest.split("```toml\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("the section's hosts.toml example");
    let parsed = root.join("example.toml");
    std::fs::write(&parsed, example).expect("example");
    let out = run(ctl(&env)
        .arg("--inventory")
        .arg(&parsed)
        .args(["hosts", "labpc07"]));
    assert_eq!(stdout_of(&out), "labpc07\n", "{}", stderr_of(&out));

    let mut failures = Vec::new();
    for example in &examples {
        let text = substitute(&example.text);
        let out = Command::new("bash")
            .args(["-o", "pipefail", "-c", &text])
            .current_dir(&work)
            .env("PATH", &path)
            .env("REXEC_CONFIG_DIR", &env.ctl_dir)
            .env("REXEC_INVENTORY", &inventory)
            .env_remove("REXEC_BROKER")
            .stdin(Stdio::null())
            .output()
            .expect("bash");
        let mut shown = example.clone();
        for line in &mut shown.shown {
            *line = line.replace("SHA256:...", &env.agent_fingerprint);
        }
        if let Some(why) = check(
            &shown,
            out.status.code(),
            &stdout_of(&out),
            &stderr_of(&out),
        ) {
            failures.push(format!(
                "README.md:{}: {}\n    {why}\n    stdout: {:?}\n    stderr: {:?}",
                example.line,
                example.text,
                stdout_of(&out),
                stderr_of(&out)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(remote.join("app.conf").is_file(), "the copy made no file");
}

/// An agent that refuses our key is reported as over TCP, though through
/// the broker its TLS alert may not arrive before the session's reset.
#[test]
fn a_client_the_agent_refuses_is_told_so_through_the_broker() {
    let nats = util::require_nats!();
    let env = Env::new();
    let _agent = env.broker_agent(&nats, "labpc07", &[]);
    let (stranger, fingerprint) = env.stranger();
    let out = run(ctl(&env)
        .env("REXEC_CONFIG_DIR", &stranger)
        .args(["--broker", &nats.url, "exec", "labpc07", "echo ran"]));
    assert_eq!(stdout_of(&out), "");
    assert_failed_saying(
        &out,
        255,
        &format!("ctl: labpc07: the agent refused this client: is {fingerprint} authorized there?"),
    );
}
