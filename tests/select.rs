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
