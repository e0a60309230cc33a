//! Node sets and the inventory through the real `ctl hosts`: the
//! expansions ClusterShell's `nodeset -e` gives (a corpus it produced,
//! `tests/data/nodesets.tsv`), and per-host settings merged from the
//! inventory's entries.

use std::collections::BTreeSet;

use crate::util::{self, Env};

/// Patterns that `ctl hosts --fold` spells differently from `nodeset -f`,
/// with why; the test checks that ctl's spelling means the same hosts.
const FOLDS_DIFFER: &[(&str, &str)] = &[(
    "n[01,1]",
    "nodeset writes n[1,01]; ctl gives each bracket one padding, so n01,n1",
)];

/// Every pattern of the corpus expands to the hosts ClusterShell's
/// `nodeset -e` gave, or is refused where nodeset refused it, and folds
/// back as `nodeset -f` does.
#[test]
fn ctl_hosts_expands_like_clustershell_nodeset() {
    let corpus =
        std::fs::read_to_string(util::repo_root().join("tests/data/nodesets.tsv")).expect("corpus");
    let env = Env::new();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for line in corpus.lines().filter(|l| !l.starts_with('#')) {
        let mut columns = line.split('\t');
        let (Some(pattern), Some(_), Some(expected), Some(folded)) = (
            columns.next(),
            columns.next(),
            columns.next(),
            columns.next(),
        ) else {
            panic!("corpus line without four columns: {line:?}");
        };
        checked += 1;
        let out = env.ctl_run(&["hosts", pattern]);
        let code = out.status.code();
        if expected == "error" {
            let stderr = util::stderr_of(&out);
            if code != Some(255) || !stderr.starts_with("ctl: ") || !out.stdout.is_empty() {
                wrong.push(format!(
                    "{pattern}: expected a refusal, got {code:?} {stderr:?}"
                ));
            }
            continue;
        }
        let printed: Vec<String> = util::stdout_of(&out).lines().map(str::to_owned).collect();
        let unique: BTreeSet<&str> = printed.iter().map(String::as_str).collect();
        let want: BTreeSet<&str> = expected.split(' ').collect();
        if code != Some(0) || unique != want || unique.len() != printed.len() {
            wrong.push(format!(
                "{pattern}: nodeset gives {expected:?}, ctl printed {printed:?} (exit {code:?}, {})",
                util::stderr_of(&out).trim()
            ));
        }
        let fold = env.ctl_run(&["hosts", "--fold", pattern]);
        let ours = util::stdout_of(&fold).trim_end().to_owned();
        match FOLDS_DIFFER.iter().find(|(p, _)| *p == pattern) {
            None if ours != folded => wrong.push(format!(
                "{pattern}: nodeset -f gives {folded:?}, ctl hosts --fold {ours:?}"
            )),
            // A different spelling must still be the same hosts.
            Some(_) => {
                let again = util::stdout_of(&env.ctl_run(&["hosts", &ours]));
                let again: BTreeSet<&str> = again.lines().collect();
                if again != want {
                    wrong.push(format!(
                        "{pattern}: ctl folds to {ours:?}, which is other hosts"
                    ));
                }
            }
            None => {}
        }
    }
    assert!(checked >= 60, "only {checked} patterns in the corpus");
    assert!(
        wrong.is_empty(),
        "{} differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// `ctl hosts` with `hosts.toml` in ctl's config directory holding `inventory`.
fn hosts_with_inventory(inventory: &str, args: &[&str]) -> std::process::Output {
    let env = Env::new();
    std::fs::write(env.ctl_dir.join("hosts.toml"), inventory).expect("inventory");
    let mut all = vec!["hosts"];
    all.extend_from_slice(args);
    env.ctl_run(&all)
}

/// Asserts that `ctl hosts ARGS` with `inventory` succeeds and prints
/// `expected`.
#[track_caller]
fn assert_hosts_with_inventory(inventory: &str, args: &[&str], expected: &str) {
    let out = hosts_with_inventory(inventory, args);
    assert_eq!(out.status.code(), Some(0), "{}", util::stderr_of(&out));
    assert_eq!(util::stdout_of(&out), expected);
}

/// A host's own entry gives its port although a range that holds it sets
/// another; before, whichever key sorted last won (`labpc07:7000`).
#[test]
fn a_host_entry_overrides_its_range_in_the_inventory() {
    assert_hosts_with_inventory(
        "[hosts.\"labpc[01-20]\"]\nport = 7000\n\n[hosts.labpc07]\nport = 7723\n",
        &["labpc[06-08]"],
        "labpc06:7000\nlabpc07:7723\nlabpc08:7000\n",
    );
}

/// Settings from a range and from a host's own entry combine: the range's
/// user and the host's port (before, labpc07 lost its port).
#[test]
fn inventory_entries_merge_field_by_field() {
    assert_hosts_with_inventory(
        "[hosts.\"labpc[01-20]\"]\nuser = \"lab\"\n\n[hosts.labpc07]\nport = 7723\n",
        &["labpc[06-08]"],
        "lab@labpc06\nlab@labpc07:7723\nlab@labpc08\n",
    );
}

/// `USER@@GROUP` is the group's hosts as that user, as `USER@RANGE` is for
/// a range (pdsh and clush spell it `-l USER -g GROUP`); the user on the
/// command line wins over the inventory's. `h:22:33` is a mistyped port,
/// not a host.
#[test]
fn user_at_group_runs_the_groups_hosts_as_that_user() {
    let inventory = "[groups]\nlab = \"n[1-3]\"\n\n[hosts.n2]\nuser = \"lab\"\nport = 7000\n";
    assert_hosts_with_inventory(
        inventory,
        &["root@@lab"],
        "root@n1\nroot@n2:7000\nroot@n3\n",
    );
    assert_hosts_with_inventory(
        inventory,
        &["alice@corp.example@@lab,!alice@corp.example@n3"],
        "alice@corp.example@n1\nalice@corp.example@n2:7000\n",
    );
    let out = hosts_with_inventory(inventory, &["h:22:33"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        util::stderr_of(&out).contains("must be an IPv6 address"),
        "{}",
        util::stderr_of(&out)
    );
}

/// Two ranges of the same size that disagree about a host are refused,
/// naming both, rather than one winning by the order of the keys.
#[test]
fn equally_specific_entries_that_disagree_are_refused() {
    let out = hosts_with_inventory(
        "[hosts.\"n[1-4]\"]\nport = 7000\n\n[hosts.\"n[3-6]\"]\nport = 7001\n",
        &["n1"],
    );
    assert_eq!(out.status.code(), Some(255));
    let stderr = util::stderr_of(&out);
    assert!(
        stderr.contains("hosts.\"n[1-4]\" and hosts.\"n[3-6]\" both set port for n3"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// `lab = 5` says which file and key and what is expected, on one line,
/// without the TOML library's "untagged enum" text.
#[test]
fn a_bad_inventory_value_is_one_line_with_the_file_and_the_key() {
    let env = Env::new();
    let file = env.ctl_dir.join("hosts.toml");
    std::fs::write(&file, "[groups]\nlab = 5\n").expect("inventory");
    let out = env.ctl_run(&["hosts", "@lab"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        util::stderr_of(&out),
        format!(
            "ctl: inventory {}: groups.lab: expected a target list (a string such as \
             \"labpc[01-20]\") or an array of them, found a number\n",
            file.display()
        )
    );
}

/// `--fold` (and every summary, which folds the same way) used to cut the
/// digits inside an IPv6 literal: `[::1]:7723,[::2]:7723` folded to
/// `[::[1-2]]:7723`, which `ctl hosts` refuses ("brackets cannot nest").
#[test]
fn a_folded_ipv6_list_reads_back_as_the_same_hosts() {
    let env = Env::new();
    for list in [
        "[::1]:7723,[::2]:7723",
        "[::1]:[7723-7725],[fe80::a1]:7723",
        "root@[::1]:7723,n[1-3]",
    ] {
        let expanded = env.ctl_run(&["hosts", list]);
        assert_eq!(
            expanded.status.code(),
            Some(0),
            "{}",
            util::stderr_of(&expanded)
        );
        let folded = env.ctl_run(&["hosts", "--fold", list]);
        let folded = util::stdout_of(&folded).trim_end().to_owned();
        let again = env.ctl_run(&["hosts", &folded]);
        assert_eq!(
            again.status.code(),
            Some(0),
            "{list} folded to {folded}: {}",
            util::stderr_of(&again)
        );
        let set = |out: &std::process::Output| -> BTreeSet<String> {
            util::stdout_of(out).lines().map(str::to_owned).collect()
        };
        assert_eq!(set(&again), set(&expanded), "{list} folded to {folded}");
    }
}

/// A TOML syntax error used to lose the parser's reason: a duplicate
/// `[hosts.n1]` read "this is not valid TOML (check the quotes, brackets
/// and '=' there)". Now the reason and the line, on one line.
#[test]
fn an_inventory_syntax_error_says_what_the_parser_found() {
    let env = Env::new();
    let file = env.ctl_dir.join("hosts.toml");
    std::fs::write(&file, "[hosts.n1]\nport = 1\n[hosts.n1]\nport = 2\n").expect("inventory");
    let out = env.ctl_run(&["hosts", "n1"]);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        util::stderr_of(&out),
        format!(
            "ctl: inventory {}:3:8: not valid TOML: duplicate key: `[hosts.n1]`\n",
            file.display()
        )
    );
}

/// A list that names no host is an empty expansion for `ctl hosts`, as
/// for `nodeset` (`-c` says 0), so `n=$(ctl hosts --count …)` works in a
/// script; running a command on it is still refused.
#[test]
fn a_list_that_names_no_host_counts_0() {
    let env = Env::new();
    for list in ["a&b", "a,!a", "node[1-3]!node[1-3]"] {
        let count = env.ctl_run(&["hosts", "--count", list]);
        assert_eq!(
            util::stdout_of(&count),
            "0\n",
            "{list}: {}",
            util::stderr_of(&count)
        );
        assert!(count.status.success(), "{list}");
        for flags in [&[][..], &["--fold"]] {
            let listed = env.ctl_run(&[&["hosts"], flags, &[list]].concat());
            assert_eq!(util::stdout_of(&listed), "", "{list} {flags:?}");
            assert!(
                listed.status.success(),
                "{list}: {}",
                util::stderr_of(&listed)
            );
        }
        let exec = env.ctl_run(&["exec", list, "true"]);
        assert_eq!(exec.status.code(), Some(255), "{list}");
        assert_eq!(
            util::stderr_of(&exec),
            "ctl: the targets expand to no host\n"
        );
    }
}
