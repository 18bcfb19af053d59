//! The web console (`/ui`) and the endpoints made for it: its files as served,
//! and a real headless Chromium driving it end to end
//! (`tests/console/console_test.py`, Playwright) against `infra up`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::TestApp;

#[tokio::test]
async fn console_files_are_served_without_a_key_compressed_and_cacheable() {
    let app = TestApp::start().await;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let resp = plain.get(app.url("/ui")).send().await.unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], "/ui/");

    // No key: the page and its files are public (the API behind them is not).
    let resp = plain
        .get(app.url("/ui/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["cache-control"], "no-cache");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.contains_key("x-request-id"), "the API's request handling applies");

    let html = plain.get(app.url("/ui/")).send().await.unwrap().text().await.unwrap();
    let script = html
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page names its script")
        .to_string();
    assert!(script.starts_with("/ui/app-") && script.ends_with(".js"), "{script}");
    let resp = plain.get(app.url(&script)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(resp.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert!(resp.headers().get("content-encoding").is_none(), "no gzip unless asked");
    let js = resp.bytes().await.unwrap();
    assert!(js.len() > 10_000, "the bundle: {} bytes", js.len());

    // Only the bundle's own files: no path reaches anything else.
    for path in [
        "/ui/nope.js",
        "/ui/..%2fCargo.toml",
        "/ui/%2e%2e%2fapi-key",
        "/ui/index.html%00",
    ] {
        let resp = plain.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("no console file"), "{body}");
        assert!(body["requestId"].is_string(), "{body}");
    }
    let resp = plain.post(app.url("/ui/")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("not allowed"), "{body}");
    // The API keeps its key.
    let resp = plain.get(app.url("/functions")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

/// Waits until the function's stats count `runs` runs (logs land just after
/// a run's answer).
async fn stats_with(app: &TestApp, id: &str, runs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = app
            .get(&format!("/functions/{id}/stats?minutes=5"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        if body["runs"] == runs || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn stats_count_runs_errors_and_cold_starts_per_interval() {
    let app = TestApp::start().await;
    let id = app
        .upload_py(
            "def handler(event, context):\n    if event.get('fail'):\n        raise ValueError('no')\n    return 1\n",
            &[("name", "counted")],
        )
        .await;
    let empty = stats_with(&app, &id, 0).await;
    assert_eq!(empty["runs"], 0);
    assert_eq!(empty["p50Ms"], Value::Null);

    for input in [json!({}), json!({}), json!({}), json!({"fail": true})] {
        app.run(&id, input).await;
    }
    let s = stats_with(&app, &id, 4).await;
    assert_eq!(s["runs"], 4, "{s}");
    assert_eq!(s["errors"], 1);
    assert_eq!(s["errorRate"], 0.25);
    assert_eq!(s["coldStarts"], 1, "one instance, started once: {s}");
    assert_eq!(s["bucketSeconds"], 10);
    assert_eq!(s["complete"], true);
    assert!(s["p50Ms"].as_f64().unwrap() > 0.0);
    assert!(s["p99Ms"].as_f64().unwrap() >= s["p50Ms"].as_f64().unwrap());
    let series = s["series"].as_array().unwrap();
    assert!(series.len() >= 30, "5 minutes of 10 s intervals: {}", series.len());
    let counted: u64 = series.iter().map(|p| p["runs"].as_u64().unwrap()).sum();
    assert_eq!(counted, 4);
    let busy = series.iter().filter(|p| p["runs"] != 0).count();
    assert!((1..=2).contains(&busy), "four quick runs fall in one or two intervals");
    for p in series {
        assert_eq!(
            p["cold"].as_u64().unwrap() + p["warm"].as_u64().unwrap(),
            p["runs"].as_u64().unwrap()
        );
    }

    for (query, status) in [("minutes=0", 400), ("minutes=1441", 400), ("minutes=x", 400)] {
        let resp = app.get(&format!("/functions/{id}/stats?{query}")).send().await.unwrap();
        assert_eq!(resp.status(), status, "{query}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("minutes"), "{body}");
    }
    let resp = app.get("/functions/nope/stats").send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn code_lists_the_functions_files_with_the_text_of_small_ones() {
    let app = TestApp::start().await;
    let source = "def handler(event, context):\n    return 'listed'\n";
    let id = app.upload_py(source, &[("name", "listed")]).await;
    let resp = app.get(&format!("/functions/{id}/code")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["functionId"], id.as_str());
    assert_eq!(
        body["files"],
        json!([{"path": "main.py", "size": source.len(), "text": source}])
    );
    assert_eq!(body["totalFiles"], 1);
    let f = app.fetch_json(&format!("/functions/{id}")).await;
    assert_eq!(body["sha256"], f["sha256"]);

    let resp = app.get("/functions/nope/code").send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = app
        .client
        .get(app.url(&format!("/functions/{id}/code")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "code needs the key");
}

/// Sign in (a wrong key first), deploy from the editor, run sync and async,
/// logs, a chart with the runs, a failing function's error with its request
/// id, workers, dead letters, sign out; and the first load's cost.
#[tokio::test]
async fn the_console_in_a_real_browser() {
    let python = std::env::var("INFRA_TEST_BROWSER_PYTHON").expect(
        "INFRA_TEST_BROWSER_PYTHON is not set: run the tests with scripts/test, \
         which installs Playwright (PyPI) and Chromium (Debian)",
    );
    let chromium = std::env::var("INFRA_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let app = TestApp::start().await;
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/console_test.py");
    let run = tokio::process::Command::new(python)
        .arg(script)
        .args([
            "--url",
            &app.base,
            "--key",
            crate::helpers::KEY,
            "--chromium",
            &chromium,
        ])
        .arg("--screenshot")
        .arg(&shot)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test finishes in 4 minutes")
        .expect("start the browser test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser test failed:\n{stdout}\n{stderr}");
    let load: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("figures");
    eprintln!("console first load: {load} (screenshot {})", shot.display());
    assert_eq!(load["requests"], 3, "page, script, style: {load}");
    let transferred = load["transferBytes"].as_f64().unwrap();
    assert!(transferred > 10_000.0 && transferred < 100_000.0, "{load}");
    assert!(
        load["decodedBytes"].as_f64().unwrap() > 2.0 * transferred,
        "served compressed: {load}"
    );
    let interactive = load["interactiveMs"].as_f64().unwrap();
    assert!(interactive > 0.0 && interactive < 5_000.0, "{load}");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a screenshot was taken"
    );
}
