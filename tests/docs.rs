//! Completions and man pages, made by the real binaries from their clap
//! definitions: what `ctl completions` prints is a script each shell
//! accepts, and the man pages cover every command.

use std::process::{Command, Stdio};

use crate::util::{bin, stderr_of};

/// `ctl completions SHELL`, checked.
fn completions(shell: &str) -> String {
    let out = Command::new(bin("ctl"))
        .args(["completions", shell])
        .output()
        .expect("ctl");
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    String::from_utf8(out.stdout).expect("utf-8 script")
}

/// Whether `shell -n` (parse, run nothing) accepts `script`.
fn parses(shell: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(shell)
        .arg("-n")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("shell");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write the script");
    let out = child.wait_with_output().expect("wait");
    match out.status.success() {
        true => Ok(()),
        false => Err(stderr_of(&out)),
    }
}

fn installed(shell: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {shell}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn completion_scripts_are_accepted_by_their_shells() {
    let bash = completions("bash");
    assert!(bash.contains("complete -F _ctl"), "{bash}");
    for word in ["exec", "hosts", "--max-failures", "--pick", "--count"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    parses("bash", &bash).expect("bash -n");
    // Sourced in a real bash, it registers the completion for ctl.
    let out = Command::new("bash")
        .args(["-c", "source /dev/stdin; complete -p ctl"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(bash.as_bytes())?;
            child.wait_with_output()
        })
        .expect("bash");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("_ctl"),
        "{}",
        stderr_of(&out)
    );
    let zsh = completions("zsh");
    assert!(zsh.starts_with("#compdef ctl"), "{zsh}");
    // zsh and fish are checked where they are installed; CI needs only
    // bash (the one every Debian machine has), so their absence is no skip.
    if installed("zsh") {
        parses("zsh", &zsh).expect("zsh -n");
    }
    let fish = completions("fish");
    assert!(fish.contains("complete -c ctl"), "{fish}");
    if installed("fish") {
        parses("fish", &fish).expect("fish -n");
    }
    let bad = Command::new(bin("ctl"))
        .args(["completions", "tcsh"])
        .output()
        .expect("ctl");
    assert_eq!(bad.status.code(), Some(255));
}

#[test]
fn man_pages_cover_every_command_of_both_binaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    for binary in ["ctl", "rexec-agent"] {
        let out = Command::new(bin(binary))
            .arg("man-pages")
            .arg(dir.path())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(0), "{binary}: {}", stderr_of(&out));
    }
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .expect("pages")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(
        pages,
        [
            "ctl-completions.1",
            "ctl-cp.1",
            "ctl-exec.1",
            "ctl-hosts.1",
            "ctl-id.1",
            "ctl-job.1",
            "ctl-keygen.1",
            "ctl-known-hosts.1",
            "ctl-ping.1",
            "ctl.1",
            "rexec-agent-authorize.1",
            "rexec-agent-clients.1",
            "rexec-agent-id.1",
            "rexec-agent-init.1",
            "rexec-agent-revoke.1",
            "rexec-agent-run.1",
            "rexec-agent.1",
        ]
    );
    let exec = std::fs::read_to_string(dir.path().join("ctl-exec.1")).expect("page");
    assert!(exec.contains(".TH ctl-exec 1"), "{exec}");
    assert!(
        exec.contains("max\\-failures"),
        "the page has the flags: {exec}"
    );
    let run = std::fs::read_to_string(dir.path().join("rexec-agent-run.1")).expect("page");
    assert!(run.contains("max\\-sessions"), "{run}");
}
