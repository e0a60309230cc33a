//! End-to-end tests: real `rexec-agent` processes on loopback with fresh
//! identities, driven by the real `ctl` binary.

mod broker_agent;
mod broker_ctl;
mod broker_mode;
mod copy;
mod docs;
mod exec;
mod fanout;
mod gather;
mod hostile;
mod input;
mod jobs;
mod nodesets;
mod process;
mod readme;
mod review;
mod select;
mod sources;
mod spawn;
mod systemd;
mod trust;
mod util;
