//! Hosts from outside the command line, through the real ctl and real
//! agents: host files (`^FILE`, as pdsh's `-w ^FILE`) and the inventory's
//! group sources (`@source:group`, as ClusterShell's groups.conf), with
//! their failures and hangs.

use crate::util::{Env, stderr_of, stdout_of};

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[test]
fn a_host_file_gives_one_host_per_line_without_comments_and_blanks() {
    let env = Env::new();
    let _fleet = env.fleet(4);
    let file = env.root.path().join("hosts.txt");
    std::fs::write(
        &file,
        "# the lab's first row\n127.0.0.2\n\n   \n127.0.0.[3-4]   # a node set\n\t# indented comment\n127.0.0.5\n",
    )
    .expect("host file");
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
    let out = env.ctl_run(&["exec", &format!("{list}!127.0.0.3"), "echo $REXEC_TARGET"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(
        sorted_lines(&stdout_of(&out)),
        [
            "127.0.0.2: 127.0.0.2",
            "127.0.0.4: 127.0.0.4",
            "127.0.0.5: 127.0.0.5"
        ]
    );
    let fold = env.ctl_run(&[
        "hosts",
        "--fold",
        &format!("127.0.0.[1-9]&{list},!^{}", file.display()),
    ]);
    assert_eq!(stdout_of(&fold), "", "everything excluded");
    assert_eq!(fold.status.code(), Some(255));
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
