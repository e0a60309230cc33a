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
//! Writing: bytes gather in a buffer; a message is cut when 64 KiB are
//! buffered, or on `flush`/`shutdown`, each cut no larger than the credit
//! held. Without credit `poll_write` waits: a reader that stops reading
//! stops the writer after at most one window plus one 64 KiB buffer.
//! `flush` returns once every buffered byte has been handed to the NATS
//! client; `shutdown` sends the end message and waits until the client has
//! written it to the broker.
//!
//! Reading: data is read in order; after the peer's end message and once
//! every byte before it has been read, `poll_read` reports EOF. A failure
//! is reported once the bytes that arrived before it have been read.
//!
//! Ending: a clean close is an end message each way. Dropping the stream
//! any other way sends a reset so the peer's side ends at once instead of
//! waiting. A stream also ends (`lost`) when our broker connection drops,
//! or when nothing at all arrived for the abandon limit — each side sends a
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

use crate::carrier::ConnectionState;
use crate::error::{BrokerError, LostReason};
use crate::flow::{Inbound, Outbound, message_cost};
use crate::subject::SessionId;
use crate::wire::{HEADER_LEN, Header, Kind, MAX_PAYLOAD};

/// Timing rules of a stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamTimers {
    /// A side that published nothing for this long sends a heartbeat.
    pub heartbeat: Duration,
    /// A stream that received nothing for this long ends (`lost`), and its
    /// state is freed.
    pub abandon_after: Duration,
}

impl Default for StreamTimers {
    fn default() -> Self {
        // Looser than the session's own keepalive (4 × 15 s), which decides
        // first in a working session; this only frees carrier state whose
        // peer is gone without a word.
        StreamTimers {
            heartbeat: Duration::from_secs(10),
            abandon_after: Duration::from_secs(90),
        }
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
    /// Cut and charged messages (header space in front) for the task.
    ready: VecDeque<BytesMut>,
    /// A message taken by the task whose publication has not finished.
    publishing: bool,
    end_requested: bool,
    end_written: bool,
    write_waker: Option<Waker>,
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

    /// Cuts buffered bytes into messages as far as credit allows; `all`
    /// also cuts a last partial message (flush), otherwise only full ones.
    fn cut(&mut self, subject_len: usize, all: bool) -> bool {
        let mut cut_any = false;
        while self.buffered() > 0 && (all || self.buffered() >= MAX_PAYLOAD) {
            let n = self
                .outbound
                .sendable(subject_len, MAX_PAYLOAD)
                .min(self.buffered());
            if n == 0 {
                break;
            }
            let message = if n == self.buffered() {
                std::mem::take(&mut self.pending)
            } else {
                // Short of credit: the rest moves behind a new header room.
                let message = self.pending.split_to(HEADER_LEN + n);
                let mut rest = BytesMut::with_capacity(HEADER_LEN + self.pending.len());
                rest.resize(HEADER_LEN, 0);
                rest.extend_from_slice(&self.pending);
                self.pending = rest;
                message
            };
            self.outbound.charge(subject_len, n);
            self.ready.push_back(message);
            cut_any = true;
        }
        cut_any
    }

    fn sent_everything(&self) -> bool {
        self.buffered() == 0 && self.ready.is_empty() && !self.publishing
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A session's ordered byte stream through the broker.
pub struct BrokerStream {
    shared: Arc<Mutex<Shared>>,
    notify: Arc<Notify>,
    out_subject_len: usize,
    session: SessionId,
    _task: DropGuard,
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
    pub connection: watch::Receiver<ConnectionState>,
    pub timers: StreamTimers,
    pub session: SessionId,
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
            ready: VecDeque::new(),
            publishing: false,
            end_requested: false,
            end_written: false,
            write_waker: None,
        }));
        let notify = Arc::new(Notify::new());
        let token = CancellationToken::new();
        let out_subject_len = parts.out_subject.len();
        let session = parts.session;
        let task = Task {
            shared: shared.clone(),
            notify: notify.clone(),
            token: token.clone(),
            out_subject: Subject::from(parts.out_subject),
            parts_client: parts.client,
            subscriber: parts.subscriber,
            in_subject_len: parts.in_subject_len,
            permit: parts.permit,
            pool: parts.pool,
            connection: parts.connection,
            timers: parts.timers,
        };
        tokio::spawn(task.run());
        BrokerStream {
            shared,
            notify,
            out_subject_len,
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
            if shared.cut(self.out_subject_len, false) {
                self.notify.notify_one();
            }
            if shared.buffered() >= MAX_PAYLOAD {
                shared.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
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
        if shared.buffered() >= MAX_PAYLOAD && shared.cut(self.out_subject_len, false) {
            self.notify.notify_one();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.shared);
        // Bytes that left before the stream failed were flushed: a peer
        // that answered, closed and went before this was polled again
        // (a request and its whole answer) is a success, not an error.
        if shared.sent_everything() {
            return Poll::Ready(Ok(()));
        }
        if let Some(error) = &shared.failure {
            return Poll::Ready(Err(error.clone().into_io()));
        }
        if shared.cut(self.out_subject_len, true) {
            self.notify.notify_one();
        }
        if shared.sent_everything() {
            return Poll::Ready(Ok(()));
        }
        shared.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.shared);
        if shared.end_written {
            return Poll::Ready(Ok(()));
        }
        if let Some(error) = &shared.failure {
            return Poll::Ready(Err(error.clone().into_io()));
        }
        shared.cut(self.out_subject_len, true);
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
    permit: OwnedSemaphorePermit,
    pool: Arc<Semaphore>,
    connection: watch::Receiver<ConnectionState>,
    timers: StreamTimers,
}

impl Task {
    async fn run(mut self) {
        let disconnects_at_start = self.connection.borrow().disconnects;
        let mut last_sent = Instant::now();
        let mut last_heard = Instant::now();
        let outcome: Result<(), BrokerError> = loop {
            if let Err(error) = self.publish_due(&mut last_sent).await {
                break Err(error);
            }
            if self.finished_cleanly() {
                break Ok(());
            }
            let heartbeat_at = last_sent + self.timers.heartbeat;
            let abandon_at = last_heard + self.timers.abandon_after;
            tokio::select! {
                () = self.token.cancelled() => break Err(BrokerError::Lost(LostReason::PeerReset)),
                changed = self.connection.changed() => {
                    let down = changed.is_err() || {
                        let state = self.connection.borrow_and_update();
                        !state.connected || state.disconnects != disconnects_at_start
                    };
                    if down {
                        break Err(BrokerError::Lost(LostReason::BrokerDisconnected));
                    }
                }
                message = self.subscriber.next() => {
                    let Some(message) = message else {
                        break Err(BrokerError::Lost(LostReason::BrokerDisconnected));
                    };
                    last_heard = Instant::now();
                    if let Err(reason) = self.take_in(message.payload) {
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
                let _ = self.parts_client.flush().await;
            }
        }
        // Dropping the subscriber unsubscribes; dropping the permit returns
        // the window to the connection's budget.
        let _ = self.subscriber.unsubscribe().await;
        drop(self.permit);
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
            shared.outbound.add_grant(header.grant)?;
            // The writer cuts what the new credit allows when it runs.
            if let Some(waker) = shared.write_waker.take() {
                waker.wake();
            }
        }
        match header.kind {
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
                && let Ok(extra) = self.pool.clone().try_acquire_many_owned(step)
            {
                shared.inbound.grow(step);
                self.permit.merge(extra);
            }
        }
        Ok(())
    }

    /// Publishes everything that is due: cut data, the end message, a
    /// grant that cannot wait for data to ride on.
    async fn publish_due(&mut self, last_sent: &mut Instant) -> Result<(), BrokerError> {
        loop {
            let next = {
                let mut shared = lock(&self.shared);
                if let Some(error) = &shared.failure {
                    return Err(error.clone());
                }
                if let Some(message) = shared.ready.pop_front() {
                    shared.publishing = true;
                    Some((Kind::Data, message))
                } else if shared.end_requested && !shared.end_written && shared.buffered() == 0 {
                    Some((Kind::End, BytesMut::new()))
                } else if shared.inbound.grant_due() {
                    Some((Kind::Credit, BytesMut::new()))
                } else {
                    None
                }
            };
            let Some((kind, message)) = next else {
                return Ok(());
            };
            self.publish(kind, message, last_sent).await?;
            if kind == Kind::End {
                self.parts_client
                    .flush()
                    .await
                    .map_err(|_| BrokerError::Lost(LostReason::BrokerDisconnected))?;
            }
            let mut shared = lock(&self.shared);
            shared.publishing = false;
            if kind == Kind::End {
                shared.end_written = true;
            }
            if let Some(waker) = shared.write_waker.take() {
                waker.wake();
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
        self.parts_client
            .publish(self.out_subject.clone(), payload)
            .await
            .map_err(|_| BrokerError::Lost(LostReason::BrokerDisconnected))?;
        *last_sent = Instant::now();
        Ok(())
    }
}
