//! Confinement, ownership, log and shutdown bounds a hostile or careless
//! peer must not get past.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::util::*;

fn cp(env: &Env, args: &[&str]) -> std::process::Output {
    env.ctl().arg("cp").args(args).output().expect("run ctl cp")
}

/// An agent whose `tester` may copy as root or as nobody, root first.
fn agent_running_as_nobody_too(env: &Env) -> Agent {
    std::fs::set_permissions(env.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        env.agent_dir.join("agent.toml"),
        "[run_as]\ntester = [\"root\", \"nobody\"]\n",
    )
    .unwrap();
    env.agent()
}

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

/// `ctl cp nobody@HOST:/proc/sys/...` of a root-only sysctl is refused: the
/// copy runs with nobody's effective uid, which sysctls check. A copy as
/// nobody of what nobody may read works, and so does root's afterwards.
#[test]
fn a_copy_as_nobody_cannot_read_a_root_only_sysctl() {
    const KEY: &str = "/proc/sys/net/ipv4/tcp_fastopen_key";
    if !running_as_root() {
        skipped(
            "a_copy_as_nobody_cannot_read_a_root_only_sysctl",
            "the agent must run as root to copy as another user",
        );
        return;
    }
    if !Path::new(KEY).exists() {
        skipped(
            "a_copy_as_nobody_cannot_read_a_root_only_sysctl",
            "this kernel has no tcp_fastopen_key sysctl",
        );
        return;
    }
    let env = Env::new();
    let agent = agent_running_as_nobody_too(&env);
    let back = env.root.path().join("back");
    std::fs::create_dir(&back).unwrap();
    std::fs::set_permissions(&back, std::fs::Permissions::from_mode(0o777)).unwrap();
    let back_str = back.to_str().unwrap();

    let out = cp(
        &env,
        &[&format!("nobody@{}:{KEY}", agent.target()), back_str],
    );
    assert_eq!(out.status.code(), Some(255), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("permission-denied"),
        "{}",
        stderr_of(&out)
    );
    assert!(!back.join("tcp_fastopen_key").exists());

    let public = env.root.path().join("public.txt");
    std::fs::write(&public, b"for anyone").unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cp(
        &env,
        &[
            &format!("nobody@{}:{}", agent.target(), public.display()),
            back_str,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(
        std::fs::read(back.join("public.txt")).unwrap(),
        b"for anyone"
    );

    let out = cp(&env, &[&format!("{}:{KEY}", agent.target()), back_str]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(back.join("tcp_fastopen_key").exists());
}
