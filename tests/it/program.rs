//! The original platform's program-style functions, in real Python and Node
//! processes: input from PAYLOAD / PAYLOAD_FILE (and Python's `sdk`), output
//! from stdout and the exit code, files from OUTPUT_DIR uploaded and fetched
//! back through the API (embedded store and S3 on moto).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

const PY_ECHO: &str = r#"import json, os
payload = json.loads(os.environ["PAYLOAD"])
home = os.environ["HOME"]
marker = os.path.join(home, "ran-before")
fresh = not os.path.exists(marker)
open(marker, "w").close()
print(json.dumps({
    "hello": payload["name"],
    "jobId": os.environ["JOB_ID"],
    "functionId": os.environ["FUNCTION_ID"],
    "memoryMb": os.environ["MEMORY_MB"],
    "outputDir": os.environ["OUTPUT_DIR"],
    "greeting": os.environ.get("GREETING"),
    "payloadFile": os.environ.get("PAYLOAD_FILE"),
    "fresh": fresh,
    "tmp": os.environ["TMPDIR"] == home,
}))
"#;

const NODE_ECHO: &str = r#"const payload = JSON.parse(process.env.PAYLOAD || '{}');
console.log(JSON.stringify({
  hello: payload.name,
  jobId: process.env.JOB_ID,
  functionId: process.env.FUNCTION_ID,
  outputDir: process.env.OUTPUT_DIR,
  greeting: process.env.GREETING || null,
}));
"#;

async fn function(app: &TestApp, id: &str) -> Value {
    app.fetch_json(&format!("/functions/{id}")).await
}

#[tokio::test]
async fn python_and_node_programs_read_payload_and_print_their_output() {
    let app = TestApp::start().await;
    // No style given: detected at upload. envVars cannot override the platform's names.
    let env = r#"{"GREETING":"hi","PAYLOAD":"forged","JOB_ID":"forged"}"#;
    let py = app.upload_py(PY_ECHO, &[("envVars", env)]).await;
    assert_eq!(function(&app, &py).await["style"], "program");
    let body = app.run_ok(&py, json!({"name": "Ada"})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["exitCode"], 0);
    let job = body["jobId"].as_str().unwrap();
    let r = &body["result"];
    assert_eq!(r["hello"], "Ada", "{body}");
    assert_eq!(r["jobId"], job);
    assert_eq!(r["functionId"], py.as_str());
    assert_eq!(r["memoryMb"], "128");
    assert_eq!(r["greeting"], "hi");
    assert_eq!(r["payloadFile"], Value::Null);
    assert_eq!(r["fresh"], true);
    assert_eq!(r["tmp"], true);
    if sandbox_available() {
        assert_eq!(r["outputDir"], "/output");
    }
    // What it printed is the output, as it printed it.
    assert_eq!(
        serde_json::from_str::<Value>(body["stdout"].as_str().unwrap()).unwrap(),
        body["result"]
    );
    assert_eq!(body["startKind"], "fresh");
    // The run's output is an output file, as in the original.
    assert_eq!(body["outputFiles"], json!(["stdout.log"]));
    // A fresh process (and working dir) for every run, never reused.
    let again = app.run_ok(&py, json!({"name": "Grace"})).await;
    assert_eq!(again["result"]["hello"], "Grace");
    assert_eq!(again["result"]["fresh"], true, "{again}");
    assert_eq!(again["startKind"], "fresh");

    let node = app
        .upload_file("index.js", NODE_ECHO, &[("envVars", r#"{"GREETING":"hey"}"#)])
        .await;
    assert_eq!(function(&app, &node).await["style"], "program");
    let body = app.run_ok(&node, json!({"name": "Linus"})).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["exitCode"], 0);
    assert_eq!(body["result"]["hello"], "Linus");
    assert_eq!(body["result"]["jobId"], body["jobId"]);
    assert_eq!(body["result"]["functionId"], node.as_str());
    assert_eq!(body["result"]["greeting"], "hey");

    // Text that is not JSON is the result as text.
    let text = app
        .upload_py("import os\nprint('got', os.environ['PAYLOAD'])\n", &[])
        .await;
    let body = app.run_ok(&text, json!([1])).await;
    assert_eq!(body["result"], "got [1]", "{body}");

    // Handlers stay handlers; the style can be said explicitly, and changed.
    let handler = app
        .upload_py(
            "import os\ndef handler(event, context):\n    return os.environ.get('PAYLOAD')\n",
            &[],
        )
        .await;
    assert_eq!(function(&app, &handler).await["style"], "handler");
    let forced = app.upload_py("print('a script')\n", &[("style", "program")]).await;
    assert_eq!(function(&app, &forced).await["style"], "program");
    assert_eq!(app.run_ok(&forced, json!({})).await["result"], "a script");
    let r = app
        .put(&format!("/functions/{forced}"))
        .json(&json!({"style": "handler"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(function(&app, &forced).await["style"], "handler");
    let r = app
        .put(&format!("/functions/{forced}"))
        .json(&json!({"style": "daemon"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn a_large_input_arrives_through_payload_file() {
    let app = TestApp::start().await;
    let big = "x".repeat(1536 * 1024);
    let py = app
        .upload_py(
            "import json, os\nassert 'PAYLOAD' not in os.environ\nwith open(os.environ['PAYLOAD_FILE']) as f:\n    data = json.load(f)\nprint(json.dumps({'len': len(data['blob']), 'file': os.environ['PAYLOAD_FILE']}))\n",
            &[],
        )
        .await;
    let body = app.run_ok(&py, json!({"blob": big})).await;
    assert_eq!(body["status"], "SUCCESS", "{}", body["stderr"]);
    assert_eq!(body["result"]["len"], 1536 * 1024);
    if sandbox_available() {
        assert_eq!(body["result"]["file"], "/input/payload.json");
    }
    let node = app
        .upload_file(
            "index.js",
            "const fs = require('fs');\nif (process.env.PAYLOAD !== undefined) process.exit(9);\nconst data = JSON.parse(fs.readFileSync(process.env.PAYLOAD_FILE, 'utf8'));\nconsole.log(JSON.stringify({ len: data.blob.length }));\n",
            &[],
        )
        .await;
    let body = app.run_ok(&node, json!({"blob": big})).await;
    assert_eq!(body["status"], "SUCCESS", "{}", body["stderr"]);
    assert_eq!(body["result"]["len"], 1536 * 1024);
    app.stop().await;
}

#[tokio::test]
async fn a_python_program_uses_the_original_sdk() {
    let app = TestApp::start().await;
    let id = app
        .upload_py(
            "import sdk\nevent = sdk.get_input()\nctx = sdk.get_context()\nprint('working')\nsdk.return_output({'double': event['n'] * 2, 'request': ctx['request_id'], 'mem': ctx['memory_mb']})\n",
            &[("memoryMb", "256")],
        )
        .await;
    assert_eq!(function(&app, &id).await["style"], "program");
    let body = app.run_ok(&id, json!({"n": 21})).await;
    assert_eq!(body["status"], "SUCCESS", "{}", body["stderr"]);
    // Two lines printed: not one JSON document, so the result is the text...
    let stdout = body["stdout"].as_str().unwrap();
    let last: Value = serde_json::from_str(stdout.trim_end().lines().last().unwrap()).unwrap();
    assert_eq!(last, json!({"double": 42, "request": body["jobId"], "mem": "256"}));
    // ...and a large input reaches get_input through the file.
    let big = app
        .upload_py(
            "import sdk\nsdk.return_output({'len': len(sdk.get_input()['blob'])})\n",
            &[],
        )
        .await;
    let body = app.run_ok(&big, json!({"blob": "y".repeat(1024 * 1024)})).await;
    assert_eq!(body["result"], json!({"len": 1024 * 1024}), "{}", body["stderr"]);
    app.stop().await;
}

const WRITES_OUTPUTS: &str = r#"import json, os
out = os.environ["OUTPUT_DIR"]
payload = json.loads(os.environ["PAYLOAD"])
with open(os.path.join(out, "report.json"), "w") as f:
    json.dump({"rows": payload["rows"]}, f)
os.makedirs(os.path.join(out, "charts"))
with open(os.path.join(out, "charts", "a.csv"), "w") as f:
    f.write("x,y\n1,2\n")
# Links pointing outside the output dir must not make the worker read there.
os.symlink(payload["secret"], os.path.join(out, "leak.txt"))
os.symlink("/", os.path.join(out, "root"))
print(json.dumps({"wrote": 2}))
"#;

#[tokio::test]
async fn output_files_are_kept_and_fetched_through_the_api() {
    let app = TestApp::start().await;
    // A file only the worker can read, outside the function's output dir.
    let secret = app.dir.path().join("worker-secret.txt");
    std::fs::write(&secret, "worker's secret").unwrap();
    let id = app.upload_py(WRITES_OUTPUTS, &[]).await;
    let body = app
        .run_ok(&id, json!({"rows": 3, "secret": secret.to_string_lossy()}))
        .await;
    assert_eq!(body["status"], "SUCCESS", "{}", body["stderr"]);
    assert_eq!(
        body["outputFiles"],
        json!(["charts", "report.json", "stdout.log"]),
        "{body}"
    );
    let paths: Vec<&str> = body["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["charts/a.csv", "report.json", "stdout.log"]);
    let stderr = body["stderr"].as_str().unwrap();
    assert!(stderr.contains("leak.txt: symbolic link, not followed"), "{stderr}");
    assert!(stderr.contains("root: symbolic link, not followed"), "{stderr}");
    let job = body["jobId"].as_str().unwrap();

    let get = |path: String| app.get(&path).send();
    let r = get(format!("/status/{job}/files/stdout.log")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "{\"wrote\": 2}\n", "the run's output");
    let r = get(format!("/status/{job}/files/report.json")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"rows": 3}));
    let url = body["artifacts"][0]["url"].as_str().unwrap();
    assert_eq!(url, format!("/status/{job}/files/charts%2Fa.csv"));
    let r = get(url.to_string()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "x,y\n1,2\n");
    // The /api prefix serves it too, as every route.
    let r = get(format!("/api/status/{job}/files/report.json")).await.unwrap();
    assert_eq!(r.status(), 200);
    for missing in [
        format!("/status/{job}/files/leak.txt"),
        format!("/status/{job}/files/nothing.txt"),
        format!("/status/{job}/files/..%2F..%2Fsecret"),
        "/status/no-such-job/files/report.json".to_string(),
    ] {
        let r = get(missing.clone()).await.unwrap();
        assert_eq!(r.status(), 404, "{missing}");
    }
    // Authenticated like every other route.
    let r = app
        .client
        .get(app.url(&format!("/status/{job}/files/report.json")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Described in the API document.
    let doc = app.public_json("/openapi.json").await;
    assert!(
        doc["paths"]["/status/{jobId}/files/{path}"]["get"].is_object(),
        "{}",
        doc["paths"]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failing_program_reports_its_exit_code_and_stderr() {
    let app = TestApp::start().await;
    let py = app
        .upload_py(
            "import os, sys\nprint('partial output')\nprint('bad input: ' + os.environ['PAYLOAD'], file=sys.stderr)\nsys.exit(3)\n",
            &[],
        )
        .await;
    let body = app.run_ok(&py, json!({"n": 1})).await;
    assert_eq!(body["status"], "FAILED", "{body}");
    assert_eq!(body["exitCode"], 3);
    assert_eq!(body["stdout"], "partial output\n");
    assert!(
        body["stderr"].as_str().unwrap().contains("bad input: {\"n\":1}"),
        "{body}"
    );
    assert_eq!(body["result"], Value::Null);
    // An uncaught exception: exit code 1 and the traceback in stderr.
    let raises = app
        .upload_py("import os\nos.environ['PAYLOAD']\nraise ValueError('boom')\n", &[])
        .await;
    let body = app.run_ok(&raises, json!({})).await;
    assert_eq!(body["status"], "FAILED");
    assert_eq!(body["exitCode"], 1);
    let stderr = body["stderr"].as_str().unwrap();
    assert!(stderr.contains("ValueError: boom"), "{body}");
    // The traceback is the program's own, as `python main.py` prints it.
    assert!(
        stderr.starts_with("Traceback (most recent call last):\n  File \""),
        "{stderr}"
    );
    assert!(stderr.contains("main.py\", line 3, in <module>"), "{stderr}");
    assert!(!stderr.contains("runpy"), "{stderr}");
    let node = app
        .upload_file(
            "index.js",
            "console.error('node says no to ' + process.env.PAYLOAD);\nprocess.exit(7);\n",
            &[],
        )
        .await;
    let body = app.run_ok(&node, json!("x")).await;
    assert_eq!(body["status"], "FAILED");
    assert_eq!(body["exitCode"], 7);
    assert!(
        body["stderr"].as_str().unwrap().contains("node says no to \"x\""),
        "{body}"
    );
    app.stop().await;
}

/// Processes whose command line holds `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[tokio::test]
async fn a_program_past_its_timeout_is_killed_with_its_children() {
    let app = TestApp::start().await;
    // A unique sleep length finds the child among the host's processes.
    let secs = format!("{}.{}", 300 + std::process::id() % 100, rand_digits());
    let source = format!(
        "import os, subprocess, time\nos.environ['PAYLOAD']\nsubprocess.Popen(['sleep', '{secs}'])\nprint('started', flush=True)\ntime.sleep(60)\n"
    );
    let id = app.upload_py(&source, &[("timeoutMs", "1500")]).await;
    let started = Instant::now();
    let body = app.run_ok(&id, json!({})).await;
    assert_eq!(body["status"], "TIMEOUT", "{body}");
    assert_eq!(body["exitCode"], -1);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(body["stdout"], "started\n");
    assert!(
        body["stderr"].as_str().unwrap().contains("timed out after 1500 ms"),
        "{body}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_with(&format!("sleep {secs}"));
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the program's child outlived it: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

fn rand_digits() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_micros()
        % 1000
}

#[tokio::test]
async fn a_program_sees_only_its_own_code() {
    if !sandbox_available() {
        eprintln!("skipped: no bubblewrap sandbox on this host (functions are then not isolated from each other)");
        return;
    }
    let app = TestApp::start().await;
    let other = app
        .upload_raw(
            "other.zip",
            zip_of(&[
                ("main.py", "def handler(e, c):\n    return 1\n"),
                ("secret.txt", "the other function's secret"),
            ]),
            &[],
        )
        .await;
    assert_eq!(other.status(), 200);
    let other: Value = other.json().await.unwrap();
    let other_id = other["functionId"].as_str().unwrap().to_string();
    assert_eq!(app.run_ok(&other_id, json!({})).await["status"], "SUCCESS");
    let data_dir = app.dir.path().to_string_lossy().to_string();
    let prober = app
        .upload_py(
            "import json, os\np = json.loads(os.environ['PAYLOAD'])\nhere = os.path.dirname(os.path.abspath(__file__))\nfound = []\nfor top in ['/var', '/tmp', '/opt', '/output', '/input']:\n    for d, _, files in os.walk(top):\n        found += [os.path.join(d, f) for f in files if f == 'secret.txt']\nprint(json.dumps({'mine': sorted(os.listdir(here)), 'dataDir': os.path.exists(p['dataDir']), 'found': found}))\n",
            &[],
        )
        .await;
    let body = app.run_ok(&prober, json!({"dataDir": data_dir})).await;
    assert_eq!(body["status"], "SUCCESS", "{}", body["stderr"]);
    assert_eq!(body["result"]["mine"], json!(["main.py"]), "{body}");
    assert_eq!(body["result"]["dataDir"], false);
    assert_eq!(body["result"]["found"], json!([]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_keeps_program_outputs_in_s3() {
    let mut cluster = crate::production::Cluster::new().await;
    let api = cluster.api(&[]);
    let _worker = cluster.worker(&[]);
    let client = reqwest::Client::new();
    let id = upload_at(
        &client,
        &api.base,
        "import json, os\np = json.loads(os.environ['PAYLOAD'])\nopen(os.path.join(os.environ['OUTPUT_DIR'], 'out.txt'), 'w').write('rows=%d' % p['rows'])\nprint('done')\n",
    )
    .await;
    let (status, body) = run_at(&client, &api.base, &id, json!({"rows": 5}), false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"], "done");
    assert_eq!(body["outputFiles"], json!(["out.txt", "stdout.log"]));
    let job = body["jobId"].as_str().unwrap();
    // In the bucket under the original's layout...
    let store =
        infra_controller::backend::aws::S3ArtifactStore::new(&crate::services::aws(), cluster.var("BUCKET_NAME")).await;
    use infra_controller::backend::ArtifactStore;
    let stored = store.get(&format!("outputs/{job}/out.txt")).await.unwrap();
    assert_eq!(&stored[..], b"rows=5");
    let log = store.get(&format!("outputs/{job}/stdout.log")).await.unwrap();
    assert_eq!(&log[..], b"done\n");
    // ...and through the API process, which never saw the file.
    let r = client
        .get(format!("{}/status/{job}/files/out.txt", api.base))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "rows=5");
    // An async run's files are there once its status is terminal.
    let (status, accepted) = run_at(&client, &api.base, &id, json!({"rows": 7}), true).await;
    assert_eq!(status, 202);
    let job = accepted["jobId"].as_str().unwrap();
    let (_, done) = wait_job_at(&client, &api.base, job, Duration::from_secs(60)).await;
    assert_eq!(done["outputFiles"], json!(["out.txt", "stdout.log"]), "{done}");
    let r = client
        .get(format!("{}/status/{job}/files/out.txt", api.base))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "rows=7");
}

#[tokio::test]
async fn a_program_flooding_its_output_dir_is_stopped() {
    let app = TestApp::start().await;
    let id = app
        .upload_py(
            "import os, time\nos.environ['PAYLOAD']\nout = os.environ['OUTPUT_DIR']\nfor i in range(12000):\n    open(os.path.join(out, 'f%05d' % i), 'w').close()\nprint('flooded', flush=True)\ntime.sleep(30)\n",
            &[("timeoutMs", "60000")],
        )
        .await;
    let started = Instant::now();
    let body = app.run_ok(&id, json!({})).await;
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "stopped at once, not at its timeout"
    );
    assert_eq!(body["status"], "FAILED", "{body}");
    assert_eq!(body["error"]["type"], "OutputTooLarge", "{body}");
    assert!(
        body["stderr"].as_str().unwrap().contains("more than 10000 entries"),
        "{body}"
    );
    // What could be kept was kept, within the per-run bound of 100 files,
    // and the run's own log on top.
    let artifacts = body["artifacts"].as_array().unwrap();
    assert_eq!(artifacts.len(), 101);
    assert!(artifacts.iter().any(|a| a["path"] == "stdout.log"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn without_the_sandbox_a_program_runs_as_its_own_user_and_keeps_its_files() {
    // SANDBOX=none: OUTPUT_DIR is then a private host dir (the contract is
    // the variable, not the path).
    let system_python = std::path::Path::new("/usr/bin/python3");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !system_python.exists() {
        eprintln!("skipped: needs root and /usr/bin/python3 (reachable by other users)");
        return;
    }
    let app = TestApp::start_with(|a| {
        a.pool.sandbox = "none".into();
        a.pool.python = "/usr/bin/python3".into();
        a.pool.node = "none".into();
    })
    .await;
    let secret = app.dir.path().join("worker-secret.txt");
    std::fs::write(&secret, "worker's secret").unwrap();
    let id = app
        .upload_py(
            "import json, os\np = json.loads(os.environ['PAYLOAD'])\nout = os.environ['OUTPUT_DIR']\nopen(os.path.join(out, 'a.txt'), 'w').write('mine')\nos.symlink(p['secret'], os.path.join(out, 'leak.txt'))\nprint(json.dumps({'uid': os.getuid(), 'out': out}))\n",
            &[],
        )
        .await;
    let body = app.run_ok(&id, json!({"secret": secret.to_string_lossy()})).await;
    assert_eq!(body["status"], "SUCCESS", "{}", body["stderr"]);
    assert!(body["result"]["uid"].as_u64().unwrap() >= 100_000, "{body}");
    assert_ne!(body["result"]["out"], "/output");
    assert_eq!(body["outputFiles"], json!(["a.txt", "stdout.log"]), "{body}");
    let job = body["jobId"].as_str().unwrap();
    let r = app.get(&format!("/status/{job}/files/a.txt")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "mine");
    let r = app.get(&format!("/status/{job}/files/leak.txt")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn a_program_over_its_memory_is_stopped() {
    let app = TestApp::start().await;
    let id = app
        .upload_py(
            "import os\nos.environ['PAYLOAD']\nblocks = []\nfor _ in range(64):\n    blocks.append(bytearray(16 * 1024 * 1024))\nprint('survived')\n",
            &[("memoryMb", "128")],
        )
        .await;
    let body = app.run_ok(&id, json!({})).await;
    assert_eq!(body["status"], "OOM", "{body}");
    assert_ne!(body["exitCode"], 0);
    assert_eq!(body["stdout"], "");
    app.stop().await;
}
