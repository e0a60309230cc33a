//! `broker-relay`: serves an agent name on a NATS broker by relaying each
//! session opened to it, byte for byte, to a real agent's TCP port, and
//! answers discovery for that name. The TLS session stays end to end
//! between ctl and the agent; the relay sees ciphertext only, as the
//! broker does.
//!
//! A test double for ctl's broker mode (tests/broker_ctl.rs): it lets ctl's
//! side be driven against the real agent binary and a real nats-server,
//! independently of the agent's own broker side.
//!
//! ```text
//! broker-relay nats://127.0.0.1:4222 NAME 127.0.0.1:7722 SHA256:... [PREFIX]
//! ```
//! It prints `serving NAME` on stdout once it listens, and runs until killed.

use std::io::Write;

use rexec_broker::{Announcement, BrokerOptions, Carrier};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, name, agent, fingerprint, rest @ ..] = args.as_slice() else {
        eprintln!("usage: broker-relay URL NAME AGENT_ADDR FINGERPRINT [PREFIX]");
        std::process::exit(2);
    };
    let mut options = BrokerOptions::new(BrokerOptions::split_urls(url));
    if let Some(prefix) = rest.first() {
        options.subject_prefix = prefix.clone();
    }
    options.client_name = Some(format!("relay {name}"));
    let carrier = match Carrier::connect(options).await {
        Ok(carrier) => carrier,
        Err(e) => {
            eprintln!("broker-relay: {e}");
            std::process::exit(1);
        }
    };
    let mut listener = carrier.listen(name).await.expect("listen");
    let _announced = carrier
        .announce(Announcement {
            name: name.clone(),
            fingerprint: fingerprint.clone(),
            version: "relay 0.1.0".to_owned(),
        })
        .await
        .expect("announce");
    println!("serving {name}");
    let _ = std::io::stdout().flush();
    while let Some(mut stream) = listener.accept().await {
        let agent = agent.clone();
        tokio::spawn(async move {
            let Ok(mut tcp) = tokio::net::TcpStream::connect(&agent).await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
        });
    }
}
