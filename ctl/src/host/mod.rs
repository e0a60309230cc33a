//! The per-host jobs, side by side: each opens its connection through
//! `crate::connect`, makes one request, and watches the agent's liveness
//! through `crate::liveness`.
//!
//! [`stream`] is single-target exec, attached to our terminal; [`exec`],
//! [`ping`] and [`copy`] are the jobs the fan-out engine runs for each
//! host of a multi-host command; [`input`] is the stdin they share under
//! `ctl exec -i`.

pub mod copy;
pub mod exec;
pub mod input;
pub mod job;
pub mod ping;
pub mod stream;

use rexec_protocol::{AgentMessage, FrameError};

use crate::error::{ConnectionError, CtlError};

/// An exec's next message, or why none came: the connection broke, or the
/// agent closed it before it reported the command's end.
fn exec_message(next: Option<Result<AgentMessage, FrameError>>) -> Result<AgentMessage, CtlError> {
    match next {
        Some(Ok(message)) => Ok(message),
        Some(Err(e)) => Err(CtlError::lost(&e)),
        None => Err(CtlError::Connection(ConnectionError::Lost(
            "the agent closed the connection before the command finished".into(),
        ))),
    }
}
