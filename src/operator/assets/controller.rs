//! The AssetLease controller: thin I/O around [`super::decide`].
//!
//! Each lease is requeued for exactly the instant its plan names (its
//! `expiresAt`, its next check, or the end of its grace); nothing scans the
//! leases periodically. At a check it lists the other leases on the same
//! asset (a live LIST by field selector), reads the sidecar's asset index and,
//! when the index says the asset is unreferenced and unpinned, asks the
//! sidecar to delete it; the sidecar re-checks from disk under its lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalized};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use super::decide::{self, Finding, Next, Release, Settings, Step, FINALIZER};
use crate::operator::builders::{self, MANAGER, TOKEN_KEY};
use crate::operator::controller::{backoff, is_pod_ready};
use crate::operator::crd::{AssetLease, AssetLeaseStatus, NotebookSession};
use crate::operator::error::{is_not_found, Error};
use crate::operator::metrics::Metrics;
use crate::operator::sidecar_client::{AssetDeletion, SidecarClient};

/// Settings of the lease controller.
#[derive(Clone, Debug)]
pub struct LeaseControllerConfig {
    /// What the decisions need (the grace before a Reclaimed lease is removed).
    pub settings: Settings,
    /// Restrict to one namespace; `None` watches all.
    pub namespace: Option<String>,
    /// Reporting instance of Events (pod name).
    pub instance: Option<String>,
}

struct Failures {
    count: u32,
    not_before: Instant,
}

/// Shared state handed to every lease reconcile.
pub struct LeaseContext {
    client: Client,
    config: LeaseControllerConfig,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    sidecar: SidecarClient,
    /// Consecutive failed checks per lease: the backoff, and the earliest
    /// next attempt (so that the watch event of our own status write does
    /// not bring the next attempt forward).
    failures: Mutex<HashMap<ObjectRef<AssetLease>, Failures>>,
}

impl LeaseContext {
    /// A context for `client`.
    pub fn new(
        client: Client,
        config: LeaseControllerConfig,
        metrics: Arc<Metrics>,
        sidecar: SidecarClient,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: config.instance.clone(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            sidecar,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<AssetLease>, Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one more failure; returns the delay before the next attempt.
    fn record_failure(&self, key: ObjectRef<AssetLease>) -> Duration {
        let mut failures = self.failures();
        let entry = failures.entry(key).or_insert(Failures {
            count: 0,
            not_before: Instant::now(),
        });
        entry.count = entry.count.saturating_add(1);
        let delay = backoff(entry.count);
        entry.not_before = Instant::now() + delay;
        delay
    }

    fn clear_failures(&self, key: &ObjectRef<AssetLease>) {
        self.failures().remove(key);
    }

    /// How long until the next attempt is allowed, when a backoff runs.
    fn backing_off(&self, key: &ObjectRef<AssetLease>) -> Option<Duration> {
        let failures = self.failures();
        let wait = failures
            .get(key)?
            .not_before
            .checked_duration_since(Instant::now())?;
        (!wait.is_zero()).then_some(wait)
    }
}

/// Reconciles one AssetLease: the finalizer first, then the plan.
pub async fn reconcile(lease: Arc<AssetLease>, ctx: Arc<LeaseContext>) -> Result<Action, Error> {
    let Some(namespace) = lease.namespace() else {
        return Ok(Action::await_change());
    };
    let leases: Api<AssetLease> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&leases, FINALIZER, lease, |event| async {
        match event {
            Finalized::Apply(lease) => enforce(&lease, &leases, &ctx).await,
            Finalized::Cleanup(lease) => release(&lease, &leases, &ctx).await,
        }
    })
    .await;
    result.map_err(Error::from)
}

/// Logs, counts and backs off per lease.
pub fn error_policy(lease: Arc<AssetLease>, error: &Error, ctx: Arc<LeaseContext>) -> Action {
    let delay = ctx.record_failure(ObjectRef::from_obj(lease.as_ref()));
    ctx.metrics.error(error.category());
    tracing::warn!(
        lease = %lease.name_any(),
        namespace = %lease.namespace().unwrap_or_default(),
        category = error.category(),
        retry_in = ?delay,
        error = %error,
        "AssetLease reconcile failed"
    );
    Action::requeue(delay)
}

/// An action that brings the lease back at `at`, measured from the moment
/// this returns (not from the start of the reconcile).
fn requeue_at(at: Timestamp) -> Action {
    let until = at.duration_since(Timestamp::now());
    Action::requeue(Duration::try_from(until).unwrap_or(Duration::ZERO))
}

async fn enforce(lease: &AssetLease, leases: &Api<AssetLease>, ctx: &LeaseContext) -> Result<Action, Error> {
    let key = ObjectRef::from_obj(lease);
    let settings = ctx.config.settings;
    let plan = decide::plan(lease, Timestamp::now(), settings);
    match plan.step {
        Step::Invalid => {
            write_status(leases, lease, plan.status, ctx).await?;
            Ok(Action::await_change())
        }
        Step::WaitUntil(at) => {
            write_status(leases, lease, plan.status, ctx).await?;
            ctx.clear_failures(&key);
            Ok(requeue_at(at))
        }
        Step::Remove => {
            remove(lease, leases, ctx).await?;
            Ok(Action::await_change())
        }
        Step::Check => {
            if let Some(wait) = ctx.backing_off(&key) {
                write_status(leases, lease, plan.status, ctx).await?;
                return Ok(Action::requeue(wait));
            }
            let finding = match check(lease, leases, ctx).await? {
                Checked::Found(finding) => finding,
                Checked::Restarted => return Ok(Action::await_change()),
            };
            ctx.metrics.asset_lease(outcome(&finding));
            let verdict = decide::verdict(lease, Timestamp::now(), settings, finding);
            write_status(leases, lease, verdict.status, ctx).await?;
            match verdict.next {
                Next::At(at) => {
                    ctx.clear_failures(&key);
                    Ok(requeue_at(at))
                }
                Next::Backoff => Ok(Action::requeue(ctx.record_failure(key))),
                Next::AwaitChange => Ok(Action::await_change()),
            }
        }
    }
}

fn outcome(finding: &Finding) -> &'static str {
    match finding {
        Finding::InUse { .. } => "in_use",
        Finding::HeldByLease { .. } => "held",
        Finding::Deleted => "deleted",
        Finding::Missing => "missing",
        Finding::Unreachable { .. } => "unreachable",
    }
}

/// The other leases on the same asset of the same session, read live.
async fn same_asset(lease: &AssetLease, leases: &Api<AssetLease>) -> Result<Vec<AssetLease>, Error> {
    let selector = format!(
        "spec.sessionRef.name={},spec.path={}",
        escape_field_value(&lease.spec.session_ref.name),
        escape_field_value(&lease.spec.path)
    );
    let list = leases
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(Error::kube("list the AssetLeases on one asset"))?;
    Ok(list.items)
}

/// Field selector values escape `\`, `,` and `=`.
fn escape_field_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What a check came to.
enum Checked {
    /// A finding for the verdict.
    Found(Finding),
    /// The asset was written again after the lease began; the lease now
    /// starts at that time (its watch event brings it back).
    Restarted,
}

/// What the sidecar says about the asset of an expired lease. Errors are the
/// apiserver's; everything about the session and its sidecar is a finding.
async fn check(lease: &AssetLease, leases: &Api<AssetLease>, ctx: &LeaseContext) -> Result<Checked, Error> {
    let found = |finding| Ok(Checked::Found(finding));
    let terms = match decide::terms(lease) {
        Ok(terms) => terms,
        Err(why) => return Err(Error::Sidecar(format!("the lease cannot be enforced: {why}"))),
    };
    let others = same_asset(lease, leases).await?;
    if let Some((other, until)) = decide::holder(lease, &others, Timestamp::now()) {
        return found(Finding::HeldByLease { lease: other, until });
    }
    let target = match reach(lease, ctx).await? {
        Reach::Ready { ip, token } => (ip, token),
        Reach::Gone { reason, message } | Reach::NotReady { reason, message } => {
            return found(Finding::Unreachable { reason, message })
        }
    };
    let (ip, token) = (target.0.as_str(), target.1.as_str());
    let index = match ctx.sidecar.assets(ip, token).await {
        Ok(index) => index,
        Err(message) => {
            return found(Finding::Unreachable {
                reason: "SidecarUnreachable",
                message: format!("reading the asset index: {message}"),
            })
        }
    };
    if let Some(at) = decide::restart_at(lease, &index) {
        let patch = serde_json::json!({"spec": {"startTime": Time(at)}});
        leases
            .patch(&lease.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::kube(
                "restart an AssetLease at its asset's new creation time",
            ))?;
        tracing::info!(lease = %lease.name_any(), start = %at, "the asset was written again: the lease starts again");
        return Ok(Checked::Restarted);
    }
    if let Some(finding) = decide::from_index(&terms.asset, &index) {
        return found(finding);
    }
    found(match ctx.sidecar.delete_asset(ip, token, &terms.asset).await {
        Ok(AssetDeletion::Deleted) => {
            tracing::info!(
                lease = %lease.name_any(),
                namespace = %lease.namespace().unwrap_or_default(),
                asset = %terms.asset,
                expired_at = %terms.expires_at,
                "the lease expired and nothing referenced the asset: deleted"
            );
            Finding::Deleted
        }
        Ok(AssetDeletion::InUse {
            referenced_by,
            pinned,
        }) => Finding::InUse {
            referenced_by,
            pinned,
        },
        Ok(AssetDeletion::Missing) => Finding::Missing,
        Err(message) => Finding::Unreachable {
            reason: "SidecarUnreachable",
            message: format!("deleting the asset: {message}"),
        },
    })
}

/// Whether the session's sidecar can be asked, and how.
enum Reach {
    /// The pod is ready: its IP and the session token.
    Ready { ip: String, token: String },
    /// The session does not exist or is being deleted: its workspace goes with it.
    Gone { reason: &'static str, message: String },
    /// The session exists but its sidecar cannot be asked now.
    NotReady { reason: &'static str, message: String },
}

async fn reach(lease: &AssetLease, ctx: &LeaseContext) -> Result<Reach, Error> {
    let namespace = lease.namespace().unwrap_or_default();
    let name = &lease.spec.session_ref.name;
    let sessions: Api<NotebookSession> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(session) = sessions
        .get_opt(name)
        .await
        .map_err(Error::kube("read NotebookSession"))?
    else {
        return Ok(Reach::Gone {
            reason: "SessionNotFound",
            message: format!("there is no NotebookSession {name}"),
        });
    };
    if session.metadata.deletion_timestamp.is_some() {
        return Ok(Reach::Gone {
            reason: "SessionTerminating",
            message: format!("the NotebookSession {name} is being deleted"),
        });
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod_name = builders::pod_name(name);
    let pod = pods.get_opt(&pod_name).await.map_err(Error::kube("read Pod"))?;
    let not_ready = |message: String| {
        Ok(Reach::NotReady {
            reason: "SessionNotReady",
            message,
        })
    };
    let Some(pod) = pod.filter(|p| p.metadata.deletion_timestamp.is_none()) else {
        return not_ready(format!("session {name} has no running kernel pod"));
    };
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
    let (true, Some(ip)) = (is_pod_ready(&pod), ip) else {
        return not_ready(format!("the pod {pod_name} of session {name} is not ready"));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = secrets
        .get_opt(&builders::secret_name(name))
        .await
        .map_err(Error::kube("read Secret"))?;
    let token = secret
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(TOKEN_KEY))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
        .filter(|t| !t.is_empty());
    match token {
        Some(token) => Ok(Reach::Ready { ip, token }),
        None => not_ready(format!("the Secret of session {name} has no token")),
    }
}

/// Releases the asset of a lease that is being deleted: the sidecar deletes
/// it unless a notebook references it, it is pinned, or another lease holds
/// it. When the session is gone or not running the asset stays (a running
/// session gives it a new lease at its next status read). Only a failure to
/// reach a running session's sidecar keeps the finalizer, with backoff.
async fn release(lease: &AssetLease, leases: &Api<AssetLease>, ctx: &LeaseContext) -> Result<Action, Error> {
    let others = same_asset(lease, leases).await?;
    let holder = decide::holder(lease, &others, Timestamp::now());
    let asset = match decide::release(lease, holder) {
        Release::Keep(why) => {
            ctx.metrics.asset_lease("kept");
            tracing::info!(lease = %lease.name_any(), "released; the asset stays: {why}");
            return Ok(Action::await_change());
        }
        Release::DeleteAsset(asset) => asset,
    };
    let (ip, token) = match reach(lease, ctx).await? {
        Reach::Ready { ip, token } => (ip, token),
        Reach::Gone { message, .. } | Reach::NotReady { message, .. } => {
            ctx.metrics.asset_lease("kept");
            publish(
                ctx,
                lease,
                EventType::Normal,
                "Released",
                format!("released; {asset} stays because {message}"),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    let note = match ctx.sidecar.delete_asset(&ip, &token, &asset).await {
        Ok(AssetDeletion::Deleted) => {
            ctx.metrics.asset_lease("released");
            format!("released; the sidecar deleted {asset}")
        }
        Ok(AssetDeletion::InUse {
            referenced_by,
            pinned,
        }) => {
            ctx.metrics.asset_lease("kept");
            if pinned {
                format!("released; {asset} stays because it is pinned")
            } else {
                format!(
                    "released; {asset} stays because {} references it",
                    referenced_by.join(", ")
                )
            }
        }
        Ok(AssetDeletion::Missing) => {
            ctx.metrics.asset_lease("kept");
            format!("released; there was no {asset}")
        }
        Err(err) => return Err(Error::Sidecar(format!("releasing {asset}: {err}"))),
    };
    publish(ctx, lease, EventType::Normal, "Released", note).await;
    ctx.clear_failures(&ObjectRef::from_obj(lease));
    Ok(Action::await_change())
}

/// Removes a Reclaimed lease once its grace is over.
async fn remove(lease: &AssetLease, leases: &Api<AssetLease>, ctx: &LeaseContext) -> Result<(), Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: lease.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match leases.delete(&lease.name_any(), &params).await {
        Ok(_) => {
            ctx.metrics.asset_lease("removed");
            Ok(())
        }
        Err(err) if is_not_found(&err) => Ok(()),
        Err(err) => Err(Error::kube("delete a Reclaimed AssetLease")(err)),
    }
}

async fn write_status(
    leases: &Api<AssetLease>,
    lease: &AssetLease,
    new: AssetLeaseStatus,
    ctx: &LeaseContext,
) -> Result<(), Error> {
    let old = lease.status.as_ref();
    if old == Some(&new) {
        return Ok(());
    }
    for transition in decide::transitions(old, &new) {
        let kind = if transition.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(ctx, lease, kind, &transition.reason, transition.note).await;
    }
    let patch = serde_json::json!({
        "apiVersion": AssetLease::api_version(&()),
        "kind": AssetLease::kind(&()),
        "status": new,
    });
    match leases
        .patch_status(
            &lease.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Removed meanwhile (its session went, or by hand after the finalizer ran).
        Err(err) if is_not_found(&err) => Ok(()),
        Err(err) => Err(Error::kube("apply AssetLease status")(err)),
    }
}

async fn publish(ctx: &LeaseContext, lease: &AssetLease, type_: EventType, reason: &str, note: String) {
    let mut note = note;
    if note.len() > 1000 {
        let mut cut = 1000;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &lease.object_ref(&())).await {
        tracing::warn!(error = %err, lease = %lease.name_any(), "could not record an event");
    }
}

/// The Controller, wired: AssetLeases only. Sessions reach leases through
/// owner references (the garbage collector) and through the session
/// controller, which applies new leases.
pub fn controller(client: Client, namespace: Option<&str>) -> Controller<AssetLease> {
    let api: Api<AssetLease> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    Controller::new(api, watcher::Config::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selector_values_are_escaped() {
        assert_eq!(escape_field_value("assets/ab.png"), "assets/ab.png");
        assert_eq!(escape_field_value(r"a,b=c\d"), r"a\,b\=c\\d");
    }
}
