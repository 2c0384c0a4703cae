//! The wire format: `<IDS|MSG>`, an HMAC-SHA256 signature over the four JSON
//! parts (header, parent header, metadata, content), then optional buffers.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeromq::ZmqMessage;

use super::message::{Header, Message};

const DELIMITER: &[u8] = b"<IDS|MSG>";

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message has no <IDS|MSG> delimiter")]
    NoDelimiter,
    #[error("message has {0} frames after the delimiter, need at least 5")]
    TooFewFrames(usize),
    #[error("signature does not match")]
    BadSignature,
    #[error("signature is not hex")]
    SignatureNotHex,
    #[error("{part} is not valid JSON: {source}")]
    BadJson {
        part: &'static str,
        source: serde_json::Error,
    },
}

/// Signs and verifies messages with the connection file's key. An empty key
/// disables signing, as the protocol allows.
#[derive(Clone)]
pub struct Signer {
    key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("signed", &self.key.is_some())
            .finish()
    }
}

impl Signer {
    pub fn new(key: &str) -> Self {
        Signer {
            key: (!key.is_empty()).then(|| key.as_bytes().to_vec()),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> Option<Hmac<Sha256>> {
        let key = self.key.as_ref()?;
        // HMAC accepts keys of any length; new_from_slice cannot fail for it.
        let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
        for p in parts {
            mac.update(p);
        }
        Some(mac)
    }

    pub fn sign(&self, parts: &[&[u8]]) -> String {
        match self.mac(parts) {
            Some(mac) => hex::encode(mac.finalize().into_bytes()),
            None => String::new(),
        }
    }

    /// Constant-time check of a hex signature.
    pub fn verify(&self, parts: &[&[u8]], signature: &[u8]) -> Result<(), WireError> {
        let Some(mac) = self.mac(parts) else {
            return Ok(());
        };
        let sig = hex::decode(signature).map_err(|_| WireError::SignatureNotHex)?;
        mac.verify_slice(&sig).map_err(|_| WireError::BadSignature)
    }
}

pub fn encode(msg: &Message, signer: &Signer) -> ZmqMessage {
    let header = serde_json::to_vec(&msg.header).unwrap_or_default();
    let parent = serde_json::to_vec(&msg.parent_header).unwrap_or_default();
    let metadata = serde_json::to_vec(&msg.metadata).unwrap_or_default();
    let content = serde_json::to_vec(&msg.content).unwrap_or_default();
    let sig = signer.sign(&[&header, &parent, &metadata, &content]);
    let mut frames: Vec<Bytes> = msg.identities.clone();
    frames.push(Bytes::from_static(DELIMITER));
    frames.push(Bytes::from(sig.into_bytes()));
    frames.push(Bytes::from(header));
    frames.push(Bytes::from(parent));
    frames.push(Bytes::from(metadata));
    frames.push(Bytes::from(content));
    frames.extend(msg.buffers.iter().cloned());
    // A non-empty Vec always converts.
    ZmqMessage::try_from(frames).unwrap_or_else(|_| ZmqMessage::from(Vec::<u8>::new()))
}

pub fn decode(zmsg: ZmqMessage, signer: &Signer) -> Result<Message, WireError> {
    let frames = zmsg.into_vec();
    let delim = frames
        .iter()
        .position(|f| f.as_ref() == DELIMITER)
        .ok_or(WireError::NoDelimiter)?;
    let rest = &frames[delim + 1..];
    if rest.len() < 5 {
        return Err(WireError::TooFewFrames(rest.len()));
    }
    signer.verify(&[&rest[1], &rest[2], &rest[3], &rest[4]], &rest[0])?;
    let json = |part: &'static str, b: &Bytes| {
        serde_json::from_slice::<serde_json::Value>(b).map_err(|source| WireError::BadJson { part, source })
    };
    let header: Header = serde_json::from_slice(&rest[1]).map_err(|source| WireError::BadJson {
        part: "header",
        source,
    })?;
    Ok(Message {
        identities: frames[..delim].to_vec(),
        header,
        parent_header: json("parent_header", &rest[2])?,
        metadata: json("metadata", &rest[3])?,
        content: json("content", &rest[4])?,
        buffers: rest[5..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Message {
        let mut m = Message::new("execute_request", json!({"code": "1+1"}), "s1");
        m.identities = vec![Bytes::from_static(b"id")];
        m
    }

    #[test]
    fn signed_message_round_trips() {
        let s = Signer::new("secret");
        let m = sample();
        let back = decode(encode(&m, &s), &s).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn forged_signature_is_rejected() {
        let m = sample();
        let z = encode(&m, &Signer::new("other key"));
        assert!(matches!(
            decode(z, &Signer::new("secret")),
            Err(WireError::BadSignature)
        ));
    }

    #[test]
    fn tampered_content_is_rejected() {
        let s = Signer::new("secret");
        let mut frames = encode(&sample(), &s).into_vec();
        let last = frames.len() - 1;
        frames[last] = Bytes::from_static(br#"{"code":"import os"}"#);
        let z = ZmqMessage::try_from(frames).unwrap();
        assert!(matches!(decode(z, &s), Err(WireError::BadSignature)));
    }

    #[test]
    fn garbage_frames_are_errors_not_panics() {
        let s = Signer::new("secret");
        let z = ZmqMessage::from(b"hello".to_vec());
        assert!(matches!(decode(z, &s), Err(WireError::NoDelimiter)));
        let z = ZmqMessage::try_from(vec![Bytes::from_static(DELIMITER), Bytes::from_static(b"x")]).unwrap();
        assert!(matches!(decode(z, &s), Err(WireError::TooFewFrames(1))));
    }

    /// Found by fuzz/wire_decode: serde_json's default float parser read
    /// this (Python's repr of the float) one ULP off, so a kernel's number
    /// changed on its way through the sidecar, and again on every re-parse.
    #[test]
    fn floats_come_through_bit_for_bit() {
        let s = Signer::new("secret");
        let text = "1.7938405674311579e+308";
        let mut frames = encode(&sample(), &s).into_vec();
        let content = format!(r#"{{"x":{text}}}"#);
        let n = frames.len();
        frames[n - 1] = Bytes::from(content);
        let parts: Vec<&[u8]> = frames[n - 4..].iter().map(|b| b.as_ref()).collect();
        frames[n - 5] = Bytes::from(s.sign(&parts).into_bytes());
        let m = decode(ZmqMessage::try_from(frames).unwrap(), &s).unwrap();
        let want: f64 = text.parse().unwrap();
        assert_eq!(m.content["x"].as_f64().map(f64::to_bits), Some(want.to_bits()));
        assert_eq!(decode(encode(&m, &s), &s).unwrap(), m);
    }

    #[test]
    fn unsigned_when_key_is_empty() {
        let s = Signer::new("");
        let back = decode(encode(&sample(), &s), &s).unwrap();
        assert_eq!(back.msg_type(), "execute_request");
    }
}
