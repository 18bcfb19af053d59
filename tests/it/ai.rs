//! Functions calling the AI node through their worker. The node is a server
//! of the tests' own speaking Ollama's documented API (`/api/tags`,
//! `/api/generate`, `/api/chat`; single-object and NDJSON-streamed replies),
//! since Ollama and its model weights cannot be installed here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde_json::{json, Value};

use crate::helpers::*;

pub const MODELS: [&str; 2] = ["llama3:8b", "qwen2:0.5b"];

/// A deterministic Ollama: the model echoes the prompt (or the last chat
/// message); `prompt_eval_count` is the prompt's word count and `eval_count`
/// the reply's.
pub struct FakeOllama {
    pub url: String,
    /// Every generate/chat request body received.
    pub requests: Arc<Mutex<Vec<Value>>>,
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

async fn answer(kind: &'static str, requests: Arc<Mutex<Vec<Value>>>, body: Value) -> Response {
    requests.lock().unwrap().push(body.clone());
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if !MODELS.contains(&model.as_str()) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("model '{model}' not found")})),
        )
            .into_response();
    }
    let input = match kind {
        "generate" => body["prompt"].as_str().unwrap_or_default().to_string(),
        _ => body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string(),
    };
    let reply = format!("echo: {input}");
    let (prompt_eval_count, eval_count) = (words(&input), words(&reply));
    let piece = |text: &str, done: bool| match kind {
        "generate" => json!({"model": model, "created_at": "2026-11-27T00:00:00Z", "response": text, "done": done}),
        _ => {
            json!({"model": model, "created_at": "2026-11-27T00:00:00Z", "message": {"role": "assistant", "content": text}, "done": done})
        }
    };
    // Ollama streams unless told otherwise.
    if body["stream"].as_bool().unwrap_or(true) {
        let mut lines = String::new();
        for word in reply.split_inclusive(' ') {
            lines.push_str(&piece(word, false).to_string());
            lines.push('\n');
        }
        let mut last = piece("", true);
        last["done_reason"] = json!("stop");
        last["prompt_eval_count"] = json!(prompt_eval_count);
        last["eval_count"] = json!(eval_count);
        lines.push_str(&last.to_string());
        lines.push('\n');
        ([("content-type", "application/x-ndjson")], lines).into_response()
    } else {
        let mut one = piece(&reply, true);
        one["done_reason"] = json!("stop");
        one["prompt_eval_count"] = json!(prompt_eval_count);
        one["eval_count"] = json!(eval_count);
        Json(one).into_response()
    }
}

impl FakeOllama {
    pub async fn start() -> FakeOllama {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route(
                "/api/tags",
                get(|| async {
                    Json(json!({"models": MODELS.iter().map(|m| json!({
                        "name": m, "model": m, "modified_at": "2026-01-01T00:00:00Z", "size": 4661224676u64,
                        "digest": "abc", "details": {"family": "llama"}
                    })).collect::<Vec<_>>()}))
                }),
            )
            .route(
                "/api/generate",
                post(|State(r): State<Arc<Mutex<Vec<Value>>>>, Json(b): Json<Value>| answer("generate", r, b)),
            )
            .route(
                "/api/chat",
                post(|State(r): State<Arc<Mutex<Vec<Value>>>>, Json(b): Json<Value>| answer("chat", r, b)),
            )
            .with_state(requests.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeOllama {
            url: format!("http://{addr}"),
            requests,
        }
    }
}

async fn app_with(node: &str, extra: impl FnOnce(&mut infra_controller::config::UpArgs)) -> TestApp {
    let node = node.to_string();
    TestApp::start_with(move |a| {
        a.ai.ai_node_url = Some(node);
        extra(a);
    })
    .await
}

#[tokio::test]
async fn a_handler_asks_the_model_and_usage_reaches_result_and_metrics() {
    let node = FakeOllama::start().await;
    let app = app_with(&node.url, |_| {}).await;
    let id = app
        .upload_py(
            "import infra_ai\ndef handler(event, context):\n    return infra_ai.generate('tell me about ' + event['topic'], temperature=0.2)\n",
            &[],
        )
        .await;
    let body = app.run_ok(&id, json!({"topic": "warm pools"})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"], "echo: tell me about warm pools");
    // The default model, the option passed through, no stream requested.
    let sent = node.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["model"], "llama3:8b");
    assert_eq!(sent["options"]["temperature"], 0.2);
    assert_eq!(sent["stream"], false);
    assert_eq!(body["usage"]["calls"], 1);
    assert_eq!(body["usage"]["promptEvalCount"], 5, "words in the prompt");
    assert_eq!(body["usage"]["evalCount"], 6, "words in the reply");
    assert_eq!(body["usage"]["models"]["llama3:8b"]["calls"], 1);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"infra_ai_tokens_total{kind="prompt",model="llama3:8b"} 5"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"infra_ai_tokens_total{kind="completion",model="llama3:8b"} 6"#));
    assert!(metrics.contains(r#"infra_ai_calls_total{model="llama3:8b",status="ok"} 1"#));
    // A function that does not call the model reports no usage.
    let plain = app.upload_py(ECHO, &[]).await;
    assert!(app.run_ok(&plain, json!({})).await.get("usage").is_none());
}

#[tokio::test]
async fn chat_streams_and_the_run_model_is_the_default() {
    let node = FakeOllama::start().await;
    let app = app_with(&node.url, |_| {}).await;
    let id = app
        .upload_py(
            "def handler(event, context):\n    reply = context.ai.chat([{'role': 'user', 'content': 'hi there'}], stream=True)\n    return {'reply': reply, 'model': context.model_id}\n",
            &[],
        )
        .await;
    let resp = app
        .post("/run")
        .json(&json!({"functionId": id, "modelId": "qwen2:0.5b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(
        body["result"]["reply"],
        json!({"role": "assistant", "content": "echo: hi there"}),
        "streamed pieces joined"
    );
    assert_eq!(
        body["result"]["model"], "qwen2:0.5b",
        "the run's modelId reaches the context"
    );
    assert_eq!(body["usage"]["models"]["qwen2:0.5b"]["evalCount"], 3);
    let sent = node.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["model"], "qwen2:0.5b", "the run's model is the SDK's default");
    // /models counts runs per model.
    let models: serde_json::Value = app.get("/models").send().await.unwrap().json().await.unwrap();
    let qwen = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "qwen2:0.5b")
        .unwrap()
        .clone();
    assert_eq!(qwen["invocations"], 1, "{models}");
}

#[tokio::test]
async fn an_unknown_model_gets_400_naming_the_available_ones() {
    let node = FakeOllama::start().await;
    let app = app_with(&node.url, |_| {}).await;
    let id = app.upload_py(ECHO, &[]).await;
    let r = app
        .post("/run")
        .json(&json!({"functionId": id, "modelId": "gpt-99"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("gpt-99") && msg.contains("llama3:8b") && msg.contains("qwen2:0.5b"),
        "{msg}"
    );
    // A model the node has is fine.
    let r = app
        .post("/run")
        .json(&json!({"functionId": id, "modelId": "qwen2:0.5b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn with_the_node_down_the_handler_gets_a_clear_error_not_a_hang() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = app_with(&format!("http://{closed}"), |_| {}).await;
    let id = app
        .upload_py(
            "import infra_ai\ndef handler(event, context):\n    try:\n        infra_ai.generate('hello')\n    except infra_ai.AIError as e:\n        print('caught:', e)\n        raise\n",
            &[("timeoutMs", "20000")],
        )
        .await;
    let t0 = Instant::now();
    // Accepted although the node cannot confirm the model.
    let r = app
        .post("/run")
        .json(&json!({"functionId": id, "modelId": "llama3:8b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    assert_eq!(body["status"], "FAILED", "{body}");
    assert_eq!(body["error"]["type"], "AIError");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
    assert!(body["stdout"]
        .as_str()
        .unwrap()
        .starts_with("caught: the AI node is unreachable"));

    // Not configured at all: the same clear error.
    let unset = TestApp::start().await;
    let id = unset
        .upload_py(
            "import infra_ai\ndef handler(event, context):\n    return infra_ai.generate('x')\n",
            &[],
        )
        .await;
    let body = unset.run_ok(&id, json!({})).await;
    assert_eq!(body["error"]["type"], "AIError");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("AI_NODE_URL"),
        "{body}"
    );
}

#[tokio::test]
async fn each_invocation_has_a_call_budget() {
    let node = FakeOllama::start().await;
    let app = app_with(&node.url, |a| a.ai.ai_max_calls = "2".into()).await;
    let id = app
        .upload_py(
            "import infra_ai\ndef handler(event, context):\n    out = []\n    for i in range(3):\n        try:\n            out.append(infra_ai.generate('n %d' % i))\n        except infra_ai.AIError as e:\n            out.append(str(e))\n    return out\n",
            &[],
        )
        .await;
    let body = app.run_ok(&id, json!({})).await;
    assert_eq!(body["result"][0], "echo: n 0");
    assert_eq!(body["result"][1], "echo: n 1");
    assert!(
        body["result"][2].as_str().unwrap().contains("maximum of 2 AI calls"),
        "{body}"
    );
    assert_eq!(body["usage"]["calls"], 2);
    // The budget is per invocation: the next run has its own.
    assert_eq!(app.run_ok(&id, json!({})).await["result"][0], "echo: n 0");
    assert_eq!(node.requests.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn an_unknown_model_named_in_the_sdk_fails_inside_the_function() {
    let node = FakeOllama::start().await;
    let app = app_with(&node.url, |_| {}).await;
    let id = app
        .upload_py(
            "import infra_ai\ndef handler(event, context):\n    return infra_ai.generate('x', model='nope:1b')\n",
            &[],
        )
        .await;
    let body = app.run_ok(&id, json!({})).await;
    assert_eq!(body["status"], "FAILED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model 'nope:1b' not found"),
        "{body}"
    );
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"infra_ai_calls_total{model="nope:1b",status="error"} 1"#));
}

#[tokio::test]
async fn a_sandboxed_handler_cannot_reach_the_ai_node_directly() {
    if !sandbox_available() {
        eprintln!("skipped: bubblewrap is not installed or cannot create namespaces here (scripts/test installs it)");
        return;
    }
    let node = FakeOllama::start().await;
    let app = app_with(&node.url, |_| {}).await;
    let source = "import urllib.request, infra_ai\ndef handler(event, context):\n    try:\n        urllib.request.urlopen(event['url'] + '/api/tags', timeout=2).read()\n        direct = 'reached'\n    except Exception as e:\n        direct = 'blocked: ' + type(e).__name__\n    return {'direct': direct, 'relayed': infra_ai.generate('still works')}\n";
    let id = app.upload_py(source, &[]).await;
    let body = app.run_ok(&id, json!({"url": node.url})).await;
    assert!(
        body["result"]["direct"].as_str().unwrap().starts_with("blocked"),
        "{body}"
    );
    assert_eq!(
        body["result"]["relayed"], "echo: still works",
        "the SDK goes through the worker"
    );
}
