//! The original Infra Controller's clients, unchanged, against this API:
//! every shape they read, over HTTP, against `infra up` (embedded) and
//! `infra api` + `infra worker` (Redis, moto). The original's contract is
//! described in docs/compat.md; each assertion names what a client reads.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;
use crate::production::Cluster;

/// One deployment under test: its base URL, and what keeps it running.
struct Target {
    base: String,
    client: reqwest::Client,
    _app: Option<TestApp>,
    _cluster: Option<(Cluster, Proc, Proc)>,
}

impl Target {
    async fn embedded(sync_timeout_ms: &str) -> Target {
        let timeout = sync_timeout_ms.to_string();
        let app = TestApp::start_with(move |a| a.http.sync_timeout_ms = timeout).await;
        Target {
            base: app.base.clone(),
            client: reqwest::Client::new(),
            _app: Some(app),
            _cluster: None,
        }
    }

    async fn distributed(sync_timeout_ms: &str) -> Target {
        let mut cluster = Cluster::new().await;
        let api = cluster.api(&[("SYNC_TIMEOUT_MS", sync_timeout_ms)]);
        let worker = cluster.worker(&[]);
        Target {
            base: api.base.clone(),
            client: reqwest::Client::new(),
            _app: None,
            _cluster: Some((cluster, api, worker)),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).header("x-api-key", KEY)
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// An upload as the original dashboard sends it: settings in headers,
    /// the name percent-encoded, and form fields the original never read.
    async fn upload_like_the_dashboard(&self, source: &str, name: &str) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(source.as_bytes().to_vec()).file_name("main.py"),
            )
            .text("functionId", "ignored-by-the-controller")
            // The deploy page also sends these; the original reads only its headers.
            .text("runtime", "python3.11")
            .text("memoryMb", "128")
            .text("envVars", r#"{"GREETING":"hello","TOKEN":"s3cr3t-value"}"#);
        let resp = self
            .req(reqwest::Method::POST, "/api/upload")
            .header("x-runtime", "python")
            .header("x-memory-mb", "256")
            .header("x-function-name", encode_uri_component(name))
            .multipart(form)
            .send()
            .await
            .expect("upload");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("json"))
    }
}

/// JavaScript's encodeURIComponent, as the dashboard's backend applies it.
fn encode_uri_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const HANDLER: &str = "import time\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    print('side note')\n    return {'doubled': event['n'] * 2}\n";

/// Every row of the function and job contract, in the order a client meets them.
async fn the_original_contract(t: &Target) {
    // POST /upload: 200 {success, functionId}; unknown fields ignored; the name decoded.
    let (status, up) = t.upload_like_the_dashboard(HANDLER, "한글 fn/v1").await;
    assert_eq!(status, 200, "{up}");
    assert_eq!(up["success"], true);
    let id = up["functionId"].as_str().expect("functionId").to_string();
    assert_eq!(up["ignoredFields"], json!(["functionId"]), "{up}");
    assert_eq!(up["function"]["name"], "한글 fn/v1");
    assert_eq!(up["function"]["memoryMb"], 256);

    // GET /functions: a bare array with the original's fields; no env values.
    let (status, list) = t.json(reqwest::Method::GET, "/api/functions", None).await;
    assert_eq!(status, 200);
    let list = list.as_array().expect("a bare array, for Array.isArray");
    let f = list.iter().find(|f| f["functionId"] == id.as_str()).expect("listed");
    for field in [
        "name",
        "description",
        "runtime",
        "memoryMb",
        "invocations",
        "avgDuration",
        "uploadedAt",
    ] {
        assert!(f.get(field).is_some(), "{field} missing: {f}");
    }
    assert!(f.get("avgHandlerDuration").is_some(), "{f}");
    assert!(!f.to_string().contains("s3cr3t-value"), "an env value leaked: {f}");
    assert_eq!(f["envVarNames"], json!(["GREETING", "TOKEN"]));

    // GET /functions/{id}: has `id`.
    let (status, one) = t.json(reqwest::Method::GET, &format!("/functions/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(one["id"], id.as_str());
    assert_eq!(one["runtime"], "python");
    assert!(!one.to_string().contains("s3cr3t-value"), "{one}");

    // PUT with the dashboard's {memory}: 200 {success, functionId}.
    let (status, put) = t
        .json(
            reqwest::Method::PUT,
            &format!("/api/functions/{id}"),
            Some(json!({"memory": 512})),
        )
        .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["success"], true);
    assert_eq!(put["functionId"], id.as_str());
    assert_eq!(put["memoryMb"], 512);

    // POST /run: missing functionId is 400 with the original's words; extra members are ignored.
    let (status, body) = t
        .json(reqwest::Method::POST, "/run", Some(json!({"inputData": {"n": 1}})))
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("functionId is required")));
    let (status, done) = t
        .json(
            reqwest::Method::POST,
            "/api/run",
            Some(json!({"functionId": id, "inputData": {"n": 21}, "extra": true})),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(done["result"], json!({"doubled": 42}));
    assert!(done["jobId"].is_string());
    // The fields the dashboard reads from a result.
    assert!(done["workerId"].as_str().is_some_and(|w| !w.is_empty()), "{done}");
    assert_eq!(done["allocatedMemoryMb"], 512, "{done}");
    assert_eq!(done["exitCode"], 0, "{done}");
    let (worker, handler) = (
        done["durationMs"].as_f64().unwrap(),
        done["handlerDurationMs"].as_f64().unwrap(),
    );
    assert!(worker >= handler && handler >= 0.0, "{done}");
    assert!(done["peakMemoryBytes"].as_u64().unwrap() > 0, "{done}");
    // `stdout || body`: the prints, then the printed return value.
    let stdout = done["stdout"].as_str().unwrap();
    assert!(
        stdout.starts_with("side note\n") && stdout.contains("\"doubled\""),
        "{done}"
    );

    // A failed run: 200 with the failure in the body.
    let (status, failed) = t
        .json(
            reqwest::Method::POST,
            "/run",
            Some(json!({"functionId": id, "inputData": {}})),
        )
        .await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["status"], "FAILED", "the original's word: {failed}");
    assert_ne!(failed["exitCode"], 0, "{failed}");
    assert!(failed["stderr"].as_str().unwrap().contains("KeyError"), "{failed}");

    // A JSON body of 7 MB (the original takes 10 MB; 6 MiB was the limit here).
    let big = "x".repeat(7 * 1024 * 1024);
    let resp = t
        .req(reqwest::Method::POST, "/run")
        .header("x-async", "true")
        .json(&json!({"functionId": id, "inputData": {"n": 1, "pad": big}}))
        .send()
        .await
        .expect("big run");
    assert_eq!(resp.status(), 202, "a 7 MB body is accepted");

    // Async: 202 {status: ACCEPTED, jobId}; /status says `pending` until done.
    let resp = t
        .req(reqwest::Method::POST, "/api/run")
        .header("x-async", "true")
        .json(&json!({"functionId": id, "inputData": {"n": 2, "sleep": 0.5}}))
        .send()
        .await
        .expect("async run");
    assert_eq!(resp.status(), 202);
    let accepted: Value = resp.json().await.unwrap();
    assert_eq!(accepted["status"], "ACCEPTED");
    let job = accepted["jobId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut polls = Vec::new();
    let finished = loop {
        let (code, s) = t.json(reqwest::Method::GET, &format!("/status/{job}"), None).await;
        assert_eq!(code, 200, "{s}");
        if s["status"] != "pending" {
            break s;
        }
        assert!(matches!(s["state"].as_str(), Some("PENDING" | "RUNNING")), "{s}");
        polls.push(s["state"].as_str().unwrap().to_string());
        assert!(Instant::now() < deadline, "still pending: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!polls.is_empty(), "a 0.5 s job is seen pending at least once");
    assert_eq!(finished["status"], "SUCCESS", "{finished}");
    assert_eq!(finished["result"], json!({"doubled": 4}));

    // The sync wait runs out: 200 {status: TIMEOUT} with the jobId to follow.
    let (status, late) = t
        .json(
            reqwest::Method::POST,
            "/run",
            Some(json!({"functionId": id, "inputData": {"n": 3, "sleep": 4}})),
        )
        .await;
    assert_eq!(status, 200, "{late}");
    assert_eq!(late["status"], "TIMEOUT", "{late}");
    assert!(late["message"].as_str().unwrap().to_lowercase().contains("timed out"));
    let late_job = late["jobId"].as_str().expect("jobId").to_string();
    let (_, later) = wait_job_at(&t.client, &t.base, &late_job, Duration::from_secs(30)).await;
    assert_eq!(later["result"], json!({"doubled": 6}), "the job went on");

    // Invocation counters and the average duration reach the list.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, one) = t.json(reqwest::Method::GET, &format!("/functions/{id}"), None).await;
        if one["avgDuration"].as_u64().unwrap_or(0) > 0 && one["invocations"].as_u64().unwrap_or(0) >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no average duration: {one}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nothing runs now: the dashboard's "active jobs" reads 0 (workers
    // report every 5 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = t.json(reqwest::Method::GET, "/system/status", None).await;
        if status["active_jobs"] == 0 && status["status"] == "online" {
            break;
        }
        assert!(Instant::now() < deadline, "an idle platform reports jobs: {status}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // DELETE: {success, deletedId}.
    let (status, del) = t.json(reqwest::Method::DELETE, &format!("/functions/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(del["success"], true);
    assert_eq!(del["deletedId"], id.as_str());
}

#[tokio::test]
async fn the_original_contract_on_infra_up() {
    the_original_contract(&Target::embedded("3000").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_contract_on_infra_api() {
    the_original_contract(&Target::distributed("3000").await).await;
}

/// `GET /logs` and `GET /api/functions/{id}/logs[/{requestId}]` as the
/// dashboard reads them.
async fn the_original_logs(t: &Target) {
    let (_, up) = t.upload_like_the_dashboard(HANDLER, "logged").await;
    let id = up["functionId"].as_str().unwrap().to_string();
    let mut jobs = Vec::new();
    for n in 0..3 {
        let (status, body) = t
            .json(
                reqwest::Method::POST,
                "/run",
                Some(json!({"functionId": id, "inputData": {"n": n}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        jobs.push(body["jobId"].as_str().unwrap().to_string());
    }
    let (status, activity) = t.json(reqwest::Method::GET, "/api/logs", None).await;
    assert_eq!(status, 200);
    let activity = activity.as_array().expect("an array");
    let msgs: Vec<&str> = activity.iter().filter_map(|e| e["msg"].as_str()).collect();
    assert!(msgs.contains(&"Upload Success"), "{msgs:?}");
    assert!(msgs.contains(&"Run Request"), "{msgs:?}");
    let anonymous = t
        .client
        .get(t.url("/functions"))
        .header("x-api-key", "guess-0123456789abcdef");
    assert_eq!(anonymous.send().await.unwrap().status(), 401);
    let (_, activity) = t.json(reqwest::Method::GET, "/api/logs", None).await;
    let activity = activity.as_array().expect("an array");
    let refused = activity
        .iter()
        .find(|e| e["msg"] == "Unauthorized access")
        .expect("logged");
    assert_eq!(
        (refused["level"].as_str(), refused["ip"].as_str()),
        (Some("WARN"), Some("127.0.0.1"))
    );
    assert!(
        !refused.to_string().contains("guess-"),
        "the key sent is not kept: {refused}"
    );
    let executed = activity
        .iter()
        .find(|e| e["msg"] == format!("Function Executed: {id}").as_str())
        .expect("a Function Executed entry");
    assert_eq!(executed["level"], "INFO");
    assert_eq!(executed["requestId"], jobs[2].as_str(), "newest first");
    assert!(
        executed["duration"].is_number() && executed["memory"].is_number(),
        "{executed}"
    );

    // The worker writes the log right after the result.
    let deadline = Instant::now() + Duration::from_secs(15);
    let logs = loop {
        let (status, logs) = t
            .json(
                reqwest::Method::GET,
                &format!("/api/functions/{id}/logs?limit=1000"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{logs}");
        if logs.as_array().map(Vec::len) == Some(3) {
            break logs;
        }
        assert!(Instant::now() < deadline, "logs never arrived: {logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = &logs[0];
    for field in [
        "id",
        "requestId",
        "timestamp",
        "status",
        "duration",
        "memory",
        "message",
    ] {
        assert!(first.get(field).is_some(), "{field} missing: {first}");
    }
    assert_eq!(first["id"], jobs[2].as_str());
    assert_eq!(first["status"], "SUCCESS");
    assert!(first["message"].as_str().unwrap().starts_with("side note\n"), "{first}");
    assert!(first["handlerDurationMs"].as_f64().is_some(), "{first}");
    let (_, since) = t
        .json(
            reqwest::Method::GET,
            &format!("/api/functions/{id}/logs?startTime=2999-01-01T00:00:00Z"),
            None,
        )
        .await;
    assert_eq!(since, json!([]));
    let (status, _) = t
        .json(
            reqwest::Method::GET,
            &format!("/api/functions/{id}/logs?limit=1001"),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, one) = t
        .json(
            reqwest::Method::GET,
            &format!("/api/functions/{id}/logs/{}", jobs[0]),
            None,
        )
        .await;
    assert_eq!(status, 200, "{one}");
    assert!(one["message"].as_str().unwrap().starts_with("side note\n"), "{one}");
    let (status, _) = t
        .json(reqwest::Method::GET, &format!("/api/functions/{id}/logs/nope"), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_original_logs_on_infra_up() {
    the_original_logs(&Target::embedded("300000").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_logs_on_infra_api() {
    the_original_logs(&Target::distributed("300000").await).await;
}

/// The dashboard's backend is Node.js and uses `fetch`: list, async run and
/// poll, logs, and an upload without a key, as it does them.
const NODE_CLIENT: &str = r#"
const [base, key, id] = process.argv.slice(2);
const h = { 'x-api-key': key };
const out = {};
const list = await (await fetch(`${base}/api/functions`, { headers: h })).json();
out.listIsArray = Array.isArray(list);
out.listed = Array.isArray(list) && list.map(f => f.functionId).includes(id);
const run = await fetch(`${base}/api/run`, {
  method: 'POST',
  headers: { ...h, 'content-type': 'application/json', 'x-async': 'true' },
  body: JSON.stringify({ functionId: id, inputData: { n: 5, sleep: 0.3 } }),
});
const accepted = await run.json();
out.runStatus = run.status;
let view = { status: 'pending' };
let polls = 0;
while (view.status === 'pending' && polls < 300) {
  await new Promise(r => setTimeout(r, 100));
  view = await (await fetch(`${base}/api/status/${accepted.jobId}`, { headers: h })).json();
  polls++;
}
out.final = view.status;
out.result = view.result;
const logs = await (await fetch(`${base}/api/functions/${id}/logs?limit=50`, { headers: h })).json();
out.logsIsArray = Array.isArray(logs);
const recent = await (await fetch(`${base}/api/logs`, { headers: h })).json();
out.recentIsArray = Array.isArray(recent);
const form = new FormData();
form.append('file', new Blob(['x'.repeat(3 * 1024 * 1024)]), 'main.py');
try {
  const r = await fetch(`${base}/api/upload`, { method: 'POST', headers: { 'x-api-key': 'wrong' }, body: form });
  out.unauthenticatedUpload = r.status;
  out.unauthenticatedBody = await r.json();
} catch (e) {
  out.unauthenticatedUpload = `fetch failed: ${e.cause ? e.cause.code || e.cause.message : e.message}`;
}
// Refusals that come before an upload is read are answered readably too.
const refusal = async (path, headers) => {
  const f = new FormData();
  f.append('file', new Blob(['x'.repeat(3 * 1024 * 1024)]), 'main.py');
  try {
    const r = await fetch(`${base}${path}`, { method: 'POST', headers: { 'x-api-key': key, ...headers }, body: f });
    return r.status;
  } catch (e) {
    return `fetch failed: ${e.cause ? e.cause.code || e.cause.message : e.message}`;
  }
};
out.badNameUpload = await refusal('/api/upload', { 'x-function-name': '%zz' });
out.wrongPathUpload = await refusal('/api/uplaod', {});
console.log(JSON.stringify(out));
"#;

#[tokio::test]
async fn a_node_fetch_client_like_the_dashboard_backend() {
    let t = Target::embedded("300000").await;
    let (_, up) = t.upload_like_the_dashboard(HANDLER, "node client").await;
    let id = up["functionId"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("client.mjs");
    std::fs::write(&script, NODE_CLIENT).unwrap();
    let base = t.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(&script)
            .args([base.as_str(), KEY, id.as_str()])
            .output()
            .expect("node")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "node failed: {stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{stderr}"));
    assert_eq!(seen["listIsArray"], true, "{seen}");
    assert_eq!(seen["listed"], true, "{seen}");
    assert_eq!(seen["runStatus"], 202, "{seen}");
    assert_eq!(seen["final"], "SUCCESS", "{seen}");
    assert_eq!(seen["result"], json!({"doubled": 10}), "{seen}");
    assert_eq!(seen["logsIsArray"], true, "{seen}");
    assert_eq!(seen["recentIsArray"], true, "{seen}");
    assert_eq!(seen["unauthenticatedUpload"], 401, "{seen}");
    assert!(seen["unauthenticatedBody"]["error"].is_string(), "{seen}");
    assert_eq!(seen["badNameUpload"], 400, "{seen}");
    assert_eq!(seen["wrongPathUpload"], 404, "{seen}");
}

#[test]
fn names_are_encoded_as_the_dashboard_does() {
    assert_eq!(encode_uri_component("a b/é"), "a%20b%2F%C3%A9");
    assert_eq!(encode_uri_component("safe-_.!~*'()"), "safe-_.!~*'()");
}

/// Anyone may send any method token: it must not become a metric series.
#[tokio::test]
async fn invented_methods_do_not_grow_the_metrics() {
    let app = TestApp::start().await;
    for i in 0..20 {
        let m = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        app.client.request(m, app.url("/nope")).send().await.unwrap();
    }
    let metrics = app.metrics().await;
    assert!(!metrics.contains("MADEUP"), "an invented method is a label");
    assert!(metrics.contains(r#"method="other""#), "counted as other");
}

/// The original platform's Python functions as they were written: `main`
/// instead of `handler`, and its `sdk` module.
#[tokio::test]
async fn original_python_functions_run_unchanged() {
    let app = TestApp::start().await;
    let main_only = app
        .upload_py(
            "def main(event, context):\n    return {'from': 'main', 'n': event['n']}\n",
            &[],
        )
        .await;
    let done = app.run_ok(&main_only, json!({"n": 3})).await;
    assert_eq!(done["result"], json!({"from": "main", "n": 3}), "{done}");

    let with_sdk = app
        .upload_py(
            "import sdk\n\ndef handler(event, context):\n    data = sdk.get_input()\n    ctx = sdk.get_context()\n    sdk.return_output({'doubled': data['n'] * 2, 'request': ctx['request_id'], 'memory': ctx['memory_mb']})\n",
            &[("memoryMb", "256")],
        )
        .await;
    let done = app.run_ok(&with_sdk, json!({"n": 21})).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(done["result"]["doubled"], 42, "{done}");
    assert_eq!(done["result"]["request"], done["jobId"], "{done}");
    assert_eq!(done["result"]["memory"], "256", "{done}");
    assert!(
        done["stdout"].as_str().unwrap().contains("\"doubled\""),
        "printed as the original: {done}"
    );
    // The next invocation does not see the last one's output.
    let again = app
        .upload_py(
            "import sdk\n\ndef handler(event, context):\n    if event.get('set'):\n        sdk.return_output('set')\n",
            &[],
        )
        .await;
    assert_eq!(app.run_ok(&again, json!({"set": true})).await["result"], "set");
    assert_eq!(app.run_ok(&again, json!({})).await["result"], Value::Null);
    // A function that ships its own sdk module keeps it.
    let zip = zip_of(&[
        (
            "main.py",
            "import sdk\n\ndef handler(event, context):\n    return sdk.mine()\n",
        ),
        ("sdk.py", "def mine():\n    return 'its own'\n"),
    ]);
    let r = app.upload_raw("own.zip", zip, &[]).await;
    let own = r.json::<Value>().await.unwrap()["functionId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(app.run_ok(&own, json!({})).await["result"], "its own");
    // An explicit handler name does not fall back to main.
    let explicit = app
        .upload_py("def main(event, context):\n    return 1\n", &[("handler", "main.run")])
        .await;
    let (status, body) = app.run(&explicit, json!({})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("FAILED")), "{body}");
}
