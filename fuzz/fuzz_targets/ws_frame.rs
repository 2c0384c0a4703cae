//! Frames a Jupyter client sends on the kernel's channels WebSocket
//! (`/v1/kernel/channels`), in either protocol: the first byte picks text
//! or binary and legacy or v1, the rest is the frame. Beyond "no panic": a
//! frame taken as a message comes back as the same message when the
//! sidecar encodes it and decodes it again.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use notebook_operator::jupyter::ws::{decode, encode, Frame, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let protocol = if mode & 1 == 0 { Protocol::Legacy } else { Protocol::V1 };
    let frame = if mode & 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(t) => Frame::Text(t.to_string()),
            Err(_) => return,
        }
    } else {
        Frame::Binary(Bytes::copy_from_slice(rest))
    };
    if let Ok((channel, msg)) = decode(&frame, protocol) {
        for p in [Protocol::Legacy, Protocol::V1] {
            let again = decode(&encode(channel, &msg, p), p).expect("an encoded message decodes");
            assert_eq!(again, (channel, msg.clone()), "round trip through {p:?}");
        }
    }
});
