//! Files and directories the tests set up.

use std::path::{Path, PathBuf};

/// Creates the directory `parent/NAME` (the parent must exist); returns it.
pub fn new_dir(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// A shell loop that goes on once `go` exists, or after 20 s (when the test
/// that was to create it has failed already): a command paced by the test.
pub fn sh_wait_for(go: &Path) -> String {
    format!(
        "for i in $(seq 400); do [ -e '{}' ] && break; sleep 0.05; done",
        go.display()
    )
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for tens of MiB.
pub fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Asserts that the file at `path` holds exactly `expected`.
#[track_caller]
pub fn assert_file(path: impl AsRef<Path>, expected: &[u8]) {
    let path = path.as_ref();
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(got, expected, "{}", path.display());
}
