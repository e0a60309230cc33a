//! fork + pre_exec against std's posix_spawn for tokio::process::Command in a
//! process shaped like the agent (multi-thread runtime, 6 MiB resident).
//! Not part of the workspace: build it in a scratch crate with
//! `tokio = { version = "1", features = ["rt-multi-thread", "process", "macros", "time"] }`
//! and run `spawn_paths 500`.
use std::os::unix::process::CommandExt as _;
use std::time::{Duration, Instant};
use tokio::process::Command;

fn q(v: &mut Vec<Duration>, p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // About the agent's resident memory.
    let ballast: Vec<u8> = vec![1u8; 6 << 20];
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let (mut fork_spawn, mut fork_total, mut ps_spawn, mut ps_total) = (vec![], vec![], vec![], vec![]);
    for i in 0..2 * n {
        let use_fork = (i % 2 == 0) ^ ((i / 2) % 2 == 0);
        let mut c = Command::new("/bin/true");
        c.env_clear().env("PATH", "/bin").current_dir("/tmp")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if use_fork {
            unsafe {
                c.pre_exec(|| {
                    nix_setsid();
                    Ok(())
                });
            }
        } else {
            c.process_group(0);
        }
        let t0 = Instant::now();
        let child = c.spawn().unwrap();
        let t1 = Instant::now();
        let _ = child.wait_with_output().await.unwrap();
        let t2 = Instant::now();
        if use_fork { fork_spawn.push(t1 - t0); fork_total.push(t2 - t0); } else { ps_spawn.push(t1 - t0); ps_total.push(t2 - t0); }
    }
    std::hint::black_box(&ballast);
    for (name, s, t) in [("fork+pre_exec", &mut fork_spawn, &mut fork_total), ("posix_spawn", &mut ps_spawn, &mut ps_total)] {
        println!("{name}: spawn() median {:.0} us p10 {:.0} us; spawn..exit median {:.0} us p10 {:.0} us (n={})", q(s, 0.5), q(s, 0.1), q(t, 0.5), q(t, 0.1), s.len());
    }
}

fn nix_setsid() {
    extern "C" { fn setsid() -> i32; }
    unsafe { setsid(); }
}
