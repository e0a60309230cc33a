//! The check on a failure of ctl's own, shared by ctl's tests of its local
//! commands (`ctl/tests/cli.rs` includes this file) and the end-to-end
//! tests, so that both hold ctl to the same rule.

use std::process::Output;

/// The one line ctl printed about a failure of its own, after checking
/// that ctl exited 255 and printed exactly one line, starting `ctl: `,
/// with no usage block, OS error text, URL or panic in it.
#[track_caller]
pub fn assert_one_ctl_line(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(out.status.code(), Some(255), "{what}: {err}");
    assert_eq!(lines.len(), 1, "{what}: one line: {err}");
    assert!(lines[0].starts_with("ctl: "), "{what}: {err}");
    for leak in ["Usage:", "os error", "https://", "docs.rs", "panicked"] {
        assert!(!lines[0].contains(leak), "{what}: {err}");
    }
    lines[0].to_owned()
}
