//! Watch caches: one kind watched into a reflector store, without the
//! managedFields nobody reads, and a [`Listed`] that says when the store
//! holds its first complete listing.
//!
//! Why not `Store::wait_until_ready`: its readiness is a oneshot channel that
//! keeps one waker, the last poller's. Of several tasks awaiting it at once
//! (every reconcile that starts before the first listing, the controller's
//! own runner, another controller reading the same store) only one is woken;
//! the others wait until something else polls them, which for a reconcile
//! may be never. A new leader, which starts with a burst of reconciles,
//! stalled exactly so. [`Listed`] is a `tokio::sync::watch`, which wakes all.

use std::fmt::Debug;

use futures::{Stream, TryStreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

/// Whether a cache has been filled by its first complete listing; any
/// number of tasks may wait for it at once.
#[derive(Clone, Debug)]
pub struct Listed(watch::Receiver<bool>);

impl Listed {
    /// Waits until the first listing is in the cache (at once, after it).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means the watch stream was dropped: nothing will fill
        // the cache any more, and waiting would be forever.
        let _ = rx.wait_for(|listed| *listed).await;
    }

    /// Whether the first listing is in the cache now.
    pub fn is_listed(&self) -> bool {
        *self.0.borrow()
    }

    /// Already listed: for tests, and for a cache filled by hand.
    pub fn done() -> Self {
        let (_tx, rx) = watch::channel(true);
        Self(rx)
    }

    /// Not listed yet, and the sender that says when it is.
    fn pending() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }
}

/// One kind watched into a cache: the cache, its [`Listed`], and the
/// watch events after the cache has applied each.
fn watched<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    Listed,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let (tx, listed) = Listed::pending();
    let events = watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
        .reflect(writer)
        .inspect_ok(move |event| {
            if matches!(event, watcher::Event::InitDone) {
                tx.send_replace(true);
            }
        });
    (store, listed, events)
}

/// An owned kind watched into a cache: the cache, its [`Listed`], and the
/// stream of the objects that changed or went away (which triggers their
/// owners' reconciles). managedFields (often the larger part of a pod) are
/// not read and not kept.
pub fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    Listed,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, listed, events) = watched(api, config);
    (store, listed, events.touched_objects())
}

/// A controller's own kind watched into a cache (for `Controller::for_stream`):
/// the cache, its [`Listed`], and the objects applied (a deleted object has
/// nothing left to reconcile).
pub fn cached_primary<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    Listed,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, listed, events) = watched(api, config);
    (store, listed, events.applied_objects())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_first_listing_wakes_every_task_that_waits_for_it() {
        let (tx, listed) = Listed::pending();
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let listed = listed.clone();
                tokio::spawn(async move { listed.wait().await })
            })
            .collect();
        // Every waiter is parked on it before the listing arrives.
        tokio::task::yield_now().await;
        assert!(!listed.is_listed());
        tx.send_replace(true);
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("every waiter wakes")
                .expect("no panic");
        }
        assert!(listed.is_listed());
        // After the listing, waiting is immediate.
        tokio::time::timeout(Duration::from_millis(100), listed.wait())
            .await
            .expect("at once");
    }
}
