//! Mixed fleets on the wire (docs/compat-wire.md): this worker runs the
//! original controller's SQS tasks and answers where that controller reads
//! (`PUBLISH result:<id>`, `job:<id>`); this controller understands what an
//! original worker publishes and stores. The original-format messages are
//! JSON literals written from the original's documented shapes (contract
//! section 4), sent through a real redis-server and moto's SQS.

use std::time::{Duration, Instant};

use futures::StreamExt;
use infra_controller::backend::aws::S3ArtifactStore;
use infra_controller::backend::ArtifactStore;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::production::Cluster;
use crate::services::aws;

/// A cluster (moto, redis-server, `infra` processes) and the names an
/// original controller's task needs.
struct Fleet {
    cluster: Cluster,
    bucket: String,
    queue: String,
}

impl Fleet {
    async fn new() -> Fleet {
        let cluster = Cluster::new().await;
        let bucket = cluster.var("BUCKET_NAME").to_string();
        let queue = cluster.var("SQS_URL").to_string();
        Fleet { cluster, bucket, queue }
    }

    fn api(&self) -> Proc {
        self.cluster.api(&[])
    }

    fn worker(&mut self) -> Proc {
        self.cluster.worker(&[("WORKER_CONCURRENCY", "2")])
    }

    async fn sqs(&self) -> aws_sdk_sqs::Client {
        crate::services::sqs_client().await
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.cluster.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Messages on `result:*`, as the original controller's PSUBSCRIBE sees them.
    async fn results(&self) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut pubsub = redis::Client::open(self.cluster.redis.url())
            .unwrap()
            .get_async_pubsub()
            .await
            .unwrap();
        pubsub.psubscribe("result:*").await.unwrap();
        tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                let payload: String = msg.get_payload().unwrap_or_default();
                if tx.send((msg.get_channel_name().to_string(), payload)).is_err() {
                    break;
                }
            }
        });
        rx
    }

    async fn queue_is_empty(&self, sqs: &aws_sdk_sqs::Client) -> bool {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&self.queue)
            .attribute_names(A::All)
            .send()
            .await
            .unwrap();
        let count = |name: A| {
            attrs
                .attributes()
                .and_then(|a| a.get(&name))
                .cloned()
                .unwrap_or_default()
        };
        count(A::ApproximateNumberOfMessages) == "0" && count(A::ApproximateNumberOfMessagesNotVisible) == "0"
    }
}

/// The original controller's task for `/run` (contract 4.1, v2.8: with
/// envVars; no submittedAt, handler or sha256).
fn original_task(request_id: &str, function_id: &str, bucket: &str, name: &str) -> String {
    format!(
        r#"{{"requestId":"{request_id}","functionId":"{function_id}","runtime":"python","memoryMb":256,"s3Bucket":"{bucket}","s3Key":"functions/{function_id}/v1.zip","timeoutMs":300000,"input":{{"name":"{name}"}},"modelId":"llama3:8b","envVars":{{"GREETING":"Hello","RETRIES":3}}}}"#
    )
}

async fn next_result(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    channel: &str,
    within: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (ch, payload) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing published on {channel} within {within:?}"))
            .expect("subscriber alive");
        if ch == channel {
            return serde_json::from_str(&payload).expect("a JSON result");
        }
    }
}

/// The fields the original controller, its dashboard and scripts read from a
/// worker result (contract 4.2 and 5.3).
fn assert_original_result_shape(r: &Value) {
    for key in infra_controller::model::ORIGINAL_RESULT_FIELDS {
        assert!(r.get(key).is_some(), "no {key} in {r}");
    }
    assert!(matches!(r["status"].as_str(), Some("SUCCESS" | "FAILED")), "{r}");
    assert!(r.get("updatedAt").is_none(), "a job record, not a result: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_worker_runs_the_original_controllers_tasks_and_answers_where_it_reads() {
    let mut fleet = Fleet::new().await;
    // The original stores each function's zip at functions/<id>/v1.zip.
    let function_id = format!("fn-{}", uuid::Uuid::new_v4().simple());
    let store = S3ArtifactStore::new(&aws(), &fleet.bucket).await;
    let code = "import os\n\
                def handler(event, context):\n    \
                    print('greeting', event['name'])\n    \
                    if event['name'] == 'crash':\n        raise ValueError('no such person')\n    \
                    return {'message': os.environ['GREETING'] + ' ' + event['name'], 'retries': os.environ['RETRIES']}\n";
    store
        .put(
            &format!("functions/{function_id}/v1.zip"),
            zip_of(&[("main.py", code)]).into(),
        )
        .await
        .unwrap();
    let _worker = fleet.worker();
    let mut results = fleet.results().await;
    let sqs = fleet.sqs().await;
    let mut conn = fleet.redis().await;

    // A task that succeeds.
    let ok_id = uuid::Uuid::new_v4().to_string();
    sqs.send_message()
        .queue_url(&fleet.queue)
        .message_body(original_task(&ok_id, &function_id, &fleet.bucket, "Ada"))
        .send()
        .await
        .unwrap();
    // The original controller returns whatever job:<id> holds: it must never
    // see a RUNNING record, only nothing (pending) or the result.
    let watch_until = Instant::now() + Duration::from_secs(60);
    loop {
        let held: Option<String> = redis::cmd("GET")
            .arg(format!("job:{ok_id}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(raw) = held {
            let v: Value = serde_json::from_str(&raw).unwrap();
            assert_eq!(v["status"], "SUCCESS", "job:<id> held {v}");
            break;
        }
        assert!(Instant::now() < watch_until, "no job:{ok_id} within a minute");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let published = next_result(&mut results, &format!("result:{ok_id}"), Duration::from_secs(10)).await;
    assert_original_result_shape(&published);
    assert_eq!(published["requestId"], ok_id.as_str());
    assert_eq!(published["functionId"], function_id.as_str());
    assert_eq!(published["exitCode"], 0);
    assert_eq!(published["allocatedMemoryMb"], 256);
    assert!(published["workerId"].as_str().is_some_and(|w| !w.is_empty()));
    // stdout holds the prints, then the printed return value (what the
    // dashboard shows as the output); the value stays in `result` too.
    let stdout = published["stdout"].as_str().unwrap();
    let last = stdout.trim_end().lines().last().unwrap();
    assert!(stdout.starts_with("greeting Ada\n"), "{stdout}");
    let printed: Value = serde_json::from_str(last).unwrap();
    // envVars values of any type arrive stringified, as the original worker passes them.
    assert_eq!(printed, json!({"message": "Hello Ada", "retries": "3"}));
    assert_eq!(published["result"], printed);
    let (worker_ms, handler_ms) = (
        published["durationMs"].as_f64().unwrap(),
        published["handlerDurationMs"].as_f64().unwrap(),
    );
    assert!(worker_ms >= handler_ms && handler_ms > 0.0, "{published}");
    assert!(published["peakMemoryBytes"].as_u64().unwrap() > 0);
    assert!(published["resources"]["memoryUsedMb"].as_f64().unwrap() > 0.0);
    // A Python function uses far less than 256 MB: the tuner says so.
    assert!(published["recommendedMemoryMb"].as_u64().unwrap() < 256, "{published}");
    assert!(published["optimizationTip"].as_str().is_some());
    assert_eq!(
        published["autoTuner"]["recommendedMemoryMb"],
        published["recommendedMemoryMb"]
    );

    // The stored copy is the same result, in the original's shape, with a TTL.
    let stored: String = redis::cmd("GET")
        .arg(format!("job:{ok_id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_original_result_shape(&stored);
    assert_eq!(stored["stdout"], published["stdout"]);
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("job:{ok_id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "job:<id> must expire, TTL {ttl}");

    // A task whose handler raises: FAILED, as the original worker says it.
    let bad_id = uuid::Uuid::new_v4().to_string();
    sqs.send_message()
        .queue_url(&fleet.queue)
        .message_body(original_task(&bad_id, &function_id, &fleet.bucket, "crash"))
        .send()
        .await
        .unwrap();
    let failed = next_result(&mut results, &format!("result:{bad_id}"), Duration::from_secs(60)).await;
    assert_original_result_shape(&failed);
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["error"]["type"], "ValueError");
    assert!(
        failed["stderr"].as_str().unwrap().contains("no such person") || failed["error"]["message"] == "no such person"
    );

    // A v2.4 task (no envVars) naming code that does not exist: it still
    // ends, FAILED, and is not left on the queue to loop.
    let missing_id = uuid::Uuid::new_v4().to_string();
    let v24 = format!(
        r#"{{"requestId":"{missing_id}","functionId":"nope","runtime":"python","memoryMb":128,"s3Bucket":"{}","s3Key":"functions/nope/v1.zip","timeoutMs":300000,"input":{{}},"modelId":"llama3:8b"}}"#,
        fleet.bucket
    );
    sqs.send_message()
        .queue_url(&fleet.queue)
        .message_body(v24)
        .send()
        .await
        .unwrap();
    let missing = next_result(&mut results, &format!("result:{missing_id}"), Duration::from_secs(60)).await;
    assert_eq!(missing["status"], "FAILED", "{missing}");
    assert_eq!(missing["error"]["type"], "CodeUnavailable");
    assert!(!missing["stderr"].as_str().unwrap().is_empty());

    // Every task was deleted once answered.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !fleet.queue_is_empty(&sqs).await {
        assert!(Instant::now() < deadline, "tasks left on the queue");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An original worker's result (contract 4.2): no finishedAt, nulls where it
/// measured nothing, its own extra fields.
fn original_worker_result(request_id: &str, function_id: &str) -> String {
    format!(
        r#"{{"requestId":"{request_id}","functionId":"{function_id}","workerId":"ip-10-0-1-17","status":"SUCCESS","exitCode":0,"stdout":"{{\"hello\": \"from the original\"}}\n","stderr":"","durationMs":184,"handlerDurationMs":2.481,"peakMemoryBytes":18874368,"allocatedMemoryMb":128,"optimizationTip":"Resource Waste: Usage (18MB) is low. Reduce to 36MB to save 71%.","estimatedSavings":"$3.36/month","recommendedMemoryMb":36,"cpuUsage":0.41,"networkRx":0,"networkTx":0,"diskRead":0,"diskWrite":4096,"outputFiles":["stdout.log"],"llm_token_count":0}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_controller_understands_the_original_workers_results() {
    let fleet = Fleet::new().await;
    let api = fleet.api();
    let client = reqwest::Client::new();
    let function_id = upload_at(&client, &api.base, ECHO).await;
    let sqs = fleet.sqs().await;
    let mut conn = fleet.redis().await;

    // A sync /run waits; the "original worker" (this test) takes its task
    // from SQS, then publishes and stores its result the way the original does.
    let run = {
        let (client, base, id) = (client.clone(), api.base.clone(), function_id.clone());
        tokio::spawn(async move { run_at(&client, &base, &id, json!({"name": "Ada"}), false).await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let task: Value = loop {
        let out = sqs
            .receive_message()
            .queue_url(&fleet.queue)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if let Some(m) = out.messages().first() {
            sqs.delete_message()
                .queue_url(&fleet.queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
            break serde_json::from_str(m.body().unwrap()).unwrap();
        }
        assert!(Instant::now() < deadline, "the /run task never reached SQS");
    };
    // What this controller sends is a task the original worker can run too.
    for key in infra_controller::model::ORIGINAL_TASK_FIELDS {
        assert!(task.get(key).is_some(), "no {key} in {task}");
    }
    let job_id = task["requestId"].as_str().unwrap().to_string();
    let result = original_worker_result(&job_id, &function_id);
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("result:{job_id}"))
        .arg(&result)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SETEX")
        .arg(format!("job:{job_id}"))
        .arg(3600)
        .arg(&result)
        .query_async(&mut conn)
        .await
        .unwrap();

    let (status, body) = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the sync /run waiter was woken")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["workerId"], "ip-10-0-1-17");
    assert_eq!(body["stdout"], "{\"hello\": \"from the original\"}\n");
    assert_eq!(body["recommendedMemoryMb"], 36);
    // What this controller does not know is passed on as the worker sent it.
    assert_eq!(body["cpuUsage"], 0.41);
    assert_eq!(body["llm_token_count"], 0);

    // /status finds the stored result (job:<id>, written by the original worker).
    let status = get_json(&client, format!("{}/status/{job_id}", api.base)).await;
    assert_eq!(status["status"], "SUCCESS", "{status}");
    let held = if status.get("stdout").is_some() {
        &status
    } else {
        &status["result"]
    };
    assert_eq!(held["stdout"], "{\"hello\": \"from the original\"}\n", "{status}");
    assert_eq!(held["workerId"], "ip-10-0-1-17");

    // A FAILED result of the original worker, found by /status only (no waiter).
    let other = uuid::Uuid::new_v4().to_string();
    let failed = format!(
        r#"{{"requestId":"{other}","functionId":"{function_id}","workerId":"unknown","status":"FAILED","exitCode":-1,"stdout":"","stderr":"Execution timed out after 300000ms","durationMs":300004,"peakMemoryBytes":null,"allocatedMemoryMb":null,"optimizationTip":null,"estimatedSavings":null,"recommendedMemoryMb":null}}"#
    );
    let _: () = redis::cmd("SETEX")
        .arg(format!("job:{other}"))
        .arg(3600)
        .arg(&failed)
        .query_async(&mut conn)
        .await
        .unwrap();
    let status = get_json(&client, format!("{}/status/{other}", api.base)).await;
    assert_eq!(status["status"], "FAILED", "{status}");
    let held = if status.get("stderr").is_some() {
        &status
    } else {
        &status["result"]
    };
    assert_eq!(held["stderr"], "Execution timed out after 300000ms");
}

#[tokio::test]
async fn results_carry_the_original_extras_and_the_recommendation_follows_recent_runs() {
    let app = TestApp::start().await;
    let id = app
        .upload_py(
            "def handler(event, context):\n    print('working')\n    return {'n': event['n']}\n",
            &[("memoryMb", "512")],
        )
        .await;
    let fresh: Value = app.fetch_json(&format!("/functions/{id}/recommendation")).await;
    assert_eq!(fresh["basedOnRuns"], 0, "{fresh}");
    assert_eq!(fresh["recommendedMemoryMb"], Value::Null);
    assert_eq!(fresh["allocatedMemoryMb"], 512);

    let mut last = Value::Null;
    for n in 0..3 {
        last = app.run_ok(&id, json!({"n": n})).await;
    }
    assert_eq!(last["status"], "SUCCESS");
    assert_eq!(last["stdout"], "working\n{\"n\":2}\n");
    assert_eq!(last["result"], json!({"n": 2}));
    assert_eq!(last["allocatedMemoryMb"], 512);
    assert!(last["workerId"].as_str().is_some_and(|w| !w.is_empty()), "{last}");
    let (worker_ms, handler_ms) = (
        last["durationMs"].as_f64().unwrap(),
        last["handlerDurationMs"].as_f64().unwrap(),
    );
    assert!(worker_ms >= handler_ms, "{last}");
    assert!(last["resources"]["memoryUsedMb"].as_f64().unwrap() > 0.0, "{last}");
    // Three runs of a small function judged together: far below 512 MB.
    assert_eq!(last["autoTuner"]["basedOnRuns"], 3, "{last}");
    let rec = last["recommendedMemoryMb"].as_u64().unwrap();
    assert!((32..512).contains(&rec), "{last}");
    assert!(last["estimatedSavings"].as_str().unwrap().starts_with('$'));
    assert!(last["optimizationTip"]
        .as_str()
        .unwrap()
        .contains(&format!("Reduce to {rec} MB")));

    // The API's recommendation, from the invocation logs of every worker
    // (a log is written just after its result is published: wait for it).
    let deadline = Instant::now() + Duration::from_secs(10);
    let r: Value = loop {
        let r: Value = app.fetch_json(&format!("/functions/{id}/recommendation")).await;
        if r["basedOnRuns"] == 3 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r["functionId"], id.as_str());
    assert_eq!(r["basedOnRuns"], 3, "{r}");
    assert!(r["peakMemoryMb"].as_f64().unwrap() > 0.0);
    assert_eq!(r["recommendedMemoryMb"], rec, "{r}");
    assert_eq!(r["estimatedSavings"], last["estimatedSavings"]);
    assert!(r["tip"].as_str().unwrap().contains("Resource waste"));

    let missing = app
        .get("/functions/no-such-function/recommendation")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // Documented in the OpenAPI document.
    let doc = app.public_json("/openapi.json").await;
    assert!(doc["paths"]["/functions/{id}/recommendation"]["get"].is_object());
    app.stop().await;
}

#[tokio::test]
async fn cpu_use_is_measured_when_the_run_is_long_enough_to_tell() {
    let app = TestApp::start().await;
    let id = app
        .upload_py(
            "import time\n\
             def handler(event, context):\n    \
                 t = time.time()\n    \
                 if event['busy']:\n        \
                     while time.time() - t < 0.4:\n            pass\n    \
                 else:\n        time.sleep(event['sleep'])\n    \
                 return 'done'\n",
            &[],
        )
        .await;
    let busy = app.run_ok(&id, json!({"busy": true})).await;
    let cpu = busy["resources"]["cpuUsagePercent"]
        .as_f64()
        .unwrap_or_else(|| panic!("{busy}"));
    // A busy loop gets what the scheduler gives it (on a loaded 2-core host,
    // maybe a third of a core): real CPU time is measured, whatever the share.
    assert!(cpu > 10.0, "a busy loop uses CPU: {busy}");
    if cpu > 80.0 {
        assert!(
            busy["optimizationTip"].as_str().unwrap().contains("CPU bound"),
            "{busy}"
        );
    }
    // A string return value is printed as it is.
    assert_eq!(busy["stdout"], "done\n");

    let idle = app.run_ok(&id, json!({"busy": false, "sleep": 0.7})).await;
    let cpu = idle["resources"]["cpuUsagePercent"]
        .as_f64()
        .unwrap_or_else(|| panic!("{idle}"));
    assert!(cpu < 10.0, "sleeping is not CPU: {idle}");
    assert!(
        idle["optimizationTip"].as_str().unwrap().contains("I/O bound"),
        "{idle}"
    );

    // Too short to tell on a clock tick: left out, not guessed.
    let quick = app.run_ok(&id, json!({"busy": false, "sleep": 0})).await;
    assert!(quick["resources"]["memoryUsedMb"].as_f64().unwrap() > 0.0, "{quick}");
    if quick["handlerDurationMs"].as_f64().unwrap() < 1.0 {
        assert!(quick["resources"].get("cpuUsagePercent").is_none(), "{quick}");
    }
    app.stop().await;
}

/// A table written by the original controller (or shared with one during a
/// migration): its functions are listed, read and run here as they are, and
/// a runtime this version does not run is named, not a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_the_original_controller_registered_are_listed_and_run() {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    let mut fleet = Fleet::new().await;
    let table = fleet.cluster.var("TABLE_NAME").to_string();
    let store = S3ArtifactStore::new(&aws(), &fleet.bucket).await;
    let settings = aws();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(settings.region.clone()))
        .endpoint_url(settings.endpoint_url.clone().expect("moto endpoint"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .load()
        .await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    // Exactly the attributes the original's /upload writes (multer-s3 key, envVars as a JSON string).
    let register = |id: &str, runtime: &str, key: &str, env: &str| {
        let s = |v: &str| A::S(v.to_string());
        dynamodb
            .put_item()
            .table_name(&table)
            .item("functionId", s(id))
            .item("name", s(&format!("{runtime}-fn")))
            .item("description", s(""))
            .item("s3Key", s(key))
            .item("originalName", s("code.zip"))
            .item("runtime", s(runtime))
            .item("memoryMb", A::N("256".into()))
            .item("uploadedAt", s("2026-01-02T03:04:05.678Z"))
            .item("envVars", s(env))
            .send()
    };
    let py = format!("py-{}", uuid::Uuid::new_v4().simple());
    let node = format!("node-{}", uuid::Uuid::new_v4().simple());
    let go = format!("go-{}", uuid::Uuid::new_v4().simple());
    let py_code =
        "import os\ndef handler(event, context):\n    return {'hi': event['name'], 'g': os.environ['GREETING']}\n";
    let node_code = "const input = JSON.parse(process.env.PAYLOAD || '{}');\nconsole.log(JSON.stringify({hi: input.name, g: process.env.GREETING}));\n";
    for (id, runtime, file, code) in [
        (&py, "python", "main.py", py_code),
        (&node, "nodejs", "index.js", node_code),
    ] {
        let key = format!("uploads/{id}-code.zip");
        store.put(&key, zip_of(&[(file, code)]).into()).await.unwrap();
        register(id, runtime, &key, r#"{"GREETING":"Hello"}"#).await.unwrap();
    }
    register(&go, "go", "uploads/go.zip", "{}").await.unwrap();

    let api = fleet.api();
    let _worker = fleet.worker();
    let client = reqwest::Client::new();
    let list: Value = get_json(&client, format!("{}/functions", api.base)).await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["functionId"].as_str())
        .collect();
    assert!(ids.contains(&py.as_str()) && ids.contains(&node.as_str()), "{list}");
    let one: Value = get_json(&client, format!("{}/functions/{py}", api.base)).await;
    assert_eq!(
        (one["memoryMb"].as_u64(), one["runtime"].as_str()),
        (Some(256), Some("python")),
        "{one}"
    );
    assert_eq!(
        one["envVarNames"],
        json!(["GREETING"]),
        "names only, as for every function"
    );
    for id in [&py, &node] {
        let (status, body) = run_at(&client, &api.base, id, json!({"name": "Ada"}), false).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "SUCCESS", "{body}");
        assert_eq!(body["result"], json!({"hi": "Ada", "g": "Hello"}), "{body}");
    }
    let r = client
        .get(format!("{}/functions/{go}", api.base))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("\"go\""), "{body}");
}
