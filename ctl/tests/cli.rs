//! ctl's local commands, run as the real binary.

use std::process::Command;

// A failure of ctl's own is held to the same rule here as in the
// end-to-end tests: exit 255 and one `ctl:` line, never a panic (101),
// never clap's usage block.
#[path = "../../tests/util/checks/ctl_line.rs"]
mod ctl_line;

use ctl_line::assert_one_ctl_line;

/// `ctl ARGS...` with config dir `dir`, run to completion.
fn ctl(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    ctl_in(dir).args(args).output().expect("run ctl")
}

#[test]
fn keygen_then_id_print_the_same_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let made = ctl(dir.path(), &["keygen"]);
    assert!(made.status.success());
    let id = ctl(dir.path(), &["id"]);
    assert_eq!(made.stdout, id.stdout);
    assert!(String::from_utf8(id.stdout).unwrap().starts_with("SHA256:"));
    assert!(
        !ctl(dir.path(), &["keygen"]).status.success(),
        "never overwrites"
    );
}

#[test]
fn help_documents_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let help = ctl(dir.path(), &["exec", "--help"]);
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for needle in ["128+N", "124", "255"] {
        assert!(text.contains(needle), "{needle} missing from help");
    }
}

/// ctl with config dir `dir`, no inventory from the environment and no
/// stdin.
fn ctl_in(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctl"));
    cmd.env("REXEC_CONFIG_DIR", dir)
        .env_remove("REXEC_INVENTORY")
        .stdin(std::process::Stdio::null());
    cmd
}

/// `ctl keygen` in `dir`, which must succeed.
fn keygen(dir: &std::path::Path) {
    assert!(ctl_in(dir).arg("keygen").output().unwrap().status.success());
}

fn stderr_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bad_usage_is_one_ctl_line_and_exit_255() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["exec"][..],
        &["--bogus"],
        &["exec", "h"],
        &["exec", "--timeout", "soon", "h", "true"],
        &["exec", "--fanout", "0", "h", "true"],
        &["exec", "-b", "--json", "h", "true"],
        &["frobnicate"],
        &["known-hosts"],
    ] {
        let out = ctl_in(dir.path()).args(args).output().unwrap();
        let line = assert_one_ctl_line(&out, &format!("{args:?}"));
        assert!(line.ends_with("(see ctl --help)"), "{line}");
    }
    let missing = ctl_in(dir.path()).args(["exec", "h"]).output().unwrap();
    assert!(
        stderr_lines(&missing)[0].contains("<COMMAND>"),
        "the missing argument is named: {:?}",
        stderr_lines(&missing)
    );
    let help = ctl_in(dir.path())
        .args(["exec", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage:"));
}

#[test]
fn a_missing_or_garbage_identity_is_one_plain_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = ctl_in(dir.path())
        .args(["exec", "127.0.0.1:9", "true"])
        .output()
        .unwrap();
    let line = assert_one_ctl_line(&out, "no identity");
    assert!(line.contains("ctl keygen"), "{line}");

    keygen(dir.path());
    std::fs::write(dir.path().join("client.key"), "garbage\n").unwrap();
    let out = ctl_in(dir.path()).arg("id").output().unwrap();
    let line = assert_one_ctl_line(&out, "garbage key");
    assert!(
        line.contains("client.key: not a usable PEM certificate or private key"),
        "{line}"
    );
    assert!(!line.contains("no items found"), "{line}");
}

#[test]
fn output_to_a_full_device_is_an_error_not_success() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    for args in [
        &["hosts", "n[1-100000]"][..],
        &["id"],
        &["known-hosts", "list"],
    ] {
        let full = std::fs::File::create("/dev/full").unwrap();
        let out = ctl_in(dir.path()).args(args).stdout(full).output().unwrap();
        if args[0] == "known-hosts" {
            // Nothing to write: nothing lost.
            assert!(out.status.success(), "{args:?}");
            continue;
        }
        let line = assert_one_ctl_line(&out, &format!("{args:?}"));
        assert_eq!(
            line, "ctl: cannot write to stdout: no space left on the device",
            "{args:?}"
        );
    }
    // A reader that goes away is still the quiet 141.
    let mut ctl = ctl_in(dir.path())
        .args(["hosts", "n[1-100000]"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(ctl.stdout.take());
    let out = ctl.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert!(out.stderr.is_empty(), "{:?}", stderr_lines(&out));
}

#[test]
fn a_failing_stderr_is_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["exec", "--bogus"][..], &["exec", "127.0.0.1:9", "true"]] {
        let full = std::fs::File::create("/dev/full").unwrap();
        let out = ctl_in(dir.path()).args(args).stderr(full).output().unwrap();
        assert_eq!(out.status.code(), Some(255), "{args:?}");
    }
}

/// Extreme and malformed values for every parser ctl has: each is refused
/// with one clear line (or accepted), never a panic.
#[test]
fn parsers_refuse_extreme_and_malformed_values_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let huge = "9".repeat(400);
    let mut cases: Vec<Vec<String>> = Vec::new();
    for flag in ["--timeout", "--connect-timeout"] {
        for value in [
            "18446744073709551615s",
            "5000000000000000h",
            "18446744073709551615ns 18446744073709551615s",
            "-1s",
            "",
            "1e400s",
            &format!("{huge}s"),
            "0x10s",
            "🦀",
        ] {
            cases.push(vec![
                "exec".into(),
                flag.into(),
                value.into(),
                "h1,h2".into(),
                "true".into(),
            ]);
            cases.push(vec![
                "cp".into(),
                flag.into(),
                value.into(),
                "/etc/hostname".into(),
                "h:/tmp/".into(),
            ]);
        }
    }
    for value in ["0", "-1", "18446744073709551616", &huge] {
        cases.push(vec![
            "exec".into(),
            "-f".into(),
            value.into(),
            "h1,h2".into(),
            "true".into(),
        ]);
    }
    for set in [
        "n[1-99999999999999999999]",
        "n[5-1]",
        "n[",
        "n[1-3",
        "[]",
        "@",
        "!",
        ",,,",
        "n[1-1000000000]",
        "n[0-10/0]",
        "n[0-10/99999999999999999999]",
        "h:99999999",
        "h:-1",
        "[::1",
        "u@@h",
        &format!("n[{huge}]"),
        &"[".repeat(10_000),
        "@a",
    ] {
        cases.push(vec!["hosts".into(), set.into()]);
        cases.push(vec!["exec".into(), set.into(), "true".into()]);
        cases.push(vec!["known-hosts".into(), "remove".into(), set.into()]);
    }
    let run = |args: &[String]| {
        let out = ctl_in(dir.path()).args(args).output().unwrap();
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked");
        assert!(out.status.code().is_some(), "{args:?} killed by a signal");
        if !out.status.success() {
            let lines = stderr_lines(&out);
            assert!(
                lines.first().is_some_and(|l| l.starts_with("ctl: ")),
                "{args:?}: {lines:?}"
            );
            assert!(!lines.iter().any(|l| l.contains("panicked")), "{args:?}");
        }
    };
    for args in &cases {
        run(args);
    }
    // Inventories, malformed and extreme.
    for inventory in [
        "lab = 5",
        "[groups]\nlab = 5",
        "[groups]\nlab = \"@lab\"",
        "[hosts.\"n[1-99999999999]\"]\nport = 1",
        "[hosts.h]\nport = 99999999",
        "[hosts.h]\nport = -1",
        "[hosts.h]\nuser = 5",
        &format!("a = {}{}", "[".repeat(5000), "]".repeat(5000)),
        "\u{0}\u{1}garbage",
        "[groups]\nlab = [\"a\", 5]",
    ] {
        std::fs::write(dir.path().join("hosts.toml"), inventory).unwrap();
        run(&["hosts".into(), "@lab,h".into()]);
    }
    std::fs::write(dir.path().join("hosts.toml"), [0xff, 0xfe, 0x00]).unwrap();
    run(&["hosts".into(), "h".into()]);
    std::fs::remove_file(dir.path().join("hosts.toml")).unwrap();
    // Known hosts, malformed and extreme: reported by line, never fatal
    // unless the file cannot be read as text at all.
    let long = format!("h:1 SHA256:{}", "A".repeat(100_000));
    for known in [
        "garbage",
        "h:1",
        "h:1 SHA256:",
        "h:1 SHA256:!!!!",
        &long,
        "\u{0}\u{0}\u{0}",
        "h:1 SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA trailing",
    ] {
        std::fs::write(dir.path().join("known_hosts"), known).unwrap();
        let out = ctl_in(dir.path())
            .args(["known-hosts", "list"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{known:?}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{known:?}: {lines:?}");
        assert!(
            lines[0].ends_with("known_hosts:1: not HOST:PORT SHA256:<fingerprint>; line ignored"),
            "{lines:?}"
        );
    }
    std::fs::write(dir.path().join("known_hosts"), [0xff, 0xfe, b'\n']).unwrap();
    run(&["known-hosts".into(), "list".into()]);
}
