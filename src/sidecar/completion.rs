//! Waiting for an execution to reach a final state, without polling: a
//! waiter registers before it reads the row, and the executor wakes it after
//! the final state is committed.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

#[derive(Default)]
pub struct Completions {
    waiters: Mutex<HashMap<String, watch::Sender<bool>>>,
}

impl Completions {
    /// A receiver that changes when `id` finishes. Register before reading
    /// the row, so a finish between the read and the wait is not missed.
    pub fn watch(&self, id: &str) -> watch::Receiver<bool> {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(id.to_string())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe()
    }

    pub fn finished(&self, id: &str) {
        let tx = self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        if let Some(tx) = tx {
            let _ = tx.send(true);
        }
    }

    /// Drops registrations nobody waits on any more.
    pub fn forget_unwatched(&self) {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, tx| tx.receiver_count() > 0);
    }
}
