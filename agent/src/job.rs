//! A request's job as the session hands it to exec or copy ([`Job`]), and
//! how each of them talks to its client: the two halves of the connection
//! as typed messages, the closing message, a refusal with its kind, and the
//! short names of client messages that error reports use.

use futures_util::{Sink, SinkExt, Stream};
use rexec_protocol::{AgentMessage, ClientMessage, ErrorReport, FrameError};
use tokio_util::sync::CancellationToken;

use crate::config::AgentSettings;
use crate::limits::ExecSlot;
use crate::run_as::Requester;

/// What the handler of a request (exec, push, pull) works with, once the
/// session has read the request and admitted it.
pub struct Job<'a, I, O> {
    /// Who asked.
    pub requester: Requester<'a>,
    /// The agent's settings.
    pub settings: &'a AgentSettings,
    /// What the client sends from here on.
    pub incoming: &'a mut I,
    /// Where the answer goes.
    pub outgoing: &'a mut O,
    /// The agent's order to end every request now (shutdown past its
    /// grace period).
    pub kill: &'a CancellationToken,
    /// The request's place under the agent's and the client's limits;
    /// exec gives it up as soon as its command is reaped, before the
    /// client hears of the end, so that the client's next request finds it
    /// free.
    pub place: Option<ExecSlot<'a>>,
}

/// What a request reads from its client: typed messages, or why not.
pub trait Incoming: Stream<Item = Result<ClientMessage, FrameError>> + Unpin {}

impl<T> Incoming for T where T: Stream<Item = Result<ClientMessage, FrameError>> + Unpin {}

/// Where a request writes to its client.
pub trait Outgoing: Sink<AgentMessage, Error = FrameError> + Unpin {}

impl<T> Outgoing for T where T: Sink<AgentMessage, Error = FrameError> + Unpin {}

/// Sends the last message and closes the connection's write side.
///
/// # Errors
/// When the client is gone.
pub async fn finish(outgoing: &mut impl Outgoing, last: AgentMessage) -> Result<(), FrameError> {
    outgoing.feed(last).await?;
    outgoing.close().await
}

/// Refuses the request with `refusal` and closes; a client already gone
/// changes nothing. Returns the refusal for the audit log.
pub async fn refuse(outgoing: &mut impl Outgoing, refusal: ErrorReport) -> ErrorReport {
    let _ = finish(outgoing, AgentMessage::Error(refusal.clone())).await;
    refusal
}

/// How the audit log says a request was refused.
pub fn refused(refusal: &ErrorReport) -> String {
    format!("refused ({}): {}", refusal.kind, refusal.message)
}

/// A short name of a client message for error reports.
pub fn name_of(message: &ClientMessage) -> &'static str {
    match message {
        ClientMessage::Hello(_) => "hello",
        ClientMessage::Exec(_) => "exec request",
        ClientMessage::Ping => "ping",
        ClientMessage::Stdin(_) => "stdin",
        ClientMessage::StdinEof => "stdin EOF",
        ClientMessage::Signal(_) => "signal",
        ClientMessage::WindowSize(_) => "window size",
        ClientMessage::Keepalive => "keepalive",
        ClientMessage::Push(_) => "push request",
        ClientMessage::Pull(_) => "pull request",
        ClientMessage::File(_) => "file",
        ClientMessage::FileData(_) => "file data",
        ClientMessage::FileEnd(_) => "file end",
        ClientMessage::CopyEnd => "copy end",
        ClientMessage::Detach(_) => "detach request",
        ClientMessage::Job(_) => "job request",
        _ => "message",
    }
}
