//! One session's byte stream over two subjects: [`BrokerStream`], which
//! implements tokio's `AsyncRead` and `AsyncWrite` so that TLS runs over it
//! exactly as over TCP.
//!
//! Each stream has one task that owns the subscription and does all the
//! publishing, so the messages of a direction leave in sequence order and
//! credit messages keep flowing while the application is busy writing (or
//! not reading at all). The application's side and the task share a small
//! state under a mutex; neither holds the lock across an await.
//!
//! Writing: bytes gather in one 64 KiB buffer, and the task cuts them into
//! messages, each no larger than the credit held: a full buffer at once,
//! anything less once `flush` or `shutdown` asked for it. `flush` only
//! hands the buffered bytes to the task and returns; whatever is written
//! while the task publishes joins the next message, so a writer that
//! flushes every few KiB (TLS records, one frame each) still fills 64 KiB
//! messages instead of waiting for one small publication per flush. A
//! full buffer makes `poll_write` wait: a reader that stops reading stops
//! the writer after at most one window plus one 64 KiB buffer. `shutdown`
//! sends the end message after the last byte and waits until the client
//! has written it to the broker.
//!
//! Reading: data is read in order; after the peer's end message and once
//! every byte before it has been read, `poll_read` reports EOF. A failure
//! is reported once the bytes that arrived before it have been read.
//!
//! Ending: a clean close is an end message each way. Dropping the stream
//! any other way sends a reset so the peer's side ends at once instead of
//! waiting; bytes flushed before the drop are published first (as credit
//! allows, for at most the abandon limit), as a closed socket still sends
//! what it was given. The window goes back to the budget at the drop, what
//! arrives after it is dropped, and only so many dropped streams of a
//! connection linger at once (`Tuning::max_lingering`). A stream also ends
//! (`lost`) when our broker connection drops, or when nothing at all
//! arrived for the abandon limit — each side sends a
//! credit message as a heartbeat whenever it has published nothing for the
//! heartbeat interval, so only a vanished peer is ever that silent.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_nats::{Client, Subject, Subscriber};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::connection::ConnectionState;
use crate::error::{BrokerError, LostReason};
use crate::flow::{Inbound, Outbound, message_cost};
use crate::peer_check::{Answer, PeerCheck};
use crate::replies::ReplyWait;
use crate::subject::SessionId;
use crate::wire::{HEADER_LEN, Header, Kind, MAX_PAYLOAD, OpenAnswer};

/// Timing rules of a stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamTimers {
    /// A side that published nothing for this long sends a heartbeat.
    pub heartbeat: Duration,
    /// A stream that received nothing for this long ends (`lost`), and its
    /// state is freed.
    pub abandon_after: Duration,
    /// With data waiting for credit and nothing heard for this long, ask
    /// the broker whether the peer is still subscribed: gone ends the
    /// stream (`lost`), there counts as hearing from it (`peer_check`).
    /// `None`: never ask.
    pub peer_check: Option<Duration>,
    /// How long the broker's word that the peer is still subscribed holds
    /// a stream whose peer itself has sent nothing: then the abandon limit
    /// runs. Anyone allowed to subscribe to the peer's subject with a
    /// wildcard (a ctl user, an admin watching the broker) looks the same
    /// to the broker as the peer, and kept a dead ctl's command running
    /// for as long as they stayed; a peer that is there but not reading
    /// (a stopped ctl) is dropped by the broker itself after about as
    /// long (its missed pings, 2 min apart by default).
    pub hold_silent: Duration,
}

impl Default for StreamTimers {
    fn default() -> Self {
        // Looser than the session's own keepalive (4 × 15 s), which decides
        // first in a working session; this only frees carrier state whose
        // peer is gone without a word.
        StreamTimers {
            heartbeat: Duration::from_secs(10),
            abandon_after: Duration::from_secs(90),
            peer_check: None,
            hold_silent: Duration::from_secs(5 * 60),
        }
    }
}

/// The error of a stream whose connection to the broker dropped.
fn disconnected() -> BrokerError {
    BrokerError::Lost(LostReason::BrokerDisconnected)
}

/// `work`, unless `lost` (see `Task::connection_lost`) resolves first.
async fn unless_lost<T>(
    lost: impl Future<Output = ()>,
    work: impl Future<Output = T>,
) -> Result<T, BrokerError> {
    tokio::select! {
        done = work => Ok(done),
        () = lost => Err(disconnected()),
    }
}

/// The session ids of a connection's streams whose tasks still run.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveSessions(Arc<Mutex<std::collections::HashSet<SessionId>>>);

impl LiveSessions {
    fn insert(&self, session: SessionId) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(session);
    }

    fn remove(&self, session: SessionId) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&session);
    }

    pub(crate) fn contains(&self, session: SessionId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&session)
    }
}

struct Chunk {
    data: Bytes,
    cost: u32,
}

struct Shared {
    queue: VecDeque<Chunk>,
    inbound: Inbound,
    peer_ended: bool,
    failure: Option<BrokerError>,
    read_waker: Option<Waker>,

    outbound: Outbound,
    /// Header room, then written bytes not yet cut into a message.
    pending: BytesMut,
    /// How many of the buffered bytes a flush asked to be sent (the task
    /// sends them with whatever was written since).
    flush_asked: usize,
    /// The task holds flushed bytes for more to join them and wakes by
    /// itself: a flush meanwhile need not wake it.
    holding: bool,
    end_requested: bool,
    end_written: bool,
    write_waker: Option<Waker>,
    /// The application dropped its end: what arrives is not kept.
    dropped: bool,
}

impl Shared {
    fn wake_all(&mut self) {
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }

    fn fail(&mut self, error: BrokerError) {
        if self.failure.is_none() {
            self.failure = Some(error);
        }
        self.wake_all();
    }

    /// Stream bytes written and not yet cut (`pending` keeps room for the
    /// header in front, so a whole buffer becomes a message without a copy).
    fn buffered(&self) -> usize {
        self.pending.len().saturating_sub(HEADER_LEN)
    }

    /// Cuts the next message, charged, if one is due (a full buffer, a
    /// flush or a shutdown asked for it; a flush only unless `hold`) and the
    /// credit allows any of it. It takes all that is buffered up to the
    /// credit: bytes written after a flush ride along instead of waiting
    /// for a message of their own.
    fn cut(&mut self, subject_len: usize, hold: bool) -> Option<BytesMut> {
        let due =
            self.buffered() >= MAX_PAYLOAD || self.end_requested || (self.flush_asked > 0 && !hold);
        if !due || self.buffered() == 0 {
            return None;
        }
        let n = self
            .outbound
            .sendable(subject_len, MAX_PAYLOAD)
            .min(self.buffered());
        if n == 0 {
            return None;
        }
        let message = if n == self.buffered() {
            std::mem::take(&mut self.pending)
        } else {
            // Short of credit: the rest moves behind a new header room.
            let message = self.pending.split_to(HEADER_LEN + n);
            let mut rest = BytesMut::with_capacity(HEADER_LEN + MAX_PAYLOAD);
            rest.resize(HEADER_LEN, 0);
            rest.extend_from_slice(&self.pending);
            self.pending = rest;
            message
        };
        self.outbound.charge(subject_len, n);
        self.flush_asked = self.flush_asked.saturating_sub(n);
        Some(message)
    }

    /// Whether bytes the application flushed (or a close it asked for) are
    /// still to be published: a dropped stream sends those before its reset.
    fn owes_peer(&self) -> bool {
        self.flush_asked > 0 || (self.end_requested && !self.end_written)
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A session's ordered byte stream through the broker.
pub struct BrokerStream {
    shared: Arc<Mutex<Shared>>,
    notify: Arc<Notify>,
    session: SessionId,
    _task: DropGuard,
}

impl Drop for BrokerStream {
    fn drop(&mut self) {
        // As close() on a socket sends what write() was given: bytes
        // written but not yet flushed (a TLS alert refusing a client) are
        // handed to the task, which publishes them before its reset.
        let mut shared = lock(&self.shared);
        shared.flush_asked = shared.buffered();
        drop(shared);
        self.notify.notify_one();
    }
}

impl std::fmt::Debug for BrokerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerStream")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// Everything a stream's task needs.
pub(crate) struct StreamParts {
    pub client: Client,
    pub subscriber: Subscriber,
    pub in_subject_len: usize,
    pub out_subject: String,
    pub window: u32,
    pub credit: u32,
    pub permit: OwnedSemaphorePermit,
    pub pool: Arc<Semaphore>,
    /// Bytes of `pool` that growth leaves free for new streams.
    pub reserve: usize,
    /// Room for dropped streams that linger (see [`Task::linger`]).
    pub lingering: Arc<Semaphore>,
    /// Where the stream's id is kept while its task runs.
    pub live: LiveSessions,
    pub connection: watch::Receiver<ConnectionState>,
    pub timers: StreamTimers,
    pub session: SessionId,
    /// ctl's: the open request's reply inbox, watched.
    pub answers: Option<AnswerWatch>,
    /// ctl's: the broker refusing us our subscription to the session's
    /// subject after the refusal count given, and the error that is then.
    pub refusal: Option<RefusalWatch>,
}

/// A refusal of the broker that ends a stream: it would never receive a
/// message.
pub(crate) struct RefusalWatch {
    pub subject: String,
    pub after: u64,
    pub error: BrokerError,
}

/// The reply inbox of a session's open request, watched for a while after
/// the first answer was taken: a second acceptance means that two agents
/// serve the name, and both answer on the session's subjects, where their
/// messages collide.
pub(crate) struct AnswerWatch {
    pub answers: ReplyWait,
    /// When no acceptance can come any more (the open timeout).
    pub until: Instant,
    /// The agent's name, for the error.
    pub name: String,
    /// Our session's id: only an acceptance of it is a second agent's.
    pub session: String,
}

impl AnswerWatch {
    /// Whether `message` is an agent's acceptance of our session.
    fn accepts(&self, message: &async_nats::Message) -> bool {
        message.status.is_none()
            && serde_json::from_slice::<OpenAnswer>(&message.payload)
                .is_ok_and(|answer| answer.accepts(&self.session))
    }

    /// Whether an acceptance already waits, unread.
    fn acceptance_queued(&mut self) -> bool {
        while let Some(message) = self.answers.try_next() {
            if self.accepts(&message) {
                return true;
            }
        }
        false
    }
}

/// The next answer on the watched inbox, if one is watched (else never).
async fn next_answer(watch: &mut Option<AnswerWatch>) -> Option<async_nats::Message> {
    match watch {
        Some(watch) => watch.answers.next().await,
        None => std::future::pending().await,
    }
}

impl BrokerStream {
    pub(crate) fn spawn(parts: StreamParts) -> BrokerStream {
        let shared = Arc::new(Mutex::new(Shared {
            queue: VecDeque::new(),
            inbound: Inbound::new(parts.window),
            peer_ended: false,
            failure: None,
            read_waker: None,
            outbound: Outbound::new(parts.credit),
            pending: BytesMut::new(),
            flush_asked: 0,
            holding: false,
            end_requested: false,
            end_written: false,
            write_waker: None,
            dropped: false,
        }));
        let notify = Arc::new(Notify::new());
        let token = CancellationToken::new();
        let session = parts.session;
        parts.live.insert(session);
        let disconnects_at_start = parts.connection.borrow().disconnects;
        let task = Task {
            shared: shared.clone(),
            notify: notify.clone(),
            token: token.clone(),
            out_subject: Subject::from(parts.out_subject),
            parts_client: parts.client,
            subscriber: parts.subscriber,
            in_subject_len: parts.in_subject_len,
            permit: Some(parts.permit),
            pool: parts.pool,
            reserve: parts.reserve,
            lingering: parts.lingering,
            lingering_room: None,
            live: parts.live,
            session,
            connection: parts.connection,
            timers: parts.timers,
            answers: parts.answers,
            refusal: parts.refusal,
            pacer: Pacer::new(Instant::now()),
            peer_check: PeerCheck::default(),
            disconnects_at_start,
            reply_next: None,
            hold_until: None,
        };
        tokio::spawn(task.run());
        BrokerStream {
            shared,
            notify,
            session,
            _task: token.drop_guard(),
        }
    }

    /// The session's id (for logs).
    pub fn session_id(&self) -> SessionId {
        self.session
    }
}

impl AsyncRead for BrokerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.shared);
        if let Some(front) = shared.queue.front_mut() {
            let n = front.data.len().min(buf.remaining());
            buf.put_slice(&front.data.split_to(n));
            if front.data.is_empty() {
                let cost = front.cost;
                shared.queue.pop_front();
                shared.inbound.consumed(cost);
                if shared.inbound.grant_due() {
                    self.notify.notify_one();
                }
            }
            return Poll::Ready(Ok(()));
        }
        if shared.peer_ended {
            return Poll::Ready(Ok(()));
        }
        if let Some(error) = &shared.failure {
            return Poll::Ready(Err(error.clone().into_io()));
        }
        shared.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

fn written_after_end() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the stream was shut down for writing",
    )
}

impl AsyncWrite for BrokerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.shared);
        if let Some(error) = &shared.failure {
            return Poll::Ready(Err(error.clone().into_io()));
        }
        if shared.end_requested {
            return Poll::Ready(Err(written_after_end()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if shared.buffered() >= MAX_PAYLOAD {
            // The task was told when the buffer filled; it wakes us once
            // it has cut a message out of it.
            shared.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(MAX_PAYLOAD - shared.buffered());
        if shared.pending.is_empty() {
            // A bulk writer fills whole messages: room for one at once
            // instead of regrowing; a small write gets a small buffer.
            let room = if n >= 4096 { MAX_PAYLOAD } else { n };
            shared.pending.reserve(HEADER_LEN + room);
            shared.pending.resize(HEADER_LEN, 0);
        }
        shared.pending.extend_from_slice(&buf[..n]);
        if shared.buffered() >= MAX_PAYLOAD {
            self.notify.notify_one();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.shared);
        // Bytes handed over before the stream failed were flushed: a peer
        // that answered, closed and went before this was polled (a request
        // and its whole answer) is a success, not an error.
        if shared.buffered() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(error) = &shared.failure {
            return Poll::Ready(Err(error.clone().into_io()));
        }
        // Handed to the task, which publishes them as credit allows, even
        // if the stream is dropped now; waiting for the publication here
        // would cost a writer that flushes often one round trip through
        // the task per flush.
        shared.flush_asked = shared.buffered();
        if !shared.holding {
            self.notify.notify_one();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.shared);
        if shared.end_written {
            return Poll::Ready(Ok(()));
        }
        if let Some(error) = &shared.failure {
            return Poll::Ready(Err(error.clone().into_io()));
        }
        shared.end_requested = true;
        self.notify.notify_one();
        shared.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

struct Task {
    shared: Arc<Mutex<Shared>>,
    notify: Arc<Notify>,
    token: CancellationToken,
    out_subject: Subject,
    parts_client: Client,
    subscriber: Subscriber,
    in_subject_len: usize,
    /// Our receive window's bytes of the connection's budget, until the
    /// application drops its end.
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Semaphore>,
    reserve: usize,
    lingering: Arc<Semaphore>,
    /// Held while the stream lingers after the application dropped it.
    lingering_room: Option<OwnedSemaphorePermit>,
    live: LiveSessions,
    session: SessionId,
    connection: watch::Receiver<ConnectionState>,
    timers: StreamTimers,
    answers: Option<AnswerWatch>,
    refusal: Option<RefusalWatch>,
    pacer: Pacer,
    peer_check: PeerCheck,
    /// The connection's disconnect count when the stream began: any other
    /// is a connection that dropped under it.
    disconnects_at_start: u64,
    /// The reply subject the next published message carries.
    reply_next: Option<Subject>,
    /// Until when flushed bytes wait for more to join them.
    hold_until: Option<Instant>,
}

/// Up to `step` more bytes of `pool` for a growing window, as far as
/// `reserve` bytes stay free after it for the start windows of streams
/// still to come: bulk streams otherwise take the whole budget between
/// them (four at the largest window fill 32 MiB) and no new session can
/// open. Taken, then checked again, because streams grow on several
/// threads at once. `None` when nothing is left to grow by.
fn take_growth(
    pool: &Arc<Semaphore>,
    step: u32,
    reserve: usize,
) -> Option<(u32, OwnedSemaphorePermit)> {
    let room = pool.available_permits().saturating_sub(reserve);
    let step = step.min(u32::try_from(room).unwrap_or(u32::MAX));
    if step == 0 {
        return None;
    }
    let extra = pool.clone().try_acquire_many_owned(step).ok()?;
    (pool.available_permits() >= reserve).then_some((step, extra))
}

/// How long flushed bytes may wait for more to join them in a bulk
/// stream. A writer that flushes every few KiB (a command's output, one
/// frame per pipe read) otherwise sends a message per flush, and the
/// broker's cost is mostly per message: through one nats-server on
/// loopback, 1 GiB went as 50,000-90,000 messages at 150-250 MB/s, as
/// 17,000-20,000 at 250-400 (bench/broker_scale.py).
const COALESCE: Duration = Duration::from_millis(1);

/// A stream that cut this much data within [`COALESCE`] is a bulk one,
/// whose flushed bytes may wait; anything slower (a handshake, a request
/// and its answer, a terminal) leaves at once on every flush.
const BULK: usize = MAX_PAYLOAD;

/// Tells a bulk stream from the rest by the data it cut lately, and says
/// how long a flushed partial message may wait.
#[derive(Debug)]
struct Pacer {
    /// When the last data message short of 64 KiB was cut.
    last_short: Option<Instant>,
    /// Data bytes cut since `since`, and in the [`COALESCE`] before it.
    bytes: usize,
    before: usize,
    since: Instant,
}

impl Pacer {
    fn new(now: Instant) -> Pacer {
        Pacer {
            last_short: None,
            bytes: 0,
            before: 0,
            since: now,
        }
    }

    /// Until when flushed bytes short of a full message should wait now
    /// (`None`: send them at once).
    fn hold(&mut self, now: Instant) -> Option<Instant> {
        let elapsed = now.duration_since(self.since);
        if elapsed > COALESCE {
            // After a pause the pace starts from nothing.
            self.before = if elapsed > 2 * COALESCE {
                0
            } else {
                self.bytes
            };
            self.bytes = 0;
            self.since = now;
        }
        let bulk = self.bytes.max(self.before) >= BULK;
        let until = self.last_short? + COALESCE;
        (bulk && now < until).then_some(until)
    }

    /// A data message of `payload` bytes was cut.
    fn cut(&mut self, now: Instant, payload: usize) {
        self.bytes += payload;
        if payload < MAX_PAYLOAD {
            self.last_short = Some(now);
        }
    }
}

impl Task {
    async fn run(mut self) {
        let disconnects_at_start = self.disconnects_at_start;
        let mut last_sent = Instant::now();
        // Refreshed by the broker's word that the peer is there too.
        let mut last_heard = Instant::now();
        // Only by the peer's own messages.
        let mut last_word = Instant::now();
        // Once the application dropped its end: until when the bytes it
        // flushed may still wait for credit.
        let mut linger_until: Option<Instant> = None;
        let outcome: Result<(), BrokerError> = loop {
            if let Err(error) = self.publish_due(&mut last_sent).await {
                break Err(error);
            }
            if self.finished_cleanly() {
                break Ok(());
            }
            if linger_until.is_some() && !lock(&self.shared).owes_peer() {
                break Err(BrokerError::Lost(LostReason::PeerReset));
            }
            let heartbeat_at = last_sent + self.timers.heartbeat;
            let abandon_at = last_heard + self.timers.abandon_after;
            let linger_at = linger_until.unwrap_or(abandon_at);
            let hold_at = self.hold_until.unwrap_or(abandon_at);
            let answers_until = self
                .answers
                .as_ref()
                .map_or(abandon_at, |watch| watch.until);
            let check_at = self
                .timers
                .peer_check
                .filter(|_| {
                    self.peer_check.usable()
                        && lock(&self.shared).buffered() > 0
                        && last_word.elapsed() < self.timers.hold_silent
                })
                .map(|bound| last_heard + bound);
            tokio::select! {
                () = tokio::time::sleep_until(check_at.unwrap_or(abandon_at)), if check_at.is_some() => {
                    match self.ask_for_peer(&mut last_sent).await {
                        Err(error) => break Err(error),
                        Ok(Answer::Gone) => break Err(BrokerError::Lost(LostReason::PeerGone)),
                        Ok(Answer::There) => last_heard = Instant::now(),
                        Ok(Answer::Unknown) => {}
                    }
                }
                () = self.peer_check.gone() => break Err(BrokerError::Lost(LostReason::PeerGone)),
                answer = next_answer(&mut self.answers), if self.answers.is_some() => {
                    match answer {
                        Some(answer) if self.answers.as_ref().is_some_and(|w| w.accepts(&answer)) => {
                            break Err(self.name_clash());
                        }
                        Some(_) => {}
                        None => self.answers = None,
                    }
                }
                () = tokio::time::sleep_until(answers_until), if self.answers.is_some() => {
                    self.answers = None;
                }
                () = tokio::time::sleep_until(hold_at), if self.hold_until.is_some() => {
                    self.hold_until = None;
                }
                () = self.token.cancelled(), if linger_until.is_none() => {
                    linger_until = Some(self.linger());
                }
                () = tokio::time::sleep_until(linger_at), if linger_until.is_some() => {
                    break Err(BrokerError::Lost(LostReason::PeerReset));
                }
                changed = self.connection.changed() => {
                    let down = changed.is_err() || {
                        let state = self.connection.borrow_and_update();
                        !state.connected || state.disconnects != disconnects_at_start
                    };
                    if down {
                        break Err(BrokerError::Lost(LostReason::BrokerDisconnected));
                    }
                    if let Some(error) = self.refused() {
                        break Err(error);
                    }
                }
                message = self.subscriber.next() => {
                    let Some(message) = message else {
                        break Err(BrokerError::Lost(LostReason::BrokerDisconnected));
                    };
                    last_heard = Instant::now();
                    last_word = last_heard;
                    if let Err(reason) = self.take_in(message.payload) {
                        // The other agent's acceptance left ahead of its
                        // first message, which collides with ours.
                        if self.answers.as_mut().is_some_and(AnswerWatch::acceptance_queued) {
                            break Err(self.name_clash());
                        }
                        break Err(BrokerError::Lost(reason));
                    }
                }
                () = self.notify.notified() => {}
                () = tokio::time::sleep_until(heartbeat_at) => {
                    if let Err(error) = self.publish(Kind::Credit, BytesMut::new(), &mut last_sent).await {
                        break Err(error);
                    }
                }
                () = tokio::time::sleep_until(abandon_at) => {
                    break Err(BrokerError::Lost(LostReason::PeerSilent));
                }
            }
        };
        if let Err(error) = outcome {
            let dropped = self.token.is_cancelled();
            if dropped && error == BrokerError::Lost(LostReason::PeerReset) {
                // As TCP still sends what was written before a close: the
                // last bytes written before the drop (the TLS alert that
                // refuses a client) go out ahead of the reset, as far as
                // the credit we hold allows.
                lock(&self.shared).cut(self.out_subject.len(), true);
                let _ = self.publish_due(&mut last_sent).await;
            }
            let tell_peer = !matches!(
                error,
                BrokerError::Lost(LostReason::PeerReset | LostReason::BrokerDisconnected)
            ) || dropped;
            if !dropped {
                tracing::debug!(%error, "broker stream ended");
            }
            lock(&self.shared).fail(error);
            if tell_peer {
                // Best effort: the peer would otherwise wait for its
                // abandon limit. Its sequence number does not matter, a
                // reset ends the stream whatever it carries.
                let mut last = Instant::now();
                let _ = self.publish(Kind::Reset, BytesMut::new(), &mut last).await;
                let _ = self.flush().await;
            }
        }
        // Dropping the subscriber unsubscribes; dropping the permit returns
        // the window to the connection's budget (if the drop has not).
        let _ = self.subscriber.unsubscribe().await;
        self.peer_check.close().await;
        drop(self.permit);
        drop(self.lingering_room);
        self.live.remove(self.session);
    }

    /// After the application dropped its end: until when the stream may go
    /// on sending what the application flushed, as credit comes.
    ///
    /// Nobody reads any more, so the receive window goes back to the
    /// connection's budget at once, and what still arrives is dropped as
    /// it comes (no credit is given for it): before, a stranger that
    /// opened sessions and never gave credit kept the agent's refusal of
    /// each unsent, and with it a window, for the abandon limit, until the
    /// budget was gone and every session was refused as busy. Only
    /// [`crate::Tuning::max_lingering`] streams of a connection linger at
    /// once; the rest end now, after one try.
    fn linger(&mut self) -> Instant {
        drop(self.permit.take());
        {
            let mut shared = lock(&self.shared);
            shared.queue.clear();
            shared.dropped = true;
        }
        match self.lingering.clone().try_acquire_owned() {
            Ok(room) => {
                self.lingering_room = Some(room);
                Instant::now() + self.timers.abandon_after
            }
            Err(_) => Instant::now(),
        }
    }

    /// Resolves once our connection is down or has dropped since the
    /// stream began. A publication or a flush waits for the connection,
    /// which may be reconnecting for minutes: raced with this, it fails
    /// the stream (`lost`) at once instead, as the stream's loop would.
    fn connection_lost(&self) -> impl Future<Output = ()> + 'static {
        let mut watch = self.connection.clone();
        let start = self.disconnects_at_start;
        async move {
            let _ = watch
                .wait_for(|s| !s.connected || s.disconnects != start)
                .await;
        }
    }

    /// Waits for the connection to have written what we published, unless
    /// it is lost meanwhile.
    async fn flush(&self) -> Result<(), BrokerError> {
        unless_lost(self.connection_lost(), self.parts_client.flush())
            .await?
            .map_err(|_| disconnected())
    }

    /// The error due when the broker refused what the stream needs.
    fn refused(&self) -> Option<BrokerError> {
        let watch = self.refusal.as_ref()?;
        let state = self.connection.borrow();
        (state.permission_violations > watch.after
            && state.last_refused_subject.as_deref() == Some(watch.subject.as_str()))
        .then(|| watch.error.clone())
    }

    /// The error of a session that two agents accepted.
    fn name_clash(&self) -> BrokerError {
        let name = self.answers.as_ref().map(|watch| watch.name.clone());
        BrokerError::NameClash(name.unwrap_or_default())
    }

    /// A heartbeat that asks the broker whether the peer is subscribed.
    async fn ask_for_peer(&mut self, last_sent: &mut Instant) -> Result<Answer, BrokerError> {
        let Some(reply) = self.peer_check.reply_subject(&self.parts_client).await else {
            return Ok(Answer::Unknown);
        };
        self.reply_next = Some(reply);
        self.publish(Kind::Credit, BytesMut::new(), last_sent)
            .await?;
        let lost = self.connection_lost();
        unless_lost(lost, self.peer_check.answer(&self.parts_client)).await?
    }

    fn finished_cleanly(&self) -> bool {
        let shared = lock(&self.shared);
        shared.end_written && shared.peer_ended
    }

    /// Checks and files one inbound message.
    fn take_in(&mut self, payload: Bytes) -> Result<(), LostReason> {
        let (header, body) = Header::decode(&payload)?;
        let cost = match header.kind {
            Kind::Data => message_cost(self.in_subject_len, body.len()),
            _ => 0,
        };
        let mut shared = lock(&self.shared);
        let accepted = shared.inbound.accept(header, cost)?;
        if header.grant > 0 {
            // Spent by the next `publish_due`, which wakes the writer.
            shared.outbound.add_grant(header.grant)?;
        }
        match header.kind {
            Kind::Data if shared.dropped => {}
            Kind::Data => {
                if !body.is_empty() {
                    shared.queue.push_back(Chunk {
                        data: payload.slice(HEADER_LEN..),
                        cost,
                    });
                } else {
                    shared.inbound.consumed(cost);
                }
                if let Some(waker) = shared.read_waker.take() {
                    waker.wake();
                }
            }
            Kind::End => {
                shared.peer_ended = true;
                if let Some(waker) = shared.read_waker.take() {
                    waker.wake();
                }
            }
            Kind::Credit | Kind::Reset => {}
        }
        if accepted.wants_growth {
            let step = shared.inbound.growth_step();
            if step > 0
                && let Some(permit) = self.permit.as_mut()
                && let Some((step, extra)) = take_growth(&self.pool, step, self.reserve)
            {
                shared.inbound.grow(step);
                permit.merge(extra);
            }
        }
        Ok(())
    }

    /// Publishes everything that is due: data (cut here, so that what is
    /// written during one publication joins the next message), the end
    /// message, a grant that cannot wait for data to ride on.
    async fn publish_due(&mut self, last_sent: &mut Instant) -> Result<(), BrokerError> {
        let subject_len = self.out_subject.len();
        loop {
            let next = {
                let now = Instant::now();
                let hold_until = self.pacer.hold(now);
                let hold = hold_until.is_some();
                let mut shared = lock(&self.shared);
                if let Some(error) = &shared.failure {
                    return Err(error.clone());
                }
                shared.holding = false;
                if let Some(message) = shared.cut(subject_len, hold) {
                    self.pacer.cut(now, message.len() - HEADER_LEN);
                    // The buffer has room again.
                    if let Some(waker) = shared.write_waker.take() {
                        waker.wake();
                    }
                    Some((Kind::Data, message))
                } else if shared.end_requested && !shared.end_written && shared.buffered() == 0 {
                    Some((Kind::End, BytesMut::new()))
                } else if shared.inbound.grant_due() {
                    Some((Kind::Credit, BytesMut::new()))
                } else {
                    if hold && shared.flush_asked > 0 {
                        shared.holding = true;
                        self.hold_until = hold_until;
                    }
                    None
                }
            };
            let Some((kind, message)) = next else {
                return Ok(());
            };
            self.publish(kind, message, last_sent).await?;
            if kind == Kind::End {
                self.flush().await?;
            }
            if kind == Kind::End {
                let mut shared = lock(&self.shared);
                shared.end_written = true;
                if let Some(waker) = shared.write_waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Stamps the header (sequence number and any grant due) and publishes.
    async fn publish(
        &mut self,
        kind: Kind,
        mut message: BytesMut,
        last_sent: &mut Instant,
    ) -> Result<(), BrokerError> {
        if message.is_empty() {
            message.resize(HEADER_LEN, 0);
        }
        let payload = {
            let mut shared = lock(&self.shared);
            let grant = if kind == Kind::Reset {
                0
            } else {
                shared.inbound.take_grant()
            };
            let header = Header {
                kind,
                seq: shared.outbound.next_seq(),
                grant,
            };
            message[..HEADER_LEN].copy_from_slice(&header.encode());
            message.freeze()
        };
        let lost = self.connection_lost();
        let client = &self.parts_client;
        let subject = self.out_subject.clone();
        let reply = self.reply_next.take();
        let publishing = async {
            match reply {
                Some(reply) => client.publish_with_reply(subject, reply, payload).await,
                None => client.publish(subject, payload).await,
            }
        };
        unless_lost(lost, publishing)
            .await?
            .map_err(|_| disconnected())?;
        *last_sent = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_leaves_the_reserve_for_new_streams_start_windows() {
        let pool = Arc::new(Semaphore::new(1000));
        let (step, grown) = take_growth(&pool, 600, 300).expect("600 leaves 400 free");
        assert_eq!((step, pool.available_permits()), (600, 400));
        let (step, more) = take_growth(&pool, 200, 300).expect("100 of it fits");
        assert_eq!((step, pool.available_permits()), (100, 300));
        assert!(
            take_growth(&pool, 200, 300).is_none(),
            "only the reserve is left"
        );
        assert_eq!(pool.available_permits(), 300, "nothing taken");
        drop((grown, more));
        assert_eq!(pool.available_permits(), 1000);
    }

    #[test]
    fn only_a_bulk_stream_holds_flushed_bytes_and_never_past_the_limit() {
        let start = Instant::now();
        let at = |micros: u64| start + Duration::from_micros(micros);
        let mut pacer = Pacer::new(start);
        // A handshake and a request: small messages, each sent at once.
        for (t, len) in [(0, 250), (300, 700), (310, 120)] {
            assert_eq!(pacer.hold(at(t)), None, "a small message at {t} µs waited");
            pacer.cut(at(t), len);
        }
        // Output in 16 KiB flushes: once 64 KiB left within the limit, a
        // flush waits, at most the limit after the last short message.
        let mut t = 2_000;
        let mut held = None;
        for _ in 0..8 {
            t += 50;
            held = pacer.hold(at(t));
            if held.is_some() {
                break;
            }
            pacer.cut(at(t), 16 * 1024);
        }
        let until = held.expect("a bulk stream's flush waits");
        assert!(until <= at(t - 50) + COALESCE && until > at(t));
        // Full messages do not hold the next flush back for longer.
        pacer.cut(at(t + 10), MAX_PAYLOAD);
        assert_eq!(pacer.hold(at(t + 20)), Some(until));
        // After a pause the stream is not bulk any more.
        assert_eq!(pacer.hold(at(t + 10_000)), None);
    }
}
