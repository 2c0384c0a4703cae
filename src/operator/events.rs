//! Recording Kubernetes Events for the objects the controllers reconcile.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

use super::builders::MANAGER;

/// Longest Event note, in bytes; longer notes are cut on a character boundary.
const MAX_NOTE: usize = 1000;

/// The Event recorder of a controller: reported by the operator, from `instance` (the pod name).
pub fn recorder(client: Client, instance: Option<String>) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: MANAGER.into(),
            instance,
        },
    )
}

/// Records one Event on `object`; a failure is logged, never an error.
pub async fn publish<K>(recorder: &Recorder, object: &K, type_: EventType, reason: &str, mut note: String)
where
    K: Resource<DynamicType = ()>,
{
    note.truncate(crate::util::prefix(&note, MAX_NOTE).len());
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(error = %err, kind = %K::kind(&()), name = %object.name_any(), "could not record an event");
    }
}
