//! Jupyter messages: a typed header and JSON bodies, so that message types
//! this crate does not know pass through unchanged.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const PROTOCOL_VERSION: &str = "5.3";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub msg_id: String,
    pub session: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub date: String,
    pub msg_type: String,
    #[serde(default)]
    pub version: String,
}

/// One Jupyter message, as sent or received on any channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// ZeroMQ routing prefix (before `<IDS|MSG>`); the iopub topic on iopub.
    pub identities: Vec<Bytes>,
    pub header: Header,
    /// `{}` when the message has no parent.
    pub parent_header: Value,
    pub metadata: Value,
    pub content: Value,
    pub buffers: Vec<Bytes>,
}

impl Message {
    pub fn new(msg_type: &str, content: Value, session: &str) -> Self {
        Message {
            identities: Vec::new(),
            header: Header {
                msg_id: uuid::Uuid::new_v4().simple().to_string(),
                session: session.to_string(),
                username: "notebook-operator".into(),
                date: crate::util::now_rfc3339(),
                msg_type: msg_type.to_string(),
                version: PROTOCOL_VERSION.into(),
            },
            parent_header: json!({}),
            metadata: json!({}),
            content,
            buffers: Vec::new(),
        }
    }

    /// A reply to `parent` (same session, parent header set).
    pub fn reply_to(parent: &Message, msg_type: &str, content: Value, session: &str) -> Self {
        let mut m = Message::new(msg_type, content, session);
        m.parent_header = serde_json::to_value(&parent.header).unwrap_or_else(|_| json!({}));
        m
    }

    pub fn msg_type(&self) -> &str {
        &self.header.msg_type
    }

    /// The `msg_id` of the request this message answers, if any.
    pub fn parent_msg_id(&self) -> Option<&str> {
        self.parent_header.get("msg_id").and_then(Value::as_str)
    }
}
