//! The sidecar's `/metrics`, encoded by prometheus-client like the operator's
//! and the gateway's. The values live where the work happens (the event bus,
//! the kernel actor, the store); each scrape reads them into a registry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::sidecar::Service;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// A counter already at `value` (prometheus-client adds `_total`).
fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64, AtomicU64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: usize) {
    let g = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

/// Every metric of the sidecar, as they are now.
pub async fn registry(svc: &Service) -> Registry {
    let mut r = Registry::default();
    let bus = &svc.bus;
    let (ring_len, ring_bytes) = bus.ring_len();
    let k = svc.kernel_status();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    counter(
        &mut r,
        "notebook_events_published",
        "Events published on the session stream",
        load(&bus.metrics.published),
    );
    gauge(
        &mut r,
        "notebook_event_clients",
        "Clients connected to the event stream",
        bus.clients(),
    );
    counter(
        &mut r,
        "notebook_event_clients_cut_off",
        "Clients cut off for falling behind",
        load(&bus.metrics.cut_off),
    );
    gauge(
        &mut r,
        "notebook_event_ring_events",
        "Events held in the replay ring",
        ring_len,
    );
    gauge(
        &mut r,
        "notebook_event_ring_bytes",
        "Bytes held in the replay ring",
        ring_bytes,
    );
    counter(&mut r, "notebook_kernel_restarts", "Kernel restarts", k.restarts);
    counter(
        &mut r,
        "notebook_kernel_dropped_messages",
        "Kernel messages dropped for bad signatures or framing",
        k.dropped_messages,
    );
    counter(
        &mut r,
        "notebook_outputs_truncated",
        "Executions whose outputs were truncated (max_output_bytes) or left unconfirmed",
        load(&svc.output_stats.truncated),
    );
    counter(
        &mut r,
        "notebook_output_bytes_dropped",
        "Output bytes the kernel sent that an output limit left out",
        load(&svc.output_stats.dropped_bytes),
    );
    counter(
        &mut r,
        "notebook_store_commits",
        "Transactions the store committed (concurrent operations share one)",
        svc.writer.commits(),
    );
    svc.stages.register(&mut r);
    let batches = svc.writer.batches();
    r.register(
        "notebook_store_batch_operations",
        "Operations per store commit",
        batches.ops.clone(),
    );
    r.register(
        "notebook_store_batch_enqueues",
        "Enqueues per store commit, of the commits that carried one",
        batches.enqueues.clone(),
    );
    gauge(
        &mut r,
        "notebook_store_largest_batch",
        "Most operations one store commit has carried",
        usize::try_from(batches.largest.load(Ordering::Relaxed)).unwrap_or(usize::MAX),
    );
    if let Ok(counts) = svc.reader.counts().await {
        let by_state = Family::<StateLabel, Gauge>::default();
        for (state, n) in counts {
            by_state
                .get_or_create(&StateLabel {
                    state: state.as_str().to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        r.register("notebook_executions", "Executions by state", by_state);
    }
    r
}

pub async fn render(State(svc): State<Arc<Service>>) -> impl IntoResponse {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry(&svc).await) {
        tracing::warn!(error = %e, "encoding the metrics");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}
