//! Sequencing and credit for one stream, as plain state without I/O, so the
//! rules can be tested beside the code.
//!
//! Rules (both directions alike):
//! - Every message a side publishes on its subject has the next sequence
//!   number, from 0. The receiver accepts only the number it expects; any
//!   other ends the stream (`lost`): a gap, a duplicate and a reordering
//!   all look like that.
//! - Credit is counted in bytes. A data message costs its payload plus a
//!   fixed overhead for the subject and framing ([`message_cost`]), so many
//!   tiny messages cannot slip past a byte budget. Only data costs credit;
//!   end, credit and reset messages are free, and a side sends them only in
//!   answer to something (consumption, a timer, closing), never in bulk.
//! - The receiver holds a window of bytes reserved from its connection's
//!   budget. At the start the whole window is the peer's credit. Whenever
//!   the space that is neither buffered nor promised reaches half the
//!   window, it is granted to the peer, riding on the next outgoing message
//!   or in a credit message of its own.
//! - A window grows (doubling, up to [`MAX_WINDOW`], as far as the
//!   connection's budget allows beyond a reserve kept for new streams'
//!   start windows) when the sender has used up its credit while our
//!   reader is keeping up; it never grows for a reader that lags, so a
//!   stopped reader holds at most one window.

use crate::error::LostReason;
use crate::wire::{HEADER_LEN, Header, Kind};

/// A new stream's window in each direction, in bytes. Small, so that a ctl
/// holding 10,000 sessions reserves 20 MiB; busy streams grow.
pub const INITIAL_WINDOW: u32 = 2048;

/// The largest window one stream grows to. Measured through one
/// nats-server on loopback (bench/broker.sh): 2 MiB gave about 300 MB/s,
/// 4 MiB about 400, 8 MiB about 480 for one stream.
pub const MAX_WINDOW: u32 = 8 * 1024 * 1024;

/// The NATS client's per-subscription buffer, in messages, that we set.
pub const SUBSCRIPTION_CAPACITY: usize = 1 << 18;

/// Bytes a data message costs beyond its payload, for a message published
/// on `subject`: our header, the subject, and the server's `MSG` line
/// (`MSG <subject> <sid> <size>\r\n…\r\n`, with room for long numbers).
pub fn message_cost(subject_len: usize, payload_len: usize) -> u32 {
    let overhead = HEADER_LEN + subject_len + 40;
    u32::try_from(payload_len + overhead).unwrap_or(u32::MAX)
}

/// The receiving half's state: what the peer may still send us.
#[derive(Debug)]
pub struct Inbound {
    next_seq: u64,
    /// Bytes reserved for this stream from the connection's budget.
    window: u32,
    /// Credit the peer still holds.
    peer_credit: u32,
    /// Cost of messages received and not yet read by the application.
    buffered: u32,
    ended: bool,
}

/// What an accepted inbound message asks of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The message's header.
    pub header: Header,
    /// The cost charged for it (0 unless data).
    pub cost: u32,
    /// The sender used up its credit while the reader keeps up: a larger
    /// window would help.
    pub wants_growth: bool,
}

impl Inbound {
    /// A receiver whose peer starts with `window` bytes of credit.
    pub fn new(window: u32) -> Inbound {
        Inbound {
            next_seq: 0,
            window,
            peer_credit: window,
            buffered: 0,
            ended: false,
        }
    }

    /// Checks one message against the rules and charges it.
    ///
    /// # Errors
    /// The reason the stream must end.
    pub fn accept(&mut self, header: Header, cost: u32) -> Result<Accepted, LostReason> {
        if header.seq != self.next_seq {
            return Err(LostReason::OutOfSequence {
                expected: self.next_seq,
                got: header.seq,
            });
        }
        self.next_seq += 1;
        let mut accepted = Accepted {
            header,
            cost: 0,
            wants_growth: false,
        };
        match header.kind {
            Kind::Data => {
                if self.ended {
                    return Err(LostReason::AfterEnd);
                }
                if cost > self.peer_credit {
                    return Err(LostReason::OverCredit);
                }
                let lagging = self.buffered > self.window / 2;
                self.peer_credit -= cost;
                self.buffered += cost;
                accepted.cost = cost;
                accepted.wants_growth =
                    !lagging && self.peer_credit < cost && self.window < MAX_WINDOW;
            }
            Kind::End => {
                if self.ended {
                    return Err(LostReason::AfterEnd);
                }
                self.ended = true;
            }
            Kind::Credit => {}
            Kind::Reset => return Err(LostReason::PeerReset),
        }
        Ok(accepted)
    }

    /// The application has read a whole message of this cost.
    pub fn consumed(&mut self, cost: u32) {
        self.buffered = self.buffered.saturating_sub(cost);
    }

    /// `extra` more bytes were reserved for this stream.
    pub fn grow(&mut self, extra: u32) {
        self.window = self.window.saturating_add(extra);
    }

    /// The window now.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// The growth step worth asking for now: double, capped at the maximum.
    pub fn growth_step(&self) -> u32 {
        self.window.min(MAX_WINDOW.saturating_sub(self.window))
    }

    /// Space neither buffered nor promised to the peer.
    fn free(&self) -> u32 {
        self.window
            .saturating_sub(self.peer_credit)
            .saturating_sub(self.buffered)
    }

    /// Whether a grant is due (half the window is free, and the peer is
    /// still sending).
    pub fn grant_due(&self) -> bool {
        !self.ended && self.free() > 0 && self.free() >= self.window / 2
    }

    /// Takes the grant that is due, if any, and counts it as promised.
    pub fn take_grant(&mut self) -> u32 {
        if !self.grant_due() {
            return 0;
        }
        let grant = self.free();
        self.peer_credit += grant;
        grant
    }
}

/// The sending half's state: the credit we hold.
#[derive(Debug)]
pub struct Outbound {
    next_seq: u64,
    credit: u64,
}

/// More credit than any window could ever give: a peer claiming it is
/// broken or hostile.
const CREDIT_CEILING: u64 = 1 << 40;

impl Outbound {
    /// A sender that starts with `credit` bytes.
    pub fn new(credit: u32) -> Outbound {
        Outbound {
            next_seq: 0,
            credit: u64::from(credit),
        }
    }

    /// Adds a grant from the peer.
    ///
    /// # Errors
    /// [`LostReason::OverCredit`] when the total becomes absurd.
    pub fn add_grant(&mut self, grant: u32) -> Result<(), LostReason> {
        self.credit += u64::from(grant);
        if self.credit > CREDIT_CEILING {
            return Err(LostReason::OverCredit);
        }
        Ok(())
    }

    /// How much payload one message may carry now (0: wait for credit).
    pub fn sendable(&self, subject_len: usize, max: usize) -> usize {
        let overhead = u64::from(message_cost(subject_len, 0));
        let room = self.credit.saturating_sub(overhead);
        usize::try_from(room).unwrap_or(usize::MAX).min(max)
    }

    /// Charges a data message of `payload_len` bytes.
    pub fn charge(&mut self, subject_len: usize, payload_len: usize) {
        let cost = u64::from(message_cost(subject_len, payload_len));
        self.credit = self.credit.saturating_sub(cost);
    }

    /// The sequence number of the next message we publish (and advances it).
    pub fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seq: u64) -> Header {
        Header {
            kind: Kind::Data,
            seq,
            grant: 0,
        }
    }

    #[test]
    fn gaps_duplicates_and_reorderings_end_the_stream() {
        /// A fresh stream that takes `before` in order, then `next`.
        fn after(before: &[u64], next: u64) -> Result<Accepted, LostReason> {
            let mut inbound = Inbound::new(1 << 20);
            for &seq in before {
                inbound.accept(data(seq), 10).unwrap();
            }
            inbound.accept(data(next), 10)
        }
        // A duplicate, then a reordering.
        for (before, got, expected) in [(&[0][..], 0, 1), (&[], 1, 0)] {
            assert_eq!(
                after(before, got),
                Err(LostReason::OutOfSequence { expected, got })
            );
        }
        // A gap.
        assert!(after(&[0, 1], 3).is_err());
    }

    #[test]
    fn data_beyond_the_credit_ends_the_stream() {
        let mut inbound = Inbound::new(100);
        inbound.accept(data(0), 60).unwrap();
        assert_eq!(inbound.accept(data(1), 41), Err(LostReason::OverCredit));
    }

    #[test]
    fn a_reset_or_data_after_the_end_ends_the_stream() {
        let mut inbound = Inbound::new(100);
        let end = Header {
            kind: Kind::End,
            seq: 0,
            grant: 0,
        };
        inbound.accept(end, 0).unwrap();
        assert_eq!(inbound.accept(data(1), 10), Err(LostReason::AfterEnd));
        let mut inbound = Inbound::new(100);
        let reset = Header {
            kind: Kind::Reset,
            seq: 0,
            grant: 0,
        };
        assert_eq!(inbound.accept(reset, 0), Err(LostReason::PeerReset));
    }

    #[test]
    fn credit_is_granted_back_only_as_the_reader_consumes() {
        let mut inbound = Inbound::new(1000);
        assert_eq!(inbound.take_grant(), 0, "the peer already holds the window");
        inbound.accept(data(0), 400).unwrap();
        inbound.accept(data(1), 400).unwrap();
        assert_eq!(inbound.take_grant(), 0, "nothing read yet");
        inbound.consumed(400);
        assert_eq!(inbound.take_grant(), 0, "less than half the window is free");
        inbound.consumed(400);
        assert_eq!(inbound.take_grant(), 800);
        // What was granted is the peer's again, never more than the window.
        inbound.accept(data(2), 1000).unwrap();
        assert_eq!(inbound.accept(data(3), 1), Err(LostReason::OverCredit));
    }

    #[test]
    fn the_window_grows_for_a_stalled_sender_not_for_a_lagging_reader() {
        let mut inbound = Inbound::new(1000);
        let accepted = inbound.accept(data(0), 1000).unwrap();
        assert!(
            accepted.wants_growth,
            "the sender is out of credit, the reader keeps up"
        );
        assert_eq!(inbound.growth_step(), 1000);
        inbound.grow(1000);
        assert_eq!(inbound.window(), 2000);
        // Reader has not read the 1000 buffered; 1000 free is half: granted.
        assert_eq!(inbound.take_grant(), 1000);
        inbound.accept(data(1), 500).unwrap();
        let accepted = inbound.accept(data(2), 500).unwrap();
        assert!(!accepted.wants_growth, "the reader lags: no growth");

        let mut big = Inbound::new(MAX_WINDOW);
        let accepted = big.accept(data(0), MAX_WINDOW).unwrap();
        assert!(!accepted.wants_growth, "already at the maximum");
        assert_eq!(big.growth_step(), 0);
    }

    #[test]
    fn a_sender_never_exceeds_its_credit() {
        let subject = 80;
        let mut outbound = Outbound::new(INITIAL_WINDOW);
        let first = outbound.sendable(subject, 65536);
        assert!(first > 0 && first < INITIAL_WINDOW as usize);
        outbound.charge(subject, first);
        assert_eq!(outbound.sendable(subject, 65536), 0);
        outbound.add_grant(message_cost(subject, 65536)).unwrap();
        assert_eq!(outbound.sendable(subject, 65536), 65536);
        assert_eq!(
            outbound
                .add_grant(u32::MAX)
                .and_then(|()| { (0..300).try_for_each(|_| outbound.add_grant(u32::MAX)) }),
            Err(LostReason::OverCredit)
        );
    }

    #[test]
    fn the_costs_of_a_full_window_fit_the_limits() {
        // The shortest session subject (one-letter prefix and name) still
        // costs this much per message, so one window holds at most this
        // many messages: well below the per-subscription buffer.
        let shortest = "a.v1.agent.x.session.00112233445566778899aabbccddeeff.from-ctl".len();
        let min_cost = message_cost(shortest, 0) as usize;
        assert!(MAX_WINDOW as usize / min_cost < SUBSCRIPTION_CAPACITY / 2);
    }

    #[test]
    fn sequence_numbers_count_every_message() {
        let mut outbound = Outbound::new(0);
        assert_eq!(outbound.next_seq(), 0);
        assert_eq!(outbound.next_seq(), 1);
    }
}
