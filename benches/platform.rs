//! Platform benchmarks on `infra up` (embedded backends), in one process on
//! loopback:
//! - warm invoke: sequential sync `/run` of a trivial handler; platform
//!   overhead = client-observed latency minus the handler's own time;
//! - cold start: first invoke of fresh functions (process start + import);
//! - async admission: `POST /run` with `x-async: true` from 20 concurrent
//!   clients; every 202 means the job is durably queued (fsync'd).
//!
//! Run: `cargo bench --bench platform` (env: BENCH_SECONDS, BENCH_INVOKES).

use std::sync::Arc;
use std::time::{Duration, Instant};

use infra_controller::app;
use infra_controller::config::UpArgs;
use serde_json::{json, Value};

const KEY: &str = "bench-api-key-0123456789";
const CLIENTS: usize = 20;

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name:<44} n={:<6} p50={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms",
        v.len(),
        pct(&v, 0.50),
        pct(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn upload(client: &reqwest::Client, base: &str, source: &str) -> String {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(source.as_bytes().to_vec()).file_name("main.py"),
    );
    let r = client
        .post(format!("{base}/upload"))
        .header("x-api-key", KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["functionId"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn run_sync(client: &reqwest::Client, base: &str, id: &str) -> (f64, Value) {
    let t0 = Instant::now();
    let r = client
        .post(format!("{base}/run"))
        .header("x-api-key", KEY)
        .json(&json!({"functionId": id, "inputData": {"n": 1}}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    (t0.elapsed().as_secs_f64() * 1000.0, body)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = UpArgs::local(dir.path().to_path_buf());
    args.http.api_key = Some(KEY.into());
    args.http.rate_limit_per_minute = "0".into();
    args.shutdown_timeout_seconds = "0".into();
    args.pool.worker_concurrency = "2".into();
    let running = app::start_up(args.validate().unwrap()).await.unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let invokes = env_num("BENCH_INVOKES", 2000) as usize;
    let seconds = env_num("BENCH_SECONDS", 5);
    println!(
        "machine: {} cores; data dir on {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        dir.path().display()
    );

    // Warm invoke.
    let id = upload(&client, &base, "def handler(event, context):\n    return event\n").await;
    for _ in 0..50 {
        run_sync(&client, &base, &id).await;
    }
    let mut total = Vec::with_capacity(invokes);
    let mut overhead = Vec::with_capacity(invokes);
    let mut handler = Vec::with_capacity(invokes);
    for _ in 0..invokes {
        let (ms, body) = run_sync(&client, &base, &id).await;
        assert_eq!(body["status"], "SUCCESS");
        assert_eq!(body["coldStart"], false);
        let own = body["durationMs"].as_f64().unwrap();
        total.push(ms);
        handler.push(own);
        overhead.push(ms - own);
    }
    summary("warm invoke: total (client-observed)", total);
    summary("warm invoke: handler's own time", handler);
    summary("warm invoke: platform overhead", overhead);

    // Cold start: a new function each time (no warm instance exists).
    let mut cold_total = Vec::new();
    let mut cold_init = Vec::new();
    for i in 0..30 {
        let fid = upload(
            &client,
            &base,
            &format!("def handler(event, context):\n    return {i}\n"),
        )
        .await;
        let (ms, body) = run_sync(&client, &base, &fid).await;
        assert_eq!(body["coldStart"], true);
        cold_total.push(ms);
        cold_init.push(body["initMs"].as_f64().unwrap());
    }
    summary("cold start: total (fresh python3 + import)", cold_total);
    summary("cold start: instance init", cold_init);

    // Async admission from 20 concurrent clients.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let base = base.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let body = Arc::new(serde_json::to_vec(&json!({"functionId": id, "inputData": {"n": 1}})).unwrap());
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = client
                    .post(format!("{base}/run"))
                    .header("x-api-key", KEY)
                    .header("x-async", "true")
                    .header("content-type", "application/json")
                    .body(body.as_ref().clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                let _ = r.bytes().await.unwrap();
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "async admission: {} accepted in {:.2} s = {:.0} req/s at {CLIENTS} clients",
        all.len(),
        elapsed,
        all.len() as f64 / elapsed
    );
    summary("async admission: latency", all);

    running.shutdown();
    let _ = running.wait().await;
}
