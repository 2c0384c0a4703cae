//! The controllers' writes to the apiserver, each rule once: server-side
//! apply under the operator's field manager, a status written only when it
//! changed (its Events queued first), and deleting exactly the object that
//! was read (by uid, so a namesake made meanwhile is left alone).

use std::fmt::Debug;

use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::builders::MANAGER;
use super::conditions::Transition;
use super::error::{is_not_found, Error};

/// Server-side apply by the operator, taking the fields it sets.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Applies `object` (server-side); returns it as the apiserver has it now.
pub async fn apply<K>(api: &Api<K>, object: &K, step: &'static str) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &apply_params(), &Patch::Apply(object))
        .await
        .map_err(Error::kube(step))
}

/// What a status write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The status was already this; nothing was sent.
    Unchanged,
    /// The new status was applied.
    Changed,
    /// The object is gone; there was nothing to write to.
    Gone,
}

/// Writes `new` as the status of `object` when it differs from the status it
/// has, after recording `transitions` (computed from the old and new status)
/// as Events on it.
pub async fn status<K, S>(
    api: &Api<K>,
    events: &super::events::Events,
    object: &K,
    old: Option<&S>,
    new: &S,
    transitions: fn(Option<&S>, &S) -> Vec<Transition>,
    step: &'static str,
) -> Result<Written, Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    S: Serialize + PartialEq,
{
    if old == Some(new) {
        return Ok(Written::Unchanged);
    }
    for transition in transitions(old, new) {
        let kind = if transition.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        events.publish(object, kind, &transition.reason, transition.note);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": new,
    });
    match api
        .patch_status(&object.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await
    {
        Ok(_) => {
            tracing::debug!(name = %object.name_any(), "status written");
            Ok(Written::Changed)
        }
        Err(err) if is_not_found(&err) => Ok(Written::Gone),
        Err(err) => Err(Error::kube(step)(err)),
    }
}

/// Deletes exactly `object` (its uid is a precondition), with background
/// propagation. Returns the object while it is still being deleted (a grace
/// period or finalizers), `None` once it is gone, or when a different object
/// of the same name has taken its place (the precondition failed: that one
/// is not ours to delete).
pub async fn delete_exact<K>(api: &Api<K>, object: &K, step: &'static str) -> Result<Option<K>, Error>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: object.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&object.name_any(), &params).await {
        Ok(either) => Ok(either.left()),
        Err(err) if is_not_found(&err) || matches!(&err, kube::Error::Api(s) if s.code == 409) => Ok(None),
        Err(err) => Err(Error::kube(step)(err)),
    }
}
