//! The rexec agent: accepts TLS connections from authorized `ctl` clients and
//! runs their commands, streaming output back as it comes.
//!
//! `main.rs` is a thin command line over this library: it builds
//! [`config::AgentSettings`], loads [`state::AgentState`], binds listeners and
//! calls [`server::serve`] with the signal sources wired to
//! [`state::Shutdown`]. Tests can do the same in-process.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod audit;
pub mod authorized;
pub mod broker;
pub mod config;
pub mod config_file;
pub mod copy;
pub mod exec;
pub mod job;
pub mod jobs;
pub mod keepalive;
pub mod limits;
pub mod notify;
pub mod peer;
pub mod pty;
pub mod refusals;
pub mod run_as;
pub mod server;
pub mod session;
pub mod state;
