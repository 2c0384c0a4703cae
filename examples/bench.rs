//! Native load clients for the sidecar benchmarks: the Python ones in
//! `bench/` stay the readable reference, these are fast enough that the
//! figure is the sidecar's and not the client's. Each prints one JSON line
//! of figures on stdout; `bench/native.py` runs them beside the reference
//! (`jupyter_client` on the same kind of kernel) and prints the ratios.
//!
//! ```text
//! cargo build --release --example bench
//! target/release/examples/bench exec    --url http://127.0.0.1:8888 --token T -n 300
//! target/release/examples/bench mcp     --url ... --token T --clients 8 --calls 25
//! target/release/examples/bench sse     --url ... --token T --clients 1000 --prints 200
//! target/release/examples/bench enqueue --url ... --token T --clients 64 --seconds 5
//! ```
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use clap::{Parser, Subcommand};
use http_body_util::BodyExt;
use hyper::{Method, Request, StatusCode};
use notebook_operator::gateway::client::{http_client, HttpClient};
use notebook_operator::gateway::mcp_client::McpForwarder;
use notebook_operator::gateway::upstream::Upstream;
use serde_json::{json, Value};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(about = "Native load clients for the sidecar benchmarks")]
struct Cli {
    /// The sidecar, e.g. http://127.0.0.1:8888
    #[arg(long, global = true, default_value = "http://127.0.0.1:8888")]
    url: String,
    /// Its bearer token.
    #[arg(long, global = true, default_value = "")]
    token: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// `1+1` one at a time on one kept-alive connection: `POST ?wait`
    /// (one round trip) and `POST` + `GET ?wait` (two), interleaved.
    Exec {
        #[arg(short, default_value_t = 300)]
        n: usize,
        #[arg(long, default_value = "1+1")]
        code: String,
    },
    /// The HTTP floor: `GET /healthz` and `GET /v1/executions/{id}` of a
    /// finished execution, one at a time on one kept-alive connection.
    Http {
        #[arg(short, default_value_t = 1000)]
        n: usize,
    },
    /// MCP `execute` over streamable HTTP, each client its own MCP session
    /// calling one after another; every output is checked to be its caller's.
    Mcp {
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 25)]
        calls: usize,
        /// `1+1` calls of one client alone, for the latency figure.
        #[arg(long, default_value_t = 200)]
        alone: usize,
    },
    /// SSE fan-out: `clients` subscribers of `/v1/events`, one execution
    /// printing the wall clock `prints` times; print → client per event.
    Sse {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 200)]
        prints: usize,
        /// Seconds between prints.
        #[arg(long, default_value_t = 0.01)]
        every: f64,
    },
    /// Durable enqueue: `clients` concurrent `POST /v1/executions` of
    /// `pass` for `seconds`.
    Enqueue {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

struct Target {
    http: HttpClient,
    url: String,
    token: String,
}

impl Target {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), Error> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(match body {
                Some(v) => Body::from(serde_json::to_vec(v)?),
                None => Body::empty(),
            })?;
        let resp = self.http.request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        Ok((status, v))
    }

    async fn metrics(&self) -> Result<String, Error> {
        let req = Request::builder()
            .uri(format!("{}/metrics", self.url))
            .header("authorization", format!("Bearer {}", self.token))
            .body(Body::empty())?;
        let resp = self.http.request(req).await?;
        Ok(String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned())
    }
}

/// A counter's value from an OpenMetrics text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p50, p99 and max in milliseconds of durations in seconds.
fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "n": v.len(),
        "p50_ms": pct(&v, 50.0) * 1e3,
        "p99_ms": pct(&v, 99.0) * 1e3,
        "max_ms": v.last().copied().unwrap_or(f64::NAN) * 1e3,
    })
}

fn result_text(e: &Value) -> Option<&str> {
    e["outputs"][0]["data"]["text/plain"].as_str()
}

async fn exec(t: &Target, n: usize, code: &str) -> Result<Value, Error> {
    let body = json!({ "code": code });
    let one = async || -> Result<f64, Error> {
        let t0 = Instant::now();
        let (status, e) = t
            .call(Method::POST, "/v1/executions?wait=30", Some(&body))
            .await?;
        if status != StatusCode::OK || e["state"] != "completed" {
            return Err(format!("POST ?wait answered {status}: {e}").into());
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    let two = async || -> Result<f64, Error> {
        let t0 = Instant::now();
        let (_, e) = t.call(Method::POST, "/v1/executions", Some(&body)).await?;
        let id = e["id"].as_str().ok_or("no id")?.to_string();
        let (_, e) = t
            .call(Method::GET, &format!("/v1/executions/{id}?wait=30"), None)
            .await?;
        if e["state"] != "completed" {
            return Err(format!("GET ?wait: {e}").into());
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    for _ in 0..20 {
        one().await?;
        two().await?;
    }
    let (mut ones, mut twos) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        ones.push(one().await?);
        twos.push(two().await?);
    }
    // The answer is the kernel's: checked once, outside the timing.
    let (_, e) = t
        .call(Method::POST, "/v1/executions?wait=30", Some(&body))
        .await?;
    Ok(json!({
        "bench": "exec",
        "code": code,
        "result": result_text(&e),
        "one_round_trip": summary(ones),
        "post_then_get": summary(twos),
    }))
}

async fn http_floor(t: &Target, n: usize) -> Result<Value, Error> {
    let (_, e) = t
        .call(
            Method::POST,
            "/v1/executions?wait=30",
            Some(&json!({"code": "1+1"})),
        )
        .await?;
    let get = format!("/v1/executions/{}", e["id"].as_str().ok_or("no id")?);
    let (mut health, mut read) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t0 = Instant::now();
        t.call(Method::GET, "/healthz", None).await.ok();
        health.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        t.call(Method::GET, &get, None).await?;
        read.push(t0.elapsed().as_secs_f64());
    }
    Ok(json!({"bench": "http", "healthz": summary(health), "get_execution": summary(read)}))
}

fn upstream(t: &Target) -> Result<Upstream, Error> {
    let uri: hyper::Uri = t.url.parse()?;
    let host = uri.host().ok_or("the url has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let addr: SocketAddr = format!("{host}:{port}").parse()?;
    Ok(Upstream {
        addr,
        host: format!("{host}:{port}"),
        token: t.token.clone(),
        session_uid: "bench".into(),
    })
}

/// The text of a tool result's content.
fn tool_text(result: &Value) -> String {
    result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn mcp(t: &Target, clients: usize, calls: usize, alone_n: usize) -> Result<Value, Error> {
    let up = Arc::new(upstream(t)?);
    let call = |fwd: Arc<McpForwarder>, up: Arc<Upstream>, code: String| async move {
        let params = json!({"name": "execute", "arguments": {"code": code}});
        let t0 = Instant::now();
        let r = fwd
            .call_tool(&up, params, &|_| {})
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("execute: {e}"))?;
        Ok::<_, String>((t0.elapsed().as_secs_f64(), tool_text(&r)))
    };
    // One client alone: the latency figure.
    let fwd = Arc::new(McpForwarder::new(http_client()));
    for _ in 0..20 {
        call(fwd.clone(), up.clone(), "1+1".into()).await?;
    }
    // The transport's floor: a tool that touches no kernel.
    let mut floor = Vec::new();
    for _ in 0..200 {
        let params = json!({"name": "kernel_status", "arguments": {}});
        let t0 = Instant::now();
        fwd.call_tool(&up, params, &|_| {})
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("kernel_status: {e}"))?;
        floor.push(t0.elapsed().as_secs_f64());
    }
    let mut alone = Vec::new();
    for _ in 0..alone_n {
        let (d, text) = call(fwd.clone(), up.clone(), "1+1".into()).await?;
        if !text.contains('2') {
            return Err(format!("1+1 answered {text:?}").into());
        }
        alone.push(d);
    }
    // `clients` at once, each calling one after another.
    let forwarders: Vec<_> = (0..clients)
        .map(|_| Arc::new(McpForwarder::new(http_client())))
        .collect();
    for f in &forwarders {
        call(f.clone(), up.clone(), "0".into()).await?;
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (c, f) in forwarders.into_iter().enumerate() {
        let up = up.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(calls);
            for i in 0..calls {
                let marker = format!("c{c}-{i}");
                let (d, text) = call(f.clone(), up.clone(), format!("print('{marker}')")).await?;
                // Its own output, in its own order: each call waits for the
                // one before, so a mixed-up answer shows as a wrong marker.
                if text.trim().lines().last() != Some(marker.as_str()) {
                    return Err(format!("client {c} call {i} got {text:?}"));
                }
                lat.push(d);
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(json!({
        "bench": "mcp",
        "alone": summary(alone),
        "kernel_status_floor": summary(floor),
        "clients": clients,
        "calls": clients * calls,
        "calls_per_s": (clients * calls) as f64 / secs,
        "concurrent": summary(all),
        "every_output_to_its_caller": true,
    }))
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One SSE subscriber: the print → arrival latency of each printed stamp
/// until the execution `done` names finishes.
async fn subscriber(
    http: HttpClient,
    url: String,
    token: String,
    ready: Arc<tokio::sync::Semaphore>,
    done: Arc<tokio::sync::watch::Receiver<Option<String>>>,
) -> Result<Vec<f64>, Error> {
    let req = Request::builder()
        .uri(format!("{url}/v1/events"))
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "text/event-stream")
        .body(Body::empty())?;
    let resp = http.request(req).await?;
    if resp.status() != StatusCode::OK {
        return Err(format!("/v1/events answered {}", resp.status()).into());
    }
    ready.add_permits(1);
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut lat = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else { continue };
        let now = now_s();
        buf.extend_from_slice(data);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let Some(json) = line.strip_prefix(b"data:") else {
                continue;
            };
            let ev: Value = serde_json::from_slice(json)?;
            match ev["type"].as_str() {
                Some("output") if ev["output"]["output_type"] == "stream" => {
                    for stamp in ev["output"]["text"].as_str().unwrap_or("").split_whitespace() {
                        if let Ok(at) = stamp.parse::<f64>() {
                            lat.push(now - at);
                        }
                    }
                }
                Some("finished") => {
                    let ours = done.borrow().clone();
                    if ours.is_some() && ev["execution_id"].as_str() == ours.as_deref() {
                        return Ok(lat);
                    }
                }
                _ => {}
            }
        }
    }
    Err("the event stream ended before the execution finished".into())
}

async fn sse(t: &Target, clients: usize, prints: usize, every: f64) -> Result<Value, Error> {
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(None::<String>);
    let done_rx = Arc::new(done_rx);
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        // A connection each, as so many browsers or agents would have;
        // a few clients share a pool so the bench's own sockets stay few.
        let http = http_client();
        let (url, token, ready, done) = (t.url.clone(), t.token.clone(), ready.clone(), done_rx.clone());
        tasks.push(tokio::spawn(async move {
            let r = subscriber(http, url, token, ready, done).await;
            r.map_err(|e| format!("subscriber {i}: {e}"))
        }));
    }
    let started = Instant::now();
    let all_in = tokio::time::timeout(
        Duration::from_secs(60),
        ready.acquire_many(u32::try_from(clients).unwrap_or(u32::MAX)),
    )
    .await;
    if all_in.is_err() {
        return Err("not every subscriber connected within 60 s".into());
    }
    let connect_s = started.elapsed().as_secs_f64();
    let code =
        format!("import time\nfor _ in range({prints}):\n    print(time.time(), flush=True)\n    time.sleep({every})\n");
    let (status, e) = t
        .call(Method::POST, "/v1/executions", Some(&json!({ "code": code })))
        .await?;
    if !status.is_success() {
        return Err(format!("submitting the printer: {status} {e}").into());
    }
    let id = e["id"].as_str().ok_or("no id")?.to_string();
    let _ = done_tx.send(Some(id));
    let mut all = Vec::new();
    let mut short = 0;
    for task in tasks {
        let lat = tokio::time::timeout(Duration::from_secs(120), task).await???;
        if lat.len() < prints {
            short += 1;
        }
        all.extend(lat);
    }
    Ok(json!({
        "bench": "sse",
        "clients": clients,
        "prints": prints,
        "connect_s": connect_s,
        "clients_missing_events": short,
        "print_to_client": summary(all),
    }))
}

async fn enqueue(t: Arc<Target>, clients: usize, seconds: f64) -> Result<Value, Error> {
    let before = t.metrics().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for _ in 0..clients {
        let (t, stop, count) = (t.clone(), stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"code": "pass"});
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let s = Instant::now();
                let (status, e) = t.call(Method::POST, "/v1/executions", Some(&body)).await?;
                if status != StatusCode::ACCEPTED {
                    return Err::<Vec<f64>, Error>(format!("enqueue answered {status}: {e}").into());
                }
                lat.push(s.elapsed().as_secs_f64());
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await??);
    }
    let secs = t0.elapsed().as_secs_f64();
    let after = t.metrics().await?;
    let n = count.load(Ordering::Relaxed) as f64;
    let d = |name: &str| metric(&after, name) - metric(&before, name);
    let commits = d("notebook_store_commits_total");
    let enqueue_commits = d("notebook_store_batch_enqueues_count");
    Ok(json!({
        "bench": "enqueue",
        "clients": clients,
        "enqueued": n,
        "per_s": n / secs,
        "latency": summary(lat),
        "commits": commits,
        "commits_with_enqueues": enqueue_commits,
        "enqueues_per_commit_with_enqueues": if enqueue_commits > 0.0 { n / enqueue_commits } else { f64::NAN },
        "largest_batch": metric(&after, "notebook_store_largest_batch"),
    }))
}

fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let t = Arc::new(Target {
        http: http_client(),
        url: cli.url.trim_end_matches('/').to_string(),
        token: cli.token,
    });
    let out = rt.block_on(async {
        match cli.cmd {
            Cmd::Exec { n, code } => exec(&t, n, &code).await,
            Cmd::Http { n } => http_floor(&t, n).await,
            Cmd::Mcp {
                clients,
                calls,
                alone,
            } => mcp(&t, clients, calls, alone).await,
            Cmd::Sse {
                clients,
                prints,
                every,
            } => sse(&t, clients, prints, every).await,
            Cmd::Enqueue { clients, seconds } => enqueue(t.clone(), clients, seconds).await,
        }
    })?;
    println!("{out}");
    Ok(())
}
