//! How much the agent takes on at once: connections still in their
//! handshake ([`Startups`]), and commands, on the whole agent and per client
//! ([`ExecLimits`]).
//!
//! A connection that has not yet proved who it is costs us a descriptor and
//! a timer, and anyone who can reach the port can open one; so, as sshd does
//! with `MaxStartups` and `PerSourceMaxStartups`, such connections have a
//! small budget of their own, apart from the sessions of clients that did
//! prove who they are. The budget is shared out so that no one address can
//! shut out another: an address that already has unfinished handshakes is
//! the one refused, dropped at random early or made to give way, never a
//! newcomer. The exec limits apply to authenticated clients asking to run a
//! command, so they can be told precisely why they are turned away.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use rexec_broker::SessionId;
use rexec_protocol::Fingerprint;
use tokio_util::sync::CancellationToken;

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

/// sshd's `MaxStartups start:rate:full`: from `start` unfinished handshakes
/// on, a new connection from an address that already has one is refused
/// with probability `rate` percent, rising linearly to 100 at `full`; at
/// `full` the budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxStartups {
    /// Unfinished handshakes from which on random early drop starts.
    pub start: usize,
    /// Percent refused at `start`.
    pub rate: u8,
    /// Most unfinished handshakes at once.
    pub full: usize,
}

impl fmt::Display for MaxStartups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.start, self.rate, self.full)
    }
}

/// The text was not `START:RATE:FULL` or `FULL`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid max_startups {0:?}: expected START:RATE:FULL (such as \"10:30:100\") or one number, with 1 <= START <= FULL and RATE at most 100"
)]
pub struct ParseMaxStartupsError(String);

impl FromStr for MaxStartups {
    type Err = ParseMaxStartupsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ParseMaxStartupsError(text.to_owned());
        let numbers: Vec<&str> = text.trim().split(':').collect();
        let parsed = match numbers[..] {
            [full] => {
                let full = full.parse().map_err(|_| err())?;
                MaxStartups {
                    start: full,
                    rate: 100,
                    full,
                }
            }
            [start, rate, full] => MaxStartups {
                start: start.parse().map_err(|_| err())?,
                rate: rate.parse().map_err(|_| err())?,
                full: full.parse().map_err(|_| err())?,
            },
            _ => return Err(err()),
        };
        if parsed.start == 0 || parsed.start > parsed.full || parsed.rate > 100 {
            return Err(err());
        }
        Ok(parsed)
    }
}

impl MaxStartups {
    /// Percent of new connections from a busy address to refuse when
    /// `pending` handshakes are unfinished.
    fn drop_percent(&self, pending: usize) -> u64 {
        if pending < self.start {
            0
        } else if pending >= self.full {
            100
        } else {
            let rate = u64::from(self.rate);
            let span = (self.full - self.start) as u64;
            rate + (100 - rate) * (pending - self.start) as u64 / span
        }
    }
}

/// Where a connection comes from, for the per-source limit and eviction:
/// an IPv4 address, or an IPv6 /48 (one site's usual allocation, as sshd's
/// `PerSourceNetBlockSize` allows: a holder of a /56 has 256 /64s, enough
/// to rotate past any per-/64 limit, but only one /48); or one session
/// through the broker.
///
/// Every broker session arrives over our one connection to the broker,
/// which tells us nothing of who opened it; so each is a source of its
/// own, counted in a budget apart from TCP's (see
/// [`crate::state::AgentState::broker_startups`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(Origin);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Origin {
    Ip(IpAddr),
    Broker(SessionId),
}

/// The IPv6 prefix length one source stands for.
pub const IPV6_PREFIX: u32 = 48;

impl Source {
    /// The source `ip` counts against.
    pub fn of(ip: IpAddr) -> Source {
        Source(Origin::Ip(match ip {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u128::from(v6) & !((1u128 << (128 - IPV6_PREFIX)) - 1);
                    IpAddr::V6(bits.into())
                }
            },
        }))
    }

    /// The source a session through the broker counts against: itself.
    pub fn broker_session(session: SessionId) -> Source {
        Source(Origin::Broker(session))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Origin::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Origin::Ip(IpAddr::V6(v6)) => write!(f, "{v6}/{IPV6_PREFIX}"),
            Origin::Broker(session) => write!(f, "broker session {session}"),
        }
    }
}

/// Why a new connection was closed before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupRefusal {
    /// Its address already has `per_source_max_startups` unfinished.
    PerSource,
    /// Random early drop: its address has unfinished handshakes, and the
    /// agent has `start` or more.
    EarlyDrop,
}

/// Connections that have not finished TLS and sent their request, by source.
#[derive(Debug)]
pub struct Startups {
    policy: MaxStartups,
    per_source: usize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    total: usize,
    by_source: HashMap<Source, VecDeque<Pending>>,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    /// A second descriptor of the connection's socket, to see whether the
    /// peer is still there without touching the session's reads.
    socket: Option<OwnedFd>,
    /// Cancelled when the connection must give way.
    close: CancellationToken,
}

impl Pending {
    /// Whether the peer closed or reset the connection, even with bytes
    /// of it still unread: a peer that stopped sending cannot finish the
    /// handshake.
    fn peer_gone(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let Some(socket) = &self.socket else {
            return false;
        };
        // nix names no POLLRDHUP (the peer shut down its sending side),
        // and its revents() refuses bits it does not know; the C library
        // names it. Asked for nothing else, the socket reports an event
        // only for that, a hang-up or an error: each means the peer is gone.
        let peer_done = PollFlags::from_bits_retain(nix::libc::POLLRDHUP);
        let mut fds = [PollFd::new(socket.as_fd(), peer_done)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }
}

/// What [`Startups::enter`] did to make room.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Made {
    /// The source whose oldest unfinished handshake was closed for this one.
    pub evicted: Option<Source>,
}

/// A connection's place in the startup budget, given back when dropped or
/// when the connection is admitted as a session.
#[derive(Debug)]
pub struct StartupTicket {
    startups: Arc<Startups>,
    source: Source,
    id: u64,
    close: CancellationToken,
}

impl StartupTicket {
    /// Cancelled when this connection has to give way to another.
    pub fn closed(&self) -> CancellationToken {
        self.close.clone()
    }

    /// Gives the place back as the connection leaves its handshake;
    /// `false` when it had already been made to give way.
    pub fn finish(self) -> bool {
        self.startups.leave(self.source, self.id)
    }
}

impl Drop for StartupTicket {
    fn drop(&mut self) {
        self.startups.leave(self.source, self.id);
    }
}

impl Startups {
    /// At most `policy.full` unfinished handshakes at once, `per_source` of
    /// them from any one source.
    pub fn new(policy: MaxStartups, per_source: usize) -> Arc<Startups> {
        Arc::new(Startups {
            policy,
            per_source: per_source.max(1),
            table: Mutex::new(Table::default()),
        })
    }

    /// Takes a place for a new connection from `source` (its socket: `socket`,
    /// when the caller has one), or says why it is refused.
    ///
    /// Peers that have gone are cleared out before anyone is refused, so a
    /// flood that has stopped does not turn away the client after it.
    ///
    /// # Errors
    /// [`StartupRefusal`] naming the limit.
    pub fn enter(
        self: &Arc<Self>,
        source: Source,
        socket: Option<&impl AsFd>,
    ) -> Result<(StartupTicket, Made), StartupRefusal> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut made = Made::default();
        let mine = table.by_source.get(&source).map_or(0, VecDeque::len);
        if mine >= self.per_source && table.clear_gone(Some(source)) >= self.per_source {
            return Err(StartupRefusal::PerSource);
        }
        if mine > 0 && table.total >= self.policy.start {
            let percent = self.policy.drop_percent(table.total);
            if percent > 0 && random_percent() < percent && table.clear_gone(Some(source)) > 0 {
                return Err(StartupRefusal::EarlyDrop);
            }
        }
        if table.total >= self.policy.full {
            table.clear_gone(None);
        }
        if table.total >= self.policy.full {
            made.evicted = table.evict_from_the_busiest();
        }
        let id = table.next_id;
        table.next_id += 1;
        let close = CancellationToken::new();
        table
            .by_source
            .entry(source)
            .or_default()
            .push_back(Pending {
                id,
                socket: socket.and_then(|s| s.as_fd().try_clone_to_owned().ok()),
                close: close.clone(),
            });
        table.total += 1;
        Ok((
            StartupTicket {
                startups: self.clone(),
                source,
                id,
                close,
            },
            made,
        ))
    }

    /// How many connections have not finished their handshake.
    pub fn pending(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// The policy in force.
    pub fn policy(&self) -> (MaxStartups, usize) {
        (self.policy, self.per_source)
    }

    /// Removes the connection `id` of `source`; `false` when it was not
    /// there (it gave way, or left already).
    fn leave(&self, source: Source, id: u64) -> bool {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(queue) = table.by_source.get_mut(&source) else {
            return false;
        };
        let Some(at) = queue.iter().position(|p| p.id == id) else {
            return false;
        };
        queue.remove(at);
        if queue.is_empty() {
            table.by_source.remove(&source);
        }
        table.total -= 1;
        true
    }
}

impl Table {
    /// Removes the connections whose peer has gone, of `source` or of every
    /// source; returns how many `source` (or all sources) still have.
    fn clear_gone(&mut self, source: Option<Source>) -> usize {
        let sources: Vec<Source> = match source {
            Some(source) => vec![source],
            None => self.by_source.keys().copied().collect(),
        };
        for source in sources {
            let Some(queue) = self.by_source.get_mut(&source) else {
                continue;
            };
            let before = queue.len();
            queue.retain(|pending| {
                let gone = pending.peer_gone();
                if gone {
                    pending.close.cancel();
                }
                !gone
            });
            let removed = before - queue.len();
            if queue.is_empty() {
                self.by_source.remove(&source);
            }
            self.total -= removed;
        }
        match source {
            Some(source) => self.by_source.get(&source).map_or(0, VecDeque::len),
            None => self.total,
        }
    }

    /// Closes the oldest unfinished handshake of the source that has the
    /// most (of those, the one waiting longest).
    fn evict_from_the_busiest(&mut self) -> Option<Source> {
        let (&source, _) = self.by_source.iter().max_by(|(_, a), (_, b)| {
            let oldest = |q: &VecDeque<Pending>| q.front().map_or(u64::MAX, |p| p.id);
            a.len()
                .cmp(&b.len())
                .then_with(|| oldest(b).cmp(&oldest(a)))
        })?;
        let queue = self.by_source.get_mut(&source)?;
        let oldest = queue.pop_front()?;
        oldest.close.cancel();
        if queue.is_empty() {
            self.by_source.remove(&source);
        }
        self.total -= 1;
        Some(source)
    }
}

/// A number in 0..100 that an attacker cannot predict, for random early
/// drop; std's hasher keys are seeded from the OS once and stepped on
/// every call.
fn random_percent() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish() % 100
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

    fn source(last: u8) -> Source {
        Source::of(IpAddr::from([192, 0, 2, last]))
    }

    const NO_SOCKET: Option<&OwnedFd> = None;

    fn policy(text: &str) -> MaxStartups {
        text.parse().unwrap()
    }

    #[test]
    fn max_startups_reads_sshd_form_and_one_number() {
        assert_eq!(
            policy("10:30:100"),
            MaxStartups {
                start: 10,
                rate: 30,
                full: 100
            }
        );
        assert_eq!(policy("50").to_string(), "50:100:50");
        for bad in [
            "",
            "0",
            "10:30",
            "10:101:100",
            "20:30:10",
            "a:b:c",
            "1:2:3:4",
        ] {
            assert!(bad.parse::<MaxStartups>().is_err(), "{bad}");
        }
        let p = policy("10:30:100");
        assert_eq!(p.drop_percent(9), 0);
        assert_eq!(p.drop_percent(10), 30);
        assert_eq!(p.drop_percent(55), 65);
        assert_eq!(p.drop_percent(100), 100);
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_48_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:2::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        assert_eq!(Source::of(a).to_string(), "2001:db8:1::/48");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Source::of(mapped), source(7));
    }

    #[test]
    fn one_source_gets_its_share_and_places_come_back() {
        let startups = Startups::new(policy("100"), 2);
        let a1 = startups.enter(source(1), NO_SOCKET).unwrap().0;
        let _a2 = startups.enter(source(1), NO_SOCKET).unwrap().0;
        assert_eq!(
            startups.enter(source(1), NO_SOCKET).unwrap_err(),
            StartupRefusal::PerSource
        );
        assert!(startups.enter(source(2), NO_SOCKET).is_ok());
        drop(a1);
        assert!(startups.enter(source(1), NO_SOCKET).is_ok());
    }

    #[test]
    fn when_full_a_newcomer_takes_the_place_of_the_busiest_sources_oldest() {
        let startups = Startups::new(policy("4"), 3);
        let a: Vec<_> = (0..3)
            .map(|_| startups.enter(source(1), NO_SOCKET).unwrap().0)
            .collect();
        let b = startups.enter(source(2), NO_SOCKET).unwrap().0;
        assert_eq!(startups.pending(), 4);
        // Source 2 already has one, and the budget is spent.
        assert_eq!(
            startups.enter(source(2), NO_SOCKET).unwrap_err(),
            StartupRefusal::EarlyDrop
        );
        let (_c, made) = startups.enter(source(3), NO_SOCKET).unwrap();
        assert_eq!(made.evicted, Some(source(1)));
        assert!(a[0].closed().is_cancelled(), "the oldest of the busiest");
        assert!(!a[1].closed().is_cancelled());
        assert!(!b.closed().is_cancelled());
        assert_eq!(startups.pending(), 4);
        // Source 1 and 2 now have two and one: 1 gives way again.
        let (_d, made) = startups.enter(source(4), NO_SOCKET).unwrap();
        assert_eq!(made.evicted, Some(source(1)));
        assert!(a[1].closed().is_cancelled());
        // One that gave way cannot become a session; one that did not can.
        let mut a = a.into_iter();
        assert!(!a.next().unwrap().finish());
        assert!(!a.next().unwrap().finish());
        assert!(a.next().unwrap().finish());
        assert_eq!(startups.pending(), 3);
    }

    #[test]
    fn random_early_drop_spares_sources_without_unfinished_handshakes() {
        let startups = Startups::new(policy("2:100:1000"), 1000);
        let _a = startups.enter(source(1), NO_SOCKET).unwrap();
        let _b = startups.enter(source(2), NO_SOCKET).unwrap();
        // Past start at a rate of 100 percent: every connection from a
        // source that has one is dropped, none from a new source.
        for _ in 0..20 {
            assert_eq!(
                startups.enter(source(1), NO_SOCKET).unwrap_err(),
                StartupRefusal::EarlyDrop
            );
        }
        let fresh: Vec<_> = (3..20)
            .map(|last| startups.enter(source(last), NO_SOCKET).unwrap())
            .collect();
        assert_eq!(startups.pending(), 19);
        drop(fresh);
        assert_eq!(startups.pending(), 2);
    }

    #[test]
    fn a_connection_whose_peer_has_gone_gives_way_before_anyone_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let startups = Startups::new(policy("100"), 1);
        let flooder = std::net::TcpStream::connect(addr).unwrap();
        let (held, _) = listener.accept().unwrap();
        let (ticket, _) = startups.enter(source(1), Some(&held)).unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (next, _) = listener.accept().unwrap();
        assert_eq!(
            startups.enter(source(1), Some(&next)).unwrap_err(),
            StartupRefusal::PerSource,
            "the flooder is still there"
        );
        // Bytes it sent and nobody read do not make it any less gone.
        std::io::Write::write_all(&mut &flooder, &[0x16]).unwrap();
        drop(flooder);
        // The flooder's end of file is waiting on `held` when the next
        // connection asks; no session task had to read it first.
        let (_ticket, _) = startups.enter(source(1), Some(&next)).unwrap();
        assert!(ticket.closed().is_cancelled());
        assert_eq!(startups.pending(), 1);
    }

    /// A holder of a /56 rotating through its 256 /64s is one source: it
    /// meets the per-source limit, and making room evicts its own oldest
    /// rather than the place of a client elsewhere.
    #[test]
    fn a_56_rotating_through_its_64s_is_one_source_for_limit_and_eviction() {
        let from = |ip: &str| Source::of(ip.parse::<IpAddr>().unwrap());
        let enter = |startups: &Arc<Startups>, ip: &str| startups.enter(from(ip), NO_SOCKET);
        // Two of the /56's /64s, each holding a place.
        let rotated = |startups: &Arc<Startups>| {
            [
                enter(startups, "2001:db8:7:1100::1").unwrap(),
                enter(startups, "2001:db8:7:1101::1").unwrap(),
            ]
        };

        let startups = Startups::new(policy("10"), 2);
        let _held = rotated(&startups);
        assert_eq!(
            enter(&startups, "2001:db8:7:11ff::1").unwrap_err(),
            StartupRefusal::PerSource
        );

        let startups = Startups::new(policy("3"), 3);
        let _client = enter(&startups, "2001:db8:1::1").unwrap();
        let _held = rotated(&startups);
        let (_next, made) = enter(&startups, "2001:db8:2::1").unwrap();
        assert_eq!(made.evicted, Some(from("2001:db8:7:1100::1")));
    }

    #[test]
    fn sessions_through_the_broker_are_never_refused_per_source_and_the_oldest_gives_way() {
        // As the agent sets up its broker budget: each session is its own
        // source, so only the total counts.
        let policy: MaxStartups = "4:30:8".parse().unwrap();
        let startups = Startups::new(policy, 1);
        let session = |n: u8| {
            let mut hex = format!("{n:02x}");
            hex.push_str(&"0".repeat(30));
            Source::broker_session(SessionId::parse(&hex).unwrap())
        };
        let mut held = Vec::new();
        for n in 0..8 {
            let (ticket, made) = startups.enter(session(n), NO_SOCKET).unwrap();
            assert_eq!(made.evicted, None, "session {n}");
            held.push(ticket);
        }
        // A flood past the total makes the oldest unfinished one give way,
        // never a refusal.
        let (_ninth, made) = startups.enter(session(8), NO_SOCKET).unwrap();
        assert_eq!(made.evicted, Some(session(0)));
        assert!(held[0].closed().is_cancelled());
        assert_eq!(startups.pending(), 8);
        assert_eq!(
            session(1).to_string(),
            "broker session 01000000000000000000000000000000"
        );
    }
}
