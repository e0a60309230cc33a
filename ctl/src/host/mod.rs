//! The per-host jobs, side by side: each opens its connection through
//! `crate::connect`, makes one request, and watches the agent's liveness
//! through `crate::liveness`.
//!
//! [`stream`] is single-target exec, attached to our terminal; [`exec`],
//! [`ping`] and [`copy`] are the jobs the fan-out engine runs for each
//! host of a multi-host command.

pub mod copy;
pub mod exec;
pub mod ping;
pub mod stream;
