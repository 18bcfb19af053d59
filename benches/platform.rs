//! Platform benchmarks, driven over HTTP on loopback from this process:
//! - warm invoke: sequential sync `/run` of a trivial handler; platform
//!   overhead = client-observed latency minus the handler's own time;
//! - cold start: first invoke of fresh functions (process start + import);
//! - async admission: `POST /run` with `x-async: true` from 20 concurrent
//!   clients; a 202 means the job is durably queued.
//!
//! Deployments (BENCH_DEPLOYMENTS, comma-separated; `scripts/bench` starts
//! the services the cloud ones need):
//! - `embedded`: `infra up`;
//! - `cloud`: `infra api` + `infra worker` over a private redis-server and
//!   moto at INFRA_TEST_AWS_ENDPOINT (S3, DynamoDB, SQS);
//! - `cloud-fast-sqs`: the same, SQS at BENCH_FAST_SQS_ENDPOINT (fauxqs).
//!
//! - `runtimes`: Python and Node.js side by side under `infra up`: a fresh
//!   interpreter per invoke (STEM_CELLS=0, one new function each), a stem
//!   cell cold start (a new function while stem cells are ready), and a
//!   warm invoke.
//!
//! - `original`: the original Node.js controller (ORIGINAL_CONTROLLER_DIR,
//!   prepared by `scripts/bench`), async admission only, on fauxqs, moto and
//!   a redis-server on 6379 (its hard-coded port), without workers.
//!
//! Every deployment's async admission is also driven from outside the
//! process by `wrk` (20 connections, BENCH_SECONDS), which reports
//! p50/p90/p99/max as an external client sees them.
//!
//! Knobs: BENCH_INVOKES (2000), BENCH_SECONDS (5), BENCH_COLD (40 per kind),
//! BENCH_ADMISSION_ALONE (1: stop a cloud deployment's worker before the
//! admission burst).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use infra_controller::app::{self, Running};
use infra_controller::backend::aws::{AwsSettings, DynamoRegistry, S3ArtifactStore, SqsQueue};
use infra_controller::backend::FunctionRegistry;
use infra_controller::config::{ApiConfig, CloudConfig, UpArgs, WorkerConfig};
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

fn summary(deployment: &str, name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{deployment:<15} {name:<40} n={:<6} p50={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms",
        v.len(),
        pct(&v, 0.50),
        pct(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What a deployment leaves running until the measurements end.
struct Deployment {
    base: String,
    roles: Vec<Running>,
    redis: Option<Child>,
    /// Processes of a deployment that is not this platform (the original).
    children: Vec<Child>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Deployment {
    async fn stop(mut self) {
        for r in self.roles.drain(..) {
            r.shutdown();
            let _ = r.wait().await;
        }
        for mut child in self.redis.take().into_iter().chain(self.children.drain(..)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn local_args(dir: &std::path::Path) -> UpArgs {
    let mut args = UpArgs::local(dir.to_path_buf());
    args.http.api_key = Some(KEY.into());
    args.http.rate_limit_per_minute = "0".into();
    args.shutdown_timeout_seconds = "0".into();
    args.pool.worker_concurrency = "2".into();
    args
}

async fn embedded() -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start_up(local_args(dir.path()).validate().unwrap()).await.unwrap();
    Deployment {
        base: format!("http://{}", running.addr),
        roles: vec![running],
        redis: None,
        children: vec![],
        _dirs: vec![dir],
    }
}

fn start_redis() -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = std::env::var("INFRA_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (run scripts/bench)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

async fn cloud(sqs_endpoint: Option<String>) -> Deployment {
    let moto = std::env::var("INFRA_TEST_AWS_ENDPOINT").expect("INFRA_TEST_AWS_ENDPOINT (run scripts/bench)");
    let aws = AwsSettings {
        region: "us-east-1".into(),
        endpoint_url: Some(moto),
        s3_endpoint_url: None,
        dynamodb_endpoint_url: None,
        sqs_endpoint_url: sqs_endpoint,
        static_credentials: Some(("test".into(), "test".into())),
    };
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let (bucket, table) = (format!("bench-{id}"), format!("bench-{id}"));
    S3ArtifactStore::new(&aws, &bucket).await.ensure_bucket().await.unwrap();
    DynamoRegistry::new(&aws, &table).await.ensure_table().await.unwrap();
    let sqs_url = SqsQueue::create_queue(&aws, &format!("bench-{id}")).await.unwrap();
    let (redis, port) = start_redis();
    let cloud = CloudConfig {
        aws,
        bucket,
        sqs_url,
        redis_url: format!("redis://127.0.0.1:{port}"),
        redis_key_prefix: String::new(),
        job_ttl: Duration::from_secs(3600),
        logs_table: None,
        logs_retention: Duration::from_secs(86_400),
    };
    let api_dir = tempfile::tempdir().unwrap();
    let worker_dir = tempfile::tempdir().unwrap();
    let local = local_args(api_dir.path()).validate().unwrap();
    let api = app::start_api(ApiConfig {
        http: local.http.clone(),
        ai: local.ai.clone(),
        cloud: cloud.clone(),
        table,
        shutdown_timeout: Duration::ZERO,
    })
    .await
    .unwrap();
    let worker = app::start_worker(WorkerConfig {
        pool: local.pool.clone(),
        ai: local.ai.clone(),
        cloud,
        data_dir: worker_dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        shutdown_timeout: Duration::ZERO,
        visibility_timeout: Duration::from_secs(30),
        table: None,
    })
    .await
    .unwrap();
    Deployment {
        base: format!("http://{}", api.addr),
        roles: vec![api, worker],
        redis: Some(redis),
        children: vec![],
        _dirs: vec![api_dir, worker_dir],
    }
}

async fn upload(client: &reqwest::Client, base: &str, source: &str) -> String {
    upload_file(client, base, "main.py", source).await
}

async fn upload_file(client: &reqwest::Client, base: &str, file_name: &str, source: &str) -> String {
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(source.as_bytes().to_vec()).file_name(file_name.to_string()),
    );
    let r = client
        .post(format!("{base}/upload"))
        .header("x-api-key", KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
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

async fn measure(name: &str, deployment: &mut Deployment) {
    let base = deployment.base.clone();
    let base = base.as_str();
    let client = reqwest::Client::new();
    let invokes = env_num("BENCH_INVOKES", 2000) as usize;
    let seconds = env_num("BENCH_SECONDS", 5);

    let id = upload(&client, base, "def handler(event, context):\n    return event\n").await;
    for _ in 0..50 {
        run_sync(&client, base, &id).await;
    }
    let (mut total, mut own, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..invokes {
        let (ms, body) = run_sync(&client, base, &id).await;
        assert_eq!(body["status"], "SUCCESS", "{body}");
        assert_eq!(body["coldStart"], false);
        let handler = body["handlerDurationMs"].as_f64().unwrap();
        total.push(ms);
        own.push(handler);
        overhead.push(ms - handler);
    }
    summary(name, "warm invoke: total (client-observed)", total);
    summary(name, "warm invoke: handler's own time", own);
    summary(name, "warm invoke: platform overhead", overhead);

    // Cold starts, split by how the instance came to be: with a pause the
    // stem cells refill (stem starts); back to back they run out (fresh starts).
    let mut cold: std::collections::BTreeMap<String, (Vec<f64>, Vec<f64>)> = Default::default();
    for i in 0..60 {
        let fid = upload(
            &client,
            base,
            &format!("def handler(event, context):\n    return {i}\n"),
        )
        .await;
        if i < 30 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let (ms, body) = run_sync(&client, base, &fid).await;
        assert_eq!(body["coldStart"], true);
        let kind = body["startKind"].as_str().unwrap_or("?").to_string();
        let entry = cold.entry(kind).or_default();
        entry.0.push(ms);
        entry.1.push(body["initMs"].as_f64().unwrap());
    }
    for (kind, (total, init)) in cold {
        summary(name, &format!("cold start ({kind}): total"), total);
        summary(name, &format!("cold start ({kind}): instance init"), init);
    }

    // BENCH_ADMISSION_ALONE=1: the workers of a cloud deployment stop
    // before the admission burst, so it measures the API's own path (on two
    // shared cores, workers running the accepted jobs take CPU from it, and
    // so does moto serving their S3 writes).
    if env_num("BENCH_ADMISSION_ALONE", 0) == 1 {
        for worker in deployment.roles.drain(1..) {
            worker.shutdown();
            let _ = worker.wait().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let base = base.to_string();
            let body = serde_json::to_vec(&json!({"functionId": id, "inputData": {"n": 1}})).unwrap();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let r = client
                        .post(format!("{base}/run"))
                        .header("x-api-key", KEY)
                        .header("x-async", "true")
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 202);
                    let _ = r.bytes().await.unwrap();
                    lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{name:<15} async admission: {} accepted in {:.2} s = {:.0} req/s at {CLIENTS} clients",
        all.len(),
        elapsed,
        all.len() as f64 / elapsed
    );
    summary(name, "async admission: latency", all);
    external_admission(name, base, &id, seconds);
    admission_stages(name, &client, base).await;
}

/// Where admission time goes, from the API's own `infra_admission_stage_seconds`
/// histogram (both bursts above): p50 and p99 as bucket upper bounds.
async fn admission_stages(name: &str, client: &reqwest::Client, base: &str) {
    let Ok(r) = client
        .get(format!("{base}/metrics"))
        .header("x-api-key", KEY)
        .send()
        .await
    else {
        return;
    };
    let text = r.text().await.unwrap_or_default();
    for stage in ["lookup", "record", "queue"] {
        let prefix = format!("infra_admission_stage_seconds_bucket{{stage=\"{stage}\",le=\"");
        let buckets: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        let Some(&(_, total)) = buckets.last() else { continue };
        let at = |q: f64| {
            buckets
                .iter()
                .find(|(_, c)| *c >= q * total)
                .map(|(le, _)| le * 1000.0)
                .unwrap_or(f64::NAN)
        };
        println!(
            "{name:<15} admission stage {stage:<7} n={total:<7} p50 <= {:>7.2} ms  p99 <= {:>7.2} ms",
            at(0.5),
            at(0.99)
        );
    }
}

/// Async admission driven by `wrk` from outside this process (20
/// connections, 2 threads), as an external client sees it.
fn external_admission(name: &str, base: &str, function_id: &str, seconds: u64) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lib/wrk-run.lua");
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{CLIENTS}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
            script,
        ])
        .arg(format!("{base}/run"))
        .env("BENCH_KEY", KEY)
        .env("BENCH_FUNCTION_ID", function_id)
        .output();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        Ok(o) => panic!("wrk failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            println!("{name:<15} external admission (wrk): skipped, wrk not runnable ({e}); scripts/bench installs it");
            return;
        }
    };
    let figures = WrkFigures::parse(&out).unwrap_or_else(|| panic!("unreadable wrk output:\n{out}"));
    assert_eq!(figures.errors, 0, "every admission must be a 202:\n{out}");
    println!(
        "{name:<15} external admission (wrk, {CLIENTS} conns): {:.0} req/s  p50={:>8.3} ms  p90={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms",
        figures.rps, figures.p50, figures.p90, figures.p99, figures.max
    );
}

/// What `wrk --latency` prints, in ms and requests per second.
#[derive(Debug, PartialEq)]
struct WrkFigures {
    rps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    /// Non-2xx answers and socket errors.
    errors: u64,
}

impl WrkFigures {
    fn parse(out: &str) -> Option<WrkFigures> {
        // wrk prints durations as 812.00us, 3.45ms, 1.02s or 2.00m.
        fn ms(t: &str) -> Option<f64> {
            let t = t.trim();
            let (n, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic())?);
            let n: f64 = n.parse().ok()?;
            Some(match unit {
                "us" => n / 1000.0,
                "ms" => n,
                "s" => n * 1000.0,
                "m" => n * 60_000.0,
                _ => return None,
            })
        }
        let mut f = WrkFigures {
            rps: f64::NAN,
            p50: f64::NAN,
            p90: f64::NAN,
            p99: f64::NAN,
            max: f64::NAN,
            errors: 0,
        };
        for line in out.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["Latency", _avg, _stdev, max, ..] => f.max = ms(max)?,
                ["50%", t] => f.p50 = ms(t)?,
                ["90%", t] => f.p90 = ms(t)?,
                ["99%", t] => f.p99 = ms(t)?,
                ["Requests/sec:", n] => f.rps = n.parse().ok()?,
                ["Non-2xx", "or", "3xx", "responses:", n] => f.errors += n.parse::<u64>().ok()?,
                ["Socket", "errors:", rest @ ..] => {
                    for n in rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()) {
                        f.errors += n;
                    }
                }
                _ => {}
            }
        }
        (!f.rps.is_nan() && !f.p99.is_nan()).then_some(f)
    }
}

/// The original Node.js controller (ORIGINAL_CONTROLLER_DIR: its
/// `controller.js` with node_modules, its 100/min limit raised), on fauxqs
/// (BENCH_FAST_SQS_ENDPOINT), moto and a redis-server on 6379. Its function
/// record is written in the shared DynamoDB format. Async admission only.
async fn original() {
    let Ok(dir) = std::env::var("ORIGINAL_CONTROLLER_DIR") else {
        println!("original        skipped: ORIGINAL_CONTROLLER_DIR is not set (scripts/bench prepares it)");
        return;
    };
    let moto = std::env::var("INFRA_TEST_AWS_ENDPOINT").expect("INFRA_TEST_AWS_ENDPOINT (run scripts/bench)");
    let fauxqs = std::env::var("BENCH_FAST_SQS_ENDPOINT").expect("BENCH_FAST_SQS_ENDPOINT (run scripts/bench)");
    let aws = AwsSettings {
        region: "us-east-1".into(),
        endpoint_url: Some(moto.clone()),
        s3_endpoint_url: None,
        dynamodb_endpoint_url: None,
        sqs_endpoint_url: Some(fauxqs.clone()),
        static_credentials: Some(("test".into(), "test".into())),
    };
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let (bucket, table) = (format!("orig-{id}"), format!("orig-{id}"));
    S3ArtifactStore::new(&aws, &bucket).await.ensure_bucket().await.unwrap();
    let registry = DynamoRegistry::new(&aws, &table).await;
    registry.ensure_table().await.unwrap();
    let sqs_url = SqsQueue::create_queue(&aws, &format!("orig-{id}")).await.unwrap();
    let mut record = infra_controller::backend::conformance::sample_function("bench-original");
    record.s3_key = "functions/bench-original/code.zip".into();
    registry.put(&record).await.unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 6379)).is_err(),
        "the original controller needs port 6379 for its redis-server; it is taken"
    );
    let bin = std::env::var("INFRA_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let redis = Command::new(bin)
        .args([
            "--port",
            "6379",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    while std::net::TcpStream::connect(("127.0.0.1", 6379)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let controller = Command::new("node")
        .arg("controller.js")
        .current_dir(&dir)
        .envs([
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("BUCKET_NAME", bucket.as_str()),
            ("TABLE_NAME", table.as_str()),
            ("SQS_URL", sqs_url.as_str()),
            ("REDIS_HOST", "127.0.0.1"),
            ("INFRA_API_KEY", KEY),
            ("S3_ENDPOINT", moto.as_str()),
            ("DYNAMODB_ENDPOINT", moto.as_str()),
            ("SQS_ENDPOINT", fauxqs.as_str()),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("node (run scripts/bench)");
    let deployment = Deployment {
        base: "http://127.0.0.1:8080".into(),
        roles: vec![],
        redis: Some(redis),
        children: vec![controller],
        _dirs: vec![],
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = client
            .post(format!("{}/run", deployment.base))
            .header("x-api-key", KEY)
            .header("x-async", "true")
            .json(&json!({"functionId": "bench-original", "inputData": {"n": 1}}))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 202 => break,
            Ok(r) => panic!(
                "the original controller answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ),
            Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the original controller did not start on 8080"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    external_admission(
        "original",
        &deployment.base,
        "bench-original",
        env_num("BENCH_SECONDS", 5),
    );
    deployment.stop().await;
}

/// `infra up` with `stem_cells` per runtime.
async fn embedded_with(stem_cells: &str) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let mut args = local_args(dir.path());
    args.pool.stem_cells = stem_cells.into();
    let running = app::start_up(args.validate().unwrap()).await.unwrap();
    Deployment {
        base: format!("http://{}", running.addr),
        roles: vec![running],
        redis: None,
        children: vec![],
        _dirs: vec![dir],
    }
}

async fn stem_cells_ready(client: &reqwest::Client, base: &str, n: usize) {
    let want = format!("infra_stem_cells {n}");
    loop {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (a) fresh, (b) stem cell, (c) warm, per runtime, in one run.
async fn runtimes() {
    let client = reqwest::Client::new();
    let cold_n = env_num("BENCH_COLD", 40) as usize;
    let invokes = env_num("BENCH_INVOKES", 2000) as usize;
    let handlers = [
        ("python", "main.py", "def handler(event, context):\n    return event\n"),
        ("nodejs", "index.js", "exports.handler = (event) => event;\n"),
    ];
    let fresh = embedded_with("0").await;
    let stem = embedded_with("2").await;
    for (runtime, file, source) in handlers {
        let mut lines: Vec<(String, Vec<f64>)> = Vec::new();
        for (kind, deployment) in [("fresh", &fresh), ("stem", &stem)] {
            let (mut total, mut init) = (Vec::new(), Vec::new());
            for i in 0..cold_n {
                // A distinct function (and code version) per cold start.
                let comment = if runtime == "python" { "#" } else { "//" };
                let src = format!("{source}{comment} {i}\n");
                let id = upload_file(&client, &deployment.base, file, &src).await;
                if kind == "stem" {
                    // Both runtimes' stem cells are back before each cold start.
                    stem_cells_ready(&client, &deployment.base, 4).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let (ms, body) = run_sync(&client, &deployment.base, &id).await;
                assert_eq!(body["status"], "SUCCESS", "{body}");
                assert_eq!(body["startKind"], kind, "{body}");
                total.push(ms);
                init.push(body["initMs"].as_f64().unwrap());
            }
            lines.push((format!("{runtime} cold start ({kind}): total"), total));
            lines.push((format!("{runtime} cold start ({kind}): instance init"), init));
        }
        let id = upload_file(&client, &stem.base, file, source).await;
        for _ in 0..50 {
            run_sync(&client, &stem.base, &id).await;
        }
        let (mut total, mut overhead) = (Vec::new(), Vec::new());
        for _ in 0..invokes {
            let (ms, body) = run_sync(&client, &stem.base, &id).await;
            assert_eq!(body["startKind"], "warm", "{body}");
            total.push(ms);
            overhead.push(ms - body["handlerDurationMs"].as_f64().unwrap());
        }
        lines.push((format!("{runtime} warm invoke: total"), total));
        lines.push((format!("{runtime} warm invoke: platform overhead"), overhead));
        for (name, v) in lines {
            summary("runtimes", &name, v);
        }
    }
    fresh.stop().await;
    stem.stop().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "machine: {} cores",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
        let which = std::env::var("BENCH_DEPLOYMENTS").unwrap_or_else(|_| "embedded".into());
        for name in which.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "runtimes" {
                runtimes().await;
                continue;
            }
            if name == "original" {
                original().await;
                continue;
            }
            let mut deployment = match name {
                "embedded" => embedded().await,
                "cloud" => cloud(None).await,
                "cloud-fast-sqs" => {
                    cloud(Some(
                        std::env::var("BENCH_FAST_SQS_ENDPOINT").expect("BENCH_FAST_SQS_ENDPOINT"),
                    ))
                    .await
                }
                other => panic!("unknown deployment {other}"),
            };
            measure(name, &mut deployment).await;
            deployment.stop().await;
        }
    });
}
