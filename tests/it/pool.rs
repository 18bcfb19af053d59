//! The warm pool follows each function's warmPool settings and never
//! reserves more memory than the worker's capacity.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// The value of a metric line starting with `prefix` (name and labels).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn wait_idle(app: &TestApp, runtime: &str, id: &str, n: f64) {
    let series = format!(r#"infra_pool_idle_instances{{function="{id}",runtime="{runtime}"}}"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = app.metrics().await;
        // A series without instances is dropped from the output.
        if metric(&m, &series).unwrap_or(0.0) == n {
            return;
        }
        assert!(Instant::now() < deadline, "no {n} warm instances of {id}:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn min_warm_functions_answer_their_first_run_warm() {
    let app = TestApp::start().await;
    let py = app
        .upload_py(
            "import time\nSTARTED = time.time()\ndef handler(event, context):\n    return STARTED\n",
            &[("minWarm", "1")],
        )
        .await;
    let node = app
        .upload_file(
            "index.js",
            "exports.handler = () => 'warm node';\n",
            &[("minWarm", "2")],
        )
        .await;
    wait_idle(&app, "python", &py, 1.0).await;
    wait_idle(&app, "nodejs", &node, 2.0).await;
    let body = app.run_ok(&py, json!({})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["coldStart"], false, "first run of a minWarm function: {body}");
    assert_eq!(body["startKind"], "warm");
    let body = app.run_ok(&node, json!({})).await;
    assert_eq!(
        (body["coldStart"].clone(), body["result"].clone()),
        (json!(false), json!("warm node"))
    );

    // The spec is visible for autoscaling.
    let spec: Value = app.get("/warm-pool").send().await.unwrap().json().await.unwrap();
    assert_eq!(spec["spec"]["runtimes"]["python"]["warmInstances"], 1, "{spec}");
    assert_eq!(spec["spec"]["runtimes"]["nodejs"]["warmMemoryMb"], 256, "{spec}");
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, r#"infra_warm_pool_wanted_instances{runtime="nodejs"}"#),
        Some(4.0),
        "2 minWarm + 2 stem cells"
    );

    // Without minWarm the kept instances are let go.
    let resp = app
        .put(&format!("/functions/{py}"))
        .json(&json!({"minWarm": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    wait_idle(&app, "python", &py, 0.0).await;
}

#[tokio::test]
async fn the_pool_never_exceeds_its_memory_capacity() {
    const CAPACITY_MB: usize = 1024;
    let app = TestApp::start_with(|a| {
        a.pool.memory_mb = CAPACITY_MB.to_string();
        a.pool.worker_concurrency = "16".into();
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let source = format!("import time\ndef handler(event, context):\n    time.sleep(0.2)\n    return {i}\n");
        ids.push(app.upload_py(&source, &[("memoryMb", "128")]).await);
    }
    // Count live instance processes (their private directories) while it runs.
    let instances_dir = app.dir.path().join("instances");
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let watching = watching.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                let n = std::fs::read_dir(&instances_dir).map(|d| d.count()).unwrap_or(0);
                most = most.max(n);
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        })
    };
    let jobs: Vec<String> = futures::future::join_all((0..50).map(|i| app.run_async(&ids[i % 10], json!({})))).await;
    for (i, job) in jobs.iter().enumerate() {
        let (_, body) = app.wait_job(job, Duration::from_secs(60)).await;
        assert_eq!(body["status"], "SUCCESS", "{body}");
        assert_eq!(body["result"], json!(i % 10), "{body}");
    }
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let most_instances = sampler.join().unwrap();
    let m = app.metrics().await;
    let peak = metric(&m, "infra_pool_memory_peak_mb ").unwrap();
    assert!(
        peak <= CAPACITY_MB as f64,
        "peak reservation {peak} MB over {CAPACITY_MB}"
    );
    assert!(peak >= 512.0, "the pool was under pressure: {peak}");
    // 128 MB each, plus at most 4 stem cells (2 per runtime).
    assert!(
        most_instances <= CAPACITY_MB / 128 + 4,
        "{most_instances} instances alive at once"
    );
    assert_eq!(metric(&m, "infra_pool_memory_capacity_mb "), Some(CAPACITY_MB as f64));

    // A function larger than the whole pool ends with a clear error.
    let big = app
        .upload_py("def handler(e, c):\n    return 1\n", &[("memoryMb", "2048")])
        .await;
    let body = app.run_ok(&big, json!({})).await;
    assert_eq!(body["status"], "FAILED");
    assert_eq!(body["error"]["type"], "CapacityExceeded", "{body}");
}
