//! Leader election with a `coordination.k8s.io/v1` Lease, so that two replicas
//! are safe: only the holder runs controllers and writes status.
//!
//! The rules follow client-go's: a lease is taken over only when its record
//! (resourceVersion) has not changed for a whole lease duration as measured by
//! this replica's own clock, so clock skew between replicas does not matter;
//! every write is a replace with the read resourceVersion, so two candidates
//! cannot both win; a holder that cannot renew within the renew deadline stops
//! leading (the process exits and restarts as a candidate).

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
    /// attempts that found another replica holding it.
    pub async fn acquire(&mut self, waits: &prometheus_client::metrics::counter::Counter) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.config.identity, lease = %self.config.name, "became the leader");
                    return;
                }
                Ok(false) => {
                    waits.inc();
                    tracing::debug!("another replica leads; waiting");
                }
                Err(err) => tracing::warn!(error = %err, "leader election attempt failed"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Keeps renewing; returns only when leadership is lost.
    pub async fn hold(&mut self) -> Error {
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => continue,
                Ok(false) => return Error::Leader("another replica took the lease".into()),
                Err(err) => tracing::warn!(error = %err, "renewing the leader lease failed"),
            }
            let since = self.last_renewed.map_or(Duration::MAX, |t| t.elapsed());
            if since > self.config.renew_deadline {
                return Error::Leader(format!("could not renew the lease for {since:?}"));
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
