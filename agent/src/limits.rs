//! How many commands may run at once: on the whole agent, and per client.
//!
//! The connection cap (`max_sessions`) is enforced at accept, before any TLS
//! work, so that a flood costs little; it closes excess connections without
//! a word. The limits here apply to authenticated clients asking to run a
//! command, so they can be told precisely why they are turned away.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use rexec_protocol::Fingerprint;

/// Counts running execs against the two limits.
#[derive(Debug)]
pub struct ExecLimits {
    max_total: usize,
    max_per_client: usize,
    running: Mutex<Running>,
}

#[derive(Debug, Default)]
struct Running {
    total: usize,
    per_client: HashMap<Fingerprint, usize>,
}

/// Why an exec was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// The agent runs as many commands as it may.
    #[error("the agent already runs {max} commands, its limit (max_execs); try again later")]
    Agent {
        /// The agent's limit.
        max: usize,
    },
    /// This client runs as many commands as it may.
    #[error(
        "this client already runs {max} commands here, its limit (max_execs_per_client); try again later"
    )]
    Client {
        /// The per-client limit.
        max: usize,
    },
}

/// A place taken by one running exec, given back when dropped.
#[derive(Debug)]
pub struct ExecSlot<'a> {
    limits: &'a ExecLimits,
    client: Fingerprint,
}

impl ExecLimits {
    /// At most `max_total` execs at once, `max_per_client` of them for any
    /// one client.
    pub fn new(max_total: usize, max_per_client: usize) -> Self {
        ExecLimits {
            max_total,
            max_per_client,
            running: Mutex::new(Running::default()),
        }
    }

    /// Takes a place for one exec of `client`, or says which limit is full.
    ///
    /// # Errors
    /// [`Busy`] naming the limit that is reached.
    pub fn acquire(&self, client: Fingerprint) -> Result<ExecSlot<'_>, Busy> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running.total >= self.max_total {
            return Err(Busy::Agent {
                max: self.max_total,
            });
        }
        let mine = running.per_client.entry(client).or_insert(0);
        if *mine >= self.max_per_client {
            return Err(Busy::Client {
                max: self.max_per_client,
            });
        }
        *mine += 1;
        running.total += 1;
        Ok(ExecSlot {
            limits: self,
            client,
        })
    }

    /// How many execs run now.
    pub fn running(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for ExecSlot<'_> {
    fn drop(&mut self) {
        let mut running = self
            .limits
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        running.total = running.total.saturating_sub(1);
        if let Some(mine) = running.per_client.get_mut(&self.client) {
            *mine -= 1;
            if *mine == 0 {
                running.per_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(letter: &str) -> Fingerprint {
        format!("SHA256:{}A", letter.repeat(42)).parse().unwrap()
    }

    #[test]
    fn each_limit_refuses_with_its_own_reason_and_slots_come_back() {
        let limits = ExecLimits::new(3, 2);
        let a1 = limits.acquire(client("A")).unwrap();
        let _a2 = limits.acquire(client("A")).unwrap();
        assert_eq!(
            limits.acquire(client("A")).unwrap_err(),
            Busy::Client { max: 2 }
        );
        let _b1 = limits.acquire(client("B")).unwrap();
        assert_eq!(limits.running(), 3);
        assert_eq!(
            limits.acquire(client("C")).unwrap_err(),
            Busy::Agent { max: 3 }
        );
        drop(a1);
        assert_eq!(limits.running(), 2);
        assert!(
            limits.acquire(client("A")).is_ok(),
            "a freed slot is usable"
        );
    }
}
