//! One command on one of many hosts: the job the engine runs per target for
//! `ctl exec` with several targets. Output chunks go to the run's
//! [`Output`] as they arrive, tagged with the host; the remote exit status
//! is the job's result.
//!
//! There is no stdin and no signal forwarding here: several hosts share our
//! terminal, so Ctrl-C ends the whole run (the engine drops every
//! connection, and each agent kills its command's process group).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rexec_protocol::{AgentMessage, ClientMessage, ExecRequest, ExitStatus, FrameError};

use crate::connect::Client;
use crate::error::CtlError;
use crate::fanout;
use crate::output::{Output, Stream};
use crate::target::Target;

/// Keepalive intervals of silence after which the agent counts as gone.
const SILENT_INTERVALS: u32 = 3;
/// The least silence taken as a gone agent, however short its interval.
const MIN_SILENCE: Duration = Duration::from_secs(2);

/// Runs `request` on `target`, reporting output to `output` as host `index`.
///
/// # Errors
/// When the command could not be run or its end was not reported.
pub async fn run(
    client: Arc<Client>,
    target: Target,
    request: ExecRequest,
    index: usize,
    output: Arc<dyn Output<ExitStatus>>,
) -> Result<ExitStatus, CtlError> {
    let session = fanout::open(&client, &target, ClientMessage::Exec(request)).await?;
    let mut incoming = session.connection.incoming;
    let mut outgoing = session.connection.outgoing;
    let lost = |e: FrameError| CtlError::lost(&e);
    // Until the agent says how often it will speak, wait as long as it takes:
    // a command may be silent for hours.
    let mut silence: Option<Duration> = None;
    loop {
        let next = match silence {
            Some(limit) => match tokio::time::timeout(limit, incoming.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return Err(CtlError::ConnectionLost(format!(
                        "the agent sent nothing for {}",
                        humantime::format_duration(limit)
                    )));
                }
            },
            None => incoming.next().await,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(CtlError::lost(&e)),
            None => {
                return Err(CtlError::ConnectionLost(
                    "the agent closed the connection before the command finished".into(),
                ));
            }
        };
        match message {
            AgentMessage::Started { keepalive, .. } => {
                // The interval comes from the agent: bounded both ways.
                silence = keepalive.map(|k| {
                    k.saturating_mul(SILENT_INTERVALS)
                        .clamp(MIN_SILENCE, crate::MAX_DURATION)
                });
            }
            AgentMessage::Stdout(chunk) => output.chunk(index, Stream::Stdout, &chunk),
            AgentMessage::Stderr(chunk) => output.chunk(index, Stream::Stderr, &chunk),
            AgentMessage::Keepalive => {
                outgoing
                    .send(ClientMessage::Keepalive)
                    .await
                    .map_err(lost)?;
            }
            AgentMessage::Exit(status) => return Ok(status),
            AgentMessage::Error(report) => return Err(CtlError::Agent(report)),
            other => {
                return Err(CtlError::unexpected(&other));
            }
        }
    }
}
