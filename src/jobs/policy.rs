//! What happens to a job after a run, and how a job is made from a function:
//! pure rules, no I/O.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::{FunctionRecord, Job, JobLifecycle, JobResult, JobStatus, RetryPolicy};

/// The longest a retry waits (the queue's delay limit).
pub const MAX_BACKOFF: Duration = Duration::from_secs(900);

/// What the worker does with a finished run.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The result is the job's outcome.
    Finish,
    /// Run the job again after `delay`; the result becomes one of its failures.
    Retry { delay: Duration },
    /// The job failed for good: keep it among the dead letters, then finish.
    DeadLetter { reason: String },
}

/// Whether `status` is worth another run under `policy`.
fn retryable(status: JobStatus, policy: &RetryPolicy) -> bool {
    match status {
        JobStatus::Error | JobStatus::Timeout | JobStatus::Crashed => true,
        JobStatus::Oom => policy.retry_on_oom,
        _ => false,
    }
}

/// The wait before run `next_attempt` (2 for the first retry): the base
/// backoff doubled per earlier retry, capped.
pub fn backoff(policy: &RetryPolicy, next_attempt: u32) -> Duration {
    let doublings = next_attempt.saturating_sub(2).min(16);
    let secs = u64::from(policy.backoff_seconds).saturating_mul(1u64 << doublings);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// The next step after `result`, a run of `job`. Only asynchronous jobs are
/// retried and dead-lettered; a synchronous caller already has the outcome.
pub fn after(job: &Job, result: &JobResult) -> Next {
    if !job.lifecycle.asynchronous || result.status == JobStatus::Success {
        return Next::Finish;
    }
    let policy = job.lifecycle.retry.unwrap_or_default();
    if result.status == JobStatus::Lost {
        return Next::DeadLetter {
            reason: "lost: its runs kept ending without a result (workers crashed or restarted)".into(),
        };
    }
    if !retryable(result.status, &policy) {
        return Next::DeadLetter {
            reason: format!(
                "{} is not retried under the function's retry policy",
                result.status.as_str()
            ),
        };
    }
    let runs = result.attempt.max(job.lifecycle.first_attempt());
    if runs > policy.max_retries {
        return Next::DeadLetter {
            reason: format!(
                "failed {runs} time{} (maxRetries {})",
                if runs == 1 { "" } else { "s" },
                policy.max_retries
            ),
        };
    }
    Next::Retry {
        delay: backoff(&policy, runs + 1),
    }
}

/// True when the job waited longer than its policy allows before a run.
pub fn too_old(job: &Job, now: DateTime<Utc>) -> bool {
    let Some(policy) = job.lifecycle.retry.filter(|_| job.lifecycle.asynchronous) else {
        return false;
    };
    let age = now.signed_duration_since(job.submitted_at);
    age.num_seconds() > i64::try_from(policy.max_event_age_seconds).unwrap_or(i64::MAX)
}

/// The job's next run after the failed `result`.
pub fn retried(job: &Job, result: &JobResult) -> Job {
    let mut next = job.clone();
    next.lifecycle.failures.push(result.as_failure());
    next.lifecycle.attempt = result.attempt + 1;
    next
}

/// What a caller asked for in one `/run`.
pub struct RunRequest {
    pub input: serde_json::Value,
    pub model_id: Option<String>,
    pub asynchronous: bool,
    pub trace_id: Option<String>,
}

/// A new job of `function` (its current settings and code), with a new id.
pub fn new_job(function: &FunctionRecord, bucket: &str, req: RunRequest) -> Job {
    Job {
        request_id: uuid::Uuid::new_v4().to_string(),
        function_id: function.function_id.clone(),
        runtime: function.runtime,
        memory_mb: function.memory_mb,
        s3_bucket: bucket.to_string(),
        s3_key: function.s3_key.clone(),
        timeout_ms: function.timeout_ms,
        input: req.input,
        model_id: req.model_id,
        env_vars: function.env_vars.clone(),
        handler: function.handler.clone(),
        sha256: function.sha256.clone(),
        warm_pool: function.warm_pool,
        network: function.network,
        style: function.style,
        trace_id: req.trace_id,
        submitted_at: Utc::now(),
        lifecycle: JobLifecycle {
            asynchronous: req.asynchronous,
            retry: req.asynchronous.then_some(function.retry),
            max_concurrency: function.max_concurrency,
            ..JobLifecycle::default()
        },
        original_format: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::conformance::{sample_function, sample_job};

    fn async_job(policy: RetryPolicy) -> Job {
        let mut job = sample_job("f");
        job.lifecycle.asynchronous = true;
        job.lifecycle.retry = Some(policy);
        job
    }

    fn run(job: &Job, status: JobStatus, attempt: u32) -> JobResult {
        let mut r = JobResult::platform(job, status, "E", "boom");
        r.attempt = attempt;
        r
    }

    #[test]
    fn failures_retry_with_doubling_backoff_then_dead_letter() {
        let policy = RetryPolicy {
            max_retries: 2,
            backoff_seconds: 3,
            ..RetryPolicy::default()
        };
        let job = async_job(policy);
        assert_eq!(
            after(&job, &run(&job, JobStatus::Error, 1)),
            Next::Retry {
                delay: Duration::from_secs(3)
            }
        );
        let second = retried(&job, &run(&job, JobStatus::Timeout, 1));
        assert_eq!(second.lifecycle.attempt, 2);
        assert_eq!(second.lifecycle.failures.len(), 1);
        assert_eq!(
            after(&second, &run(&second, JobStatus::Crashed, 2)),
            Next::Retry {
                delay: Duration::from_secs(6)
            }
        );
        assert!(matches!(
            after(&second, &run(&second, JobStatus::Error, 3)),
            Next::DeadLetter { reason } if reason.contains("3 times")
        ));
        assert_eq!(after(&second, &run(&second, JobStatus::Success, 3)), Next::Finish);
    }

    #[test]
    fn oom_and_lost_are_dead_lettered_unless_asked() {
        let job = async_job(RetryPolicy::default());
        assert!(matches!(
            after(&job, &run(&job, JobStatus::Oom, 1)),
            Next::DeadLetter { .. }
        ));
        assert!(matches!(
            after(&job, &run(&job, JobStatus::Lost, 6)),
            Next::DeadLetter { .. }
        ));
        let job = async_job(RetryPolicy {
            retry_on_oom: true,
            ..RetryPolicy::default()
        });
        assert!(matches!(after(&job, &run(&job, JobStatus::Oom, 1)), Next::Retry { .. }));
        let none = async_job(RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        });
        assert!(matches!(
            after(&none, &run(&none, JobStatus::Error, 1)),
            Next::DeadLetter { .. }
        ));
    }

    #[test]
    fn sync_runs_are_never_retried_or_dead_lettered() {
        let mut job = async_job(RetryPolicy::default());
        job.lifecycle.asynchronous = false;
        assert_eq!(after(&job, &run(&job, JobStatus::Error, 1)), Next::Finish);
        assert!(!too_old(&job, Utc::now() + chrono::TimeDelta::days(2)));
    }

    #[test]
    fn backoff_is_capped_and_zero_stays_zero() {
        let p = RetryPolicy {
            backoff_seconds: 300,
            ..RetryPolicy::default()
        };
        assert_eq!(backoff(&p, 2), Duration::from_secs(300));
        assert_eq!(backoff(&p, 5), MAX_BACKOFF);
        let zero = RetryPolicy {
            backoff_seconds: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(backoff(&zero, 4), Duration::ZERO);
    }

    #[test]
    fn old_async_jobs_are_too_old() {
        let job = async_job(RetryPolicy {
            max_event_age_seconds: 60,
            ..RetryPolicy::default()
        });
        assert!(!too_old(&job, job.submitted_at + chrono::TimeDelta::seconds(59)));
        assert!(too_old(&job, job.submitted_at + chrono::TimeDelta::seconds(61)));
    }

    #[test]
    fn new_jobs_carry_the_policy_only_when_async() {
        let f = sample_function("f");
        let req = |asynchronous| RunRequest {
            input: serde_json::json!({}),
            model_id: None,
            asynchronous,
            trace_id: None,
        };
        assert_eq!(new_job(&f, "b", req(true)).lifecycle.retry, Some(f.retry));
        assert_eq!(new_job(&f, "b", req(false)).lifecycle.retry, None);
        let j = new_job(&f, "b", req(false));
        let wire = serde_json::to_value(&j).unwrap();
        assert!(wire.get("async").is_none() && wire.get("attempt").is_none(), "{wire}");
    }
}
