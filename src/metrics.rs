//! Prometheus metrics: HTTP RED by route template, invocations by function
//! and status, cold vs warm starts, warm instances, and the process. The
//! original controller's names (`http_request_duration_seconds`,
//! `function_*`, `process_*`) are served beside this platform's `infra_*`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

mod process;

pub struct Metrics {
    registry: Registry,
    /// `{method, route, status_code}`, the original's labels.
    pub http_duration: HistogramVec,
    /// `infra_invocations_total{function,status}`: the same count as
    /// `function_invocations_total`, kept for existing dashboards.
    pub invocations: IntCounterVec,
    /// The original's `function_invocations_total{functionId,status}`.
    pub function_invocations: IntCounterVec,
    /// The original's `function_duration_seconds{functionId,status}`.
    pub function_duration: HistogramVec,
    /// The original's `function_handler_duration_seconds{functionId,status}`.
    pub function_handler_duration: HistogramVec,
    /// Requests refused by a limit, by limit (`runs`, `auth_failures`).
    pub rate_limited: IntCounterVec,
    /// Limiter calls that failed (the request was let through).
    pub rate_limiter_errors: IntCounter,
    pub starts: IntCounterVec,
    pub warm_instances: IntGauge,
    pub busy_instances: IntGauge,
    pub init_duration: HistogramVec,
    /// Time spent in each stage of a `/run` admission (`lookup`, `record`,
    /// `queue`), to find where the tail comes from.
    pub admission_stage: HistogramVec,
    pub stem_cells: IntGauge,
    pub jobs_admitted: IntCounter,
    pub ai_calls: IntCounterVec,
    pub ai_tokens: IntCounterVec,
    pub pool_capacity_mb: IntGauge,
    pub pool_reserved_mb: IntGauge,
    pub pool_peak_mb: IntGauge,
    pub pool_idle: IntGaugeVec,
    pub pool_stem_cells: IntGaugeVec,
    pub pool_wanted_slots: IntGaugeVec,
    pub pool_wanted_mb: IntGaugeVec,
    pub reconciles: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub retries: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub dead_letter_depth: IntGauge,
    pub idempotent_replays: IntCounter,
    pub deferred: IntCounterVec,
    pub function_jobs: IntGaugeVec,
}

impl Metrics {
    /// Records how long an admission stage took since `started`.
    pub fn stage(&self, stage: &str, started: std::time::Instant) {
        self.admission_stage
            .with_label_values(&[stage])
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by method, route template and status",
            )
            // The original's buckets (0.1, 0.5, 1, 2, 5) and finer ones: its
            // queries on `le` keep working.
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["method", "route", "status_code"],
        )?;
        let function_invocations = IntCounterVec::new(
            Opts::new(
                "function_invocations_total",
                "Finished invocations by function and result status",
            ),
            &["functionId", "status"],
        )?;
        let function_duration = HistogramVec::new(
            HistogramOpts::new(
                "function_duration_seconds",
                "Invocation time as the worker measured it (durationMs), by function and result status",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
            &["functionId", "status"],
        )?;
        let function_handler_duration = HistogramVec::new(
            HistogramOpts::new(
                "function_handler_duration_seconds",
                "Time inside the function's handler (handlerDurationMs), by function and result status",
            )
            .buckets(vec![0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            &["functionId", "status"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "infra_rate_limited_total",
                "Requests answered 429 by a limit: runs (uploads and runs per IP) or auth_failures (failed keys per IP)",
            ),
            &["limit"],
        )?;
        let rate_limiter_errors = IntCounter::new(
            "infra_rate_limiter_errors_total",
            "Rate-limit checks that failed (limiter store unavailable); the request was let through",
        )?;
        registry.register(Box::new(function_invocations.clone()))?;
        registry.register(Box::new(function_duration.clone()))?;
        registry.register(Box::new(function_handler_duration.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(rate_limiter_errors.clone()))?;
        registry.register(Box::new(process::ProcessCollector::new()?))?;
        let invocations = IntCounterVec::new(
            Opts::new("infra_invocations_total", "Finished invocations by function and status"),
            &["function", "status"],
        )?;
        let starts = IntCounterVec::new(
            Opts::new(
                "infra_instance_starts_total",
                "Invocations by start kind: warm (reused instance) or cold",
            ),
            &["kind"],
        )?;
        let warm_instances = IntGauge::new("infra_warm_instances", "Idle warm instances ready to serve")?;
        let busy_instances = IntGauge::new("infra_busy_instances", "Instances running an invocation")?;
        let init_duration = HistogramVec::new(
            HistogramOpts::new(
                "infra_instance_init_seconds",
                "Cold start time by kind: stem (code given to a stem cell) or fresh (new process)",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["kind"],
        )?;
        let admission_stage = HistogramVec::new(
            HistogramOpts::new(
                "infra_admission_stage_seconds",
                "Time of each stage of a /run admission: lookup (function record), record (PENDING state and job count), queue (send)",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["stage"],
        )?;
        let stem_cells = IntGauge::new("infra_stem_cells", "Started stem cells waiting for a function")?;
        let jobs_admitted = IntCounter::new("infra_jobs_admitted_total", "Jobs accepted onto the queue")?;
        let ai_calls = IntCounterVec::new(
            Opts::new(
                "infra_ai_calls_total",
                "AI node calls made by functions, by model and outcome",
            ),
            &["model", "status"],
        )?;
        let ai_tokens = IntCounterVec::new(
            Opts::new(
                "infra_ai_tokens_total",
                "Tokens reported by the AI node (prompt_eval_count, eval_count)",
            ),
            &["model", "kind"],
        )?;
        let pool_capacity_mb = IntGauge::new(
            "infra_pool_memory_capacity_mb",
            "Memory the warm pool may reserve on this worker (WORKER_MEMORY_MB)",
        )?;
        let pool_reserved_mb = IntGauge::new(
            "infra_pool_memory_reserved_mb",
            "Memory reserved by live instances (their memoryMb) and stem cells",
        )?;
        let pool_peak_mb = IntGauge::new(
            "infra_pool_memory_peak_mb",
            "Highest memory reservation of the warm pool since start",
        )?;
        let pool_idle = IntGaugeVec::new(
            Opts::new(
                "infra_pool_idle_instances",
                "Idle warm instances by runtime and function",
            ),
            &["runtime", "function"],
        )?;
        let pool_wanted_slots = IntGaugeVec::new(
            Opts::new(
                "infra_warm_pool_wanted_instances",
                "Warm-pool spec: instances wanted per worker by runtime (minWarm sums plus stem cells)",
            ),
            &["runtime"],
        )?;
        let pool_wanted_mb = IntGaugeVec::new(
            Opts::new(
                "infra_warm_pool_wanted_memory_mb",
                "Warm-pool spec: memory wanted per worker by runtime (minWarm x memoryMb)",
            ),
            &["runtime"],
        )?;
        let reconciles = IntCounterVec::new(
            Opts::new(
                "infra_reconciles_total",
                "Function reconciles by outcome (reconciled, a failure reason, deleted, error)",
            ),
            &["outcome"],
        )?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("infra_reconcile_duration_seconds", "Time of one Function reconcile")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["operation"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "infra_retries_total",
                "Asynchronous runs that failed and were queued again, by function",
            ),
            &["function"],
        )?;
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "infra_dead_letters_total",
                "Jobs given up (out of retries, too old or lost) and kept as dead letters, by function",
            ),
            &["function"],
        )?;
        let dead_letter_depth = IntGauge::new(
            "infra_dead_letters",
            "Dead letters waiting for a redrive (counted by the API every 30 s, up to 10000)",
        )?;
        let idempotent_replays = IntCounter::new(
            "infra_idempotent_replays_total",
            "/run requests answered with the job of an earlier request under the same Idempotency-Key",
        )?;
        let deferred = IntCounterVec::new(
            Opts::new(
                "infra_jobs_deferred_total",
                "Jobs put back on the queue because their function's maxConcurrency was reached",
            ),
            &["function"],
        )?;
        let function_jobs = IntGaugeVec::new(
            Opts::new(
                "infra_function_jobs",
                "Jobs per function (API, every 5 s): unfinished (accepted, not finished: queued, running or between retries) and running (holding a run slot; counted for functions with a maxConcurrency)",
            ),
            &["function", "state"],
        )?;
        registry.register(Box::new(deferred.clone()))?;
        registry.register(Box::new(function_jobs.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(dead_letter_depth.clone()))?;
        registry.register(Box::new(idempotent_replays.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(pool_capacity_mb.clone()))?;
        registry.register(Box::new(pool_reserved_mb.clone()))?;
        registry.register(Box::new(pool_peak_mb.clone()))?;
        let pool_stem_cells = IntGaugeVec::new(
            Opts::new("infra_pool_stem_cells", "Ready stem cells by runtime"),
            &["runtime"],
        )?;
        registry.register(Box::new(pool_idle.clone()))?;
        registry.register(Box::new(pool_stem_cells.clone()))?;
        registry.register(Box::new(pool_wanted_slots.clone()))?;
        registry.register(Box::new(pool_wanted_mb.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(invocations.clone()))?;
        registry.register(Box::new(starts.clone()))?;
        registry.register(Box::new(warm_instances.clone()))?;
        registry.register(Box::new(busy_instances.clone()))?;
        registry.register(Box::new(init_duration.clone()))?;
        registry.register(Box::new(admission_stage.clone()))?;
        registry.register(Box::new(stem_cells.clone()))?;
        registry.register(Box::new(jobs_admitted.clone()))?;
        registry.register(Box::new(ai_calls.clone()))?;
        registry.register(Box::new(ai_tokens.clone()))?;
        Ok(Metrics {
            registry,
            http_duration,
            invocations,
            function_invocations,
            function_duration,
            function_handler_duration,
            rate_limited,
            rate_limiter_errors,
            starts,
            warm_instances,
            busy_instances,
            init_duration,
            admission_stage,
            stem_cells,
            jobs_admitted,
            ai_calls,
            ai_tokens,
            pool_capacity_mb,
            pool_reserved_mb,
            pool_peak_mb,
            pool_idle,
            pool_stem_cells,
            pool_wanted_slots,
            pool_wanted_mb,
            reconciles,
            reconcile_duration,
            retries,
            dead_letters,
            dead_letter_depth,
            idempotent_replays,
            deferred,
            function_jobs,
        })
    }

    /// A finished invocation, under this platform's and the original's
    /// names. `status` is the result's status string; `handler_ms` is
    /// observed only when it is a finite number >= 0 (as the original).
    pub fn observe_result(&self, function_id: &str, status: &str, duration_ms: f64, handler_ms: Option<f64>) {
        self.invocations.with_label_values(&[function_id, status]).inc();
        self.function_invocations
            .with_label_values(&[function_id, status])
            .inc();
        if duration_ms.is_finite() && duration_ms >= 0.0 {
            self.function_duration
                .with_label_values(&[function_id, status])
                .observe(duration_ms / 1000.0);
        }
        if let Some(ms) = handler_ms.filter(|ms| ms.is_finite() && *ms >= 0.0) {
            self.function_handler_duration
                .with_label_values(&[function_id, status])
                .observe(ms / 1000.0);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
