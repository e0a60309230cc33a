//! `ctl exec`, `ctl hosts` and `ctl ping` on many targets: twenty real
//! agents on 127.0.0.2 … 127.0.0.21, every output mode, hosts that are
//! down, hung, frozen, killed or slow, the progress line on a terminal
//! (under tmux), and node set expansion and folding.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::checks::{assert_gone_soon, env_with_fleet, take_down_last};
use crate::util::*;

const FLEET: usize = 20;

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

/// Asserts that ctl's stderr is its summary line and nothing else.
#[track_caller]
fn assert_summary(out: &std::process::Output, summary: &str) {
    assert_eq!(lines(&stderr_of(out)), [summary]);
}

#[test]
fn hosts_expands_ranges_groups_and_exclusions() {
    let env = Env::new();
    let inventory = env.root.path().join("inventory.toml");
    std::fs::write(
        &inventory,
        r#"
[groups]
rack = "rack[1-2]-n[1,3]"
lab = ["node[01-04]", "!node03", "@rack"]
loop-a = "@loop-b"
loop-b = "@loop-a"

[hosts."node[01-02]"]
port = 7000
user = "admin"
"#,
    )
    .unwrap();
    let inv = inventory.to_str().unwrap();
    let out = env.ctl_run(&[
        "--inventory",
        inv,
        "hosts",
        "@lab,!rack2-n3,web:9",
        "-x",
        "node04",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        lines(&stdout_of(&out)),
        [
            "admin@node01:7000",
            "admin@node02:7000",
            "rack1-n1",
            "rack1-n3",
            "rack2-n1",
            "web:9"
        ]
    );

    // Zero padding survives, and IPv4 ranges and literal addresses mix.
    let out = env.ctl_run(&["hosts", "n[08-10],127.0.0.[2-3],127.0.0.1:7723,[::1]:7724"]);
    assert_eq!(
        lines(&stdout_of(&out)),
        [
            "n08",
            "n09",
            "n10",
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.1:7723",
            "[::1]:7724"
        ]
    );

    for (bad, says) in [
        ("node[1-x]", "unexpected 'x'"),
        ("a,,b", "empty name"),
        ("node[3-1]", "runs backwards"),
    ] {
        let out = env.ctl_run(&["hosts", bad]);
        assert_eq!(out.status.code(), Some(255), "{bad}");
        assert!(stderr_of(&out).contains(says), "{bad}: {}", stderr_of(&out));
        let said = stderr_of(&out);
        assert!(
            said.contains(" at character ") && said.contains(&format!("of {bad:?}")),
            "points at the character: {said}"
        );
        assert_eq!(said.lines().count(), 1, "one line: {said}");
        assert_eq!(stdout_of(&out), "");
    }
    let out = env.ctl_run(&["--inventory", inv, "hosts", "@loop-a"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr_of(&out).contains("group cycle: @loop-a -> @loop-b -> @loop-a"));
    let out = env.ctl_run(&["--inventory", inv, "hosts", "@nope"]);
    assert_failed_saying(&out, 255, "unknown group @nope");
}

#[test]
fn hosts_fold_and_expand_round_trip() {
    let env = Env::new();
    for list in [
        "node[01-20]",
        "rack[1-3]-n[1,3,5-7]",
        "node[1-9],node[10-12],web[001-003,010]",
        "127.0.0.[2-21]",
    ] {
        let expanded = env.ctl_run(&["hosts", list]);
        let folded = env.ctl_run(&["hosts", "--fold", list]);
        let folded = stdout_of(&folded).trim().to_owned();
        let again = env.ctl_run(&["hosts", &folded]);
        let set = |out: &std::process::Output| -> BTreeSet<String> {
            stdout_of(out).lines().map(str::to_owned).collect()
        };
        assert_eq!(set(&again), set(&expanded), "{list} folded to {folded}");
        let refolded = env.ctl_run(&["hosts", "--fold", &folded]);
        assert_eq!(stdout_of(&refolded).trim(), folded, "folding is stable");
    }
    let folded = env.ctl_run(&[
        "hosts",
        "--fold",
        "rack3-n7,rack[1-3]-n[1,3,5-6],rack[1-2]-n7",
    ]);
    assert_eq!(stdout_of(&folded), "rack[1-3]-n[1,3,5-7]\n");
}

#[test]
fn twenty_agents_give_prefixed_lines_that_never_mix() {
    let (env, fleet) = env_with_fleet(FLEET);
    // A 300 kB line arrives in many chunks, interleaved with other hosts'.
    let command = format!(
        "{FLEET_HOST} echo \"first $H\"; head -c 300000 /dev/zero | tr '\\0' x; echo; \
         echo \"err $H\" >&2; printf 'no newline'"
    );
    let out = env.ctl_run(&["exec", "127.0.0.[2-21]", &command]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let long = "x".repeat(300_000);
    let mut by_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in stdout_of(&out).lines() {
        let (host, rest) = line.split_once(": ").expect("prefixed line");
        by_host
            .entry(host.to_owned())
            .or_default()
            .push(rest.to_owned());
    }
    assert_eq!(by_host.len(), FLEET);
    for host in &fleet.hosts {
        assert_eq!(
            by_host[host],
            [
                format!("first {host}"),
                long.clone(),
                "no newline".to_owned()
            ],
            "{host}'s lines, whole and in order"
        );
    }
    let mut errors: Vec<String> = lines(&stderr_of(&out));
    errors.sort();
    let mut expected: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| format!("{h}: err {h}"))
        .collect();
    expected.sort();
    assert_eq!(errors, expected, "stderr carries stderr, prefixed");
}

#[test]
fn lines_over_one_mib_are_cut_into_prefixed_pieces() {
    let (env, _fleet) = env_with_fleet(2);
    // 2.5 MiB without a newline, then a short line.
    let out = env.ctl_run(&[
        "exec",
        "@lab",
        "head -c 2621440 /dev/zero | tr '\\0' y; echo; echo end",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let mut by_host: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for line in stdout_of(&out).lines() {
        let (host, rest) = line.split_once(": ").expect("prefixed line");
        let size = if rest == "end" { 0 } else { rest.len() };
        assert!(
            rest == "end" || rest.bytes().all(|b| b == b'y'),
            "{host}: mixed line"
        );
        by_host.entry(host.to_owned()).or_default().push(size);
    }
    for host in ["127.0.0.2", "127.0.0.3"] {
        assert_eq!(by_host[host], [1 << 20, 1 << 20, 1 << 19, 0], "{host}");
    }
}

#[test]
fn a_single_literal_target_keeps_raw_output() {
    let (env, fleet) = env_with_fleet(2);
    let agent = fleet.agent("127.0.0.2");
    let out = env.ctl_run(&["exec", &agent.target(), "printf 'raw'; exit 3"]);
    assert_eq!(stdout_of(&out), "raw");
    assert_eq!(out.status.code(), Some(3));
    // The inventory supplies the port of a bare host name.
    let out = env.ctl_run(&["exec", "127.0.0.2", "printf 'raw'"]);
    assert_eq!(stdout_of(&out), "raw", "{}", stderr_of(&out));
    // A one-host range is a list: prefixed.
    let out = env.ctl_run(&["exec", "127.0.0.[2]", "printf 'raw'"]);
    assert_eq!(stdout_of(&out), "127.0.0.2: raw\n");
}

#[test]
fn gather_prints_identical_outputs_once_under_a_node_set() {
    let (env, _fleet) = env_with_fleet(FLEET);
    let command = format!(
        "{FLEET_HOST} case $H in 127.0.0.[2-9]) echo low; echo same;; \
         127.0.0.1[0-5]) echo mid; echo same;; 127.0.0.21) ;; *) printf high;; esac"
    );
    let out = env.ctl_run(&["exec", "-b", "@lab", &command]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let rule = "-".repeat(15);
    let expected = format!(
        "{rule}\n127.0.0.[2-9] (8)\n{rule}\nlow\nsame\n\
         {rule}\n127.0.0.[10-15] (6)\n{rule}\nmid\nsame\n\
         {rule}\n127.0.0.[16-20] (5)\n{rule}\nhigh\n"
    );
    // The most hosts first, then in node order.
    assert_eq!(stdout_of(&out), expected);
    // Whatever order the targets come in: two one-host blocks after the
    // block of three, in node order.
    let command = format!(
        "{FLEET_HOST} case $H in 127.0.0.2) echo two;; 127.0.0.10) echo ten;; *) echo rest;; esac"
    );
    let targets = "127.0.0.10,127.0.0.[3-5],127.0.0.2";
    let out = env.ctl_run(&["exec", "-b", targets, &command]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out),
        format!(
            "{rule}\n127.0.0.[3-5] (3)\n{rule}\nrest\n\
             {rule}\n127.0.0.2 (1)\n{rule}\ntwo\n\
             {rule}\n127.0.0.10 (1)\n{rule}\nten\n"
        )
    );
}

#[test]
fn json_keeps_remote_exit_255_apart_from_an_unreachable_host() {
    let (env, mut fleet) = env_with_fleet(FLEET);
    // 127.0.0.21 goes down: its port refuses connections.
    take_down_last(&mut fleet);
    let command = format!(
        "{FLEET_HOST} case $H in 127.0.0.5) echo bye; exit 255;; \
         127.0.0.6) printf '\\377\\000'; exit 0;; *) echo \"hi $H\"; echo e >&2;; esac"
    );
    let out = env.ctl_run(&["exec", "--json", "@lab", &command]);
    assert_eq!(out.status.code(), Some(255));
    let records = json_lines(&out);
    assert_eq!(records.len(), FLEET, "one line per host");
    let by_host: BTreeMap<String, &Value> = records
        .iter()
        .map(|r| (r["host"].as_str().unwrap().to_owned(), r))
        .collect();
    let remote = by_host["127.0.0.5"];
    assert_eq!(remote["status"], "exited");
    assert_eq!(remote["exit_code"], 255);
    assert_eq!(remote["error"], Value::Null);
    assert_eq!(remote["stdout"], "bye\n");
    let unreachable = by_host["127.0.0.21"];
    assert_eq!(unreachable["status"], "error");
    assert_eq!(unreachable["exit_code"], Value::Null);
    assert_eq!(unreachable["error"]["kind"], "connect");
    assert!(
        unreachable["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused")
    );
    let binary = by_host["127.0.0.6"];
    assert_eq!(binary["stdout"], "/wA=");
    assert_eq!(binary["stdout_base64"], true);
    let plain = by_host["127.0.0.2"];
    assert_eq!(plain["stdout"], "hi 127.0.0.2\n");
    assert_eq!(plain["stdout_base64"], false);
    assert_eq!(plain["stderr"], "e\n");
    assert_eq!(plain["exit_code"], 0);
    assert!(plain["target"].as_str().unwrap().starts_with("127.0.0.2:"));
    assert!(plain["duration_ms"].as_f64().unwrap() > 0.0);
    assert_summary(
        &out,
        "ctl: 2 of 20 hosts failed: connect: 127.0.0.21; exit 255: 127.0.0.5",
    );
}

#[test]
fn down_and_hung_hosts_never_hold_up_the_others() {
    let (env, mut fleet) = env_with_fleet(FLEET);
    // 127.0.0.20 is hung: its agent is stopped, so TCP connects but TLS
    // never answers. 127.0.0.21 is down. 127.0.0.19's command outlives
    // --timeout.
    fleet.agent("127.0.0.20").signal("STOP");
    take_down_last(&mut fleet);
    let sleep = unique_sleep(60);
    let command = format!(
        "{FLEET_HOST} case $H in 127.0.0.19) echo before; exec sleep {sleep};; *) echo ok;; esac"
    );
    let started = Instant::now();
    let out = env.ctl_run(&[
        "exec",
        "--json",
        "--timeout",
        "3s",
        "--connect-timeout",
        "2s",
        "@lab",
        &command,
    ]);
    let took = started.elapsed();
    fleet.agent("127.0.0.20").signal("CONT");
    // The slowest host ends when the agent reports its timeout (3 s plus
    // the agent's 500 ms kill grace). ctl's own deadline on a host that
    // stops answering is 3 s + 2 s + 5 s = 10 s, so a run that waited for
    // it, or for anything longer, fails this bound.
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(3 + 2 + 3),
        "the run ends on the hosts' own timeouts: {took:?}"
    );
    assert_eq!(out.status.code(), Some(255));
    let records = json_lines(&out);
    assert_eq!(records.len(), FLEET);
    let host = |r: &Value| r["host"].as_str().unwrap().to_owned();
    // Completion order: every healthy host's line comes before the slow
    // ones', which end on their own timeouts.
    let position = |name: &str| records.iter().position(|r| host(r) == name).unwrap();
    let healthy: Vec<&Value> = records
        .iter()
        .filter(|r| !["127.0.0.19", "127.0.0.20", "127.0.0.21"].contains(&host(r).as_str()))
        .collect();
    assert_eq!(healthy.len(), FLEET - 3);
    for record in &healthy {
        assert_eq!(record["exit_code"], 0, "{record}");
        assert_eq!(record["stdout"], "ok\n");
        let at = position(&host(record));
        assert!(
            at < position("127.0.0.19") && at < position("127.0.0.20"),
            "{record}"
        );
    }
    let slow = &records[position("127.0.0.19")];
    assert_eq!(slow["status"], "timed-out");
    assert_eq!(
        slow["stdout"], "before\n",
        "output before the timeout is kept"
    );
    let hung = &records[position("127.0.0.20")];
    assert_eq!(hung["error"]["kind"], "connect-timeout");
    assert_eq!(records[position("127.0.0.21")]["error"]["kind"], "connect");
    assert_eq!(
        lines(&stderr_of(&out)),
        [
            "ctl: 3 of 20 hosts failed: connect: 127.0.0.21; connect-timeout: 127.0.0.20; timed out: 127.0.0.19"
        ]
    );
    assert_gone_soon(&sleep, "the timed out command's group was killed");

    // When the only failure is a timeout, the run exits 124, as a single
    // host would (README: the largest per-host code, 124 for a timeout).
    let sleep = unique_sleep(60);
    let command = format!(
        "{FLEET_HOST} case $H in 127.0.0.19) echo before; exec sleep {sleep};; *) echo ok;; esac"
    );
    let out = env.ctl_run(&["exec", "--timeout", "2s", "@lab,!127.0.0.[20-21]", &command]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr_of(&out));
    assert_eq!(
        lines(&stderr_of(&out)),
        [
            "ctl: 127.0.0.19: command timed out; its process group was killed",
            "ctl: 1 of 18 hosts failed: timed out: 127.0.0.19"
        ]
    );
    let mut printed = lines(&stdout_of(&out));
    printed.sort();
    assert_eq!(printed.len(), FLEET - 2);
    assert!(printed.contains(&"127.0.0.19: before".to_owned()));
    assert_gone_soon(&sleep, "the timed out command's group was killed");
}

#[test]
fn an_agent_frozen_after_its_command_started_is_an_error_at_the_deadline_not_a_timeout() {
    let (env, fleet) = env_with_fleet(4);
    let started = env.root.path().join("started");
    let sleep = unique_sleep(60);
    let command = format!(
        "{FLEET_HOST} case $H in 127.0.0.5) touch {}; exec sleep {sleep};; *) echo ok;; esac",
        started.display()
    );
    // ctl's deadline on each host: --timeout + --connect-timeout + 5 s.
    let deadline = Duration::from_secs(3 + 1 + 5);
    let begun = Instant::now();
    let ctl = env
        .ctl()
        .args([
            "exec",
            "--json",
            "--timeout",
            "3s",
            "--connect-timeout",
            "1s",
            "@lab",
            &command,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The agent stops answering once its command runs (before the command's
    // own 3 s timeout, which the frozen agent can no longer enforce).
    assert!(wait_until(DEADLINE, || started.exists()), "command started");
    let frozen = fleet.agent("127.0.0.5");
    frozen.signal("STOP");
    let out = ctl.wait_with_output().unwrap();
    let took = begun.elapsed();
    frozen.signal("CONT");

    assert!(
        took >= deadline && took < deadline + Duration::from_secs(4),
        "ctl gives up on the frozen host at its deadline: {took:?}"
    );
    // Nobody killed the command: the agent stopped answering, which is an
    // error of ctl's (255), not the command's timeout (124).
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    let records = json_lines(&out);
    let hosts: Vec<&str> = records
        .iter()
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts.len(), 4);
    assert_eq!(hosts[3], "127.0.0.5", "the others finish first: {hosts:?}");
    for record in &records[..3] {
        assert_eq!(record["status"], "exited", "{record}");
        assert_eq!(record["exit_code"], 0);
        assert_eq!(record["stdout"], "ok\n");
        assert!(record["duration_ms"].as_f64().unwrap() < 3000.0, "{record}");
    }
    let gave_up = &records[3];
    assert_eq!(gave_up["status"], "error");
    assert_eq!(gave_up["exit_code"], Value::Null);
    assert_eq!(gave_up["error"]["kind"], "no-answer");
    assert_eq!(
        gave_up["error"]["message"],
        "no answer from the agent within 9s; ctl gave up on this host (the command may still be running there)"
    );
    assert!(gave_up["duration_ms"].as_f64().unwrap() >= 9000.0);
    assert_summary(&out, "ctl: 1 of 4 hosts failed: no-answer: 127.0.0.5");
    // Running again, the agent finds its client gone and kills the command.
    assert_gone_soon(
        &sleep,
        "the frozen host's command was cleaned up after SIGCONT",
    );
}

#[test]
fn json_reports_a_host_killed_by_a_signal() {
    let (env, _fleet) = env_with_fleet(3);
    let command = format!(
        "{FLEET_HOST} case $H in 127.0.0.3) echo partial; echo why >&2; kill -9 $$;; *) echo ok;; esac"
    );
    let out = env.ctl_run(&["exec", "--json", "@lab", &command]);
    assert_eq!(out.status.code(), Some(128 + 9), "{}", stderr_of(&out));
    let records = json_lines(&out);
    assert_eq!(records.len(), 3);
    let killed = records
        .iter()
        .find(|r| r["host"] == "127.0.0.3")
        .expect("a record for the killed host");
    assert_eq!(killed["status"], "killed");
    assert_eq!(killed["signal"], 9);
    assert_eq!(killed["exit_code"], Value::Null);
    assert_eq!(killed["error"], Value::Null, "the command failed, not ctl");
    assert_eq!(killed["stdout"], "partial\n", "output before the signal");
    assert_eq!(killed["stderr"], "why\n");
    for other in records.iter().filter(|r| r["host"] != "127.0.0.3") {
        assert_eq!(other["status"], "exited", "{other}");
        assert_eq!(other["signal"], Value::Null);
    }
    assert_summary(&out, "ctl: 1 of 3 hosts failed: signal 9: 127.0.0.3");
}

#[test]
fn default_mode_summary_names_failures_and_exit_is_the_largest_code() {
    let (env, _fleet) = env_with_fleet(FLEET);
    let command =
        format!("{FLEET_HOST} case $H in 127.0.0.[3-4]) exit 3;; 127.0.0.9) exit 7;; esac");
    let out = env.ctl_run(&["exec", "@lab", &command]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(stdout_of(&out), "");
    assert_summary(
        &out,
        "ctl: 3 of 20 hosts failed: exit 3: 127.0.0.[3-4]; exit 7: 127.0.0.9",
    );
    let out = env.ctl_run(&["exec", "@lab,!127.0.0.9", "-x", "127.0.0.3", &command]);
    assert_eq!(out.status.code(), Some(3));
    assert_summary(&out, "ctl: 1 of 18 hosts failed: exit 3: 127.0.0.4");
}

#[test]
fn fanout_bounds_how_many_hosts_run_at_once() {
    let (env, _fleet) = env_with_fleet(FLEET);
    let log = env.root.path().join("events");
    std::fs::write(&log, "").unwrap();
    let command = format!(
        "{FLEET_HOST} echo \"start $H\" >> {log}; sleep 1; echo \"end $H\" >> {log}",
        log = log.display()
    );
    let out = env.ctl_run(&["exec", "--fanout", "4", "@lab", &command]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let events = std::fs::read_to_string(&log).unwrap();
    let (mut running, mut most, mut ended) = (0, 0, 0);
    for event in events.lines() {
        if event.starts_with("start") {
            running += 1;
            most = most.max(running);
        } else {
            running -= 1;
            ended += 1;
        }
    }
    assert_eq!(ended, FLEET);
    // Four at once, never more: the bound holds and the slots are used.
    assert_eq!(most, 4, "4 at once, saw {most}:\n{events}");
}

#[test]
fn out_dir_holds_each_hosts_output_and_a_summary() {
    let (env, mut fleet) = env_with_fleet(FLEET);
    take_down_last(&mut fleet);
    let dir = env.root.path().join("out");
    let command = format!("{FLEET_HOST} echo \"out $H\"; echo \"err $H\" >&2; [ $H != 127.0.0.4 ]");
    let out = env.ctl_run(&["exec", "-o", dir.to_str().unwrap(), "@lab", &command]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(stdout_of(&out), "", "everything went to files");
    for host in &fleet.hosts[..FLEET - 1] {
        let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{host}.{ext}"))).unwrap();
        assert_eq!(read("out"), format!("out {host}\n"));
        assert_eq!(read("err"), format!("err {host}\n"));
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("127.0.0.21.out")).unwrap(),
        ""
    );
    let summary = std::fs::read_to_string(dir.join("summary.jsonl")).unwrap();
    let records: Vec<Value> = summary
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), FLEET);
    let hosts: Vec<&str> = records
        .iter()
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts,
        fleet.hosts.iter().map(String::as_str).collect::<Vec<_>>(),
        "in target order"
    );
    assert_eq!(records[2]["exit_code"], 1);
    assert_eq!(records[FLEET - 1]["error"]["kind"], "connect");
    assert!(records[0].get("stdout").is_none(), "output is in the files");
    assert!(
        stderr_of(&out)
            .ends_with("ctl: 2 of 20 hosts failed: connect: 127.0.0.21; exit 1: 127.0.0.4\n"),
        "{}",
        stderr_of(&out)
    );
}

/// A user name with a '/' in it, from `-u`, from `user@host` or from the
/// inventory, used to reach `-o DIR`'s file names: the output of
/// `-u ../../esc -o DIR 'root@h,h'` went to `DIR/../../esc@h:7722.out`.
#[test]
fn a_user_name_that_would_leave_the_out_dir_is_refused() {
    let (env, fleet) = env_with_fleet(1);
    let work = env.root.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let ctl = |args: &[&str], inventory: Option<&str>| {
        let mut cmd = env.ctl();
        cmd.current_dir(&work).args(args);
        if let Some(text) = inventory {
            let file = env.root.path().join("escape.toml");
            std::fs::write(&file, text).expect("inventory");
            cmd.env("REXEC_INVENTORY", file);
        }
        cmd.output().expect("run ctl")
    };
    let port = fleet.agents[0].addr.port();
    let inventory = format!("[hosts.\"127.0.0.2\"]\nport = {port}\nuser = \"../../esc\"\n");
    for (args, inventory, says) in [
        (
            vec![
                "exec",
                "-u",
                "../../esc",
                "-o",
                "od",
                "root@127.0.0.2,127.0.0.2",
                "true",
            ],
            None,
            "a user name cannot hold '/' or a control character",
        ),
        (
            vec!["exec", "-o", "od", "../../esc@127.0.0.2,127.0.0.2", "true"],
            None,
            "'/' cannot appear in a target",
        ),
        (
            vec!["exec", "-o", "od", "..@127.0.0.2,127.0.0.2", "true"],
            None,
            "a user name cannot be '.' or '..'",
        ),
        (
            vec!["exec", "-o", "od", "root@127.0.0.2,127.0.0.2", "true"],
            Some(inventory.as_str()),
            "\"../../esc\" is not a user name",
        ),
    ] {
        let out = ctl(&args, inventory);
        assert_eq!(
            out.status.code(),
            Some(255),
            "{args:?}: {}",
            stderr_of(&out)
        );
        let stderr = stderr_of(&out);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(!work.join("od").exists(), "{args:?} made the out dir");
    }
    let escaped: Vec<_> = std::fs::read_dir(env.root.path().parent().expect("parent"))
        .expect("tmp")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("esc@"))
        .collect();
    assert!(escaped.is_empty(), "{escaped:?}");
}

#[test]
fn ping_reports_latency_and_agent_version() {
    let (env, mut fleet) = env_with_fleet(FLEET);
    let out = env.ctl_run(&["ping", "@lab"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let answered: BTreeSet<String> = stdout_of(&out)
        .lines()
        .map(|line| {
            let (host, rest) = line.split_once(": ").unwrap();
            assert!(
                rest.contains(" ms (connect ")
                    && rest.ends_with(&format!("rexec-agent {}", env!("CARGO_PKG_VERSION"))),
                "{line}"
            );
            host.to_owned()
        })
        .collect();
    assert_eq!(answered, fleet.hosts.iter().cloned().collect());

    take_down_last(&mut fleet);
    let out = env.ctl_run(&["ping", "--json", "127.0.0.[20-21]"]);
    assert_eq!(out.status.code(), Some(255));
    let records = json_lines(&out);
    let by_host: BTreeMap<&str, &Value> = records
        .iter()
        .map(|r| (r["host"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by_host["127.0.0.20"]["status"], "answered");
    assert!(by_host["127.0.0.20"]["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(by_host["127.0.0.21"]["error"]["kind"], "connect");
    assert_summary(&out, "ctl: 1 of 2 hosts failed: connect: 127.0.0.21");
}

#[test]
fn progress_line_shows_on_a_terminal_and_never_on_a_pipe() {
    require_tool!("tmux");
    let (env, _fleet) = env_with_fleet(4);
    // 127.0.0.5 is slow: it waits (20 s at most) for the test to release it.
    let release = env.root.path().join("release");
    let command = format!(
        "{FLEET_HOST} case $H in 127.0.0.3) exit 3;; \
         127.0.0.5) i=0; while [ ! -e {} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
         echo slow;; *) echo fast;; esac",
        release.display()
    );
    let terminal = Terminal::start(
        &env,
        (200, 50),
        &format!("{} exec @lab '{command}'", bin("ctl").display()),
        "exec sleep 600",
    );
    // While the slow host runs, the progress line counts the others.
    let screen = terminal.wait_for("3/4 done, 1 running, 1 failed");
    let progress = screen
        .lines()
        .find(|l| l.contains(" done, "))
        .unwrap_or_default();
    assert!(
        progress.contains(" [") && progress.ends_with("] 3/4 done, 1 running, 1 failed"),
        "{progress:?}"
    );
    // Lines that arrived meanwhile were printed whole above it.
    for line in ["127.0.0.2: fast", "127.0.0.4: fast"] {
        assert!(screen.lines().any(|l| l == line), "{line}:\n{screen}");
    }
    std::fs::write(&release, "").unwrap();
    let screen = terminal.wait_for("rc=3");
    // At the end the progress line is gone; what stays is the output and
    // the summary.
    let mut shown: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        shown.split_off(2),
        [
            "127.0.0.5: slow",
            "ctl: 1 of 4 hosts failed: exit 3: 127.0.0.3",
            "rc=3"
        ],
        "{screen}"
    );
    shown.sort_unstable();
    assert_eq!(shown, ["127.0.0.2: fast", "127.0.0.4: fast"], "{screen}");

    // On a pipe the same run writes nothing but the summary to stderr,
    // though the slow host keeps it waiting for several of the progress
    // line's 200 ms ticks.
    let command = format!(
        "{FLEET_HOST} case $H in 127.0.0.3) exit 3;; 127.0.0.5) sleep 1; echo slow;; *) echo fast;; esac"
    );
    let out = env.ctl_run(&["exec", "@lab", &command]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        stderr_of(&out),
        "ctl: 1 of 4 hosts failed: exit 3: 127.0.0.3\n"
    );
    let mut printed = lines(&stdout_of(&out));
    printed.sort();
    assert_eq!(
        printed,
        ["127.0.0.2: fast", "127.0.0.4: fast", "127.0.0.5: slow"]
    );
}

/// Ctrl-C, SIGTERM or SIGHUP to ctl end a run on several hosts: every
/// connection is dropped, each agent kills its command's group, and ctl
/// exits as a shell reports that signal.
#[test]
fn a_signal_to_ctl_ends_the_run_and_every_remote_command() {
    let (env, _fleet) = env_with_fleet(3);
    for (signal, code) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        let sleep = unique_sleep(600);
        let pattern = format!("sleep {sleep}");
        // ctl's own command line carries the pattern too; count the agents'
        // children: the shells and their sleeps.
        let remote = || {
            processes_with(&pattern)
                .into_iter()
                .filter(|(_, cmd)| !cmd.contains(" exec "))
                .count()
        };

        let mut ctl = env
            .ctl()
            .args([
                "exec",
                "@lab",
                &format!("{FLEET_HOST} {pattern} & {pattern}; wait"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            wait_until(DEADLINE, || sleeps_running(&pattern) == 6),
            "two sleeps on each of three hosts"
        );
        send_signal(ctl.id(), signal);
        assert_eq!(ctl.wait().unwrap().code(), Some(code), "SIG{signal}");
        assert!(
            wait_until(Duration::from_secs(5), || remote() == 0),
            "SIG{signal}: {:?}",
            processes_with(&pattern)
        );
    }
}

/// `nohup ctl exec @lab …`: a run started with SIGHUP ignored goes on
/// through a hang-up, on every host.
#[test]
fn a_run_started_with_sighup_ignored_rides_out_a_hangup() {
    use std::io::BufRead;
    let (env, _fleet) = env_with_fleet(2);
    let mut ctl = env
        .ctl_ignoring("HUP")
        .args(["exec", "@lab", "echo ready; sleep 1; echo done"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(ctl.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        assert!(line.ends_with(": ready\n"), "{line:?}");
    }
    send_signal(ctl.id(), "HUP");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let mut done: Vec<&str> = rest.lines().collect();
    done.sort_unstable();
    assert_eq!(done, ["127.0.0.2: done", "127.0.0.3: done"]);
    assert_eq!(ctl.wait().unwrap().code(), Some(0));
}

/// The one line ctl printed on stderr, after checking it is the only one.
fn only_line(out: &std::process::Output, what: &str) -> String {
    let err = stderr_of(out);
    let lines = lines(&err);
    assert_eq!(lines.len(), 1, "{what}: {err}");
    lines[0].clone()
}

#[test]
fn output_to_a_full_device_fails_the_run_in_every_mode() {
    let (env, _fleet) = env_with_fleet(2);
    for args in [
        &["exec", "@lab", "seq 100000"][..],
        &["exec", "--json", "@lab", "seq 100000"],
        &["exec", "-b", "@lab", "seq 100000"],
        &["ping", "@lab"],
    ] {
        let out = env
            .ctl()
            .args(args)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(255),
            "{args:?}: {}",
            stderr_of(&out)
        );
        assert_eq!(
            only_line(&out, &format!("{args:?}")),
            "ctl: cannot write to stdout: no space left on the device",
            "{args:?}"
        );
    }
}

#[test]
fn stderr_that_cannot_be_written_fails_a_run_of_several_targets() {
    let (env, _fleet) = env_with_fleet(2);
    let out = env
        .ctl()
        .args(["exec", "@lab", "echo out; echo err >&2"])
        .stderr(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(255),
        "the commands' stderr was lost"
    );
}

#[test]
fn out_dir_on_a_full_file_system_fails_the_run_with_one_line() {
    require_root!("mounting a tmpfs needs root");
    let (env, _fleet) = env_with_fleet(2);
    let mount_point = new_dir(env.root.path(), "small");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mount_point)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        skipped("out_dir_on_a_full_file_system", "cannot mount a tmpfs here");
        return;
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mount_point);
    let dir = mount_point.join("o");
    let out = env.ctl_run(&["exec", "-o", dir.to_str().unwrap(), "@lab", "seq 100000"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    let line = only_line(&out, "-o on a full disk");
    assert!(
        line.starts_with(&format!("ctl: cannot write {}/", dir.display()))
            && line.ends_with(": no space left on the device"),
        "{line}"
    );
}

#[test]
fn a_closed_stdout_with_several_targets_exits_141_quietly() {
    use std::io::BufRead;
    let (env, _fleet) = env_with_fleet(2);
    let mark = marker("yes");
    let mut ctl = env
        .ctl()
        .args(["exec", "@lab", &format!("yes {mark}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut stdout = std::io::BufReader::new(ctl.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    assert!(first.ends_with(&format!(": {mark}\n")), "{first}");
    drop(stdout); // `| head -1` exits
    let out = ctl.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert_eq!(stderr_of(&out), "", "no message for a closed pipe");
    assert_gone_soon(&mark, "the remote commands are stopped");
}

#[test]
fn a_line_of_exactly_one_or_two_mib_gets_no_empty_line_after_it() {
    let (env, _fleet) = env_with_fleet(2);
    for (mib, redirect) in [(1, ""), (2, ""), (1, " >&2"), (2, " >&2")] {
        let command = format!(
            "{{ head -c {} /dev/zero | tr '\\0' b; echo; echo end; }}{redirect}",
            mib << 20
        );
        let out = env.ctl_run(&["exec", "@lab", &command]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        let text = if redirect.is_empty() {
            stdout_of(&out)
        } else {
            stderr_of(&out)
        };
        let mut by_host: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for line in text.lines() {
            let (host, rest) = line
                .split_once(": ")
                .unwrap_or((line.trim_end_matches(':'), ""));
            let size = if rest == "end" {
                usize::MAX
            } else {
                rest.len()
            };
            by_host.entry(host.to_owned()).or_default().push(size);
        }
        let mut expected = vec![1 << 20; mib];
        expected.push(usize::MAX);
        for host in ["127.0.0.2", "127.0.0.3"] {
            assert_eq!(by_host[host], expected, "{host}, {mib} MiB{redirect}");
        }
    }
}

/// `-o DIR` in a directory someone else can write: links planted at the
/// summary and at a host's files are not written through (ctl often runs
/// as root): the run fails, saying which file, and the link's target is
/// as it was.
#[test]
fn an_out_dir_never_writes_through_a_planted_link() {
    let (env, fleet) = env_with_fleet(2);
    let root = env.root.path();
    let out_dir = root.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let victim = root.join("victim");
    std::fs::write(&victim, b"precious\n").unwrap();
    let planted = out_dir.join(format!("{}.out", fleet.hosts[0]));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    std::os::unix::fs::symlink(&victim, out_dir.join("summary.jsonl")).unwrap();
    let out = env.ctl_run(&["exec", "-o", out_dir.to_str().unwrap(), "@lab", "echo hi"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    let said = stderr_of(&out);
    assert!(
        said.contains(&format!(
            "cannot create {}: it is a link, which ctl does not write through",
            planted.display()
        )),
        "{said}"
    );
}

/// `-o` naming a file, not a directory: said so, in one line, before any
/// host is reached (before: "cannot create afile: it already exists").
#[test]
fn an_out_dir_that_is_a_file_is_named_so() {
    let (env, fleet) = env_with_fleet(2);
    let file = env.root.path().join("afile");
    std::fs::write(&file, b"kept\n").unwrap();
    let out = env.ctl_run(&["exec", "-o", file.to_str().unwrap(), "@lab", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        stderr_of(&out),
        format!(
            "ctl: {} is not a directory (-o names the directory for the hosts' output files)\n",
            file.display()
        )
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"kept\n");
    for agent in &fleet.agents {
        assert!(!agent.log().contains("exec peer"), "{}", agent.log());
    }
}
