//! `notebook-operator run`: preflight, leader election, controllers, and the
//! `/healthz` + `/metrics` server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::wait::{await_condition, conditions};
use kube::Client;

use super::assets::{self, LeaseContext, LeaseControllerConfig};
use super::builders::BuildConfig;
use super::controller::{self, Context, ControllerConfig};
use super::crd;
use super::crd::EgressPeer;
use super::error::{is_not_found, Error};
use super::leader::{LeaderElector, LeaseConfig};
use super::metrics::{self, Metrics, SnapshotSlot};
use super::network::{self, PolicyConfig};
use super::pools;
use super::sidecar_client::SidecarClient;
use super::sidecar_watch::{self, SidecarWatches};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;

/// Flags of `notebook-operator run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Address of `/healthz` and `/metrics`.
    #[arg(
        long,
        env = "NOTEBOOK_OPERATOR_METRICS_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_listen: SocketAddr,
    /// Run the controllers only while holding the leader Lease (`--leader-election=false` to turn off).
    #[arg(long, env = "NOTEBOOK_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "notebook-operator-system")]
    pub leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "notebook-operator-leader")]
    pub leader_election_lease: String,
    /// This replica's identity in the Lease and in Events (default: the pod name, else host name and a random suffix).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Image of the sidecar: this operator's own image.
    #[arg(long, env = "NOTEBOOK_OPERATOR_IMAGE", default_value = concat!("notebook-operator:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// Pull policy of the sidecar image.
    #[arg(long, env = "NOTEBOOK_OPERATOR_IMAGE_PULL_POLICY")]
    pub sidecar_image_pull_policy: Option<String>,
    /// Kernel image for sessions that name none.
    #[arg(
        long,
        env = "NOTEBOOK_DEFAULT_KERNEL_IMAGE",
        default_value = "quay.io/jupyter/base-notebook:latest"
    )]
    pub default_kernel_image: String,
    /// Pull policy of kernel images; absent: the Kubernetes default.
    #[arg(long, env = "NOTEBOOK_KERNEL_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub kernel_image_pull_policy: Option<String>,
    /// How often a Ready session's sidecar status is read even though its
    /// long poll said nothing changed (Go duration): a fallback.
    #[arg(long, default_value = "5m", value_parser = parse_flag_duration)]
    pub status_interval: Duration,
    /// How long to wait for the CRDs to be established at start.
    #[arg(long, default_value = "60s", value_parser = parse_flag_duration)]
    pub crd_wait_timeout: Duration,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "NOTEBOOK_OPERATOR_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// How long a Reclaimed AssetLease stays before it is removed (Go duration; 0s removes it at once).
    #[arg(long, env = "NOTEBOOK_OPERATOR_ASSET_LEASE_GRACE", default_value = "5m", value_parser = parse_grace)]
    pub asset_lease_grace: Duration,
    /// RuntimeClass of kernel pods whose template names none (e.g. `gvisor`
    /// to put every kernel in a sandbox); absent: the node's default runtime.
    #[arg(long, env = "NOTEBOOK_DEFAULT_RUNTIME_CLASS")]
    pub default_runtime_class: Option<String>,
    /// `ephemeral-storage` request of kernel containers whose resources name none (e.g. `256Mi`).
    #[arg(long, value_parser = parse_quantity)]
    pub kernel_ephemeral_storage_request: Option<String>,
    /// `ephemeral-storage` limit of kernel containers whose resources name
    /// none (e.g. `4Gi`): a kernel writing past it gets its pod evicted.
    #[arg(long, value_parser = parse_quantity)]
    pub kernel_ephemeral_storage_limit: Option<String>,
    /// Give every session and pool a NetworkPolicy: the kernel pod's egress
    /// denied but DNS and its `network.egress`, its sidecar reachable only
    /// from `--policy-ingress-from` (`--network-policy=false` to turn off).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub network_policy: bool,
    /// Egress peers of sessions and pools that name none, as a JSON list
    /// (`[{"cidr": "10.20.0.0/16"}, {"namespace": "pypi", "ports": [{"port": 443}]}]`);
    /// absent: DNS only.
    #[arg(long, value_parser = parse_egress_flag)]
    pub default_egress: Option<EgressList>,
    /// Who may reach the sidecars, as a JSON list of NetworkPolicy peers
    /// (the chart names the operator, the gateway and `networkPolicy.ingressFrom`);
    /// absent: every pod of the operator's namespace.
    #[arg(long, value_parser = parse_peers_flag)]
    pub policy_ingress_from: Option<PeerList>,
    /// Port the sidecars listen on (tests that run sidecars on the host change it).
    #[arg(long, default_value_t = super::builders::SIDECAR_PORT, hide = true)]
    pub sidecar_port: u16,
}

/// The egress peers of `--default-egress`.
#[derive(Clone, Debug, PartialEq)]
pub struct EgressList(pub Vec<EgressPeer>);

/// The peers of `--policy-ingress-from`.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerList(pub Vec<NetworkPolicyPeer>);

fn parse_egress_flag(text: &str) -> Result<EgressList, String> {
    network::parse_egress(text).map(EgressList)
}

fn parse_peers_flag(text: &str) -> Result<PeerList, String> {
    network::parse_peers(text).map(PeerList)
}

/// A Kubernetes quantity as the apiserver takes it for storage: a decimal
/// number with an optional binary or decimal suffix (`512Mi`, `4Gi`, `1G`).
fn parse_quantity(text: &str) -> Result<String, String> {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let suffixes = [
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
    ];
    if number.is_empty() || number.parse::<f64>().is_err() || !suffixes.contains(&suffix) {
        return Err(format!("{text:?} is not a quantity such as 512Mi or 4Gi"));
    }
    Ok(text.to_string())
}

impl RunArgs {
    /// The network settings these flags give.
    pub fn policy_config(&self) -> PolicyConfig {
        PolicyConfig {
            enabled: self.network_policy,
            default_egress: self.default_egress.clone().map(|l| l.0).unwrap_or_default(),
            ingress_from: match &self.policy_ingress_from {
                Some(peers) => peers.0.clone(),
                None => PolicyConfig::for_namespace(&self.leader_election_namespace).ingress_from,
            },
        }
    }
}

fn parse_flag_duration(text: &str) -> Result<Duration, String> {
    crd::parse_duration(text)
}

fn parse_grace(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "0" | "0s" => Ok(Duration::ZERO),
        other => crd::parse_duration(other),
    }
}

/// Entry point from the command line.
pub fn run_blocking(args: RunArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(category = err.category(), "{err}");
            ExitCode::FAILURE
        }
    }
}

/// Fails with a message naming the fix when a CRD is missing; waits until
/// both are Established.
pub async fn preflight(client: &Client, timeout: Duration) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crd::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        match api.get_opt(&name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(Error::Crd(format!(
                    "the CustomResourceDefinition {name} is not installed: run `kubectl apply -f crds/` \
                     (or `notebook-operator crd | kubectl apply -f -`, or install the Helm chart) and start the operator again"
                )))
            }
            Err(err) if is_not_found(&err) => {
                return Err(Error::Crd(format!("the CustomResourceDefinition {name} is not installed: run `kubectl apply -f crds/`")))
            }
            Err(err) => return Err(Error::kube("read CustomResourceDefinition")(err)),
        }
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(timeout, established).await {
            Ok(Ok(_)) => tracing::info!(crd = %name, "CRD established"),
            Ok(Err(err)) => return Err(Error::Crd(format!("waiting for {name} to be Established: {err}"))),
            Err(_) => {
                return Err(Error::Crd(format!(
                    "the CustomResourceDefinition {name} is not Established after {timeout:?}; see `kubectl describe crd {name}`"
                )))
            }
        }
    }
    Ok(())
}

fn identity(args: &RunArgs) -> String {
    if let Some(id) = args.identity.clone().filter(|s| !s.is_empty()) {
        return id;
    }
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "notebook-operator".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// Runs the operator until a signal or the loss of leadership.
pub async fn run(args: RunArgs) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::default());
    let no_config = |err: &dyn std::fmt::Display| {
        Error::Startup(format!(
            "no Kubernetes client configuration (in-cluster or KUBECONFIG): {err}"
        ))
    };
    let config = kube::Config::infer().await.map_err(|e| no_config(&e))?;
    // Every request to the apiserver is counted (apiserver_requests_total).
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| no_config(&e))?
        .with_layer(&metrics::CountRequests(metrics.apiserver_requests.clone()))
        .build();
    let slot = SnapshotSlot::default();

    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|err| Error::Startup(format!("cannot listen on {}: {err}", args.metrics_listen)))?;
    tracing::info!(address = %args.metrics_listen, "serving /healthz, /readyz and /metrics");
    let router = metrics::router(metrics.clone(), slot.clone(), client.clone());
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(error = %err, "the metrics server stopped");
        }
    });

    preflight(&client, args.crd_wait_timeout).await?;

    let identity = identity(&args);
    let mut elector = args.leader_election.then(|| {
        LeaderElector::new(
            client.clone(),
            LeaseConfig::new(
                args.leader_election_namespace.clone(),
                args.leader_election_lease.clone(),
                identity.clone(),
            ),
        )
    });
    loop {
        if let Some(elector) = elector.as_mut() {
            tracing::info!(identity = %elector.identity(), "waiting to become the leader");
            tokio::select! {
                acquired = elector.acquire(&metrics.leader_waits) => acquired?,
                () = crate::util::shutdown_signal() => return Ok(()),
            }
            metrics.leader.set(1);
        }
        // One term: the controllers run (with fresh caches) until the term
        // ends; dropping them stops every reconcile before another replica
        // may take the Lease (renew deadline < lease duration).
        let controllers = lead(&args, &client, &metrics, &slot, &identity);
        let outcome = match elector.as_mut() {
            Some(elector) => {
                tokio::select! {
                    () = controllers => Ok(None),
                    lost = elector.hold() => lost.map(Some),
                    () = crate::util::shutdown_signal() => {
                        elector.release().await;
                        Ok(None)
                    }
                }
            }
            None => {
                tokio::select! {
                    () = controllers => Ok(None),
                    () = crate::util::shutdown_signal() => Ok(None),
                }
            }
        };
        metrics.leader.set(0);
        match outcome {
            Ok(None) => return Ok(()),
            // Lost without a fault of ours (the apiserver was unreachable
            // past the renew deadline, or another replica holds the Lease):
            // the process stays up, serves /healthz, and stands again.
            Ok(Some(reason)) => tracing::warn!(%reason,
                "stepped down as the leader: the controllers stopped; standing as a candidate again"),
            Err(fatal) => return Err(fatal),
        }
    }
}

/// One term as the leader (or the whole run without leader election): the
/// session, AssetLease and pool controllers, until they end.
async fn lead(args: &RunArgs, client: &Client, metrics: &Arc<Metrics>, slot: &SnapshotSlot, identity: &str) {
    let identity_for_leases = identity.to_string();
    let config = ControllerConfig {
        build: BuildConfig {
            sidecar_image: args.sidecar_image.clone(),
            sidecar_image_pull_policy: args.sidecar_image_pull_policy.clone(),
            kernel_image_pull_policy: args.kernel_image_pull_policy.clone(),
            default_kernel_image: args.default_kernel_image.clone(),
            default_runtime_class: args.default_runtime_class.clone(),
            kernel_ephemeral_storage_request: args.kernel_ephemeral_storage_request.clone(),
            kernel_ephemeral_storage_limit: args.kernel_ephemeral_storage_limit.clone(),
        },
        network: args.policy_config(),
        status_interval: args.status_interval,
        namespace: args.namespace.clone(),
        instance: Some(identity.to_string()),
    };
    let sidecar = SidecarClient::new(Duration::from_secs(3)).with_port(args.sidecar_port);

    // AssetLeases: their own controller, beside the sessions' and under the
    // same leadership; its cache tells the session controller which assets
    // have a lease already, and the session controller's caches tell it
    // where each lease's sidecar is.
    let (watches, sidecar_changes) = SidecarWatches::new(sidecar.clone(), sidecar_watch::WAIT);
    // The term's sidecar long polls end with it.
    let _stop_follows = watches.stop_all_on_drop();
    let (controller, caches) =
        controller::controller(client.clone(), args.namespace.as_deref(), sidecar_changes);
    let (lease_controller, lease_sync) =
        assets::controller::controller(client.clone(), args.namespace.as_deref());
    let lease_context = Arc::new(LeaseContext::new(
        client.clone(),
        LeaseControllerConfig {
            settings: assets::decide::Settings {
                grace: args.asset_lease_grace,
            },
            instance: Some(identity_for_leases),
        },
        metrics.clone(),
        sidecar.clone(),
        caches.for_leases(),
    ));
    let leases = lease_controller
        .run(
            assets::controller::reconcile,
            assets::controller::error_policy,
            lease_context,
        )
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(lease = %object.name, "reconciled"),
                Err(err) => tracing::debug!(error = %err, "lease controller event"),
            }
        });

    // NotebookPools: warm pods kept ready, under the same leadership; the
    // session controller claims from the pool controller's cache.
    let pool_wired = pools::controller::controller(client.clone(), args.namespace.as_deref());
    let (pool_store, pools_listed) = pool_wired.pools;
    let pool_context = Arc::new(
        pools::controller::PoolContext::new(
            client.clone(),
            config.build.clone(),
            metrics.clone(),
            pool_wired.pods,
            config.instance.clone(),
        )
        .with_network(config.network.clone(), caches.policies()),
    );
    let pools = pools::controller::run(pool_wired.controller, pool_context);

    let context = Arc::new(
        Context::new(
            client.clone(),
            config,
            metrics.clone(),
            sidecar,
            caches.clone(),
            watches,
        )
        .with_lease_sync(lease_sync)
        .with_pools(pool_store, pools_listed),
    );
    let store = controller.store();
    slot.set(Arc::new(move || store.state()));
    let sessions = controller
        .run(controller::reconcile, controller::error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(session = %object.name, "reconciled"),
                Err(err) => tracing::debug!(error = %err, "controller event"),
            }
        });
    futures::join!(sessions, leases, pools);
}
