//! One command on one of many hosts: the job the engine runs per target for
//! `ctl exec` with several targets. Output chunks go to the run's
//! [`Output`] as they arrive, tagged with the host; the remote exit status
//! is the job's result.
//!
//! With `-i` every host gets the same stdin from a [`SharedInput`], at its
//! own pace. There is no signal forwarding here: several hosts share our
//! terminal, so Ctrl-C ends the whole run (the engine drops every
//! connection, and each agent kills its command's process group).
//!
//! Sending (stdin, keepalive answers) is polled beside the reading, never
//! awaited in its place, so that a command slow to read its stdin never
//! stops us from reading its output; both live in this job's future and
//! end with it.

use std::sync::Arc;

use rexec_protocol::{AgentMessage, ClientMessage, ExecRequest, ExitStatus};
use tokio::sync::mpsc;

use super::input::SharedInput;
use super::stream::{send_loop, stdin_room};
use crate::connect::{self, Client};
use crate::console::Stream;
use crate::error::CtlError;
use crate::liveness::Liveness;
use crate::output::Output;
use crate::target::Target;

/// Runs `request` on `target`, reporting output to `output` as host `index`
/// and feeding it `stdin` when given.
///
/// # Errors
/// When the command could not be run or its end was not reported.
pub async fn run(
    client: Arc<Client>,
    target: Target,
    request: ExecRequest,
    index: usize,
    output: Arc<dyn Output<ExitStatus>>,
    stdin: Option<Arc<SharedInput>>,
) -> Result<ExitStatus, CtlError> {
    let no_answer = crate::liveness::no_answer_bound(request.timeout, client.connect_timeout);
    let session = connect::open(&client, &target, ClientMessage::Exec(request)).await?;
    let mut incoming = session.connection.incoming;
    let (data_tx, data_rx) = mpsc::channel(4);
    let (urgent_tx, urgent_rx) = mpsc::channel(4);
    let room = stdin_room();
    let sender = send_loop(
        session.connection.outgoing,
        data_rx,
        urgent_rx,
        room.clone(),
    );
    tokio::pin!(sender);
    let mut sending = true;
    let feeder = async move {
        match stdin {
            Some(input) => input.feed(data_tx).await,
            None => drop(data_tx),
        }
    };
    tokio::pin!(feeder);
    let mut feeding = true;
    let mut alive = Liveness::answering_within(no_answer);
    loop {
        let message = tokio::select! {
            message = alive.next(&mut incoming) => message?,
            () = &mut sender, if sending => {
                // The connection no longer takes messages; the reading side
                // reports how it ended.
                sending = false;
                continue;
            }
            () = &mut feeder, if feeding => {
                feeding = false;
                continue;
            }
        };
        let message = super::exec_message(message)?;
        match message {
            AgentMessage::Started { keepalive, .. } => alive.started(keepalive),
            AgentMessage::Stdout(chunk) => output.chunk(index, Stream::Stdout, &chunk),
            AgentMessage::Stderr(chunk) => output.chunk(index, Stream::Stderr, &chunk),
            AgentMessage::StdinTaken(bytes) => room.add_permits(bytes as usize),
            AgentMessage::Keepalive => {
                let _ = urgent_tx.try_send(ClientMessage::Keepalive);
            }
            AgentMessage::Exit(status) => return Ok(status),
            AgentMessage::Error(report) => return Err(CtlError::Agent(report)),
            other => {
                return Err(CtlError::unexpected(&other));
            }
        }
    }
}
