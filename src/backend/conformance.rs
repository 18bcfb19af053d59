//! One behavioural test suite per backend trait. Every implementation
//! (embedded now; S3, DynamoDB, SQS and Redis later) must pass the same suite,
//! so the API and worker can rely on the trait contract alone.
//!
//! The functions panic (assert) on a violation; call them from tests with a
//! fresh, empty backend instance.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;

use super::{
    ArtifactStore, ChangeFeed, Error, FunctionChange, FunctionRegistry, JobCounter, JobQueue, LogStore, RateLimiter,
    RecordStore, ResultBus, WorkerDirectory,
};
use crate::model::{FunctionRecord, Job, JobRecord, JobResult, JobStatus, LogEntry, Runtime, UsageDelta, WorkerStatus};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

pub fn sample_function(id: &str) -> FunctionRecord {
    FunctionRecord {
        function_id: id.to_string(),
        name: "sample".into(),
        description: "conformance".into(),
        s3_key: format!("functions/{id}/abc.zip"),
        sha256: "abc".into(),
        size_bytes: 3,
        original_name: "main.py".into(),
        runtime: Runtime::Python,
        memory_mb: 128,
        timeout_ms: 1000,
        handler: "main.handler".into(),
        env_vars: [("A".to_string(), "1".to_string())].into(),
        uploaded_at: Utc::now(),
        updated_at: None,
        invocations: 0,
        finished_runs: 0,
        total_duration: 0.0,
        handler_invocations: 0,
        total_handler_duration: 0.0,
        warm_pool: crate::model::WarmPool {
            min_warm: 1,
            max_warm: Some(3),
            keep_alive_seconds: None,
        },
        network: false,
        style: Default::default(),
        owner: None,
        retry: Default::default(),
        max_concurrency: None,
        max_queued: None,
    }
}

pub fn sample_job(function_id: &str) -> Job {
    Job {
        request_id: uuid::Uuid::new_v4().to_string(),
        function_id: function_id.to_string(),
        runtime: Runtime::Python,
        memory_mb: 128,
        s3_bucket: "b".into(),
        s3_key: "k".into(),
        timeout_ms: 1000,
        input: serde_json::json!({"n": 1}),
        model_id: None,
        env_vars: Default::default(),
        handler: "main.handler".into(),
        sha256: String::new(),
        warm_pool: Default::default(),
        network: false,
        style: Default::default(),
        trace_id: None,
        submitted_at: Utc::now(),
        lifecycle: Default::default(),
        original_format: false,
    }
}

fn sample_result(job: &Job, status: JobStatus, value: serde_json::Value) -> JobResult {
    let mut r = JobResult::platform(job, status, "X", "m");
    if status == JobStatus::Success {
        r.error = None;
    }
    r.result = value;
    r.exit_code = Some(0);
    r.stdout = "out".into();
    r.stderr = String::new();
    r.duration_ms = 1.5;
    r.handler_duration_ms = Some(1.0);
    r.peak_memory_bytes = 1024;
    r.cold_start = true;
    r.attempt = 1;
    r
}

pub async fn artifact_store(store: &dyn ArtifactStore) {
    store.ping().await.expect("ping");
    let base = unique("conf");
    let a = format!("{base}/one/a.zip");
    let b = format!("{base}/one/b.zip");
    let c = format!("{base}/two/c.zip");
    assert!(
        matches!(store.get(&a).await, Err(Error::NotFound(_))),
        "missing key must be NotFound"
    );
    store.put(&a, Bytes::from_static(b"first")).await.expect("put a");
    store.put(&a, Bytes::from_static(b"second")).await.expect("overwrite a");
    assert_eq!(store.get(&a).await.expect("get a"), Bytes::from_static(b"second"));
    store.put(&b, Bytes::from(vec![7u8; 300_000])).await.expect("put b");
    store.put(&c, Bytes::from_static(b"c")).await.expect("put c");
    assert_eq!(store.get(&b).await.expect("get b").len(), 300_000);
    assert_eq!(
        store.list(&format!("{base}/one/")).await.expect("list"),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(store.list(&format!("{base}/")).await.expect("list").len(), 3);
    store.delete(&a).await.expect("delete a");
    store.delete(&a).await.expect("delete is idempotent");
    assert!(matches!(store.get(&a).await, Err(Error::NotFound(_))));
    assert_eq!(
        store.list(&format!("{base}/")).await.expect("list"),
        vec![b.clone(), c.clone()]
    );
    store.delete(&b).await.expect("delete b");
    store.delete(&c).await.expect("delete c");
    assert!(store.list(&format!("{base}/")).await.expect("list").is_empty());
}

pub async fn function_registry(registry: Arc<dyn FunctionRegistry>) {
    registry.ping().await.expect("ping");
    let id = unique("fn");
    assert!(matches!(registry.get(&id).await, Err(Error::NotFound(_))));
    let record = sample_function(&id);
    registry.put(&record).await.expect("put");
    assert_eq!(registry.get(&id).await.expect("get"), record);
    let mut changed = record.clone();
    changed.memory_mb = 256;
    changed.description = "changed".into();
    registry.put(&changed).await.expect("replace");
    assert_eq!(registry.get(&id).await.expect("get").memory_mb, 256);
    assert!(registry.list().await.expect("list").iter().any(|r| r.function_id == id));

    // Concurrent increments must not lose updates.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let registry = registry.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let delta = UsageDelta {
                    invocations: 2,
                    ..UsageDelta::default()
                };
                registry.add_usage(&id, &delta).await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("add_usage");
    }
    // Several counters in one addition, one after the other: in a loaded
    // full-suite run, moto once kept one attribute of concurrent
    // multi-attribute ADDs short while the others were right (DynamoDB
    // applies an UpdateItem atomically); concurrency is checked above.
    for _ in 0..20 {
        registry
            .add_usage(&id, &UsageDelta::finished(12.5, Some(0.25)))
            .await
            .expect("add_usage");
    }
    let counted = registry.get(&id).await.expect("get");
    assert_eq!(counted.invocations, 40);
    assert_eq!(counted.finished_runs, 20);
    assert!(
        (counted.total_duration - 250.0).abs() < 1e-6,
        "{}",
        counted.total_duration
    );
    assert_eq!(counted.avg_duration(), 13);
    assert_eq!(counted.avg_handler_duration(), Some(0.25));
    // A settings change keeps the counters.
    registry.put(&sample_function(&id)).await.expect("put again");
    assert_eq!(registry.get(&id).await.expect("get").finished_runs, 20);
    registry
        .add_usage(
            &unique("absent"),
            &UsageDelta {
                invocations: 1,
                ..UsageDelta::default()
            },
        )
        .await
        .expect("missing function is ignored");
    assert!(registry.get("absent").await.is_err());

    registry.delete(&id).await.expect("delete");
    assert!(matches!(registry.delete(&id).await, Err(Error::NotFound(_))));
    assert!(matches!(registry.get(&id).await, Err(Error::NotFound(_))));
}

/// `visibility` is the visibility timeout the queue was created with; keep it
/// short (1–3 s). The queue must start empty.
pub async fn job_queue(queue: &dyn JobQueue, visibility: Duration) {
    queue.ping().await.expect("ping");
    let t0 = std::time::Instant::now();
    assert!(queue
        .receive(10, Duration::from_millis(300))
        .await
        .expect("receive")
        .is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "an empty receive waits for its wait time"
    );

    let jobs: Vec<Job> = (0..3).map(|_| sample_job("f")).collect();
    for j in &jobs {
        queue.send(j).await.expect("send");
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let batch = queue.receive(10, Duration::from_secs(2)).await.expect("receive");
        assert!(!batch.is_empty(), "sent jobs must arrive");
        got.extend(batch);
    }
    let mut ids: Vec<_> = got.iter().map(|d| d.job.request_id.clone()).collect();
    ids.sort();
    let mut want: Vec<_> = jobs.iter().map(|j| j.request_id.clone()).collect();
    want.sort();
    assert_eq!(ids, want, "each job delivered once");
    assert!(got.iter().all(|d| d.attempt == 1));
    assert_eq!(
        got.iter()
            .find(|d| d.job.request_id == jobs[0].request_id)
            .map(|d| &d.job),
        Some(&jobs[0])
    );

    // In flight: invisible to other receivers.
    assert!(queue
        .receive(10, Duration::from_millis(200))
        .await
        .expect("receive")
        .is_empty());

    // Ack two; extend the third past its visibility; let it lapse; it returns.
    queue.ack(&got[0].receipt).await.expect("ack");
    queue.ack(&got[0].receipt).await.expect("ack is idempotent");
    queue.ack(&got[1].receipt).await.expect("ack");
    let kept = &got[2];
    queue.extend(&kept.receipt, visibility * 2).await.expect("extend");
    tokio::time::sleep(visibility + Duration::from_millis(300)).await;
    assert!(
        queue
            .receive(10, Duration::from_millis(100))
            .await
            .expect("receive")
            .is_empty(),
        "an extended job stays hidden"
    );
    let again = queue.receive(10, visibility * 3).await.expect("receive");
    assert_eq!(again.len(), 1, "an unacked job is redelivered after its visibility");
    assert_eq!(again[0].job.request_id, kept.job.request_id);
    assert!(again[0].attempt >= 2, "redelivery counts attempts");
    // Not part of the contract: whether a stale receipt can still extend.
    // SQS does not promise to reject it, and results are idempotent anyway.
    queue.ack(&again[0].receipt).await.expect("ack");
    assert!(queue
        .receive(10, Duration::from_millis(200))
        .await
        .expect("receive")
        .is_empty());
}

/// A delayed job (a retry with backoff) is not receivable before its delay.
/// (Not for SQS FIFO queues, which have no per-message delay.)
pub async fn delayed_send(queue: &dyn JobQueue) {
    let mut retry = sample_job("f");
    retry.lifecycle.attempt = 2;
    let sent = std::time::Instant::now();
    queue
        .send_delayed(&retry, Duration::from_secs(2))
        .await
        .expect("send delayed");
    let mut delivered = Vec::new();
    while delivered.is_empty() {
        assert!(sent.elapsed() < Duration::from_secs(10), "a delayed job must arrive");
        delivered = queue.receive(10, Duration::from_secs(1)).await.expect("receive");
    }
    assert!(
        sent.elapsed() >= Duration::from_millis(1900),
        "delivered {:?} after a 2 s delay",
        sent.elapsed()
    );
    assert_eq!(delivered[0].job, retry, "the job's run number travels with it");
    queue.ack(&delivered[0].receipt).await.expect("ack");
}

/// A `RecordStore`: first writer wins, values round-trip, prefixes list.
pub async fn record_store(store: &dyn RecordStore) {
    store.ping().await.expect("ping");
    let base = unique("records");
    let a = format!("{base}/a");
    assert_eq!(store.get(&a).await.expect("get"), None, "absent");
    assert_eq!(
        store.create(&a, Bytes::from_static(b"first")).await.expect("create"),
        None
    );
    assert_eq!(
        store
            .create(&a, Bytes::from_static(b"second"))
            .await
            .expect("create again"),
        Some(Bytes::from_static(b"first")),
        "the first writer wins and the second sees its value"
    );
    assert_eq!(store.get(&a).await.expect("get"), Some(Bytes::from_static(b"first")));
    store.put(&a, Bytes::from_static(b"third")).await.expect("put replaces");
    assert_eq!(store.get(&a).await.expect("get"), Some(Bytes::from_static(b"third")));

    // Many concurrent creators of one key: exactly one wins, all agree on its value.
    let contested = format!("{base}/contested");
    let outcomes = futures::future::join_all((0..16).map(|i| {
        let key = contested.clone();
        async move { (i, store.create(&key, Bytes::from(format!("v{i}"))).await) }
    }))
    .await;
    let winners: Vec<_> = outcomes
        .iter()
        .filter(|(_, r)| matches!(r, Ok(None)))
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one creator wins: {outcomes:?}");
    let value = Bytes::from(format!("v{}", winners[0]));
    for (_, r) in &outcomes {
        match r {
            Ok(None) => {}
            Ok(Some(v)) => assert_eq!(v, &value),
            // A loser may find the winner's write still in progress.
            Err(Error::Conflict(_)) => {}
            Err(e) => panic!("create failed: {e}"),
        }
    }

    let big = Bytes::from(vec![b'x'; 6 * 1024 * 1024]);
    store.put(&format!("{base}/big"), big.clone()).await.expect("6 MiB");
    assert_eq!(store.get(&format!("{base}/big")).await.expect("get big"), Some(big));

    store
        .put(&format!("{base}/p/1"), Bytes::from_static(b"1"))
        .await
        .expect("put");
    store
        .put(&format!("{base}/p/2"), Bytes::from_static(b"2"))
        .await
        .expect("put");
    store
        .put(&format!("{base}/q/3"), Bytes::from_static(b"3"))
        .await
        .expect("put");
    assert_eq!(
        store.list(&format!("{base}/p/"), 10).await.expect("list"),
        vec![format!("{base}/p/1"), format!("{base}/p/2")]
    );
    assert_eq!(
        store.list(&format!("{base}/p/"), 1).await.expect("list").len(),
        1,
        "limit"
    );
    store.delete(&format!("{base}/p/1")).await.expect("delete");
    store
        .delete(&format!("{base}/p/1"))
        .await
        .expect("delete is idempotent");
    assert_eq!(store.get(&format!("{base}/p/1")).await.expect("get"), None);
}

pub async fn result_bus(bus: &dyn ResultBus) {
    bus.ping().await.expect("ping");
    let job = sample_job(&unique("fn"));
    assert!(bus.get(&job.request_id).await.expect("get").is_none());
    bus.set_state(&JobRecord::pending(&job)).await.expect("pending");
    assert_eq!(
        bus.get(&job.request_id).await.expect("get").map(|r| r.status),
        Some(JobStatus::Pending)
    );

    let sub = bus.subscribe(&job.request_id).await.expect("subscribe");
    let other = bus.subscribe(&job.request_id).await.expect("second subscriber");
    let first = sample_result(&job, JobStatus::Success, serde_json::json!({"v": 1}));
    let stored = bus.publish(job.submitted_at, &first).await.expect("publish");
    assert_eq!(stored.status, JobStatus::Success);
    let got = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("result arrives");
    assert_eq!(got.as_ref().map(|r| &r.result), Some(&serde_json::json!({"v": 1})));
    let got2 = tokio::time::timeout(Duration::from_secs(5), other.recv())
        .await
        .expect("fan-out");
    assert_eq!(got2.map(|r| r.status), Some(JobStatus::Success));

    // A redelivered job's second outcome loses.
    let second = sample_result(&job, JobStatus::Error, serde_json::Value::Null);
    let winner = bus.publish(job.submitted_at, &second).await.expect("publish again");
    assert_eq!(winner.status, JobStatus::Success, "first terminal result wins");
    bus.set_state(&JobRecord::pending(&job).with_status(JobStatus::Running))
        .await
        .expect("late running");
    let record = bus.get(&job.request_id).await.expect("get").expect("record");
    assert_eq!(record.status, JobStatus::Success, "a late state cannot hide the result");
    assert_eq!(record.result.map(|r| r.stdout), Some("out".to_string()));

    // Subscribers of other jobs are not woken.
    let quiet = bus.subscribe("someone-else").await.expect("subscribe");
    assert!(tokio::time::timeout(Duration::from_millis(200), quiet.recv())
        .await
        .is_err());
}

/// `writer` and `reader`: two handles on one feed (two processes' worth for
/// a shared feed, the same one twice for an in-process feed).
pub async fn change_feed(writer: &dyn ChangeFeed, reader: &dyn ChangeFeed) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !(writer.is_live() && reader.is_live()) {
        assert!(tokio::time::Instant::now() < deadline, "the feed comes up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut heard = reader.subscribe();
    let id = unique("fn");
    writer.publish(&id).await.expect("publish");
    writer.publish(&id).await.expect("publish twice");
    let mut changed = 0;
    while changed < 2 {
        match tokio::time::timeout(Duration::from_secs(5), heard.recv()).await {
            Ok(Ok(FunctionChange::Changed(got))) => {
                assert_eq!(got, id);
                changed += 1;
            }
            // A (re)connection may be announced first: it only widens what is forgotten.
            Ok(Ok(FunctionChange::Resync)) => {}
            other => panic!("every change is heard: {other:?}"),
        }
    }
    // Publishing with nobody caching anything is not an error.
    drop(heard);
    writer.publish(&unique("fn")).await.expect("publish unheard");
}

/// `per_minute`: a limit of about 100 per minute; `short`: a window of a
/// few seconds (3 s suits), for the boundary test; both fresh.
pub async fn rate_limiter(per_minute: &dyn RateLimiter, short: &dyn RateLimiter) {
    per_minute.ping().await.expect("ping");
    let limit = per_minute.quota().limit;
    let key = unique("client");
    for i in 1..=limit {
        let d = per_minute.check(&key).await.expect("check");
        assert!(d.allowed, "request {i} of {limit} allowed");
        assert_eq!(d.limit, limit);
        assert_eq!(d.remaining, limit - i);
        assert_eq!(d.retry_after_secs, 0);
        assert!(d.reset_secs >= 59 && d.reset_secs <= 60, "{d:?}");
    }
    let denied = per_minute.check(&key).await.expect("check");
    assert!(!denied.allowed, "request over the limit denied");
    assert_eq!(denied.remaining, 0);
    assert!(
        (1..=60).contains(&denied.retry_after_secs),
        "retry after the oldest leaves the window: {denied:?}"
    );
    assert!(
        per_minute.check(&unique("other")).await.expect("check").allowed,
        "keys are independent"
    );
    boundary_burst_is_refused(short).await;
}

/// At most `limit` allowed requests in ANY window: one request, then the
/// rest of the budget late in its window; across the window's end (where a
/// fixed window, aligned to the first request or to the clock, would start
/// afresh) only the one request's place comes free.
async fn boundary_burst_is_refused(limiter: &dyn RateLimiter) {
    let quota = limiter.quota();
    let window = quota.window;
    assert!(window >= Duration::from_secs(2) && window <= Duration::from_secs(10));
    let key = unique("burst");
    let before_first = std::time::Instant::now();
    assert!(limiter.check(&key).await.expect("check").allowed);
    let after_first = std::time::Instant::now();
    tokio::time::sleep(window.mul_f64(0.6)).await;
    let burst_at = std::time::Instant::now();
    for i in 1..quota.limit {
        assert!(limiter.check(&key).await.expect("check").allowed, "burst request {i}");
    }
    let full = limiter.check(&key).await.expect("check");
    assert!(!full.allowed && full.remaining == 0, "{full:?}");
    // Until the first request is a window old, nothing passes (polling
    // through any clock-aligned boundary in between).
    let first_leaves = before_first + window;
    while std::time::Instant::now() + window.mul_f64(0.08) < first_leaves {
        let d = limiter.check(&key).await.expect("check");
        assert!(
            !d.allowed,
            "allowed {:?} before the first request left the window",
            before_first.elapsed()
        );
        assert!(d.retry_after_secs >= 1);
        tokio::time::sleep(window / 20).await;
    }
    // Past it (and past a boundary set by the first request): exactly its one place.
    let settle = (after_first + window.mul_f64(1.1)).saturating_duration_since(std::time::Instant::now());
    tokio::time::sleep(settle).await;
    assert!(
        burst_at.elapsed() < window.mul_f64(0.9),
        "the test ran too slowly to judge the window"
    );
    assert!(
        limiter.check(&key).await.expect("check").allowed,
        "the first request's place is free"
    );
    let d = limiter.check(&key).await.expect("check");
    assert!(
        !d.allowed,
        "a second burst right after the window boundary must be refused: {d:?}"
    );
    assert!(
        d.retry_after_secs >= 1 && d.retry_after_secs <= window.as_secs() + 1,
        "{d:?}"
    );
}

fn sample_worker(id: &str, active: usize) -> WorkerStatus {
    WorkerStatus {
        worker_id: id.to_string(),
        hostname: "host".into(),
        started_at: Utc::now(),
        reported_at: Utc::now(),
        concurrency: 4,
        active_jobs: active,
        warm_instances: 1,
        pools: [("f".to_string(), 1)].into(),
        pool: None,
    }
}

/// The directory must start empty.
pub async fn worker_directory(directory: &dyn WorkerDirectory) {
    assert!(directory.list().await.expect("list").is_empty());
    let (a, b) = (unique("a"), unique("b"));
    directory
        .report(&sample_worker(&a, 1), Duration::from_secs(30))
        .await
        .expect("report a");
    directory
        .report(&sample_worker(&b, 0), Duration::from_millis(400))
        .await
        .expect("report b");
    directory
        .report(&sample_worker(&a, 3), Duration::from_secs(30))
        .await
        .expect("report a again");
    let listed = directory.list().await.expect("list");
    assert_eq!(listed.len(), 2);
    let got_a = listed.iter().find(|w| w.worker_id == a).expect("a listed");
    assert_eq!(got_a.active_jobs, 3, "the latest report wins");
    assert_eq!(got_a.pools.get("f"), Some(&1));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let listed = directory.list().await.expect("list");
    assert_eq!(
        listed.iter().map(|w| w.worker_id.as_str()).collect::<Vec<_>>(),
        vec![a.as_str()],
        "b expired"
    );
    directory.remove(&a).await.expect("remove");
    assert!(directory.list().await.expect("list").is_empty());
}

pub async fn log_store(logs: &dyn LogStore) {
    logs.ping().await.expect("ping");
    let function = unique("fn");
    assert!(logs.list(&function, 10).await.expect("list").is_empty());
    let mut entries = Vec::new();
    for i in 0..3 {
        let job = sample_job(&function);
        let mut result = sample_result(&job, JobStatus::Success, serde_json::json!(i));
        result.finished_at = Utc::now() + chrono::TimeDelta::seconds(i);
        result.stdout = format!("run {i}");
        let entry = LogEntry::of(&result, 1000);
        logs.put(&entry).await.expect("put");
        entries.push(entry);
    }
    let other = sample_job(&unique("other"));
    logs.put(&LogEntry::of(
        &sample_result(&other, JobStatus::Error, serde_json::Value::Null),
        1000,
    ))
    .await
    .expect("put");

    let listed = logs.list(&function, 10).await.expect("list");
    assert_eq!(
        listed.iter().map(|e| e.stdout.as_str()).collect::<Vec<_>>(),
        ["run 2", "run 1", "run 0"],
        "newest first, own function only"
    );
    assert_eq!(logs.list(&function, 2).await.expect("list").len(), 2, "limit");
    let one = logs.get(&function, &entries[1].request_id).await.expect("get");
    assert_eq!(one, entries[1]);
    assert!(matches!(logs.get(&function, "missing").await, Err(Error::NotFound(_))));
    assert!(
        matches!(logs.get(&function, &other.request_id).await, Err(Error::NotFound(_))),
        "scoped to the function"
    );
}

/// A `JobCounter`: admission bounded per function, run slots bounded and
/// leased, counts visible in `load`.
pub async fn job_counter(counter: &dyn JobCounter) {
    let f = unique("fn");
    let other = unique("fn");
    assert!(counter.admit(&f, "j1", Some(2)).await.expect("admit"));
    assert!(
        counter.admit(&f, "j1", Some(2)).await.expect("admit again"),
        "same job: no-op"
    );
    assert!(counter.admit(&f, "j2", Some(2)).await.expect("admit"));
    assert!(!counter.admit(&f, "j3", Some(2)).await.expect("admit"), "limit reached");
    assert!(counter.admit(&f, "j3", None).await.expect("admit"), "no limit");
    assert!(
        counter.admit(&other, "j1", Some(1)).await.expect("admit"),
        "per function"
    );
    counter.done(&f, "j3").await.expect("done");
    counter.done(&f, "j2").await.expect("done");
    counter.done(&f, "j2").await.expect("done is idempotent");
    assert!(counter.admit(&f, "j4", Some(2)).await.expect("admit"), "freed by done");

    let lease = Duration::from_millis(800);
    assert!(counter.acquire(&f, "j1", 2, lease).await.expect("acquire"));
    assert!(counter.acquire(&f, "j4", 2, lease).await.expect("acquire"));
    assert!(
        !counter.acquire(&f, "j5", 2, lease).await.expect("acquire"),
        "all slots held"
    );
    assert!(
        counter.acquire(&f, "j1", 2, lease).await.expect("renew"),
        "a holder renews"
    );
    let load = counter.load().await.expect("load");
    assert_eq!(
        load.get(&f),
        Some(&super::FunctionLoad { jobs: 2, running: 2 }),
        "{load:?}"
    );
    assert_eq!(load.get(&other).map(|l| l.jobs), Some(1));
    counter.release(&f, "j4").await.expect("release");
    assert!(
        counter.acquire(&f, "j5", 2, lease).await.expect("acquire"),
        "freed by release"
    );
    // A holder that stops renewing (a dead worker) loses its slot with its lease.
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    assert!(counter.acquire(&f, "j6", 1, lease).await.expect("acquire after expiry"));
    counter.release(&f, "j6").await.expect("release");
    counter.done(&f, "j1").await.expect("done");
    counter.done(&f, "j4").await.expect("done");
    counter.done(&other, "j1").await.expect("done");
    let load = counter.load().await.expect("load");
    assert!(
        !load.contains_key(&f) && !load.contains_key(&other),
        "idle functions leave: {load:?}"
    );
}
