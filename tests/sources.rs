//! Hosts from outside the command line, through the real ctl and real
//! agents: host files (`^FILE`, as pdsh's `-w ^FILE`) and the inventory's
//! group sources (`@source:group`, as ClusterShell's groups.conf), with
//! their failures and hangs.

use crate::util::checks::{assert_runs_on, env_with_fleet, new_file, set_mode};
use crate::util::{Env, stderr_of, stdout_of};

#[test]
fn a_host_file_gives_one_host_per_line_without_comments_and_blanks() {
    let (env, _fleet) = env_with_fleet(4);
    let file = new_file(
        env.root.path(),
        "hosts.txt",
        "# the lab's first row\n127.0.0.2\n\n   \n127.0.0.[3-4]   # a node set\n\t# indented comment\n127.0.0.5\n",
    );
    let list = format!("^{}", file.display());
    let hosts = env.ctl_run(&["hosts", &list]);
    // Printed with the ports the fleet's inventory gives them.
    let printed = stdout_of(&hosts);
    let names: Vec<&str> = printed
        .lines()
        .map(|l| l.split(':').next().unwrap_or(l))
        .collect();
    assert_eq!(
        names,
        ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"],
        "{}",
        stderr_of(&hosts)
    );
    // The file's hosts take the inventory's ports like any other, and
    // combine with the rest of the list.
    assert_runs_on(
        &env,
        &format!("{list}!127.0.0.3"),
        &["127.0.0.2", "127.0.0.4", "127.0.0.5"],
    );
    let fold = env.ctl_run(&[
        "hosts",
        "--fold",
        &format!("127.0.0.[1-9]&{list},!^{}", file.display()),
    ]);
    // Everything excluded: an empty set, no error (as for nodeset).
    assert_eq!(stdout_of(&fold), "", "everything excluded");
    assert_eq!(fold.status.code(), Some(0), "{}", stderr_of(&fold));
}

#[test]
fn a_missing_host_file_or_a_bad_line_is_one_line_naming_it() {
    let env = Env::new();
    let missing = env.root.path().join("nowhere.txt");
    let out = env.ctl_run(&["hosts", &format!("a,^{}", missing.display())]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        stderr_of(&out),
        format!(
            "ctl: host file {}: there is no such file\n",
            missing.display()
        )
    );
    let bad = env.root.path().join("bad.txt");
    std::fs::write(&bad, "good1\n# fine\nnode[1-x]\n").expect("host file");
    let out = env.ctl_run(&["hosts", &format!("^{}", bad.display())]);
    assert_eq!(out.status.code(), Some(255));
    let stderr = stderr_of(&out);
    assert!(
        stderr.starts_with(&format!(
            "ctl: host file {}:3: unexpected 'x'",
            bad.display()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    std::fs::write(&bad, "@lab\n").expect("host file");
    let out = env.ctl_run(&["hosts", &format!("^{}", bad.display())]);
    assert!(
        stderr_of(&out).contains(":1: a host file lists hosts or node sets"),
        "{}",
        stderr_of(&out)
    );
}

/// The fleet's inventory with a `[sources.NAME]` table added.
fn with_source(env: &Env, name: &str, table: &str) {
    let path = env.ctl_dir.join("hosts.toml");
    let mut inventory = std::fs::read_to_string(&path).unwrap_or_default();
    inventory.push_str(&format!("\n[sources.{name}]\n{table}\n"));
    std::fs::write(&path, inventory).expect("inventory");
}

/// A stand-in for Slurm's `sinfo -h -o %N -p $GROUP`: `list` prints the
/// partitions gpu and cpu, `all` every host, `map GROUP` the hosts of a
/// partition, and an unknown one fails as sinfo does.
const FAKE_SINFO: &str = "#!/bin/sh\ncase \"$1\" in\n  list) echo 'gpu cpu' ;;\n  all) echo '127.0.0.[2-5]' ;;\n  \
     map) case \"$2\" in\n    gpu) printf '127.0.0.2\\n127.0.0.[4-5]\\n' ;;\n    cpu) echo 127.0.0.3 ;;\n    \
     *) echo \"sinfo: error: invalid partition specified: $2\" >&2; exit 1 ;;\n  esac ;;\nesac\n";

/// A source whose commands print groups and hosts, as a Slurm one would
/// (`sinfo -h -o %N -p $GROUP`): `@source:group` runs on what `map`
/// printed for that group, `@source:*` on `all`, and `hosts --groups`
/// lists what `list` printed.
#[test]
fn a_source_maps_groups_to_hosts_with_its_commands() {
    let (env, _fleet) = env_with_fleet(4);
    let script = new_file(env.root.path(), "fake-sinfo", FAKE_SINFO);
    set_mode(&script, 0o755);
    let s = script.display();
    with_source(
        &env,
        "slurm",
        &format!("map = '{s} map \"$GROUP\"'\nlist = '{s} list'\nall = '{s} all'"),
    );
    assert_runs_on(&env, "@slurm:gpu", &["127.0.0.2", "127.0.0.4", "127.0.0.5"]);
    let fold = |list: &str| {
        let out = env.ctl_run(&["hosts", "--fold", list]);
        assert_eq!(out.status.code(), Some(0), "{list}: {}", stderr_of(&out));
        stdout_of(&out).trim_end().to_owned()
    };
    // Sources combine with everything else; ports come from the inventory.
    assert!(fold("@slurm:*").starts_with("127.0.0.2:"));
    assert_eq!(
        env.ctl_run(&["hosts", "--count", "@slurm:*!@slurm:cpu"])
            .stdout,
        b"3\n"
    );
    assert_eq!(
        env.ctl_run(&["hosts", "--count", "@slurm:gpu&@lab"]).stdout,
        b"3\n"
    );
    let groups = env.ctl_run(&["hosts", "--groups"]);
    assert_eq!(
        stdout_of(&groups),
        "@lab\n@slurm:cpu\n@slurm:gpu\n",
        "{}",
        stderr_of(&groups)
    );
    // A group the command does not know: its failure, with its stderr.
    let out = env.ctl_run(&["exec", "@slurm:tpu", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        stderr_of(&out),
        "ctl: group source slurm: its map (GROUP=tpu) command failed (exit 1): \
         sinfo: error: invalid partition specified: tpu\n"
    );
    let out = env.ctl_run(&["hosts", "@nosuch:gpu"]);
    assert!(
        stderr_of(&out).starts_with("ctl: unknown group source nosuch"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_failing_source_command_is_one_line_with_its_stderr() {
    let env = Env::new();
    with_source(
        &env,
        "db",
        "map = 'echo \"cannot reach the database\" >&2; echo \"try later\" >&2; exit 7'",
    );
    let out = env.ctl_run(&["hosts", "@db:web"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        stderr_of(&out),
        "ctl: group source db: its map (GROUP=web) command failed (exit 7): \
         cannot reach the database; try later\n"
    );
    // Printing something that is not hosts is refused too, naming it.
    with_source(&env, "bad", "map = 'echo \"node[1-x]\"'");
    let out = env.ctl_run(&["hosts", "@bad:web"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        stderr_of(&out).starts_with(
            "ctl: group source bad: its map (GROUP=web) command printed \"node[1-x]\""
        ),
        "{}",
        stderr_of(&out)
    );
}

/// A command that hangs is killed at the source's timeout, with what it
/// started, and ctl says so in one line.
#[test]
fn a_hanging_source_command_is_killed_at_its_timeout() {
    let env = Env::new();
    let marker = crate::util::marker("source-hang");
    with_source(
        &env,
        "slow",
        &format!(
            "map = 'echo \"asking the scheduler\" >&2; sleep 600 & sleep 600 # {marker}'\ntimeout = \"2s\""
        ),
    );
    let out = env.ctl_run(&["hosts", "@slow:gpu"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        stderr_of(&out),
        "ctl: group source slow: its map (GROUP=gpu) command gave no answer within 2s \
         and was killed: asking the scheduler\n"
    );
    assert!(
        crate::util::wait_until(crate::util::DEADLINE, || crate::util::processes_with(
            &marker
        )
        .is_empty()),
        "the source's processes were left running"
    );
}

/// With a cache time, a source's answer is kept in the config directory
/// and not asked again until it runs out.
#[test]
fn a_source_answer_is_kept_for_its_cache_time() {
    let env = Env::new();
    let runs = env.root.path().join("runs");
    with_source(
        &env,
        "cached",
        &format!(
            "map = 'echo x >> {} && echo \"n$GROUP\"'\ncache_time = \"1h\"",
            runs.display()
        ),
    );
    for _ in 0..3 {
        let out = env.ctl_run(&["hosts", "@cached:1,@cached:2"]);
        assert_eq!(stdout_of(&out), "n1\nn2\n", "{}", stderr_of(&out));
    }
    let asked = std::fs::read_to_string(&runs).expect("runs");
    assert_eq!(asked.lines().count(), 2, "one run per group");
}

/// ctl raises its soft limit on open files to the hard one (a wide
/// fan-out holds a connection per host), and what it starts, a source's
/// command here, gets back the limit ctl was started with.
#[test]
fn ctl_raises_its_open_files_limit_and_a_source_gets_the_original() {
    let env = Env::new();
    let seen = env.root.path().join("seen");
    with_source(
        &env,
        "probe",
        &format!(
            "map = 'ulimit -Sn > \"{p}\"; grep \"^Max open files\" /proc/$PPID/limits >> \"{p}\"; echo 127.0.0.2'",
            p = seen.display()
        ),
    );
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -Sn 512 && exec \"$0\" \"$@\""])
        .arg(crate::util::bin("ctl"))
        .args(["hosts", "@probe:x"])
        .env("REXEC_CONFIG_DIR", &env.ctl_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let seen = std::fs::read_to_string(&seen).unwrap();
    let mut lines = seen.lines();
    assert_eq!(lines.next(), Some("512"), "{seen}");
    let limits: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    // "Max open files SOFT HARD files"
    assert_eq!(limits.get(3), limits.get(4), "ctl's own limit: {seen}");
    assert_ne!(limits.get(3), Some(&"512"), "ctl's own limit: {seen}");
}
