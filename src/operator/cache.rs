//! Watch caches: one kind watched into a reflector store, without the
//! managedFields nobody reads.

use std::fmt::Debug;

use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde::de::DeserializeOwned;

/// One owned kind watched into a cache: the cache, and the stream of the
/// objects that changed (which triggers their owners' reconciles). The
/// cache keeps what reconciles read; managedFields (often the larger part
/// of a pod) are not read and not kept.
pub fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let changes = watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
        .reflect(writer)
        .touched_objects();
    (store, changes)
}
