//! `infra up --functions DIR`: Function YAML files become runnable
//! functions, follow edits, and go away with their files.

use std::path::Path;
use std::time::{Duration, Instant};

use infra_controller::operator::desired::function_id;
use serde_json::{json, Value};

use crate::helpers::*;

fn hello(version: &str) -> String {
    format!(
        r#"apiVersion: faas.infra.dev/v1alpha1
kind: Function
metadata:
  name: hello
spec:
  runtime: python
  warmPool:
    minWarm: 1
  env:
    - name: TOKEN
      valueFrom:
        secretKeyRef: {{name: creds, key: token}}
  code:
    inline:
      main.py: |
        import os
        def handler(event, context):
            return "{version} " + os.environ["TOKEN"]
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
stringData:
  token: s3cret
"#
    )
}

fn write(dir: &Path, file: &str, text: &str) {
    // Write then rename, as editors do, so a scan never sees half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(file)).unwrap();
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn function_files_are_deployed_updated_and_removed() {
    let folder = tempfile::tempdir().unwrap();
    write(folder.path(), "hello.yaml", &hello("v1"));
    // A broken file next to it is reported and changes nothing else.
    write(
        folder.path(),
        "broken.yaml",
        "apiVersion: faas.infra.dev/v1alpha1\nkind: Function\nmetadata: {name: tiny}\nspec:\n  runtime: python\n  memoryMb: 64\n  code: {inline: {main.py: 'x'}}\n",
    );
    let dir = folder.path().to_path_buf();
    let app = TestApp::start_with(move |a| a.functions_dir = Some(dir)).await;
    let id = function_id("default", "hello");

    let record: Value = wait_for("the function to be registered", async || {
        let r = app.get(&format!("/functions/{id}")).send().await.ok()?;
        (r.status() == 200).then_some(r.json().await.ok()?)
    })
    .await;
    assert_eq!(record["owner"], "default/hello", "{record}");
    assert_eq!(record["warmPool"]["minWarm"], 1);
    let list: Value = app.get("/functions").send().await.unwrap().json().await.unwrap();
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "the invalid Function is not deployed: {list}"
    );

    // minWarm 1: the first run is already warm.
    wait_for("a warm instance", async || {
        let m = app.metrics().await;
        m.contains(&format!(
            r#"infra_pool_idle_instances{{function="{id}",runtime="python"}} 1"#
        ))
        .then_some(())
    })
    .await;
    let body = app.run_ok(&id, json!({})).await;
    assert_eq!(body["result"], "v1 s3cret", "{body}");
    assert_eq!(body["coldStart"], false, "{body}");

    // Owned by the file: HTTP changes are refused, naming the resource.
    let put = app
        .put(&format!("/functions/{id}"))
        .json(&json!({"memoryMb": 256}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 409);
    let text = put.text().await.unwrap();
    assert!(text.contains("default/hello"), "{text}");
    assert_eq!(
        app.delete(&format!("/functions/{id}")).send().await.unwrap().status(),
        409
    );

    // Edited code runs.
    write(folder.path(), "hello.yaml", &hello("v2"));
    wait_for("the new code", async || {
        let body = app.run_ok(&id, json!({})).await;
        (body["result"] == "v2 s3cret").then_some(())
    })
    .await;

    // A deleted file removes the function and its code.
    std::fs::remove_file(folder.path().join("hello.yaml")).unwrap();
    wait_for("the function to go", async || {
        let r = app.get(&format!("/functions/{id}")).send().await.ok()?;
        (r.status() == 404).then_some(())
    })
    .await;
    let artifacts = app.dir.path().join("artifacts").join("functions").join(&id);
    assert!(files_under(&artifacts).is_empty(), "artifacts removed");
}

#[tokio::test]
async fn functions_removed_while_stopped_are_removed_at_start() {
    let folder = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    write(folder.path(), "hello.yaml", &hello("v1"));
    let id = function_id("default", "hello");
    let start = |dir: std::path::PathBuf, data: std::path::PathBuf| {
        TestApp::start_with(move |a| {
            a.functions_dir = Some(dir);
            a.data_dir = data;
        })
    };
    {
        let app = start(folder.path().to_path_buf(), data.path().to_path_buf()).await;
        wait_for("the function", async || {
            let r = app.get(&format!("/functions/{id}")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        app.stop().await;
    }
    std::fs::remove_file(folder.path().join("hello.yaml")).unwrap();
    let app = start(folder.path().to_path_buf(), data.path().to_path_buf()).await;
    wait_for("the stale function to go", async || {
        let r = app.get(&format!("/functions/{id}")).send().await.ok()?;
        (r.status() == 404).then_some(())
    })
    .await;
}
