//! `infra api` and `infra worker` as separate processes, joined only by moto
//! (S3, DynamoDB, SQS) and a real redis-server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use infra_controller::backend::aws::{DynamoLogStore, DynamoRegistry, S3ArtifactStore, SqsQueue};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::services::{aws, unique, RedisServer};

/// Redis, moto's S3/DynamoDB/SQS, and `infra api` / `infra worker` processes.
pub(crate) struct Cluster {
    pub(crate) redis: RedisServer,
    /// The environment every process of the cluster gets.
    env: Vec<(String, String)>,
    dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    pub(crate) async fn new() -> Cluster {
        let settings = aws();
        let bucket = unique("artifacts");
        let table = unique("functions");
        S3ArtifactStore::new(&settings, &bucket)
            .await
            .ensure_bucket()
            .await
            .unwrap();
        DynamoRegistry::new(&settings, &table)
            .await
            .ensure_table()
            .await
            .unwrap();
        let queue = SqsQueue::create_queue(&settings, &unique("jobs")).await.unwrap();
        let logs = unique("logs");
        DynamoLogStore::new(&settings, &logs, Duration::from_secs(86_400))
            .await
            .ensure_table()
            .await
            .unwrap();
        let redis = RedisServer::start();
        let env = [
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", settings.endpoint_url.clone().unwrap()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("BUCKET_NAME", bucket),
            ("TABLE_NAME", table),
            ("SQS_URL", queue),
            ("LOGS_TABLE_NAME", logs),
            ("REDIS_URL", redis.url()),
            ("INFRA_API_KEY", KEY.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Cluster {
            redis,
            env,
            dirs: Vec::new(),
        }
    }

    fn spawn(&self, args: &[&str], extra: &[(&str, &str)]) -> Proc {
        let mut env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.extend_from_slice(extra);
        spawn_infra(args, &env)
    }

    /// One of the environment variables every process of the cluster gets.
    pub(crate) fn var(&self, name: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    pub(crate) fn api(&self, extra: &[(&str, &str)]) -> Proc {
        let mut env = vec![("PORT", "0"), ("RATE_LIMIT_PER_MINUTE", "0")];
        env.extend_from_slice(extra);
        self.spawn(&["api"], &env)
    }

    pub(crate) fn worker(&mut self, extra: &[(&str, &str)]) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_string_lossy().to_string();
        self.dirs.push(dir);
        let mut env = vec![
            ("WORKER_PORT", "0"),
            ("WORKER_DATA_DIR", path.as_str()),
            ("WORKER_CONCURRENCY", "4"),
        ];
        env.extend_from_slice(extra);
        self.spawn(&["worker"], &env)
    }
}

/// Counts messages per channel on `result:*`, as a second subscriber.
async fn count_results(url: &str) -> Arc<Mutex<HashMap<String, u32>>> {
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let client = redis::Client::open(url).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.psubscribe("result:*").await.unwrap();
    let c = counts.clone();
    tokio::spawn(async move {
        let mut stream = pubsub.into_on_message();
        while let Some(msg) = stream.next().await {
            *c.lock().unwrap().entry(msg.get_channel_name().to_string()).or_insert(0) += 1;
        }
    });
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_two_workers_give_every_job_exactly_one_result() {
    let mut cluster = Cluster::new().await;
    let api = cluster.api(&[]);
    let _w1 = cluster.worker(&[]);
    let _w2 = cluster.worker(&[]);
    let counts = count_results(&cluster.redis.url()).await;
    let client = reqwest::Client::new();
    let id = upload_at(
        &client,
        &api.base,
        "def handler(event, context):\n    return event['n'] * 2\n",
    )
    .await;

    // Sync runs return their results; the second is warm.
    let (status, first) = run_at(&client, &api.base, &id, json!({"n": 1}), false).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["result"], 2);
    let (_, again) = run_at(&client, &api.base, &id, json!({"n": 2}), false).await;
    assert_eq!(again["result"], 4);

    let mut jobs = Vec::new();
    for chunk in (0..200).collect::<Vec<i64>>().chunks(20) {
        let submitted = futures::future::join_all(chunk.iter().map(|n| {
            let client = client.clone();
            let base = api.base.clone();
            let id = id.clone();
            async move {
                let (status, body) = run_at(&client, &base, &id, json!({"n": n}), true).await;
                assert_eq!(status, 202, "{body}");
                (*n, body["jobId"].as_str().unwrap().to_string())
            }
        }))
        .await;
        jobs.extend(submitted);
    }
    for (n, job) in &jobs {
        let (_, body) = wait_job_at(&client, &api.base, job, Duration::from_secs(120)).await;
        assert_eq!(body["status"], "SUCCESS", "{body}");
        assert_eq!(body["result"], n * 2);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = counts.lock().unwrap().clone();
    for (_, job) in &jobs {
        assert_eq!(
            counts.get(&format!("result:{job}")),
            Some(&1),
            "job {job} must be published exactly once"
        );
    }
    let list: Value = get_json(&client, format!("{}/functions", api.base)).await;
    assert_eq!(list[0]["invocations"], 202, "counted in DynamoDB and in memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_leaves_every_job_terminal() {
    let mut cluster = Cluster::new().await;
    let api = cluster.api(&[]);
    let quick_visibility = [("VISIBILITY_TIMEOUT_SECONDS", "3"), ("WORKER_CONCURRENCY", "2")];
    let victim = cluster.worker(&quick_visibility);
    let client = reqwest::Client::new();
    // Every job runs until one moment, 20 s away: the victim still holds a
    // job when the kill lands however slowly a loaded machine polls (a
    // fixed 3 s sleep once ended between the poll that saw it RUNNING and
    // the kill).
    let id = upload_at(&client, &api.base, &runs_until("event['n']")).await;
    let until = until(20.0);
    let mut jobs = Vec::new();
    for n in 0..6 {
        let (status, body) = run_at(&client, &api.base, &id, json!({"n": n, "until": until}), true).await;
        assert_eq!(status, 202);
        jobs.push((n, body["jobId"].as_str().unwrap().to_string()));
    }
    // Only the victim runs so far: wait until it holds a running job, then kill it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let held = 'running: loop {
        for (_, job) in &jobs {
            let body: Value = get_json(&client, format!("{}/status/{job}", api.base)).await;
            if body["state"] == "RUNNING" {
                break 'running job.clone();
            }
        }
        assert!(Instant::now() < deadline, "no job started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Kill first: starting the survivor can take longer than the job under
    // load, and the victim must die with a job in hand.
    signal(&victim.child, libc::SIGKILL);
    let at_kill: Value = get_json(&client, format!("{}/status/{held}", api.base)).await;
    assert_eq!(
        at_kill["status"], "pending",
        "the victim finished {held} before the kill landed: {at_kill}"
    );
    let _survivor = cluster.worker(&quick_visibility);
    for (n, job) in &jobs {
        let (_, body) = wait_job_at(&client, &api.base, job, Duration::from_secs(90)).await;
        assert_eq!(body["status"], "SUCCESS", "{body}");
        assert_eq!(body["result"], *n);
        if *job == held {
            assert!(
                body["attempt"].as_u64().unwrap_or(0) >= 2,
                "the job the killed worker held ran again elsewhere: {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_503_fast_and_recovers_without_restart() {
    let mut cluster = Cluster::new().await;
    let api = cluster.api(&[("RATE_LIMIT_PER_MINUTE", "100")]);
    let client = reqwest::Client::new();
    let id = upload_at(&client, &api.base, "def handler(event, context):\n    return 1\n").await;
    let health = |client: reqwest::Client, base: String| async move {
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(health(client.clone(), api.base.clone()).await, 200);

    cluster.redis.stop();
    let stopped = Instant::now();
    while health(client.clone(), api.base.clone()).await != 503 {
        assert!(
            stopped.elapsed() < Duration::from_secs(1),
            "health still 200 a second into the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = Instant::now();
    let (status, body) = run_at(&client, &api.base, &id, json!({}), true).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "/run took {:?} during the outage",
        t0.elapsed()
    );
    assert!(body["error"].as_str().unwrap().contains("unavailable"), "{body}");

    cluster.redis.resume();
    let resumed = Instant::now();
    while health(client.clone(), api.base.clone()).await != 200 {
        assert!(resumed.elapsed() < Duration::from_secs(15), "health did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = run_at(&client, &api.base, &id, json!({}), true).await;
    assert_eq!(status, 202, "{body}");
}

/// Polls `/status` until the job is terminal. A 404 is allowed while the job
/// waits in the queue after a Redis loss (its PENDING record went with Redis);
/// once finished, the durable record answers.
async fn wait_durable(client: &reqwest::Client, base: &str, job: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = client
            .get(format!("{base}/status/{job}"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if code == 200 && body["status"] != "pending" {
            return body;
        }
        assert!(matches!(code, 200 | 404 | 503), "status of {job}: {code} {body}");
        assert!(
            Instant::now() < deadline,
            "job {job} not terminal in {within:?}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_load_loses_no_accepted_job() {
    let mut cluster = Cluster::new().await;
    let api = cluster.api(&[]);
    let _w1 = cluster.worker(&[]);
    let _w2 = cluster.worker(&[]);
    let client = reqwest::Client::new();
    let id = upload_at(
        &client,
        &api.base,
        "import time\ndef handler(event, context):\n    time.sleep(0.01)\n    return event['n']\n",
    )
    .await;
    const JOBS: i64 = 1000;
    let mut accepted: Vec<(i64, String)> = Vec::new();
    let mut refused = 0;
    let mut n = 0;
    let mut restarted = false;
    while n < JOBS {
        if !restarted && n >= JOBS / 3 {
            // Mid-load: Redis goes away without persistence and comes back empty.
            cluster.redis.stop();
            for _ in 0..20 {
                let (status, _) = run_at(&client, &api.base, &id, json!({"n": -1}), true).await;
                if status == 202 {
                    panic!("accepted while Redis is down");
                }
                refused += 1;
            }
            cluster.redis.resume();
            restarted = true;
        }
        let chunk: Vec<i64> = (n..(n + 25).min(JOBS)).collect();
        let answers = futures::future::join_all(chunk.iter().map(|k| {
            let client = client.clone();
            let base = api.base.clone();
            let id = id.clone();
            async move { (*k, run_at(&client, &base, &id, json!({"n": k}), true).await) }
        }))
        .await;
        for (k, (status, body)) in answers {
            match status {
                202 => accepted.push((k, body["jobId"].as_str().unwrap().to_string())),
                // Refused while Redis reconnects: not accepted, so not owed a result.
                503 => refused += 1,
                other => panic!("/run answered {other}: {body}"),
            }
        }
        n += 25;
    }
    assert!(accepted.len() >= 900, "only {} of {JOBS} accepted", accepted.len());
    let mut success = 0;
    for (k, job) in &accepted {
        let body = wait_durable(&client, &api.base, job, Duration::from_secs(180)).await;
        assert_eq!(body["status"], "SUCCESS", "{body}");
        assert_eq!(body["result"], *k);
        success += 1;
    }
    eprintln!(
        "redis restart mid-load: {} accepted, {success} SUCCESS readable from /status, {refused} refused with 503",
        accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_retries_dead_letters_idempotency_and_large_payloads() {
    let mut cluster = Cluster::new().await;
    let api = cluster.api(&[]);
    let api2 = cluster.api(&[]);
    let _worker = cluster.worker(&[]);
    let client = reqwest::Client::new();

    // Idempotency across two API processes: 50 concurrent requests, one job.
    let echo = upload_at(
        &client,
        &api.base,
        "def handler(event, context):\n    b = event.get('blob', '')\n    return {'len': len(b), 'tail': b[-10:], 'big': b[::-1]}\n",
    )
    .await;
    let answers = futures::future::join_all((0..50).map(|i| {
        let client = client.clone();
        let base = if i % 2 == 0 {
            api.base.clone()
        } else {
            api2.base.clone()
        };
        let echo = echo.clone();
        async move {
            let r = client
                .post(format!("{base}/run"))
                .header("x-api-key", KEY)
                .header("x-async", "true")
                .header("idempotency-key", "order-42")
                .json(&json!({"functionId": echo, "inputData": {"blob": "abc"}}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let mut ids: Vec<String> = answers
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, 202, "{b}");
            b["jobId"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "two API processes, one key, one job: {ids:?}");
    let r = client
        .post(format!("{}/run", api2.base))
        .header("x-api-key", KEY)
        .header("idempotency-key", "order-42")
        .json(&json!({"functionId": echo, "inputData": {"blob": "other"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    // 5 MiB in and out through SQS (the input rides in S3 beside the message).
    let blob: String = (0..5 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let (status, body) = run_at(&client, &api.base, &echo, json!({"blob": blob}), false).await;
    assert_eq!(status, 200, "{}", body["error"]);
    assert_eq!(body["result"]["len"], 5 * 1024 * 1024);
    assert_eq!(body["result"]["big"].as_str().unwrap().len(), 5 * 1024 * 1024);
    let (status, body) = run_at(&client, &api.base, &echo, json!({"blob": blob}), true).await;
    assert_eq!(status, 202);
    let body = wait_durable(
        &client,
        &api.base,
        body["jobId"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(body["result"]["len"], 5 * 1024 * 1024, "{}", body["error"]);

    // Retries through SQS delays, then the dead letter in S3, then redrive.
    let failing = upload_at_with(
        &client,
        &api.base,
        "def handler(event, context):\n    raise ValueError('nope')\n",
        &[("maxRetries", "1"), ("retryBackoffSeconds", "1")],
    )
    .await;
    let (_, body) = run_at(&client, &api.base, &failing, json!({"k": 1}), true).await;
    let job = body["jobId"].as_str().unwrap().to_string();
    let body = wait_durable(&client, &api.base, &job, Duration::from_secs(60)).await;
    assert_eq!(body["status"], "FAILED");
    assert_eq!(body["attempt"], 2, "{body}");
    assert_eq!(body["deadLettered"], true);
    let list = get_json(&client, format!("{}/dead-letters?functionId={failing}", api2.base)).await;
    assert_eq!(list["count"], 1, "{list}");
    assert_eq!(list["deadLetters"][0]["attempts"].as_array().unwrap().len(), 2);
    let r = client
        .put(format!("{}/functions/{failing}", api.base))
        .header("x-api-key", KEY)
        .multipart(
            reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(b"def handler(event, context):\n    return event['k'] + 1\n".to_vec())
                    .file_name("main.py"),
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r: Value = client
        .post(format!("{}/dead-letters/redrive", api2.base))
        .header("x-api-key", KEY)
        .json(&json!({"jobIds": [job]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_job = r["redriven"][0]["newJobId"].as_str().expect("redriven").to_string();
    let body = wait_durable(&client, &api.base, &new_job, Duration::from_secs(60)).await;
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"], 2);

    // Ids no record can have (S3 cannot even list a prefix with control
    // characters; found by the contract test against infra api) are absent,
    // not a backend failure.
    let r = client
        .get(format!("{}/status/a%0Ab%17c", api.base))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let list = get_json(&client, format!("{}/dead-letters?functionId=%175.x", api.base)).await;
    assert_eq!(list["count"], 0, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_holds_across_two_workers() {
    let mut cluster = Cluster::new().await;
    let api = cluster.api(&[]);
    let _w1 = cluster.worker(&[("WORKER_CONCURRENCY", "4")]);
    let _w2 = cluster.worker(&[("WORKER_CONCURRENCY", "4")]);
    let client = reqwest::Client::new();
    let id = upload_at_with(
        &client,
        &api.base,
        "import time\ndef handler(event, context):\n    start = time.time()\n    time.sleep(0.2)\n    return {'start': start, 'end': time.time()}\n",
        &[("maxConcurrency", "2")],
    )
    .await;
    let mut jobs = Vec::new();
    for _ in 0..20 {
        let (status, body) = run_at(&client, &api.base, &id, json!({}), true).await;
        assert_eq!(status, 202, "{body}");
        jobs.push(body["jobId"].as_str().unwrap().to_string());
    }
    let status = get_json(&client, format!("{}/system/status", api.base)).await;
    assert!(status["functions"][&id]["jobs"].as_u64().unwrap() >= 1, "{status}");
    let mut intervals = Vec::new();
    for job in &jobs {
        let body = wait_durable(&client, &api.base, job, Duration::from_secs(120)).await;
        assert_eq!(body["status"], "SUCCESS", "{body}");
        intervals.push((
            body["result"]["start"].as_f64().unwrap(),
            body["result"]["end"].as_f64().unwrap(),
        ));
    }
    let overlap = crate::jobs::max_overlap(&intervals);
    assert_eq!(
        overlap, 2,
        "never more than 2 at once, and 2 do run together: {intervals:?}"
    );

    // maxQueued, counted in Redis by every API process: a third unfinished
    // job of a function that allows two is refused.
    let api2 = cluster.api(&[]);
    // Unfinished for 20 s, however slow the machine.
    let slow = upload_at_with(&client, &api.base, &runs_until("1"), &[("maxQueued", "2")]).await;
    let input = json!({"until": until(20.0)});
    for base in [&api.base, &api2.base] {
        let (status, body) = run_at(&client, base, &slow, input.clone(), true).await;
        assert_eq!(status, 202, "{body}");
    }
    let r = client
        .post(format!("{}/run", api2.base))
        .header("x-api-key", KEY)
        .header("x-async", "true")
        .json(&json!({"functionId": slow, "inputData": input}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_share_one_exact_rate_limit() {
    let cluster = Cluster::new().await;
    let limited = [("RATE_LIMIT_PER_MINUTE", "100")];
    let a = cluster.api(&limited);
    let b = cluster.api(&limited);
    let client = reqwest::Client::new();
    let mut passed = 0;
    let mut limited_count = 0;
    for i in 0..150 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let r = client
            .post(format!("{base}/run"))
            .header("x-api-key", KEY)
            .json(&json!({"functionId": "missing"}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            404 => passed += 1,
            429 => limited_count += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((passed, limited_count), (100, 50));
}

/// Records are cached for admission; a change made through one API process
/// reaches the others' caches through Redis at once, not after an expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_api_reaches_the_others_cache_at_once() {
    let cluster = Cluster::new().await;
    let a = cluster.api(&[]);
    let b = cluster.api(&[]);
    let client = reqwest::Client::new();
    let id = upload_at(&client, &a.base, "def handler(event, context):\n    return 1\n").await;
    // B caches the record by admitting a job.
    let (status, _) = run_at(&client, &b.base, &id, json!({}), true).await;
    assert_eq!(status, 202);
    let deleted = client
        .delete(format!("{}/functions/{id}", a.base))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let since = Instant::now();
    loop {
        let (status, body) = run_at(&client, &b.base, &id, json!({}), true).await;
        if status == 404 {
            break;
        }
        assert_eq!(status, 202, "{body}");
        // Without the change feed B would admit jobs of the deleted function for its 2 s expiry.
        assert!(
            since.elapsed() < Duration::from_millis(1000),
            "B still admits a deleted function"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reports_its_backends() {
    let mut cluster = Cluster::new().await;
    let worker = cluster.worker(&[]);
    let client = reqwest::Client::new();
    let r = client.get(format!("{}/health", worker.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    for check in ["artifacts", "queue", "resultBus"] {
        assert_eq!(body["checks"][check]["ok"], true, "{body}");
    }
    // Which runtimes it serves (the test command installs Node.js).
    assert_eq!(body["runtimes"]["python"], json!({"available": true}), "{body}");
    assert_eq!(body["runtimes"]["nodejs"], json!({"available": true}), "{body}");
    for runtime in ["go", "cpp"] {
        assert_eq!(body["runtimes"][runtime]["available"], false, "{body}");
        assert!(body["runtimes"][runtime]["reason"].is_string(), "{body}");
    }
    // The API alone runs no function: it says nothing of runtimes.
    let api = cluster.api(&[]);
    let api_health: Value = client
        .get(format!("{}/health", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(api_health.get("runtimes").is_none(), "{api_health}");
    assert!(api_health.get("isolation").is_none(), "{api_health}");
    let metrics = get_text(&client, format!("{}/metrics", worker.base)).await;
    assert!(metrics.contains("infra_warm_instances"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_status_lists_workers_and_goes_offline_without_them() {
    let mut cluster = Cluster::new().await;
    let api = cluster.api(&[]);
    let client = reqwest::Client::new();
    let status =
        |client: reqwest::Client, base: String| async move { get_json(&client, format!("{base}/system/status")).await };
    let body = status(client.clone(), api.base.clone()).await;
    assert_eq!(body["status"], "offline", "{body}");
    let mut w1 = cluster.worker(&[]);
    let _w2 = cluster.worker(&[("WORKER_CONCURRENCY", "2")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = status(client.clone(), api.base.clone()).await;
        if body["totals"]["workers"] == 2 {
            assert_eq!(body["status"], "online");
            assert_eq!(body["totals"]["concurrency"], 6);
            break;
        }
        assert!(Instant::now() < deadline, "workers never reported: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A stopping worker withdraws at once.
    sigterm(&w1.child);
    assert_eq!(
        tokio::task::block_in_place(|| wait_exit(&mut w1.child, Duration::from_secs(30))),
        0
    );
    let body = status(client.clone(), api.base.clone()).await;
    assert_eq!(body["totals"]["workers"], 1, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queue_messages_end_as_error_and_never_loop() {
    let mut cluster = Cluster::new().await;
    let api = cluster.api(&[]);
    let _worker = cluster.worker(&[("VISIBILITY_TIMEOUT_SECONDS", "2")]);
    let sqs_url = cluster.var("SQS_URL").to_string();
    let sqs = crate::services::sqs_client().await;
    let job_id = uuid::Uuid::new_v4().to_string();
    for body in [
        format!(r#"{{"requestId":"{job_id}","functionId":"f","runtime":"cobol"}}"#),
        "not json at all".to_string(),
    ] {
        sqs.send_message()
            .queue_url(&sqs_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let client = reqwest::Client::new();
    // The job never went through /run: its record appears when the worker ends it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let r = client
            .get(format!("{}/status/{job_id}", api.base))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break r.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the malformed job never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["status"], "FAILED", "{body}");
    assert_eq!(body["error"]["type"], "MalformedJob");
    // Both messages were deleted, not left to come back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&sqs_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let count = |name: aws_sdk_sqs::types::QueueAttributeName| {
        attrs
            .attributes()
            .and_then(|a| a.get(&name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages),
        "0"
    );
    assert_eq!(
        count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_logs_are_kept_in_the_logs_table() {
    let mut cluster = Cluster::new().await;
    let api = cluster.api(&[]);
    let _worker = cluster.worker(&[]);
    let client = reqwest::Client::new();
    let id = upload_at(
        &client,
        &api.base,
        "def handler(event, context):\n    print('line', event['n'])\n    return event['n']\n",
    )
    .await;
    let mut jobs = Vec::new();
    for n in 0..3 {
        let (status, body) = run_at(&client, &api.base, &id, json!({"n": n}), false).await;
        assert_eq!(status, 200, "{body}");
        jobs.push(body["jobId"].as_str().unwrap().to_string());
    }
    // The worker writes the log right after the result.
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let list: Value = get_json(&client, format!("{}/functions/{id}/logs?limit=10", api.base)).await;
        if list.as_array().map(Vec::len) == Some(3) {
            break list;
        }
        assert!(Instant::now() < deadline, "logs never arrived: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(list[0]["requestId"], jobs[2].as_str(), "newest first");
    let one: Value = get_json(&client, format!("{}/functions/{id}/logs/{}", api.base, jobs[0])).await;
    assert_eq!(one["stdout"], "line 0\n0\n", "its prints, then its return value");
    assert_eq!(one["status"], "SUCCESS");
    let missing = client
        .get(format!("{}/functions/{id}/logs/nope", api.base))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_deploys_to_s3_and_dynamodb_and_the_function_runs_warm() {
    use infra_controller::function::FunctionService;
    use infra_controller::operator::reconciler::NoSources;
    use infra_controller::operator::{FunctionSpec, Reconciler};

    let mut cluster = Cluster::new().await;
    let env = |k: &str| cluster.env.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let settings = aws();
    let artifacts = Arc::new(S3ArtifactStore::new(&settings, &env("BUCKET_NAME")).await);
    let registry = Arc::new(DynamoRegistry::new(&settings, &env("TABLE_NAME")).await);
    let reconciler = Reconciler::new(Arc::new(FunctionService::new(
        artifacts.clone(),
        registry.clone(),
        None,
    )));
    let spec: FunctionSpec = serde_yaml::from_str(
        "runtime: python\nwarmPool: {minWarm: 1}\ncode:\n  inline:\n    main.py: |\n      def handler(event, context):\n          return event['n'] + 1\n",
    )
    .unwrap();
    let applied = reconciler.apply("default", "inc", &spec, &NoSources).await.unwrap();
    let id = applied.record.function_id.clone();
    // Artifact in S3, record in DynamoDB, read back over their HTTP APIs.
    use infra_controller::backend::{ArtifactStore, FunctionRegistry};
    let zip = artifacts.get(&applied.record.s3_key).await.unwrap();
    assert_eq!(zip.len() as u64, applied.record.size_bytes);
    let stored = registry.get(&id).await.unwrap();
    assert_eq!(stored.owner.as_deref(), Some("default/inc"));
    assert_eq!(stored.warm_pool.min_warm, 1);
    // Applying the same resource again changes nothing.
    let again = reconciler.apply("default", "inc", &spec, &NoSources).await.unwrap();
    assert!(!again.changed && !again.uploaded);

    let api = cluster.api(&[]);
    let worker = cluster.worker(&[]);
    let client = reqwest::Client::new();
    let series = format!(r#"infra_pool_idle_instances{{function="{id}",runtime="python"}} 1"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = get_text(&client, format!("{}/metrics", worker.base)).await;
        if m.contains(&series) {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not pre-warm the function");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = run_at(&client, &api.base, &id, json!({"n": 41}), false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], 42);
    assert_eq!(body["coldStart"], false, "minWarm: the first run is warm: {body}");

    // Cleanup removes record and artifacts; repeating it is fine.
    reconciler.cleanup("default", "inc").await.unwrap();
    reconciler.cleanup("default", "inc").await.unwrap();
    assert!(registry.get(&id).await.is_err());
    assert!(artifacts.list(&format!("functions/{id}/")).await.unwrap().is_empty());
}

/// The operator against a real Kubernetes cluster: needs `KUBECONFIG` (or an
/// in-cluster config) with rights to create CRDs and Functions in `default`,
/// plus what `scripts/test` starts (moto, redis-server). Run with
/// `scripts/test -- --ignored operator_against_a_real_cluster`.
/// It applies the CRD, starts `infra operator`, `infra api` and
/// `infra worker`, applies a Function, waits for Ready, runs it over the
/// API, deletes it and checks the cleanup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster (KUBECONFIG)"]
async fn operator_against_a_real_cluster() {
    use infra_controller::operator::crd::Function;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use k8s_openapi::api::events::v1::Event;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};

    let client = real_cluster_with_crd().await;
    let apply = PatchParams::apply("infra-test").force();

    let mut cluster = Cluster::new().await;
    // Two replicas: one holds the Lease and reconciles, the other stands by.
    // The operators may run as the chart's ServiceAccount (its RBAC, a real
    // token): INFRA_TEST_OPERATOR_KUBECONFIG, with the Lease in
    // INFRA_TEST_LEASE_NAMESPACE (the release namespace).
    let operator_kubeconfig = std::env::var("INFRA_TEST_OPERATOR_KUBECONFIG")
        .or_else(|_| std::env::var("KUBECONFIG"))
        .unwrap_or_default();
    let lease_ns = std::env::var("INFRA_TEST_LEASE_NAMESPACE").unwrap_or_else(|_| "default".into());
    let operator_env = |pod: &'static str| {
        vec![
            ("OPERATOR_PORT", "0".to_string()),
            ("POD_NAME", pod.to_string()),
            ("POD_NAMESPACE", lease_ns.clone()),
            ("KUBECONFIG", operator_kubeconfig.clone()),
        ]
    };
    let spawn_operator = |pod: &'static str| {
        let env = operator_env(pod);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        cluster.spawn(&["operator"], &env)
    };
    let operator_a = spawn_operator("op-a");
    let operator_b = spawn_operator("op-b");
    let mut operators = vec![("op-a", operator_a), ("op-b", operator_b)];
    let api = cluster.api(&[]);
    let _worker = cluster.worker(&[]);
    let ns = "default";
    let functions: Api<Function> = Api::namespaced(client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let http = reqwest::Client::new();
    let apply_fn = |name: String, spec: String| {
        let functions = functions.clone();
        let apply = apply.clone();
        async move {
            let resource: Function = serde_yaml::from_str(&format!(
                "apiVersion: faas.infra.dev/v1alpha1\nkind: Function\nmetadata: {{name: {name}}}\nspec:\n{spec}"
            ))
            .unwrap();
            functions
                .patch(&name, &apply, &Patch::Apply(&resource))
                .await
                .expect("apply the Function");
        }
    };
    // Waits until the Function is Ready with an artifact other than `not_sha`.
    let ready = |name: String, not_sha: Option<String>, within: Duration| {
        let functions = functions.clone();
        async move {
            let deadline = Instant::now() + within;
            loop {
                let f = functions.get(&name).await.unwrap();
                let status = f.status.clone().unwrap_or_default();
                let is_ready = status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let sha = status.artifact.as_ref().map(|a| a.sha256.clone());
                if let Some(sha) = sha.filter(|s| is_ready && Some(s) != not_sha.as_ref()) {
                    return (status.function_id.unwrap(), sha, f);
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} did not become Ready within {within:?}: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let run = |id: String| {
        let (http, base) = (http.clone(), api.base.clone());
        async move {
            let (code, body) = run_at(&http, &base, &id, json!({}), false).await;
            assert_eq!(code, 200, "{body}");
            body["result"].clone()
        }
    };
    // The API serves a looked-up record for up to 2 s (its cache's bound
    // across processes), so a change shows within that, not at once.
    let serves = |id: String, want: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = run(id.clone()).await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "still serving {got} instead of {want}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };

    // 1. Inline code: Ready with its finalizer, runs, then a code update whose
    // event names the new artifact.
    let name = unique("fn");
    let inline = |text: &str| {
        format!("  runtime: python\n  warmPool: {{minWarm: 1}}\n  code:\n    inline:\n      main.py: |\n        def handler(event, context):\n            return '{text}'\n")
    };
    apply_fn(name.clone(), inline("from the cluster")).await;
    let (id, sha1, f) = ready(name.clone(), None, Duration::from_secs(60)).await;
    let finalizers = f.metadata.finalizers.clone().unwrap_or_default();
    assert!(finalizers.iter().any(|x| x == "faas.infra.dev/cleanup"));
    // Every write of the operator (finalizer patch included) is recorded under its name.
    let managers: Vec<String> = f
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    eprintln!("field managers: {managers:?}");
    assert!(!managers.iter().any(|m| m == "unknown"), "{managers:?}");
    assert!(managers.iter().any(|m| m.starts_with("infra-operator")), "{managers:?}");
    assert_eq!(run(id.clone()).await, "from the cluster");
    apply_fn(name.clone(), inline("updated")).await;
    let (_, sha2, _) = ready(name.clone(), Some(sha1.clone()), Duration::from_secs(30)).await;
    serves(id.clone(), "updated").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed = events
            .list(&ListParams::default().fields(&format!("regarding.name={name}")))
            .await
            .unwrap();
        let notes: Vec<String> = listed.items.iter().filter_map(|e| e.note.clone()).collect();
        if notes.iter().any(|n| n.contains(&sha2)) {
            eprintln!("events of {name}: {notes:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no event names the new artifact {sha2}: {notes:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 2. Code from a ConfigMap created after the Function, then edited: both
    // picked up through the watch (the retry is 30 s, the resync 10 min).
    let cm_fn = unique("fn-cm");
    let cm_name = unique("code");
    apply_fn(
        cm_fn.clone(),
        format!("  runtime: python\n  code:\n    configMap: {{name: {cm_name}}}\n"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let code_map = |text: &str| -> ConfigMap {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": cm_name},
            "data": {"main.py": format!("def handler(event, context):\n    return '{text}'\n")}
        }))
        .unwrap()
    };
    let t0 = Instant::now();
    config_maps
        .patch(&cm_name, &apply, &Patch::Apply(&code_map("cm v1")))
        .await
        .unwrap();
    let (cm_id, cm_sha1, _) = ready(cm_fn.clone(), None, Duration::from_secs(15)).await;
    eprintln!("ConfigMap created -> Ready in {:?}", t0.elapsed());
    assert_eq!(run(cm_id.clone()).await, "cm v1");
    let t0 = Instant::now();
    config_maps
        .patch(&cm_name, &apply, &Patch::Apply(&code_map("cm v2")))
        .await
        .unwrap();
    ready(cm_fn.clone(), Some(cm_sha1), Duration::from_secs(15)).await;
    eprintln!("ConfigMap edited -> new code Ready in {:?}", t0.elapsed());
    serves(cm_id.clone(), "cm v2").await;

    // 3. An env value from a Secret: a changed Secret reaches the function,
    // and its value never shows in status or events.
    let secret_fn = unique("fn-secret");
    let secret_name = unique("creds");
    let secret = |value: &str| -> Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret_name},
            "stringData": {"token": value}
        }))
        .unwrap()
    };
    secrets
        .patch(&secret_name, &apply, &Patch::Apply(&secret("s3cret-one")))
        .await
        .unwrap();
    apply_fn(
        secret_fn.clone(),
        format!("  runtime: python\n  env:\n  - name: TOKEN\n    valueFrom:\n      secretKeyRef: {{name: {secret_name}, key: token}}\n  code:\n    inline:\n      main.py: |\n        import os\n        def handler(event, context):\n            return os.environ['TOKEN']\n"),
    )
    .await;
    let (secret_id, _, _) = ready(secret_fn.clone(), None, Duration::from_secs(30)).await;
    assert_eq!(run(secret_id.clone()).await, "s3cret-one");
    let t0 = Instant::now();
    secrets
        .patch(&secret_name, &apply, &Patch::Apply(&secret("s3cret-two")))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while run(secret_id.clone()).await != "s3cret-two" {
        assert!(
            Instant::now() < deadline,
            "the changed Secret did not reach the function"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("Secret edited -> new value served in {:?}", t0.elapsed());
    let shown = serde_json::to_string(&functions.get(&secret_fn).await.unwrap()).unwrap()
        + &serde_json::to_string(&events.list(&ListParams::default()).await.unwrap()).unwrap();
    assert!(!shown.contains("s3cret"), "a Secret value leaked into status or events");

    // 4. Leader hand-over: kill the Lease holder; the standby takes the Lease
    // once it expires and reconciles a Function created meanwhile.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &lease_ns);
    let holder = leases
        .get("infra-operator")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a Lease holder");
    let at = operators
        .iter()
        .position(|(n, _)| *n == holder)
        .expect("the holder is one of ours");
    let (_, mut leader) = operators.remove(at);
    let _ = leader.child.kill();
    let _ = leader.child.wait();
    let killed = Instant::now();
    let late = unique("fn-late");
    apply_fn(late.clone(), inline("after the hand-over")).await;
    let (late_id, _, _) = ready(late.clone(), None, Duration::from_secs(60)).await;
    eprintln!("leader {holder} killed -> new Function Ready in {:?}", killed.elapsed());
    let new_holder = leases
        .get("infra-operator")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(
        new_holder.as_deref(),
        Some(operators[0].0),
        "the standby holds the Lease"
    );
    assert_eq!(run(late_id).await, "after the hand-over");

    // 5. Deletion removes everything, then the finalizer.
    for n in [&name, &cm_fn, &secret_fn, &late] {
        functions.delete(n, &DeleteParams::default()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in [&name, &cm_fn, &secret_fn, &late] {
        while functions.get_opt(n).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "the finalizer of {n} was not removed");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let gone = get_json(&http, format!("{}/functions/{id}", api.base)).await;
    assert_eq!(
        gone["error"].as_str().map(|e| e.contains("not found")),
        Some(true),
        "{gone}"
    );
    let _ = config_maps.delete(&cm_name, &DeleteParams::default()).await;
    let _ = secrets.delete(&secret_name, &DeleteParams::default()).await;
}

/// A client of the cluster in KUBECONFIG, with the Function CRD applied and
/// established.
async fn real_cluster_with_crd() -> kube::Client {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    // A real cluster is HTTPS: the process needs the one crypto provider, as `infra` installs it.
    infra_controller::tls::install_crypto_provider();
    let client = kube::Client::try_default().await.expect("a cluster (KUBECONFIG)");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "functions.faas.infra.dev",
        &PatchParams::apply("infra-test").force(),
        &Patch::Apply(&infra_controller::operator::crd::crd()),
    )
    .await
    .expect("apply the CRD");
    let established = |crd: &CustomResourceDefinition| {
        crd.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !established(&crds.get("functions.faas.infra.dev").await.unwrap()) {
        assert!(Instant::now() < deadline, "the CRD did not become established");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
}

/// Scale on a real API server: N Function resources (OPERATOR_SCALE_N,
/// default 1,000) applied at once reach Ready on one operator replica, then
/// are deleted and cleaned up; prints per-resource p50/p99 and totals (the
/// figures in docs/BENCHMARKS.md). Storage is moto (S3, DynamoDB).
#[tokio::test]
#[ignore = "needs a Kubernetes cluster (KUBECONFIG); a benchmark"]
async fn operator_reconciles_a_thousand_functions() {
    use futures::{StreamExt, TryStreamExt};
    use infra_controller::operator::crd::Function;
    use kube::api::{Api, DeleteParams, Patch, PatchParams};
    use kube::runtime::{watcher, WatchStreamExt};
    use std::collections::HashMap;

    let n: usize = std::env::var("OPERATOR_SCALE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let client = real_cluster_with_crd().await;
    let apply = PatchParams::apply("infra-scale").force();
    let ns = unique("scale");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).unwrap();
    namespaces.patch(&ns, &apply, &Patch::Apply(&namespace)).await.unwrap();

    // OPERATOR_SCALE_STORAGE=embedded: the same controller and reconciler,
    // in this process, over the embedded storage instead of moto, to tell the
    // operator's own cost from moto's.
    let embedded = std::env::var("OPERATOR_SCALE_STORAGE").as_deref() == Ok("embedded");
    let cluster = Cluster::new().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let _operator = if embedded {
        use infra_controller::backend::embedded::{Db, EmbeddedRegistry, LocalArtifactStore};
        use infra_controller::function::FunctionService;
        use infra_controller::operator::Reconciler;
        let db = Db::open(dir.path()).unwrap();
        let functions = Arc::new(FunctionService::new(
            Arc::new(LocalArtifactStore::open(dir.path().join("artifacts")).unwrap()),
            Arc::new(EmbeddedRegistry::new(db)),
            None,
        ));
        let metrics = Arc::new(infra_controller::metrics::Metrics::new().unwrap());
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            infra_controller::operator::controller::run(client, Reconciler::new(functions), metrics, None, stop).await
        });
        None
    } else {
        Some(cluster.spawn(&["operator"], &[("OPERATOR_PORT", "0"), ("LEADER_ELECTION", "false")]))
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let functions: Api<Function> = Api::namespaced(client.clone(), &ns);

    // Watch before applying, so no Ready is missed.
    let ready_at = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, Instant>::new()));
    let watch = {
        let (functions, ready_at) = (functions.clone(), ready_at.clone());
        tokio::spawn(async move {
            let mut stream = watcher(functions, watcher::Config::default()).applied_objects().boxed();
            while let Ok(Some(f)) = stream.try_next().await {
                let ready = f
                    .status
                    .as_ref()
                    .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if ready {
                    ready_at
                        .lock()
                        .unwrap()
                        .entry(f.metadata.name.clone().unwrap())
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    let started = Instant::now();
    let applied: Vec<(String, Instant)> = futures::stream::iter(0..n)
        .map(|i| {
            let (functions, apply) = (functions.clone(), apply.clone());
            async move {
                let name = format!("f{i:05}");
                let f: Function = serde_yaml::from_str(&format!(
                    "apiVersion: faas.infra.dev/v1alpha1\nkind: Function\nmetadata: {{name: {name}}}\nspec:\n  runtime: python\n  code:\n    inline:\n      main.py: |\n        def handler(event, context):\n            return {i}\n"
                ))
                .unwrap();
                functions.patch(&name, &apply, &Patch::Apply(&f)).await.expect("apply");
                (name, Instant::now())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let applied_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready_at.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} Ready",
            ready_at.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_ready = started.elapsed();
    let mut per: Vec<f64> = {
        let ready = ready_at.lock().unwrap();
        applied
            .iter()
            .map(|(name, at)| ready[name].saturating_duration_since(*at).as_secs_f64())
            .collect()
    };
    per.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        per[((per.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(per.len() - 1)]
    };
    watch.abort();

    // OPERATOR_SCALE_DELETE=collection: one DeleteCollection call instead of
    // one DELETE per Function (64 at a time).
    let by_collection = std::env::var("OPERATOR_SCALE_DELETE").as_deref() == Ok("collection");
    let deleting = Instant::now();
    if by_collection {
        functions
            .delete_collection(&DeleteParams::default(), &Default::default())
            .await
            .expect("delete the collection");
    } else {
        futures::stream::iter(applied.iter().map(|(name, _)| name.clone()))
            .map(|name| {
                let functions = functions.clone();
                async move { functions.delete(&name, &DeleteParams::default()).await.expect("delete") }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
    }
    let deletes_sent = deleting.elapsed();
    // Polled by one name per poll (metadata only, limit 1), so watching the
    // API server does not load it: a full list of 1,000 Functions every
    // 200 ms took a large share of its CPU from the deletes being measured.
    let deadline = Instant::now() + Duration::from_secs(300);
    let probe = kube::api::ListParams::default().limit(1);
    loop {
        let page = functions.list_metadata(&probe).await.unwrap();
        if page.items.is_empty() {
            break;
        }
        let left = page.metadata.remaining_item_count.unwrap_or(0) + 1;
        assert!(Instant::now() < deadline, "{left} Functions not cleaned up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cleaned = deleting.elapsed();
    stop.cancel();
    eprintln!(
        "SCALE n={n} storage={}: applied in {:.2} s; all Ready {:.2} s after the first apply; per resource apply->Ready p50 {:.2} s, p99 {:.2} s, max {:.2} s; all {n} deleted ({}) and cleaned up in {:.2} s (the deletes themselves answered in {:.2} s)",
        if embedded { "embedded" } else { "moto" },
        applied_in.as_secs_f64(),
        all_ready.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        per[per.len() - 1],
        if by_collection { "one DeleteCollection" } else { "1 DELETE each, 64 at a time" },
        cleaned.as_secs_f64(),
        deletes_sent.as_secs_f64()
    );
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}
