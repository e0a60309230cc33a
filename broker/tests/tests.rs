//! The carrier against a real `nats-server`: each test starts its own on a
//! loopback port and stops it.

mod util;

mod config;
mod faults;
mod sessions;
mod tls;
