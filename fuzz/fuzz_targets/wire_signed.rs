//! Frames a peer holding the key can send: identities, the four JSON parts
//! and buffers from the input, signed here with the key, so every input gets
//! past the signature check into the JSON parsing. Input: frames separated by
//! 0xFF; the first byte says how many leading frames are identities (0-3),
//! then header, parent header, metadata, content (`{}` when missing), then
//! buffers.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use notebook_operator::jupyter::wire::{decode, encode, Signer, WireError};
use notebook_operator::jupyter::Header;
use serde_json::Value;
use zeromq::ZmqMessage;

const DELIMITER: &[u8] = b"<IDS|MSG>";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let signer = Signer::new("fuzz-key");
    let mut parts: Vec<&[u8]> = rest.split(|&b| b == 0xFF).collect();
    let n_ids = usize::from(mode % 4).min(parts.len());
    let ids: Vec<&[u8]> = parts.drain(..n_ids).collect();
    if ids.contains(&DELIMITER) {
        return; // then the frame we mean as the delimiter is not the first one
    }
    while parts.len() < 4 {
        parts.push(b"{}");
    }
    let json: Vec<&[u8]> = parts[..4].to_vec();
    let buffers: Vec<&[u8]> = parts[4..].to_vec();

    let sig = signer.sign(&json);
    let mut frames: Vec<Bytes> = ids.iter().map(|f| Bytes::copy_from_slice(f)).collect();
    frames.push(Bytes::from_static(DELIMITER));
    frames.push(Bytes::from(sig.into_bytes()));
    frames.extend(json.iter().chain(&buffers).map(|f| Bytes::copy_from_slice(f)));
    let zmsg = ZmqMessage::try_from(frames).expect("frames are not empty");

    let header = serde_json::from_slice::<Header>(json[0]);
    let values: Vec<_> = json[1..]
        .iter()
        .map(|p| serde_json::from_slice::<Value>(p))
        .collect();
    match decode(zmsg, &signer) {
        Ok(msg) => {
            assert_eq!(
                msg.header,
                header.expect("decode accepted a header serde refuses")
            );
            let want: Vec<Value> = values
                .into_iter()
                .map(|v| v.expect("decode accepted bad JSON"))
                .collect();
            assert_eq!(
                [&msg.parent_header, &msg.metadata, &msg.content],
                [&want[0], &want[1], &want[2]]
            );
            assert_eq!(msg.identities.iter().map(|b| b.as_ref()).collect::<Vec<_>>(), ids);
            assert_eq!(
                msg.buffers.iter().map(|b| b.as_ref()).collect::<Vec<_>>(),
                buffers
            );
            let again = decode(encode(&msg, &signer), &signer).expect("our own encoding decodes");
            assert_eq!(again, msg);
        }
        Err(WireError::BadJson { part, .. }) => {
            let bad = match part {
                "header" => header.is_err(),
                "parent_header" => values[0].is_err(),
                "metadata" => values[1].is_err(),
                "content" => values[2].is_err(),
                other => panic!("unknown part {other}"),
            };
            assert!(bad, "decode refused {part}, which parses");
        }
        Err(e) => panic!("a correctly signed message was refused: {e}"),
    }
});
