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

struct Cluster {
    redis: RedisServer,
    /// The environment every process of the cluster gets.
    env: Vec<(String, String)>,
    dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn new() -> Cluster {
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

    fn api(&self, extra: &[(&str, &str)]) -> Proc {
        let mut env = vec![("PORT", "0"), ("RATE_LIMIT_PER_MINUTE", "0")];
        env.extend_from_slice(extra);
        self.spawn(&["api"], &env)
    }

    fn worker(&mut self, extra: &[(&str, &str)]) -> Proc {
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
    assert_eq!(
        list["functions"][0]["invocations"], 202,
        "counted in DynamoDB and in memory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_leaves_every_job_terminal() {
    let mut cluster = Cluster::new().await;
    let api = cluster.api(&[]);
    let quick_visibility = [("VISIBILITY_TIMEOUT_SECONDS", "3"), ("WORKER_CONCURRENCY", "2")];
    let victim = cluster.worker(&quick_visibility);
    let client = reqwest::Client::new();
    let id = upload_at(
        &client,
        &api.base,
        "import time\ndef handler(event, context):\n    time.sleep(1.5)\n    return event['n']\n",
    )
    .await;
    let mut jobs = Vec::new();
    for n in 0..6 {
        let (status, body) = run_at(&client, &api.base, &id, json!({"n": n}), true).await;
        assert_eq!(status, 202);
        jobs.push((n, body["jobId"].as_str().unwrap().to_string()));
    }
    // Only the victim runs so far: wait until it holds a running job, then kill it.
    let deadline = Instant::now() + Duration::from_secs(30);
    'running: loop {
        for (_, job) in &jobs {
            let body: Value = get_json(&client, format!("{}/status/{job}", api.base)).await;
            if body["status"] == "RUNNING" {
                break 'running;
            }
        }
        assert!(Instant::now() < deadline, "no job started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _survivor = cluster.worker(&quick_visibility);
    signal(&victim.child, libc::SIGKILL);
    let mut redelivered = 0;
    for (n, job) in &jobs {
        let (_, body) = wait_job_at(&client, &api.base, job, Duration::from_secs(90)).await;
        assert_eq!(body["status"], "SUCCESS", "{body}");
        assert_eq!(body["result"], *n);
        if body["attempt"].as_u64().unwrap_or(0) >= 2 {
            redelivered += 1;
        }
    }
    assert!(redelivered >= 1, "the killed worker's job ran again elsewhere");
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
            .get(format!("{base}/functions"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => passed += 1,
            429 => limited_count += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((passed, limited_count), (100, 50));
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
    let metrics = client
        .get(format!("{}/metrics", worker.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    let sqs_url = cluster.env.iter().find(|(k, _)| k == "SQS_URL").unwrap().1.clone();
    let settings = aws();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(settings.region.clone()))
        .endpoint_url(settings.endpoint_url.clone().unwrap())
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
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
    assert_eq!(body["status"], "ERROR", "{body}");
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
        if list["count"] == 3 {
            break list;
        }
        assert!(Instant::now() < deadline, "logs never arrived: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(list["logs"][0]["requestId"], jobs[2].as_str(), "newest first");
    let one: Value = get_json(&client, format!("{}/functions/{id}/logs/{}", api.base, jobs[0])).await;
    assert_eq!(one["stdout"], "line 0\n");
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
    let reconciler = Reconciler::new(Arc::new(FunctionService::new(artifacts.clone(), registry.clone())));
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
        let m = client
            .get(format!("{}/metrics", worker.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
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
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, DeleteParams, Patch, PatchParams};

    // A real cluster is HTTPS: the process needs the one crypto provider, as `infra` installs it.
    infra_controller::tls::install_crypto_provider();
    let client = kube::Client::try_default().await.expect("a cluster (KUBECONFIG)");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let apply = PatchParams::apply("infra-test").force();
    crds.patch(
        "functions.faas.infra.dev",
        &apply,
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

    let mut cluster = Cluster::new().await;
    let _operator = cluster.spawn(&["operator"], &[("OPERATOR_PORT", "0")]);
    let api = cluster.api(&[]);
    let _worker = cluster.worker(&[]);
    let name = unique("fn");
    let functions: Api<Function> = Api::namespaced(client, "default");
    let resource: Function = serde_yaml::from_str(&format!(
        "apiVersion: faas.infra.dev/v1alpha1\nkind: Function\nmetadata: {{name: {name}}}\nspec:\n  runtime: python\n  warmPool: {{minWarm: 1}}\n  code:\n    inline:\n      main.py: |\n        def handler(event, context):\n            return 'from the cluster'\n"
    ))
    .unwrap();
    functions
        .patch(&name, &apply, &Patch::Apply(&resource))
        .await
        .expect("apply the Function");
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let f = functions.get(&name).await.unwrap();
        let status = f.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            assert!(f
                .metadata
                .finalizers
                .unwrap_or_default()
                .iter()
                .any(|x| x == "faas.infra.dev/cleanup"));
            break status.function_id.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the Function did not become Ready: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let client = reqwest::Client::new();
    let (code, body) = run_at(&client, &api.base, &id, json!({}), false).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["result"], "from the cluster");

    functions.delete(&name, &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while functions.get_opt(&name).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the finalizer was not removed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let gone = get_json(&client, format!("{}/functions/{id}", api.base)).await;
    assert_eq!(
        gone["error"].as_str().map(|e| e.contains("not found")),
        Some(true),
        "{gone}"
    );
}
