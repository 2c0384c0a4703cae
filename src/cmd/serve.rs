//! Starting a sidecar: storage, event bus, kernel actor and HTTP, and a
//! graceful stop on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::middleware;
use tokio::sync::{mpsc, oneshot, watch};

use crate::events::Bus;
use crate::http::{self, auth};
use crate::jupyter::ConnectionInfo;
use crate::kernel::process::KernelProcess;
use crate::sidecar::control::{Command, KernelStatus};
use crate::sidecar::executor::{self, Executor};
use crate::sidecar::warmup::{self, Plan};
use crate::sidecar::{Config, Service};
use crate::store::{schema, Reader, Writer};

/// Sequence numbers are reserved on disk in blocks, so the numbers continue
/// across restarts without a write per event.
const SEQ_BLOCK: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The warm pod's warmup failed; the sidecar exits once so that the
    /// kubelet puts why into the pod's status, and stays not ready after.
    #[error("{0}")]
    Warmup(String),
}

pub struct Running {
    pub svc: Arc<Service>,
    pub addr: SocketAddr,
}

/// Binds `listen` with an error that names it: callers bind before they
/// start anything else (a kernel), so a taken port leaves nothing behind.
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))
}

/// Who the sidecar serves: its client token, and whether it is a warm pool
/// pod that serves only its status and the claim until a session claims it.
pub struct Credentials {
    pub token: String,
    pub warm: bool,
    /// A warm pod's warmup, run in the kernel before it is ready.
    pub warmup: Option<WarmupCode>,
}

/// The pool's warmup code, and where a failure of it is written for the
/// kubelet (`terminationMessagePath`).
pub struct WarmupCode {
    pub code: String,
    pub termination_log: std::path::PathBuf,
}

/// Runs until SIGTERM/SIGINT on `listener`; returns after a graceful stop.
pub async fn run(
    cfg: Config,
    listener: tokio::net::TcpListener,
    credentials: Credentials,
    info: ConnectionInfo,
    process: Option<KernelProcess>,
    mcp: crate::mcp::McpOptions,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    std::fs::create_dir_all(&cfg.workspace)?;
    let db = schema::db_path(&cfg.data_dir);
    let (writer, writer_thread) = Writer::open(&db)?;
    let reader = Reader::new(&db);

    let base: u64 = reader
        .meta("seq_reserved")
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    writer
        .set_meta("seq_reserved", (base + SEQ_BLOCK).to_string())
        .await?;
    let reserved = Arc::new(AtomicU64::new(base + SEQ_BLOCK));
    let bus = {
        let writer = writer.clone();
        let reserved = reserved.clone();
        Bus::new(
            cfg.bus.clone(),
            base + 1,
            Box::new(move |seq| {
                let r = reserved.load(Ordering::Relaxed);
                if seq + SEQ_BLOCK / 2 >= r
                    && reserved
                        .compare_exchange(r, r + SEQ_BLOCK, Ordering::SeqCst, Ordering::Relaxed)
                        .is_ok()
                {
                    let w = writer.clone();
                    tokio::spawn(async move {
                        if let Err(e) = w.set_meta("seq_reserved", (r + SEQ_BLOCK).to_string()).await {
                            tracing::warn!(error = %e, "reserving sequence numbers");
                        }
                    });
                }
            }),
        )
    };

    let identity = match reader.meta("kernel_identity").await? {
        Some(id) => id,
        None => {
            let id = crate::util::random_hex(16);
            writer.set_meta("kernel_identity", id.clone()).await?;
            id
        }
    };

    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (status_tx, status_rx) = watch::channel(KernelStatus::default());
    let (ready_tx, ready_rx) = watch::channel(false);
    let svc = Arc::new(Service::new(
        cfg,
        writer.clone(),
        reader,
        bus,
        cmd_tx.clone(),
        status_rx,
        ready_rx,
    )?);
    {
        let index = svc.assets.clone();
        let _ = tokio::task::spawn_blocking(move || index.rescan()).await;
        if let Err(e) = svc.assets.watch() {
            tracing::warn!(error = %e, "no file notifications; the asset index follows the sidecar's own writes only");
        }
    }
    let deps = executor::Deps {
        cfg: executor::Settings::from(&svc.cfg),
        writer: svc.writer.clone(),
        reader: svc.reader.clone(),
        bus: svc.bus.clone(),
        completions: svc.completions.clone(),
        stages: svc.stages.clone(),
        work: svc.work.clone(),
        activity: svc.activity.clone(),
        output_stats: svc.output_stats.clone(),
        dropped: svc.dropped.clone(),
        root: svc.root.clone(),
        channels: svc.channels.clone(),
    };
    // A warm pool pod starts with the pool's token and serves only its
    // status and the claim; a claim stored before a restart still holds.
    let access = auth::Access {
        token: Arc::new(credentials.token),
        warm: credentials.warm,
        claimed_by: None,
    };
    let (access, claimed_hosts) = if credentials.warm {
        http::claim::recover(&svc, access).await?
    } else {
        (access, Vec::new())
    };
    // The warmup runs once per warm kernel; a sidecar restarted on the same
    // state keeps its outcome (a failure included) instead of running it again.
    let stored = svc.reader.meta(warmup::WARMUP_META).await?;
    let code = credentials.warmup.as_ref().map(|w| w.code.as_str());
    let plan = warmup::plan(code, stored.as_deref(), access.warm);
    svc.warmup.set(plan.initial());
    // Armed while warm: a kernel that restarts before the claim is warmed
    // again. Run at start only when this kernel has not run it yet.
    let run_at_start = matches!(plan, Plan::Run(_));
    match (&plan, &credentials.warmup) {
        (Plan::Run(code), _) => svc.warmup.arm(code.clone()),
        (Plan::Known(warmup::Warmup::Done), Some(w)) if access.warm => svc.warmup.arm(w.code.clone()),
        _ => {}
    }
    // Only a failure of the warmup this sidecar runs stops it (once).
    let mut warmup_failed = match (&plan, &credentials.warmup) {
        (Plan::Run(_), Some(w)) => Some((svc.warmup.subscribe(), w.termination_log.clone())),
        _ => None,
    };
    let executor = Executor::new(
        deps,
        cmd_rx,
        status_tx,
        ready_tx,
        info,
        identity.into_bytes(),
        process,
    );
    let executor = tokio::spawn(executor.with_warmup(svc.warmup.clone(), run_at_start).run());
    let workspace = Arc::new(crate::notebook::Workspace::with_root(svc.root.clone()));
    let notebooks = crate::notebook::NotebookSync::new(svc.clone(), workspace);
    notebooks.recover().await;
    let stop_mcp = tokio_util::sync::CancellationToken::new();

    if access.warm {
        tracing::info!("warm pool pod: serving only /v1/status and /v1/claim until a session claims it");
    }
    // A pool pod's MCP service is made at its claim, for the host names of
    // the claiming session's Service; an ordinary sidecar's at once.
    let (mcp_routes, mcp_slot) = if credentials.warm {
        let (svc, stop) = (svc.clone(), stop_mcp.clone());
        let factory: http::claim::McpFactory = Arc::new(move |hosts: Vec<String>| {
            let mut all = mcp.allowed_hosts.clone();
            all.extend(hosts);
            crate::mcp::router(
                svc.clone(),
                notebooks.clone(),
                &crate::mcp::McpOptions::new(all),
                stop.clone(),
            )
        });
        let slot = http::claim::McpSlot::new(factory);
        if !access.warm {
            slot.install(claimed_hosts);
        }
        let routes = axum::Router::new()
            .route("/mcp", axum::routing::any(http::claim::forward_mcp))
            .with_state(slot.clone());
        (routes, Some(slot))
    } else {
        (
            crate::mcp::router(svc.clone(), notebooks, &mcp, stop_mcp.clone()),
            None,
        )
    };
    let token = auth::Token::with(access);
    let claim = axum::Router::new()
        .route("/v1/claim", axum::routing::post(http::claim::claim))
        .with_state(http::claim::ClaimState {
            token: token.clone(),
            svc: svc.clone(),
            mcp: mcp_slot,
        });
    let app = http::open_routes(svc.clone())
        .merge(
            http::api_routes(svc.clone())
                .merge(claim)
                .merge(mcp_routes)
                .layer(middleware::from_fn_with_state(token, auth::require_token)),
        )
        .layer(middleware::from_fn_with_state(
            http::body_limit(&svc.cfg),
            http::error::json_errors,
        ));
    on_listening(listener.local_addr()?);

    let (stop_http_tx, stop_http_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, app, async move {
        let _ = stop_http_rx.await;
    }));

    let failure = tokio::select! {
        _ = crate::util::shutdown_signal() => None,
        error = warmup_failure(warmup_failed.as_mut().map(|(rx, _)| rx)) => Some(error),
    };
    if let (Some(error), Some((_, log))) = (&failure, &warmup_failed) {
        tracing::error!(%error, "stopping once: the kubelet restarts this container, which stays not ready");
        write_termination_message(log, error);
    }
    tracing::info!("stopping: no new executions; the running one gets the grace period");
    svc.begin_shutdown();
    stop_mcp.cancel();
    let (done_tx, done_rx) = oneshot::channel();
    let _ = cmd_tx.send(Command::Shutdown(done_tx)).await;
    let grace = svc.cfg.shutdown_grace + svc.cfg.interrupt_grace + Duration::from_secs(5);
    let _ = tokio::time::timeout(grace, done_rx).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), executor).await;
    let _ = stop_http_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    drop(svc);
    drop(cmd_tx);
    writer.close().await;
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    tracing::info!("stopped; the database is closed");
    match failure {
        Some(error) => Err(ServeError::Warmup(error)),
        None => Ok(()),
    }
}

/// Resolves with the warmup's failure (`warmup failed: <error>`) when the
/// warmup this sidecar runs fails; never without one.
async fn warmup_failure(rx: Option<&mut watch::Receiver<Option<crate::sidecar_api::Warmup>>>) -> String {
    use crate::sidecar_api::Warmup;
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    match rx.wait_for(|w| matches!(w, Some(Warmup::Failed { .. }))).await {
        Ok(w) => w.as_ref().map(Warmup::describe).unwrap_or_default(),
        Err(_) => std::future::pending().await,
    }
}

/// The kubelet's termination message: it becomes the container's
/// `lastState.terminated.message`, where the pool controller and `kubectl
/// describe pod` read why. Outside a pod the file may not exist.
fn write_termination_message(path: &std::path::Path, message: &str) {
    if let Err(e) = std::fs::write(path, message) {
        tracing::debug!(path = %path.display(), error = %e, "no termination message written");
    }
}
