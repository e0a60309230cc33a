//! Choosing hosts and running on them as clush and pdsh users do, through
//! the real ctl and real agents: the name a command sees as
//! `REXEC_TARGET`, node-set algebra (`&`, `^`, `!`) with ClusterShell's
//! left-to-right order, `--count`, `--pick`, and rolling runs that stop at
//! `--max-failures`.

use crate::util::{Env, stderr_of, stdout_of};

/// Sorted lines of `text`.
fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[test]
fn the_command_sees_the_name_ctl_used_as_rexec_target() {
    let env = Env::new();
    let _fleet = env.fleet(3);
    let out = env.ctl_run(&["exec", "@lab", "echo $REXEC_TARGET"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(
        sorted_lines(&stdout_of(&out)),
        [
            "127.0.0.2: 127.0.0.2",
            "127.0.0.3: 127.0.0.3",
            "127.0.0.4: 127.0.0.4"
        ]
    );
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
    let env = Env::new();
    let fleet = env.fleet(6);
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
