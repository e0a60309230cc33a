//! The carrier alone, through one real `nats-server` on loopback: the
//! throughput of one stream (1 GiB, agent → ctl) and the time to open a
//! session (ctl's `dial` until it returns, with the agent accepting).
//! Plaintext over the carrier, no TLS: this measures the carrier, not the
//! session. Run with `bench/broker.sh` (release build).

#[path = "peak_rss.rs"]
mod peak_rss;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rexec_broker::{BrokerOptions, Carrier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server, stopped and reaped however the bench ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(dir: &std::path::Path) -> (Server, String) {
    let ports = dir.join("ports");
    std::fs::create_dir_all(&ports).expect("ports dir");
    let config = dir.join("nats-server.conf");
    std::fs::write(
        &config,
        format!(
            "host: 127.0.0.1\nport: -1\nhttp: \"127.0.0.1:-1\"\nports_file_dir: \"{}\"\n",
            ports.display()
        ),
    )
    .expect("config");
    let child = Server(
        Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server installed"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = std::fs::read_dir(&ports)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["nats"][0].as_str().map(str::to_owned));
        if let Some(url) = found {
            return (child, url);
        }
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_server, url) = start_server(dir.path());
    let agent = Carrier::connect(BrokerOptions::new([url.clone()]))
        .await
        .expect("agent");
    let ctl = Carrier::connect(BrokerOptions::new([url]))
        .await
        .expect("ctl");
    let mut listener = agent.listen("bench").await.expect("listen");
    let accepter = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Some(stream) = listener.accept().await {
            streams.push(stream);
            if streams.len() > 64 {
                streams.remove(0);
            }
        }
    });

    // Open latency: 500 dials one after another (after 20 to warm up).
    let mut times = Vec::new();
    for i in 0..520 {
        let started = Instant::now();
        let stream = ctl.dial("bench").await.expect("dial");
        if i >= 20 {
            times.push(started.elapsed());
        }
        drop(stream);
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "open: {} dials, median {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
        times.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    );
    accepter.abort();

    // Throughput: 1 GiB agent → ctl through one stream, three runs.
    const TOTAL: u64 = 1 << 30;
    for run in 1..=3 {
        let mut listener = agent.listen(&format!("bench{run}")).await.expect("listen");
        let mut reader = ctl.dial(&format!("bench{run}")).await.expect("dial");
        let mut writer = listener.accept().await.expect("accept");
        let started = Instant::now();
        let write = tokio::spawn(async move {
            let chunk = vec![0xa5u8; 256 * 1024];
            let mut sent = 0;
            while sent < TOTAL {
                writer.write_all(&chunk).await.expect("write");
                sent += chunk.len() as u64;
            }
            writer.shutdown().await.expect("shutdown");
        });
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            let n = reader.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        write.await.expect("writer");
        let took = started.elapsed();
        assert_eq!(got, TOTAL);
        println!(
            "throughput run {run}: 1 GiB in {:.2} s = {:.0} MB/s",
            took.as_secs_f64(),
            TOTAL as f64 / took.as_secs_f64() / 1e6
        );
    }
    println!(
        "bench process peak RSS (agent and ctl carriers together): {} MiB",
        peak_rss::peak_rss_kib() / 1024
    );
}
