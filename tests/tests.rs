//! End-to-end tests: real `rexec-agent` processes on loopback with fresh
//! identities, driven by the real `ctl` binary.

mod copy;
mod docs;
mod exec;
mod fanout;
mod hostile;
mod nodesets;
mod process;
mod readme;
mod review;
mod select;
mod sources;
mod systemd;
mod trust;
mod util;
