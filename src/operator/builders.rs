//! Pure builders: the objects a NotebookSession owns, computed from its spec.
//!
//! Nothing here touches the network; the controller applies what these return.
//! The step before building is [`validate`], which turns a spec into a
//! [`ValidSpec`] or into the reasons it cannot run.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::crd::{parse_duration, NotebookSession};

/// Port of the sidecar's HTTP server (API, MCP, health, metrics).
pub const SIDECAR_PORT: u16 = 8888;
/// Name of that port on the pod and the service.
pub const SIDECAR_PORT_NAME: &str = "http";
/// The kernel's ZeroMQ ports on localhost: shell, iopub, stdin, control, heartbeat.
pub const KERNEL_PORTS: [u16; 5] = [5555, 5556, 5557, 5558, 5559];
/// Name of the sidecar (native sidecar init container).
pub const SIDECAR_CONTAINER: &str = "sidecar";
/// Name of the kernel container.
pub const KERNEL_CONTAINER: &str = "kernel";
/// The sidecar's env with the pod's IP (downward API), a host name MCP
/// clients in the cluster may address it by.
pub const POD_IP_ENV: &str = "POD_IP";
/// Keys of the session Secret.
pub const TOKEN_KEY: &str = "token";
/// Key of the kernel HMAC key in the session Secret.
pub const KERNEL_KEY_KEY: &str = "kernel-key";

/// Label every owned object carries: what it is part of.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Value of [`LABEL_NAME`].
pub const LABEL_NAME_VALUE: &str = "notebook-session";
/// Label naming the owning session.
pub const LABEL_SESSION: &str = "notebook.dev/session";
/// Label naming the manager.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`], also the server-side apply field manager.
pub const MANAGER: &str = "notebook-operator";
/// Annotation on the pod: hash of the pod spec it was built from.
pub const ANNOTATION_SPEC_HASH: &str = "notebook.dev/spec-hash";
/// Annotation: a digest of the session Secret's values the pod was started
/// with (or claimed with), so a Secret recreated or changed under a running
/// pod is seen and the pod replaced: the Secret and the sidecar never disagree.
pub const ANNOTATION_SECRET_HASH: &str = "notebook.dev/secret-hash";

/// Where the connection file lives, in both containers.
pub const RUNTIME_DIR: &str = "/run/notebook";
/// The connection file the sidecar writes and the kernel reads.
pub const CONNECTION_FILE: &str = "/run/notebook/kernel.json";
/// Where the session Secret is mounted (sidecar only).
pub const SECRET_DIR: &str = "/run/secrets/notebook";
/// Sidecar state: SQLite queue and outputs.
pub const STATE_DIR: &str = "/var/lib/notebook";
/// The kernel's scratch space when its root filesystem is read-only.
pub const TMP_DIR: &str = "/tmp";
/// The resource name of local ephemeral storage.
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
/// Notebooks and assets, shared by sidecar and kernel.
pub const WORKSPACE_DIR: &str = "/home/jovyan/work";
/// The user both containers run as (the Jupyter docker-stacks `jovyan`, group `users`).
pub const RUN_AS_USER: i64 = 1000;
/// The group both containers run as, and the owner group of the volumes.
pub const RUN_AS_GROUP: i64 = 100;

/// Operator settings the builders need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildConfig {
    /// Image of the sidecar: the operator's own image.
    pub sidecar_image: String,
    /// Pull policy of the sidecar image; absent: the Kubernetes default.
    pub sidecar_image_pull_policy: Option<String>,
    /// Kernel image when a session names none.
    pub default_kernel_image: String,
    /// Pull policy of kernel images; absent: the Kubernetes default.
    pub kernel_image_pull_policy: Option<String>,
    /// RuntimeClass of pods whose template names none; absent: the node's default.
    pub default_runtime_class: Option<String>,
    /// `ephemeral-storage` request of a kernel container whose resources name none.
    pub kernel_ephemeral_storage_request: Option<String>,
    /// `ephemeral-storage` limit of a kernel container whose resources name none.
    pub kernel_ephemeral_storage_limit: Option<String>,
}

impl Default for BuildConfig {
    fn default() -> Self {
        Self {
            sidecar_image: "ghcr.io/notebook-operator/notebook-operator:latest".into(),
            sidecar_image_pull_policy: None,
            default_kernel_image: "quay.io/jupyter/base-notebook:latest".into(),
            kernel_image_pull_policy: None,
            default_runtime_class: None,
            kernel_ephemeral_storage_request: None,
            kernel_ephemeral_storage_limit: None,
        }
    }
}

/// A session whose spec was checked: everything the builders need, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    /// Kernel image after defaulting.
    pub kernel_image: String,
    /// Idle timeout, parsed.
    pub idle_timeout: Option<std::time::Duration>,
    /// Asset lease duration, parsed.
    pub lease_duration: std::time::Duration,
}

/// Checks what the apiserver's schema cannot (or what an old CRD let through).
/// Errors are sentences a user can act on.
pub fn validate(session: &NotebookSession, config: &BuildConfig) -> Result<ValidSpec, Vec<String>> {
    let mut errors = Vec::new();
    let name = session.name_any();
    if !is_dns1035_label(&name) {
        errors.push(format!(
            "metadata.name {name:?} must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, at most 63 characters) because the session's Service carries it"
        ));
    }
    if session.namespace().is_none() {
        errors.push("the session has no namespace".into());
    }
    if session.uid().is_none() {
        errors.push("the session has no uid yet".into());
    }
    let spec = &session.spec;
    let kernel_image = match spec.kernel.image.as_deref().map(str::trim) {
        Some("") => {
            errors.push("spec.kernel.image is empty".into());
            String::new()
        }
        Some(image) => image.to_string(),
        None => config.default_kernel_image.clone(),
    };
    if let Some(command) = &spec.kernel.command {
        if command.is_empty() {
            errors.push("spec.kernel.command is empty; leave it out for the default".into());
        }
    }
    let idle_timeout = match spec.idle_timeout.as_deref().map(parse_duration).transpose() {
        Ok(duration) => duration,
        Err(err) => {
            errors.push(format!("spec.idleTimeout: {err}"));
            None
        }
    };
    let lease_duration = match parse_duration(&spec.assets.lease_duration()) {
        Ok(duration) => duration,
        Err(err) => {
            errors.push(format!("spec.assets.leaseDuration: {err}"));
            std::time::Duration::ZERO
        }
    };
    if let Some(egress) = spec.network.as_ref().and_then(|n| n.egress.as_deref()) {
        errors.extend(super::egress::validate_egress("spec.network.egress", egress));
    }
    if errors.is_empty() {
        Ok(ValidSpec {
            kernel_image,
            idle_timeout,
            lease_duration,
        })
    } else {
        Err(errors)
    }
}

/// RFC 1035 label: what a Service name must be.
pub fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Name of the kernel pod.
pub fn pod_name(session: &str) -> String {
    format!("{session}-kernel")
}

/// Name of the session's kernel pod as its status names it (a pod claimed
/// from a pool keeps the pool's name), else `<name>-kernel`. Whoever reads
/// the pod by this name still checks that the session controls it.
pub fn session_pod_name(session: &NotebookSession) -> String {
    session
        .status
        .as_ref()
        .and_then(|s| s.pod_name.clone())
        .unwrap_or_else(|| pod_name(&session.name_any()))
}

/// Whether the pod's Ready condition is True.
pub fn is_pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Where a kernel pod's sidecar can be asked: the one rule for the
/// operator (status, assets) and the gateway. The pod belongs to the
/// session (`owner_uid`, when given), is not being deleted, its sidecar
/// started (or the pod is Ready) and it has an IP. The kernel need not
/// answer: the sidecar serves history and queues work without it.
pub fn sidecar_ip(pod: &Pod, owner_uid: Option<&str>) -> Result<std::net::IpAddr, String> {
    let name = pod.name_any();
    if let Some(uid) = owner_uid {
        let owned = pod
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == uid && o.kind == "NotebookSession");
        if !owned {
            return Err(format!("pod {name} is not the kernel pod of this session"));
        }
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(format!("the kernel pod {name} is being deleted"));
    }
    if !(is_pod_ready(pod) || sidecar_started(pod)) {
        return Err(format!("the sidecar of pod {name} has not started yet"));
    }
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| format!("the kernel pod {name} has no IP yet"))
}

/// The sidecar container of a kernel pod runs and passed its startup probe.
pub fn sidecar_started(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.name == SIDECAR_CONTAINER && c.started == Some(true))
}

/// Name of the session Secret.
pub fn secret_name(session: &str) -> String {
    format!("{session}-token")
}

/// A value of the session Secret, trimmed; `None` when the key is missing,
/// empty, or not UTF-8.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    let text = std::str::from_utf8(&bytes.0).ok()?.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The client token the session Secret holds: the one rule for the session
/// controller, the lease controller and the gateway.
pub fn session_token(secret: &Secret) -> Option<String> {
    secret_value(secret, TOKEN_KEY)
}

/// Name of the state PersistentVolumeClaim.
pub fn pvc_name(session: &str) -> String {
    format!("{session}-state")
}

/// The in-cluster host name of the session's Service.
pub fn service_host(session: &NotebookSession) -> String {
    format!(
        "{}.{}.svc",
        session.name_any(),
        session.namespace().unwrap_or_default()
    )
}

/// HTTP base URL of the sidecar behind the session's Service.
pub fn endpoint(session: &NotebookSession) -> String {
    format!("http://{}:{SIDECAR_PORT}", service_host(session))
}

/// MCP URL of the sidecar behind the session's Service.
pub fn mcp_endpoint(session: &NotebookSession) -> String {
    format!("{}/mcp", endpoint(session))
}

/// Labels on everything a session owns; also the Service selector.
pub fn selector_labels(session: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), LABEL_NAME_VALUE.to_string()),
        (LABEL_SESSION.to_string(), session.to_string()),
    ])
}

fn owned_labels(session: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(session);
    labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    labels
}

/// The controller owner reference pointing at the session. It blocks the
/// owner's deletion, so that a foreground deletion of the session waits for
/// its pod, Service, Secret and claim (kube's `controller_owner_ref` leaves
/// `blockOwnerDeletion` unset, and then the session went at once).
pub fn owner_reference(session: &NotebookSession) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..session.controller_owner_ref(&())?
    })
}

pub(crate) fn owned_meta(session: &NotebookSession, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: session.namespace(),
        labels: Some(owned_labels(&session.name_any())),
        owner_references: owner_reference(session).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

/// Fresh random token and kernel key, hex-encoded (256 bits each).
pub fn generate_secret_values() -> (String, String) {
    use rand::RngCore;
    let mut rng = rand::rng();
    let mut token = [0u8; 32];
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut token);
    rng.fill_bytes(&mut key);
    (hex::encode(token), hex::encode(key))
}

/// The session Secret `<name>-token` with the client bearer token and the
/// kernel HMAC key. The controller creates it once and never rewrites it.
pub fn build_secret(session: &NotebookSession, token: &str, kernel_key: &str) -> Secret {
    Secret {
        metadata: owned_meta(session, secret_name(&session.name_any())),
        type_: Some("Opaque".into()),
        data: Some(secret_data(token, kernel_key)),
        ..Secret::default()
    }
}

/// The two keys of a token Secret (a session's or a pool's): the client
/// token and the kernel HMAC key, which [`secret_value`] reads back.
pub fn secret_data(token: &str, kernel_key: &str) -> BTreeMap<String, ByteString> {
    BTreeMap::from([
        (TOKEN_KEY.to_string(), ByteString(token.as_bytes().to_vec())),
        (
            KERNEL_KEY_KEY.to_string(),
            ByteString(kernel_key.as_bytes().to_vec()),
        ),
    ])
}

/// The Service `<name>` in front of the sidecar.
pub fn build_service(session: &NotebookSession) -> Service {
    let name = session.name_any();
    Service {
        metadata: owned_meta(session, name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some(SIDECAR_PORT_NAME.into()),
                port: i32::from(SIDECAR_PORT),
                target_port: Some(IntOrString::String(SIDECAR_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The metadata this operator applies is on `existing`: its labels and
/// owner references.
pub(crate) fn meta_matches(existing: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let labels = existing.labels.as_ref();
    desired
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        && existing.owner_references == desired.owner_references
}

/// `existing` already has everything [`build_service`] applies: applying it
/// again would change nothing.
pub fn service_matches(existing: &Service, desired: &Service) -> bool {
    let (Some(have), Some(want)) = (&existing.spec, &desired.spec) else {
        return false;
    };
    let port_matches = |w: &ServicePort| {
        have.ports.iter().flatten().any(|h| {
            h.name == w.name
                && h.port == w.port
                && h.target_port == w.target_port
                && h.protocol == w.protocol
                && h.app_protocol == w.app_protocol
        })
    };
    meta_matches(&existing.metadata, &desired.metadata)
        && have.type_ == want.type_
        && have.selector == want.selector
        && want.ports.iter().flatten().all(port_matches)
}

/// `existing` already has everything [`build_pvc`] applies (its size, class
/// and access modes, labels and owner).
pub fn claim_matches(existing: &PersistentVolumeClaim, desired: &PersistentVolumeClaim) -> bool {
    let (Some(have), Some(want)) = (&existing.spec, &desired.spec) else {
        return false;
    };
    let requests = |s: &PersistentVolumeClaimSpec| s.resources.as_ref().and_then(|r| r.requests.clone());
    meta_matches(&existing.metadata, &desired.metadata)
        && have.access_modes == want.access_modes
        && (want.storage_class_name.is_none() || have.storage_class_name == want.storage_class_name)
        && requests(have) == requests(want)
}

/// The PersistentVolumeClaim `<name>-state`, when the session asks for storage.
pub fn build_pvc(session: &NotebookSession) -> Option<PersistentVolumeClaim> {
    let storage = session.spec.storage.as_ref()?;
    Some(PersistentVolumeClaim {
        metadata: owned_meta(session, pvc_name(&session.name_any())),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), storage.size.clone())])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    })
}

/// The default kernel command: ipykernel on the connection file.
pub fn default_kernel_command() -> Vec<String> {
    ["python", "-m", "ipykernel_launcher", "-f", CONNECTION_FILE]
        .into_iter()
        .map(String::from)
        .collect()
}

fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(SIDECAR_PORT_NAME.into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn mount(name: &str, path: &str, sub_path: Option<&str>, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        sub_path: sub_path.map(String::from),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// The sidecar's command line.
pub fn sidecar_args(session: &NotebookSession) -> Vec<String> {
    let listen = format!("0.0.0.0:{SIDECAR_PORT}");
    let mut args: Vec<String> = vec![
        "sidecar".into(),
        "--listen".into(),
        listen,
        "--data-dir".into(),
        STATE_DIR.into(),
        "--workspace".into(),
        WORKSPACE_DIR.into(),
        "--connection-file".into(),
        CONNECTION_FILE.into(),
        "--token-file".into(),
        format!("{SECRET_DIR}/{TOKEN_KEY}"),
        "--kernel-key-file".into(),
        format!("{SECRET_DIR}/{KERNEL_KEY_KEY}"),
    ];
    for allowed in mcp_hosts(session) {
        args.push("--allowed-host".into());
        args.push(allowed);
    }
    args
}

/// `POD_IP` from the pod's `status.podIP`: the sidecar accepts it as a
/// `Host`, so a client in the cluster can use `http://<podIP>:8888/mcp`.
fn pod_ip_env() -> EnvVar {
    EnvVar {
        name: POD_IP_ENV.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: "status.podIP".into(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The host names MCP clients reach a session's sidecar by: its Service's.
pub fn mcp_hosts(session: &NotebookSession) -> Vec<String> {
    let host = service_host(session);
    vec![host.clone(), format!("{host}.cluster.local"), session.name_any()]
}

/// The kernel pod `<name>-kernel`: the sidecar as a native sidecar (an init
/// container that keeps running) and the kernel.
///
/// The sidecar's startup probe is `/healthz`, not `/readyz`: the kubelet starts
/// the kernel only once the sidecar's startup probe passed, and `/readyz`
/// waits for the kernel, so probing it there would never let the kernel start.
/// `/healthz` answering means the sidecar runs and wrote the connection file.
pub fn build_pod(session: &NotebookSession, valid: &ValidSpec, config: &BuildConfig) -> Pod {
    let name = session.name_any();
    let spec = &session.spec;
    let overrides = spec.pod_template.clone().unwrap_or_default();

    let (state_mount, workspace_mount, state_volumes) = if spec.storage.is_some() {
        (
            mount("state", STATE_DIR, Some("state"), false),
            mount("state", WORKSPACE_DIR, Some("workspace"), false),
            vec![Volume {
                name: "state".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: pvc_name(&name),
                    read_only: None,
                }),
                ..Volume::default()
            }],
        )
    } else {
        (
            mount("state", STATE_DIR, None, false),
            mount("workspace", WORKSPACE_DIR, None, false),
            vec![empty_dir("state"), empty_dir("workspace")],
        )
    };

    let sidecar = Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(config.sidecar_image.clone()),
        image_pull_policy: config.sidecar_image_pull_policy.clone(),
        restart_policy: Some("Always".into()),
        args: Some(sidecar_args(session)),
        env: Some(vec![pod_ip_env()]),
        ports: Some(vec![ContainerPort {
            name: Some(SIDECAR_PORT_NAME.into()),
            container_port: i32::from(SIDECAR_PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        startup_probe: Some(http_probe("/healthz", 1, 120)),
        // Every second, one failure: the session's Ready follows the kernel
        // (the sidecar's /readyz) within about a second.
        readiness_probe: Some(http_probe("/readyz", 1, 1)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![
            mount("runtime", RUNTIME_DIR, None, false),
            mount("token", SECRET_DIR, None, true),
            state_mount,
            workspace_mount.clone(),
        ]),
        ..Container::default()
    };

    let read_only_root = spec.kernel.read_only_root_filesystem == Some(true);
    let mut kernel_mounts = vec![mount("runtime", RUNTIME_DIR, None, true), workspace_mount];
    if read_only_root {
        kernel_mounts.push(mount("tmp", TMP_DIR, None, false));
    }
    let kernel = Container {
        name: KERNEL_CONTAINER.into(),
        image: Some(valid.kernel_image.clone()),
        image_pull_policy: config.kernel_image_pull_policy.clone(),
        command: Some(spec.kernel.command.clone().unwrap_or_else(default_kernel_command)),
        env: spec.kernel.env.clone(),
        resources: kernel_resources(spec.kernel.resources.as_ref(), config),
        working_dir: Some(WORKSPACE_DIR.into()),
        security_context: Some(SecurityContext {
            read_only_root_filesystem: read_only_root.then_some(true),
            ..restricted_security_context()
        }),
        volume_mounts: Some(kernel_mounts),
        // A kernel that exits leaves the tail of its log in
        // lastState.terminated.message (the kubelet's own mechanism), which
        // the status shows beside CrashLoopBackOff; found on the real node
        // (tier 5), where nothing else said why the kernel died.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };

    let mut volumes = vec![
        empty_dir("runtime"),
        Volume {
            name: "token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name(&name)),
                // Group-readable: volumes belong to root:fsGroup and the sidecar
                // runs as a non-root user of that group.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    volumes.extend(state_volumes);
    if read_only_root {
        volumes.push(empty_dir("tmp"));
    }

    let pod_spec = PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        restart_policy: Some("Always".into()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_GROUP),
            fs_group: Some(RUN_AS_GROUP),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        init_containers: Some(vec![sidecar]),
        containers: vec![kernel],
        volumes: Some(volumes),
        node_selector: overrides.node_selector.clone(),
        tolerations: overrides.tolerations.clone(),
        runtime_class_name: overrides
            .runtime_class_name
            .clone()
            .or_else(|| config.default_runtime_class.clone()),
        ..PodSpec::default()
    };

    let mut labels = overrides.labels.clone().unwrap_or_default();
    labels.extend(owned_labels(&name));
    let mut annotations = overrides.annotations.clone().unwrap_or_default();
    annotations.insert(ANNOTATION_SPEC_HASH.into(), spec_hash(&pod_spec));

    Pod {
        metadata: ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..owned_meta(session, pod_name(&name))
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// The kernel container's resources: the session's, with the operator's
/// `ephemeral-storage` request and limit when the session names neither (a
/// kernel that writes past its limit gets its pod evicted by the kubelet,
/// instead of filling the node's disk under the other sessions). A session
/// that names one of them gets no default for the other: a default request
/// above its own limit would make the pod invalid.
fn kernel_resources(
    own: Option<&ResourceRequirements>,
    config: &BuildConfig,
) -> Option<ResourceRequirements> {
    let mut resources = own.cloned().unwrap_or_default();
    let names_it = |list: &Option<BTreeMap<String, Quantity>>| {
        list.as_ref().is_some_and(|l| l.contains_key(EPHEMERAL_STORAGE))
    };
    if !names_it(&resources.requests) && !names_it(&resources.limits) {
        let defaults = [
            (&mut resources.requests, &config.kernel_ephemeral_storage_request),
            (&mut resources.limits, &config.kernel_ephemeral_storage_limit),
        ];
        for (list, default) in defaults {
            if let Some(default) = default {
                list.get_or_insert_with(BTreeMap::new)
                    .insert(EPHEMERAL_STORAGE.to_string(), Quantity(default.clone()));
            }
        }
    }
    (resources != ResourceRequirements::default()).then_some(resources)
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// A short stable hash of a pod spec. Pods are mostly immutable, so the
/// controller compares this annotation and replaces a pod built from an older spec.
pub fn spec_hash(spec: &PodSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    let digest = Sha256::digest(&json);
    hex::encode(&digest[..8])
}

/// The hash a live pod was built from, if it carries one.
pub fn pod_spec_hash(pod: &Pod) -> Option<&str> {
    annotation(pod, ANNOTATION_SPEC_HASH)
}

/// A digest of a Secret's values (keys and values, in key order): equal for
/// the same token and kernel key, different once either changes. Not a
/// secret itself (a truncated SHA-256 of 256-bit random values).
pub fn secret_hash(secret: &Secret) -> String {
    let mut digest = Sha256::new();
    for (key, value) in secret.data.iter().flatten() {
        digest.update(key.as_bytes());
        digest.update([0]);
        digest.update(&value.0);
        digest.update([0]);
    }
    hex::encode(&digest.finalize()[..8])
}

/// The session Secret's digest a live pod was started or claimed with, if
/// it carries one (pods made before this annotation existed do not).
pub fn pod_secret_hash(pod: &Pod) -> Option<&str> {
    annotation(pod, ANNOTATION_SECRET_HASH)
}

/// Marks `pod` as started with the Secret of digest `hash`.
pub fn set_secret_hash(pod: &mut Pod, hash: &str) {
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_SECRET_HASH.into(), hash.into());
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::fixtures;

    fn config() -> BuildConfig {
        BuildConfig {
            sidecar_image: "registry.example/notebook-operator:1.2.3".into(),
            sidecar_image_pull_policy: Some("IfNotPresent".into()),
            default_kernel_image: "quay.io/jupyter/base-notebook:2026-01-01".into(),
            kernel_image_pull_policy: Some("IfNotPresent".into()),
            ..BuildConfig::default()
        }
    }

    fn build(session: &NotebookSession) -> Pod {
        let valid = validate(session, &config()).expect("fixture is valid");
        build_pod(session, &valid, &config())
    }

    fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
        let spec = pod.spec.as_ref().expect("pod spec");
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    fn mounts(container: &Container) -> Vec<(String, String, Option<String>)> {
        container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone(), m.sub_path.clone()))
            .collect()
    }

    #[test]
    fn full_session_pod_matches_the_golden_fixture() {
        let session = fixtures::session("session-full.yaml");
        fixtures::assert_golden("pod-full.yaml", &build(&session));
    }

    #[test]
    fn minimal_session_pod_matches_the_golden_fixture() {
        let session = fixtures::session("session-minimal.yaml");
        fixtures::assert_golden("pod-minimal.yaml", &build(&session));
    }

    #[test]
    fn sidecar_is_a_native_sidecar_with_probes() {
        let pod = build(&fixtures::session("session-minimal.yaml"));
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.init_containers.as_ref().map(Vec::len), Some(1));
        let sidecar = container(&pod, SIDECAR_CONTAINER);
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            sidecar.image.as_deref(),
            Some("registry.example/notebook-operator:1.2.3")
        );
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(path(&sidecar.startup_probe).as_deref(), Some("/healthz"));
        assert_eq!(path(&sidecar.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(path(&sidecar.liveness_probe).as_deref(), Some("/healthz"));
        let args = sidecar.args.clone().unwrap_or_default().join(" ");
        assert!(args.starts_with("sidecar --listen 0.0.0.0:8888 --data-dir /var/lib/notebook --workspace /home/jovyan/work --connection-file /run/notebook/kernel.json --token-file /run/secrets/notebook/token --kernel-key-file /run/secrets/notebook/kernel-key"), "{args}");
        assert!(args.contains("--allowed-host scratch.agents.svc"), "{args}");
    }

    #[test]
    fn kernel_defaults_to_ipykernel_on_the_connection_file() {
        let pod = build(&fixtures::session("session-minimal.yaml"));
        let kernel = container(&pod, KERNEL_CONTAINER);
        assert_eq!(
            kernel.image.as_deref(),
            Some("quay.io/jupyter/base-notebook:2026-01-01")
        );
        assert_eq!(
            kernel.command.clone().unwrap_or_default(),
            [
                "python",
                "-m",
                "ipykernel_launcher",
                "-f",
                "/run/notebook/kernel.json"
            ]
        );
        assert!(kernel.ports.is_none(), "kernel ports stay on localhost");
    }

    #[test]
    fn both_containers_meet_pod_security_restricted() {
        let pod = build(&fixtures::session("session-full.yaml"));
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.automount_service_account_token, Some(false));
        let pod_sc = spec.security_context.as_ref().expect("pod security context");
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        for name in [SIDECAR_CONTAINER, KERNEL_CONTAINER] {
            let sc = container(&pod, name)
                .security_context
                .clone()
                .expect("security context");
            assert_eq!(sc.run_as_non_root, Some(true), "{name}");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
            assert_eq!(
                sc.capabilities.clone().and_then(|c| c.drop),
                Some(vec!["ALL".to_string()]),
                "{name}"
            );
            assert_eq!(
                sc.seccomp_profile.clone().map(|s| s.type_).as_deref(),
                Some("RuntimeDefault"),
                "{name}"
            );
            assert!(sc.privileged.is_none() && sc.capabilities_add_is_none(), "{name}");
        }
        for volume in spec.volumes.iter().flatten() {
            assert!(volume.host_path.is_none());
        }
    }

    trait NoAdd {
        fn capabilities_add_is_none(&self) -> bool;
    }
    impl NoAdd for SecurityContext {
        fn capabilities_add_is_none(&self) -> bool {
            self.capabilities.as_ref().is_none_or(|c| c.add.is_none())
        }
    }

    #[test]
    fn volumes_without_storage_are_empty_dirs_and_the_secret_is_sidecar_only() {
        let pod = build(&fixtures::session("session-minimal.yaml"));
        let sidecar = container(&pod, SIDECAR_CONTAINER);
        let kernel = container(&pod, KERNEL_CONTAINER);
        assert_eq!(
            mounts(sidecar),
            [
                ("runtime".into(), "/run/notebook".into(), None),
                ("token".into(), "/run/secrets/notebook".into(), None),
                ("state".into(), "/var/lib/notebook".into(), None),
                ("workspace".into(), "/home/jovyan/work".into(), None),
            ]
        );
        assert_eq!(
            mounts(kernel),
            [
                ("runtime".into(), "/run/notebook".into(), None),
                ("workspace".into(), "/home/jovyan/work".into(), None),
            ]
        );
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        assert!(volumes
            .iter()
            .filter(|v| v.name != "token")
            .all(|v| v.empty_dir.is_some()));
        let secret = volumes
            .iter()
            .find(|v| v.name == "token")
            .and_then(|v| v.secret.clone());
        assert_eq!(
            secret.and_then(|s| s.secret_name).as_deref(),
            Some("scratch-token")
        );
    }

    #[test]
    fn storage_puts_state_and_workspace_on_one_claim() {
        let pod = build(&fixtures::session("session-full.yaml"));
        let sidecar = container(&pod, SIDECAR_CONTAINER);
        assert!(mounts(sidecar).contains(&(
            "state".into(),
            "/var/lib/notebook".into(),
            Some("state".into())
        )));
        assert!(mounts(sidecar).contains(&(
            "state".into(),
            "/home/jovyan/work".into(),
            Some("workspace".into())
        )));
        let kernel = container(&pod, KERNEL_CONTAINER);
        assert!(mounts(kernel).contains(&(
            "state".into(),
            "/home/jovyan/work".into(),
            Some("workspace".into())
        )));
        let claim = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .and_then(|v| v.iter().find(|v| v.name == "state"))
            .and_then(|v| v.persistent_volume_claim.clone());
        assert_eq!(claim.map(|c| c.claim_name).as_deref(), Some("analysis-state"));
    }

    #[test]
    fn pod_template_overrides_apply_but_operator_labels_win() {
        let pod = build(&fixtures::session("session-full.yaml"));
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("research"));
        assert_eq!(labels.get(LABEL_SESSION).map(String::as_str), Some("analysis"));
        assert_eq!(labels.get(LABEL_NAME).map(String::as_str), Some(LABEL_NAME_VALUE));
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get("example.com/cost-center").map(String::as_str),
            Some("42")
        );
        assert!(annotations.contains_key(ANNOTATION_SPEC_HASH));
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(
            spec.node_selector
                .as_ref()
                .and_then(|n| n.get("gpu"))
                .map(String::as_str),
            Some("none")
        );
        assert_eq!(spec.tolerations.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn every_owned_object_has_the_controller_owner_reference_and_labels() {
        let session = fixtures::session("session-full.yaml");
        let (token, key) = generate_secret_values();
        let metas = [
            build(&session).metadata,
            build_service(&session).metadata,
            build_secret(&session, &token, &key).metadata,
            build_pvc(&session).expect("storage set").metadata,
        ];
        for meta in metas {
            let owners = meta.owner_references.clone().unwrap_or_default();
            assert_eq!(owners.len(), 1, "{:?}", meta.name);
            assert_eq!(owners[0].kind, "NotebookSession");
            assert_eq!(owners[0].api_version, "notebook.dev/v1alpha1");
            assert_eq!(owners[0].name, "analysis");
            assert_eq!(owners[0].uid, "0b5e7a44-3a2c-4d59-9d39-2f1d0f1a6c01");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(owners[0].block_owner_deletion, Some(true));
            let labels = meta.labels.clone().unwrap_or_default();
            assert_eq!(labels.get(LABEL_SESSION).map(String::as_str), Some("analysis"));
            assert_eq!(
                labels.get(LABEL_NAME).map(String::as_str),
                Some("notebook-session")
            );
            assert_eq!(meta.namespace.as_deref(), Some("agents"));
        }
    }

    #[test]
    fn a_service_or_claim_is_applied_again_only_when_it_differs() {
        let session = fixtures::session("session-full.yaml");
        let desired = build_service(&session);
        // What the apiserver returns has more: a cluster IP, other labels.
        let mut existing = desired.clone();
        if let Some(spec) = existing.spec.as_mut() {
            spec.cluster_ip = Some("10.0.0.7".into());
        }
        existing
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("team".into(), "x".into());
        assert!(service_matches(&existing, &desired));
        let mut moved = existing.clone();
        if let Some(port) = moved
            .spec
            .as_mut()
            .and_then(|s| s.ports.as_mut())
            .and_then(|p| p.first_mut())
        {
            port.port = 9999;
        }
        assert!(!service_matches(&moved, &desired));
        let mut orphan = existing.clone();
        orphan.metadata.owner_references = None;
        assert!(!service_matches(&orphan, &desired));

        let claim = build_pvc(&session).expect("the fixture has storage");
        assert!(claim_matches(&claim, &claim));
        let mut bigger = claim.clone();
        if let Some(r) = bigger.spec.as_mut().and_then(|s| s.resources.as_mut()) {
            r.requests = Some(BTreeMap::from([(
                "storage".to_string(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("9Gi".into()),
            )]));
        }
        assert!(!claim_matches(&bigger, &claim));
    }

    #[test]
    fn service_secret_and_claim_match_their_fixtures() {
        let session = fixtures::session("session-full.yaml");
        fixtures::assert_golden("service-full.yaml", &build_service(&session));
        fixtures::assert_golden("pvc-full.yaml", &build_pvc(&session));
        fixtures::assert_golden("secret-full.yaml", &build_secret(&session, "t0ken", "k3y"));
        assert!(build_pvc(&fixtures::session("session-minimal.yaml")).is_none());
    }

    #[test]
    fn secret_values_are_random_and_long() {
        let (a, b) = generate_secret_values();
        let (c, _) = generate_secret_values();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_secret_hash_follows_the_values_and_is_read_back_from_the_pod() {
        let session = fixtures::session("session-minimal.yaml");
        let a = build_secret(&session, "token-a", "key");
        let b = build_secret(&session, "token-b", "key");
        let c = build_secret(&session, "token-a", "key-2");
        assert_eq!(
            secret_hash(&a),
            secret_hash(&build_secret(&session, "token-a", "key"))
        );
        assert_ne!(secret_hash(&a), secret_hash(&b));
        assert_ne!(secret_hash(&a), secret_hash(&c));
        let mut pod = build(&session);
        assert_eq!(pod_secret_hash(&pod), None);
        set_secret_hash(&mut pod, &secret_hash(&a));
        assert_eq!(pod_secret_hash(&pod), Some(secret_hash(&a).as_str()));
        assert!(!pod_secret_hash(&pod).is_some_and(|h| h.contains("token")));
    }

    #[test]
    fn spec_hash_follows_the_spec() {
        let session = fixtures::session("session-minimal.yaml");
        let first = build(&session);
        assert_eq!(pod_spec_hash(&first), pod_spec_hash(&build(&session)));
        let mut changed = session.clone();
        changed.spec.kernel.image = Some("other:1".into());
        assert_ne!(pod_spec_hash(&first), pod_spec_hash(&build(&changed)));
    }

    #[test]
    fn invalid_specs_are_reported_not_built() {
        let mut session = fixtures::session("session-minimal.yaml");
        session.spec.idle_timeout = Some("soon".into());
        session.spec.kernel.image = Some(" ".into());
        session.spec.assets.lease_duration = Some("0s".into());
        let errors = validate(&session, &config()).expect_err("invalid");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("spec.idleTimeout")));

        let mut long = fixtures::session("session-minimal.yaml");
        long.metadata.name = Some("x".repeat(64));
        assert!(validate(&long, &config()).is_err());
        assert!(is_dns1035_label("a-1"));
        assert!(!is_dns1035_label("1a"));
        assert!(!is_dns1035_label("a-"));
        assert!(!is_dns1035_label("A"));
    }

    #[test]
    fn the_runtime_class_and_ephemeral_storage_defaults_apply_unless_the_session_sets_its_own() {
        let config = BuildConfig {
            default_runtime_class: Some("gvisor".into()),
            kernel_ephemeral_storage_request: Some("256Mi".into()),
            kernel_ephemeral_storage_limit: Some("10Gi".into()),
            ..config()
        };
        let mut session = fixtures::session("session-minimal.yaml");
        let valid = validate(&session, &config).expect("valid");
        let pod = build_pod(&session, &valid, &config);
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.runtime_class_name.as_deref(), Some("gvisor"));
        let kernel = container(&pod, KERNEL_CONTAINER);
        let resources = kernel.resources.as_ref().expect("resources");
        let get = |l: &Option<BTreeMap<String, Quantity>>| {
            l.as_ref()
                .and_then(|l| l.get(EPHEMERAL_STORAGE))
                .map(|q| q.0.clone())
        };
        assert_eq!(get(&resources.requests).as_deref(), Some("256Mi"));
        assert_eq!(get(&resources.limits).as_deref(), Some("10Gi"));
        assert!(
            container(&pod, SIDECAR_CONTAINER).resources.is_none(),
            "the sidecar's state is not the kernel's to fill"
        );

        // The session's own class and limit win, and its limit alone gets no default request.
        session.spec.pod_template = Some(crate::operator::crd::PodTemplateOverrides {
            runtime_class_name: Some("kata".into()),
            ..Default::default()
        });
        session.spec.kernel.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([(
                EPHEMERAL_STORAGE.to_string(),
                Quantity("64Mi".into()),
            )])),
            ..Default::default()
        });
        session.spec.kernel.read_only_root_filesystem = Some(true);
        let pod = build_pod(&session, &validate(&session, &config).expect("valid"), &config);
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.runtime_class_name.as_deref()),
            Some("kata")
        );
        let kernel = container(&pod, KERNEL_CONTAINER);
        let resources = kernel.resources.as_ref().expect("resources");
        assert_eq!(get(&resources.limits).as_deref(), Some("64Mi"));
        assert_eq!(get(&resources.requests), None);
        assert_eq!(
            kernel
                .security_context
                .as_ref()
                .and_then(|c| c.read_only_root_filesystem),
            Some(true)
        );
        assert!(mounts(kernel)
            .iter()
            .any(|(name, path, _)| name == "tmp" && path == TMP_DIR));
    }
}
