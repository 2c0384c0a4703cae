//! The kernel's messages for Jupyter clients (the channels WebSocket,
//! `/v1/kernel/channels`): every message the kernel sends while the sidecar
//! is connected is kept in a bounded ring with a sequence number, and each
//! connection reads the ring from where it is. A connection delivers what
//! is its own ([`delivers`]): everything on iopub, and the replies on shell,
//! stdin and control to requests its client sent. Where a client session
//! (`?session_id=`) got to is remembered, so a client that reconnects with
//! the same session gets what it missed while it was away, or hears that
//! the ring no longer holds it.
//!
//! Publishing never waits for a connection: a slow one falls behind in the
//! ring, and one that fell out of it is told so.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::jupyter::{Channel, KernelMessage};

#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    pub ring_messages: usize,
    pub ring_bytes: usize,
    /// Client sessions whose position is remembered.
    pub sessions: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            ring_messages: 4096,
            ring_bytes: 32 << 20,
            sessions: 1024,
        }
    }
}

struct Kept {
    seq: u64,
    size: usize,
    msg: Arc<KernelMessage>,
}

struct Inner {
    ring: VecDeque<Kept>,
    bytes: usize,
    next_seq: u64,
    /// Client session → the newest sequence number delivered to it, in the
    /// order they were first seen (the oldest forgotten first).
    positions: HashMap<String, u64>,
    seen: VecDeque<String>,
}

pub struct Hub {
    cfg: HubConfig,
    inner: Mutex<Inner>,
    newest: watch::Sender<u64>,
    connections: AtomicI64,
}

/// What a connection reads from the ring.
pub struct Batch {
    pub messages: Vec<(u64, Arc<KernelMessage>)>,
    /// Messages after the reader's position that the ring dropped.
    pub missed: u64,
}

fn size_of(m: &KernelMessage) -> usize {
    m.msg.content.to_string().len() + m.msg.buffers.iter().map(|b| b.len()).sum::<usize>() + 512
}

impl Hub {
    pub fn new(cfg: HubConfig) -> Arc<Hub> {
        Arc::new(Hub {
            cfg,
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                positions: HashMap::new(),
                seen: VecDeque::new(),
            }),
            newest: watch::channel(0).0,
            connections: AtomicI64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps one kernel message for the clients.
    pub fn publish(&self, m: &KernelMessage) {
        let seq = {
            let mut inner = self.lock();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let size = size_of(m);
            inner.bytes += size;
            inner.ring.push_back(Kept {
                seq,
                size,
                msg: Arc::new(m.clone()),
            });
            while inner.ring.len() > self.cfg.ring_messages
                || (inner.bytes > self.cfg.ring_bytes && inner.ring.len() > 1)
            {
                if let Some(old) = inner.ring.pop_front() {
                    inner.bytes -= old.size;
                }
            }
            seq
        };
        self.newest.send_replace(seq);
    }

    /// The newest sequence number published (0 before any); it changes on
    /// each publish.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }

    pub fn newest(&self) -> u64 {
        *self.newest.borrow()
    }

    /// Everything after `after`, and how much of it is gone.
    pub fn since(&self, after: u64) -> Batch {
        let inner = self.lock();
        let oldest = inner.ring.front().map_or(inner.next_seq, |k| k.seq);
        let missed = oldest.saturating_sub(after + 1);
        let messages = inner
            .ring
            .iter()
            .filter(|k| k.seq > after)
            .map(|k| (k.seq, k.msg.clone()))
            .collect();
        Batch { messages, missed }
    }

    /// Where a client session got to, if it was here before.
    pub fn position(&self, session: &str) -> Option<u64> {
        self.lock().positions.get(session).copied()
    }

    /// Remembers where a client session got to.
    pub fn remember(&self, session: &str, seq: u64) {
        let mut inner = self.lock();
        if inner.positions.insert(session.to_string(), seq).is_none() {
            inner.seen.push_back(session.to_string());
            while inner.seen.len() > self.cfg.sessions {
                if let Some(old) = inner.seen.pop_front() {
                    inner.positions.remove(&old);
                }
            }
        }
    }

    /// Counts a connection for as long as the guard lives.
    pub fn connect(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }
}

pub struct ConnectionGuard(Arc<Hub>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The requests one connection sent, so their replies reach it (bounded:
/// the oldest are forgotten first).
#[derive(Default)]
pub struct Sent {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

const SENT_KEPT: usize = 10_000;

impl Sent {
    pub fn add(&mut self, msg_id: &str) {
        if self.ids.insert(msg_id.to_string()) {
            self.order.push_back(msg_id.to_string());
            while self.order.len() > SENT_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    pub fn contains(&self, msg_id: &str) -> bool {
        self.ids.contains(msg_id)
    }
}

/// Whether a connection whose client session is `session` and which sent
/// `sent` gets kernel message `m`: every iopub message (all clients see the
/// kernel's output and state), and a reply on shell, stdin or control when
/// it answers one of its requests, or a request of its client session (sent
/// over an earlier connection).
pub fn delivers(m: &KernelMessage, sent: &Sent, session: Option<&str>) -> bool {
    if m.channel == Channel::Iopub {
        return true;
    }
    let parent = &m.msg.parent_header;
    let by_id = parent
        .get("msg_id")
        .and_then(|v| v.as_str())
        .is_some_and(|id| sent.contains(id));
    let by_session = session.is_some_and(|s| parent.get("session").and_then(|v| v.as_str()) == Some(s));
    by_id || by_session
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jupyter::Message;
    use serde_json::json;

    fn km(channel: Channel, parent_id: &str, parent_session: &str) -> KernelMessage {
        let mut msg = Message::new("x", json!({}), "kernel");
        msg.parent_header = json!({"msg_id": parent_id, "session": parent_session});
        KernelMessage { channel, msg }
    }

    #[test]
    fn iopub_reaches_everyone_and_replies_only_their_requester() {
        let mut mine = Sent::default();
        mine.add("m1");
        let other = Sent::default();
        let reply = km(Channel::Shell, "m1", "client-a");
        assert!(delivers(&reply, &mine, None));
        assert!(!delivers(&reply, &other, Some("client-b")));
        assert!(
            delivers(&reply, &other, Some("client-a")),
            "same client session, new connection"
        );
        let out = km(Channel::Iopub, "m1", "client-a");
        assert!(delivers(&out, &other, None));
        let stdin = km(Channel::Stdin, "m2", "client-a");
        assert!(!delivers(&stdin, &mine, None));
    }

    #[test]
    fn the_ring_is_bounded_and_says_what_was_missed() {
        let hub = Hub::new(HubConfig {
            ring_messages: 3,
            ring_bytes: 1 << 20,
            sessions: 2,
        });
        for _ in 0..5 {
            hub.publish(&km(Channel::Iopub, "p", "s"));
        }
        assert_eq!(hub.newest(), 5);
        let b = hub.since(0);
        assert_eq!(b.missed, 2);
        assert_eq!(b.messages.iter().map(|m| m.0).collect::<Vec<_>>(), vec![3, 4, 5]);
        let b = hub.since(3);
        assert_eq!(b.missed, 0);
        assert_eq!(b.messages.len(), 2);
        assert!(hub.since(5).messages.is_empty());
    }

    #[test]
    fn positions_are_remembered_for_a_bounded_number_of_sessions() {
        let hub = Hub::new(HubConfig {
            ring_messages: 3,
            ring_bytes: 1 << 20,
            sessions: 2,
        });
        hub.remember("a", 1);
        hub.remember("b", 2);
        hub.remember("a", 3);
        assert_eq!(hub.position("a"), Some(3));
        hub.remember("c", 4);
        assert_eq!(hub.position("a"), None, "the oldest seen is forgotten");
        assert_eq!(hub.position("c"), Some(4));
    }

    #[test]
    fn connections_are_counted_while_their_guard_lives() {
        let hub = Hub::new(HubConfig::default());
        let g1 = hub.connect();
        let g2 = hub.connect();
        assert_eq!(hub.connections(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(hub.connections(), 0);
    }
}
