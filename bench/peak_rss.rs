//! The benchmark examples' memory figure, shared by `broker_sim.rs` and
//! `broker_stream.rs` (each includes this file as a module).

/// This process's peak resident set, in KiB (0 where /proc says nothing).
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
