//! The functions in `examples/` run as the README says.

use std::path::Path;

use serde_json::json;

use crate::helpers::*;

fn example(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(path)).expect("example file")
}

#[tokio::test]
async fn hello() {
    let app = TestApp::start().await;
    let id = app.upload_py(&example("hello/main.py"), &[]).await;
    let body = app.run_ok(&id, json!({"name": "Ada"})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"]["message"], "Hello, Ada!");
    assert!(body["result"]["remainingMs"].as_u64().unwrap() > 0);
    assert!(body["stdout"].as_str().unwrap().starts_with("greeting Ada in request "));
}

#[tokio::test]
async fn wordcount_zip_package() {
    let app = TestApp::start().await;
    let zip = zip_of(&[
        ("app.py", &example("wordcount/app.py")),
        ("textstats/__init__.py", &example("wordcount/textstats/__init__.py")),
    ]);
    let r = app.upload_raw("wordcount.zip", zip, &[("handler", "app.count")]).await;
    assert_eq!(r.status(), 200);
    let id = r.json::<serde_json::Value>().await.unwrap()["functionId"]
        .as_str()
        .unwrap()
        .to_string();
    let body = app
        .run_ok(&id, json!({"text": "the cat and the hat and the bat", "n": 2}))
        .await;
    assert_eq!(body["result"]["words"], 8, "{body}");
    assert_eq!(body["result"]["top"], json!([["the", 3], ["and", 2]]));
}

#[tokio::test]
async fn greeting_env_vars() {
    let app = TestApp::start().await;
    let id = app
        .upload_py(
            &example("greeting/main.py"),
            &[("envVars", r#"{"GREETING":"Bonjour"}"#), ("memoryMb", "256")],
        )
        .await;
    let body = app.run_ok(&id, json!({})).await;
    assert_eq!(body["result"]["greeting"], "Bonjour");
    assert_eq!(body["result"]["memoryLimitMb"], 256);
    assert!(!body["result"]["visibleEnv"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k == "INFRA_API_KEY"));
}

#[tokio::test]
async fn ask_the_ai_node() {
    let node = crate::ai::FakeOllama::start().await;
    let url = node.url.clone();
    let app = TestApp::start_with(move |a| a.ai.ai_node_url = Some(url)).await;
    let id = app.upload_py(&example("ask/main.py"), &[]).await;
    let r = app
        .post("/run")
        .json(&json!({"functionId": id, "inputData": {"question": "why warm?"}, "modelId": "qwen2:0.5b"}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["result"],
        json!({"model": "qwen2:0.5b", "answer": "echo: why warm?"}),
        "{body}"
    );
    assert_eq!(body["usage"]["calls"], 1);
}

#[tokio::test]
async fn node_hello() {
    let app = TestApp::start().await;
    let id = app
        .upload_file("index.js", &example("node-hello/index.js"), &[("minWarm", "1")])
        .await;
    let body = app.run_ok(&id, json!({"name": "Ada"})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"]["message"], "Hello, Ada!");
    assert!(body["stdout"].as_str().unwrap().starts_with("greeting Ada in request "));
}

/// The example resources deploy through `infra up --functions` and run.
#[tokio::test]
async fn function_resources() {
    let folder = tempfile::tempdir().unwrap();
    for f in ["hello.yaml", "shout.yaml"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/functions").join(f),
            folder.path().join(f),
        )
        .unwrap();
    }
    let dir = folder.path().to_path_buf();
    let app = TestApp::start_with(move |a| a.functions_dir = Some(dir)).await;
    for (name, input, expected) in [
        ("hello", json!({"name": "Ada"}), json!("Hello, Ada!")),
        ("shout", json!({"text": "warm"}), json!("WARM")),
    ] {
        let id = infra_controller::operator::desired::function_id("default", name);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while app.get(&format!("/functions/{id}")).send().await.unwrap().status() != 200 {
            assert!(std::time::Instant::now() < deadline, "{name} was not deployed");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let body = app.run_ok(&id, input).await;
        assert_eq!(body["result"], expected, "{body}");
    }
}
