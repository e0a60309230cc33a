//! One command on one of many hosts: the job the engine runs per target for
//! `ctl exec` with several targets. Output chunks go to the run's
//! [`Output`] as they arrive, tagged with the host; the remote exit status
//! is the job's result.
//!
//! There is no stdin and no signal forwarding here: several hosts share our
//! terminal, so Ctrl-C ends the whole run (the engine drops every
//! connection, and each agent kills its command's process group).

use std::sync::Arc;

use futures_util::SinkExt;
use rexec_protocol::{AgentMessage, ClientMessage, ExecRequest, ExitStatus, FrameError};

use crate::connect::{self, Client};
use crate::console::Stream;
use crate::error::CtlError;
use crate::liveness::Liveness;
use crate::output::Output;
use crate::target::Target;

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
    let session = connect::open(&client, &target, ClientMessage::Exec(request)).await?;
    let mut incoming = session.connection.incoming;
    let mut outgoing = session.connection.outgoing;
    let lost = |e: FrameError| CtlError::lost(&e);
    let mut alive = Liveness::new();
    loop {
        let message = super::exec_message(alive.next(&mut incoming).await?)?;
        match message {
            AgentMessage::Started { keepalive, .. } => alive.started(keepalive),
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
