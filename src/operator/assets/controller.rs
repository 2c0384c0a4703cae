//! The AssetLease controller: thin I/O around [`super::decide`].
//!
//! Each lease is requeued for exactly the instant its plan names (its
//! `expiresAt`, its next check, or the end of its grace); nothing scans the
//! leases periodically. At a check it lists the other leases on the same
//! asset (a live LIST by field selector), reads the sidecar's asset index and,
//! when the index says the asset is unreferenced and unpinned, asks the
//! sidecar to delete it; the sidecar re-checks from disk under its lock.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as Finalized};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::decide::{self, Finding, Next, Release, Settings, Step, FINALIZER};
use super::sync::LeaseSync;
use crate::operator::backoff::Failures;
use crate::operator::builders;
use crate::operator::cache::{cached_primary, Listed};
use crate::operator::controller::Caches;
use crate::operator::crd::{AssetLease, AssetLeaseStatus, NotebookSession};
use crate::operator::error::Error;
use crate::operator::metrics::Metrics;
use crate::operator::sidecar_client::{AssetDeletion, SidecarClient};
use crate::operator::writes;

/// Settings of the lease controller.
#[derive(Clone, Debug)]
pub struct LeaseControllerConfig {
    /// What the decisions need (the grace before a Reclaimed lease is removed).
    pub settings: Settings,
    /// Reporting instance of Events (pod name).
    pub instance: Option<String>,
}

/// Shared state handed to every lease reconcile.
pub struct LeaseContext {
    client: Client,
    config: LeaseControllerConfig,
    events: crate::operator::events::Events,
    metrics: Arc<Metrics>,
    sidecar: SidecarClient,
    /// Where the leases' sessions, pods and Secrets are read.
    sessions: SessionCaches,
    /// Consecutive failed checks per lease: the backoff, and the earliest
    /// next attempt (so that the watch event of our own status write does
    /// not bring the next attempt forward).
    failures: Failures<ObjectRef<AssetLease>>,
}

/// The session controller's watch caches that the lease controller reads:
/// the sessions, their kernel pods and their Secrets. A check reads them
/// there instead of asking the apiserver three times; a stale answer only
/// delays a deletion, since the sidecar re-checks every reference itself.
#[derive(Clone)]
pub struct SessionCaches {
    /// NotebookSessions.
    pub sessions: Store<NotebookSession>,
    /// The sessions' kernel pods.
    pub pods: Store<Pod>,
    /// The sessions' Secrets.
    pub secrets: Store<Secret>,
    /// The first listing of each: sessions, pods, Secrets.
    pub listed: [Listed; 3],
}

impl SessionCaches {
    async fn ready(&self) {
        futures::future::join_all(self.listed.iter().map(Listed::wait)).await;
    }
}

impl LeaseContext {
    /// A context for `client`.
    pub fn new(
        client: Client,
        config: LeaseControllerConfig,
        metrics: Arc<Metrics>,
        sidecar: SidecarClient,
        sessions: SessionCaches,
    ) -> Self {
        Self {
            events: crate::operator::events::Events::start(client.clone(), config.instance.clone()),
            client,
            config,
            metrics,
            sidecar,
            sessions,
            failures: Failures::default(),
        }
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
            Finalized::Apply(lease) => enforce(&lease, &leases, &ctx).await.map(Wake::action),
            Finalized::Cleanup(lease) => release(&lease, &leases, &ctx).await.map(Wake::action),
        }
    })
    .await;
    result.map_err(Error::from)
}

/// Logs, counts and backs off per lease.
pub fn error_policy(lease: Arc<AssetLease>, error: &Error, ctx: Arc<LeaseContext>) -> Action {
    let (_, delay) = ctx.failures.record(ObjectRef::from_obj(lease.as_ref()));
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

/// When to reconcile a lease again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// At this instant: the delay is measured when the reconcile returns,
    /// not when it started, so the lease comes back exactly then.
    At(Timestamp),
    /// After this delay (a backoff).
    After(Duration),
    /// When the lease changes.
    OnChange,
}

impl Wake {
    fn action(self) -> Action {
        match self {
            Wake::At(at) => {
                let until = at.duration_since(Timestamp::now());
                Action::requeue(Duration::try_from(until).unwrap_or(Duration::ZERO))
            }
            Wake::After(delay) => Action::requeue(delay),
            Wake::OnChange => Action::await_change(),
        }
    }
}

async fn enforce(lease: &AssetLease, leases: &Api<AssetLease>, ctx: &LeaseContext) -> Result<Wake, Error> {
    let key = ObjectRef::from_obj(lease);
    let settings = ctx.config.settings;
    let plan = decide::plan(lease, Timestamp::now(), settings);
    match plan.step {
        Step::Invalid => {
            write_status(leases, lease, plan.status, ctx).await?;
            Ok(Wake::OnChange)
        }
        Step::WaitUntil(at) => {
            write_status(leases, lease, plan.status, ctx).await?;
            ctx.failures.clear(&key);
            Ok(Wake::At(at))
        }
        Step::Remove => {
            remove(lease, leases, ctx).await?;
            Ok(Wake::OnChange)
        }
        Step::Check => {
            if let Some(wait) = ctx.failures.backing_off(&key) {
                write_status(leases, lease, plan.status, ctx).await?;
                return Ok(Wake::After(wait));
            }
            let finding = match check(lease, leases, ctx).await? {
                Checked::Found(finding) => finding,
                Checked::Restarted => return Ok(Wake::OnChange),
            };
            ctx.metrics.asset_lease(outcome(&finding));
            let verdict = decide::verdict(lease, Timestamp::now(), settings, finding);
            write_status(leases, lease, verdict.status, ctx).await?;
            match verdict.next {
                Next::At(at) => {
                    ctx.failures.clear(&key);
                    Ok(Wake::At(at))
                }
                Next::Backoff => Ok(Wake::After(ctx.failures.record(key).1)),
                Next::AwaitChange => Ok(Wake::OnChange),
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
    let target = match reach(lease, ctx).await {
        Reach::Ready { ip, token } => (ip, token),
        Reach::Gone { reason, message } | Reach::NotReady { reason, message } => {
            return found(Finding::Unreachable { reason, message })
        }
    };
    let (ip, token) = (target.0, target.1.as_str());
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
    Ready { ip: std::net::IpAddr, token: String },
    /// The session does not exist or is being deleted: its workspace goes with it.
    Gone { reason: &'static str, message: String },
    /// The session exists but its sidecar cannot be asked now.
    NotReady { reason: &'static str, message: String },
}

async fn reach(lease: &AssetLease, ctx: &LeaseContext) -> Reach {
    ctx.sessions.ready().await;
    let namespace = lease.namespace().unwrap_or_default();
    let name = &lease.spec.session_ref.name;
    let Some(session) = Caches::get(&ctx.sessions.sessions, &namespace, name) else {
        return Reach::Gone {
            reason: "SessionNotFound",
            message: format!("there is no NotebookSession {name}"),
        };
    };
    if session.metadata.deletion_timestamp.is_some() {
        return Reach::Gone {
            reason: "SessionTerminating",
            message: format!("the NotebookSession {name} is being deleted"),
        };
    }
    let not_ready = |message: String| Reach::NotReady {
        reason: "SessionNotReady",
        message,
    };
    let Some(pod) = Caches::get(
        &ctx.sessions.pods,
        &namespace,
        &builders::session_pod_name(&session),
    ) else {
        return not_ready(format!("session {name} has no running kernel pod"));
    };
    // A pod named by the status (claimed from a pool) must still be the session's.
    let owner = session.spec.pool_ref.as_ref().and(session.uid());
    let ip = match builders::sidecar_ip(&pod, owner.as_deref()) {
        Ok(ip) => ip,
        Err(why) => return not_ready(format!("session {name}: {why}")),
    };
    let secret = Caches::get(&ctx.sessions.secrets, &namespace, &builders::secret_name(name));
    match secret.as_deref().and_then(builders::session_token) {
        Some(token) => Reach::Ready { ip, token },
        None => not_ready(format!("the Secret of session {name} has no token")),
    }
}

/// Releases the asset of a lease that is being deleted: the sidecar deletes
/// it unless a notebook references it, it is pinned, or another lease holds
/// it. When the session is gone or not running the asset stays (a running
/// session gives it a new lease at its next status read). Only a failure to
/// reach a running session's sidecar keeps the finalizer, with backoff.
async fn release(lease: &AssetLease, leases: &Api<AssetLease>, ctx: &LeaseContext) -> Result<Wake, Error> {
    // Only a lease that may still hold its asset needs to know about the others.
    let holder = match decide::release(lease, None) {
        Release::Keep(_) => None,
        Release::DeleteAsset(_) => {
            let others = same_asset(lease, leases).await?;
            decide::holder(lease, &others, Timestamp::now())
        }
    };
    let asset = match decide::release(lease, holder) {
        Release::Keep(why) => {
            ctx.metrics.asset_lease("kept");
            tracing::info!(lease = %lease.name_any(), "released; the asset stays: {why}");
            return Ok(Wake::OnChange);
        }
        Release::DeleteAsset(asset) => asset,
    };
    let (ip, token) = match reach(lease, ctx).await {
        Reach::Ready { ip, token } => (ip, token),
        Reach::Gone { message, .. } => {
            // The workspace goes with the session (and often the namespace,
            // where no Event can be written any more).
            ctx.metrics.asset_lease("kept");
            tracing::info!(lease = %lease.name_any(), "released; {asset} goes with its session: {message}");
            return Ok(Wake::OnChange);
        }
        Reach::NotReady { message, .. } => {
            ctx.metrics.asset_lease("kept");
            publish(
                ctx,
                lease,
                EventType::Normal,
                "Released",
                format!("released; {asset} stays because {message}"),
            );
            return Ok(Wake::OnChange);
        }
    };
    let note = match ctx.sidecar.delete_asset(ip, &token, &asset).await {
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
    publish(ctx, lease, EventType::Normal, "Released", note);
    ctx.failures.clear(&ObjectRef::from_obj(lease));
    Ok(Wake::OnChange)
}

/// Removes a Reclaimed lease once its grace is over.
async fn remove(lease: &AssetLease, leases: &Api<AssetLease>, ctx: &LeaseContext) -> Result<(), Error> {
    writes::delete_exact(leases, lease, "delete a Reclaimed AssetLease").await?;
    ctx.metrics.asset_lease("removed");
    Ok(())
}

async fn write_status(
    leases: &Api<AssetLease>,
    lease: &AssetLease,
    new: AssetLeaseStatus,
    ctx: &LeaseContext,
) -> Result<(), Error> {
    // Gone means removed meanwhile (its session went, or by hand after the
    // finalizer ran): nothing left to write.
    writes::status(
        leases,
        &ctx.events,
        lease,
        lease.status.as_ref(),
        &new,
        decide::transitions,
        "apply AssetLease status",
    )
    .await?;
    Ok(())
}

fn publish(ctx: &LeaseContext, lease: &AssetLease, type_: EventType, reason: &str, note: String) {
    ctx.events.publish(lease, type_, reason, note);
}

/// At most this many leases are reconciled at once, so that an operator
/// starting with many expired leases does not send every sidecar all its
/// checks at the same moment.
pub const CONCURRENCY: u16 = 16;

/// The Controller, wired: AssetLeases only. Sessions reach leases through
/// owner references (the garbage collector) and through the session
/// controller, which applies new leases.
/// The AssetLease controller, wired, with its cache's [`LeaseSync`] for the
/// session controller.
pub fn controller(client: Client, namespace: Option<&str>) -> (Controller<AssetLease>, LeaseSync) {
    let api: Api<AssetLease> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let (store, listed, changes) = cached_primary(api, watcher::Config::default());
    let sync = LeaseSync {
        store: store.clone(),
        listed,
    };
    let controller = Controller::for_stream(changes, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY));
    (controller, sync)
}

#[cfg(test)]
mod tests {
    //! The I/O around the decisions, against a scripted fake apiserver and a
    //! fake sidecar (both axum on loopback): which requests each step makes.

    use super::*;
    use std::sync::Mutex;

    use axum::extract::{Request, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use k8s_openapi::jiff::SignedDuration;
    use serde_json::{json, Value};

    const SHA: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

    /// One request a fake saw: method, path with query, body.
    type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

    #[derive(Clone)]
    struct Fake {
        seen: Seen,
        lease: Value,
    }

    async fn record(seen: &Seen, request: Request) -> (String, String, Value) {
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        seen.lock()
            .expect("lock")
            .push((method.clone(), uri.clone(), body.clone()));
        (method, uri, body)
    }

    fn json_response(code: StatusCode, value: Value) -> Response {
        (code, [("content-type", "application/json")], value.to_string()).into_response()
    }

    async fn apiserver(State(fake): State<Fake>, request: Request) -> Response {
        let (method, uri, body) = record(&fake.seen, request).await;
        let path = uri.split('?').next().unwrap_or_default().to_string();
        if method == "GET" && path.ends_with("/assetleases") {
            return json_response(
                StatusCode::OK,
                json!({"apiVersion": "notebook.dev/v1alpha1", "kind": "AssetLeaseList",
                       "metadata": {"resourceVersion": "7"}, "items": [fake.lease]}),
            );
        }
        if method == "PATCH" && path.ends_with("/status") {
            let mut lease = fake.lease.clone();
            lease["status"] = body["status"].clone();
            return json_response(StatusCode::OK, lease);
        }
        if method == "POST" && path.ends_with("/events") {
            return json_response(StatusCode::CREATED, body);
        }
        json_response(
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                   "reason": "NotFound", "message": format!("{method} {path}: not here")}),
        )
    }

    /// What the fake sidecar answers.
    #[derive(Clone)]
    struct Sidecar {
        seen: Seen,
        index: Value,
        delete: (StatusCode, Value),
    }

    async fn sidecar(State(fake): State<Sidecar>, request: Request) -> Response {
        let authorized = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some("Bearer tok");
        let (method, _, _) = record(&fake.seen, request).await;
        if !authorized {
            return json_response(
                StatusCode::UNAUTHORIZED,
                json!({"error": {"code": "unauthorized"}}),
            );
        }
        match method.as_str() {
            "GET" => json_response(StatusCode::OK, fake.index.clone()),
            "DELETE" => json_response(fake.delete.0, fake.delete.1.clone()),
            _ => json_response(StatusCode::METHOD_NOT_ALLOWED, Value::Null),
        }
    }

    async fn serve(router: axum::Router) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, router).await });
        port
    }

    fn lease_json(start: &str, deleting: bool) -> Value {
        let mut lease = json!({
            "apiVersion": "notebook.dev/v1alpha1", "kind": "AssetLease",
            "metadata": {"name": "analysis-0a1b2c3d4e5f6071.png", "namespace": "agents",
                         "uid": "u-1", "generation": 1, "resourceVersion": "5",
                         "creationTimestamp": start, "finalizers": [FINALIZER]},
            "spec": {"sessionRef": {"name": "analysis"}, "path": format!("assets/{SHA}.png"),
                     "duration": "10m", "startTime": start},
        });
        if deleting {
            lease["metadata"]["deletionTimestamp"] = json!("2026-11-28T10:00:00Z");
        }
        lease
    }

    fn index(referenced_by: &[&str], pinned: bool) -> Value {
        json!({"assets": [{"name": format!("{SHA}.png"), "path": format!("assets/{SHA}.png"), "size": 1048584,
                           "mime": "image/png", "created_at": "2020-01-01T00:00:00Z",
                           "referenced_by": referenced_by, "pinned": pinned}]})
    }

    struct World {
        api: Seen,
        side: Seen,
        ctx: LeaseContext,
        leases: Api<AssetLease>,
        lease: AssetLease,
    }

    impl World {
        fn sidecar_calls(&self) -> Vec<(String, String)> {
            let seen = self.side.lock().expect("lock");
            seen.iter().map(|(m, u, _)| (m.clone(), u.clone())).collect()
        }
        fn api_calls(&self) -> Vec<(String, String, Value)> {
            self.api.lock().expect("lock").clone()
        }
        /// The status the controller applied last.
        fn applied_status(&self) -> Value {
            self.api_calls()
                .into_iter()
                .rev()
                .find(|(m, u, _)| m == "PATCH" && u.contains("/status"))
                .map(|(_, _, body)| body["status"].clone())
                .unwrap_or(Value::Null)
        }
    }

    async fn world(
        lease: Value,
        pod_ready: bool,
        sidecar_index: Value,
        delete: (StatusCode, Value),
    ) -> World {
        let side: Seen = Seen::default();
        let side_port = serve(axum::Router::new().fallback(sidecar).with_state(Sidecar {
            seen: side.clone(),
            index: sidecar_index,
            delete,
        }))
        .await;
        let ready = if pod_ready { "True" } else { "False" };
        // The session, its pod and its Secret are read from the session
        // controller's caches, never from the apiserver.
        let sessions = SessionCaches {
            sessions: cache(
                json!({"apiVersion": "notebook.dev/v1alpha1", "kind": "NotebookSession",
                   "metadata": {"name": "analysis", "namespace": "agents", "uid": "s-1"}, "spec": {}}),
            ),
            pods: cache(json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "analysis-kernel", "namespace": "agents"},
                   "status": {"podIP": "127.0.0.1", "phase": "Running",
                              "conditions": [{"type": "Ready", "status": ready}]}})),
            secrets: cache(json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "analysis-token", "namespace": "agents"},
                   "data": {"token": "dG9r"}})),
            listed: [Listed::done(), Listed::done(), Listed::done()],
        };
        let api: Seen = Seen::default();
        let api_port = serve(axum::Router::new().fallback(apiserver).with_state(Fake {
            seen: api.clone(),
            lease: lease.clone(),
        }))
        .await;
        let url = format!("http://127.0.0.1:{api_port}").parse().expect("a URL");
        let client = Client::try_from(kube::Config::new(url)).expect("a client");
        let ctx = LeaseContext::new(
            client.clone(),
            LeaseControllerConfig {
                settings: Settings {
                    grace: Duration::from_secs(300),
                },
                instance: None,
            },
            Arc::new(Metrics::default()),
            SidecarClient::new(Duration::from_secs(2)).with_port(side_port),
            sessions,
        );
        World {
            api,
            side,
            ctx,
            leases: Api::namespaced(client, "agents"),
            lease: serde_json::from_value(lease).expect("a lease"),
        }
    }

    /// A filled watch cache holding `object`.
    fn cache<K>(object: Value) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
    {
        let (store, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        let object = serde_json::from_value(object).expect("a cached object");
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    }

    fn ok_deleted() -> (StatusCode, Value) {
        (StatusCode::OK, json!({"deleted": format!("{SHA}.png")}))
    }

    #[tokio::test]
    async fn an_expired_unreferenced_asset_is_deleted_through_the_sidecar_and_the_lease_reclaimed() {
        let w = world(
            lease_json("2020-01-01T00:00:00Z", false),
            true,
            index(&[], false),
            ok_deleted(),
        )
        .await;
        let before = floor_now();
        let wake = enforce(&w.lease, &w.leases, &w.ctx).await.expect("enforced");
        assert_eq!(
            w.sidecar_calls(),
            [
                ("GET".to_string(), "/v1/assets".to_string()),
                ("DELETE".to_string(), format!("/v1/assets/{SHA}.png"))
            ]
        );
        let list = w
            .api_calls()
            .into_iter()
            .find(|(m, u, _)| m == "GET" && u.contains("/assetleases?"));
        let (_, uri, _) = list.expect("the other leases on the asset were listed");
        let reads: Vec<_> = w.api_calls().into_iter().filter(|(m, _, _)| m == "GET").collect();
        assert_eq!(
            reads.len(),
            1,
            "the session, pod and Secret come from the caches: {reads:?}"
        );
        assert!(
            uri.contains("fieldSelector=spec.sessionRef.name%3Danalysis%2Cspec.path%3Dassets%2F0a1b"),
            "{uri}"
        );
        let status = w.applied_status();
        assert_eq!(status["phase"], "Reclaimed", "{status}");
        // Removed one grace after the check.
        let Wake::At(at) = wake else { panic!("{wake:?}") };
        let grace = at.duration_since(before).as_secs();
        assert!((300..=301).contains(&grace), "{wake:?}");
    }

    #[tokio::test]
    async fn guarantee_6_a_notebook_saved_after_the_index_was_read_wins_over_the_delete() {
        // The index still says "unreferenced"; the sidecar's delete, which
        // re-reads the notebooks under its lock, refuses with 409.
        let refused = (
            StatusCode::CONFLICT,
            json!({"error": {"code": "in_use"}, "referenced_by": ["report.ipynb"], "pinned": false}),
        );
        let w = world(
            lease_json("2020-01-01T00:00:00Z", false),
            true,
            index(&[], false),
            refused,
        )
        .await;
        enforce(&w.lease, &w.leases, &w.ctx).await.expect("enforced");
        let status = w.applied_status();
        assert_eq!(status["phase"], "Retained", "{status}");
        assert_eq!(status["referencedBy"], json!(["report.ipynb"]));
    }

    #[tokio::test]
    async fn a_referenced_asset_is_not_even_asked_to_be_deleted() {
        let w = world(
            lease_json("2020-01-01T00:00:00Z", false),
            true,
            index(&["a.ipynb"], false),
            ok_deleted(),
        )
        .await;
        enforce(&w.lease, &w.leases, &w.ctx).await.expect("enforced");
        assert_eq!(w.sidecar_calls(), [("GET".to_string(), "/v1/assets".to_string())]);
        assert_eq!(w.applied_status()["phase"], "Retained");
    }

    #[tokio::test]
    async fn an_active_lease_asks_nobody_and_wakes_at_its_expiry() {
        let start = Timestamp::now()
            .checked_add(SignedDuration::from_secs(60))
            .expect("a time");
        let start = decide::floor_second(start).to_string();
        let w = world(lease_json(&start, false), true, index(&[], false), ok_deleted()).await;
        let wake = enforce(&w.lease, &w.leases, &w.ctx).await.expect("enforced");
        let expires: Timestamp = start.parse::<Timestamp>().expect("time") + SignedDuration::from_secs(600);
        assert_eq!(wake, Wake::At(expires));
        assert!(w.sidecar_calls().is_empty());
        let calls: Vec<_> = w.api_calls().into_iter().map(|(m, u, _)| (m, u)).collect();
        assert!(
            calls
                .iter()
                .all(|(m, u)| m == "PATCH" && u.contains("/status") || m == "POST" && u.contains("/events")),
            "{calls:?}"
        );
        assert_eq!(w.applied_status()["phase"], "Active");
    }

    #[tokio::test]
    async fn a_session_that_is_not_ready_keeps_the_asset_and_backs_off() {
        let w = world(
            lease_json("2020-01-01T00:00:00Z", false),
            false,
            index(&[], false),
            ok_deleted(),
        )
        .await;
        let wake = enforce(&w.lease, &w.leases, &w.ctx).await.expect("enforced");
        assert!(
            matches!(wake, Wake::After(d) if d >= Duration::from_secs(1)),
            "{wake:?}"
        );
        assert!(w.sidecar_calls().is_empty());
        let status = w.applied_status();
        let reachable = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "SessionReachable").cloned())
            .expect("a SessionReachable condition");
        assert_eq!(
            (reachable["status"].as_str(), reachable["reason"].as_str()),
            (Some("False"), Some("SessionNotReady"))
        );
        // The watch event of that status write does not bring the next attempt forward.
        let again = enforce(&w.lease, &w.leases, &w.ctx).await.expect("enforced");
        assert!(matches!(again, Wake::After(_)), "{again:?}");
        assert!(w.sidecar_calls().is_empty());
    }

    #[tokio::test]
    async fn deleting_a_lease_by_hand_releases_its_asset() {
        let w = world(
            lease_json("2026-11-28T09:55:00Z", true),
            true,
            index(&[], false),
            ok_deleted(),
        )
        .await;
        let wake = release(&w.lease, &w.leases, &w.ctx).await.expect("released");
        assert_eq!(wake, Wake::OnChange);
        assert_eq!(
            w.sidecar_calls(),
            [("DELETE".to_string(), format!("/v1/assets/{SHA}.png"))]
        );
    }

    #[tokio::test]
    async fn a_referenced_asset_survives_the_release_of_its_lease() {
        let refused = (
            StatusCode::CONFLICT,
            json!({"error": {"code": "in_use"}, "referenced_by": ["report.ipynb"], "pinned": false}),
        );
        let w = world(
            lease_json("2026-11-28T09:55:00Z", true),
            true,
            index(&[], false),
            refused,
        )
        .await;
        // The finalizer goes (Ok), the asset stays (the sidecar refused).
        assert_eq!(
            release(&w.lease, &w.leases, &w.ctx).await.expect("released"),
            Wake::OnChange
        );
    }

    fn floor_now() -> Timestamp {
        decide::floor_second(Timestamp::now())
    }

    #[test]
    fn field_selector_values_are_escaped() {
        assert_eq!(escape_field_value("assets/ab.png"), "assets/ab.png");
        assert_eq!(escape_field_value(r"a,b=c\d"), r"a\,b\=c\\d");
    }
}
