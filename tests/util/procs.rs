//! The machine's process table and sockets, read from /proc: which
//! commands still run, zombies, accept queues; markers to find them by.

/// Live (not zombie) processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(marker) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state_and_parent(&stat).is_some_and(|(state, _)| state == "Z");
        if !zombie && pid != std::process::id() {
            found.push((pid, cmdline));
        }
    }
    found
}

/// How many `sleep` processes with this argument run (not the shells or
/// ctl whose command lines merely contain it).
pub fn sleeps_running(pattern: &str) -> usize {
    processes_with(pattern)
        .iter()
        .filter(|(_, cmd)| cmd.starts_with("sleep "))
        .count()
}

/// Children of `parent` that have exited but were not reaped (zombies).
pub fn zombie_children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (state, ppid) = state_and_parent(&stat)?;
            (state == "Z" && ppid == parent).then_some(pid)
        })
        .collect()
}

/// A process's state letter and parent pid from its /proc/PID/stat line,
/// where they follow the parenthesised command name.
fn state_and_parent(stat: &str) -> Option<(&str, u32)> {
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// A marker unique to this test run, for finding a command's processes.
pub fn marker(name: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}{}{}", name, std::process::id(), n)
}

/// A `sleep` duration that is unique, so its process can be found by
/// command line: `sleep 600.<digits>`.
pub fn unique_sleep(seconds: u32) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{seconds}.{}{:04}", std::process::id(), n)
}

/// Connections waiting in the accept queue of the IPv4 loopback listener
/// on `port`, from /proc/net/tcp (for a listening socket, the rx_queue
/// column counts them).
pub fn accept_queue(port: u16) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (address, state, queues) = (fields.get(1)?, fields.get(3)?, fields.get(4)?);
        if !address.ends_with(&local) || *state != "0A" {
            return None;
        }
        u32::from_str_radix(queues.split(':').nth(1)?, 16).ok()
    })
}

/// Whether this process runs as root (user switches and mounts need it).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        .unwrap_or(false)
}
