//! Writing frames to a byte stream, a large bulk payload without a copy.
//!
//! [`FrameWriter`] puts on the wire exactly what `tokio_util`'s
//! `FramedWrite` with [`MessageCodec`] would, and is a [`Sink`] of
//! messages as that is. The difference is in memory: a chunk of output,
//! stdin or file data of [`DIRECT_PAYLOAD`] bytes or more is not copied
//! into the frame buffer behind its header; the header goes there, and the
//! payload is handed to the stream as it is, behind the header in the same
//! vectored write (TLS copies it into its records, as it copies
//! everything, and takes at most 64 KiB at a time, so a large payload
//! leaves over several writes).
//!
//! What the copy cost: besides the copy itself, the header in front put
//! every payload 8 or 10 bytes past where it was read (10 from 64 KiB
//! up), and glibc 2.36's `memcpy`
//! (`rep movsb`) on AMD Zen 3 copies at 3 GB/s instead of 40 GB/s when the
//! destination lies 1 to 31 bytes past the source within a page. An agent
//! on such a machine spent about a quarter of its CPU on that one copy of
//! each byte of output (BENCHMARKS.md, "One copy fewer").

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::Sink;
use serde::Serialize;
use tokio::io::AsyncWrite;
use tokio_util::codec::Encoder;

use crate::codec::{BulkMessage, FrameError, MessageCodec, bulk_frame_head};

/// A bulk payload at least this long goes to the stream without a copy.
/// Shorter ones are copied into the frame buffer with the frames around
/// them, so that small messages still leave in one write together.
pub const DIRECT_PAYLOAD: usize = 16 * 1024;

/// Once this much waits to be written, sending waits for the stream
/// (`FramedWrite`'s boundary).
const BACKPRESSURE: usize = 8 * 1024;

/// The most pieces given to one vectored write.
const MAX_SLICES: usize = 16;

/// Frames of `Out` messages written to `io`.
#[derive(Debug)]
pub struct FrameWriter<W, Out> {
    io: W,
    codec: MessageCodec<Out, ()>,
    /// Frames encoded and not yet in `queue`; the head of a direct payload
    /// is the last thing in it when the payload is queued.
    buffer: BytesMut,
    /// What goes to `io`, in order: pieces of `buffer` and direct payloads.
    queue: VecDeque<Bytes>,
    /// The bytes in `queue`.
    queued: usize,
}

impl<W: AsyncWrite + Unpin, Out> FrameWriter<W, Out> {
    /// Frames written to `io`.
    pub fn new(io: W) -> Self {
        FrameWriter {
            io,
            codec: MessageCodec::new(),
            buffer: BytesMut::new(),
            queue: VecDeque::new(),
            queued: 0,
        }
    }

    /// The stream.
    pub fn get_ref(&self) -> &W {
        &self.io
    }

    /// Moves what `buffer` holds to the end of `queue`.
    fn seal(&mut self) {
        if !self.buffer.is_empty() {
            let piece = self.buffer.split().freeze();
            self.queued += piece.len();
            self.queue.push_back(piece);
        }
    }

    /// Drops the first `written` bytes of `queue`.
    fn advance(&mut self, mut written: usize) {
        self.queued -= written;
        while written > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.queue.pop_front();
        }
    }
}

impl<W, Out> Sink<Out> for FrameWriter<W, Out>
where
    W: AsyncWrite + Unpin,
    Out: Serialize + BulkMessage,
{
    type Error = FrameError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        if self.queued + self.buffer.len() >= BACKPRESSURE {
            self.poll_flush(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn start_send(self: Pin<&mut Self>, message: Out) -> Result<(), FrameError> {
        let this = self.get_mut();
        match message.into_bulk() {
            // A stream that writes one piece at a time would send the head
            // on its own: such a stream gets the payload copied behind it.
            Ok((make, payload))
                if payload.len() >= DIRECT_PAYLOAD && this.io.is_write_vectored() =>
            {
                bulk_frame_head(make, payload.len(), &mut this.buffer)?;
                this.seal();
                this.queued += payload.len();
                this.queue.push_back(payload);
                Ok(())
            }
            Ok((make, payload)) => this.codec.encode(make(payload), &mut this.buffer),
            Err(message) => this.codec.encode(message, &mut this.buffer),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        let this = self.get_mut();
        this.seal();
        while !this.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = this
                .queue
                .iter()
                .zip(&mut slices)
                .map(|(piece, slice)| *slice = IoSlice::new(piece))
                .count();
            let written = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            this.advance(written);
        }
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        ready!(self.as_mut().poll_flush(cx))?;
        ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::SinkExt;
    use tokio_util::codec::FramedWrite;

    use super::*;
    use crate::message::*;

    /// A stream that takes at most `step` bytes per write, and says
    /// whether it takes vectored writes.
    struct Trickle {
        written: Vec<u8>,
        step: usize,
        vectored: bool,
        writes: usize,
    }

    impl Trickle {
        fn new(step: usize, vectored: bool) -> Self {
            Trickle {
                written: Vec::new(),
                step,
                vectored,
                writes: 0,
            }
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.written.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut room = self.step;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(room);
                self.written.extend_from_slice(&buf[..take]);
                room -= take;
                n += take;
                if room == 0 {
                    break;
                }
            }
            self.writes += 1;
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Payload lengths on both sides of every boundary that changes the
    /// encoding: the direct threshold and bincode's length forms.
    fn messages() -> Vec<AgentMessage> {
        let mut messages = vec![AgentMessage::Started {
            pid: 42,
            keepalive: None,
        }];
        for len in [
            0,
            1,
            250,
            251,
            DIRECT_PAYLOAD - 1,
            DIRECT_PAYLOAD,
            65_535,
            65_536,
            crate::MAX_CHUNK_LEN,
        ] {
            let payload = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
            messages.push(AgentMessage::Stdout(payload.clone()));
            messages.push(AgentMessage::Keepalive);
            messages.push(AgentMessage::Stderr(payload.clone()));
            messages.push(AgentMessage::FileData(payload));
        }
        messages.push(AgentMessage::Exit(ExitStatus::Code(3)));
        messages
    }

    async fn through_framed_write(messages: &[AgentMessage]) -> Vec<u8> {
        let mut out = FramedWrite::new(Vec::new(), MessageCodec::<AgentMessage, ()>::new());
        for message in messages {
            out.send(message.clone()).await.unwrap();
        }
        out.into_inner()
    }

    #[tokio::test]
    async fn writes_what_framed_write_writes_whatever_the_stream_takes() {
        let messages = messages();
        let expected = through_framed_write(&messages).await;
        for (step, vectored) in [(usize::MAX, true), (7, true), (4096, true), (4096, false)] {
            let mut out = FrameWriter::new(Trickle::new(step, vectored));
            for message in &messages {
                out.feed(message.clone()).await.unwrap();
            }
            out.close().await.unwrap();
            assert!(
                out.io.written == expected,
                "step {step}, vectored {vectored}: the bytes differ"
            );
        }
    }

    #[tokio::test]
    async fn client_messages_are_written_as_framed_write_writes_them() {
        let payload = Bytes::from(vec![9u8; DIRECT_PAYLOAD * 2]);
        let messages = [
            ClientMessage::Stdin(payload.clone()),
            ClientMessage::StdinEof,
            ClientMessage::FileData(payload.slice(..100)),
            ClientMessage::FileData(payload),
        ];
        let mut expected = FramedWrite::new(Vec::new(), MessageCodec::<ClientMessage, ()>::new());
        let mut out = FrameWriter::new(Trickle::new(1000, true));
        for message in messages {
            expected.send(message.clone()).await.unwrap();
            out.send(message).await.unwrap();
        }
        assert!(out.io.written == expected.into_inner());
    }

    /// A stream that takes nothing yet.
    struct Stuck;

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[test]
    fn sending_waits_once_a_payload_waits_for_the_stream() {
        let mut out = FrameWriter::<_, AgentMessage>::new(Stuck);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut sink = Pin::new(&mut out);
        assert!(sink.as_mut().poll_ready(&mut cx).is_ready());
        sink.as_mut().start_send(AgentMessage::Keepalive).unwrap();
        assert!(
            sink.as_mut().poll_ready(&mut cx).is_ready(),
            "a small frame leaves room"
        );
        sink.as_mut()
            .start_send(AgentMessage::Stdout(Bytes::from(vec![0u8; DIRECT_PAYLOAD])))
            .unwrap();
        assert!(
            sink.as_mut().poll_ready(&mut cx).is_pending(),
            "a queued payload counts against the room"
        );
    }

    #[tokio::test]
    async fn a_large_payload_and_its_head_go_to_a_stream_that_takes_everything_in_one_write() {
        let payload = Bytes::from(vec![7u8; crate::MAX_CHUNK_LEN]);
        let mut out = FrameWriter::new(Trickle::new(usize::MAX, true));
        out.send(AgentMessage::Stdout(payload.clone()))
            .await
            .unwrap();
        assert_eq!(out.io.writes, 1);
        assert_eq!(
            out.io.written,
            through_framed_write(&[AgentMessage::Stdout(payload)]).await
        );
    }

    #[tokio::test]
    async fn the_payload_is_not_copied() {
        let payload = Bytes::from(vec![7u8; DIRECT_PAYLOAD]);
        let mut out = FrameWriter::new(Trickle::new(usize::MAX, true));
        out.feed(AgentMessage::Stdout(payload.clone()))
            .await
            .unwrap();
        let queued = out.queue.back().unwrap();
        assert_eq!(queued.as_ptr(), payload.as_ptr());
    }

    #[tokio::test]
    async fn a_message_larger_than_a_frame_is_refused_and_leaves_nothing_behind() {
        let mut out = FrameWriter::new(Trickle::new(usize::MAX, true));
        let huge = Bytes::from(vec![0u8; crate::MAX_FRAME_LEN]);
        assert!(matches!(
            out.send(AgentMessage::Stdout(huge)).await,
            Err(FrameError::Encode(_))
        ));
        out.send(AgentMessage::Keepalive).await.unwrap();
        assert_eq!(
            out.io.written,
            through_framed_write(&[AgentMessage::Keepalive]).await
        );
    }
}
