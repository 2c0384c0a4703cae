//! Waiting for an execution to reach a final state, without polling: a
//! waiter registers before it reads the row, and the executor wakes it after
//! the final state is committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::store::Execution;

/// A final state, committed.
#[derive(Clone)]
pub struct Done {
    /// When the commit was in.
    pub at: Instant,
    /// The row as committed, when the writer answered with it.
    pub execution: Option<Arc<Execution>>,
}

/// A waiter's receiver: `Some` once the final state is committed.
pub type Completion = watch::Receiver<Option<Done>>;

#[derive(Default)]
pub struct Completions {
    waiters: Mutex<HashMap<String, watch::Sender<Option<Done>>>>,
}

impl Completions {
    /// A receiver that changes when `id` finishes. Register before reading
    /// the row, so a finish between the read and the wait is not missed.
    pub fn watch(&self, id: &str) -> Completion {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// `id`'s final state was committed.
    pub fn finished(&self, id: &str, done: Done) {
        let tx = self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        if let Some(tx) = tx {
            let _ = tx.send(Some(done));
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
