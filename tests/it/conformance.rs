//! The shared backend conformance suites, run against the embedded backends.

use std::sync::Arc;
use std::time::Duration;

use infra_controller::backend::conformance;
use infra_controller::backend::embedded::{
    Db, EmbeddedLogStore, EmbeddedQueue, EmbeddedRecordStore, EmbeddedRegistry, EmbeddedResultBus, InProcessDirectory,
    InProcessJobCounter, InProcessRateLimiter, LocalArtifactStore,
};
use infra_controller::backend::{JobQueue, Quota};

/// The boundary test's quota: a window short enough to wait out.
pub fn short_quota() -> Quota {
    Quota {
        limit: 5,
        window: Duration::from_secs(3),
    }
}

#[tokio::test]
async fn local_artifact_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalArtifactStore::open(dir.path().join("artifacts")).unwrap();
    conformance::artifact_store(&store).await;
}

#[tokio::test]
async fn embedded_registry() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    conformance::function_registry(Arc::new(EmbeddedRegistry::new(db))).await;
}

#[tokio::test]
async fn embedded_queue() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let visibility = Duration::from_secs(1);
    let (queue, recovered) = EmbeddedQueue::open(db, visibility).await.unwrap();
    assert!(recovered.0.is_empty());
    conformance::job_queue(&queue, visibility).await;
    conformance::delayed_send(&queue).await;
}

#[tokio::test]
async fn in_process_job_counter() {
    conformance::job_counter(&InProcessJobCounter::default()).await;
}

#[tokio::test]
async fn embedded_record_store() {
    let dir = tempfile::tempdir().unwrap();
    conformance::record_store(&EmbeddedRecordStore::new(Db::open(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn embedded_result_bus() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    conformance::result_bus(&EmbeddedResultBus::new(db)).await;
}

#[tokio::test]
async fn in_process_rate_limiter() {
    conformance::rate_limiter(
        &InProcessRateLimiter::new(Quota::per_minute(100)),
        &InProcessRateLimiter::new(short_quota()),
    )
    .await;
}

#[tokio::test]
async fn embedded_log_store() {
    let dir = tempfile::tempdir().unwrap();
    conformance::log_store(&EmbeddedLogStore::new(Db::open(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn local_change_feed() {
    let feed = infra_controller::backend::embedded::LocalChangeFeed::default();
    conformance::change_feed(&feed, &feed).await;
}

#[tokio::test]
async fn in_process_worker_directory() {
    conformance::worker_directory(&InProcessDirectory::default()).await;
}

/// Specific to the embedded queue: jobs survive a reopen with their delivery count.
#[tokio::test]
async fn embedded_queue_keeps_jobs_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let job = conformance::sample_job("f");
    {
        let db = Db::open(dir.path()).unwrap();
        let (queue, _) = EmbeddedQueue::open(db, Duration::from_secs(30)).await.unwrap();
        queue.send(&job).await.unwrap();
        let got = queue.receive(1, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.len(), 1, "received but never acked");
    }
    // The database closes when its writer thread sees the last handle go.
    let db = reopen(dir.path()).await;
    let (queue, recovered) = EmbeddedQueue::open(db, Duration::from_secs(30)).await.unwrap();
    assert_eq!(recovered.0, vec![job.clone()]);
    let again = queue.receive(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].job, job);
    assert_eq!(again[0].attempt, 2, "the delivery before the restart counts");
    assert!(
        queue.extend("1:999999", Duration::from_secs(5)).await.is_err(),
        "a stale receipt cannot extend"
    );
    queue.ack(&again[0].receipt).await.unwrap();
}

async fn reopen(dir: &std::path::Path) -> Db {
    for _ in 0..50 {
        match Db::open(dir) {
            Ok(db) => return db,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("database did not close");
}

mod aws {
    use std::sync::Arc;
    use std::time::Duration;

    use infra_controller::backend::aws::{DynamoLogStore, DynamoRegistry, S3ArtifactStore, S3RecordStore, SqsQueue};
    use infra_controller::backend::conformance;

    use crate::services::{aws, unique};

    #[tokio::test]
    async fn s3_artifact_store() {
        let store = S3ArtifactStore::new(&aws(), &unique("bucket")).await;
        store.ensure_bucket().await.unwrap();
        conformance::artifact_store(&store).await;
    }

    #[tokio::test]
    async fn s3_record_store() {
        let bucket = unique("bucket");
        S3ArtifactStore::new(&aws(), &bucket)
            .await
            .ensure_bucket()
            .await
            .unwrap();
        conformance::record_store(&S3RecordStore::new(&aws(), &bucket, "records/").await).await;
    }

    #[tokio::test]
    async fn dynamodb_registry() {
        let registry = DynamoRegistry::new(&aws(), &unique("functions")).await;
        registry.ensure_table().await.unwrap();
        conformance::function_registry(Arc::new(registry)).await;
    }

    #[tokio::test]
    async fn dynamodb_log_store() {
        let logs = DynamoLogStore::new(&aws(), &unique("logs"), Duration::from_secs(86_400)).await;
        logs.ensure_table().await.unwrap();
        conformance::log_store(&logs).await;
    }

    /// AWS_ENDPOINT_URL_S3/_DYNAMODB/_SQS win over AWS_ENDPOINT_URL.
    #[tokio::test]
    async fn per_service_endpoints_win_over_the_global_one() {
        use infra_controller::backend::{ArtifactStore, FunctionRegistry, JobQueue};
        let moto = aws().endpoint_url.unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut settings = aws();
        settings.endpoint_url = Some(format!("http://{dead}"));
        settings.s3_endpoint_url = Some(moto.clone());
        settings.dynamodb_endpoint_url = Some(moto.clone());
        settings.sqs_endpoint_url = Some(moto);
        let store = S3ArtifactStore::new(&settings, &unique("bucket")).await;
        store.ensure_bucket().await.unwrap();
        store.ping().await.unwrap();
        let registry = DynamoRegistry::new(&settings, &unique("functions")).await;
        registry.ensure_table().await.unwrap();
        registry.ping().await.unwrap();
        let logs = DynamoLogStore::new(&settings, &unique("logs"), Duration::from_secs(60)).await;
        logs.ensure_table().await.unwrap();
        let url = SqsQueue::create_queue(&settings, &unique("jobs")).await.unwrap();
        SqsQueue::new(&settings, &url, Duration::from_secs(5))
            .await
            .ping()
            .await
            .unwrap();
        // And the global endpoint is used when no override is given.
        let mut global_only = aws();
        global_only.endpoint_url = Some(format!("http://{dead}"));
        assert!(DynamoRegistry::new(&global_only, "x").await.ping().await.is_err());
    }

    #[tokio::test]
    async fn sqs_standard_queue() {
        let url = SqsQueue::create_queue(&aws(), &unique("jobs")).await.unwrap();
        let visibility = Duration::from_secs(2);
        let queue = SqsQueue::new(&aws(), &url, visibility).await;
        conformance::job_queue(&queue, visibility).await;
        conformance::delayed_send(&queue).await;
    }

    #[tokio::test]
    async fn sqs_fifo_queue() {
        let url = SqsQueue::create_queue(&aws(), &format!("{}.fifo", unique("jobs")))
            .await
            .unwrap();
        let visibility = Duration::from_secs(2);
        conformance::job_queue(&SqsQueue::new(&aws(), &url, visibility).await, visibility).await;
    }
}

mod redis {
    use std::time::Duration;

    use infra_controller::backend::conformance;
    use infra_controller::backend::redis::{
        connect, RedisChangeFeed, RedisDirectory, RedisJobCounter, RedisRateLimiter, RedisResultBus,
    };
    use infra_controller::backend::Quota;
    use infra_controller::backend::{ChangeFeed, FunctionChange};

    use crate::services::RedisServer;

    #[tokio::test]
    async fn redis_result_bus() {
        let server = RedisServer::start();
        let (client, conn) = connect(&server.url()).await.unwrap();
        let bus = RedisResultBus::new(client, conn, Duration::from_secs(3600), "");
        assert!(
            bus.ready(Duration::from_secs(5)).await,
            "result bus never connected its subscriber"
        );
        conformance::result_bus(&bus).await;
    }

    #[tokio::test]
    async fn redis_rate_limiter() {
        let server = RedisServer::start();
        let (_, conn) = connect(&server.url()).await.unwrap();
        conformance::rate_limiter(
            &RedisRateLimiter::new(conn.clone(), Quota::per_minute(100), "rl:"),
            &RedisRateLimiter::new(conn, super::short_quota(), "rl-short:"),
        )
        .await;
    }

    #[tokio::test]
    async fn redis_job_counter() {
        let server = RedisServer::start();
        let (_, conn) = connect(&server.url()).await.unwrap();
        conformance::job_counter(&RedisJobCounter::new(conn, "p:")).await;
    }

    #[tokio::test]
    async fn redis_change_feed() {
        let server = RedisServer::start();
        let feed = |prefix: &'static str| {
            let url = server.url();
            async move {
                let (client, conn) = connect(&url).await.unwrap();
                RedisChangeFeed::new(client, conn, prefix)
            }
        };
        conformance::change_feed(&feed("p:").await, &feed("p:").await).await;
    }

    /// Pub/sub keeps nothing: after Redis comes back, subscribers are told
    /// to forget everything, and changes are heard again.
    #[tokio::test]
    async fn a_redis_change_feed_resyncs_after_an_outage() {
        let mut server = RedisServer::start();
        let (client, conn) = connect(&server.url()).await.unwrap();
        let feed = RedisChangeFeed::new(client, conn, "");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !feed.is_live() {
            assert!(std::time::Instant::now() < deadline, "the feed comes up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut heard = feed.subscribe();
        server.stop();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while feed.is_live() {
            assert!(std::time::Instant::now() < deadline, "an outage is noticed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.resume();
        let resync = tokio::time::timeout(Duration::from_secs(10), heard.recv()).await;
        assert!(matches!(resync, Ok(Ok(FunctionChange::Resync))), "{resync:?}");
        assert!(feed.is_live());
        feed.publish("f").await.unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(5), heard.recv()).await;
        assert!(
            matches!(changed, Ok(Ok(FunctionChange::Changed(ref id))) if id == "f"),
            "{changed:?}"
        );
    }

    #[tokio::test]
    async fn redis_worker_directory() {
        let server = RedisServer::start();
        let (_, conn) = connect(&server.url()).await.unwrap();
        conformance::worker_directory(&RedisDirectory::new(conn, "")).await;
    }
}

/// Specific to `infra up`: old job records and logs are swept, recent ones kept.
#[tokio::test]
async fn embedded_retention_sweeps_only_old_records() {
    use infra_controller::backend::{LogStore, ResultBus};
    use infra_controller::model::{JobResult, JobStatus, LogEntry};
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).unwrap();
    let bus = EmbeddedResultBus::new(db.clone());
    let logs = EmbeddedLogStore::new(db);
    let (old_job, new_job) = (conformance::sample_job("f"), conformance::sample_job("f"));
    let mut old = JobResult::platform(&old_job, JobStatus::Success, "-", "");
    old.finished_at = chrono::Utc::now() - chrono::TimeDelta::days(3);
    let new = JobResult::platform(&new_job, JobStatus::Success, "-", "");
    for r in [&old, &new] {
        bus.publish(r.finished_at, r).await.unwrap();
        logs.put(&LogEntry::of(r, 1000)).await.unwrap();
    }
    let cutoff = chrono::Utc::now() - chrono::TimeDelta::days(1);
    assert_eq!(bus.purge_finished_before(cutoff).await.unwrap(), 1);
    assert_eq!(logs.purge_before(cutoff).await.unwrap(), 1);
    assert!(bus.get(&old_job.request_id).await.unwrap().is_none());
    assert!(bus.get(&new_job.request_id).await.unwrap().is_some());
    let left = logs.list("f", 10).await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.request_id.clone()).collect::<Vec<_>>(),
        vec![new_job.request_id]
    );
}
