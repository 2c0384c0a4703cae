//! The custom resources: `NotebookSession` and `AssetLease` in `notebook.dev/v1alpha1`.
//!
//! The Rust types are the source of truth; `notebook-operator crd` prints the
//! generated CustomResourceDefinitions and `crds/` holds a checked-in copy that a
//! unit test keeps identical.

// Several `printcolumn(type_ = ...)` entries inside one `#[kube]` attribute look
// like duplicates to this lint; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of both resources.
pub const GROUP: &str = "notebook.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Durations are kept as text in Go syntax, as users wrote them; the
/// operator parses them with [`parse_duration`], and the apiserver rejects what
/// does not parse. Keeping them as text means one bad value never stops the
/// controller from deserializing the object: it shows as a condition instead.
///
/// The CEL rule shared by every duration field: Go duration syntax
/// (`90s`, `30m`, `1h30m`), strictly positive. `duration()` fails to evaluate
/// on text that does not parse, which the apiserver reports as invalid too.
const POSITIVE_DURATION: &str = "duration(self) > duration('0s')";

/// A Jupyter kernel served to agents and people: one pod with the sidecar and the kernel.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "notebook.dev",
    version = "v1alpha1",
    kind = "NotebookSession",
    plural = "notebooksessions",
    singular = "notebooksession",
    shortname = "nbs",
    category = "notebook",
    namespaced,
    status = "NotebookSessionStatus",
    derive = "PartialEq",
    doc = "A Jupyter kernel served to agents and people: one pod with the notebook sidecar and the kernel.",
    validation = kube::core::Rule::new(
        "size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    ).message("metadata.name must be a DNS-1035 label (a-z, 0-9 and '-', starting with a letter, at most 63 characters): the session's Service carries it"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Last Activity",
        type_ = "date",
        json_path = ".status.lastActivityTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("has(self.storage) == has(oldSelf.storage)")
    .message("storage cannot be added or removed after creation; create a new session instead"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.poolRef) || !has(self.kernel) || (!has(self.kernel.image) && !has(self.kernel.command) && !has(self.kernel.env) && !has(self.kernel.resources) && !has(self.kernel.readOnlyRootFilesystem))"
).message("spec.kernel cannot be set together with spec.poolRef: the pool's template gives the kernel"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.poolRef) || (!has(self.storage) && !has(self.podTemplate))")
    .message("spec.storage and spec.podTemplate cannot be set together with spec.poolRef: a warm pod is built from the pool's template"))]
#[x_kube(validation = kube::core::Rule::new("has(self.poolRef) == has(oldSelf.poolRef) && (!has(self.poolRef) || self.poolRef == oldSelf.poolRef)")
    .message("poolRef cannot be added, removed or changed after creation"))]
#[serde(rename_all = "camelCase")]
pub struct NotebookSessionSpec {
    /// Take a warm kernel pod of this NotebookPool (same namespace) instead of
    /// starting one: the kernel and pod overrides come from the pool's
    /// template, and so do the idle timeout and asset settings the session
    /// leaves unset. An empty pool means a cold start from that template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_ref: Option<PoolRef>,
    /// The kernel container.
    #[serde(default)]
    pub kernel: KernelSpec,
    /// A PersistentVolumeClaim for the sidecar state (queue, outputs) and the
    /// workspace. Absent: an emptyDir, which survives a sidecar restart but not
    /// the loss of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Suspend the session after this long without activity (Go duration, e.g. `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = kube::core::Rule::new(POSITIVE_DURATION)
        .message("must be a positive duration such as 30m or 1h30m"))]
    pub idle_timeout: Option<String>,
    /// At this time the session is deleted or suspended, per `shutdownPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,
    /// What `shutdownTime` does: `Delete` the session or `Suspend` it.
    #[serde(default)]
    pub shutdown_policy: ShutdownPolicy,
    /// When true the kernel pod is removed; storage, token and service are kept.
    #[serde(default)]
    pub suspend: bool,
    /// Asset retention.
    #[serde(default)]
    pub assets: AssetsSpec,
    /// Overrides applied to the kernel pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
    /// Where the kernel pod may connect. Absent: the pool's `template.network`
    /// for a session with `poolRef`, else the operator's default (Helm value
    /// `networkPolicy.egress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
}

/// The network of a kernel pod: the operator gives every session a
/// NetworkPolicy that denies the pod's egress except DNS and these peers, and
/// admits to its sidecar only the operator, the gateway and the namespaces
/// the operator is told to (Helm value `networkPolicy.ingressFrom`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Peers the pod may connect to, besides DNS (port 53 of any pod). An
    /// empty list: DNS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub egress: Option<Vec<EgressPeer>>,
}

/// One peer a kernel pod may connect to: an IP block, or pods (of a
/// namespace, with labels, or both).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new("has(self.cidr) != (has(self.namespace) || has(self.podLabels))")
    .message("an egress peer is either a cidr, or a namespace and/or podLabels"))]
#[serde(rename_all = "camelCase")]
pub struct EgressPeer {
    /// An IP block in CIDR notation, e.g. `10.20.0.0/16` or `2001:db8::/48`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub cidr: Option<String>,
    /// The pods of this namespace (all of them, or those with `podLabels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// The pods carrying all these labels, in `namespace` or else in the
    /// session's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// Only these ports of the peer; absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub ports: Option<Vec<EgressPort>>,
}

/// A port of an egress peer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EgressPort {
    /// The port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// `TCP` (the default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// The protocol of an egress port.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PortProtocol {
    /// TCP.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl PortProtocol {
    /// The name as NetworkPolicy spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

/// The kernel container of a session.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KernelSpec {
    /// Kernel image. Absent: the operator's default kernel image
    /// (`--default-kernel-image`, Helm value `defaultKernelImage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Command that starts the kernel on `/run/notebook/kernel.json`.
    /// Absent: `python -m ipykernel_launcher -f /run/notebook/kernel.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub command: Option<Vec<String>>,
    /// Environment of the kernel container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// Compute resources of the kernel container. An `ephemeral-storage`
    /// request or limit left out comes from the operator's default (Helm
    /// value `kernelEphemeralStorage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Mount the kernel's root filesystem read-only: the kernel can write
    /// only to the workspace and to `/tmp` (an emptyDir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
}

/// Persistent storage for a session.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size of the PersistentVolumeClaim, e.g. `5Gi`.
    pub size: Quantity,
    /// StorageClass of the claim. Absent: the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// What `shutdownTime` does.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ShutdownPolicy {
    /// Delete the NotebookSession (and with it everything it owns).
    #[default]
    Delete,
    /// Suspend the session: remove the pod, keep storage.
    Suspend,
}

/// Asset retention of a session.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AssetsSpec {
    /// How long an asset is kept after it was created or last renewed, at
    /// least. Absent: the pool's `template.assets.leaseDuration` for a
    /// session with `poolRef`, else 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = kube::core::Rule::new(POSITIVE_DURATION)
        .message("must be a positive duration such as 24h"))]
    pub lease_duration: Option<String>,
}

impl AssetsSpec {
    /// The lease duration in force: the one set, else 24h.
    pub fn lease_duration(&self) -> String {
        self.lease_duration.clone().unwrap_or_else(default_lease_duration)
    }

    /// These settings, each one left unset taken from `defaults` (a
    /// session's own over its pool's).
    pub fn or(&self, defaults: &AssetsSpec) -> AssetsSpec {
        AssetsSpec {
            lease_duration: self
                .lease_duration
                .clone()
                .or_else(|| defaults.lease_duration.clone()),
        }
    }
}

fn default_lease_duration() -> String {
    "24h".to_string()
}

/// Overrides applied to the kernel pod.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Node selector of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Extra labels on the pod (the operator's own labels win on conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra annotations on the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// The RuntimeClass the pod runs under, e.g. `gvisor` or `kata` for
    /// code nobody has read. Absent: the operator's default (Helm value
    /// `runtimeClassName`), else the node's default runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub runtime_class_name: Option<String>,
}

/// Lifecycle phase of a session.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionPhase {
    /// Objects are being created or the pod is not scheduled yet.
    Pending,
    /// The pod is scheduled; sidecar or kernel are starting.
    Starting,
    /// The sidecar answers and the kernel is alive.
    Ready,
    /// No pod by request (`suspend`, idle timeout or shutdown time).
    Suspended,
    /// The session cannot run: invalid spec, image pull or crash loop.
    Failed,
    /// The session is being deleted.
    Terminating,
}

impl SessionPhase {
    /// Every phase, for metrics that report zero too.
    pub const ALL: [SessionPhase; 6] = [
        Self::Pending,
        Self::Starting,
        Self::Ready,
        Self::Suspended,
        Self::Failed,
        Self::Terminating,
    ];

    /// The name as it appears in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Starting => "Starting",
            Self::Ready => "Ready",
            Self::Suspended => "Suspended",
            Self::Failed => "Failed",
            Self::Terminating => "Terminating",
        }
    }
}

/// Execution queue counts, copied from the sidecar.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
pub struct QueueStatus {
    /// Executions waiting for the kernel.
    pub queued: i64,
    /// Executions the kernel runs now.
    pub running: i64,
    /// Executions that completed.
    pub completed: i64,
    /// Executions that failed.
    pub failed: i64,
}

/// Observed state of a session.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NotebookSessionStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SessionPhase>,
    /// Standard conditions: Ready, KernelAlive, PodScheduled, SidecarReachable, SpecValid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The kernel pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// HTTP base URL of the sidecar, inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// MCP (streamable HTTP) URL of the sidecar, inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_endpoint: Option<String>,
    /// Secret holding the client bearer token (`token`) and the kernel key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_name: Option<String>,
    /// Execution queue counts at the last read of the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStatus>,
    /// Last execution or client activity seen by the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_time: Option<Time>,
    /// How often the kernel was restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_restarts: Option<i64>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Reference to a NotebookPool in the same namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct PoolRef {
    /// Name of the NotebookPool.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Warm kernel pods kept ready from a session template: a NotebookSession
/// with `poolRef` is handed one of them, once, with its own fresh token.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "notebook.dev",
    version = "v1alpha1",
    kind = "NotebookPool",
    plural = "notebookpools",
    singular = "notebookpool",
    shortname = "nbp",
    category = "notebook",
    namespaced,
    status = "NotebookPoolStatus",
    derive = "PartialEq",
    doc = "Warm kernel pods kept ready from a session template; a NotebookSession with spec.poolRef is handed one of them, once, with its own fresh token.",
    validation = kube::core::Rule::new(
        "size(self.metadata.name) <= 40 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    ).message("metadata.name must be a DNS-1035 label of at most 40 characters: its warm pods are named after it"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.ready"),
    printcolumn(name = "Claimed", type_ = "integer", json_path = ".status.claimed"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct NotebookPoolSpec {
    /// What every warm pod runs, and the defaults of the sessions it serves.
    #[serde(default)]
    pub template: PoolTemplate,
    /// Warm pods kept ready.
    #[serde(default)]
    #[schemars(range(min = 0, max = 200))]
    pub replicas: i32,
}

/// The session template of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PoolTemplate {
    /// The kernel container of every warm pod.
    #[serde(default)]
    pub kernel: KernelSpec,
    /// Overrides applied to every warm pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
    /// Where the warm pods, and the sessions served unless they set their
    /// own, may connect. Absent: the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// Idle timeout of the sessions served, unless a session sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = kube::core::Rule::new(POSITIVE_DURATION)
        .message("must be a positive duration such as 30m or 1h30m"))]
    pub idle_timeout: Option<String>,
    /// Asset retention of the sessions served: each setting a session
    /// leaves unset comes from here, and a session's own wins (as with
    /// `idleTimeout`; unlike the kernel, assets do not shape the warm pod,
    /// so a session may set them).
    #[serde(default, skip_serializing_if = "is_default")]
    pub assets: AssetsSpec,
    /// Python run in every warm kernel before its pod counts as ready, e.g.
    /// `import pandas`: what a claiming session finds already done. It is
    /// not part of the session's history (no execution, event or output),
    /// and not run again after the claim. If it raises, the pod stays not
    /// ready and the pool's Ready condition says `WarmupFailed` with the
    /// error. Changing it replaces the warm pods (not the claimed ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub warmup: Option<String>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Observed state of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NotebookPoolStatus {
    /// Warm pods whose kernel answers: what a claim can take now.
    #[serde(default)]
    pub ready: i32,
    /// Warm pods, ready or starting.
    #[serde(default)]
    pub warm: i32,
    /// Pods of this pool that sessions hold now.
    #[serde(default)]
    pub claimed: i32,
    /// Standard conditions: Ready (every replica is warm and ready).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A lease on one asset file of a session's workspace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "notebook.dev",
    version = "v1alpha1",
    kind = "AssetLease",
    plural = "assetleases",
    singular = "assetlease",
    shortname = "al",
    category = "notebook",
    namespaced,
    status = "AssetLeaseStatus",
    derive = "PartialEq",
    doc = "A lease on one asset file of a NotebookSession's workspace: the asset is deleted only after the lease expired and no notebook references it.",
    printcolumn(name = "Session", type_ = "string", json_path = ".spec.sessionRef.name"),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.path"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".status.expiresAt"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    selectable = ".spec.sessionRef.name",
    selectable = ".spec.path"
)]
#[serde(rename_all = "camelCase")]
pub struct AssetLeaseSpec {
    /// The session whose workspace holds the asset.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("sessionRef is immutable"))]
    pub session_ref: SessionRef,
    /// Path of the asset relative to the workspace, e.g. `assets/<sha256>.png`.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(
        validation = kube::core::Rule::new("self == oldSelf").message("path is immutable"),
        validation = kube::core::Rule::new("!self.startsWith('/') && !self.split('/').exists(s, s == '..')")
            .message("path must be relative to the workspace and must not contain '..'")
    )]
    pub path: String,
    /// How long the lease lasts from its start or from `renewTime`, whichever is later.
    #[serde(default = "default_lease_duration")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = kube::core::Rule::new(POSITIVE_DURATION)
        .message("must be a positive duration such as 24h"))]
    pub duration: String,
    /// When the lease starts. Absent: when the object was created. The operator
    /// sets it to the asset's creation time, so that an asset found late is not
    /// kept longer than its session's `leaseDuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// A holder bumps this to renew the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<Time>,
    /// Who holds the lease (free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// Reference to a NotebookSession in the same namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct SessionRef {
    /// Name of the NotebookSession.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Lifecycle phase of an asset lease.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeasePhase {
    /// Not expired yet.
    Active,
    /// Expired, but a notebook references the asset, it is pinned, or another
    /// lease still holds it; checked again one `duration` later.
    Retained,
    /// Expired and unreferenced: the asset was deleted (or was already gone,
    /// see the AssetMissing condition). The lease object is removed after a
    /// grace period.
    Reclaimed,
}

/// Observed state of an asset lease.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AssetLeaseStatus {
    /// When the lease expires (or expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<LeasePhase>,
    /// Notebooks that referenced the asset at the last check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referenced_by: Vec<String>,
    /// When the sidecar last answered about the asset after the lease expired:
    /// a Retained lease is checked again one `duration` later, a Reclaimed one
    /// is removed a grace period later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
    /// Standard conditions: SpecValid, SessionReachable, InUse, AssetMissing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Parses a Go duration (`90s`, `30m`, `1h30m`, `500ms`) into a positive span.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let parsed: kube::core::Duration = text
        .parse()
        .map_err(|err| format!("{text:?} is not a duration such as 30m or 1h30m: {err}"))?;
    if parsed.is_negative() {
        return Err(format!("{text:?} is negative"));
    }
    let span = std::time::Duration::from(parsed);
    if span.is_zero() {
        return Err(format!("{text:?} is zero"));
    }
    Ok(span)
}

/// Every CustomResourceDefinition, in the order they are printed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![NotebookSession::crd(), AssetLease::crd(), NotebookPool::crd()]
}

/// One CRD as YAML, as checked into `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

/// Both CRDs as one multi-document YAML stream.
pub fn all_crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// File name under `crds/` of each CRD.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    let singular = crd
        .spec
        .names
        .singular
        .clone()
        .unwrap_or_else(|| crd.spec.names.kind.to_lowercase());
    format!("{singular}.yaml")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    const REGENERATE: &str = "regenerate with `UPDATE_CRDS=1 cargo test --lib crd` and commit the result";

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// Compares (or, with `UPDATE_CRDS=1`, rewrites) one checked-in copy.
    fn check_file(path: &Path, generated: &str) {
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::create_dir_all(path.parent().expect("a parent directory")).expect("mkdir");
            std::fs::write(path, generated).expect("write CRD");
            return;
        }
        let on_disk = std::fs::read_to_string(path)
            .unwrap_or_else(|err| panic!("{} cannot be read ({err}); {REGENERATE}", path.display()));
        assert!(
            on_disk == generated,
            "{} differs from the CRD generated from src/operator/crd.rs; {REGENERATE}",
            path.display()
        );
    }

    #[test]
    fn crd_files_match_the_generated_definitions() {
        for crd in crds() {
            let yaml = crd_yaml(&crd).expect("CRD renders as YAML");
            let name = crd_file_name(&crd);
            check_file(&repo().join("crds").join(&name), &yaml);
            check_file(&repo().join("charts/notebook-operator/crds").join(&name), &yaml);
        }
    }

    #[test]
    fn install_yaml_carries_the_generated_crds() {
        let text =
            std::fs::read_to_string(repo().join("manifests/install.yaml")).expect("manifests/install.yaml");
        let mut installed: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
            .filter(|doc| doc.get("kind").and_then(|k| k.as_str()) == Some("CustomResourceDefinition"))
            .map(|doc| serde_yaml::from_value(doc).expect("a CRD"))
            .collect();
        let mut generated = crds();
        installed.sort_by_key(|crd| crd.metadata.name.clone());
        generated.sort_by_key(|crd| crd.metadata.name.clone());
        assert!(
            installed == generated,
            "the CRDs in manifests/install.yaml differ from the generated ones; run \
             `UPDATE_CRDS=1 cargo test --lib crd` and then `manifests/generate`"
        );
    }

    #[test]
    fn the_example_session_is_valid() {
        let text = std::fs::read_to_string(repo().join("manifests/examples/session.yaml")).expect("example");
        let sessions: Vec<NotebookSession> = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
            .filter(|doc| doc.get("kind").and_then(|k| k.as_str()) == Some("NotebookSession"))
            .map(|doc| serde_yaml::from_value(doc).expect("a NotebookSession"))
            .collect();
        assert_eq!(sessions.len(), 1);
        let mut session = sessions[0].clone();
        session.metadata.uid = Some("uid".into());
        let valid = crate::operator::builders::validate(&session, &Default::default());
        assert!(valid.is_ok(), "{valid:?}");
    }

    #[test]
    fn the_example_pool_and_its_session_are_valid() {
        let text = std::fs::read_to_string(repo().join("manifests/examples/pool.yaml")).expect("example");
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
            .collect();
        let kind = |doc: &serde_yaml::Value| doc.get("kind").and_then(|k| k.as_str()).map(String::from);
        let pool: NotebookPool = docs
            .iter()
            .find(|d| kind(d).as_deref() == Some("NotebookPool"))
            .map(|d| serde_yaml::from_value(d.clone()).expect("a NotebookPool"))
            .expect("the example has a pool");
        let mut session: NotebookSession = docs
            .iter()
            .find(|d| kind(d).as_deref() == Some("NotebookSession"))
            .map(|d| serde_yaml::from_value(d.clone()).expect("a NotebookSession"))
            .expect("the example has a session");
        assert_eq!(
            session.spec.pool_ref.as_ref().map(|r| r.name.as_str()),
            Some("scipy")
        );
        session.metadata.uid = Some("uid".into());
        let made = crate::operator::pools::desired::templated(&session, &pool);
        let valid = crate::operator::builders::validate(&made, &Default::default());
        assert_eq!(
            valid.map(|v| (v.kernel_image, v.lease_duration)),
            Ok((
                "quay.io/jupyter/scipy-notebook:latest".into(),
                std::time::Duration::from_secs(48 * 3600)
            ))
        );
        assert!(pool
            .spec
            .template
            .warmup
            .is_some_and(|w| w.contains("import pandas")));
    }

    #[test]
    fn crd_printout_holds_both_definitions() {
        let yaml = all_crds_yaml().expect("renders");
        let docs: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|doc| CustomResourceDefinition::deserialize(doc).expect("a CRD"))
            .collect();
        let names: Vec<_> = docs
            .iter()
            .map(|crd| crd.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "notebooksessions.notebook.dev",
                "assetleases.notebook.dev",
                "notebookpools.notebook.dev"
            ]
        );
        for crd in &docs {
            assert_eq!(crd.spec.scope, "Namespaced");
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, VERSION);
            assert!(version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some());
        }
        assert_eq!(
            docs[0].spec.names.short_names.as_deref(),
            Some(&["nbs".to_string()][..])
        );
        assert_eq!(
            docs[1].spec.names.short_names.as_deref(),
            Some(&["al".to_string()][..])
        );
        assert_eq!(
            docs[2].spec.names.short_names.as_deref(),
            Some(&["nbp".to_string()][..])
        );
    }

    #[test]
    fn a_pool_and_a_pooled_session_parse() {
        let pool: NotebookPoolSpec =
            serde_yaml::from_str("{replicas: 3, template: {kernel: {image: k}, idleTimeout: 30m}}")
                .expect("a pool");
        assert_eq!(pool.replicas, 3);
        assert_eq!(pool.template.kernel.image.as_deref(), Some("k"));
        let session: NotebookSessionSpec = serde_yaml::from_str("{poolRef: {name: p}}").expect("a session");
        assert_eq!(session.pool_ref.map(|p| p.name).as_deref(), Some("p"));
    }

    #[test]
    fn a_minimal_session_gets_its_defaults() {
        let session: NotebookSessionSpec = serde_yaml::from_str("{}").expect("empty spec is valid");
        assert_eq!(session.assets.lease_duration, None);
        assert_eq!(session.assets.lease_duration(), "24h");
        assert_eq!(session.shutdown_policy, ShutdownPolicy::Delete);
        assert!(!session.suspend);
        assert!(session.kernel.image.is_none());
    }

    #[test]
    fn the_design_example_parses() {
        let yaml = r#"
apiVersion: notebook.dev/v1alpha1
kind: NotebookSession
metadata: {name: analysis, namespace: agents}
spec:
  kernel:
    image: quay.io/jupyter/scipy-notebook:latest
    resources: {limits: {cpu: "2", memory: 4Gi}}
  storage: {size: 5Gi}
  idleTimeout: 30m
  shutdownTime: "2026-12-01T00:00:00Z"
  shutdownPolicy: Delete
  suspend: false
  assets: {leaseDuration: 24h}
"#;
        let session: NotebookSession = serde_yaml::from_str(yaml).expect("parses");
        assert_eq!(
            session.spec.storage.as_ref().map(|s| s.size.0.as_str()),
            Some("5Gi")
        );
        assert_eq!(
            parse_duration(session.spec.idle_timeout.as_deref().unwrap_or_default()),
            Ok(std::time::Duration::from_secs(1800))
        );
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("1h30m"), Ok(std::time::Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(std::time::Duration::from_millis(500)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-5m").is_err());
        assert!(parse_duration("1d").is_err());
    }
}
