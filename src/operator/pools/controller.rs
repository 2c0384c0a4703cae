//! The NotebookPool controller: the pool Secret once, warm pods up to
//! `replicas` of the current template, and the pool's status. The claim
//! itself is the session controller's (see [`claim`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::decide;
use super::desired::{self, LABEL_POOL};
use super::recent::RecentClaims;
use crate::operator::backoff::Failures;
use crate::operator::builders::{self, BuildConfig, MANAGER};
use crate::operator::cache::{cached, cached_primary, Listed};
use crate::operator::crd::{NotebookPool, NotebookSession};
use crate::operator::error::{is_already_exists, is_namespace_terminating, Error};
use crate::operator::metrics::Metrics;
use crate::operator::network::{self, PolicyConfig};
use crate::operator::sidecar_client::{ClaimRefusal, SidecarClient};
use crate::operator::writes;
use crate::sidecar_api::{ClaimRequest, Status};

/// How long a created warm pod may take to show in the cache before it no
/// longer counts as pending (a watch restart that missed it, say).
const PENDING_FOR: Duration = Duration::from_secs(30);
/// Safety resync of a pool no event touched.
const RESYNC: Duration = Duration::from_secs(300);

/// Warm pods created and not in the cache yet: name and when.
type Pending = Vec<(String, Instant)>;

/// Shared state of the pool reconciles.
pub struct PoolContext {
    client: Client,
    build: BuildConfig,
    metrics: Arc<Metrics>,
    events: crate::operator::events::Events,
    pods: Store<Pod>,
    pods_listed: Listed,
    failures: Failures<ObjectRef<NotebookPool>>,
    /// Warm pods created that the cache does not show yet, per pool: the
    /// cache lags the create, and counting them keeps a burst of
    /// reconciles from creating twice as many.
    pending: Mutex<HashMap<ObjectRef<NotebookPool>, Pending>>,
    /// The warm pods' NetworkPolicy settings, and the cache of the policies made.
    network: Option<(PolicyConfig, Store<NetworkPolicy>, Listed)>,
}

impl PoolContext {
    /// A context over the pool controller's pod cache.
    pub fn new(
        client: Client,
        build: BuildConfig,
        metrics: Arc<Metrics>,
        pods: (Store<Pod>, Listed),
        instance: Option<String>,
    ) -> Self {
        let (pods, pods_listed) = pods;
        Self {
            events: crate::operator::events::Events::start(client.clone(), instance),
            client,
            build,
            metrics,
            pods,
            pods_listed,
            failures: Failures::default(),
            pending: Mutex::new(HashMap::new()),
            network: None,
        }
    }

    /// Gives every pool's warm pods a NetworkPolicy, when `config` is enabled.
    pub fn with_network(mut self, config: PolicyConfig, policies: (Store<NetworkPolicy>, Listed)) -> Self {
        if config.enabled {
            self.network = Some((config, policies.0, policies.1));
        }
        self
    }

    fn pending(&self, pool: &ObjectRef<NotebookPool>, add: &[String]) -> usize {
        let mut all = match self.pending.lock() {
            Ok(all) => all,
            Err(poisoned) => poisoned.into_inner(),
        };
        let ns = pool.namespace.clone().unwrap_or_default();
        let entry = all.entry(pool.clone()).or_default();
        let now = Instant::now();
        entry.retain(|(name, at)| {
            now.duration_since(*at) < PENDING_FOR
                && self.pods.get(&ObjectRef::new(name).within(&ns)).is_none()
        });
        entry.extend(add.iter().map(|n| (n.clone(), now)));
        entry.len()
    }
}

/// The pool controller and its caches.
pub struct Wired {
    /// The controller.
    pub controller: Controller<NotebookPool>,
    /// Its cache of pools (the session controller claims from it) and its first listing.
    pub pools: (Store<NotebookPool>, Listed),
    /// Its cache of pool pods and its first listing.
    pub pods: (Store<Pod>, Listed),
}

/// The pool controller, wired: pools, and every pod that carries a pool
/// label (warm or claimed) brings its pool back, so a claim refills it.
pub fn controller(client: Client, namespace: Option<&str>) -> Wired {
    let pools: Api<NotebookPool> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let pods: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client),
    };
    let (pool_store, pools_listed, pool_changes) = cached_primary(pools, watcher::Config::default());
    let (store, listed, changes) = cached(pods, watcher::Config::default().labels(LABEL_POOL));
    let controller =
        Controller::for_stream(pool_changes, pool_store.clone()).watches_stream(changes, |pod: Pod| {
            let pool = pod.labels().get(LABEL_POOL)?.clone();
            Some(ObjectRef::new(&pool).within(&pod.namespace()?))
        });
    Wired {
        controller,
        pools: (pool_store, pools_listed),
        pods: (store, listed),
    }
}

/// Reconciles one pool.
pub async fn reconcile(pool: Arc<NotebookPool>, ctx: Arc<PoolContext>) -> Result<Action, Error> {
    let result = match reconcile_inner(&pool, &ctx).await {
        Err(Error::Kube { source, .. }) if is_namespace_terminating(&source) => Ok(Action::await_change()),
        other => other,
    };
    if result.is_ok() {
        ctx.failures.clear(&ObjectRef::from_obj(pool.as_ref()));
    }
    result
}

/// Logs, counts, and backs off per pool.
pub fn error_policy(pool: Arc<NotebookPool>, error: &Error, ctx: Arc<PoolContext>) -> Action {
    let (failures, delay) = ctx.failures.record(ObjectRef::from_obj(pool.as_ref()));
    ctx.metrics.error(error.category());
    tracing::warn!(pool = %pool.name_any(), namespace = %pool.namespace().unwrap_or_default(),
        category = error.category(), failures, retry_in = ?delay, error = %error, "pool reconcile failed");
    Action::requeue(delay)
}

#[tracing::instrument(skip_all, fields(pool = %pool.name_any(), namespace = %pool.namespace().unwrap_or_default()))]
async fn reconcile_inner(pool: &NotebookPool, ctx: &PoolContext) -> Result<Action, Error> {
    let Some(namespace) = pool.namespace() else {
        return Ok(Action::await_change());
    };
    if pool.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    ctx.pods_listed.wait().await;
    let name = pool.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = ObjectRef::from_obj(pool);
    let all = ctx.pods.state();
    let warm = decide::warm_pods(pool, all.iter().map(Arc::as_ref));
    let claimed = decide::claimed_pods(pool, all.iter().map(Arc::as_ref));

    // The template as a warm pod: its hash says which warm pods are outdated.
    let template = desired::build_warm_pod(pool, "template", &ctx.build);
    let invalid = template.as_ref().err().cloned();
    if let Ok(template) = &template {
        futures::try_join!(
            ensure_pool_secret(pool, &namespace, ctx),
            ensure_pool_policy(pool, &namespace, ctx),
        )?;
        let hash = builders::pod_spec_hash(template).unwrap_or_default().to_string();
        let plan = decide::scale(pool.spec.replicas, &warm, ctx.pending(&key, &[]), &hash);
        for victim in &plan.delete {
            if let Some(pod) = warm.iter().find(|p| p.name_any() == *victim) {
                writes::delete_exact(&pods, *pod, "delete warm Pod").await?;
            }
        }
        let mut created = Vec::new();
        for _ in 0..plan.create {
            let pod = match desired::build_warm_pod(pool, &desired::random_suffix(), &ctx.build) {
                Ok(pod) => pod,
                Err(_) => break,
            };
            let params = PostParams {
                field_manager: Some(MANAGER.into()),
                ..PostParams::default()
            };
            match pods.create(&params, &pod).await {
                Ok(made) => created.push(made.name_any()),
                Err(err) if is_already_exists(&err) => {}
                Err(err) => {
                    ctx.pending(&key, &created);
                    return Err(Error::kube("create warm Pod")(err));
                }
            }
        }
        ctx.pending(&key, &created);
        if !plan.delete.is_empty() || !created.is_empty() {
            tracing::info!(created = created.len(), deleted = plan.delete.len(), "warm pods");
        }
    }

    let status = decide::pool_status(pool, &warm, claimed, invalid.as_deref(), Timestamp::now());
    ctx.metrics
        .set_pool(&namespace, &name, status.ready, status.claimed);
    let api: Api<NotebookPool> = Api::namespaced(ctx.client.clone(), &namespace);
    writes::status(
        &api,
        &ctx.events,
        pool,
        pool.status.as_ref(),
        &status,
        decide::transitions,
        "apply NotebookPool status",
    )
    .await?;
    Ok(Action::requeue(RESYNC))
}

/// Applies the NetworkPolicy of the pool's warm pods when the cache shows
/// it missing or different; before the first warm pod is created.
async fn ensure_pool_policy(pool: &NotebookPool, namespace: &str, ctx: &PoolContext) -> Result<(), Error> {
    let Some((config, store, listed)) = &ctx.network else {
        return Ok(());
    };
    listed.wait().await;
    let policy = network::build_pool_policy(pool, config);
    let name = network::pool_policy_name(&pool.name_any());
    let cached = store.get(&ObjectRef::new(&name).within(namespace));
    if !cached.is_some_and(|c| network::policy_matches(&c, &policy)) {
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
        writes::apply(&policies, &policy, "apply warm pods' NetworkPolicy").await?;
    }
    Ok(())
}

/// Creates the pool Secret once with fresh values; never rewrites it.
async fn ensure_pool_secret(pool: &NotebookPool, namespace: &str, ctx: &PoolContext) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let name = desired::pool_secret_name(&pool.name_any());
    if secrets
        .get_opt(&name)
        .await
        .map_err(Error::kube("read pool Secret"))?
        .is_some()
    {
        return Ok(());
    }
    let (token, key) = builders::generate_secret_values();
    let secret = desired::build_pool_secret(pool, &token, &key);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    match secrets.create(&params, &secret).await {
        Ok(_) => Ok(()),
        Err(err) if is_already_exists(&err) => Ok(()),
        Err(err) => Err(Error::kube("create pool Secret")(err)),
    }
}

/// What a claim came to.
#[derive(Debug)]
pub enum Claimed {
    /// This warm pod is the session's now, and its sidecar holds the
    /// session's token; with the status its sidecar answered the handoff with.
    Warm(Box<Pod>, Option<Status>),
    /// No warm pod could be had: start cold.
    None,
}

/// What a claim talks to: the apiserver, the sidecar, the metrics, and the
/// session controller's pod cache (warm pods carry its label too).
#[derive(Clone, Copy)]
pub struct ClaimIo<'a> {
    /// The apiserver.
    pub client: &'a Client,
    /// The claimed pod's sidecar.
    pub sidecar: &'a SidecarClient,
    /// Conflicts are counted.
    pub metrics: &'a Metrics,
    /// Where the warm pods are found.
    pub pods: &'a Store<Pod>,
    /// Each claim is remembered here the moment its patch succeeds.
    pub recent: &'a RecentClaims,
}

/// Hands `session` a warm pod of `pool`: tries the claimable pods in
/// [`decide::claim_order`], each with one patch under the pod's
/// resourceVersion (409: another session got it first, try the next), then
/// gives the sidecar the session's token ([`handoff`]).
pub async fn claim(
    session: &NotebookSession,
    pool: &NotebookPool,
    pool_token: Option<&str>,
    session_token: &str,
    secret_hash: &str,
    io: ClaimIo<'_>,
) -> Result<Claimed, Error> {
    let ClaimIo {
        client,
        sidecar,
        metrics,
        pods: pods_cache,
        recent,
    } = io;
    let Some(pool_token) = pool_token else {
        return Ok(Claimed::None);
    };
    let namespace = session.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let all = pods_cache.state();
    let warm = decide::warm_pods(pool, all.iter().map(Arc::as_ref));
    for candidate in decide::claim_order(&warm, &session.uid().unwrap_or_default()) {
        let Some(patch) = desired::claim_patch(candidate, session, secret_hash) else {
            continue;
        };
        match pods
            .patch(
                &candidate.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(pod) => {
                recent.remember(&session.uid().unwrap_or_default(), &pod.name_any());
                tracing::info!(session = %session.name_any(), pod = %pod.name_any(), "claimed a warm pod");
                let status = handoff(session, &pod, pool_token, session_token, sidecar).await?;
                tracing::debug!(session = %session.name_any(), "handed off");
                return Ok(Claimed::Warm(Box::new(pod), status));
            }
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {
                if status.code == 409 {
                    metrics.pool_claim_conflicts.inc();
                }
                tracing::debug!(pod = %candidate.name_any(), code = status.code, "lost the claim race; next pod");
            }
            Err(err) => return Err(Error::kube("claim a warm Pod")(err)),
        }
    }
    Ok(Claimed::None)
}

/// `POST /v1/claim` to the claimed pod's sidecar with the pool's token:
/// from the answer on the sidecar takes only the session's token. A 401
/// means the pool token is gone already: the handoff happened before.
/// Returns the status the sidecar answered with, when it did.
pub async fn handoff(
    session: &NotebookSession,
    pod: &Pod,
    pool_token: &str,
    session_token: &str,
    sidecar: &SidecarClient,
) -> Result<Option<Status>, Error> {
    let ip = builders::sidecar_ip(pod, None).map_err(Error::Sidecar)?;
    let request = ClaimRequest {
        session: session.name_any(),
        namespace: session.namespace().unwrap_or_default(),
        token: session_token.to_string(),
        allowed_hosts: builders::mcp_hosts(session),
    };
    match sidecar.claim(ip, pool_token, &request).await {
        Ok(answer) => Ok(answer.status),
        Err(ClaimRefusal::Unauthorized) => Ok(None),
        Err(ClaimRefusal::Other(err)) => Err(Error::Sidecar(err)),
    }
}

/// Runs the pool controller until the stream ends.
pub async fn run(controller: Controller<NotebookPool>, ctx: Arc<PoolContext>) {
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(pool = %object.name, "reconciled"),
                Err(err) => tracing::debug!(error = %err, "pool controller event"),
            }
        })
        .await;
}
