//! The NotebookSession controller: dereference → validate → build → apply →
//! observe → status, with the building and the status computed by pure
//! functions ([`super::builders`], [`super::status`]).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};

use super::assets::{LeaseSync, SessionCaches};
use super::backoff::Failures;
use super::builders::{self, BuildConfig, ValidSpec, KERNEL_KEY_KEY, MANAGER};
use super::cache::{cached, cached_primary, Listed};
use super::converge::{self, PodStep};
use super::crd::{AssetLease, NotebookPool, NotebookSession, NotebookSessionStatus, SessionPhase};
use super::error::{is_already_exists, is_namespace_terminating, Error};
use super::metrics::Metrics;
use super::network::{self, PolicyConfig};
use super::pools::controller::{self as pool_controller, Claimed};
use super::pools::desired::{pool_secret_name, templated, LABEL_POOL};
use super::pools::recent::RecentClaims;
use super::sidecar_client::SidecarClient;
use super::sidecar_watch::SidecarWatches;
use super::status::{self, Activity, Lifecycle, Observed, PoolClaim, SidecarObservation};
use super::writes::{self, Written};
use crate::sidecar_api::Status as SidecarStatus;

/// Safety resync of a session no watch event touched.
const RESYNC: Duration = Duration::from_secs(300);

/// Settings of the controller.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// What the builders need.
    pub build: BuildConfig,
    /// How often a Ready session's sidecar status is read again.
    pub status_interval: Duration,
    /// Restrict to one namespace; `None` watches all.
    pub namespace: Option<String>,
    /// Reporting instance of Events (pod name).
    pub instance: Option<String>,
    /// The NetworkPolicies of sessions and pools.
    pub network: PolicyConfig,
}

/// Shared state handed to every reconcile.
pub struct Context {
    /// The apiserver client.
    pub client: Client,
    /// Settings.
    pub config: ControllerConfig,
    /// The Event queue.
    pub events: crate::operator::events::Events,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Reads sidecar status.
    pub sidecar: SidecarClient,
    /// Consecutive failures per session, for the error backoff.
    failures: Failures<ObjectRef<NotebookSession>>,
    /// Applies AssetLeases for new assets of Ready sessions, when the lease controller runs.
    leases: Option<LeaseSync>,
    /// The watch caches of owned objects.
    caches: Caches,
    /// The long polls that bring a session back when its sidecar's status changes.
    watches: SidecarWatches,
    /// The pool controller's cache of NotebookPools, when it runs.
    pools: Option<(Store<NotebookPool>, Listed)>,
    /// The pods this replica claimed lately, which the pod cache may not show yet.
    recent_claims: RecentClaims,
}

impl Context {
    /// A context for `client`.
    pub fn new(
        client: Client,
        config: ControllerConfig,
        metrics: Arc<Metrics>,
        sidecar: SidecarClient,
        caches: Caches,
        watches: SidecarWatches,
    ) -> Self {
        Self {
            events: crate::operator::events::Events::start(client.clone(), config.instance.clone()),
            client,
            config,
            metrics,
            sidecar,
            failures: Failures::default(),
            leases: None,
            caches,
            watches,
            pools: None,
            recent_claims: RecentClaims::default(),
        }
    }

    /// Hands sessions with `poolRef` warm pods of the pools in this cache.
    pub fn with_pools(mut self, pools: Store<NotebookPool>, listed: Listed) -> Self {
        self.pools = Some((pools, listed));
        self
    }

    /// Also gives every asset of a Ready session a lease, using the lease controller's cache.
    pub fn with_lease_sync(mut self, leases: LeaseSync) -> Self {
        self.leases = Some(leases);
        self
    }
}

/// Reconciles one NotebookSession.
pub async fn reconcile(session: Arc<NotebookSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match reconcile_inner(&session, &ctx).await {
        // The namespace is being deleted and the session with it: nothing to
        // retry, and no error to count (it is not a refusal by RBAC).
        Err(Error::Kube { source, step }) if is_namespace_terminating(&source) => {
            tracing::debug!(session = %session.name_any(), step, "the namespace is being deleted");
            Ok(Action::await_change())
        }
        other => other,
    };
    ctx.metrics
        .reconciled(result.is_ok(), started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.clear(&ObjectRef::from_obj(session.as_ref()));
    }
    result
}

/// Logs, counts, and backs off per session.
pub fn error_policy(session: Arc<NotebookSession>, error: &Error, ctx: Arc<Context>) -> Action {
    let (failures, delay) = ctx.failures.record(ObjectRef::from_obj(session.as_ref()));
    ctx.metrics.error(error.category());
    tracing::warn!(
        session = %session.name_any(),
        namespace = %session.namespace().unwrap_or_default(),
        category = error.category(),
        failures,
        retry_in = ?delay,
        error = %error,
        "reconcile failed"
    );
    Action::requeue(delay)
}

async fn reconcile_inner(session: &NotebookSession, ctx: &Context) -> Result<Action, Error> {
    let Some(namespace) = session.namespace() else {
        return Ok(Action::await_change());
    };
    // The first reconciles wait for the owned objects' first listings (the
    // controller is polling their watches meanwhile): before that, an absent
    // object in a cache would not mean an absent object.
    ctx.caches.ready().await;
    if let Some((_, listed)) = &ctx.pools {
        listed.wait().await;
    }
    tracing::debug!(session = %session.name_any(), "reconcile start");
    let name = session.name_any();
    let client = ctx.client.clone();
    let sessions: Api<NotebookSession> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let now = Timestamp::now();

    if session.metadata.deletion_timestamp.is_some() {
        ctx.watches.forget(&ObjectRef::from_obj(session));
        // Owner references hand the children to the garbage collector; while a
        // foreground deletion waits for them, say so.
        let terminating = session.status.as_ref().and_then(|s| s.phase) == Some(SessionPhase::Terminating);
        if !terminating {
            let valid = builders::validate(session, &ctx.config.build);
            let errors = valid.as_ref().err().cloned().unwrap_or_default();
            let observed = Observed {
                valid: valid.as_ref().map_err(|_| errors.as_slice()),
                suspension: None,
                pod: None,
                sidecar: SidecarObservation::NotAsked,
                pool: None,
            };
            let new = status::build_status(session, &observed, now);
            write_status(&sessions, session, new, ctx).await?;
        }
        return Ok(Action::await_change());
    }

    // A session of a pool is built from the pool's template: from here on
    // `session` is that (its metadata and status are the session's own).
    let pool = session.spec.pool_ref.as_ref().map(|r| {
        let found = ctx
            .pools
            .as_ref()
            .and_then(|(store, _)| Caches::get(store, &namespace, &r.name));
        (r.name.clone(), found)
    });
    let templated_session;
    let session = match &pool {
        Some((_, Some(pool))) => {
            templated_session = templated(session, pool);
            &templated_session
        }
        _ => session,
    };

    // Validate: an invalid spec is a condition, and waits for a change.
    let valid = match builders::validate(session, &ctx.config.build) {
        Ok(valid) => valid,
        Err(errors) => {
            let pod = session_pod(session, &namespace, &pods, ctx).await?;
            let observed = Observed {
                valid: Err(&errors),
                suspension: None,
                pod: pod.as_ref(),
                sidecar: SidecarObservation::NotAsked,
                pool: None,
            };
            let new = status::build_status(session, &observed, now);
            write_status(&sessions, session, new, ctx).await?;
            return Ok(Action::await_change());
        }
    };

    // The objects that live as long as the session, written side by side
    // (none needs another); the claim of a warm pod waits for the Secret only.
    let ((token, secret_hash), (), (), ()) = futures::try_join!(
        ensure_secret(session, &namespace, ctx),
        ensure_service(session, &namespace, ctx),
        ensure_claim(session, &namespace, ctx),
        ensure_network_policy(session, &namespace, ctx),
    )?;

    tracing::debug!(session = %name, "owned objects written");
    // Observe the pod and, when it is ready, the sidecar.
    let mut pod = session_pod(session, &namespace, &pods, ctx).await?;
    let mut sidecar = observe_sidecar(pod.as_ref(), token.as_deref(), ctx).await;
    follow(session, &sidecar, pod.as_ref(), token.as_deref(), ctx);
    let activity = match &sidecar {
        SidecarObservation::Answered(s) => s.activity(),
        _ => Activity::from_status(session.status.as_ref()),
    };

    let (decision, deadline) = status::lifecycle(session, &valid, pod.as_ref(), activity, now);
    let suspension = match decision {
        Lifecycle::Delete => {
            publish(
                ctx,
                session,
                EventType::Normal,
                "ShutdownTime",
                "shutdownTime passed; deleting the session".into(),
            );
            writes::delete_exact(&sessions, session, "delete NotebookSession at shutdownTime").await?;
            return Ok(Action::await_change());
        }
        Lifecycle::SuspendForIdle(suspension) => {
            publish(
                ctx,
                session,
                EventType::Normal,
                suspension.reason,
                suspension.message.clone(),
            );
            let patch = serde_json::json!({
                "metadata": {"annotations": {status::IDLE_SUSPENDED_ANNOTATION: suspension.message}},
                "spec": {"suspend": true},
            });
            sessions
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(Error::kube("set spec.suspend after idleTimeout"))?;
            Some(suspension)
        }
        Lifecycle::Suspend(suspension) => Some(suspension),
        Lifecycle::Run => {
            if session
                .annotations()
                .contains_key(status::IDLE_SUSPENDED_ANNOTATION)
            {
                let patch = serde_json::json!({"metadata": {"annotations": {status::IDLE_SUSPENDED_ANNOTATION: null}}});
                sessions
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(Error::kube("remove the idle-suspended annotation"))?;
            }
            None
        }
    };

    // Converge the pod.
    let suspended = suspension.is_some();
    let pool_found = pool.as_ref().and_then(|(_, found)| found.as_deref());
    let (converged, claim_status) = match &pool {
        Some((_, None)) if pod.is_none() => (None, None),
        _ => {
            converge_pod(
                session,
                &valid,
                pod,
                suspended,
                &pods,
                pool_found,
                Credentials {
                    token: token.as_deref(),
                    secret_hash: &secret_hash,
                },
                ctx,
            )
            .await?
        }
    };
    pod = converged;
    // A pod that was not there before: a warm pod just claimed answered the
    // claim with its status; follow it from there, as from an answer to
    // the status read above.
    if let (SidecarObservation::NotAsked, Some(status)) = (&sidecar, claim_status) {
        sidecar = SidecarObservation::Answered(status);
        follow(session, &sidecar, pod.as_ref(), token.as_deref(), ctx);
    }
    let pool_claim = pool.as_ref().and_then(|(pool_name, found)| match (&pod, found) {
        (Some(p), _) if p.labels().contains_key(LABEL_POOL) => Some(PoolClaim::Warm(pool_name.clone())),
        (Some(_), _) => Some(PoolClaim::Cold(pool_name.clone())),
        (None, None) => Some(PoolClaim::NotFound(pool_name.clone())),
        (None, Some(_)) if suspended => None,
        (None, Some(_)) => Some(PoolClaim::Waiting(pool_name.clone())),
    });

    let observed = Observed {
        valid: Ok(&valid),
        suspension,
        pod: pod.as_ref(),
        sidecar,
        pool: pool_claim,
    };
    let pod_ready = pod.as_ref().is_some_and(builders::is_pod_ready);
    let sidecar_answered = matches!(observed.sidecar, SidecarObservation::Answered(_));
    let new = status::build_status(session, &observed, now);
    let phase = new.phase;
    write_status(&sessions, session, new, ctx).await?;
    if phase == Some(SessionPhase::Ready) && sidecar_answered {
        sync_asset_leases(session, pod.as_ref(), token.as_deref(), ctx).await;
    }

    // Look again at the next deadline. The sidecar's counts arrive through
    // its long poll (`SidecarWatches`) and everything else through watch
    // events; the status interval (while the pod is ready) and the resync
    // are the nets below them.
    let mut after = match (phase, pod_ready) {
        (Some(SessionPhase::Ready), _) | (_, true) => Some(ctx.config.status_interval),
        _ => Some(RESYNC),
    };
    if let Some(deadline) = deadline {
        let until = Duration::try_from(deadline.duration_since(now)).unwrap_or(Duration::ZERO);
        // A floor against a tight loop, far below the 1 s a deadline may be late.
        let until = until.max(Duration::from_millis(50));
        after = Some(after.map_or(until, |a| a.min(until)));
    }
    Ok(after.map_or_else(Action::await_change, Action::requeue))
}

/// Creates the Secret once, with fresh values; never rewrites it. Returns the
/// client token it holds and the digest of its values (which the pod is
/// marked with: a Secret recreated or changed under it replaces the pod).
async fn ensure_secret(
    session: &NotebookSession,
    namespace: &str,
    ctx: &Context,
) -> Result<(Option<String>, String), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let name = builders::secret_name(&session.name_any());
    let existing = Caches::get(&ctx.caches.secrets, namespace, &name);
    let secret = match existing {
        Some(secret) => Arc::unwrap_or_clone(secret),
        None => {
            let (token, key) = builders::generate_secret_values();
            let desired = builders::build_secret(session, &token, &key);
            match secrets
                .create(
                    &PostParams {
                        field_manager: Some(MANAGER.into()),
                        ..PostParams::default()
                    },
                    &desired,
                )
                .await
            {
                Ok(created) => created,
                Err(err) if is_already_exists(&err) => {
                    secrets.get(&name).await.map_err(Error::kube("read Secret"))?
                }
                Err(err) => return Err(Error::kube("create Secret")(err)),
            }
        }
    };
    if builders::secret_value(&secret, KERNEL_KEY_KEY).is_none() {
        tracing::warn!(secret = %name, "the session Secret has no {KERNEL_KEY_KEY} key; the sidecar will not start");
    }
    Ok((builders::session_token(&secret), builders::secret_hash(&secret)))
}

/// Applies the session's Service when the cache shows it missing or
/// different: a reconcile of a converged session sends the apiserver nothing.
async fn ensure_service(session: &NotebookSession, namespace: &str, ctx: &Context) -> Result<(), Error> {
    let service = builders::build_service(session);
    let cached = Caches::get(&ctx.caches.services, namespace, &session.name_any());
    if !cached.is_some_and(|c| builders::service_matches(&c, &service)) {
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
        writes::apply(&services, &service, "apply Service").await?;
    }
    Ok(())
}

/// Applies the session's NetworkPolicy (when the operator gives sessions
/// one) when the cache shows it missing or different. It is written before
/// the pod, so no kernel runs a moment without it.
async fn ensure_network_policy(
    session: &NotebookSession,
    namespace: &str,
    ctx: &Context,
) -> Result<(), Error> {
    if !ctx.config.network.enabled {
        return Ok(());
    }
    let policy = network::build_session_policy(session, &ctx.config.network);
    let cached = Caches::get(
        &ctx.caches.policies,
        namespace,
        &network::policy_name(&session.name_any()),
    );
    if !cached.is_some_and(|c| network::policy_matches(&c, &policy)) {
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
        writes::apply(&policies, &policy, "apply NetworkPolicy").await?;
    }
    Ok(())
}

/// Applies the session's PersistentVolumeClaim (when it asks for storage)
/// when the cache shows it missing or different.
async fn ensure_claim(session: &NotebookSession, namespace: &str, ctx: &Context) -> Result<(), Error> {
    let Some(pvc) = builders::build_pvc(session) else {
        return Ok(());
    };
    let cached = Caches::get(
        &ctx.caches.claims,
        namespace,
        &builders::pvc_name(&session.name_any()),
    );
    if !cached.is_some_and(|c| builders::claim_matches(&c, &pvc)) {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
        writes::apply(&pvcs, &pvc, "apply PersistentVolumeClaim").await?;
    }
    Ok(())
}

/// Follows the pod's sidecar from what it last said (its long poll brings
/// the session back at once on a change); a pod without a running sidecar
/// has nothing to follow.
fn follow(
    session: &NotebookSession,
    sidecar: &SidecarObservation,
    pod: Option<&Pod>,
    token: Option<&str>,
    ctx: &Context,
) {
    match (sidecar, pod, token) {
        (SidecarObservation::Answered(answer), Some(pod), Some(token)) => ctx.watches.watch(
            ObjectRef::from_obj(session),
            pod,
            token,
            answer.current_revision(),
        ),
        (SidecarObservation::NotAsked, ..) => ctx.watches.forget(&ObjectRef::from_obj(session)),
        _ => {}
    }
}

async fn observe_sidecar(pod: Option<&Pod>, token: Option<&str>, ctx: &Context) -> SidecarObservation {
    // Asked once the sidecar runs, Ready or not: when the kernel is away the
    // sidecar says why (starting, restarting, dead).
    let Some(ip) = pod.and_then(|p| builders::sidecar_ip(p, None).ok()) else {
        return SidecarObservation::NotAsked;
    };
    let Some(token) = token else {
        return SidecarObservation::Unreachable("the session Secret has no token".into());
    };
    match ctx.sidecar.status(ip, token).await {
        Ok(answer) => SidecarObservation::Answered(answer),
        Err(err) => {
            // A claimed pool pod whose sidecar does not take the session's
            // token yet: the handoff after the claim did not get through.
            if let Some((pod, pool_token)) = pod.and_then(|p| pool_pod_token(p, ctx).map(|t| (p, t))) {
                let owner = pod.owner_references().iter().find(|o| o.controller == Some(true));
                if let Some(owner) = owner.filter(|o| o.kind == "NotebookSession") {
                    let mut holder = NotebookSession::new(&owner.name, Default::default());
                    holder.metadata.namespace = pod.namespace();
                    if pool_controller::handoff(&holder, pod, &pool_token, token, &ctx.sidecar)
                        .await
                        .is_ok()
                    {
                        if let Ok(answer) = ctx.sidecar.status(ip, token).await {
                            return SidecarObservation::Answered(answer);
                        }
                    }
                }
            }
            ctx.metrics.sidecar_status_failures.inc();
            SidecarObservation::Unreachable(err)
        }
    }
}

/// The pool token of a pod made by a pool, from the pool Secret in the cache.
fn pool_pod_token(pod: &Pod, ctx: &Context) -> Option<String> {
    let pool = pod.labels().get(LABEL_POOL)?;
    let secret = Caches::get(&ctx.caches.secrets, &pod.namespace()?, &pool_secret_name(pool))?;
    builders::session_token(&secret)
}

/// The session's kernel pod. A session without `poolRef` has `<name>-kernel`;
/// one with `poolRef` has the pod its status names (a claimed pod keeps its
/// pool's name), read from the apiserver when the cache still shows it as
/// the pool's (the cache lags the claim this controller just made), or any
/// pod it controls (a status write lost after a claim, or a cold start).
async fn session_pod(
    session: &NotebookSession,
    namespace: &str,
    pods: &Api<Pod>,
    ctx: &Context,
) -> Result<Option<Pod>, Error> {
    let name = session.name_any();
    if session.spec.pool_ref.is_none() {
        return Ok(
            Caches::get(&ctx.caches.pods, namespace, &builders::pod_name(&name)).map(Arc::unwrap_or_clone),
        );
    }
    let uid = session.uid().unwrap_or_default();
    let controls = |pod: &Pod| {
        pod.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == uid)
    };
    if let Some(named) = session.status.as_ref().and_then(|s| s.pod_name.clone()) {
        match Caches::get(&ctx.caches.pods, namespace, &named) {
            Some(pod) if controls(&pod) => return Ok(Some(Arc::unwrap_or_clone(pod))),
            Some(_) => {
                if let Some(pod) = pods
                    .get_opt(&named)
                    .await
                    .map_err(Error::kube("read the claimed Pod"))?
                {
                    if controls(&pod) {
                        return Ok(Some(pod));
                    }
                }
            }
            None => {}
        }
    }
    let cached = ctx
        .caches
        .pods
        .state()
        .into_iter()
        .find(|pod| pod.namespace().as_deref() == Some(namespace) && controls(pod))
        .map(Arc::unwrap_or_clone);
    if cached.is_some() {
        return Ok(cached);
    }
    // A pod this replica claimed for the session that the cache does not
    // show yet: read from the apiserver, never claimed a second time.
    if let Some(claimed) = ctx.recent_claims.get(&uid) {
        let pod = pods
            .get_opt(&claimed)
            .await
            .map_err(Error::kube("read the claimed Pod"))?;
        return Ok(pod.filter(|p| controls(p)));
    }
    Ok(None)
}

/// Creates, replaces or removes the kernel pod ([`converge::pod_step`]
/// decides which). Returns the pod as it now is, and the status its sidecar
/// answered a claim of it with.
#[allow(clippy::too_many_arguments)]
async fn converge_pod(
    session: &NotebookSession,
    valid: &ValidSpec,
    pod: Option<Pod>,
    suspended: bool,
    pods: &Api<Pod>,
    pool: Option<&NotebookPool>,
    creds: Credentials<'_>,
    ctx: &Context,
) -> Result<(Option<Pod>, Option<SidecarStatus>), Error> {
    let mut desired = builders::build_pod(session, valid, &ctx.config.build);
    builders::set_secret_hash(&mut desired, creds.secret_hash);
    match (converge::pod_step(pod.as_ref(), &desired, suspended), pod, pool) {
        (PodStep::Create, _, Some(pool)) => create_from_pool(session, pool, &desired, pods, creds, ctx)
            .await
            .map(|(pod, status)| (Some(pod), status)),
        (PodStep::Create, _, None) => Ok((Some(writes::apply(pods, &desired, "create Pod").await?), None)),
        (PodStep::Keep | PodStep::AwaitDeletion, pod, _) => Ok((pod, None)),
        (PodStep::Delete { reason, note }, Some(existing), _) => {
            let (type_, reason, note) = match converge::pod_end(&existing) {
                // Evicted (past its ephemeral-storage limit, say): a
                // warning that names what the kubelet said.
                Some(end) => (EventType::Warning, end.reason, format!("{note}: {}", end.message)),
                None => (EventType::Normal, reason.to_string(), note.to_string()),
            };
            publish(ctx, session, type_, &reason, note);
            Ok((writes::delete_exact(pods, &existing, "delete Pod").await?, None))
        }
        (PodStep::Delete { .. }, None, _) => Ok((None, None)),
    }
}

/// What the session Secret holds, as the pod is started or claimed with it.
#[derive(Clone, Copy)]
struct Credentials<'a> {
    /// The client token (none when the Secret has none).
    token: Option<&'a str>,
    /// [`builders::secret_hash`] of the Secret.
    secret_hash: &'a str,
}

/// The pod of a session of `pool`: a warm pod claimed from it (with the
/// status its sidecar answered the claim with), else `desired` (built cold
/// from its template). Counted by outcome.
async fn create_from_pool(
    session: &NotebookSession,
    pool: &NotebookPool,
    desired: &Pod,
    pods: &Api<Pod>,
    creds: Credentials<'_>,
    ctx: &Context,
) -> Result<(Pod, Option<SidecarStatus>), Error> {
    let started = Instant::now();
    let namespace = session.namespace().unwrap_or_default();
    let pool_token = Caches::get(
        &ctx.caches.secrets,
        &namespace,
        &pool_secret_name(&pool.name_any()),
    )
    .and_then(|s| builders::session_token(&s));
    let claimed = match creds.token {
        Some(token) => {
            let io = pool_controller::ClaimIo {
                client: &ctx.client,
                sidecar: &ctx.sidecar,
                metrics: &ctx.metrics,
                pods: &ctx.caches.pods,
                recent: &ctx.recent_claims,
            };
            pool_controller::claim(session, pool, pool_token.as_deref(), token, creds.secret_hash, io).await?
        }
        None => Claimed::None,
    };
    match claimed {
        Claimed::Warm(pod, status) => {
            ctx.metrics.pool_claim("warm");
            ctx.metrics
                .pool_claim_latency
                .observe(started.elapsed().as_secs_f64());
            let note = format!(
                "claimed the warm pod {} of the pool {}",
                pod.name_any(),
                pool.name_any()
            );
            publish(ctx, session, EventType::Normal, "ClaimedWarmPod", note);
            Ok((*pod, status))
        }
        Claimed::None => {
            ctx.metrics.pool_claim("cold");
            let note = format!(
                "the pool {} had no ready warm pod; starting cold from its template",
                pool.name_any()
            );
            publish(ctx, session, EventType::Normal, "ColdStart", note);
            Ok((writes::apply(pods, desired, "create Pod").await?, None))
        }
    }
}

/// Gives the session's new assets their leases. A failure is logged and
/// counted; the next status read tries again.
async fn sync_asset_leases(session: &NotebookSession, pod: Option<&Pod>, token: Option<&str>, ctx: &Context) {
    let (Some(leases), Some(pod), Some(token)) = (&ctx.leases, pod, token) else {
        return;
    };
    let synced = leases
        .sync(&ctx.client, &ctx.sidecar, &ctx.metrics, session, pod, token)
        .await;
    if let Err(err) = synced {
        ctx.metrics.error("asset_lease_sync");
        tracing::warn!(session = %session.name_any(), error = %err, "could not give new assets their leases");
    }
}

async fn write_status(
    sessions: &Api<NotebookSession>,
    session: &NotebookSession,
    new: NotebookSessionStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let old = session.status.as_ref();
    let written = writes::status(
        sessions,
        &ctx.events,
        session,
        old,
        &new,
        status::transitions,
        "apply NotebookSession status",
    )
    .await?;
    if written == Written::Changed {
        record_lifecycle_metrics(session, old, &new, ctx);
    }
    Ok(())
}

/// Time to the first Ready (a session that was Ready before, and was
/// suspended since, does not count again) and suspensions by reason.
fn record_lifecycle_metrics(
    session: &NotebookSession,
    old: Option<&NotebookSessionStatus>,
    new: &NotebookSessionStatus,
    ctx: &Context,
) {
    let old_phase = old.and_then(|s| s.phase);
    if new.phase == Some(SessionPhase::Ready)
        && matches!(
            old_phase,
            None | Some(SessionPhase::Pending) | Some(SessionPhase::Starting)
        )
        && old.is_none_or(|s| s.last_activity_time.is_none())
    {
        if let Some(created) = &session.metadata.creation_timestamp {
            let secs = Timestamp::now().duration_since(created.0).as_secs_f64();
            ctx.metrics.time_to_ready.observe(secs.max(0.0));
        }
    }
    if new.phase == Some(SessionPhase::Suspended) && old_phase != Some(SessionPhase::Suspended) {
        let reason = new
            .conditions
            .iter()
            .find(|c| c.type_ == status::READY)
            .map(|c| c.reason.clone())
            .unwrap_or_else(|| "Suspended".into());
        ctx.metrics.suspended(&reason);
    }
}

fn publish(ctx: &Context, session: &NotebookSession, type_: EventType, reason: &str, note: String) {
    ctx.events.publish(session, type_, reason, note);
}

/// The controller's watch caches of the objects sessions own: a reconcile
/// reads its pod, Secret, Service and claim from them instead of asking the
/// apiserver each time (the watch that triggers a reconcile has already
/// written the object it saw into the cache).
#[derive(Clone)]
pub struct Caches {
    sessions: Store<NotebookSession>,
    pods: Store<Pod>,
    secrets: Store<Secret>,
    services: Store<Service>,
    claims: Store<PersistentVolumeClaim>,
    policies: Store<NetworkPolicy>,
    /// Each cache's first listing: sessions, pods, Secrets, Services,
    /// claims, NetworkPolicies.
    listed: [Listed; 6],
}

impl Caches {
    /// What the lease controller reads: the sessions (the session
    /// controller's own cache) with these pods and Secrets.
    pub fn for_leases(&self) -> SessionCaches {
        let [sessions, pods, secrets, ..] = self.listed.clone();
        SessionCaches {
            sessions: self.sessions.clone(),
            pods: self.pods.clone(),
            secrets: self.secrets.clone(),
            listed: [sessions, pods, secrets],
        }
    }

    /// The cache of the NetworkPolicies the operator made (sessions' and pools').
    pub fn policies(&self) -> (Store<NetworkPolicy>, Listed) {
        (self.policies.clone(), self.listed[5].clone())
    }

    /// Waits until every cache holds its first complete listing.
    async fn ready(&self) {
        futures::future::join_all(self.listed.iter().map(Listed::wait)).await;
    }

    /// The object `namespace/name` in `store`, if the cache has it.
    pub fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        store.get(&ObjectRef::new(name).within(namespace))
    }
}

/// The Controller, wired: NotebookSessions, and the objects they own (only
/// those carrying the operator's label, to keep the watches small), each
/// owned kind watched once into a cache that reconciles read; and the
/// sessions whose sidecar said its status changed.
pub fn controller(
    client: Client,
    namespace: Option<&str>,
    sidecar_changes: impl futures::Stream<Item = ObjectRef<NotebookSession>> + Send + 'static,
) -> (Controller<NotebookSession>, Caches) {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        builders::LABEL_NAME,
        builders::LABEL_NAME_VALUE
    ));
    let (sessions, sessions_listed, session_changes) = cached_primary(
        api::<NotebookSession>(&client, namespace),
        watcher::Config::default(),
    );
    let (pods, pods_listed, pod_changes) = cached(api::<Pod>(&client, namespace), owned.clone());
    let (secrets, secrets_listed, secret_changes) = cached(api::<Secret>(&client, namespace), owned.clone());
    let (services, services_listed, service_changes) =
        cached(api::<Service>(&client, namespace), owned.clone());
    let (claims, claims_listed, claim_changes) =
        cached(api::<PersistentVolumeClaim>(&client, namespace), owned.clone());
    let (policies, policies_listed, policy_changes) = cached(api::<NetworkPolicy>(&client, namespace), owned);
    // A lease deleted by hand leaves its asset without one: the session
    // comes back to give it a new lease (its sidecar's status did not move,
    // so nothing else would bring it back before the fallback read).
    let released_leases = watcher(api::<AssetLease>(&client, namespace), watcher::Config::default())
        .default_backoff()
        .filter_map(|event| {
            futures::future::ready(match event {
                Ok(watcher::Event::Delete(lease)) => Some(Ok(lease)),
                Ok(_) => None,
                Err(err) => Some(Err(err)),
            })
        });
    let controller = Controller::for_stream(session_changes, sessions.clone());
    // A pool that appears brings back the sessions that waited for it.
    let waiting = sessions.clone();
    let controller = controller
        .watches(
            api::<NotebookPool>(&client, namespace),
            watcher::Config::default(),
            move |pool: NotebookPool| {
                let (name, ns) = (pool.name_any(), pool.namespace());
                waiting
                    .state()
                    .into_iter()
                    .filter(|s| s.namespace() == ns)
                    .filter(|s| s.spec.pool_ref.as_ref().is_some_and(|r| r.name == name))
                    .filter(|s| {
                        s.status.as_ref().is_some_and(|st| {
                            st.conditions
                                .iter()
                                .any(|c| c.type_ == status::POOL_CLAIM && c.reason == "PoolNotFound")
                        })
                    })
                    .map(|s| ObjectRef::from_obj(s.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .owns_stream(pod_changes)
        .owns_stream(service_changes)
        .owns_stream(secret_changes)
        .owns_stream(claim_changes)
        .owns_stream(policy_changes)
        .owns_stream(released_leases)
        .reconcile_on(sidecar_changes);
    (
        controller,
        Caches {
            sessions,
            pods,
            secrets,
            services,
            claims,
            policies,
            listed: [
                sessions_listed,
                pods_listed,
                secrets_listed,
                services_listed,
                claims_listed,
                policies_listed,
            ],
        },
    )
}
