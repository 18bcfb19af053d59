//! Job guarantees in `infra up`: retries with backoff, dead letters and
//! redrive, idempotency keys, large inputs and results.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// Fails the first two runs of each input id, then succeeds. (A warm
/// instance keeps module state between runs; one worker slot keeps the
/// runs on one instance.)
const FLAKY: &str = r#"
seen = {}
def handler(event, context):
    n = seen.get(event["id"], 0) + 1
    seen[event["id"]] = n
    if n <= 2:
        raise RuntimeError(f"flaky failure {n}")
    return {"runs": n}
"#;

#[tokio::test]
async fn failing_async_runs_are_retried_until_they_succeed() {
    let app = TestApp::start_with(|a| a.pool.worker_concurrency = "1".into()).await;
    let id = app
        .upload_py(FLAKY, &[("maxRetries", "2"), ("retryBackoffSeconds", "1")])
        .await;
    let t0 = Instant::now();
    let job = app.run_async(&id, json!({"id": "a"})).await;
    let (_, body) = app.wait_job(&job, Duration::from_secs(60)).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["attempt"], 3, "{body}");
    assert_eq!(body["result"]["runs"], 3);
    let attempts = body["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{body}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a["attempt"], i as u64 + 1);
        assert_eq!(a["status"], "FAILED");
        assert!(
            a["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("flaky failure {}", i + 1)),
            "{a}"
        );
    }
    // Backoff 1 s, then 2 s.
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "retried after {:?}",
        t0.elapsed()
    );
    assert!(app
        .metrics()
        .await
        .contains(&format!("infra_retries_total{{function=\"{id}\"}} 2")));

    // A sync run is never retried: its caller gets the failure.
    let (status, body) = app.run(&id, json!({"id": "b"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "FAILED", "{body}");
    assert_eq!(body["attempt"], 1);
    app.stop().await;
}

#[tokio::test]
async fn exhausted_jobs_are_dead_lettered_and_redriven_after_a_fix() {
    let app = TestApp::start().await;
    let id = app
        .upload_py(
            "def handler(event, context):\n    raise ValueError('bad ' + event['x'])\n",
            &[("maxRetries", "1"), ("retryBackoffSeconds", "0")],
        )
        .await;
    let job = app.run_async(&id, json!({"x": "input"})).await;
    let (_, body) = app.wait_job(&job, Duration::from_secs(60)).await;
    assert_eq!(body["status"], "FAILED", "{body}");
    assert_eq!(body["attempt"], 2);
    assert_eq!(body["deadLettered"], true, "{body}");
    assert_eq!(body["attempts"].as_array().unwrap().len(), 1);

    let list: Value = app.fetch_json(&format!("/dead-letters?functionId={id}")).await;
    assert_eq!(list["count"], 1, "{list}");
    let letter = &list["deadLetters"][0];
    assert_eq!(letter["jobId"], job.as_str());
    assert_eq!(letter["input"], json!({"x": "input"}));
    assert_eq!(
        letter["attempts"].as_array().unwrap().len(),
        2,
        "every failed run: {letter}"
    );
    assert!(letter["attempts"][1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bad input"));
    assert!(letter["reason"].as_str().unwrap().contains("maxRetries 1"), "{letter}");
    assert!(app
        .metrics()
        .await
        .contains(&format!("infra_dead_letters_total{{function=\"{id}\"}} 1")));

    // Fix the function, then redrive: the new job runs the new code.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"def handler(event, context):\n    return 'fixed ' + event['x']\n".to_vec())
            .file_name("main.py"),
    );
    let r = app
        .put(&format!("/functions/{id}"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .post("/dead-letters/redrive")
        .json(&json!({"functionId": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let redriven: Value = r.json().await.unwrap();
    assert_eq!(redriven["redriven"].as_array().unwrap().len(), 1, "{redriven}");
    assert_eq!(redriven["redriven"][0]["jobId"], job.as_str());
    let new_job = redriven["redriven"][0]["newJobId"].as_str().unwrap();
    let (_, body) = app.wait_job(new_job, Duration::from_secs(30)).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"], "fixed input");
    let list: Value = app.fetch_json("/dead-letters").await;
    assert_eq!(list["count"], 0, "redriven letters leave: {list}");
    // The original job keeps its outcome.
    assert_eq!(app.status(&job).await.1["status"], "FAILED");
    app.stop().await;
}

/// (Dead-lettering by age needs a job older than 60 s, the setting's
/// minimum: covered by the policy's unit test, not here.)
#[tokio::test]
async fn retry_settings_are_validated_and_updated_field_by_field() {
    let app = TestApp::start().await;
    let r = app
        .upload_raw(
            "main.py",
            b"def handler(e, c):\n    return 1\n".to_vec(),
            &[("maxEventAgeSeconds", "10"), ("maxRetries", "6")],
        )
        .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let details = body["details"].to_string();
    assert!(
        details.contains("maxEventAgeSeconds must be an integer from 60 to 21600"),
        "{body}"
    );
    assert!(details.contains("maxRetries must be an integer from 0 to 5"), "{body}");
    let id = app
        .upload_py("def handler(e, c):\n    return 1\n", &[("maxEventAgeSeconds", "60")])
        .await;
    let f: Value = app.fetch_json(&format!("/functions/{id}")).await;
    assert_eq!(
        f["retry"],
        json!({"maxRetries": 2, "backoffSeconds": 1, "retryOnOom": false, "maxEventAgeSeconds": 60})
    );
    let r = app
        .put(&format!("/functions/{id}"))
        .json(&json!({"maxRetries": 0, "retryOnOom": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let f: Value = r.json().await.unwrap();
    assert_eq!(f["retry"]["maxRetries"], 0);
    assert_eq!(f["retry"]["retryOnOom"], true);
    assert_eq!(f["retry"]["maxEventAgeSeconds"], 60, "unchanged fields stay");
    app.stop().await;
}

#[tokio::test]
async fn one_idempotency_key_makes_one_job() {
    let app = TestApp::start().await;
    let id = app
        .upload_py(
            "import time\ndef handler(event, context):\n    time.sleep(0.2)\n    return event['n']\n",
            &[],
        )
        .await;
    let send = |key: &'static str, n: i64, asynchronous: bool| {
        let req = app
            .post("/run")
            .header("idempotency-key", key)
            .json(&json!({"functionId": id, "inputData": {"n": n}}));
        let req = if asynchronous {
            req.header("x-async", "true")
        } else {
            req
        };
        async move {
            let r = req.send().await.unwrap();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (r.status().as_u16(), replayed, r.json::<Value>().await.unwrap())
        }
    };
    let answers = futures::future::join_all((0..50).map(|_| send("key-1", 7, true))).await;
    let mut ids: Vec<&str> = answers.iter().map(|(_, _, b)| b["jobId"].as_str().unwrap()).collect();
    assert!(answers.iter().all(|(s, _, _)| *s == 202));
    ids.dedup();
    assert_eq!(ids.len(), 1, "one job for one key: {ids:?}");
    assert_eq!(answers.iter().filter(|(_, replayed, _)| !replayed).count(), 1);
    let job = ids[0].to_string();

    // The same key from a sync caller waits for that job's result.
    let (status, replayed, body) = send("key-1", 7, false).await;
    assert_eq!(status, 200, "{body}");
    assert!(replayed);
    assert_eq!(body["jobId"], job.as_str());
    assert_eq!(body["result"], 7);

    // A different body under the same key is refused.
    let (status, _, body) = send("key-1", 8, true).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Idempotency-Key"), "{body}");
    assert!(app.metrics().await.contains("infra_idempotent_replays_total 50"));

    // A bad key is a 400.
    let r = app
        .post("/run")
        .header("idempotency-key", "")
        .json(&json!({"functionId": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn five_mib_inputs_and_results_round_trip() {
    let app = TestApp::start().await;
    let id = app
        .upload_py(
            "def handler(event, context):\n    return {'len': len(event['blob']), 'echo': event['blob'][::-1]}\n",
            &[],
        )
        .await;
    let blob: String = (0..5 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let reversed: String = blob.chars().rev().collect();
    let body = app.run_ok(&id, json!({"blob": blob})).await;
    assert_eq!(body["status"], "SUCCESS");
    assert_eq!(body["result"]["len"], 5 * 1024 * 1024);
    assert!(body["result"]["echo"].as_str().unwrap() == reversed);
    let job = app.run_async(&id, json!({"blob": blob})).await;
    let (_, body) = app.wait_job(&job, Duration::from_secs(60)).await;
    assert_eq!(body["result"]["len"], 5 * 1024 * 1024, "{}", body["error"]);
    app.stop().await;
}

/// Records when each run started and ended (wall clock, shared by every
/// process on the host), so overlap can be measured from the results alone.
const TIMED: &str = r#"
import time
def handler(event, context):
    start = time.time()
    time.sleep(0.2)
    return {"start": start, "end": time.time()}
"#;

/// Most runs that overlapped at any moment.
pub fn max_overlap(intervals: &[(f64, f64)]) -> usize {
    let mut edges: Vec<(f64, i32)> = intervals.iter().flat_map(|(s, e)| [(*s, 1), (*e, -1)]).collect();
    // Ends before starts at the same instant.
    edges.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

#[tokio::test]
async fn max_concurrency_bounds_runs_and_max_queued_answers_429() {
    let app = TestApp::start_with(|a| a.pool.worker_concurrency = "4".into()).await;
    let id = app.upload_py(TIMED, &[("maxConcurrency", "2")]).await;
    let mut jobs = Vec::new();
    for _ in 0..12 {
        jobs.push(app.run_async(&id, json!({})).await);
    }
    let mut intervals = Vec::new();
    for job in &jobs {
        let (_, body) = app.wait_job(job, Duration::from_secs(60)).await;
        assert_eq!(body["status"], "SUCCESS", "{body}");
        intervals.push((
            body["result"]["start"].as_f64().unwrap(),
            body["result"]["end"].as_f64().unwrap(),
        ));
    }
    assert_eq!(max_overlap(&intervals), 2, "{intervals:?}");
    assert!(app.metrics().await.contains("infra_jobs_deferred_total"));

    // maxQueued: beyond it, 429 with Retry-After; nothing is queued for it.
    // Unfinished for 8 s, however slowly a loaded machine sends the six.
    let slow = app.upload_py(&runs_until("1"), &[("maxQueued", "3")]).await;
    let input = json!({"until": until(8.0)});
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let r = app
            .post("/run")
            .header("x-async", "true")
            .json(&json!({"functionId": slow, "inputData": input}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => accepted.push(r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string()),
            429 => {
                assert_eq!(r.headers()["retry-after"], "1");
                let body: Value = r.json().await.unwrap();
                assert!(body["error"].as_str().unwrap().contains("maxQueued"), "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((accepted.len(), refused), (3, 3));
    // The load of unfinished jobs, the signal to scale workers on.
    let status: Value = app.fetch_json("/system/status").await;
    assert_eq!(status["functions"][&slow]["jobs"], 3, "{status}");
    for job in &accepted {
        app.wait_job(job, Duration::from_secs(30)).await;
    }
    // Finished jobs free their places.
    assert_eq!(app.run_async(&slow, json!({"until": 0})).await.len(), 36);
    app.stop().await;
}
