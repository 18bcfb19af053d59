//! The original controller's edge behaviour, over HTTP against `infra up`
//! (in-process, embedded backends) and `infra api` (a real process over
//! Redis and moto): the rate limit on uploads and runs only, counted after
//! auth; the brute-force guard on failed keys; CORS; early 401/429 on an
//! upload read by the client (reqwest and Node's fetch); the original's
//! metric names; `/models` and `/system/status` shapes.

use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::production::Cluster;

const BIG: usize = 5 * 1024 * 1024;

/// An `infra api` process over moto and its own redis-server.
struct ApiProcess {
    cluster: Cluster,
    proc: Proc,
}

impl ApiProcess {
    async fn start(extra: &[(&str, &str)]) -> ApiProcess {
        let cluster = Cluster::new().await;
        // The cluster's API has no rate limit unless `extra` sets one.
        let proc = cluster.api(extra);
        ApiProcess { cluster, proc }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proc.base)
    }
}

/// `infra up` and `infra api` with the same limits: base URLs to test.
async fn both_flavours(rate: &str, auth_failures: &str) -> (TestApp, ApiProcess) {
    let (r, a) = (rate.to_string(), auth_failures.to_string());
    let up = TestApp::start_with(move |args| {
        args.http.rate_limit_per_minute = r;
        args.http.auth_failure_limit_per_minute = a;
    })
    .await;
    let api = ApiProcess::start(&[
        ("RATE_LIMIT_PER_MINUTE", rate),
        ("AUTH_FAILURE_LIMIT_PER_MINUTE", auth_failures),
    ])
    .await;
    (up, api)
}

async fn run_missing(client: &reqwest::Client, base: &str, path: &str, key: &str) -> reqwest::Response {
    client
        .post(format!("{base}{path}"))
        .header("x-api-key", key)
        .json(&json!({"functionId": "missing"}))
        .send()
        .await
        .unwrap()
}

const WRONG: &str = "wrong-key-0123456789abcdef";

/// Rate limit: only uploads and runs, after auth (bad keys get 401 and use
/// nobody's budget), the original's 429 body and headers.
async fn check_rate_limit(base: &str) {
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let r = run_missing(&client, base, "/run", WRONG).await;
        assert_eq!(r.status(), 401, "a bad key is 401, never 429");
        assert!(!r.headers().contains_key("x-ratelimit-remaining"));
    }
    for (i, path) in ["/run", "/api/run", "/run"].into_iter().enumerate() {
        let r = run_missing(&client, base, path, KEY).await;
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.headers()["x-ratelimit-limit"], "3");
        assert_eq!(r.headers()["x-ratelimit-remaining"], (2 - i).to_string().as_str());
    }
    let r = run_missing(&client, base, "/api/run", KEY).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-limit"], "3");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "Too Many Requests", "{body}");
    assert_eq!(body["retryAfter"], retry, "{body}");
    assert!(body["requestId"].is_string());
    // Uploads share the budget, and a refused upload is read before the answer.
    let form = Form::new().part("file", Part::bytes(vec![b'#'; BIG]).file_name("main.py"));
    let r = client
        .post(format!("{base}/upload"))
        .header("x-api-key", KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "Too Many Requests");
    // Everything else is outside the limit.
    for path in ["/functions", "/system/status"] {
        let r = client
            .get(format!("{base}{path}"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(!r.headers().contains_key("x-ratelimit-limit"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_counts_only_authorized_uploads_and_runs() {
    let (up, api) = both_flavours("3", "30").await;
    check_rate_limit(&up.base).await;
    check_rate_limit(&api.proc.base).await;
}

/// Failed keys: limited per address, 429 on failures only; the right key
/// from the same address is served.
async fn check_brute_force_guard(base: &str) {
    let client = reqwest::Client::new();
    for i in 0..4 {
        let r = client
            .get(format!("{base}/functions"))
            .header("x-api-key", format!("guess-{i}-0123456789abcdef"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "failure {i}");
    }
    let r = client.get(format!("{base}/functions")).send().await.unwrap();
    assert_eq!(r.status(), 429, "the fifth failure in a minute");
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "Too Many Requests", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("failed authentications"),
        "{body}"
    );
    let ok = client
        .get(format!("{base}/functions"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "the right key is not locked out");
    let run = run_missing(&client, base, "/run", KEY).await;
    assert_eq!(run.status(), 404, "nor are its runs");
    assert_eq!(run.headers()["x-ratelimit-remaining"], "99");
    // Public routes need no key and are never guarded.
    let models = client.get(format!("{base}/models")).send().await.unwrap();
    assert_eq!(models.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_keys_are_limited_per_address_without_locking_out_the_key() {
    let (up, api) = both_flavours("100", "4").await;
    check_brute_force_guard(&up.base).await;
    check_brute_force_guard(&api.proc.base).await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    let app = TestApp::start_with(|a| {
        a.http.rate_limit_per_minute = "2".into();
        a.http.trust_forwarded_for = "true".into();
    })
    .await;
    // The proxy appends the address it saw; what comes before is the
    // client's own writing, so changing it buys no new budget.
    let run = |written: String, ip: &'static str| {
        app.post("/run")
            .header("x-forwarded-for", format!("{written}, {ip}"))
            .json(&json!({"functionId": "missing"}))
            .send()
    };
    for i in 0..2 {
        assert_eq!(run(format!("10.9.9.{i}"), "203.0.113.1").await.unwrap().status(), 404);
    }
    assert_eq!(run("10.9.9.7".into(), "203.0.113.1").await.unwrap().status(), 429);
    assert_eq!(
        run("10.9.9.8".into(), "203.0.113.2").await.unwrap().status(),
        404,
        "another client"
    );
}

/// CORS with the default `*`: every answer, errors included; preflights on
/// any path answered 204 without a key, echoing the asked headers.
async fn check_cors_any(base: &str) {
    let client = reqwest::Client::new();
    for path in ["/run", "/upload", "/functions/abc", "/no/such/path", "/api/run"] {
        let r = client
            .request(reqwest::Method::OPTIONS, format!("{base}{path}"))
            .header("origin", "https://dash.example.com")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "x-api-key,content-type,x-async,x-runtime,x-memory-mb,x-function-name,idempotency-key",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{path}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "*", "{path}");
        assert_eq!(h["access-control-allow-methods"], "GET,HEAD,PUT,PATCH,POST,DELETE");
        assert_eq!(
            h["access-control-allow-headers"],
            "x-api-key,content-type,x-async,x-runtime,x-memory-mb,x-function-name,idempotency-key"
        );
        assert!(!h.contains_key("access-control-allow-credentials"));
    }
    for (path, key, status) in [
        ("/health", None, 200),
        ("/functions", None, 401),
        ("/functions", Some(KEY), 200),
        ("/functions/missing", Some(KEY), 404),
    ] {
        let mut req = client
            .get(format!("{base}{path}"))
            .header("origin", "https://dash.example.com");
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(r.headers()["access-control-allow-origin"], "*", "{path}");
        assert!(r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("retry-after"));
        assert!(!r.headers().contains_key("access-control-allow-credentials"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_preflights_and_marks_every_response() {
    let (up, api) = both_flavours("100", "30").await;
    check_cors_any(&up.base).await;
    check_cors_any(&api.proc.base).await;
}

#[tokio::test]
async fn cors_origins_list_echoes_only_listed_origins() {
    let app = TestApp::start_with(|a| {
        a.http.cors_origins = "https://dash.example.com, http://localhost:3000".into();
    })
    .await;
    let get = |origin: &'static str| app.get("/functions").header("origin", origin).send();
    let r = get("https://dash.example.com").await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://dash.example.com");
    assert!(r
        .headers()
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("Origin")));
    let r = get("https://evil.example.com").await.unwrap();
    assert_eq!(r.status(), 200, "CORS is the browser's check, not an auth");
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let pre = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/run"))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(pre.headers()["access-control-allow-origin"], "http://localhost:3000");
}

/// A large multipart upload with a wrong key: the client reads the 401
/// (reqwest), as it sends the whole body.
async fn check_early_401(base: &str) {
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let form = Form::new()
            .text("name", "big")
            .part("file", Part::bytes(vec![b'#'; BIG]).file_name("main.py"));
        let r = client
            .post(format!("{base}/upload"))
            .header("x-api-key", WRONG)
            .multipart(form)
            .send()
            .await
            .expect("the client reads the answer, not a broken pipe");
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "Unauthorized");
    }
}

/// The same with Node's fetch (undici), as the original dashboard's
/// backend sends uploads.
async fn check_early_401_node(base: &str) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("upload.mjs");
    std::fs::write(
        &script,
        r#"
const [base, key] = process.argv.slice(2);
const out = [];
for (let i = 0; i < 3; i++) {
  const form = new FormData();
  form.append('name', 'big');
  form.append('file', new Blob([Buffer.alloc(5 * 1024 * 1024, 35)]), 'main.py');
  try {
    const res = await fetch(`${base}/upload`, { method: 'POST', headers: { 'x-api-key': key }, body: form });
    out.push({ status: res.status, body: await res.json(), cors: res.headers.get('access-control-allow-origin') });
  } catch (e) {
    out.push({ error: String(e), cause: String(e.cause && (e.cause.code || e.cause.message)) });
  }
}
console.log(JSON.stringify(out));
"#,
    )
    .unwrap();
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .arg(base)
        .arg(WRONG)
        .output()
        .await
        .expect("node is installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    for r in results.as_array().unwrap() {
        assert_eq!(r["status"], 401, "Node's fetch read the answer: {results}");
        assert_eq!(r["body"]["error"], "Unauthorized", "{results}");
        assert_eq!(r["cors"], "*");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_401_on_a_large_upload_is_read_by_reqwest_and_node_fetch() {
    let (up, api) = both_flavours("100", "1000").await;
    for base in [&up.base, &api.proc.base] {
        check_early_401(base).await;
        check_early_401_node(base).await;
    }
}

#[tokio::test]
async fn metrics_have_the_original_names_beside_ours() {
    let app = TestApp::start().await;
    let id = app.upload_py(ECHO, &[]).await;
    app.run_ok(&id, json!({})).await;
    let _ = app.client.get(app.url("/functions")).send().await.unwrap();
    let text = app.metrics().await;
    for needle in [
        format!(r#"function_invocations_total{{functionId="{id}",status="SUCCESS"}} 1"#),
        format!(r#"function_duration_seconds_count{{functionId="{id}",status="SUCCESS"}} 1"#),
        format!(r#"function_duration_seconds_bucket{{functionId="{id}",status="SUCCESS",le="30"}} 1"#),
        format!(r#"function_handler_duration_seconds_count{{functionId="{id}",status="SUCCESS"}} 1"#),
        format!(r#"infra_invocations_total{{function="{id}",status="SUCCESS"}} 1"#),
        r#"http_request_duration_seconds_count{method="POST",route="/run",status_code="200"} 1"#.into(),
        r#"http_request_duration_seconds_bucket{method="GET",route="/functions",status_code="401",le="0.1"} 1"#.into(),
        r#"le="2""#.into(),
        "# TYPE process_cpu_seconds_total counter".into(),
        "# TYPE process_cpu_user_seconds_total counter".into(),
        "process_resident_memory_bytes ".into(),
        "process_virtual_memory_bytes ".into(),
        "process_start_time_seconds ".into(),
        "process_open_fds ".into(),
        "process_max_fds ".into(),
    ] {
        assert!(text.contains(&needle), "{needle} missing from\n{text}");
    }
    let started: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("process_start_time_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(started > now - 3600.0 && started <= now + 1.0, "{started}");
}

/// `/models` without a key: the original's shape, from the node or the
/// fallback with a warning (200 either way).
async fn check_models_fallback(base: &str) {
    let r = reqwest::get(format!("{base}/models")).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let m = &body["models"][0];
    assert_eq!(m["id"], "llama3:8b", "{body}");
    assert_eq!(m["name"], "llama3:8b (Default)");
    assert_eq!(m["status"], "fallback");
    assert_eq!(m["details"], json!({}));
    assert!(body["warning"].as_str().unwrap().contains("default"), "{body}");
    assert_eq!(body["source"], "fallback", "our fields stay: {body}");
}

#[tokio::test]
async fn models_are_public_in_the_original_shape() {
    let node = crate::ai::FakeOllama::start().await;
    let app = TestApp::start_with(|a| a.ai.ai_node_url = Some(node.url.clone())).await;
    let body: Value = reqwest::get(app.url("/api/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.get("warning").is_none(), "{body}");
    for m in body["models"].as_array().unwrap() {
        assert_eq!(m["id"], m["name"], "{body}");
        assert_eq!(m["status"], "available");
        assert!(m.get("size").is_some() && m.get("details").is_some(), "{m}");
    }
    let unset = TestApp::start().await;
    check_models_fallback(&unset.base).await;
}

/// The original's `/system/status` fields beside ours.
fn check_status_shape(body: &Value) {
    for runtime in ["python", "nodejs", "cpp", "go"] {
        assert!(body["pools"][runtime].is_u64(), "pools.{runtime}: {body}");
    }
    assert!(body["active_jobs"].is_u64(), "{body}");
    assert!(body["worker_count"].is_u64(), "{body}");
    assert!(body["uptime_seconds"].is_number(), "{body}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let ts = body["timestamp"].as_f64().unwrap();
    assert!((ts - now).abs() < 60.0, "epoch seconds: {ts}");
    for ours in ["totals", "workers", "functions"] {
        assert!(body.get(ours).is_some(), "{ours}: {body}");
    }
}

#[tokio::test]
async fn system_status_has_the_original_fields_and_counts_warm_pools_per_runtime() {
    let app = TestApp::start_with(|a| a.pool.stem_cells = "0".into()).await;
    let id = app.upload_py(ECHO, &[]).await;
    app.run_ok(&id, json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = app.get("/system/status").send().await.unwrap().json().await.unwrap();
        check_status_shape(&body);
        assert_eq!(body["status"], "online");
        assert_eq!(body["worker_count"], 1);
        if body["pools"]["python"] == 1 {
            assert_eq!(body["pools"]["nodejs"], 0);
            assert_eq!(body["pools"]["go"], 0);
            assert!(body["uptime_seconds"].as_f64().unwrap() > 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "the warm instance never showed: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let anon = app.client.get(app.url("/system/status")).send().await.unwrap();
    assert_eq!(anon.status(), 401, "the key stays required (as in v2.8)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infra_api_models_status_metrics_and_a_failing_limiter_store() {
    let mut api = ApiProcess::start(&[("RATE_LIMIT_PER_MINUTE", "100")]).await;
    let client = reqwest::Client::new();
    check_models_fallback(&api.proc.base).await;
    let body = get_json(&client, api.url("/system/status")).await;
    check_status_shape(&body);
    assert_eq!(body["status"], "offline");
    assert_eq!(body["worker_count"], 0);
    assert_eq!(body["pools"], json!({"python": 0, "nodejs": 0, "cpp": 0, "go": 0}));
    let r = client.get(api.url("/metrics")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let metrics = r.text().await.unwrap();
    assert!(metrics.contains("process_resident_memory_bytes "), "{metrics}");

    // Redis down: the limit lets uploads through (they need no Redis)
    // rather than refusing them; the failure is counted.
    api.cluster.redis.stop();
    let form = Form::new().part("file", Part::bytes(ECHO.as_bytes().to_vec()).file_name("main.py"));
    let r = client
        .post(api.url("/upload"))
        .header("x-api-key", KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let metrics = get_text(&client, api.url("/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("infra_rate_limiter_errors_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn openapi_describes_the_edge() {
    let app = TestApp::start().await;
    let doc: Value = app.public_json("/openapi.json").await;
    let models = &doc["paths"]["/models"]["get"];
    assert_eq!(models["security"], json!([{}]), "no key: {models}");
    assert!(models["responses"].get("401").is_none());
    let too_many = &doc["paths"]["/run"]["post"]["responses"]["429"];
    for h in ["Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining"] {
        assert!(too_many["headers"].get(h).is_some(), "{h}: {too_many}");
    }
    let error = &doc["components"]["schemas"]["ErrorBody"]["properties"];
    assert!(
        error.get("message").is_some() && error.get("retryAfter").is_some(),
        "{error}"
    );
    let models_schema = &doc["components"]["schemas"]["ModelInfo"]["properties"];
    for field in ["id", "name", "size", "details", "status"] {
        assert!(models_schema.get(field).is_some(), "{field}: {models_schema}");
    }
    let status = &doc["components"]["schemas"]["SystemStatus"]["properties"];
    for field in [
        "status",
        "pools",
        "active_jobs",
        "worker_count",
        "uptime_seconds",
        "timestamp",
        "totals",
    ] {
        assert!(status.get(field).is_some(), "{field}: {status}");
    }
}
