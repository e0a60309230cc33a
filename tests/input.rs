//! `ctl exec -i` with several targets: our stdin read once and the same
//! bytes given to every host, each at its own pace, in bounded memory; a
//! host that fails does not stop the others.

use std::fs::File;
use std::process::Command;

use serde_json::Value;

use crate::gather::{assert_bounded, measured};
use crate::util::*;

#[test]
fn stdin_of_50_mib_reaches_six_hosts_whole_and_a_failing_one_stops_nobody() {
    let env = Env::new();
    let _fleet = env.fleet(7);
    let input = env.root.path().join("input");
    std::fs::write(&input, random_bytes(50 << 20, 18)).unwrap();
    let local = Command::new("sha256sum").arg(&input).output().unwrap();
    let local = String::from_utf8(local.stdout).unwrap();
    let local = local.split_whitespace().next().unwrap().to_owned();
    // 127.0.0.8 reads a little and fails; three hosts at a time, so the
    // last ones start reading long after the first ones are done.
    let command = format!(
        "{FLEET_HOST} if [ $H = 127.0.0.8 ]; then head -c 1000 >/dev/null; exit 3; fi; sha256sum"
    );
    let mut ctl = env.ctl();
    ctl.args(["exec", "-i", "--json", "-f", "3", "@lab", &command])
        .stdin(File::open(&input).unwrap());
    let run = measured(ctl);
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert_eq!(
        run.stderr, "ctl: 1 of 7 hosts failed: exit 3: 127.0.0.8\n",
        "only the failing host failed"
    );
    let records: Vec<Value> = String::from_utf8(run.head.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 7);
    for record in records.iter().filter(|r| r["host"] != "127.0.0.8") {
        assert_eq!(
            record["stdout"],
            format!("{local}  -\n"),
            "{}: the same bytes as ours",
            record["host"]
        );
    }
    // 50 MiB in, yet ctl holds a few MiB of it.
    assert_bounded("-i", &run);
}

#[test]
fn stdin_reaches_every_host_in_default_mode_and_tty_stays_single_host() {
    let env = Env::new();
    let _fleet = env.fleet(3);
    let script = env.root.path().join("fix.sh");
    std::fs::write(&script, "echo fixed\nexit 0\n").unwrap();
    let out = env
        .ctl()
        .args(["exec", "-i", "@lab", "sh -s"])
        .stdin(File::open(&script).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let mut lines: Vec<String> = stdout_of(&out).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(
        lines,
        ["127.0.0.2: fixed", "127.0.0.3: fixed", "127.0.0.4: fixed"]
    );
    // An empty stdin is an empty input, not a hang.
    let out = env.ctl_run(&["exec", "-i", "@lab", "wc -c"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out).matches(": 0\n").count(), 3);
    let out = env.ctl_run(&["exec", "-t", "@lab", "true"]);
    assert_failed_saying(&out, 255, "-t/--tty works with a single target only");
}
