//! Choosing hosts and running on them as clush and pdsh users do, through
//! the real ctl and real agents: the name a command sees as
//! `REXEC_TARGET`, node-set algebra (`&`, `^`, `!`) with ClusterShell's
//! left-to-right order, `--count`, `--pick`, and rolling runs that stop at
//! `--max-failures`.

use crate::util::checks::{assert_runs_on, env_with_fleet, sorted_lines};
use crate::util::{Env, stderr_of, stdout_of};

#[test]
fn the_command_sees_the_name_ctl_used_as_rexec_target() {
    let (env, _fleet) = env_with_fleet(3);
    assert_runs_on(&env, "@lab", &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    // One literal host, raw output: the same name, without the port the
    // inventory gave it.
    let one = env.ctl_run(&["exec", "127.0.0.3", "echo \"[$REXEC_TARGET]\""]);
    assert_eq!(stdout_of(&one), "[127.0.0.3]\n", "{}", stderr_of(&one));
    // An explicit -e wins, as for any variable.
    let set = env.ctl_run(&[
        "exec",
        "-e",
        "REXEC_TARGET=mine",
        "127.0.0.2",
        "echo $REXEC_TARGET",
    ]);
    assert_eq!(stdout_of(&set), "mine\n", "{}", stderr_of(&set));
}

/// The extended patterns of ClusterShell's `nodeset` documentation give
/// what `nodeset -f` gives; the operators are read from left to right, all
/// of the same precedence.
#[test]
fn node_set_operators_read_left_to_right_as_nodeset_does() {
    let env = Env::new();
    for (list, folded) in [
        // nodeset's own examples ("Extended patterns", "Arithmetic").
        ("node[1-4],node[5-9]", "node[1-9]"),
        ("node[1-9]!node6", "node[1-5,7-9]"),
        ("node[1-9]&node[6-12]", "node[6-9]"),
        ("node[1-9]^node[6-11]", "node[1-5,10-11]"),
        ("node[10-42],node46!node10", "node[11-42,46]"),
        ("node[0-10]!node[8-10]", "node[0-7]"),
        ("node[0-10]&node[5-13]", "node[5-10]"),
        ("node[0-10]^node[5-13]", "node[0-4,11-13]"),
        // `nodeset -f node[1-9] -x node6 -i node[6-12]`, in one pattern.
        ("node[1-9]!node6&node[6-12]", "node[7-9]"),
        // Left to right, not `&` first: (a,b)&c, and a,(b&c) differs.
        ("node[1-3],node[7-9]&node[2-8]", "node[2-3,7-8]"),
        ("node[2-8]&node[1-3],node[7-9]", "node[2-3,7-9]"),
        ("node[1-5]^node[4-6]!node6", "node[1-3]"),
        ("node[1-5]!node6^node[4-6]", "node[1-3,6]"),
        // A difference between names is undone by a later union; an
        // exclusion item (`,!x`, ours) removes from the whole list.
        ("node[1-4]!node3,node3", "node[1-4]"),
        ("!node3,node[1-4]", "node[1-2,4]"),
        ("node[1-4],!node3,node3", "node[1-2,4]"),
    ] {
        let out = env.ctl_run(&["hosts", "--fold", list]);
        assert_eq!(
            (stdout_of(&out).trim_end(), out.status.code()),
            (folded, Some(0)),
            "{list}: {}",
            stderr_of(&out)
        );
    }
    let out = env.ctl_run(&["hosts", "node[1-4]&&node2"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        stderr_of(&out),
        "ctl: expected a name after '&' at character 11 of \"node[1-4]&&node2\"\n"
    );
}

/// `-x` reads its list with the same operators: it used to take each term
/// as one more exclusion, so `-x 'n[1-4]!n3'` removed n3 as well and
/// `-x 'n[1-4]&n[4-9]'` removed every host.
#[test]
fn dash_x_reads_its_list_with_the_node_set_operators() {
    let env = Env::new();
    for (excluded, left) in [
        ("n[1-4]!n3", "n3\nn5\n"),
        ("n[1-4]&n[4-9]", "n1\nn2\nn3\nn5\n"),
        ("n[1-3]^n[2-4]", "n2\nn3\nn5\n"),
    ] {
        let out = env.ctl_run(&["hosts", "n[1-5]", "-x", excluded]);
        assert_eq!(
            (stdout_of(&out).as_str(), out.status.code()),
            (left, Some(0)),
            "-x {excluded}: {}",
            stderr_of(&out)
        );
    }
}

/// `-u` used to be applied after duplicates were removed: `root@h,h`
/// ran twice, and `-o` kept one file for the two runs with two records.
#[test]
fn a_host_named_twice_runs_once_under_dash_u() {
    let (env, _fleet) = env_with_fleet(1);
    let dir = env.root.path().join("out");
    let out = env.ctl_run(&[
        "exec",
        "-u",
        "root",
        "-o",
        dir.to_str().expect("utf-8 path"),
        "root@127.0.0.2,127.0.0.2",
        "echo ran",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["127.0.0.2.err", "127.0.0.2.out", "summary.jsonl"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("127.0.0.2.out")).expect("output"),
        "ran\n"
    );
    let summary = std::fs::read_to_string(dir.join("summary.jsonl")).expect("summary");
    assert_eq!(summary.lines().count(), 1, "{summary}");
    let prefixed = env.ctl_run(&["exec", "-u", "root", "root@127.0.0.2,127.0.0.2", "echo ran"]);
    assert_eq!(
        stdout_of(&prefixed),
        "127.0.0.2: ran\n",
        "{}",
        stderr_of(&prefixed)
    );
}

#[test]
fn hosts_count_and_pick_choose_from_the_expansion() {
    let env = Env::new();
    let count = env.ctl_run(&["hosts", "--count", "node[01-20]!node[05-06]"]);
    assert_eq!(stdout_of(&count), "18\n", "{}", stderr_of(&count));
    let all: Vec<String> = (1..=20).map(|i| format!("node{i:02}")).collect();
    let mut seen = std::collections::BTreeSet::new();
    // Random, so the check is on what any choice must be: five distinct
    // hosts of the list, in its order; over a few runs, not always the same.
    for _ in 0..8 {
        let out = env.ctl_run(&["hosts", "--pick", "5", "node[01-20]"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        let picked: Vec<String> = stdout_of(&out).lines().map(str::to_owned).collect();
        assert_eq!(picked.len(), 5, "{picked:?}");
        let positions: Vec<usize> = picked
            .iter()
            .map(|h| all.iter().position(|a| a == h).expect("a listed host"))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{picked:?}");
        seen.insert(picked);
    }
    assert!(seen.len() > 1, "eight picks were all {seen:?}");
    let more = env.ctl_run(&["hosts", "--pick", "9", "--count", "n[1-3]"]);
    assert_eq!(stdout_of(&more), "3\n");
    let zero = env.ctl_run(&["hosts", "--pick", "0", "n[1-3]"]);
    assert_eq!(zero.status.code(), Some(255));
}

#[test]
fn exec_pick_runs_on_that_many_hosts_of_the_group() {
    let (env, fleet) = env_with_fleet(6);
    let out = env.ctl_run(&["exec", "--pick", "2", "@lab", "echo $REXEC_TARGET"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let lines = sorted_lines(&stdout_of(&out));
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        let (prefix, name) = line.split_once(": ").expect("prefixed");
        assert_eq!(prefix, name);
        assert!(fleet.hosts.iter().any(|h| h == name), "{line}");
    }
    assert_ne!(lines[0], lines[1]);
}

/// A rolling run: one host at a time (`--fanout 1`), three failing hosts
/// among twelve, `--max-failures 2`. After the second failure no host
/// starts: the third failing host never runs, and the six left are "not
/// started", 255, in `--json` and in the summary.
#[test]
fn a_rolling_run_stops_starting_hosts_after_max_failures() {
    let (env, fleet) = env_with_fleet(12);
    let ran = env.root.path().join("ran");
    let command = format!(
        "echo $REXEC_TARGET >> {}; case $REXEC_TARGET in 127.0.0.4|127.0.0.7|127.0.0.10) exit 1;; esac",
        ran.display()
    );
    let out = env.ctl_run(&[
        "exec",
        "--fanout",
        "1",
        "--max-failures",
        "2",
        "--json",
        "@lab",
        &command,
    ]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    let records = crate::util::json_lines(&out);
    assert_eq!(records.len(), 12);
    let status_of = |host: &str| {
        let record = records
            .iter()
            .find(|r| r["host"] == host)
            .unwrap_or_else(|| panic!("no record for {host}"));
        (
            record["status"].as_str().unwrap_or("").to_owned(),
            record["exit_code"].as_i64(),
            record["error"]["kind"].as_str().map(str::to_owned),
        )
    };
    for (i, host) in fleet.hosts.iter().enumerate() {
        let expected = match i {
            2 | 5 => ("exited".to_owned(), Some(1), None),
            0..=5 => ("exited".to_owned(), Some(0), None),
            _ => (
                "not-started".to_owned(),
                None,
                Some("not-started".to_owned()),
            ),
        };
        assert_eq!(status_of(host), expected, "{host}");
    }
    let ran = std::fs::read_to_string(&ran).expect("ran");
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        &fleet.hosts[..6],
        "hosts ran one at a time, in order, and no more"
    );
    assert_eq!(
        stderr_of(&out),
        "ctl: 8 of 12 hosts failed: exit 1: 127.0.0.[4,7]; not started: 127.0.0.[8-13]\n"
    );
    // Without a limit every host runs and all three failures count.
    let all = env.ctl_run(&["exec", "--max-failures", "5", "@lab", &command]);
    assert_eq!(all.status.code(), Some(1), "{}", stderr_of(&all));
    assert!(
        stderr_of(&all).ends_with("ctl: 3 of 12 hosts failed: exit 1: 127.0.0.[4,7,10]\n"),
        "{}",
        stderr_of(&all)
    );
}
