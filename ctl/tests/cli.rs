//! ctl's local commands, run as the real binary.

use std::process::Command;

fn ctl(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ctl"))
        .env("REXEC_CONFIG_DIR", dir)
        .args(args)
        .output()
        .expect("run ctl")
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
