//! Managing who may connect, end to end: enrolment and revocation on a
//! running agent, the fingerprints admins paste, known hosts for scripts,
//! and private keys that others can read.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::util::checks::assert_refused;
use crate::util::*;

fn agent_cli(env: &Env, args: &[&str]) -> std::process::Output {
    agent_cli_in(&env.agent_dir, args)
}

/// `rexec-agent --dir DIR ARGS...`, run to completion.
fn agent_cli_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("rexec-agent"))
        .arg("--dir")
        .arg(dir)
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

/// A fingerprint of its own for each `i` (nobody holds its key).
fn nth_fingerprint(i: usize) -> String {
    format!("SHA256:{:A<43}", format!("u{i}"))
}

/// `rexec-agent --dir DIR ARGS...` under umask `umask`, started.
fn agent_cli_spawned(dir: &std::path::Path, umask: &str, args: &[&str]) -> std::process::Child {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("umask {umask}; exec \"$@\""))
        .arg("sh")
        .arg(bin("rexec-agent"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rexec-agent")
}

#[test]
fn parallel_authorize_and_revoke_lose_no_update() {
    let env = Env::new();
    let mut expected: Vec<String> = vec![format!("{} tester", env.client_fingerprint)];
    for round in 0..3 {
        env.authorize(&nth_fingerprint(1000), "mallory");
        let fresh: Vec<(String, String)> = (0..20)
            .map(|i| {
                (
                    nth_fingerprint(round * 20 + i),
                    format!("u{}", round * 20 + i),
                )
            })
            .collect();
        let mut running: Vec<_> = fresh
            .iter()
            .map(|(fp, name)| {
                agent_cli_spawned(&env.agent_dir, "022", &["authorize", fp, "--name", name])
            })
            .collect();
        running.push(agent_cli_spawned(
            &env.agent_dir,
            "022",
            &["revoke", "mallory"],
        ));
        for child in running {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", stderr_of(&out));
        }
        expected.extend(fresh.iter().map(|(fp, name)| format!("{fp} {name}")));
        let mut listed: Vec<String> = stdout_of(&agent_cli(&env, &["clients"]))
            .lines()
            .map(str::to_owned)
            .collect();
        listed.sort();
        expected.sort();
        assert_eq!(
            listed, expected,
            "round {round}: mallory revoked, every other kept"
        );
    }
}

#[test]
fn authorize_keeps_the_files_mode_and_owner_and_ignores_the_umask() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let file = env.agent_dir.join("authorized_clients");
    let mode = || std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
    let authorize = |i: usize| {
        let out = agent_cli_spawned(
            &env.agent_dir,
            "000",
            &["authorize", &nth_fingerprint(i), "--name", &format!("u{i}")],
        )
        .wait_with_output()
        .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
    };
    std::fs::remove_file(&file).unwrap();
    authorize(0);
    assert_eq!(mode(), 0o644, "a new file, under umask 000");
    // `init` makes the same file, whatever the umask.
    for umask in ["000", "077"] {
        let dir = env.root.path().join(format!("init-{umask}"));
        let out = agent_cli_spawned(&dir, umask, &["init"])
            .wait_with_output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        let made = std::fs::metadata(dir.join("authorized_clients")).unwrap();
        assert_eq!(
            made.permissions().mode() & 0o7777,
            0o644,
            "init under umask {umask}"
        );
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    authorize(1);
    assert_eq!(mode(), 0o600, "an existing file keeps its mode");
    if root_or_skip(
        "authorize_keeps_the_files_mode_and_owner_and_ignores_the_umask",
        "only root can give the file another group",
    ) {
        let group = 4242;
        std::os::unix::fs::chown(&file, Some(0), Some(group)).unwrap();
        authorize(2);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!((meta.uid(), meta.gid(), mode()), (0, group, 0o600));
    }
    let clients = stdout_of(&agent_cli(&env, &["clients"]));
    assert!(
        clients.starts_with(&format!(
            "{} u0\n{} u1\n",
            nth_fingerprint(0),
            nth_fingerprint(1)
        )),
        "{clients}"
    );
}

/// What `child` said, once it has exited; it is killed, and the test
/// fails, if it runs longer than `within` (an agent that started).
fn exited_within(
    mut child: std::process::Child,
    within: std::time::Duration,
    what: &[&str],
) -> std::process::Output {
    if !wait_until(within, || child.try_wait().unwrap().is_some()) {
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        panic!("{what:?} still runs: {}", stderr_of(&out));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_clients_file_others_can_write_keeps_the_agent_from_starting() {
    let env = Env::new();
    let file = env.agent_dir.join("authorized_clients");
    let refused = |path: &std::path::Path, fix: &str| {
        for args in [&["run", "--listen", "127.0.0.1:0"][..], &["run", "--check"]] {
            let out = exited_within(
                agent_cli_spawned(&env.agent_dir, "022", args),
                DEADLINE,
                args,
            );
            assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr_of(&out));
            let err = stderr_of(&out);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.starts_with(&format!("rexec-agent: error: {} ", path.display())),
                "{err}"
            );
            assert!(
                err.contains(&format!("(run: {fix} {})", path.display())),
                "{err}"
            );
        }
    };
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    refused(&file, "chmod go-w");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&env.agent_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused(&env.agent_dir, "chmod go-w");
    std::fs::set_permissions(&env.agent_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // `authorize` will not add to it either; `revoke` still takes away.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
    let (_, other) = env.stranger();
    let out = agent_cli(&env, &["authorize", &other, "--name", "other"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr_of(&out).lines().count(), 1, "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("writable by group"),
        "{}",
        stderr_of(&out)
    );
    assert!(!stdout_of(&agent_cli(&env, &["clients"])).contains(&other));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    if root_or_skip(
        "a_clients_file_others_can_write_keeps_the_agent_from_starting",
        "only root can give the file to another user",
    ) {
        // Group ownership is no matter while the group cannot write.
        std::os::unix::fs::chown(&file, Some(0), Some(4242)).unwrap();
        assert!(agent_cli(&env, &["run", "--check"]).status.success());
        std::os::unix::fs::chown(&file, Some(4242), None).unwrap();
        refused(&file, "chown root");
    }
}

#[test]
fn a_clients_file_made_writable_while_running_grants_nothing_new() {
    let (env, agent) = Env::with_agent();
    let (other_dir, other_fp) = env.stranger();
    std::fs::copy(
        env.ctl_dir.join("known_hosts"),
        other_dir.join("known_hosts"),
    )
    .unwrap();
    let file = env.agent_dir.join("authorized_clients");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    // What a local user could do now: add themselves.
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!("{other_fp} intruder\n"));
    std::fs::write(&file, &text).unwrap();
    for _ in 0..3 {
        let out = env.exec_as(&other_dir, &agent, "echo should-not-run");
        assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
        assert_eq!(stdout_of(&env.exec(&agent, &["echo still"])), "still\n");
    }
    let said = "writable by group and others (mode 0666)";
    let line = agent.wait_for_log(said).expect("said why");
    assert!(
        line.contains("keeping the 1 client authorized before"),
        "{line}"
    );
    assert_eq!(agent.log().matches(said).count(), 1, "one line per change");

    // Fixed: the file counts again, without a signal.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.exec_as(&other_dir, &agent, "echo in");
    assert_eq!(stdout_of(&out), "in\n", "{}", stderr_of(&out));
}

/// A certificate and key restored from two different backups: every ctl
/// command says so in one line, before any host is tried.
#[test]
fn a_client_key_from_another_identity_is_one_line_before_any_host() {
    let (env, agent) = Env::with_agent();
    let second = env.agent();
    let (stranger_dir, stranger_fp) = env.stranger();
    let key = env.ctl_dir.join("client.key");
    std::fs::remove_file(&key).unwrap();
    std::fs::copy(stranger_dir.join("client.key"), &key).unwrap();
    let expected = format!(
        "ctl: {} and client.key are not one identity (the certificate's fingerprint is {}, the private key's is {stranger_fp})",
        env.ctl_dir.join("client.crt").display(),
        env.client_fingerprint
    );
    let targets = format!("{},{}", agent.target(), second.target());
    for args in [&["exec", &targets, "echo should-not-run"][..], &["id"]] {
        let out = env.ctl_run(args);
        assert_eq!(out.status.code(), Some(255), "{args:?}");
        assert_eq!(stdout_of(&out), "", "{args:?}: no fingerprint nobody holds");
        assert_eq!(stderr_of(&out).trim_end(), expected, "{args:?}");
    }
    assert!(!agent.log().contains("should-not-run"));
}

#[test]
fn an_agent_key_from_another_identity_keeps_the_agent_from_starting() {
    let env = Env::new();
    let other = env.root.path().join("other");
    let other_fp = stdout_of(&agent_cli_in(&other, &["init"]))
        .trim()
        .to_owned();
    let key = env.agent_dir.join("agent.key");
    std::fs::remove_file(&key).unwrap();
    std::fs::copy(other.join("agent.key"), &key).unwrap();
    let expected = format!(
        "rexec-agent: error: {} and agent.key are not one identity (the certificate's fingerprint is {}, the private key's is {other_fp})",
        env.agent_dir.join("agent.crt").display(),
        env.agent_fingerprint
    );
    for args in [
        &["run", "--listen", "127.0.0.1:0"][..],
        &["run", "--check"],
        &["id"],
    ] {
        let out = agent_cli(&env, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stdout_of(&out), "", "{args:?}");
        assert_eq!(stderr_of(&out).trim_end(), expected, "{args:?}");
    }
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
fn authorize_without_a_name_works_for_every_key() {
    let env = Env::new();
    let fingerprints: Vec<String> = (0..3).map(nth_fingerprint).collect();
    for fp in &fingerprints {
        let out = agent_cli(&env, &["authorize", fp]);
        assert!(out.status.success(), "{fp}: {}", stderr_of(&out));
        let name = &fp[.."SHA256:".len() + 8];
        assert_eq!(
            stderr_of(&out),
            format!(
                "authorized {fp} as {name:?} in {}\n",
                env.agent_dir.join("authorized_clients").display()
            )
        );
    }
    let clients = stdout_of(&agent_cli(&env, &["clients"]));
    for fp in &fingerprints {
        assert!(
            clients.contains(&format!("{fp} {}\n", &fp[..15])),
            "{clients}"
        );
    }
    // The name it got is one to revoke it by.
    let out = agent_cli(&env, &["revoke", &fingerprints[1][..15]]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let clients = stdout_of(&agent_cli(&env, &["clients"]));
    assert!(!clients.contains(&fingerprints[1]), "{clients}");
    assert_eq!(clients.lines().count(), 3, "{clients}");
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
    // A clients file of garbage: the good line kept, no panic (the key
    // listed again, under a huge name, is a line ignored).
    let garbage = format!(
        "{}\nSHA256:\nSHA256:{}\n\u{0}\u{ff}\n{} ok\n#\n{} {}\n",
        "x".repeat(100_000),
        "A".repeat(10_000),
        env.client_fingerprint,
        env.client_fingerprint,
        "n".repeat(100_000),
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

/// A key without its certificate is not a missing identity: the error
/// names the certificate, and does not send the user to `ctl keygen`,
/// which would refuse to overwrite the key.
#[test]
fn a_missing_client_certificate_is_named_not_taken_for_no_identity() {
    let env = Env::new();
    let cert = env.ctl_dir.join("client.crt");
    std::fs::remove_file(&cert).unwrap();
    let out = env.ctl_run(&["id"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        stderr_of(&out),
        format!("ctl: {}: no such file or directory\n", cert.display())
    );
    let keygen = env.ctl_run(&["keygen"]);
    assert_eq!(keygen.status.code(), Some(255), "the key is still there");
}

/// A hand-edited clients file: a Latin-1 comment locks nobody out, and a
/// second key given a listed name gets neither the name nor in; both
/// `rexec-agent clients` and the agent's log say which line was ignored.
#[test]
fn a_hand_edited_clients_file_keeps_one_key_per_name_and_any_comment() {
    let env = Env::new();
    let other = "SHA256:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA";
    let file = env.agent_dir.join("authorized_clients");
    let text = [
        b"# \xe9quipe du labo\n".as_slice(),
        format!("{} tester\n{other} tester\n", env.client_fingerprint).as_bytes(),
    ]
    .concat();
    std::fs::write(&file, text).unwrap();
    let clients = agent_cli(&env, &["clients"]);
    assert_eq!(
        stdout_of(&clients),
        format!("{} tester\n", env.client_fingerprint)
    );
    assert_eq!(
        stderr_of(&clients),
        format!(
            "{}:3: the name \"tester\" belongs to the key on line 2; line ignored\n",
            file.display()
        )
    );
    let agent = env.agent();
    let out = env.exec(&agent, &["echo in"]);
    assert_eq!(stdout_of(&out), "in\n", "{}", stderr_of(&out));
    agent.expect_log("ignoring a line of the authorized clients file");
}

/// A handshake timeout of nothing would refuse every client: `run` and
/// `run --check` refuse it in one line instead of serving nobody.
#[test]
fn a_zero_handshake_timeout_is_refused_at_start() {
    let env = Env::new();
    let out = agent_cli(&env, &["run", "--check", "--handshake-timeout", "0s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout_of(&out));
    assert_eq!(
        stderr_of(&out),
        "rexec-agent: error: handshake_timeout is 0s, within which no client can connect: give it a length (default 5s)\n"
    );
    let config = env.root.path().join("empty-dir.toml");
    std::fs::write(&config, "dir = \"\"\n").unwrap();
    let out = Command::new(bin("rexec-agent"))
        .arg("--config")
        .arg(&config)
        .args(["run", "--check"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout_of(&out));
    assert!(
        stderr_of(&out).starts_with("rexec-agent: error: the agent's directory is empty"),
        "{}",
        stderr_of(&out)
    );
}
