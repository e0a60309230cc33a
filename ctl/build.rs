//! Links ctl's unwinder (the one that runs a panic's unwinding) into the
//! binary from the C compiler's `libgcc_eh.a` instead of loading
//! `libgcc_s.so.1` at start: one shared library fewer for ld.so to find,
//! map and relocate on every call, about 0.05–0.08 ms of CPU of each
//! `ctl` run and 8 page faults fewer (BENCHMARKS.md, "ctl's start-up and
//! the handshake"). This is what `gcc -static-libgcc` does for C programs;
//! ctl loads no library that throws through its frames, so one unwinder of
//! its own is enough. Where the archive cannot be found (another C
//! compiler, another target), ctl links libgcc_s as before.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let static_crt = var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    // A static build links the unwinder statically already; other
    // targets' unwinders are not libgcc's; and `cc` is the host's
    // compiler, whose archive is only right for a native build.
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || static_crt
        || var("TARGET") != var("HOST")
    {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    let archive = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // Without the archive the compiler answers with the bare name.
    if !out.status.success() || !archive.is_absolute() || !archive.is_file() {
        return;
    }
    if let Some(dir) = archive.parent() {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=static=gcc_eh");
    }
}
