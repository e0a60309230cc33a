//! Managing who may connect, end to end: enrolment and revocation on a
//! running agent, the fingerprints admins paste, known hosts for scripts,
//! and private keys that others can read.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::util::checks::assert_refused;
use crate::util::*;

fn agent_cli(env: &Env, args: &[&str]) -> std::process::Output {
    Command::new(bin("rexec-agent"))
        .arg("--dir")
        .arg(&env.agent_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rexec-agent")
}

#[test]
fn the_ids_admins_paste_are_the_fingerprints_in_use() {
    let env = Env::new();
    let ctl_id = env.ctl().arg("id").output().unwrap();
    assert_eq!(stdout_of(&ctl_id).trim(), env.client_fingerprint);
    let agent_id = agent_cli(&env, &["id"]);
    assert_eq!(stdout_of(&agent_id).trim(), env.agent_fingerprint);
    let clients = agent_cli(&env, &["clients"]);
    assert_eq!(
        stdout_of(&clients),
        format!("{} tester\n", env.client_fingerprint)
    );
    // First contact records exactly what `rexec-agent id` printed.
    let agent = env.unknown_agent_with(&[]);
    assert!(env.exec(&agent, &["true"]).status.success());
    let known = std::fs::read_to_string(env.ctl_dir.join("known_hosts")).unwrap();
    assert!(known.contains(&format!("{} {}", agent.target(), env.agent_fingerprint)));
}

#[test]
fn a_revoked_client_is_refused_at_once_without_a_restart() {
    let (env, agent) = Env::with_agent();
    assert_eq!(stdout_of(&env.exec(&agent, &["echo in"])), "in\n");

    let revoke = agent_cli(&env, &["revoke", "tester"]);
    assert!(revoke.status.success(), "{}", stderr_of(&revoke));
    let out = env.exec(&agent, &["echo should-not-run"]);
    assert_refused(&out, "refused this client", &[]);
    assert!(agent.wait_for_log("fingerprint not authorized").is_some());

    // Enrolled again, by fingerprint, and in at once.
    env.authorize(&env.client_fingerprint, "tester-again");
    let out = env.exec(&agent, &["echo back"]);
    assert_eq!(stdout_of(&out), "back\n", "{}", stderr_of(&out));
    assert!(agent.wait_for_log("client=\"tester-again\"").is_some());

    // Revoked by fingerprint this time: refused again, at once.
    let revoke = agent_cli(&env, &["revoke", &env.client_fingerprint]);
    assert!(revoke.status.success(), "{}", stderr_of(&revoke));
    assert_eq!(stdout_of(&agent_cli(&env, &["clients"])), "");
    let out = env.exec(&agent, &["echo should-not-run"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(stdout_of(&out), "");
}

#[test]
fn a_hand_edited_file_is_picked_up_and_sighup_forces_a_reread() {
    let (env, agent) = Env::with_agent();
    let (other_dir, other_fp) = env.stranger();
    std::fs::copy(
        env.ctl_dir.join("known_hosts"),
        other_dir.join("known_hosts"),
    )
    .unwrap();
    let run_as_other = || {
        env.ctl()
            .env("REXEC_CONFIG_DIR", &other_dir)
            .args(["exec", &agent.target(), "echo other"])
            .output()
            .unwrap()
    };
    assert_eq!(run_as_other().status.code(), Some(255));

    // An admin appends a line with an editor or echo; no command, no signal.
    let file = env.agent_dir.join("authorized_clients");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!("{other_fp} edited-by-hand\n"));
    std::fs::write(&file, &text).unwrap();
    assert_eq!(stdout_of(&run_as_other()), "other\n");

    agent.signal("HUP");
    let line = agent
        .wait_for_log("authorized clients re-read")
        .expect("SIGHUP is acknowledged");
    assert!(line.contains("clients=2"), "{line}");
    assert!(env.exec(&agent, &["true"]).status.success());

    // A change the file's size, time and inode do not show (one letter of
    // the fingerprint, written in place, the old time put back) is seen
    // only after SIGHUP: that is what the signal is for.
    let before = std::fs::metadata(&file).unwrap();
    let at = text.find(&other_fp).unwrap() + other_fp.len() - 1;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(&bytes).unwrap();
        f.set_modified(before.modified().unwrap()).unwrap();
    }
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap())
    );
    assert_eq!(stdout_of(&run_as_other()), "other\n", "not seen yet");
    let reread = agent.log().matches("authorized clients re-read").count();
    agent.signal("HUP");
    assert!(wait_until(DEADLINE, || agent
        .log()
        .matches("authorized clients re-read")
        .count()
        > reread));
    assert_eq!(
        run_as_other().status.code(),
        Some(255),
        "revoked by the edit"
    );
}

#[test]
fn strict_host_key_refuses_unknown_hosts_and_accepts_known_ones() {
    let env = Env::new();
    let agent = env.unknown_agent_with(&[]);
    let out = env
        .ctl()
        .args([
            "exec",
            "--strict-host-key",
            &agent.target(),
            "echo should-not-run",
        ])
        .output()
        .unwrap();
    assert_refused(
        &out,
        "unknown host",
        &[(&env.agent_fingerprint, "what it saw")],
    );
    assert!(
        !env.ctl_dir.join("known_hosts").exists()
            || !std::fs::read_to_string(env.ctl_dir.join("known_hosts"))
                .unwrap()
                .contains(&agent.target()),
        "nothing recorded"
    );
    env.trust(&agent);
    let out = env
        .ctl()
        .args(["exec", "--strict-host-key", &agent.target(), "echo known"])
        .output()
        .unwrap();
    assert_eq!(stdout_of(&out), "known\n", "{}", stderr_of(&out));
}

/// Known hosts compared host names with their case: `localhost:P` and
/// `LOCALHOST:P` were two first contacts, and a key refused under one
/// name was trusted on first use under the other.
#[test]
fn a_host_name_is_one_known_host_in_any_case() {
    let env = Env::new();
    let agent = env.unknown_agent_with(&[]);
    let port = agent.addr.port();
    let exec = |host: &str| {
        env.ctl()
            .args(["exec", &format!("{host}:{port}"), "echo ran"])
            .output()
            .unwrap()
    };
    let first = exec("localhost");
    assert_eq!(stdout_of(&first), "ran\n", "{}", stderr_of(&first));
    assert!(
        stderr_of(&first).starts_with(&format!("ctl: new host localhost:{port}, ")),
        "{}",
        stderr_of(&first)
    );
    let again = exec("LOCALHOST");
    assert_eq!(stdout_of(&again), "ran\n", "{}", stderr_of(&again));
    assert_eq!(stderr_of(&again), "", "no second first contact");
    let known = env.ctl_dir.join("known_hosts");
    assert_eq!(
        std::fs::read_to_string(&known).unwrap(),
        format!("localhost:{port} {}\n", env.agent_fingerprint)
    );

    // Another key on record, written by hand in capitals: refused under
    // every spelling, and removed under any.
    let other = Env::new();
    env.write_known_hosts(format!("LocalHost:{port} {}\n", other.agent_fingerprint));
    for host in ["localhost", "LOCALHOST"] {
        let out = exec(host);
        assert_refused(
            &out,
            "HOST KEY CHANGED",
            &[(&other.agent_fingerprint, "the known key")],
        );
    }
    let removed = env
        .ctl()
        .args(["known-hosts", "remove", &format!("LOCALHOST:{port}")])
        .output()
        .unwrap();
    assert_eq!(removed.status.code(), Some(0), "{}", stderr_of(&removed));
    assert_eq!(std::fs::read_to_string(&known).unwrap(), "");
}

/// The HOST KEY CHANGED hint named no config directory, so after
/// `--config-dir DIR` the command it gave looked in the default one and
/// answered "is not in known hosts".
#[test]
fn the_host_key_changed_hint_works_pasted_after_config_dir() {
    let env = Env::new();
    let agent = env.unknown_agent_with(&[]);
    let other = Env::new();
    env.write_known_hosts(format!("{} {}\n", agent.target(), other.agent_fingerprint));
    // A home whose default config directory is empty, and no
    // REXEC_CONFIG_DIR: only the flag names ours.
    let home = env.root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let dir = env.ctl_dir.to_str().unwrap();
    let out = Command::new(bin("ctl"))
        .env_remove("REXEC_CONFIG_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", &home)
        .args(["--config-dir", dir, "exec", &agent.target(), "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = assert_refused(&out, "HOST KEY CHANGED", &[]);
    let hint = format!(
        "run: ctl --config-dir {dir} known-hosts remove {}\n",
        agent.target()
    );
    assert!(err.ends_with(&hint), "{err}");
    // The command as given, pasted into a shell elsewhere.
    let command = err.rsplit("run: ").next().unwrap().trim_end();
    let pasted = Command::new("sh")
        .arg("-c")
        .arg(command.replacen("ctl", &bin("ctl").to_string_lossy(), 1))
        .current_dir(&home)
        .env_remove("REXEC_CONFIG_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", &home)
        .output()
        .unwrap();
    assert_eq!(
        pasted.status.code(),
        Some(0),
        "{command}: {}",
        stderr_of(&pasted)
    );
    let known = std::fs::read_to_string(env.ctl_dir.join("known_hosts")).unwrap();
    assert!(!known.contains(&other.agent_fingerprint), "{known}");
    // With the default directory, the hint needs no flag.
    let default = home.join(".config/rexec");
    std::fs::create_dir_all(&default).unwrap();
    for file in ["client.crt", "client.key"] {
        std::fs::copy(env.ctl_dir.join(file), default.join(file)).unwrap();
    }
    std::fs::write(
        default.join("known_hosts"),
        format!("{} {}\n", agent.target(), other.agent_fingerprint),
    )
    .unwrap();
    let out = Command::new(bin("ctl"))
        .env_remove("REXEC_CONFIG_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", &home)
        .args(["exec", &agent.target(), "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = assert_refused(&out, "HOST KEY CHANGED", &[]);
    assert!(
        err.ends_with(&format!("run: ctl known-hosts remove {}\n", agent.target())),
        "{err}"
    );
}

#[test]
fn a_readable_client_key_is_refused_with_the_fix() {
    let (env, agent) = Env::with_agent();
    let key = env.ctl_dir.join("client.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.exec(&agent, &["echo should-not-run"]);
    assert_eq!(out.status.code(), Some(255));
    let err = stderr_of(&out);
    assert!(err.contains("too open"), "{err}");
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );
    let id = env.ctl().arg("id").output().unwrap();
    assert_eq!(id.status.code(), Some(255), "ctl id refuses it too");
}

#[test]
fn a_readable_agent_key_keeps_the_agent_from_starting() {
    let env = Env::new();
    let key = env.agent_dir.join("agent.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = Command::new(bin("rexec-agent"))
        .arg("--dir")
        .arg(&env.agent_dir)
        .args(["run", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("too open"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    // Said once, in one line, without sending the admin to `init` (which
    // would refuse to overwrite the key).
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("too open").count(), 1, "{err}");
    assert!(!err.contains("init"), "{err}");
}

#[test]
fn a_missing_agent_dir_is_one_line_that_says_how_to_create_it() {
    let env = Env::new();
    let missing = env.root.path().join("no-such-dir");
    for args in [
        &["run", "--listen", "127.0.0.1:0"][..],
        &["run", "--check"],
        &["id"],
    ] {
        let out = Command::new(bin("rexec-agent"))
            .arg("--dir")
            .arg(&missing)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "rexec-agent: error: no agent identity in {} (agent.key is missing): create one with: rexec-agent --dir {} init",
                missing.display(),
                missing.display()
            )),
            "{err}"
        );
        assert!(!err.contains("os error"), "{err}");
    }
}

#[test]
fn authorize_refuses_a_name_another_key_has_and_an_empty_name() {
    let env = Env::new();
    let (_, other) = env.stranger();
    let before = std::fs::read_to_string(env.agent_dir.join("authorized_clients")).unwrap();
    for name in ["tester", "", " ", "a # b"] {
        let out = agent_cli(&env, &["authorize", &other, "--name", name]);
        assert_eq!(out.status.code(), Some(1), "{name:?}");
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("rexec-agent: error: "), "{err}");
    }
    let out = agent_cli(&env, &["authorize", &other, "--name", "tester"]);
    assert!(
        stderr_of(&out).contains("\"tester\" is already taken"),
        "{}",
        stderr_of(&out)
    );
    let after = std::fs::read_to_string(env.agent_dir.join("authorized_clients")).unwrap();
    assert_eq!(before, after, "nothing written");
    // A name of its own is fine, and revoking one name removes one key.
    assert!(
        agent_cli(&env, &["authorize", &other, "--name", "other"])
            .status
            .success()
    );
    let out = agent_cli(&env, &["revoke", "other"]);
    assert_eq!(stderr_of(&out).lines().count(), 1, "{}", stderr_of(&out));
    let clients = agent_cli(&env, &["clients"]);
    assert_eq!(
        stdout_of(&clients),
        format!("{} tester\n", env.client_fingerprint)
    );
}

#[test]
fn a_comment_after_a_name_in_the_clients_file_is_not_part_of_the_name() {
    let env = Env::new();
    std::fs::write(
        env.agent_dir.join("authorized_clients"),
        format!(
            "# lab admins\n{} ok   # alice's laptop\n",
            env.client_fingerprint
        ),
    )
    .unwrap();
    let clients = agent_cli(&env, &["clients"]);
    assert_eq!(
        stdout_of(&clients),
        format!("{} ok\n", env.client_fingerprint)
    );
    let agent = env.agent();
    assert_eq!(stdout_of(&env.exec(&agent, &["echo in"])), "in\n");
    agent.expect_log("client=\"ok\" ");
    let out = agent_cli(&env, &["revoke", "ok"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
}

/// `run --check` and `run` with `toml` as the config file.
fn check_and_run(env: &Env, toml: &str, flags: &[&str]) -> [std::process::Output; 2] {
    let config = env.root.path().join("check.toml");
    std::fs::write(&config, toml).unwrap();
    let agent = |extra: &[&str]| {
        Command::new(bin("rexec-agent"))
            .arg("--dir")
            .arg(&env.agent_dir)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .args(flags)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    [agent(&["--check"]), agent(&[])]
}

#[test]
fn run_check_refuses_what_run_refuses() {
    let env = Env::new();
    let cases: [(&str, &[&str], &str); 6] = [
        ("listen = []\n", &[], "no address to listen on"),
        (
            "listen = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n",
            &[],
            "127.0.0.1:0 is listed twice",
        ),
        (
            "",
            &["--listen", "127.0.0.1:7", "--listen", "127.0.0.1:7"],
            "127.0.0.1:7 is given twice",
        ),
        (
            "shell = \"/no/such/shell\"\nlisten = \"127.0.0.1:0\"\n",
            &[],
            "the shell /no/such/shell does not exist",
        ),
        (
            "listen = \"127.0.0.1:0\"\n",
            &["--shell", "/etc"],
            "the shell /etc does not exist or is not an executable file",
        ),
        (
            "max_timeout = \"18446744073709551615s\"\n",
            &[],
            "longer than 10 years",
        ),
    ];
    for (toml, flags, expected) in cases {
        for out in check_and_run(&env, toml, flags) {
            assert_eq!(
                out.status.code(),
                Some(1),
                "{toml:?} {flags:?}: {}",
                stderr_of(&out)
            );
            let err = stderr_of(&out);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains(expected), "{toml:?}: {err}");
        }
    }
}

/// Extreme and malformed values for every parser of the agent: each is
/// refused with one line, never a panic (exit 101).
#[test]
fn the_agents_parsers_refuse_extreme_and_malformed_values_in_one_line() {
    let env = Env::new();
    let durations = [
        "18446744073709551615s",
        "18446744073709551616s",
        "5000000000000000h",
        "99999999999999999999999999999999d",
        "-1s",
        "1.5s",
        "",
        " ",
        "10 parsecs",
        "1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s1s",
        "\u{202e}1s",
        "1 ns",
    ];
    let keys = [
        "handshake_timeout",
        "kill_grace",
        "shutdown_grace",
        "max_timeout",
        "keepalive_interval",
    ];
    let mut tomls: Vec<String> = Vec::new();
    for key in keys {
        for d in durations {
            tomls.push(format!("{key} = {d:?}\n"));
        }
        tomls.push(format!("{key} = 1e400\n"));
        tomls.push(format!("{key} = []\n"));
    }
    for key in [
        "max_sessions",
        "max_execs",
        "max_execs_per_client",
        "keepalive_count",
        "max_copy_bytes",
    ] {
        for n in [
            "0",
            "-1",
            "18446744073709551616",
            "99999999999999999999999999",
            "1.5",
            "\"many\"",
            "nan",
            "inf",
        ] {
            tomls.push(format!("{key} = {n}\n"));
        }
    }
    tomls.extend(
        [
            "listen = \"999.1.1.1:7722\"\n",
            "listen = \"127.0.0.1:99999\"\n",
            "listen = [[\"127.0.0.1:1\"]]\n",
            "listen = 7722\n",
            "[run_as]\nalice = \"root\"\n",
            "[run_as]\nalice = [[]]\n",
            "run_as = 5\n",
            "dir = 5\n",
            "shell = \"\"\n",
            "[[run_as]]\n",
            "\u{0}\u{1}\u{2}",
            "a = \"\n",
            "[",
            "max_sessions = 1\nmax_sessions = 2\n",
        ]
        .map(String::from),
    );
    tomls.push(format!("{}\n", "[a]".repeat(1000)));
    tomls.push(format!("x = {}1{}\n", "[".repeat(5000), "]".repeat(5000)));
    for toml in &tomls {
        let config = env.root.path().join("fuzz.toml");
        std::fs::write(&config, toml).unwrap();
        let out = Command::new(bin("rexec-agent"))
            .arg("--dir")
            .arg(&env.agent_dir)
            .arg("--config")
            .arg(&config)
            .args(["run", "--check"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = stderr_of(&out);
        assert_ne!(out.status.code(), Some(101), "{toml:?} panicked: {err}");
        if !out.status.success() {
            assert_eq!(err.lines().count(), 1, "{toml:?}: {err}");
            assert!(err.starts_with("rexec-agent: "), "{toml:?}: {err}");
        }
    }
    // The same durations as flags.
    for d in durations {
        for flag in [
            "--kill-grace",
            "--max-timeout",
            "--handshake-timeout",
            "--shutdown-grace",
            "--keepalive-interval",
        ] {
            let out = agent_cli(&env, &["run", "--check", flag, d]);
            let err = stderr_of(&out);
            assert_ne!(out.status.code(), Some(101), "{flag} {d:?}: {err}");
            if !out.status.success() {
                assert_eq!(err.lines().count(), 1, "{flag} {d:?}: {err}");
            }
        }
    }
    // A clients file of garbage: good lines kept, no panic.
    let garbage = format!(
        "{}\nSHA256:\nSHA256:{}\n\u{0}\u{ff}\n{} {}\n#\n{} ok\n",
        "x".repeat(100_000),
        "A".repeat(10_000),
        env.client_fingerprint,
        "n".repeat(100_000),
        env.client_fingerprint
    );
    std::fs::write(env.agent_dir.join("authorized_clients"), garbage).unwrap();
    let out = agent_cli(&env, &["clients"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout_of(&out).ends_with(" ok\n"), "{}", stdout_of(&out));
    for (fp, name) in [
        ("SHA256:", "x"),
        ("SHA256:AAAA", "x"),
        ("sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "x"),
        (env.client_fingerprint.as_str(), "line\nbreak"),
        (env.client_fingerprint.as_str(), "\u{7f}"),
    ] {
        let out = agent_cli(&env, &["authorize", fp, "--name", name]);
        let err = stderr_of(&out);
        assert_ne!(out.status.code(), Some(101), "{fp} {name:?}: {err}");
        assert!(!out.status.success(), "{fp} {name:?}");
        assert_eq!(err.lines().count(), 1, "{fp} {name:?}: {err}");
    }
}

#[test]
fn keys_are_created_private() {
    let env = Env::new();
    for key in [
        env.agent_dir.join("agent.key"),
        env.ctl_dir.join("client.key"),
    ] {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
}

#[test]
fn each_exec_is_one_audit_event_with_who_what_where_and_how_it_ended() {
    let (env, agent) = Env::with_agent();
    let mark = marker("audit");
    let out = env.exec(
        &agent,
        &["-C", "/tmp", &format!("echo {mark}; echo e >&2; exit 4")],
    );
    assert_eq!(out.status.code(), Some(4));
    let line = agent.wait_for_log(&mark).expect("audit line");
    for field in [
        ": exec ".to_owned(),
        "client=\"tester\"".to_owned(),
        format!(
            "user={:?}",
            stdout_of(&Command::new("id").arg("-un").output().unwrap()).trim()
        ),
        format!("fingerprint={}", env.client_fingerprint),
        format!("command=\"echo {mark}; echo e >&2; exit 4\""),
        "cwd=\"/tmp\"".to_owned(),
        "outcome=\"exit 4\"".to_owned(),
        format!("stdout_bytes={}", mark.len() + 1),
        "stderr_bytes=2".to_owned(),
        "duration_ms=".to_owned(),
        "started_at=20".to_owned(),
    ] {
        assert!(line.contains(&field), "{field:?} missing from {line}");
    }
    assert_eq!(
        agent.log().lines().filter(|l| l.contains(&mark)).count(),
        1,
        "one event per exec"
    );
}

/// A command line is the client's text: newlines and quotes in it are
/// escaped in the audit event, so it cannot pass for a line of its own.
#[test]
fn a_command_cannot_forge_an_audit_line() {
    let (env, agent) = Env::with_agent();
    let mark = marker("forged");
    let forged = format!(
        "true\n2026-01-01T00:00:00Z  INFO rexec::audit: exec client=\"admin\" command=\"reboot\" {mark}"
    );
    // The second line runs as a command of its own and fails; what matters
    // is how the agent logs the whole.
    env.exec(&agent, &[&forged]);
    let line = agent.wait_for_log(&mark).expect("audit line");
    assert!(
        line.contains(
            r#"command="true\n2026-01-01T00:00:00Z  INFO rexec::audit: exec client=\"admin\""#
        ),
        "{line}"
    );
    let log = agent.log();
    assert_eq!(
        log.lines().filter(|l| l.contains(&mark)).count(),
        1,
        "{log}"
    );
    assert!(!log.lines().any(|l| l.starts_with("2026-01-01")), "{log}");
}
