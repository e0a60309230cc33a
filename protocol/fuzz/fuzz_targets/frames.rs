//! Arbitrary bytes into both decoders, as they would arrive from a peer:
//! the typed frame codec fed in random-sized pieces, then each message
//! decoder on the raw bytes as a frame body. Nothing may panic, a decoded
//! message must encode back to a frame that decodes to itself, and the
//! typed codec (with its shortcut for output, stdin and file data) must
//! make of a frame what the message decoder makes of its body.

#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use rexec_protocol::codec::{decode_message, encode_message};
use rexec_protocol::{AgentCodec, AgentMessage, ClientCodec, ClientMessage, MAX_FRAME_LEN};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the stream is cut into reads.
    let (step, stream) = match data.split_first() {
        Some((step, rest)) => (usize::from(*step).max(1), rest),
        None => return,
    };
    feed(&mut AgentCodec::new(), stream, step);
    feed(&mut ClientCodec::new(), stream, step);

    if stream.len() <= MAX_FRAME_LEN {
        let mut frame = BytesMut::new();
        frame.put_u32(stream.len() as u32);
        frame.extend_from_slice(stream);
        assert_eq!(
            AgentCodec::new().decode(&mut frame.clone()).ok().flatten(),
            decode_message::<ClientMessage>(stream).ok()
        );
        assert_eq!(
            ClientCodec::new().decode(&mut frame).ok().flatten(),
            decode_message::<AgentMessage>(stream).ok()
        );
    }

    if let Ok(message) = decode_message::<ClientMessage>(stream) {
        let body = encode_message(&message).expect("a decoded message encodes");
        assert_eq!(decode_message::<ClientMessage>(&body).ok(), Some(message));
    }
    if let Ok(message) = decode_message::<AgentMessage>(stream) {
        let body = encode_message(&message).expect("a decoded message encodes");
        assert_eq!(decode_message::<AgentMessage>(&body).ok(), Some(message));
    }
});

fn feed<D: Decoder>(codec: &mut D, stream: &[u8], step: usize) {
    let mut buffer = BytesMut::new();
    for piece in stream.chunks(step) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                // A protocol error ends the connection: stop here.
                Err(_) => return,
            }
        }
    }
    let _ = codec.decode_eof(&mut buffer);
}
