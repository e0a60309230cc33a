//! Shared helpers for the end-to-end tests, one file per concern: a fresh
//! set of identities and ctl runs (`env`), real agents and their logs
//! (`agent`), the agent under systemd's ways of starting it (`systemd`),
//! hostile test doubles speaking the wire protocol (`fake`), checks on the
//! machine's process table (`procs`), files the tests set up (`fs`), skips (`skip`),
//! a real terminal (`tmux`) and a real NATS broker (`nats`).

// Two test binaries include this module (e2e and container) and each uses
// only part of it.
#![allow(dead_code, unused_imports, unused_macros)]

mod agent;
pub mod checks;
mod env;
mod fake;
mod fs;
mod nats;
mod procs;
mod skip;
mod systemd;
mod tmux;

pub use agent::*;
pub use env::*;
pub use fake::*;
pub use fs::*;
pub use nats::*;
pub use procs::*;
pub use skip::*;
pub use systemd::*;
pub use tmux::*;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// How long any wait in these tests may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A built binary of the workspace, next to this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/e2e-HASH -> target/<profile>/NAME
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// Polls `condition` until it holds or `within` passes; returns whether it held.
pub fn wait_until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// ctl's stdout as JSON lines (`--json`), one value per line.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout_of(out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Asserts that a run exited with `code` and that its stderr contains
/// `needle`.
#[track_caller]
pub fn assert_failed_saying(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr_of(out));
    assert!(stderr_of(out).contains(needle), "{}", stderr_of(out));
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The workspace root, for `scripts/` and `systemd/`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}
