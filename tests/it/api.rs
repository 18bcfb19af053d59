//! The HTTP API over a real socket: uploads, validation, auth, rate limits,
//! jobs, errors, metrics, models and the OpenAPI document.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn upload_py_and_run_sync() {
    let app = TestApp::start().await;
    let id = app.upload_py(ECHO, &[("name", "echo"), ("memoryMb", "256")]).await;
    let body = app.run_ok(&id, json!({"hello": "world"})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"]["echo"], json!({"hello": "world"}));
    assert_eq!(body["result"]["requestId"], body["jobId"], "context carries the job id");
    for field in [
        "requestId",
        "stdout",
        "stderr",
        "exitCode",
        "durationMs",
        "peakMemoryBytes",
        "coldStart",
    ] {
        assert!(body.get(field).is_some(), "result lacks {field}: {body}");
    }
    assert!(
        body["peakMemoryBytes"].as_u64().unwrap() > 1_000_000,
        "peak memory measured: {body}"
    );

    let f: Value = app.fetch_json(&format!("/functions/{id}")).await;
    assert_eq!(f["name"], "echo");
    assert_eq!(f["memoryMb"], 256);
    assert_eq!(f["runtime"], "python");
}

#[tokio::test]
async fn upload_zip_with_helper_module_and_custom_handler() {
    let app = TestApp::start().await;
    let zip = zip_of(&[
        (
            "app.py",
            "from lib.maths import double\ndef run(event, context):\n    return double(event['n'])\n",
        ),
        ("lib/__init__.py", ""),
        ("lib/maths.py", "def double(n):\n    return n * 2\n"),
    ]);
    let resp = app.upload_raw("bundle.zip", zip, &[("handler", "app.run")]).await;
    assert_eq!(resp.status(), 200);
    let id = resp.json::<Value>().await.unwrap()["functionId"]
        .as_str()
        .unwrap()
        .to_string();
    let body = app.run_ok(&id, json!({"n": 21})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"], 42);
}

#[tokio::test]
async fn settings_from_headers_and_query_like_the_original_controller() {
    let app = TestApp::start().await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(ECHO.as_bytes().to_vec()).file_name("fn.py"),
    );
    let resp = app
        .post("/api/upload?description=from%20query")
        .header("x-runtime", "python")
        .header("x-memory-mb", "512")
        .header("x-function-name", "headers")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["function"]["memoryMb"], 512);
    assert_eq!(body["function"]["name"], "headers");
    assert_eq!(body["function"]["description"], "from query");
    assert_eq!(body["function"]["originalName"], "fn.py");
}

#[tokio::test]
async fn async_run_goes_through_pending_to_success() {
    let app = TestApp::start().await;
    let id = app
        .upload_py(
            "import time\ndef handler(event, context):\n    time.sleep(0.4)\n    return event['x'] + 1\n",
            &[],
        )
        .await;
    let job = app.run_async(&id, json!({"x": 1})).await;
    let (first_status, first) = app.status(&job).await;
    assert_eq!(first_status, 200);
    // The original's clients poll while `status` is `pending`.
    assert_eq!(first["status"], "pending", "{first}");
    assert!(
        matches!(first["state"].as_str(), Some("PENDING" | "RUNNING")),
        "{first}"
    );
    assert_eq!(first["jobId"], job.as_str());
    let (seen, done) = app.wait_job(&job, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(done["result"], 2);
    assert!(seen.contains(&"RUNNING".to_string()), "saw {seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("SUCCESS"));
}

#[tokio::test]
async fn auth_is_required_except_for_health_and_metrics() {
    let app = TestApp::start().await;
    let anon = reqwest::Client::new();
    for path in ["/functions", "/api/functions", "/system/status", "/status/x"] {
        let r = anon.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "Unauthorized", "{body}");
        assert!(body["message"].as_str().unwrap().contains("x-api-key"), "{body}");
        assert!(body["requestId"].is_string());
    }
    let wrong = anon
        .get(app.url("/functions"))
        .header("x-api-key", "test-api-key-012345678X")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let r = anon
        .post(app.url("/run"))
        .json(&json!({"functionId": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for path in [
        "/health",
        "/metrics",
        "/api/health",
        "/openapi.json",
        "/models",
        "/api/models",
    ] {
        assert_eq!(anon.get(app.url(path)).send().await.unwrap().status(), 200, "{path}");
    }
}

#[tokio::test]
async fn rate_limit_allows_100_uploads_and_runs_per_minute_then_429() {
    let app = TestApp::start_with(|a| a.http.rate_limit_per_minute = "100".into()).await;
    let run = || app.post("/run").json(&json!({"functionId": "missing"})).send();
    let mut last_remaining = None;
    for _ in 0..100 {
        let r = run().await.unwrap();
        assert_eq!(r.status(), 404, "counted whatever the outcome");
        assert_eq!(r.headers()["x-ratelimit-limit"], "100");
        last_remaining = Some(r.headers()["x-ratelimit-remaining"].to_str().unwrap().to_string());
    }
    assert_eq!(last_remaining.as_deref(), Some("0"));
    let r = run().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "Too Many Requests", "{body}");
    assert!(body["message"].as_str().unwrap().contains("rate limit"), "{body}");
    // Uploads share the budget; reads are not limited; probes neither.
    let up = app.upload_raw("main.py", ECHO.as_bytes().to_vec(), &[]).await;
    assert_eq!(up.status(), 429);
    let list = app.get("/functions").send().await.unwrap();
    assert_eq!(list.status(), 200);
    assert!(!list.headers().contains_key("x-ratelimit-limit"));
    assert_eq!(app.client.get(app.url("/health")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn invalid_settings_get_400_listing_every_problem() {
    let app = TestApp::start().await;
    for (fields, needle) in [
        (
            vec![("memoryMb", "64")],
            "memoryMb must be an integer from 128 to 10240",
        ),
        (vec![("memoryMb", "10241")], "memoryMb"),
        (vec![("memoryMb", "lots")], "memoryMb"),
        (vec![("runtime", "ruby")], "runtime \"ruby\" is not supported"),
        (vec![("envVars", "[1,2]")], "envVars"),
        (vec![("handler", "nohandler")], "handler"),
    ] {
        let r = app.upload_raw("main.py", ECHO.as_bytes().to_vec(), &fields).await;
        assert_eq!(r.status(), 400, "{fields:?}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(needle), "{fields:?}: {body}");
    }
    let r = app
        .upload_raw(
            "main.py",
            ECHO.as_bytes().to_vec(),
            &[("memoryMb", "1"), ("runtime", "go")],
        )
        .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["details"].as_array().map(Vec::len),
        Some(2),
        "both problems listed: {body}"
    );
}

#[tokio::test]
async fn bad_files_and_zips_get_400() {
    let app = TestApp::start().await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "evil.zip",
            zip_of(&[("main.py", ECHO), ("../x", "owned")]),
            "unsafe path",
        ),
        (
            "abs.zip",
            zip_of(&[("main.py", ECHO), ("/etc/cron.d/x", "owned")]),
            "unsafe path",
        ),
        ("nohandler.zip", zip_of(&[("other.py", ECHO)]), "main.py"),
        (
            "broken.zip",
            b"PK\x03\x04 this is not really a zip".to_vec(),
            "not a valid zip archive",
        ),
        ("notes.txt", b"hello".to_vec(), "unsupported file type"),
        ("empty.py", Vec::new(), "empty"),
        ("latin1.py", vec![0xe9, 0xff], "not UTF-8"),
    ];
    for (name, data, needle) in cases {
        let r = app.upload_raw(name, data, &[]).await;
        assert_eq!(r.status(), 400, "{name}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(needle), "{name}: {body}");
    }
    // No file at all, and a body that is not multipart.
    let r = app
        .post("/upload")
        .multipart(reqwest::multipart::Form::new().text("name", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app.post("/upload").json(&json!({"file": "x"})).send().await.unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    // Nothing was stored by any of these.
    let list: Value = app.fetch_json("/functions").await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn uploads_over_50_mb_get_413() {
    let app = TestApp::start().await;
    let mut big = b"def handler(e, c):\n    return 1\n".to_vec();
    big.resize(50 * 1024 * 1024 + 1, b'#');
    let r = app.upload_raw("main.py", big, &[]).await;
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("50 MiB"), "{body}");
    // Exactly at the limit is fine.
    let mut edge = b"def handler(e, c):\n    return 1\n".to_vec();
    edge.resize(50 * 1024 * 1024, b'#');
    assert_eq!(app.upload_raw("main.py", edge, &[]).await.status(), 200);
}

#[tokio::test]
async fn unknown_function_and_job_get_404() {
    let app = TestApp::start().await;
    let (status, body) = app.run("no-such-function", json!({})).await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("no-such-function"), "{body}");
    assert_eq!(app.get("/functions/nope").send().await.unwrap().status(), 404);
    assert_eq!(app.delete("/functions/nope").send().await.unwrap().status(), 404);
    let (status, _) = app.status("no-such-job").await;
    assert_eq!(status, 404);
    let r = app.get("/no/such/route").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("no route"));
}

#[tokio::test]
async fn malformed_json_gets_a_json_4xx() {
    let app = TestApp::start().await;
    let r = app
        .post("/run")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = app
        .post("/run")
        .json(&json!({"functionId": "x", "surprise": 1}))
        .send()
        .await
        .unwrap();
    // Unknown members are ignored, as by the original: the id decides.
    assert_eq!(r.status(), 404);
    let r = app.post("/run").json(&json!({"inputData": {}})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "functionId is required");
    let r = app.post("/run").json(&json!({"functionId": ""})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = app.post("/run").body("{}").send().await.unwrap();
    assert_eq!(r.status(), 415, "missing content type");
}

#[tokio::test]
async fn request_id_is_echoed_and_reaches_errors() {
    let app = TestApp::start().await;
    let r = app
        .get("/functions/nope")
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc-123");
    assert_eq!(r.json::<Value>().await.unwrap()["requestId"], "trace-abc-123");
    let r = app.get("/functions").send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(
        uuid::Uuid::parse_str(&generated).is_ok(),
        "a UUID is made when none is sent"
    );
}

#[tokio::test]
async fn sync_wait_past_its_limit_answers_timeout_with_the_job_id() {
    let app = TestApp::start_with(|a| a.http.sync_timeout_ms = "500".into()).await;
    let id = app
        .upload_py(
            "import time\ndef handler(e, c):\n    time.sleep(1.5)\n    return 'late'\n",
            &[],
        )
        .await;
    let (status, body) = app.run(&id, json!({})).await;
    // As the original: 200 with status TIMEOUT; plus the jobId to follow it.
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "TIMEOUT", "{body}");
    assert!(body["message"].as_str().unwrap().contains("timed out"), "{body}");
    let job = body["jobId"].as_str().expect("jobId in the timeout").to_string();
    let (_, done) = app.wait_job(&job, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "SUCCESS");
    assert_eq!(done["result"], "late");
}

#[tokio::test]
async fn put_replaces_code_and_settings_and_delete_removes_everything() {
    let app = TestApp::start().await;
    let id = app.upload_py("def handler(e, c):\n    return 'v1'\n", &[]).await;
    assert_eq!(app.run_ok(&id, json!({})).await["result"], "v1");
    let artifacts = app.dir.path().join("artifacts");
    let before = files_under(&artifacts);
    assert_eq!(before.len(), 1);

    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"def handler(e, c):\n    return 'v2'\n".to_vec()).file_name("main.py"),
        )
        .text("description", "second");
    let r = app
        .put(&format!("/functions/{id}"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["description"], "second");
    assert!(updated["updatedAt"].is_string());
    assert_eq!(app.run_ok(&id, json!({})).await["result"], "v2", "new code runs");
    let after = files_under(&artifacts);
    assert_eq!(after.len(), 1, "the replaced artifact is removed: {after:?}");
    assert_ne!(before, after);

    let r = app
        .put(&format!("/functions/{id}"))
        .json(&json!({"memoryMb": 1024, "envVars": {"A": "b"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["memoryMb"], 1024);
    // Values never leave the server; names do.
    assert_eq!(updated["envVarNames"], json!(["A"]));
    assert!(updated.get("envVars").is_none(), "{updated}");
    assert_eq!(updated["success"], true);
    assert_eq!(
        files_under(&artifacts),
        after,
        "settings-only update keeps the artifact"
    );
    let r = app
        .put(&format!("/functions/{id}"))
        .json(&json!({"memoryMb": 99999}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .put(&format!("/functions/{id}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "an empty update changes nothing");
    let unchanged: Value = r.json().await.unwrap();
    assert_eq!(unchanged["memoryMb"], 1024);
    let r = app
        .put(&format!("/functions/{id}"))
        .json(&json!(["memoryMb", 256]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "a body that is not an object");

    let r = app.delete(&format!("/functions/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(files_under(&artifacts).is_empty(), "artifacts deleted");
    assert_eq!(app.get(&format!("/functions/{id}")).send().await.unwrap().status(), 404);
    assert_eq!(app.run(&id, json!({})).await.0, 404);
}

#[tokio::test]
async fn functions_list_counts_invocations() {
    let app = TestApp::start().await;
    let a = app.upload_py(ECHO, &[("name", "a")]).await;
    let b = app.upload_py(ECHO, &[("name", "b")]).await;
    for _ in 0..3 {
        app.run_ok(&a, json!({})).await;
    }
    app.run_ok(&b, json!({})).await;
    let list: Value = app.fetch_json("/api/functions").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let count =
        |id: &str| list.as_array().unwrap().iter().find(|f| f["functionId"] == id).unwrap()["invocations"].clone();
    assert_eq!(count(&a), 3);
    assert_eq!(count(&b), 1);
}

#[tokio::test]
async fn metrics_expose_http_invocations_and_starts() {
    // No stem cells: the first start is deterministically a fresh process.
    let app = TestApp::start_with(|a| a.pool.stem_cells = "0".into()).await;
    let id = app.upload_py(ECHO, &[]).await;
    app.run_ok(&id, json!({})).await;
    app.run_ok(&id, json!({})).await;
    let _ = app.get("/functions/missing").send().await.unwrap();
    let text = app.metrics().await;
    assert!(
        text.contains(r#"http_request_duration_seconds_count{method="POST",route="/run",status_code="200"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/functions/{id}",status_code="404""#),
        "route templates, not raw paths"
    );
    assert!(text.contains(&format!(
        r#"infra_invocations_total{{function="{id}",status="SUCCESS"}} 2"#
    )));
    assert!(text.contains(r#"infra_instance_starts_total{kind="fresh"} 1"#));
    assert!(text.contains(r#"infra_instance_starts_total{kind="warm"} 1"#));
    assert!(text.contains("infra_warm_instances 1"));
    for stage in ["lookup", "record", "queue"] {
        assert!(
            text.contains(&format!(r#"infra_admission_stage_seconds_count{{stage="{stage}"}} 2"#)),
            "each admission stage is timed: {stage}"
        );
    }
}

#[tokio::test]
async fn health_reports_each_backend() {
    let app = TestApp::start().await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    for check in ["artifacts", "registry", "queue", "resultBus", "rateLimiter"] {
        assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
    }
    // It runs functions, so it says in which runtimes (the test command installs Node.js).
    for runtime in ["python", "nodejs"] {
        assert_eq!(body["runtimes"][runtime], json!({"available": true}), "{body}");
    }
    assert_eq!(body["runtimes"]["go"]["available"], false, "{body}");
    // Break the artifact store: health must say so.
    std::fs::remove_dir_all(app.dir.path().join("artifacts")).unwrap();
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["artifacts"]["ok"], false);
    assert_eq!(body["checks"]["registry"]["ok"], true);
}

#[tokio::test]
async fn models_come_from_the_ai_node_or_a_marked_fallback() {
    let node = crate::ai::FakeOllama::start().await;
    let app = TestApp::start_with(|a| a.ai.ai_node_url = Some(node.url.clone())).await;
    let body: Value = app.fetch_json("/models").await;
    assert_eq!(body["available"], true, "{body}");
    assert_eq!(body["source"], "ai-node");
    let names: Vec<_> = body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["llama3:8b", "qwen2:0.5b"]);

    let unset = TestApp::start().await;
    let r = unset.get("/models").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["available"], false);
    assert_eq!(body["source"], "fallback");
    assert!(body["reason"].as_str().unwrap().contains("AI_NODE_URL"));

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = TestApp::start_with(|a| a.ai.ai_node_url = Some(format!("http://{closed}"))).await;
    let body: Value = down.get("/models").send().await.unwrap().json().await.unwrap();
    assert_eq!(body["source"], "fallback");
    assert!(body["reason"].as_str().unwrap().contains("unreachable"), "{body}");
}

#[tokio::test]
async fn openapi_document_matches_the_served_routes() {
    let app = TestApp::start().await;
    let doc: Value = app.public_json("/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut listed: Vec<_> = paths.keys().cloned().collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "/dead-letters",
            "/dead-letters/redrive",
            "/functions",
            "/functions/{id}",
            "/functions/{id}/code",
            "/functions/{id}/logs",
            "/functions/{id}/logs/{requestId}",
            "/functions/{id}/recommendation",
            "/functions/{id}/stats",
            "/health",
            "/logs",
            "/metrics",
            "/models",
            "/run",
            "/status/{jobId}",
            "/status/{jobId}/files/{path}",
            "/system/status",
            "/upload",
            "/warm-pool"
        ]
    );
    // Every documented operation is served, at both prefixes.
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            for prefix in ["", "/api"] {
                let url = app.url(&format!(
                    "{prefix}{}",
                    path.replace("{id}", "x").replace("{jobId}", "x").replace("{path}", "x")
                ));
                let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let r = app
                    .client
                    .request(m, url)
                    .header("x-api-key", KEY)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body = r.text().await.unwrap();
                assert!(
                    !body.contains("no route for") && status != 405,
                    "{method} {prefix}{path}: {status} {body}"
                );
            }
        }
    }
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
}

/// Rejections made outside the handlers (path decoding, body limits) are
/// the same JSON error as every other.
#[tokio::test]
async fn every_rejection_is_a_json_error() {
    let app = TestApp::start().await;
    for (method, path) in [
        (reqwest::Method::GET, "/functions/%ff%fe"),
        (reqwest::Method::GET, "/api/status/%c3%28"),
        (reqwest::Method::GET, "/dead-letters?limit=abc"),
    ] {
        let r = app
            .client
            .request(method.clone(), app.url(path))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{method} {path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        assert!(body["requestId"].is_string(), "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn garbage_input_never_gets_a_5xx() {
    let app = TestApp::start().await;
    let id = app.upload_py(ECHO, &[]).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"".to_vec()),
        ("application/json", b"\xff\xfe\x00garbage".to_vec()),
        ("application/json", b"[]".to_vec()),
        ("application/json", b"null".to_vec()),
        ("application/json", br#"{"functionId": 5}"#.to_vec()),
        ("application/json", br#"{"functionId": "x", "inputData": "#.to_vec()),
        ("application/json", deep.into_bytes()),
        (
            "application/json",
            format!(r#"{{"functionId":"{id}","modelId":""}}"#).into_bytes(),
        ),
        (
            "multipart/form-data; boundary=zzz",
            b"--zzz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.py\"\r\n\r\nx".to_vec(),
        ),
        ("multipart/form-data", b"no boundary".to_vec()),
        ("text/plain", b"hello".to_vec()),
    ];
    let paths = [
        "/upload".to_string(),
        "/run".to_string(),
        format!("/functions/{id}"),
        "/functions/..%2F..%2Fetc".to_string(),
    ];
    for path in &paths {
        for method in [reqwest::Method::POST, reqwest::Method::PUT] {
            for (ct, body) in &bodies {
                let r = app
                    .client
                    .request(method.clone(), app.url(path))
                    .header("x-api-key", KEY)
                    .header("content-type", *ct)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                assert!(status.as_u16() < 500, "{method} {path} {ct}: {status}");
                if status.is_client_error() {
                    let body: Value = r
                        .json()
                        .await
                        .unwrap_or_else(|e| panic!("{method} {path} {ct}: non-JSON error body: {e}"));
                    assert!(body["error"].is_string());
                }
            }
        }
    }
    // The function is untouched and the server still serves.
    assert_eq!(
        app.run_ok(&id, json!({"still": "ok"})).await["result"]["echo"]["still"],
        "ok"
    );
}

#[tokio::test]
async fn system_status_shows_the_worker_and_its_warm_pool() {
    let app = TestApp::start().await;
    let id = app.upload_py(ECHO, &[]).await;
    app.run_ok(&id, json!({})).await;
    // The worker reports every few seconds; the first report is at start.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = app.fetch_json("/system/status").await;
        assert_eq!(body["status"], "online", "{body}");
        assert_eq!(body["totals"]["workers"], 1);
        assert_eq!(body["workers"][0]["concurrency"], 4);
        if body["workers"][0]["pools"][&id] == 1 {
            assert_eq!(body["totals"]["warmInstances"], 1);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "pool never reported: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn infra_up_keeps_invocation_logs() {
    let app = TestApp::start().await;
    let id = app
        .upload_py(
            "def handler(event, context):\n    print('hi', event['n'])\n    raise RuntimeError('boom')\n",
            &[],
        )
        .await;
    let body = app.run_ok(&id, json!({"n": 5})).await;
    let job = body["jobId"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.get(&format!("/functions/{id}/logs/{job}")).send().await.unwrap();
        if r.status() == 200 {
            let entry: Value = r.json().await.unwrap();
            assert_eq!(entry["status"], "FAILED");
            assert_eq!(entry["stdout"], "hi 5\n");
            assert_eq!(entry["error"]["type"], "RuntimeError");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "log never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list: Value = app.fetch_json(&format!("/functions/{id}/logs")).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["requestId"], job.as_str());
    assert_eq!(list[0]["id"], job.as_str());
    assert_eq!(
        app.get(&format!("/functions/{id}/logs?limit=0"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(app.get("/functions/unknown/logs").send().await.unwrap().status(), 404);
}

/// `curl -F file=<main.py` sends no filename: the content decides.
#[tokio::test]
async fn uploads_without_a_filename_are_taken_by_their_content() {
    let app = TestApp::start().await;
    let upload = |data: Vec<u8>, runtime: Option<&'static str>| {
        let mut form = reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(data));
        if let Some(r) = runtime {
            form = form.text("runtime", r);
        }
        app.post("/upload").multipart(form).send()
    };
    let r = upload(b"def handler(e, c):\n    return 'py'\n".to_vec(), None)
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let py = body["functionId"].as_str().expect("registered").to_string();
    assert_eq!(body["function"]["runtime"], "python", "{body}");
    let r = upload(b"exports.handler = async () => 'js';\n".to_vec(), Some("nodejs"))
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let js = body["functionId"].as_str().expect("registered").to_string();
    let zip = zip_of(&[("main.py", "def handler(e, c):\n    return 'zip'\n")]);
    let r = upload(zip, None).await.unwrap();
    let body: Value = r.json().await.unwrap();
    let zipped = body["functionId"].as_str().expect("registered").to_string();
    for (id, want) in [(py, "py"), (js, "js"), (zipped, "zip")] {
        assert_eq!(app.run_ok(&id, json!({})).await["result"], want);
    }
}

/// Every field the document lists for the upload form is taken by the
/// server under that name, with a value of the documented type.
#[tokio::test]
async fn every_documented_upload_field_is_accepted() {
    let app = TestApp::start().await;
    let doc: Value = app.public_json("/openapi.json").await;
    let form = &doc["components"]["schemas"]["UploadForm"]["properties"];
    let fields = form.as_object().expect("UploadForm properties");
    assert!(fields.len() > 10, "{form}");
    let mut sent = Vec::new();
    for (name, schema) in fields {
        if name == "file" {
            continue;
        }
        let value = match (schema["type"].as_str(), name.as_str()) {
            (_, "handler") => "main.handler".to_string(),
            (_, "envVars") => r#"{"A":"b"}"#.to_string(),
            (Some("integer"), _) => {
                let (min, max) = (schema["minimum"].as_u64().unwrap(), schema["maximum"].as_u64().unwrap());
                min.max(1).min(max).max(min).to_string()
            }
            (Some("boolean"), _) => "true".to_string(),
            (Some("string"), _) if schema["enum"].is_array() => schema["enum"][0].as_str().unwrap().to_string(),
            (Some("string"), _) => format!("value of {name}"),
            other => panic!("{name}: undocumented type {other:?}"),
        };
        sent.push((name.clone(), value));
    }
    let fields: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = app.upload_raw("main.py", ECHO.as_bytes().to_vec(), &fields).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{fields:?}: {body}");
    assert!(
        body.get("ignoredFields").is_none(),
        "a documented field was ignored: {body}"
    );
    // And the same names as JSON on PUT.
    let id = body["functionId"].as_str().unwrap();
    let json: serde_json::Map<String, Value> = doc["components"]["schemas"]["UpdateRequest"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|k| {
            let (_, v) = sent.iter().find(|(n, _)| n == k)?;
            let v = match k.as_str() {
                "envVars" => json!({"A": "c"}),
                _ => serde_json::from_str(v).unwrap_or(Value::String(v.clone())),
            };
            Some((k.clone(), v))
        })
        .collect();
    assert_eq!(json.len(), sent.len(), "the JSON update documents every setting");
    let r = app.put(&format!("/functions/{id}")).json(&json).send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{json:?}: {body}");
    assert!(body.get("ignoredFields").is_none(), "{body}");
}

/// A client that never finishes its request headers (slowloris) loses the
/// connection after the header read timeout, while others are served.
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start().await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        app.get("/health").send().await.unwrap().status(),
        200,
        "others are served meanwhile"
    );
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(
        infra_controller::app::HEADER_READ_TIMEOUT + std::time::Duration::from_secs(10),
        slow.read(&mut buf),
    )
    .await
    .expect("the server closes the connection");
    // Closed (0 bytes), reset, or at most an error answer: never left open.
    if let Ok(n) = closed {
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            n == 0 || text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 4"),
            "{text}"
        );
    }
    assert!(started.elapsed() >= infra_controller::app::HEADER_READ_TIMEOUT - std::time::Duration::from_secs(1));
}
