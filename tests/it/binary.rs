//! The real `infra` binary: fail-fast configuration, SIGTERM drain, and a
//! restart that keeps functions and finishes pending jobs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// Starts `infra up` on a free port; extra env vars on top.
fn spawn_up(data_dir: &Path, env: &[(&str, &str)]) -> Proc {
    let dir = data_dir.to_string_lossy().to_string();
    let mut all = vec![("INFRA_API_KEY", KEY), ("RATE_LIMIT_PER_MINUTE", "0")];
    all.extend_from_slice(env);
    spawn_infra(&["up", "--port", "0", "--data-dir", &dir], &all)
}

/// Submits an async run; returns the job id.
async fn run_async(client: &reqwest::Client, base: &str, id: &str, input: Value) -> String {
    let (status, body) = run_at(client, base, id, input, true).await;
    assert_eq!(status, 202, "{body}");
    body["jobId"].as_str().unwrap().to_string()
}

#[test]
fn invalid_configuration_lists_every_problem_and_exits_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_infra"))
        .arg("up")
        .env("PORT", "eighty")
        .env("WORKER_CONCURRENCY", "0")
        .env("INFRA_API_KEY", "short")
        .env("AI_NODE_URL", "not a url")
        .output()
        .expect("run infra");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["PORT", "WORKER_CONCURRENCY", "INFRA_API_KEY", "AI_NODE_URL"] {
        assert!(stderr.contains(needle), "{needle} not listed in: {stderr}");
    }
    assert!(!stderr.contains("short"), "the key's value is not echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = spawn_up(dir.path(), &[("SHUTDOWN_TIMEOUT_SECONDS", "20")]);
    let client = reqwest::Client::new();
    let id = upload_at(&client, &proc.base, &runs_until("'finished'")).await;
    let base = proc.base.clone();
    let c2 = client.clone();
    // Runs until 6 s from now: in flight when the signal comes, however
    // slowly a loaded machine gets there.
    let end = until(6.0);
    let input = json!({"until": end});
    let inflight = tokio::spawn(async move {
        let r = c2
            .post(format!("{base}/run"))
            .header("x-api-key", KEY)
            .json(&json!({"functionId": id, "inputData": input}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    // Signal once an instance runs it (not on a guess that it does by now).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = get_text(&client, format!("{}/metrics", proc.base)).await;
        if metrics.lines().any(|l| l == "infra_busy_instances 1") {
            break;
        }
        assert!(!inflight.is_finished(), "the run ended before it was seen running");
        assert!(Instant::now() < deadline, "the run never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still a while to go: the drain, not the run's end, is what is tested.
    assert!(
        end - until(0.0) > 1.0,
        "the run was seen busy too late to test the drain"
    );
    sigterm(&proc.child);
    let (status, body) = inflight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "SUCCESS", "{body}");
    assert_eq!(body["result"], "finished");
    let code = tokio::task::block_in_place(|| wait_exit(&mut proc.child, Duration::from_secs(15)));
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_functions_and_finishes_pending_jobs() {
    let dir = tempfile::tempdir().unwrap();
    // One slot and no drain time: the running job is abandoned, the rest wait in the queue.
    let env = [("WORKER_CONCURRENCY", "1"), ("SHUTDOWN_TIMEOUT_SECONDS", "0")];
    let mut first = spawn_up(dir.path(), &env);
    let client = reqwest::Client::new();
    let id = upload_at(&client, &first.base, &runs_until("event['n']")).await;
    // Each runs until 8 s from now (a run after that ends at once): the
    // first is still running when the others are checked and the stop comes,
    // however slowly a loaded machine polls.
    let until = until(8.0);
    let mut jobs = Vec::new();
    for n in 0..4 {
        jobs.push((
            n,
            run_async(&client, &first.base, &id, json!({"n": n, "until": until})).await,
        ));
    }
    // Wait until the first job runs, then stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = get_json(&client, format!("{}/status/{}", first.base, jobs[0].1)).await;
        if body["state"] == "RUNNING" {
            break;
        }
        assert!(Instant::now() < deadline, "first job never ran: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Concurrency 1 and the first runs until then: the others cannot have started yet.
    for (_, job) in &jobs[1..] {
        let body: Value = get_json(&client, format!("{}/status/{job}", first.base)).await;
        assert_eq!(body["status"], "pending");
        assert_eq!(body["state"], "PENDING");
    }
    sigterm(&first.child);
    assert_eq!(
        tokio::task::block_in_place(|| wait_exit(&mut first.child, Duration::from_secs(10))),
        0
    );

    let mut second = spawn_up(dir.path(), &env);
    let list: Value = get_json(&client, format!("{}/functions", second.base)).await;
    assert_eq!(list[0]["functionId"], id.as_str(), "the function survived the restart");
    for (n, job) in &jobs {
        let (_, body) = wait_job_at(&client, &second.base, job, Duration::from_secs(30)).await;
        assert_eq!(body["status"], "SUCCESS", "{body}");
        assert_eq!(body["result"], *n);
    }
    // The job cut off by the stop was delivered again.
    let (_, first_job) = wait_job_at(&client, &second.base, &jobs[0].1, Duration::from_secs(1)).await;
    assert_eq!(first_job["attempt"], 2, "{first_job}");
    sigterm(&second.child);
    assert_eq!(
        tokio::task::block_in_place(|| wait_exit(&mut second.child, Duration::from_secs(10))),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_host_never_give_one_uid_to_two_functions() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: instances get uids of their own only when the worker is root");
        return;
    }
    // A range of this test's own, locked in a directory of its own, shared
    // by both processes as by two workers on one host.
    const BASE: u64 = 3_000_000;
    let locks = tempfile::tempdir().unwrap();
    let lock_dir = locks.path().to_string_lossy().to_string();
    let env = [
        ("INSTANCE_UID_BASE", "3000000"),
        ("INSTANCE_UID_LOCK_DIR", lock_dir.as_str()),
        ("WORKER_CONCURRENCY", "2"),
    ];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let procs = [spawn_up(dir_a.path(), &env), spawn_up(dir_b.path(), &env)];
    let client = reqwest::Client::new();
    // All four run until one moment: four instances alive together.
    let source = runs_until("__import__('os').getuid()");
    let input = json!({"until": until(10.0)});
    let mut runs = Vec::new();
    for proc in &procs {
        let id = upload_at(&client, &proc.base, &source).await;
        for _ in 0..2 {
            let (client, base, id, input) = (client.clone(), proc.base.clone(), id.clone(), input.clone());
            runs.push(tokio::spawn(
                async move { run_at(&client, &base, &id, input, false).await },
            ));
        }
    }
    let mut uids = Vec::new();
    for run in runs {
        let (status, body) = run.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "SUCCESS", "{body}");
        uids.push(body["result"].as_u64().unwrap());
    }
    assert!(uids.iter().all(|u| (BASE..BASE + 1024).contains(u)), "{uids:?}");
    let distinct: std::collections::BTreeSet<_> = uids.iter().collect();
    assert_eq!(distinct.len(), 4, "two functions ran as one uid at once: {uids:?}");
}
