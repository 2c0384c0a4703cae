//! Publishing and subscribing. Publishing never waits: a client whose queue is
//! full is cut off (its sender dropped) and learns so from a final `gap`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::mpsc;

/// One event, serialised once and shared by every client.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub kind: &'static str,
    pub execution_id: Option<String>,
    /// The whole event as JSON text, `seq` and `type` included.
    pub json: String,
}

impl Event {
    pub fn bytes(&self) -> usize {
        self.json.len() + 64
    }
}

#[derive(Debug, Clone)]
pub struct BusConfig {
    pub ring_events: usize,
    pub ring_bytes: usize,
    pub client_queue: usize,
    /// Bytes of events queued per client before it is cut off.
    pub client_queue_bytes: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            ring_events: 1000,
            ring_bytes: 16 << 20,
            client_queue: 1024,
            client_queue_bytes: 16 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubscribeError {
    #[error("since={since} is in the future: the newest event is {newest}")]
    Future { since: u64, newest: u64 },
}

struct Client {
    tx: mpsc::Sender<Arc<Event>>,
    execution: Option<String>,
    cut: Arc<AtomicBool>,
    queued_bytes: Arc<AtomicUsize>,
}

struct Inner {
    next_seq: u64,
    ring: VecDeque<Arc<Event>>,
    ring_bytes: usize,
    clients: HashMap<u64, Client>,
    next_client: u64,
}

#[derive(Default)]
pub struct BusMetrics {
    pub published: AtomicU64,
    pub cut_off: AtomicU64,
}

pub struct Bus {
    cfg: BusConfig,
    inner: Mutex<Inner>,
    pub metrics: BusMetrics,
    /// Called with the next sequence number after each publish, outside the
    /// lock is not needed: it only stores a number (see `SeqReservation`).
    on_seq: Box<dyn Fn(u64) + Send + Sync>,
}

/// What a new subscriber gets: the events it missed that the ring still
/// holds, whether older ones are gone, and its live queue.
pub struct Subscription {
    pub replay: Vec<Arc<Event>>,
    /// `(from, to)`: events in this range are no longer in the ring.
    pub gap: Option<(u64, u64)>,
    pub rx: mpsc::Receiver<Arc<Event>>,
    /// Set when the bus cut this client off for falling behind.
    pub cut: Arc<AtomicBool>,
    /// Bytes sent to `rx` and not yet taken; the reader subtracts what it takes.
    pub queued_bytes: Arc<AtomicUsize>,
    id: u64,
    bus: Arc<Bus>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.bus.inner.lock() {
            inner.clients.remove(&self.id);
        }
    }
}

impl Bus {
    /// `first_seq` is the sequence number of the first event this process
    /// publishes (persisted high-water mark + 1).
    pub fn new(cfg: BusConfig, first_seq: u64, on_seq: Box<dyn Fn(u64) + Send + Sync>) -> Arc<Bus> {
        Arc::new(Bus {
            cfg,
            inner: Mutex::new(Inner {
                next_seq: first_seq.max(1),
                ring: VecDeque::new(),
                ring_bytes: 0,
                clients: HashMap::new(),
                next_client: 0,
            }),
            metrics: BusMetrics::default(),
            on_seq,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the data is still consistent
        // because every mutation below is completed before anything can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest sequence number published (0 before any).
    pub fn newest(&self) -> u64 {
        self.lock().next_seq - 1
    }

    pub fn clients(&self) -> usize {
        self.lock().clients.len()
    }

    pub fn ring_len(&self) -> (usize, usize) {
        let i = self.lock();
        (i.ring.len(), i.ring_bytes)
    }

    /// Publishes one event; returns its sequence number. `fields` must be a
    /// JSON object; `seq`, `type` and `execution_id` are added.
    pub fn publish(&self, kind: &'static str, execution_id: Option<&str>, fields: Value) -> u64 {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let mut obj = match fields {
            Value::Object(m) => m,
            other => {
                let mut m = serde_json::Map::new();
                m.insert("data".into(), other);
                m
            }
        };
        obj.insert("seq".into(), json!(seq));
        obj.insert("type".into(), json!(kind));
        if let Some(id) = execution_id {
            obj.insert("execution_id".into(), json!(id));
        }
        let ev = Arc::new(Event {
            seq,
            kind,
            execution_id: execution_id.map(String::from),
            json: Value::Object(obj).to_string(),
        });
        inner.ring_bytes += ev.bytes();
        inner.ring.push_back(ev.clone());
        while inner.ring.len() > self.cfg.ring_events
            || (inner.ring_bytes > self.cfg.ring_bytes && inner.ring.len() > 1)
        {
            if let Some(old) = inner.ring.pop_front() {
                inner.ring_bytes -= old.bytes();
            }
        }
        let mut cut = Vec::new();
        for (id, c) in &inner.clients {
            if c.execution.as_deref().is_some_and(|x| Some(x) != execution_id) {
                continue;
            }
            let size = ev.bytes();
            let queued = c.queued_bytes.fetch_add(size, Ordering::AcqRel) + size;
            if queued > self.cfg.client_queue_bytes || c.tx.try_send(ev.clone()).is_err() {
                cut.push(*id);
            }
        }
        for id in cut {
            if let Some(c) = inner.clients.remove(&id) {
                c.cut.store(true, Ordering::Release);
                self.metrics.cut_off.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(inner);
        self.metrics.published.fetch_add(1, Ordering::Relaxed);
        (self.on_seq)(seq);
        seq
    }

    /// Registers a client that has seen everything up to `since`.
    pub fn subscribe(
        self: &Arc<Self>,
        since: Option<u64>,
        execution: Option<String>,
    ) -> Result<Subscription, SubscribeError> {
        let mut inner = self.lock();
        let newest = inner.next_seq - 1;
        let since = since.unwrap_or(newest);
        if since > newest {
            return Err(SubscribeError::Future { since, newest });
        }
        let oldest_in_ring = inner.ring.front().map(|e| e.seq).unwrap_or(inner.next_seq);
        let gap = (since + 1 < oldest_in_ring).then(|| (since + 1, oldest_in_ring - 1));
        let replay = inner
            .ring
            .iter()
            .filter(|e| e.seq > since)
            .filter(|e| {
                execution
                    .as_deref()
                    .is_none_or(|x| e.execution_id.as_deref() == Some(x))
            })
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(self.cfg.client_queue.max(1));
        let cut = Arc::new(AtomicBool::new(false));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let id = inner.next_client;
        inner.next_client += 1;
        inner.clients.insert(
            id,
            Client {
                tx,
                execution,
                cut: cut.clone(),
                queued_bytes: queued_bytes.clone(),
            },
        );
        Ok(Subscription {
            replay,
            gap,
            rx,
            cut,
            queued_bytes,
            id,
            bus: self.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(ring: usize, queue: usize) -> Arc<Bus> {
        Bus::new(
            BusConfig {
                ring_events: ring,
                ring_bytes: 1 << 20,
                client_queue: queue,
                client_queue_bytes: 1 << 20,
            },
            1,
            Box::new(|_| {}),
        )
    }

    #[test]
    fn replays_from_the_ring_in_order() {
        let b = bus(10, 10);
        for _ in 0..5 {
            b.publish("output", Some("e1"), json!({}));
        }
        let s = b.subscribe(Some(2), None).unwrap();
        assert_eq!(s.replay.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(s.gap, None);
    }

    #[test]
    fn announces_a_gap_when_the_ring_dropped_events() {
        let b = bus(3, 10);
        for _ in 0..10 {
            b.publish("output", None, json!({}));
        }
        let s = b.subscribe(Some(0), None).unwrap();
        assert_eq!(s.gap, Some((1, 7)));
        assert_eq!(s.replay.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![8, 9, 10]);
    }

    #[test]
    fn since_in_the_future_is_refused() {
        let b = bus(3, 10);
        b.publish("output", None, json!({}));
        assert!(b.subscribe(Some(2), None).is_err());
        assert!(b.subscribe(Some(1), None).is_ok());
    }

    #[test]
    fn a_full_client_is_cut_off_and_others_continue() {
        let b = bus(100, 2);
        let slow = b.subscribe(None, None).unwrap();
        let mut fast = b.subscribe(None, None).unwrap();
        for i in 0..5 {
            b.publish("output", None, json!({}));
            assert_eq!(fast.rx.try_recv().unwrap().seq, i + 1);
        }
        assert!(slow.cut.load(Ordering::Acquire));
        assert!(!fast.cut.load(Ordering::Acquire));
        assert_eq!(b.clients(), 1);
        assert_eq!(b.metrics.cut_off.load(Ordering::Relaxed), 1);
        drop(fast);
        assert_eq!(b.clients(), 0, "a dropped subscription frees its queue");
    }

    #[test]
    fn filters_by_execution() {
        let b = bus(100, 10);
        let mut s = b.subscribe(None, Some("a".into())).unwrap();
        b.publish("output", Some("b"), json!({}));
        b.publish("output", Some("a"), json!({}));
        assert_eq!(s.rx.try_recv().unwrap().seq, 2);
        assert!(s.rx.try_recv().is_err());
    }
}
