//! Node.js functions in real Node processes: sync, async and callback
//! handlers, errors, limits, stem cells, a clean environment, the AI SDK.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::ai::FakeOllama;
use crate::helpers::*;

#[tokio::test]
async fn sync_handler_runs_and_its_instance_is_reused() {
    let app = TestApp::start().await;
    let id = app
        .upload_file(
            "index.js",
            "exports.handler = (event, context) => {\n  console.log('adding', event.a, event.b);\n  console.error('to stderr');\n  return { sum: event.a + event.b, fn: context.functionId, left: context.getRemainingTimeInMillis() > 0 };\n};\n",
            &[],
        )
        .await;
    let f = app.get(&format!("/functions/{id}")).send().await.unwrap();
    let f: serde_json::Value = f.json().await.unwrap();
    assert_eq!(f["runtime"], "nodejs", "the .js extension picks the runtime: {f}");
    assert_eq!(f["handler"], "index.handler");
    let body = app.run_ok(&id, json!({"a": 2, "b": 3})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"], json!({"sum": 5, "fn": id, "left": true}));
    // What it printed, then its return value printed (as the original's clients read it).
    let stdout = body["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("adding 2 3\n"), "{stdout}");
    let printed: serde_json::Value = serde_json::from_str(stdout.trim_end().lines().last().unwrap()).unwrap();
    assert_eq!(printed, body["result"]);
    assert_eq!(body["stderr"], "to stderr\n");
    assert_eq!(body["coldStart"], true);
    assert!(body["peakMemoryBytes"].as_u64().unwrap() > 1_000_000, "{body}");
    let again = app.run_ok(&id, json!({"a": 1, "b": 1})).await;
    assert_eq!(again["result"]["sum"], 2);
    assert_eq!(again["coldStart"], false);
    assert_eq!(again["startKind"], "warm");
}

#[tokio::test]
async fn async_esm_and_callback_handlers() {
    let app = TestApp::start().await;
    let promise = app
        .upload_file(
            "index.js",
            "exports.handler = async (event) => {\n  await new Promise((r) => setTimeout(r, 30));\n  return { waited: true, got: event.x };\n};\n",
            &[],
        )
        .await;
    let body = app.run_ok(&promise, json!({"x": "y"})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"], json!({"waited": true, "got": "y"}));
    // The handler's time includes its awaited timer (libuv measures timers
    // from its cached loop time, so a 30 ms timer can end a little earlier
    // than 30 ms after the handler started).
    assert!(body["durationMs"].as_f64().unwrap() >= 25.0, "{body}");

    let esm = app
        .upload_file(
            "handler.mjs",
            "export async function handler(event) { return `esm ${event.n * 2}`; }\n",
            &[],
        )
        .await;
    let body = app.run_ok(&esm, json!({"n": 21})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"], "esm 42");

    let callback = app
        .upload_file(
            "index.js",
            "exports.handler = (event, context, callback) => { setTimeout(() => callback(null, {cb: event.v}), 10); };\n",
            &[],
        )
        .await;
    let body = app.run_ok(&callback, json!({"v": 7})).await;
    assert_eq!(body["result"], json!({"cb": 7}), "{body}");
}

#[tokio::test]
async fn thrown_errors_and_rejections_are_errors_with_stacks() {
    let app = TestApp::start().await;
    let id = app
        .upload_file(
            "index.js",
            "function check(x) { if (x < 0) throw new TypeError(`negative: ${x}`); return x; }\nexports.handler = async (event) => {\n  if (event.reject) return Promise.reject(new RangeError('rejected'));\n  if (event.string) throw 'a plain string';\n  return check(event.x);\n};\n",
            &[],
        )
        .await;
    let body = app.run_ok(&id, json!({"x": -1})).await;
    assert_eq!(body["status"], "FAILED", "{body}");
    assert_eq!(body["error"]["type"], "TypeError");
    assert_eq!(body["error"]["message"], "negative: -1");
    let stack = body["error"]["traceback"].as_str().unwrap();
    assert!(stack.contains("at check"), "{stack}");
    let body = app.run_ok(&id, json!({"reject": true})).await;
    assert_eq!(body["error"]["type"], "RangeError", "{body}");
    let body = app.run_ok(&id, json!({"string": true})).await;
    assert_eq!(body["status"], "FAILED");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("a plain string"),
        "{body}"
    );
    // A thrown error does not spoil the instance.
    let ok = app.run_ok(&id, json!({"x": 4})).await;
    assert_eq!(ok["result"], 4);
    assert_eq!(ok["coldStart"], false);

    // An error escaping the handler (a timer) fails the run and the instance is replaced.
    let escaped = app
        .upload_file(
            "index.js",
            "exports.handler = () => new Promise(() => { setTimeout(() => { throw new Error('from a timer'); }, 5); });\n",
            &[],
        )
        .await;
    let body = app.run_ok(&escaped, json!({})).await;
    assert_eq!(body["status"], "FAILED", "{body}");
    assert_eq!(body["error"]["message"], "from a timer");
    let body = app.run_ok(&escaped, json!({})).await;
    assert_eq!(body["coldStart"], true, "not reused after an escaped error: {body}");

    let broken = app.upload_file("index.js", "exports.handler = (", &[]).await;
    let body = app.run_ok(&broken, json!({})).await;
    assert_eq!(body["status"], "FAILED");
    assert_eq!(body["error"]["type"], "SyntaxError", "{body}");
}

#[tokio::test]
async fn node_limits_timeout_and_memory() {
    let app = TestApp::start().await;
    let spin = app
        .upload_file(
            "index.js",
            "exports.handler = () => { for (;;) {} };\n",
            &[("timeoutMs", "1000")],
        )
        .await;
    let t0 = Instant::now();
    let body = app.run_ok(&spin, json!({})).await;
    assert_eq!(body["status"], "TIMEOUT", "{body}");
    assert!(t0.elapsed() < Duration::from_millis(2500), "{:?}", t0.elapsed());

    // Both ways a Node function runs out: the JS heap (V8 aborts) and buffers (catchable).
    let hog = app
        .upload_file(
            "index.js",
            "exports.handler = (event) => {\n  const keep = [];\n  if (event.buffers) { for (;;) keep.push(Buffer.alloc(16 * 1024 * 1024, 1)); }\n  for (;;) keep.push(new Array(1e6).fill(1.5));\n};\n",
            &[("memoryMb", "128")],
        )
        .await;
    for input in [json!({}), json!({"buffers": true})] {
        let body = app.run_ok(&hog, input.clone()).await;
        assert_eq!(body["status"], "OOM", "{input}: {body}");
    }
    let fine = app
        .upload_file("index.js", "exports.handler = () => 'fine';\n", &[("memoryMb", "128")])
        .await;
    assert_eq!(app.run_ok(&fine, json!({})).await["status"], "SUCCESS");
}

#[tokio::test]
async fn node_stem_cells_take_the_code_and_environment() {
    let app = TestApp::start().await;
    // Wait for the Node stem cells.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app
        .metrics()
        .await
        .contains(r#"infra_pool_stem_cells{runtime="nodejs"} 2"#)
    {
        assert!(Instant::now() < deadline, "stem cells did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = app
        .upload_file(
            "index.js",
            "exports.handler = () => ({ own: process.env.GREETING, key: process.env.INFRA_API_KEY || null, keys: Object.keys(process.env).sort() });\n",
            &[("envVars", r#"{"GREETING":"hi"}"#)],
        )
        .await;
    let body = app.run_ok(&id, json!({})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["startKind"], "stem", "{body}");
    assert_eq!(body["result"]["own"], "hi");
    assert_eq!(body["result"]["key"], json!(null));
    let keys: Vec<&str> = body["result"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(
        keys.iter()
            .all(|k| ["GREETING", "HOME", "LANG", "PATH", "PWD", "TMPDIR"].contains(k)),
        "only the function's own and a few basics: {keys:?}"
    );
}

#[tokio::test]
async fn node_handlers_ask_the_ai_node() {
    let node = FakeOllama::start().await;
    let app = TestApp::start_with(|a| a.ai.ai_node_url = Some(node.url.clone())).await;
    let id = app
        .upload_file(
            "index.js",
            "const ai = require('infra_ai');\nexports.handler = async (event, context) => {\n  const [a, b] = await Promise.all([ai.generate('one two'), context.ai.generate('three', { temperature: 0.1 })]);\n  try { await ai.generate('x', { model: 'nope:1b' }); } catch (e) { return { a, b, err: e.name }; }\n};\n",
            &[],
        )
        .await;
    let body = app.run_ok(&id, json!({})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"]["a"], "echo: one two");
    assert_eq!(body["result"]["b"], "echo: three");
    assert_eq!(body["result"]["err"], "AIError");
    assert_eq!(body["usage"]["calls"], 3, "{body}");
}

#[tokio::test]
async fn an_instance_that_leaves_a_child_running_is_not_reused() {
    let app = TestApp::start().await;
    let id = app
        .upload_file(
            "index.js",
            "const { spawn } = require('child_process');\nexports.handler = (event) => {\n  if (event.leave) spawn('sleep', ['30'], { stdio: 'ignore' });\n  return process.pid;\n};\n",
            &[],
        )
        .await;
    let first = app.run_ok(&id, json!({})).await;
    let again = app.run_ok(&id, json!({"leave": true})).await;
    assert_eq!(again["coldStart"], false, "{again}");
    assert_eq!(first["result"], again["result"], "the same instance served both");
    let after = app.run_ok(&id, json!({})).await;
    assert_eq!(after["status"], "SUCCESS");
    assert_eq!(
        after["coldStart"], true,
        "the instance with a stray child was retired: {after}"
    );
}
