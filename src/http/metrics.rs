//! Prometheus text exposition of the sidecar's counters and gauges.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::sidecar::Service;

pub async fn render(State(svc): State<Arc<Service>>) -> impl IntoResponse {
    let mut out = String::new();
    let bus = &svc.bus;
    let (ring_len, ring_bytes) = bus.ring_len();
    let k = svc.kernel_status();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    metric(
        "notebook_events_published_total",
        "counter",
        "Events published on the session stream.",
        bus.metrics.published.load(Ordering::Relaxed) as f64,
    );
    metric(
        "notebook_event_clients",
        "gauge",
        "Clients connected to the event stream.",
        bus.clients() as f64,
    );
    metric(
        "notebook_event_clients_cut_off_total",
        "counter",
        "Clients cut off for falling behind.",
        bus.metrics.cut_off.load(Ordering::Relaxed) as f64,
    );
    metric(
        "notebook_event_ring_events",
        "gauge",
        "Events held in the replay ring.",
        ring_len as f64,
    );
    metric(
        "notebook_event_ring_bytes",
        "gauge",
        "Bytes held in the replay ring.",
        ring_bytes as f64,
    );
    metric(
        "notebook_kernel_restarts_total",
        "counter",
        "Kernel restarts.",
        k.restarts as f64,
    );
    metric(
        "notebook_kernel_dropped_messages_total",
        "counter",
        "Kernel messages dropped for bad signatures or framing.",
        k.dropped_messages as f64,
    );
    metric(
        "notebook_outputs_truncated_total",
        "counter",
        "Executions whose outputs were truncated (max_output_bytes) or left unconfirmed.",
        svc.truncated_outputs.load(Ordering::Relaxed) as f64,
    );
    metric(
        "notebook_output_bytes_dropped_total",
        "counter",
        "Output bytes the kernel sent that an output limit left out.",
        svc.dropped_output_bytes.load(Ordering::Relaxed) as f64,
    );
    if let Ok(counts) = svc.reader.counts().await {
        let _ = writeln!(
            out,
            "# HELP notebook_executions Executions by state.\n# TYPE notebook_executions gauge"
        );
        for (state, n) in counts {
            let _ = writeln!(out, "notebook_executions{{state=\"{state}\"}} {n}");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
