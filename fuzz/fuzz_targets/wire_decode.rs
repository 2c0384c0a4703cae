//! Raw frames from a kernel (or anything that reached its ports) into
//! `jupyter::wire::decode`. Input: a mode byte, then frames separated by
//! 0xFF (a byte that never occurs in UTF-8, so JSON frames stay readable in
//! the corpus). Mode bit 0 set: unsigned (empty key), so every frame reaches
//! the JSON parsing; clear: the fixed key, so the signature check is what is
//! fuzzed (the corpus has frames signed with it).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use notebook_operator::jupyter::wire::{decode, encode, Signer};
use zeromq::ZmqMessage;

const KEY: &str = "fuzz-key";
const DELIMITER: &[u8] = b"<IDS|MSG>";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let signer = Signer::new(if mode & 1 == 1 { "" } else { KEY });
    let frames: Vec<Bytes> = rest.split(|&b| b == 0xFF).map(Bytes::copy_from_slice).collect();
    let Ok(zmsg) = ZmqMessage::try_from(frames.clone()) else {
        return;
    };
    let Ok(msg) = decode(zmsg, &signer) else {
        return;
    };
    // What was accepted is what was sent, in place.
    let delim = msg.identities.len();
    assert_eq!(frames[delim].as_ref(), DELIMITER);
    assert_eq!(&frames[..delim], &msg.identities[..]);
    assert_eq!(&frames[delim + 6..], &msg.buffers[..]);
    if mode & 1 == 0 {
        // Accepted with the key: the frame held the HMAC of the four parts
        // (hex in either case), nothing else.
        let parts: Vec<&[u8]> = frames[delim + 2..delim + 6].iter().map(|b| b.as_ref()).collect();
        let want = signer.sign(&parts);
        assert!(
            frames[delim + 1].eq_ignore_ascii_case(want.as_bytes()),
            "accepted a signature that is not the HMAC of the parts"
        );
    }
    // What we re-send of it decodes to the same message.
    let again = decode(encode(&msg, &signer), &signer).expect("our own encoding decodes");
    assert_eq!(again, msg);
});
