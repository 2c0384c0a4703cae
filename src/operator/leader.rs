//! Leader election with a `coordination.k8s.io/v1` Lease, so that two replicas
//! are safe: only the holder runs controllers and writes status.
//!
//! The rules follow client-go's: a lease is taken over only when its record
//! (resourceVersion) has not changed for a whole lease duration as measured by
//! this replica's own clock, so clock skew between replicas does not matter;
//! every write is a replace with the read resourceVersion, so two candidates
//! cannot both win; a holder that cannot renew within the renew deadline stops
//! leading: its controllers stop, and it stands again as a candidate in the
//! same process (an apiserver outage longer than the renew deadline costs a
//! term, not a restart).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;

use super::error::{is_already_exists, is_conflict, Error};

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        Self {
            namespace,
            name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do with the lease as it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No lease exists: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else holds a live lease.
    Wait,
}

/// The pure rule. `unchanged_for` is how long this replica has seen the same
/// lease record; `None` when there is no lease.
pub fn decide(
    identity: &str,
    holder: Option<&str>,
    unchanged_for: Option<Duration>,
    lease_duration: Duration,
) -> Decision {
    let Some(unchanged_for) = unchanged_for else {
        return Decision::Create;
    };
    match holder {
        Some(h) if h == identity => Decision::Renew,
        Some(h) if !h.is_empty() && unchanged_for < lease_duration => Decision::Wait,
        _ => Decision::TakeOver,
    }
}

/// Whether a failed attempt ends the election, and with what message: when
/// the apiserver says the Lease's namespace does not exist, retrying every
/// retry period cannot help (only a person can create the namespace or
/// change the flags), so the election ends with advice instead of a warning
/// every 2 s. In a cluster the Deployment's own namespace always exists, so
/// this is a misconfiguration; out of a cluster it is the usual first run.
/// `None`: retry.
pub fn fatal_attempt_error(err: &Error, namespace: &str) -> Option<String> {
    let Error::Kube { source, .. } = err else {
        return None;
    };
    is_namespace_not_found(source, namespace).then(|| missing_namespace_advice(namespace))
}

/// Whether the apiserver refused because namespace `namespace` does not
/// exist (NamespaceLifecycle's 404 names the namespace, not the Lease).
fn is_namespace_not_found(err: &kube::Error, namespace: &str) -> bool {
    let kube::Error::Api(status) = err else {
        return false;
    };
    if status.code != 404 {
        return false;
    }
    match status.details.as_ref() {
        Some(d) if !d.kind.is_empty() => d.kind == "namespaces" && d.name == namespace,
        _ => status.message == format!("namespaces \"{namespace}\" not found"),
    }
}

/// What to do about a missing Lease namespace: the three ways on.
pub fn missing_namespace_advice(namespace: &str) -> String {
    format!(
        "the namespace {namespace:?} of the leader Lease does not exist. Create it \
         (`kubectl create namespace {namespace}`), or name an existing namespace with \
         `--leader-election-namespace <namespace>` (env POD_NAMESPACE), or run a single \
         replica without leader election with `--leader-election=false`; then start the operator again"
    )
}

/// A candidate for, or holder of, the lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<(String, Instant)>,
    last_renewed: Option<Instant>,
}

impl LeaderElector {
    /// A candidate.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            last_renewed: None,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(15)
    }

    /// One attempt; true when we hold the lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let now = MicroTime(Timestamp::now());
        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(Error::kube("read the leader Lease"))?;
        let unchanged_for = current.as_ref().map(|lease| {
            let version = lease.metadata.resource_version.clone().unwrap_or_default();
            match &self.observed {
                Some((seen, since)) if *seen == version => since.elapsed(),
                _ => {
                    self.observed = Some((version, Instant::now()));
                    Duration::ZERO
                }
            }
        });
        let holder = current
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.clone());
        let lease_duration = current
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);

        let written = match (
            decide(
                &self.config.identity,
                holder.as_deref(),
                unchanged_for,
                lease_duration,
            ),
            current,
        ) {
            (Decision::Wait, _) => return Ok(false),
            (Decision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: Some(self.duration_secs()),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(lease) => lease,
                    Err(err) if is_already_exists(&err) => return Ok(false),
                    Err(err) => return Err(Error::kube("create the leader Lease")(err)),
                }
            }
            (decision, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if decision == Decision::TakeOver {
                    spec.holder_identity = Some(self.config.identity.clone());
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
                }
                spec.lease_duration_seconds = Some(self.duration_secs());
                spec.renew_time = Some(now);
                match self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(lease) => lease,
                    Err(err) if is_conflict(&err) => return Ok(false),
                    Err(err) => return Err(Error::kube("update the leader Lease")(err)),
                }
            }
        };
        self.observed = Some((
            written.metadata.resource_version.unwrap_or_default(),
            Instant::now(),
        ));
        self.last_renewed = Some(Instant::now());
        Ok(true)
    }

    /// Waits until this replica holds the lease; `waits` counts the
    /// attempts that found another replica holding it. Fails only on an
    /// error no retry can cure ([`fatal_attempt_error`]).
    pub async fn acquire(
        &mut self,
        waits: &prometheus_client::metrics::counter::Counter,
    ) -> Result<(), Error> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.config.identity, lease = %self.config.name, "became the leader");
                    return Ok(());
                }
                Ok(false) => {
                    waits.inc();
                    tracing::debug!("another replica leads; waiting");
                }
                Err(err) => {
                    if let Some(advice) = fatal_attempt_error(&err, &self.config.namespace) {
                        return Err(Error::Leader(advice));
                    }
                    tracing::warn!(error = %err, "leader election attempt failed");
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Keeps renewing; returns only when leadership is lost: why (the term
    /// ends, and this replica may stand again), or an error it cannot stand
    /// again after (the Lease's namespace is gone).
    pub async fn hold(&mut self) -> Result<String, Error> {
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => continue,
                Ok(false) => return Ok("another replica took the lease".into()),
                Err(err) => match fatal_attempt_error(&err, &self.config.namespace) {
                    // The namespace went, and the Lease with it.
                    Some(advice) => return Err(Error::Leader(advice)),
                    None => tracing::warn!(error = %err, "renewing the leader lease failed"),
                },
            }
            let since = self.last_renewed.map_or(Duration::MAX, |t| t.elapsed());
            if since > self.config.renew_deadline {
                return Ok(format!("could not renew the lease for {since:?}"));
            }
        }
    }

    /// Steps down: frees the lease so a standby takes over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the leader lease"),
            Err(err) => tracing::warn!(error = %err, "could not release the leader lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn kube_error(json: &str) -> Error {
        let status: kube::core::Status = serde_json::from_str(json).expect("a Status");
        Error::kube("create the leader Lease")(kube::Error::Api(status.boxed()))
    }

    #[test]
    fn a_missing_lease_namespace_ends_the_election_with_the_ways_on() {
        // What kube-apiserver's NamespaceLifecycle answers to the create.
        let err = kube_error(
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"namespaces \"nbo-dev\" not found","reason":"NotFound","details":{"name":"nbo-dev","kind":"namespaces"},"code":404}"#,
        );
        let advice = fatal_attempt_error(&err, "nbo-dev").expect("fatal");
        assert!(
            advice.contains("\"nbo-dev\" of the leader Lease does not exist"),
            "{advice}"
        );
        assert!(advice.contains("`kubectl create namespace nbo-dev`"), "{advice}");
        assert!(
            advice.contains("`--leader-election-namespace <namespace>`"),
            "{advice}"
        );
        assert!(advice.contains("`--leader-election=false`"), "{advice}");
        // An apiserver that leaves out the details: the message says it.
        let bare = kube_error(
            r#"{"status":"Failure","message":"namespaces \"nbo-dev\" not found","reason":"NotFound","code":404}"#,
        );
        assert!(fatal_attempt_error(&bare, "nbo-dev").is_some());
    }

    #[test]
    fn other_failures_are_retried() {
        // The Lease itself gone (a 404 that names it), another namespace,
        // RBAC not yet in place, an overloaded apiserver.
        for json in [
            r#"{"status":"Failure","message":"leases.coordination.k8s.io \"l\" not found","reason":"NotFound","details":{"name":"l","group":"coordination.k8s.io","kind":"leases"},"code":404}"#,
            r#"{"status":"Failure","message":"namespaces \"other\" not found","reason":"NotFound","details":{"name":"other","kind":"namespaces"},"code":404}"#,
            r#"{"status":"Failure","message":"namespaces \"other\" not found","reason":"NotFound","code":404}"#,
            r#"{"status":"Failure","message":"leases is forbidden","reason":"Forbidden","code":403}"#,
            r#"{"status":"Failure","message":"too many requests","reason":"TooManyRequests","code":429}"#,
        ] {
            assert_eq!(fatal_attempt_error(&kube_error(json), "nbo-dev"), None, "{json}");
        }
        assert_eq!(
            fatal_attempt_error(&Error::Leader("lost".into()), "nbo-dev"),
            None
        );
    }

    #[test]
    fn no_lease_is_created() {
        assert_eq!(decide("a", None, None, LEASE), Decision::Create);
    }

    #[test]
    fn our_lease_is_renewed_even_when_old() {
        assert_eq!(
            decide("a", Some("a"), Some(Duration::from_secs(60)), LEASE),
            Decision::Renew
        );
    }

    #[test]
    fn a_live_lease_of_another_is_respected() {
        assert_eq!(
            decide("a", Some("b"), Some(Duration::from_secs(14)), LEASE),
            Decision::Wait
        );
    }

    #[test]
    fn an_expired_or_released_lease_is_taken_over() {
        assert_eq!(
            decide("a", Some("b"), Some(Duration::from_secs(15)), LEASE),
            Decision::TakeOver
        );
        assert_eq!(decide("a", None, Some(Duration::ZERO), LEASE), Decision::TakeOver);
        assert_eq!(
            decide("a", Some(""), Some(Duration::ZERO), LEASE),
            Decision::TakeOver
        );
    }
}
