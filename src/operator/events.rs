//! Recording Kubernetes Events for the objects the controllers reconcile.
//!
//! An Event is a record for people (`kubectl describe`), not part of any
//! decision: a reconcile hands it to a queue and goes on, and one task per
//! controller sends the queue's Events in order. A reconcile never waits for
//! an Event's round trip to the apiserver (a warm claim is a few round trips
//! long; an Event or two more would be a third of it).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use super::builders::MANAGER;

/// Longest Event note, in bytes; longer notes are cut on a character boundary.
const MAX_NOTE: usize = 1000;
/// Events waiting to be sent; when the apiserver falls this far behind, new
/// Events are dropped (and logged) rather than slowing reconciles down.
const QUEUE: usize = 1024;

/// The Event queue of a controller, reported by the operator from `instance`
/// (the pod name). Cheap to clone; every clone feeds the same task.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<(ObjectReference, Event)>,
}

impl Events {
    /// Starts the task that sends this queue's Events (on the current Tokio
    /// runtime); it ends when the last clone is dropped.
    pub fn start(client: Client, instance: Option<String>) -> Self {
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: MANAGER.into(),
                instance,
            },
        );
        let (tx, mut rx) = mpsc::channel::<(ObjectReference, Event)>(QUEUE);
        tokio::spawn(async move {
            while let Some((reference, event)) = rx.recv().await {
                if let Err(err) = recorder.publish(&event, &reference).await {
                    tracing::warn!(error = %err, kind = ?reference.kind, name = ?reference.name,
                        reason = %event.reason, "could not record an event");
                }
            }
        });
        Self { tx }
    }

    /// Queues one Event on `object`; never waits, never fails (a full queue
    /// drops the Event and says so in the log).
    pub fn publish<K>(&self, object: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let (reference, event) = event_for(object, type_, reason, note);
        if let Err(err) = self.tx.try_send((reference, event)) {
            let (reference, event) = match err {
                mpsc::error::TrySendError::Full(queued) | mpsc::error::TrySendError::Closed(queued) => queued,
            };
            tracing::warn!(kind = ?reference.kind, name = %object.name_any(), reason = %event.reason,
                "the event queue is full; this event is dropped");
        }
    }
}

/// Pure: the reference and Event recorded for `object`, the note cut to [`MAX_NOTE`].
fn event_for<K>(object: &K, type_: EventType, reason: &str, mut note: String) -> (ObjectReference, Event)
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
    (object.object_ref(&()), event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[test]
    fn an_event_names_its_object_and_a_long_note_is_cut_on_a_character_boundary() {
        let mut object = ConfigMap::default();
        object.metadata.name = Some("cm".into());
        object.metadata.namespace = Some("ns".into());
        let (reference, event) = event_for(&object, EventType::Normal, "Why", "é".repeat(MAX_NOTE));
        assert_eq!(
            (reference.kind.as_deref(), reference.name.as_deref()),
            (Some("ConfigMap"), Some("cm"))
        );
        let note = event.note.expect("a note");
        assert!(
            note.len() <= MAX_NOTE && note.chars().all(|c| c == 'é'),
            "{}",
            note.len()
        );
    }
}
