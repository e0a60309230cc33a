//! `ctl ping`: the handshake and one round trip per host, to check that a
//! fleet's agents are up, trust us, and run which version.
//!
//! The round trip is timed from sending our hello and the ping (one write)
//! to reading the agent's pong; the connect time (TCP and TLS) is reported
//! apart, since it depends on the network and on TLS session setup.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rexec_protocol::{AgentMessage, ClientMessage};
use serde_json::{Map, Value, json};

use crate::connect::{self, Client};
use crate::error::{ConnectionError, CtlError};
use crate::outcome::Finished;
use crate::output::{Describe, millis, no_exit};
use crate::target::Target;

/// A host that answered.
#[derive(Debug, Clone)]
pub struct Pong {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// Hello and ping out, hello and pong back.
    pub round_trip: Duration,
    /// The agent's software and version, from its hello.
    pub agent: String,
}

impl Finished for Pong {}

impl Describe for Pong {
    fn describe(&self, record: &mut Map<String, Value>) {
        record.insert("status".into(), json!("answered"));
        no_exit(record);
        record.insert("connect_ms".into(), json!(millis(self.connect)));
        record.insert("latency_ms".into(), json!(millis(self.round_trip)));
        record.insert("agent".into(), json!(self.agent));
    }
}

impl Pong {
    /// `0.21 ms (connect 1.30 ms), rexec-agent 0.1.0`
    pub fn line(&self) -> String {
        format!(
            "{:.2} ms (connect {:.2} ms), {}",
            millis(self.round_trip),
            millis(self.connect),
            self.agent
        )
    }
}

/// Pings `target`.
///
/// # Errors
/// When the host cannot be reached or does not answer as the protocol says.
pub async fn ping(client: &Client, target: &Target) -> Result<Pong, CtlError> {
    let started = Instant::now();
    let connection = client.connect(target).await?;
    let connect = started.elapsed();
    let sent = Instant::now();
    let session = connect::greet(client, connection, ClientMessage::Ping).await?;
    let mut incoming = session.connection.incoming;
    match incoming.next().await {
        Some(Ok(AgentMessage::Pong)) => Ok(Pong {
            connect,
            round_trip: sent.elapsed(),
            agent: crate::plain::agent_text(&session.hello.software),
        }),
        Some(Ok(AgentMessage::Error(report))) => Err(CtlError::Agent(report)),
        Some(Ok(other)) => Err(CtlError::unexpected(&other)),
        Some(Err(e)) => Err(CtlError::lost(&e)),
        None => Err(CtlError::Connection(ConnectionError::Lost(
            "the agent closed the connection without answering".into(),
        ))),
    }
}
