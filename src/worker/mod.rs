//! The queue consumer: bounded concurrency, visibility extension while a job
//! runs, ack only after the result is stored, drain on shutdown.

pub mod cache;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ai::{AiClient, AiSession};
use crate::backend::{Delivery, FunctionRegistry, JobQueue, LogStore, WorkerDirectory};
use crate::function::settings::Handler;
use crate::function::tuner::{self, CpuSample, PeakWindow};
use crate::jobs::policy::{self, Next};
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::model::{
    DeadLetter, FunctionRecord, FunctionStyle, JobRecord, JobResult, JobStatus, LogEntry, OutputArtifact, Resources,
    Runtime, UsageDelta, WorkerStatus,
};
use crate::runtime::program::{ProgramRequest, ProgramSpec};
use crate::runtime::{InstanceSpec, InvokeRequest, Pool, WarmTarget};
use cache::ArtifactCache;

#[derive(Clone)]
pub struct WorkerSettings {
    pub concurrency: usize,
    /// Longest a receive waits for work (SQS long polling: 20 s).
    pub receive_wait: Duration,
    /// The queue's visibility timeout; running jobs are extended before it lapses.
    pub visibility: Duration,
    /// Deliveries after which a job is given up as LOST.
    pub max_attempts: u32,
    /// The AI node functions may call through the worker.
    pub ai: AiClient,
    /// Most AI calls one invocation may make.
    pub ai_max_calls: u32,
}

/// Per output stream in a log entry: two of these plus the error stay under
/// DynamoDB's 400 KB item limit.
const LOG_STREAM_BYTES: usize = 150_000;

/// The backends a worker uses.
pub struct WorkerBackends {
    pub queue: Arc<dyn JobQueue>,
    pub jobs: Jobs,
    pub directory: Arc<dyn WorkerDirectory>,
    /// Where invocation logs go, when enabled.
    pub logs: Option<Arc<dyn LogStore>>,
    /// The function records, whose warm-pool settings the worker follows
    /// (no pre-warming without it).
    pub registry: Option<Arc<dyn FunctionRegistry>>,
    /// Signalled when functions change, to follow at once rather than at
    /// the next poll (in-process registries).
    pub changes: Option<Arc<tokio::sync::Notify>>,
}

/// The shortest wait of a job put back for lack of a run slot (SQS delays
/// are in whole seconds, so 1 s there).
const DEFER_MIN: Duration = Duration::from_millis(1000);

/// Up to 500 ms, so deferred jobs do not all come back at once.
fn rand_jitter_ms() -> u64 {
    u64::from(uuid::Uuid::new_v4().as_u128() as u16 % 500)
}

/// How often a worker re-reads the warm-pool spec from the registry.
const WARM_POOL_POLL: Duration = Duration::from_secs(5);

/// How often a worker reports itself, and how long a report counts.
const HEARTBEAT: Duration = Duration::from_secs(5);
const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

pub struct Worker {
    cfg: WorkerSettings,
    id: String,
    started_at: chrono::DateTime<Utc>,
    directory: Arc<dyn WorkerDirectory>,
    logs: Option<Arc<dyn LogStore>>,
    registry: Option<Arc<dyn FunctionRegistry>>,
    changes: Option<Arc<tokio::sync::Notify>>,
    queue: Arc<dyn JobQueue>,
    jobs: Jobs,
    cache: ArtifactCache,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    /// Finished runs and their durations, written to the registry with each heartbeat.
    usage: crate::function::usage::UsageTally,
    /// Jobs being handled now.
    active: std::sync::atomic::AtomicUsize,
    /// Recent peak memory of each function run here, for the auto-tuner.
    peaks: PeakWindow,
}

impl Worker {
    pub fn new(
        cfg: WorkerSettings,
        backends: WorkerBackends,
        cache: ArtifactCache,
        pool: Arc<Pool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let WorkerBackends {
            queue,
            jobs,
            directory,
            logs,
            registry,
            changes,
        } = backends;
        Worker {
            cfg,
            id: uuid::Uuid::new_v4().to_string(),
            started_at: Utc::now(),
            directory,
            logs,
            registry,
            changes,
            queue,
            jobs,
            cache,
            pool,
            metrics,
            usage: Default::default(),
            active: Default::default(),
            peaks: PeakWindow::default(),
        }
    }

    fn status(&self) -> WorkerStatus {
        let stats = self.pool.stats();
        let pools = stats.idle_by_function.clone();
        WorkerStatus {
            worker_id: self.id.clone(),
            hostname: hostname(),
            started_at: self.started_at,
            reported_at: Utc::now(),
            concurrency: self.cfg.concurrency,
            // Jobs in hand, not slots taken: the receive loop holds a slot
            // while it waits for messages.
            active_jobs: self.active.load(std::sync::atomic::Ordering::Relaxed),
            warm_instances: pools.values().sum(),
            pools,
            pool: Some(stats),
        }
    }

    /// Reports this worker every few seconds until `stop`, then withdraws it.
    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if let Err(e) = self.directory.report(&self.status(), HEARTBEAT_TTL).await {
                tracing::warn!(error = %e, "could not report worker status");
            }
            if let Some(registry) = &self.registry {
                self.usage.flush(registry.as_ref()).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = stop.cancelled() => break,
            }
        }
        if let Err(e) = self.directory.remove(&self.id).await {
            tracing::debug!(error = %e, "could not withdraw worker status");
        }
        if let Some(registry) = &self.registry {
            self.usage.flush(registry.as_ref()).await;
        }
    }

    /// Consumes jobs until `shutdown`, then waits up to `drain` for running
    /// jobs. Jobs still running after that are abandoned unacknowledged, so the
    /// queue delivers them again (after a restart, for the embedded queue).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, drain: Duration) {
        let slots = Arc::new(Semaphore::new(self.cfg.concurrency.max(1)));
        let beat_stop = CancellationToken::new();
        let beat = tokio::spawn(self.clone().heartbeat(beat_stop.clone()));
        let follow = tokio::spawn(self.clone().follow_warm_pool(beat_stop.clone()));
        let mut tasks = JoinSet::new();
        loop {
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.cancelled() => break,
            };
            let free = slots.available_permits() + 1;
            let received = tokio::select! {
                r = self.queue.receive(free, self.cfg.receive_wait) => r,
                _ = shutdown.cancelled() => break,
            };
            match received {
                Ok(deliveries) => {
                    let mut first = Some(first);
                    for delivery in deliveries {
                        let permit = match first.take() {
                            Some(p) => p,
                            None => match slots.clone().try_acquire_owned() {
                                Ok(p) => p,
                                // Cannot happen: we asked for at most `free` jobs.
                                Err(_) => break,
                            },
                        };
                        let worker = self.clone();
                        tasks.spawn(async move {
                            worker.handle(delivery).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "queue receive failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
            while tasks.try_join_next().is_some() {}
        }
        tracing::info!(in_flight = tasks.len(), "worker stopping; draining in-flight jobs");
        let drained = tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = tasks.len(),
                "drain time exceeded; abandoned jobs will be delivered again"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        beat_stop.cancel();
        let _ = follow.await;
        self.pool.clear();
        let _ = beat.await;
    }

    /// Keeps the pool in line with the warm-pool spec: every function's
    /// minWarm instances, re-read every few seconds and on each change.
    async fn follow_warm_pool(self: Arc<Self>, stop: CancellationToken) {
        let Some(registry) = self.registry.clone() else {
            tracing::info!("no function registry configured: minWarm pre-warming is off on this worker");
            return;
        };
        let never = Arc::new(tokio::sync::Notify::new());
        let changes = self.changes.clone().unwrap_or(never);
        let mut last_short = std::collections::BTreeMap::new();
        loop {
            match registry.list().await {
                Ok(functions) => {
                    let spec = crate::function::warm_pool_spec(&functions, self.pool.stem_cells());
                    spec.export(&self.metrics);
                    let targets = self.targets(&functions).await;
                    let short = tokio::select! {
                        s = self.pool.set_targets(&targets) => s,
                        _ = stop.cancelled() => return,
                    };
                    // Refreshes the pool gauges.
                    self.pool.stats();
                    // Said once per change, not on every poll.
                    if !short.is_empty() && short != last_short {
                        tracing::warn!(?short, "not enough pool memory for every function's minWarm");
                    }
                    last_short = short;
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the warm-pool spec"),
            }
            tokio::select! {
                _ = tokio::time::sleep(WARM_POOL_POLL) => {}
                _ = changes.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Instance specs of the functions that want warm instances and that
    /// this worker can run.
    async fn targets(&self, functions: &[FunctionRecord]) -> Vec<WarmTarget> {
        let mut targets = Vec::new();
        // Programs start per run: nothing of theirs is kept warm.
        for f in functions
            .iter()
            .filter(|f| f.warm_pool.min_warm > 0 && f.style == FunctionStyle::Handler)
        {
            if f.runtime == Runtime::Nodejs && !self.pool.has_runtime(Runtime::Nodejs) {
                continue;
            }
            let (code_dir, version) = match self.cache.code_dir(&f.s3_key, &f.sha256).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(function_id = f.function_id, error = %e, "cannot pre-warm: no code");
                    continue;
                }
            };
            let spec = instance_spec(
                &f.function_id,
                f.runtime,
                &f.handler,
                f.memory_mb,
                &f.env_vars,
                f.network,
                (code_dir, version),
            );
            let Ok(spec) = spec else { continue };
            targets.push(WarmTarget {
                spec,
                warm_pool: f.warm_pool,
            });
        }
        targets
    }

    async fn handle(&self, delivery: Delivery) {
        self.active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Counted down however handling ends (including a panic unwinding).
        struct Done<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _done = Done(&self.active);
        let job = &delivery.job;
        let span = tracing::info_span!(
            "job",
            request_id = %job.request_id,
            function_id = %job.function_id,
            trace_id = job.trace_id.as_deref().unwrap_or(""),
            attempt = job.lifecycle.first_attempt() + delivery.attempt - 1,
        );
        async {
            if let Some(defect) = &delivery.defect {
                // Never loop on a message that cannot run: end it (if it names a job) and drop it.
                tracing::error!(defect, "dropping a malformed queue message");
                if !job.request_id.is_empty() {
                    let result = JobResult::platform(job, JobStatus::Error, "MalformedJob", defect.clone());
                    if !self.finish(&delivery, &result).await {
                        return;
                    }
                }
                self.ack(&delivery).await;
                return;
            }
            // Delivered again after its outcome was kept (e.g. the ack was
            // lost): make sure it is kept durably, then just ack.
            if delivery.attempt > 1 || job.lifecycle.first_attempt() > 1 {
                if let Ok(Some(record)) = self.jobs.get(&job.request_id).await {
                    if let (true, Some(result)) = (record.status.is_terminal(), &record.result) {
                        if self.finish(&delivery, result).await {
                            self.ack(&delivery).await;
                        }
                        return;
                    }
                }
            }
            let attempt = job.lifecycle.first_attempt() + delivery.attempt - 1;
            let result = if delivery.attempt > self.cfg.max_attempts {
                let mut r = JobResult::platform(
                    job,
                    JobStatus::Lost,
                    "Lost",
                    format!(
                        "the job was delivered {} times without finishing (workers crashed or restarted while running it)",
                        delivery.attempt - 1
                    ),
                );
                r.attempt = attempt;
                if let Next::DeadLetter { reason } = policy::after(job, &r) {
                    self.dead_letter(job, &mut r, &reason).await;
                }
                r
            } else if policy::too_old(job, Utc::now()) {
                let mut r = JobResult::platform(
                    job,
                    JobStatus::Error,
                    "MaxEventAgeExceeded",
                    "the job waited longer than the function's maxEventAgeSeconds; it was not run",
                );
                r.attempt = attempt;
                self.dead_letter(job, &mut r, "too old to run (maxEventAgeSeconds)").await;
                r
            } else {
                let slot = match job.lifecycle.max_concurrency {
                    None => None,
                    Some(max) => match self.jobs.counter().acquire(&job.function_id, &job.request_id, max, self.cfg.visibility).await {
                        Ok(true) => Some(max),
                        // Every run slot of the function is taken: back to the queue, unrun.
                        Ok(false) => {
                            self.defer(&delivery).await;
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot take a run slot; the job waits");
                            self.defer(&delivery).await;
                            return;
                        }
                    },
                };
                // The original controller returns whatever `job:{id}` holds
                // as the final answer: its jobs get only their result there.
                if !job.original_format {
                    let running = JobRecord::pending(job).with_status(JobStatus::Running);
                    if let Err(e) = self.jobs.set_state(&running).await {
                        tracing::warn!(error = %e, "could not record RUNNING state");
                    }
                }
                let extender = self.keep_invisible(&delivery, slot);
                let mut result = self.execute(&delivery, attempt).await;
                extender.abort();
                if slot.is_some() {
                    if let Err(e) = self.jobs.counter().release(&job.function_id, &job.request_id).await {
                        tracing::warn!(error = %e, "could not release the run slot; it lapses with its lease");
                    }
                }
                match policy::after(job, &result) {
                    Next::Finish => {}
                    Next::Retry { delay } => {
                        if self.retry(&delivery, &result, delay).await {
                            return;
                        }
                    }
                    Next::DeadLetter { reason } => self.dead_letter(job, &mut result, &reason).await,
                }
                result
            };
            if self.finish(&delivery, &result).await {
                self.ack(&delivery).await;
                self.usage
                    .add(&result.function_id, &UsageDelta::finished(result.duration_ms, result.handler_duration_ms),
                );
                if let Some(key) = &job.lifecycle.input_ref {
                    if let Err(e) = self.jobs.ledger().remove_payload(key).await {
                        tracing::debug!(error = %e, "could not remove the stored input");
                    }
                }
                if let Some(logs) = &self.logs {
                    // Best effort: the result itself is already stored.
                    if let Err(e) = logs.put(&LogEntry::of(&result, LOG_STREAM_BYTES)).await {
                        tracing::warn!(error = %e, "could not store the invocation log");
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Queues the job's next run and acks this one. False when the next run
    /// could not be queued: the failure then stands as the outcome.
    async fn retry(&self, delivery: &Delivery, result: &JobResult, delay: Duration) -> bool {
        let next = policy::retried(&delivery.job, result);
        if let Err(e) = self.queue.send_delayed(&next, delay).await {
            tracing::warn!(error = %e, "could not queue a retry; the failure is the outcome");
            return false;
        }
        self.metrics
            .retries
            .with_label_values(&[&delivery.job.function_id])
            .inc();
        tracing::info!(
            status = result.status.as_str(),
            next_attempt = next.lifecycle.attempt,
            delay_ms = delay.as_millis() as u64,
            "run failed; retrying"
        );
        if let Err(e) = self.jobs.set_state(&JobRecord::pending(&next)).await {
            tracing::debug!(error = %e, "could not record PENDING for the retry");
        }
        self.ack(delivery).await;
        true
    }

    /// Keeps the job among the dead letters and marks its result so.
    async fn dead_letter(&self, job: &crate::model::Job, result: &mut JobResult, reason: &str) {
        let mut input = job.input.clone();
        if let Some(key) = &job.lifecycle.input_ref {
            match self.jobs.ledger().payload(key).await {
                Ok(v) => input = v,
                Err(e) => tracing::warn!(error = %e, "dead letter without its stored input"),
            }
        }
        let mut attempts = job.lifecycle.failures.clone();
        attempts.push(result.as_failure());
        let letter = DeadLetter {
            job_id: job.request_id.clone(),
            function_id: job.function_id.clone(),
            reason: reason.to_string(),
            status: result.status,
            input,
            attempts,
            submitted_at: job.submitted_at,
            dead_lettered_at: Utc::now(),
        };
        match self.jobs.ledger().put_dead_letter(&letter).await {
            Ok(()) => {
                result.dead_lettered = true;
                self.metrics.dead_letters.with_label_values(&[&job.function_id]).inc();
                tracing::warn!(reason, "job dead-lettered");
            }
            Err(e) => tracing::error!(error = %e, "could not keep the dead letter"),
        }
    }

    /// Extends the job's visibility while it runs, so no other worker takes it.
    /// With `slot` (the function's maxConcurrency) it renews the run slot's lease too.
    fn keep_invisible(&self, delivery: &Delivery, slot: Option<u32>) -> tokio::task::JoinHandle<()> {
        let queue = self.queue.clone();
        let counter = self.jobs.counter().clone();
        let receipt = delivery.receipt.clone();
        let (function_id, job_id) = (delivery.job.function_id.clone(), delivery.job.request_id.clone());
        let visibility = self.cfg.visibility;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(visibility / 3).await;
                if let Err(e) = queue.extend(&receipt, visibility).await {
                    tracing::warn!(error = %e, "could not extend job visibility");
                }
                if let Some(max) = slot {
                    if let Err(e) = counter.acquire(&function_id, &job_id, max, visibility).await {
                        tracing::warn!(error = %e, "could not renew the run slot");
                    }
                }
            }
        })
    }

    /// Puts a job whose function has no free run slot back on the queue for
    /// a little later (a new message, so waiting does not count as a failed
    /// delivery), then acks this one. Left unacknowledged if that fails.
    async fn defer(&self, delivery: &Delivery) {
        let delay = DEFER_MIN + Duration::from_millis(rand_jitter_ms());
        if let Err(e) = self.queue.send_delayed(&delivery.job, delay).await {
            tracing::warn!(error = %e, "could not put the job back; it is delivered again after its visibility");
            return;
        }
        self.metrics
            .deferred
            .with_label_values(&[&delivery.job.function_id])
            .inc();
        self.ack(delivery).await;
    }

    /// Runs the job and completes its result with what the worker knows:
    /// its whole time (`durationMs`, as the original worker measures it),
    /// the allocation, resources and the auto-tuner's advice.
    async fn execute(&self, delivery: &Delivery, attempt: u32) -> JobResult {
        let started = std::time::Instant::now();
        let mut result = self.run_job(delivery, attempt).await;
        result.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.complete(&delivery.job, &mut result);
        result
    }

    /// The result's extras beyond the run itself.
    fn complete(&self, job: &crate::model::Job, result: &mut JobResult) {
        result.worker_id = Some(self.id.clone());
        result.allocated_memory_mb = (job.memory_mb > 0).then_some(job.memory_mb);
        if result.start_kind.is_none() {
            // Not run (no code, no instance...): nothing measured to judge.
            return;
        }
        let peaks = self.peaks.record(&job.function_id, result.peak_memory_bytes);
        let cpu = result
            .resources
            .as_ref()
            .and_then(|r| r.cpu_usage_percent)
            .zip(result.handler_duration_ms)
            .map(|(usage_percent, duration_ms)| CpuSample {
                usage_percent,
                duration_ms,
            });
        let advice = tuner::analyze(job.memory_mb, &peaks, cpu);
        result.set_advice((advice.based_on_runs > 0).then_some(advice));
    }

    async fn run_job(&self, delivery: &Delivery, attempt: u32) -> JobResult {
        let job = &delivery.job;
        // The worker reads code from its own bucket only; a task naming
        // another one (a fleet configured apart) fails plainly rather than
        // running whatever sits under that key here.
        if !job.s3_bucket.is_empty() && job.s3_bucket != self.cache.bucket() {
            let mut r = JobResult::platform(
                job,
                JobStatus::Error,
                "CodeUnavailable",
                format!(
                    "the job's code is in bucket {:?}; this worker reads {:?}",
                    job.s3_bucket,
                    self.cache.bucket()
                ),
            );
            r.attempt = attempt;
            return r;
        }
        let input = match &job.lifecycle.input_ref {
            Some(key) => match self.jobs.ledger().payload(key).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the job's stored input");
                    let mut r = JobResult::platform(job, JobStatus::Error, "InputUnavailable", e.to_string());
                    r.attempt = attempt;
                    return r;
                }
            },
            None => job.input.clone(),
        };
        let (code_dir, version) = match self.cache.code_dir(&job.s3_key, &job.sha256).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot prepare function code");
                let mut r = JobResult::platform(job, JobStatus::Error, "CodeUnavailable", e.to_string());
                r.attempt = attempt;
                return r;
            }
        };
        if job.style == FunctionStyle::Program {
            return self.run_program_job(job, attempt, input, code_dir).await;
        }
        let spec = match instance_spec(
            &job.function_id,
            job.runtime,
            &job.handler,
            job.memory_mb,
            &job.env_vars,
            job.network,
            (code_dir, version),
        ) {
            Ok(s) => s,
            Err(e) => {
                let mut r = JobResult::platform(job, JobStatus::Error, "InvalidHandler", e);
                r.attempt = attempt;
                return r;
            }
        };
        let req = InvokeRequest {
            request_id: job.request_id.clone(),
            function_id: job.function_id.clone(),
            function_name: job.function_id.clone(),
            memory_mb: job.memory_mb,
            model_id: job.model_id.clone(),
            timeout_ms: job.timeout_ms,
            event: input,
        };
        let mut ai = AiSession::new(
            self.cfg.ai.clone(),
            job.model_id.clone(),
            self.cfg.ai_max_calls,
            self.metrics.clone(),
        );
        let inv = self.pool.invoke(&spec, &job.warm_pool, &req, &mut ai).await;
        let o = inv.outcome;
        let mut stdout = o.stdout;
        if o.status == JobStatus::Success {
            print_value(&mut stdout, &o.value);
        }
        let handler_ms = (o.duration_ms > 0.0).then_some(o.duration_ms);
        let cpu_usage_percent = o
            .cpu_ms
            .zip(handler_ms)
            .map(|(cpu, wall)| (cpu / wall * 1000.0).round() / 10.0);
        let resources = (o.peak_memory_bytes > 0 || cpu_usage_percent.is_some()).then(|| Resources {
            memory_used_mb: (o.peak_memory_bytes as f64 / (1024.0 * 1024.0) * 100.0).round() / 100.0,
            cpu_usage_percent,
            // Networked functions share the host's network namespace, so
            // no per-instance byte counts exist: left out, not guessed.
            network_rx_bytes: None,
            network_tx_bytes: None,
        });
        let mut result = JobResult::platform(job, o.status, "", "");
        result.result = o.value;
        result.error = o.error;
        // The original's clients read `exitCode` (0 is success) and look for
        // a handler's exception in `stderr`.
        result.exit_code = Some(o.exit_code.unwrap_or(match o.status {
            JobStatus::Success => 0,
            JobStatus::Timeout => -1,
            _ => 1,
        }));
        let mut stderr = o.stderr;
        if let (true, Some(e)) = (o.status == JobStatus::Error, &result.error) {
            if !stderr.is_empty() && !stderr.ends_with('\n') {
                stderr.push('\n');
            }
            match &e.traceback {
                Some(tb) => stderr.push_str(tb),
                None => stderr.push_str(&format!("{}: {}\n", e.error_type, e.message)),
            }
        }
        result.stdout = stdout;
        result.stderr = stderr;
        result.handler_duration_ms = handler_ms;
        result.peak_memory_bytes = o.peak_memory_bytes;
        result.resources = resources;
        result.cold_start = inv.cold_start;
        result.start_kind = Some(inv.start_kind);
        result.init_ms = inv.init_ms;
        result.attempt = attempt;
        result.usage = ai.usage();
        result
    }

    /// Runs a program-style job: a fresh process (`python main.py`, `node
    /// index.js`) given the input in PAYLOAD / PAYLOAD_FILE; its stdout is the
    /// output (and `result`, as JSON when it is JSON), its exit code the
    /// status, and the files it leaves in OUTPUT_DIR are uploaded under
    /// `outputs/{requestId}/`.
    async fn run_program_job(
        &self,
        job: &crate::model::Job,
        attempt: u32,
        input: serde_json::Value,
        code_dir: std::path::PathBuf,
    ) -> JobResult {
        let failed = |error_type: &str, message: String| {
            let mut r = JobResult::platform(job, JobStatus::Error, error_type, message);
            r.attempt = attempt;
            r
        };
        let handler = match Handler::parse(&job.handler) {
            Ok(h) => h,
            Err(e) => return failed("InvalidHandler", e),
        };
        let candidates = handler.module_files(job.runtime);
        let Some(entry) = candidates.iter().find(|f| code_dir.join(f).is_file()).cloned() else {
            return failed(
                "NoEntryFile",
                format!(
                    "the program's entry file is missing: expected {}",
                    candidates.join(" or ")
                ),
            );
        };
        let spec = ProgramSpec {
            runtime: job.runtime,
            code_dir,
            entry,
            memory_mb: job.memory_mb,
            env_vars: job.env_vars.clone(),
            network: job.network,
        };
        let req = ProgramRequest {
            request_id: &job.request_id,
            function_id: &job.function_id,
            model_id: job.model_id.as_deref(),
            timeout_ms: job.timeout_ms,
            input: &input,
        };
        let run = match self.pool.run_program(&spec, &req).await {
            Ok(run) => run,
            Err(o) => {
                let message = o.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
                let error_type = o.error.as_ref().map(|e| e.error_type.clone()).unwrap_or_default();
                let mut r = JobResult::platform(job, o.status, &error_type, message);
                r.attempt = attempt;
                return r;
            }
        };
        let mut result = JobResult::platform(job, run.status, "", "");
        result.error = run.error.clone();
        result.exit_code = run.exit_code;
        if run.status == JobStatus::Success {
            result.result = crate::runtime::program::parse_result(&run.stdout);
        }
        result.stdout = run.stdout.clone();
        result.stderr = run.stderr.clone();
        result.handler_duration_ms = Some(run.duration_ms);
        result.peak_memory_bytes = run.peak_memory_bytes;
        let cpu_usage_percent = run
            .cpu_ms
            .filter(|_| run.duration_ms > 0.0)
            .map(|cpu| (cpu / run.duration_ms * 1000.0).round() / 10.0);
        result.resources = (run.peak_memory_bytes > 0 || cpu_usage_percent.is_some()).then(|| Resources {
            memory_used_mb: (run.peak_memory_bytes as f64 / (1024.0 * 1024.0) * 100.0).round() / 100.0,
            cpu_usage_percent,
            network_rx_bytes: None,
            network_tx_bytes: None,
        });
        result.cold_start = true;
        result.start_kind = Some(crate::runtime::StartKind::Fresh);
        result.attempt = attempt;
        let (kept, notes) = self
            .keep_outputs(
                &job.request_id,
                run.output_dir(),
                run.output_owner(),
                &run.stdout,
                &run.stderr,
            )
            .await;
        result.output_files = Some(crate::runtime::program::top_level_names(&kept));
        result.artifacts = kept
            .iter()
            .map(|f| OutputArtifact {
                path: f.path.clone(),
                size_bytes: f.size,
                url: format!("/status/{}/files/{}", job.request_id, f.path.replace('/', "%2F")),
            })
            .collect();
        for note in notes {
            if !result.stderr.is_empty() && !result.stderr.ends_with('\n') {
                result.stderr.push('\n');
            }
            result
                .stderr
                .push_str(&format!("[infra] output file not kept: {note}\n"));
        }
        // The run's dir (its code links and output files) goes now.
        drop(run);
        result
    }

    /// Uploads the files a program left in `dir`, and its output as
    /// `stdout.log`, to the artifact store under `outputs/{requestId}/{path}`.
    /// Returns the files kept and a note for each one that was not (at most
    /// OUTPUT_NOTES notes).
    async fn keep_outputs(
        &self,
        request_id: &str,
        dir: std::path::PathBuf,
        owner: Option<u32>,
        stdout: &str,
        stderr: &str,
    ) -> (Vec<crate::runtime::program::OutputFile>, Vec<String>) {
        const OUTPUT_NOTES: usize = 20;
        let collected =
            tokio::task::spawn_blocking(move || crate::runtime::program::collect_outputs(&dir, owner)).await;
        let (mut collected, unreadable) = match collected {
            Ok(Ok(c)) => (c, None),
            Ok(Err(e)) => (Default::default(), Some(e.to_string())),
            Err(e) => (Default::default(), Some(e.to_string())),
        };
        // The log is kept even when the dir could not be read.
        crate::runtime::program::add_run_log(&mut collected, stdout, stderr);
        if let Some(e) = unreadable {
            collected.skipped.push(format!("cannot read the output dir: {e}"));
        }
        let mut notes = collected.skipped;
        let mut kept = Vec::new();
        if !collected.files.is_empty() && !crate::runtime::program::is_plain_name(request_id) {
            notes.push(format!("the job id {request_id:?} cannot name stored files"));
            return (kept, notes);
        }
        for mut file in collected.files {
            let key = output_key(request_id, &file.path);
            // Moved, not copied: a run's files (up to 64 MiB) are held once,
            // and each is freed once stored, so concurrent programs cannot
            // make the worker hold twice their output.
            let data = bytes::Bytes::from(std::mem::take(&mut file.data));
            match self.cache.store().put(&key, data).await {
                Ok(()) => kept.push(file),
                Err(e) => {
                    tracing::warn!(key, error = %e, "could not store an output file");
                    notes.push(format!("{}: cannot be stored ({e})", file.path));
                }
            }
        }
        if notes.len() > OUTPUT_NOTES {
            let more = notes.len() - OUTPUT_NOTES;
            notes.truncate(OUTPUT_NOTES);
            notes.push(format!("... and {more} more"));
        }
        (kept, notes)
    }

    /// Ends the job: published to callers and kept durably, retrying
    /// briefly. False if it could not be kept: the job is then left
    /// unacknowledged and will be delivered again.
    async fn finish(&self, delivery: &Delivery, result: &JobResult) -> bool {
        let stamped;
        let result = if result.worker_id.is_none() {
            stamped = JobResult {
                worker_id: Some(self.id.clone()),
                ..result.clone()
            };
            &stamped
        } else {
            result
        };
        for attempt in 0..3u32 {
            match self.jobs.finish(delivery.job.submitted_at, result).await {
                Ok(stored) => {
                    self.metrics.observe_result(
                        &delivery.job.function_id,
                        stored.status.as_str(),
                        result.duration_ms,
                        result.handler_duration_ms,
                    );
                    tracing::info!(
                        status = stored.status.as_str(),
                        duration_ms = result.duration_ms,
                        cold_start = result.cold_start,
                        "job finished"
                    );
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "could not keep the result");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                }
            }
        }
        false
    }

    async fn ack(&self, delivery: &Delivery) {
        if let Err(e) = self.queue.ack(&delivery.receipt).await {
            tracing::warn!(error = %e, "could not ack job; it may be delivered again (its result is kept)");
        }
    }
}

/// The instance spec of a function version. Jobs and pre-warm targets both
/// come through here, so a pre-warmed instance has the pool key its jobs look for.
fn instance_spec(
    function_id: &str,
    runtime: Runtime,
    handler: &str,
    memory_mb: u32,
    env_vars: &std::collections::BTreeMap<String, String>,
    network: bool,
    (code_dir, version): (std::path::PathBuf, String),
) -> Result<InstanceSpec, String> {
    Ok(InstanceSpec {
        function_id: function_id.to_string(),
        function_name: function_id.to_string(),
        runtime,
        code_dir,
        handler: Handler::parse(handler)?,
        memory_mb,
        env_vars: env_vars.clone(),
        version,
        network,
    })
}

/// Where a program's output file is kept in the artifact store (the
/// original's S3 layout).
pub fn output_key(request_id: &str, path: &str) -> String {
    format!("outputs/{request_id}/{path}")
}

/// Most of a return value printed into `stdout` (as much as the bootstrap
/// keeps of a stream).
const PRINTED_VALUE_BYTES: usize = 256 * 1024;

/// Appends the return value to the printed output, on a line of its own,
/// as the original's runner prints it (strings as they are, other values as
/// one line of JSON; no line for no value): its clients show `stdout`.
/// A value larger than `PRINTED_VALUE_BYTES` is cut there (it is whole in
/// `result`), so a large return value is not carried twice in full.
fn print_value(stdout: &mut String, value: &serde_json::Value) {
    let mut line = match value {
        serde_json::Value::Null => return,
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if line.len() > PRINTED_VALUE_BYTES {
        let mut cut = PRINTED_VALUE_BYTES;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        let dropped = line.len() - cut;
        line.truncate(cut);
        line.push_str(&format!("\n[truncated {dropped} bytes; the whole value is in result]"));
    }
    if !stdout.is_empty() && !stdout.ends_with('\n') {
        stdout.push('\n');
    }
    stdout.push_str(&line);
    stdout.push('\n');
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_return_value_is_printed_after_the_output() {
        let mut out = "hi".to_string();
        print_value(&mut out, &json!({"a": 1}));
        assert_eq!(out, "hi\n{\"a\":1}\n");
        let mut out = String::new();
        print_value(&mut out, &json!("plain text"));
        assert_eq!(out, "plain text\n");
        let mut out = "kept\n".to_string();
        print_value(&mut out, &serde_json::Value::Null);
        assert_eq!(out, "kept\n");
        let mut out = String::new();
        print_value(&mut out, &json!("é".repeat(PRINTED_VALUE_BYTES)));
        assert!(out.len() < PRINTED_VALUE_BYTES + 100, "{}", out.len());
        assert!(out.contains("the whole value is in result"));
    }
}
