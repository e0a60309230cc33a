//! Confinement, ownership, log and shutdown bounds a hostile or careless
//! peer must not get past.

use std::process::Command;

use crate::util::*;

/// A client whose key is revoked while `[run_as]` confines it is refused,
/// and runs nothing, as nobody or as the agent's own user.
#[test]
fn a_confined_client_whose_key_is_revoked_runs_nothing() {
    let env = Env::new();
    std::fs::write(
        env.agent_dir.join("agent.toml"),
        "[run_as]\ntester = [\"nobody\"]\n",
    )
    .unwrap();
    let agent = env.agent();
    let revoke = Command::new(bin("rexec-agent"))
        .arg("--dir")
        .arg(&env.agent_dir)
        .args(["revoke", "tester"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(revoke.status.success(), "{}", stderr_of(&revoke));
    let out = env.exec(&agent, &["id -u"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "");
    assert!(
        !agent.log().contains("client=\"unknown\""),
        "{}",
        agent.log()
    );
}
