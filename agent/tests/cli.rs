//! The agent's management commands, run as the real binary.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn agent(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rexec-agent"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run rexec-agent")
}

#[test]
fn init_creates_a_private_identity_and_id_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let init = agent(dir.path(), &["init"]);
    assert!(init.status.success());
    let fp = String::from_utf8(init.stdout).unwrap();
    assert!(fp.starts_with("SHA256:"), "{fp}");
    let mode = std::fs::metadata(dir.path().join("agent.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let id = agent(dir.path(), &["id"]);
    assert_eq!(String::from_utf8(id.stdout).unwrap(), fp);
    let again = agent(dir.path(), &["init"]);
    assert!(!again.status.success(), "init never overwrites an identity");
}

#[test]
fn authorize_list_and_revoke_clients() {
    let dir = tempfile::tempdir().unwrap();
    assert!(agent(dir.path(), &["init"]).status.success());
    let fp = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert!(
        agent(dir.path(), &["authorize", fp, "--name", "alice"])
            .status
            .success()
    );
    let list = agent(dir.path(), &["clients"]);
    assert_eq!(
        String::from_utf8(list.stdout).unwrap(),
        format!("{fp} alice\n")
    );
    assert!(agent(dir.path(), &["revoke", "alice"]).status.success());
    assert_eq!(agent(dir.path(), &["clients"]).stdout, b"");
    let missing = agent(dir.path(), &["revoke", "alice"]);
    assert!(!missing.status.success());
    let bad = agent(dir.path(), &["authorize", "SHA256:short"]);
    assert!(!bad.status.success());
}
