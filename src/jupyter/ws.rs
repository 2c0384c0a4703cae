//! Jupyter messages over a WebSocket, as Jupyter Server's kernel
//! `channels` endpoint carries them, in both of its wire protocols:
//!
//! - **legacy** (no subprotocol): a text frame holding the message as JSON,
//!   with a `channel` field; a message with buffers is a binary frame of
//!   big-endian `u32`s (the part count, then each part's offset) followed by
//!   the JSON and the buffers.
//! - **v1** (`v1.kernel.websocket.jupyter.org`): every message a binary
//!   frame of little-endian `u64`s (the offset count, then the offsets)
//!   followed by the channel name, header, parent header, metadata, content
//!   and buffers.
//!
//! Pure: bytes in, [`Message`]s out and back. Every malformed frame is an
//! error that says what is wrong; nothing here panics on a peer's input.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::client::Channel;
use super::message::{Header, Message};

/// The subprotocol name of the v1 protocol.
pub const V1_PROTOCOL: &str = "v1.kernel.websocket.jupyter.org";

/// Which framing a connection speaks, settled at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Legacy,
    V1,
}

/// One frame as a WebSocket carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Bytes),
}

/// Why a frame is not a Jupyter message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("the message has no {0}")]
    Missing(&'static str),
    #[error("{0}")]
    Field(String),
    #[error("unknown channel {0:?}")]
    Channel(String),
    #[error("binary framing: {0}")]
    Framing(String),
}

pub fn channel_name(c: Channel) -> &'static str {
    match c {
        Channel::Shell => "shell",
        Channel::Control => "control",
        Channel::Iopub => "iopub",
        Channel::Stdin => "stdin",
    }
}

pub fn parse_channel(name: &str) -> Result<Channel, FrameError> {
    match name {
        "shell" => Ok(Channel::Shell),
        "control" => Ok(Channel::Control),
        "iopub" => Ok(Channel::Iopub),
        "stdin" => Ok(Channel::Stdin),
        other => Err(FrameError::Channel(other.chars().take(64).collect())),
    }
}

/// The header, which must name at least the message id, session and type.
/// Its `date` may be text, or a number of seconds since the epoch as
/// Jupyter Server's own gateway client sends it; anything else is dropped.
fn header(mut v: Value) -> Result<Header, FrameError> {
    let Some(obj) = v.as_object_mut() else {
        return Err(FrameError::Missing("header"));
    };
    match obj.get("date") {
        None | Some(Value::String(_)) => {}
        Some(Value::Number(n)) => {
            let date = n
                .as_f64()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp_nanos((s * 1e9) as i128).ok())
                .map(crate::util::format_rfc3339)
                .unwrap_or_default();
            obj.insert("date".into(), Value::String(date));
        }
        Some(_) => {
            obj.remove("date");
        }
    }
    serde_json::from_value(v).map_err(|e| FrameError::Field(format!("header: {e}")))
}

fn object_or_empty(v: Option<Value>, field: &'static str) -> Result<Value, FrameError> {
    match v {
        None | Some(Value::Null) => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(FrameError::Field(format!("{field} must be an object"))),
    }
}

fn message(
    header_v: Value,
    parent: Option<Value>,
    metadata: Option<Value>,
    content: Option<Value>,
    buffers: Vec<Bytes>,
) -> Result<Message, FrameError> {
    Ok(Message {
        identities: Vec::new(),
        header: header(header_v)?,
        parent_header: object_or_empty(parent, "parent_header")?,
        metadata: object_or_empty(metadata, "metadata")?,
        content: object_or_empty(content, "content")?,
        buffers,
    })
}

/// A legacy message: the JSON object, and the buffers that came beside it.
fn from_json(text: &[u8], buffers: Vec<Bytes>) -> Result<(Channel, Message), FrameError> {
    let v: Value = serde_json::from_slice(text).map_err(|e| FrameError::Json(e.to_string()))?;
    let Value::Object(mut obj) = v else {
        return Err(FrameError::Json("not an object".into()));
    };
    // A message that names no channel is for shell, as Jupyter Server
    // takes it (its own gateway client never names one).
    let channel = match obj.remove("channel") {
        Some(Value::String(c)) => parse_channel(&c)?,
        None | Some(Value::Null) => Channel::Shell,
        Some(_) => return Err(FrameError::Field("channel must be a string".into())),
    };
    let header_v = obj.remove("header").ok_or(FrameError::Missing("header"))?;
    let m = message(
        header_v,
        obj.remove("parent_header"),
        obj.remove("metadata"),
        obj.remove("content"),
        buffers,
    )?;
    Ok((channel, m))
}

fn u32_at(b: &[u8], i: usize) -> Option<usize> {
    let s = b.get(i * 4..i * 4 + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

fn u64_at(b: &[u8], i: usize) -> Option<usize> {
    let s = b.get(i * 8..i * 8 + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    usize::try_from(u64::from_le_bytes(a)).ok()
}

/// The parts a table of offsets cuts `b` into; each offset must lie in the
/// frame and not before the one before it.
fn cut(b: &[u8], offsets: &[usize]) -> Result<Vec<Bytes>, FrameError> {
    let mut parts = Vec::with_capacity(offsets.len());
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(b.len());
        if start > end || end > b.len() {
            return Err(FrameError::Framing(format!(
                "part {i} runs from {start} to {end} in a frame of {} bytes",
                b.len()
            )));
        }
        parts.push(Bytes::copy_from_slice(&b[start..end]));
    }
    Ok(parts)
}

/// Most parts a frame may declare (a message's four JSON parts and buffers).
const MAX_PARTS: usize = 4096;

fn legacy_binary(b: &[u8]) -> Result<(Channel, Message), FrameError> {
    let n = u32_at(b, 0).ok_or_else(|| FrameError::Framing("shorter than its part count".into()))?;
    if n == 0 || n > MAX_PARTS {
        return Err(FrameError::Framing(format!("{n} parts")));
    }
    let offsets = (1..=n)
        .map(|i| u32_at(b, i))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| FrameError::Framing("shorter than its offset table".into()))?;
    if offsets[0] < 4 * (n + 1) {
        return Err(FrameError::Framing(
            "the first part overlaps the offset table".into(),
        ));
    }
    let mut parts = cut(b, &offsets)?;
    let json = parts.remove(0);
    from_json(&json, parts)
}

fn v1_binary(b: &[u8]) -> Result<(Channel, Message), FrameError> {
    let n = u64_at(b, 0).ok_or_else(|| FrameError::Framing("shorter than its offset count".into()))?;
    // The channel's start and end, then the end of each of four JSON parts.
    if !(6..=MAX_PARTS).contains(&n) {
        return Err(FrameError::Framing(format!(
            "{n} offsets; a message needs at least 6"
        )));
    }
    let offsets = (1..=n)
        .map(|i| u64_at(b, i))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| FrameError::Framing("shorter than its offset table".into()))?;
    if offsets[0] < 8 * (n + 1) {
        return Err(FrameError::Framing(
            "the channel overlaps the offset table".into(),
        ));
    }
    if offsets[n - 1] != b.len() {
        return Err(FrameError::Framing(format!(
            "the last offset is {}, the frame {} bytes",
            offsets[n - 1],
            b.len()
        )));
    }
    // Parts between consecutive offsets: the channel, four JSON parts, buffers.
    let parts = cut(b, &offsets[..n - 1])?;
    let channel =
        std::str::from_utf8(&parts[0]).map_err(|_| FrameError::Framing("the channel is not UTF-8".into()))?;
    let channel = parse_channel(channel)?;
    let json_part = |i: usize, name: &'static str| -> Result<Value, FrameError> {
        serde_json::from_slice(&parts[i]).map_err(|e| FrameError::Json(format!("{name}: {e}")))
    };
    let m = message(
        json_part(1, "header")?,
        Some(json_part(2, "parent_header")?),
        Some(json_part(3, "metadata")?),
        Some(json_part(4, "content")?),
        parts[5..].to_vec(),
    )?;
    Ok((channel, m))
}

/// A frame a client sent, as a message for the kernel.
pub fn decode(frame: &Frame, protocol: Protocol) -> Result<(Channel, Message), FrameError> {
    match (frame, protocol) {
        (Frame::Text(t), _) => from_json(t.as_bytes(), Vec::new()),
        (Frame::Binary(b), Protocol::Legacy) => legacy_binary(b),
        (Frame::Binary(b), Protocol::V1) => v1_binary(b),
    }
}

/// The message as the legacy protocol's JSON object (the form Jupyter
/// Server sends: `msg_id` and `msg_type` repeated at the top).
fn to_json(channel: Channel, m: &Message) -> Value {
    let mut obj = Map::new();
    obj.insert(
        "header".into(),
        serde_json::to_value(&m.header).unwrap_or_default(),
    );
    obj.insert("msg_id".into(), json!(m.header.msg_id));
    obj.insert("msg_type".into(), json!(m.header.msg_type));
    obj.insert("parent_header".into(), m.parent_header.clone());
    obj.insert("metadata".into(), m.metadata.clone());
    obj.insert("content".into(), m.content.clone());
    obj.insert("buffers".into(), json!([]));
    obj.insert("channel".into(), json!(channel_name(channel)));
    Value::Object(obj)
}

/// A kernel's message as a frame for a client of `protocol`.
pub fn encode(channel: Channel, m: &Message, protocol: Protocol) -> Frame {
    match protocol {
        Protocol::Legacy if m.buffers.is_empty() => Frame::Text(to_json(channel, m).to_string()),
        Protocol::Legacy => {
            let json = to_json(channel, m).to_string().into_bytes();
            let parts: Vec<&[u8]> = std::iter::once(json.as_slice())
                .chain(m.buffers.iter().map(|b| b.as_ref()))
                .collect();
            let n = parts.len();
            let mut out = Vec::with_capacity(4 * (n + 1) + parts.iter().map(|p| p.len()).sum::<usize>());
            out.extend_from_slice(&(n as u32).to_be_bytes());
            let mut at = 4 * (n + 1);
            for p in &parts {
                out.extend_from_slice(&(at as u32).to_be_bytes());
                at += p.len();
            }
            for p in parts {
                out.extend_from_slice(p);
            }
            Frame::Binary(out.into())
        }
        Protocol::V1 => {
            let json_parts = [
                serde_json::to_vec(&m.header).unwrap_or_default(),
                serde_json::to_vec(&m.parent_header).unwrap_or_default(),
                serde_json::to_vec(&m.metadata).unwrap_or_default(),
                serde_json::to_vec(&m.content).unwrap_or_default(),
            ];
            let name = channel_name(channel).as_bytes();
            let parts: Vec<&[u8]> = std::iter::once(name)
                .chain(json_parts.iter().map(Vec::as_slice))
                .chain(m.buffers.iter().map(|b| b.as_ref()))
                .collect();
            // Offsets: the start of each part, and the end of the last.
            let n = parts.len() + 1;
            let mut out = Vec::with_capacity(8 * (n + 1) + parts.iter().map(|p| p.len()).sum::<usize>());
            out.extend_from_slice(&(n as u64).to_le_bytes());
            let mut at = 8 * (n + 1);
            out.extend_from_slice(&(at as u64).to_le_bytes());
            for p in &parts {
                at += p.len();
                out.extend_from_slice(&(at as u64).to_le_bytes());
            }
            for p in parts {
                out.extend_from_slice(p);
            }
            Frame::Binary(out.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(buffers: Vec<Bytes>) -> Message {
        let mut m = Message::new(
            "comm_msg",
            json!({"comm_id": "c1", "data": {"value": 3}}),
            "client-1",
        );
        m.parent_header = json!({"msg_id": "p1", "session": "client-1", "msg_type": "execute_request"});
        m.metadata = json!({"cellId": "abc"});
        m.buffers = buffers;
        m
    }

    #[test]
    fn legacy_text_round_trips() {
        let m = sample(vec![]);
        let f = encode(Channel::Iopub, &m, Protocol::Legacy);
        let Frame::Text(t) = &f else {
            panic!("text expected")
        };
        let v: Value = serde_json::from_str(t).unwrap();
        assert_eq!(v["msg_type"], "comm_msg");
        assert_eq!(v["msg_id"], json!(m.header.msg_id));
        assert_eq!(decode(&f, Protocol::Legacy).unwrap(), (Channel::Iopub, m));
    }

    #[test]
    fn legacy_binary_carries_buffers() {
        let m = sample(vec![
            Bytes::from_static(b"\x00\x01\x02"),
            Bytes::from_static(b"xyz"),
        ]);
        let f = encode(Channel::Shell, &m, Protocol::Legacy);
        assert!(matches!(f, Frame::Binary(_)));
        assert_eq!(decode(&f, Protocol::Legacy).unwrap(), (Channel::Shell, m));
    }

    #[test]
    fn v1_round_trips_with_and_without_buffers() {
        for buffers in [vec![], vec![Bytes::from_static(b"\xffbin")]] {
            let m = sample(buffers);
            let f = encode(Channel::Stdin, &m, Protocol::V1);
            assert_eq!(decode(&f, Protocol::V1).unwrap(), (Channel::Stdin, m));
        }
    }

    /// The layout Jupyter Server's `serialize_msg_to_ws_v1` writes: an
    /// offset count, offsets from the channel's start to the frame's end.
    #[test]
    fn v1_layout_is_jupyter_servers() {
        let m = sample(vec![]);
        let Frame::Binary(b) = encode(Channel::Shell, &m, Protocol::V1) else {
            panic!()
        };
        let n = u64_at(&b, 0).unwrap();
        assert_eq!(n, 6);
        assert_eq!(u64_at(&b, 1).unwrap(), 8 * 7);
        assert_eq!(&b[56..61], b"shell");
        assert_eq!(u64_at(&b, 6).unwrap(), b.len());
    }

    #[test]
    fn frames_that_are_not_messages_are_errors() {
        let bad = [
            Frame::Text("not json".into()),
            Frame::Text("[1,2]".into()),
            Frame::Text(r#"{"channel": 3, "header": {"msg_id": "a", "session": "s", "msg_type": "x"}}"#.into()),
            Frame::Text(r#"{"channel": "shell"}"#.into()),
            Frame::Text(r#"{"channel": "nowhere", "header": {}}"#.into()),
            Frame::Text(r#"{"channel": "shell", "header": {"msg_id": "a"}}"#.into()),
            Frame::Text(
                r#"{"channel": "shell", "header": {"msg_id": "a", "session": "s", "msg_type": "x"}, "content": 3}"#
                    .into(),
            ),
        ];
        for f in bad {
            assert!(decode(&f, Protocol::Legacy).is_err(), "{f:?}");
        }
        let junk = [
            Bytes::new(),
            Bytes::from_static(&[0, 0, 0, 9]),
            Bytes::from_static(&[0xff; 64]),
            Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 200, b'{', b'}']),
        ];
        for b in junk {
            let f = Frame::Binary(b);
            assert!(decode(&f, Protocol::Legacy).is_err());
            assert!(decode(&f, Protocol::V1).is_err());
        }
    }

    /// What Jupyter Server's GatewayKernelClient sends: no channel, the
    /// date as epoch seconds.
    #[test]
    fn a_message_without_channel_is_for_shell_and_an_epoch_date_is_taken() {
        let f = Frame::Text(
            r#"{"header": {"msg_id": "a", "session": "s", "msg_type": "kernel_info_request", "date": 1764626400.5},
                "parent_header": {}, "metadata": {}, "content": {}, "msg_id": "a", "msg_type": "kernel_info_request"}"#
                .into(),
        );
        let (channel, m) = decode(&f, Protocol::Legacy).unwrap();
        assert_eq!(channel, Channel::Shell);
        assert!(
            m.header.date.starts_with("2025-12-01T22:00:00.5"),
            "{}",
            m.header.date
        );
    }

    #[test]
    fn a_v1_frame_whose_offsets_run_backwards_is_refused() {
        let m = sample(vec![]);
        let Frame::Binary(b) = encode(Channel::Shell, &m, Protocol::V1) else {
            panic!()
        };
        let mut b = b.to_vec();
        b[8 * 3..8 * 4].copy_from_slice(&1u64.to_le_bytes());
        assert!(decode(&Frame::Binary(b.into()), Protocol::V1).is_err());
    }
}
