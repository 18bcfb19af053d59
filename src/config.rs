//! Command line and environment configuration. Values are read as text and
//! validated together, so a bad configuration lists every problem at once.
//! Argument groups are shared by the roles that need them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::aws::AwsSettings;

#[derive(Debug, Parser)]
#[command(
    name = "infra",
    version,
    about = "Infra Controller: a Function-as-a-Service control plane"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole platform in one process: API, queue, worker and warm
    /// pools, with embedded storage in a local data dir. Needs no AWS, Redis
    /// or Kubernetes.
    Up(Box<UpArgs>),
    /// Run the HTTP API against S3, DynamoDB, SQS and Redis (no worker).
    Api(Box<ApiArgs>),
    /// Run a worker: consume SQS, run functions in warm pools, publish results to Redis.
    Worker(Box<WorkerArgs>),
    /// Run the Kubernetes operator: reconcile `Function` resources into S3
    /// artifacts, DynamoDB records and the warm-pool spec.
    Operator(Box<OperatorArgs>),
    /// Print the `Function` CustomResourceDefinition (YAML), generated from the Rust types.
    Crd,
    /// Client: deploy, list, inspect, invoke, follow and delete functions
    /// through the HTTP API (INFRA_URL, INFRA_API_KEY or `infra login`).
    #[command(name = "fn", alias = "function")]
    Function(crate::cli::FnArgs),
    /// Client: follow a job of an asynchronous run.
    Jobs(crate::cli::JobsArgs),
    /// Client: check an API URL and key and keep them in the profile
    /// (~/.config/infra/profile.yaml, mode 0600) for the client verbs.
    Login(crate::cli::LoginArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Args)]
pub struct OperatorArgs {
    #[command(flatten)]
    pub aws: AwsArgs,
    /// S3 bucket for function artifacts.
    #[arg(long, env = "BUCKET_NAME")]
    pub bucket_name: Option<String>,
    /// DynamoDB table of function records.
    #[arg(long, env = "TABLE_NAME")]
    pub table_name: Option<String>,
    /// Port of the operator's /health and /metrics.
    #[arg(long, env = "OPERATOR_PORT", default_value = "8081")]
    pub port: String,
    #[arg(long, env = "OPERATOR_HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value = "30")]
    pub shutdown_timeout_seconds: String,
    /// Only the replica holding the `infra-operator` Lease reconciles, so
    /// several replicas can run; `false` for a single replica.
    #[arg(long, env = "LEADER_ELECTION", default_value = "true")]
    pub leader_election: String,
    /// Namespace of the Lease (the operator's own; the chart sets it).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// The API's Redis (`redis://host:port/db`), optional: when set, every
    /// change the operator makes reaches the API's record caches at once;
    /// without it they see it within their fallback expiry (2 s).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// As the API's REDIS_KEY_PREFIX.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "")]
    pub redis_key_prefix: String,
}

/// Validated configuration of `infra operator`.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    pub aws: AwsSettings,
    pub bucket: String,
    pub table: String,
    pub listen: SocketAddr,
    pub shutdown_timeout: Duration,
    /// The Lease's namespace, when leader election is on.
    pub lease_namespace: Option<String>,
    /// Where function changes are announced (Redis URL and key prefix).
    pub redis: Option<(String, String)>,
}

impl OperatorArgs {
    pub fn validate(&self) -> Result<OperatorConfig, ConfigErrors> {
        let mut p = Problems::default();
        let aws = self.aws.check(&mut p);
        let bucket = p.required("BUCKET_NAME", &self.bucket_name);
        let table = p.required("TABLE_NAME", &self.table_name);
        let listen = p.listen("OPERATOR_HOST", &self.host, "OPERATOR_PORT", &self.port);
        let shutdown = p.num("SHUTDOWN_TIMEOUT_SECONDS", &self.shutdown_timeout_seconds, 0, 3600, 30);
        let elect = p.flag("LEADER_ELECTION", &self.leader_election);
        let redis = match self.redis_url.as_deref().map(str::trim) {
            Some(u) if !u.is_empty() => p
                .url("REDIS_URL", &Some(u.to_string()), &["redis", "rediss"])
                .map(|u| (u.to_string(), self.redis_key_prefix.clone())),
            _ => None,
        };
        p.finish(OperatorConfig {
            aws,
            bucket,
            table,
            listen,
            shutdown_timeout: Duration::from_secs(shutdown),
            lease_namespace: elect.then(|| self.lease_namespace.clone()),
            redis,
        })
    }
}

/// The HTTP API's settings.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value = "8080")]
    pub port: String,
    /// API key clients send as `x-api-key` (at least 16 characters).
    #[arg(long, env = "INFRA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Uploads and runs (`POST /upload`, `POST /run`) per client IP in any
    /// 60 s window, counted after authentication; 0 disables the limit.
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value = "100")]
    pub rate_limit_per_minute: String,
    /// Failed authentications per client IP in any 60 s window before that
    /// IP's failures are answered 429 (a brute-force guard; callers with
    /// the right key are not affected); 0 disables the guard.
    #[arg(long, env = "AUTH_FAILURE_LIMIT_PER_MINUTE", default_value = "30")]
    pub auth_failure_limit_per_minute: String,
    /// Origins browsers may call the API from: `*` (any) or a comma list
    /// such as `https://dash.example.com,http://localhost:3000`.
    #[arg(long, env = "CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,
    /// Take the client IP from X-Forwarded-For (only behind a trusted proxy).
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value = "false")]
    pub trust_forwarded_for: String,
    /// Longest a synchronous /run waits before answering 504 with the jobId.
    #[arg(long, env = "SYNC_TIMEOUT_MS", default_value = "300000")]
    pub sync_timeout_ms: String,
}

/// The AI node functions can call.
#[derive(Debug, Clone, Args)]
pub struct AiArgs {
    /// Base URL of the Ollama-compatible AI node.
    #[arg(long, env = "AI_NODE_URL")]
    pub ai_node_url: Option<String>,
    /// Model used when a run names none.
    #[arg(long, env = "DEFAULT_MODEL_ID", default_value = "llama3:8b")]
    pub default_model: String,
    /// Most AI calls one invocation may make.
    #[arg(long, env = "AI_MAX_CALLS_PER_INVOCATION", default_value = "20")]
    pub ai_max_calls: String,
}

/// The worker's warm-pool settings.
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// Jobs run at the same time.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value = "4")]
    pub worker_concurrency: String,
    /// How long an idle warm instance is kept.
    #[arg(long, env = "WARM_KEEP_ALIVE_SECONDS", default_value = "300")]
    pub keep_alive_seconds: String,
    /// Most idle warm instances kept (least recently used go first).
    #[arg(long, env = "MAX_WARM_INSTANCES", default_value = "32")]
    pub max_warm_instances: String,
    /// Python interpreter for function instances.
    #[arg(long, env = "PYTHON_BIN", default_value = "python3")]
    pub python: String,
    /// Node.js binary for function instances (`auto`: `node` on PATH when
    /// installed; Node.js functions fail with a clear error otherwise).
    #[arg(long, env = "NODE_BIN", default_value = "auto")]
    pub node: String,
    /// Memory (MB) the warm pool may give to function instances on this
    /// host, the sum of their memoryMb; `auto` is 80% of physical memory.
    #[arg(long, env = "WORKER_MEMORY_MB", default_value = "auto")]
    pub memory_mb: String,
    /// Stem cells kept started per runtime: generic instances that take a
    /// function's code when it has no warm instance (0 disables).
    #[arg(long, env = "STEM_CELLS", default_value = "2")]
    pub stem_cells: String,
    /// When running as root: first of 1024 unprivileged uids given to
    /// instances, one each.
    #[arg(long, env = "INSTANCE_UID_BASE", default_value = "100000")]
    pub instance_uid_base: String,
    /// Directory of the host-wide locks on instance uids: every worker on
    /// one host must use the same one, so none gives a uid another uses.
    #[arg(long, env = "INSTANCE_UID_LOCK_DIR", default_value = "/run/infra-controller/uids")]
    pub instance_uid_lock_dir: String,
    /// Whom instances run as when the worker is root: `auto` (an
    /// unprivileged uid of their own, always) or `root` (explicitly: root
    /// without capabilities, still with process, memory and disk limits).
    #[arg(long, env = "INSTANCE_USER", default_value = "auto")]
    pub instance_user: String,
    /// Size (MB) of an instance's writable space in the sandbox: its working
    /// dir and `/tmp` together (memory-backed; counts against its memory cgroup).
    #[arg(long, env = "INSTANCE_TMP_MB", default_value = "512")]
    pub instance_tmp_mb: String,
    /// Function isolation: `bwrap` (bubblewrap sandbox, required), `none`,
    /// or `auto` (bwrap when it is installed and works here).
    #[arg(long, env = "SANDBOX", default_value = "auto")]
    pub sandbox: String,
    /// Memory cgroup per instance: `auto` (when this process may create
    /// cgroups: v2 delegated, or v1), `required`, or `off` (rlimits only).
    #[arg(long, env = "MEMORY_CGROUPS", default_value = "auto")]
    pub cgroups: String,
}

/// Where AWS is (region and endpoint overrides).
#[derive(Debug, Clone, Default, Args)]
pub struct AwsArgs {
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// Overrides every AWS endpoint (local emulators).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// Per-service endpoint overrides (win over AWS_ENDPOINT_URL).
    #[arg(long, env = "AWS_ENDPOINT_URL_S3")]
    pub aws_endpoint_url_s3: Option<String>,
    #[arg(long, env = "AWS_ENDPOINT_URL_DYNAMODB")]
    pub aws_endpoint_url_dynamodb: Option<String>,
    #[arg(long, env = "AWS_ENDPOINT_URL_SQS")]
    pub aws_endpoint_url_sqs: Option<String>,
}

impl AwsArgs {
    fn check(&self, p: &mut Problems) -> AwsSettings {
        let region = p.required("AWS_REGION", &self.aws_region);
        let mut endpoint =
            |name: &str, raw: &Option<String>| p.url(name, raw, &["http", "https"]).map(|u| u.to_string());
        AwsSettings {
            region,
            endpoint_url: endpoint("AWS_ENDPOINT_URL", &self.aws_endpoint_url),
            s3_endpoint_url: endpoint("AWS_ENDPOINT_URL_S3", &self.aws_endpoint_url_s3),
            dynamodb_endpoint_url: endpoint("AWS_ENDPOINT_URL_DYNAMODB", &self.aws_endpoint_url_dynamodb),
            sqs_endpoint_url: endpoint("AWS_ENDPOINT_URL_SQS", &self.aws_endpoint_url_sqs),
            static_credentials: None,
        }
    }
}

/// Where the production backends are.
#[derive(Debug, Clone, Args)]
pub struct CloudArgs {
    #[command(flatten)]
    pub aws: AwsArgs,
    /// S3 bucket for function artifacts.
    #[arg(long, env = "BUCKET_NAME")]
    pub bucket_name: Option<String>,
    /// SQS queue URL for jobs (a `.fifo` URL selects FIFO mode).
    #[arg(long, env = "SQS_URL")]
    pub sqs_url: Option<String>,
    /// Redis URL (`redis://host:port/db`); or REDIS_HOST and REDIS_PORT.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    #[arg(long, env = "REDIS_PORT", default_value = "6379")]
    pub redis_port: String,
    /// Prefix for every Redis key and channel (none, as the original platform).
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "")]
    pub redis_key_prefix: String,
    /// How long job records stay readable in /status.
    #[arg(long, env = "JOB_TTL_SECONDS", default_value = "86400")]
    pub job_ttl_seconds: String,
    /// DynamoDB table for invocation logs (functionId + requestId keys, TTL on
    /// expiresAt); logs are off when unset.
    #[arg(long, env = "LOGS_TABLE_NAME")]
    pub logs_table_name: Option<String>,
    /// How long invocation logs are kept.
    #[arg(long, env = "LOGS_RETENTION_DAYS", default_value = "7")]
    pub logs_retention_days: String,
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub ai: AiArgs,
    #[command(flatten)]
    pub pool: PoolArgs,
    /// Where functions, artifacts, jobs and the queue are kept.
    #[arg(long, env = "INFRA_DATA_DIR", default_value = ".infra-data")]
    pub data_dir: PathBuf,
    /// A folder of Function resources (YAML, as for `kubectl apply`) kept
    /// deployed: new and changed files are applied, deleted ones removed.
    #[arg(long = "functions", env = "FUNCTIONS_DIR")]
    pub functions_dir: Option<PathBuf>,
    /// Longest a shutdown waits for in-flight requests and jobs.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value = "30")]
    pub shutdown_timeout_seconds: String,
    /// Queue visibility timeout; running jobs are extended before it lapses.
    #[arg(long, env = "VISIBILITY_TIMEOUT_SECONDS", default_value = "30")]
    pub visibility_timeout_seconds: String,
}

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub ai: AiArgs,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// DynamoDB table of function records.
    #[arg(long, env = "TABLE_NAME")]
    pub table_name: Option<String>,
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value = "30")]
    pub shutdown_timeout_seconds: String,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub pool: PoolArgs,
    #[command(flatten)]
    pub ai: AiArgs,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// DynamoDB table of function records: the worker keeps each
    /// function's minWarm instances started (unset: no pre-warming).
    #[arg(long, env = "TABLE_NAME")]
    pub table_name: Option<String>,
    /// Local cache of function code and instance working dirs.
    #[arg(long, env = "WORKER_DATA_DIR", default_value = ".infra-worker")]
    pub data_dir: PathBuf,
    /// Port of the worker's own /health and /metrics (0: any free port).
    #[arg(long, env = "WORKER_PORT", default_value = "9090")]
    pub port: String,
    #[arg(long, env = "WORKER_HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value = "30")]
    pub shutdown_timeout_seconds: String,
    /// SQS visibility timeout; running jobs are extended before it lapses.
    #[arg(long, env = "VISIBILITY_TIMEOUT_SECONDS", default_value = "30")]
    pub visibility_timeout_seconds: String,
}

#[derive(Debug, Clone)]
pub struct AiConfig {
    pub node_url: Option<reqwest::Url>,
    pub default_model: String,
    pub max_calls: u32,
}

/// Which browser origins get `Access-Control-Allow-Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: safe because the only credential is the explicit `x-api-key`
    /// header, which a page must be given to send; no cookie or other
    /// ambient credential is accepted (and Allow-Credentials is never sent).
    Any,
    /// Exact origins (`scheme://host[:port]`, lower-case), echoed back.
    List(Vec<String>),
}

impl CorsOrigins {
    /// Parses `*` or a comma list of origins; every bad entry is named.
    pub fn parse(raw: &str) -> Result<CorsOrigins, Vec<String>> {
        let raw = raw.trim();
        if raw == "*" || raw.is_empty() {
            return Ok(CorsOrigins::Any);
        }
        let mut origins = Vec::new();
        let mut bad = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match reqwest::Url::parse(entry) {
                Ok(u)
                    if matches!(u.scheme(), "http" | "https")
                        && u.has_host()
                        && u.username().is_empty()
                        && u.password().is_none()
                        && u.path() == "/"
                        && u.query().is_none()
                        && u.fragment().is_none() =>
                {
                    origins.push(u.origin().ascii_serialization());
                }
                _ => bad.push(format!(
                    "CORS_ORIGINS entry {entry:?} must be * or an origin such as https://dash.example.com (scheme, host, optional port; no path)"
                )),
            }
        }
        if bad.is_empty() {
            Ok(CorsOrigins::List(origins))
        } else {
            Err(bad)
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub api_key: Option<String>,
    pub rate_limit_per_minute: u32,
    pub auth_failure_limit_per_minute: u32,
    pub cors_origins: CorsOrigins,
    pub trust_forwarded_for: bool,
    pub sync_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub worker_concurrency: usize,
    pub keep_alive: Duration,
    pub max_warm_instances: usize,
    /// Resolved interpreter path.
    pub python: PathBuf,
    /// Resolved Node.js binary, when there is one.
    pub node: Option<PathBuf>,
    /// The pool's memory capacity in MB.
    pub memory_mb: u64,
    /// The bubblewrap binary, when instances are sandboxed.
    pub bwrap: Option<PathBuf>,
    pub stem_cells: usize,
    /// First uid given to instances when the worker is root.
    pub instance_uid_base: u32,
    /// Where workers on this host lock the uids they use.
    pub instance_uid_lock_dir: PathBuf,
    /// `INSTANCE_USER=root`: root instances were asked for explicitly.
    pub instances_as_root: bool,
    /// Size of an instance's `/tmp` (working dir) in the sandbox, in bytes.
    pub tmp_bytes: u64,
    /// Memory and/or process-count cgroups per instance.
    pub cgroups: Option<crate::runtime::cgroup::CgroupRoot>,
}

impl PoolConfig {
    /// Refuses set-ups in which instances would run as root without being
    /// asked to, or without a process limit.
    fn checked(self, p: &mut Problems) -> PoolConfig {
        use crate::runtime::host;
        if !host::is_root() {
            return self;
        }
        if self.instances_as_root {
            if !self.cgroups.as_ref().is_some_and(|c| c.has_pids()) {
                p.0.push(
                    "INSTANCE_USER=root needs a pids cgroup this process may create (RLIMIT_NPROC does not hold for root)"
                        .into(),
                );
            }
            return self;
        }
        match &self.bwrap {
            // Privileged bubblewrap reaches any interpreter; setpriv leaves root.
            Some(_) if host::layout().setpriv.is_none() => p.0.push(
                "instances would run as root: setpriv (util-linux) is missing; install it or set INSTANCE_USER=root explicitly"
                    .into(),
            ),
            Some(_) => {}
            None => {
                let mut unreachable: Vec<&PathBuf> = vec![&self.python];
                unreachable.extend(self.node.iter());
                unreachable.retain(|path| !host::reachable_by_others(path));
                if let Some(path) = unreachable.first() {
                    p.0.push(format!(
                        "instances would run as root: without the sandbox their own users cannot reach {} (a parent lacks o+x); use SANDBOX=bwrap, an interpreter other users can run, or set INSTANCE_USER=root explicitly",
                        path.display()
                    ));
                }
            }
        }
        self
    }
}

#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub aws: AwsSettings,
    pub bucket: String,
    pub sqs_url: String,
    pub redis_url: String,
    pub redis_key_prefix: String,
    pub job_ttl: Duration,
    pub logs_table: Option<String>,
    pub logs_retention: Duration,
}

/// Validated configuration of `infra up`.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub http: HttpConfig,
    pub ai: AiConfig,
    pub pool: PoolConfig,
    pub data_dir: PathBuf,
    pub functions_dir: Option<PathBuf>,
    pub shutdown_timeout: Duration,
    pub visibility_timeout: Duration,
}

/// Validated configuration of `infra api`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub http: HttpConfig,
    pub ai: AiConfig,
    pub cloud: CloudConfig,
    pub table: String,
    pub shutdown_timeout: Duration,
}

/// Validated configuration of `infra worker`.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub pool: PoolConfig,
    pub ai: AiConfig,
    pub cloud: CloudConfig,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub shutdown_timeout: Duration,
    pub visibility_timeout: Duration,
    /// Function records, for the warm-pool spec (pre-warming off without).
    pub table: Option<String>,
}

/// Every configuration problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn num<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        name: &str,
        raw: &str,
        min: T,
        max: T,
        fallback: T,
    ) -> T {
        match raw.trim().parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            _ => {
                self.0
                    .push(format!("{name} must be an integer from {min} to {max}, got {raw:?}"));
                fallback
            }
        }
    }

    fn flag(&mut self, name: &str, raw: &str) -> bool {
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" | "" => false,
            _ => {
                self.0.push(format!("{name} must be true or false, got {raw:?}"));
                false
            }
        }
    }

    fn required(&mut self, name: &str, raw: &Option<String>) -> String {
        match raw.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(v) => v.to_string(),
            None => {
                self.0.push(format!("{name} is required"));
                String::new()
            }
        }
    }

    fn listen(&mut self, host_name: &str, host: &str, port_name: &str, port: &str) -> SocketAddr {
        let port: u16 = self.num(port_name, port, 0, u16::MAX, 0);
        let ip = match host.trim() {
            "localhost" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            h => h.parse::<IpAddr>().ok(),
        };
        if ip.is_none() {
            self.0.push(format!(
                "{host_name} must be an IP address (or localhost), got {host:?}"
            ));
        }
        SocketAddr::new(ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), port)
    }

    fn url(&mut self, name: &str, raw: &Option<String>, schemes: &[&str]) -> Option<reqwest::Url> {
        let raw = raw.as_deref().map(str::trim).filter(|s| !s.is_empty())?;
        match reqwest::Url::parse(raw) {
            Ok(u) if schemes.contains(&u.scheme()) && u.has_host() => Some(u),
            _ => {
                // The value may hold a password: name the variable, not the value.
                self.0.push(format!("{name} must be a {} URL", schemes.join(" or ")));
                None
            }
        }
    }

    fn dir(&mut self, name: &str, dir: &std::path::Path) -> PathBuf {
        // Absolute, because instances run in their own working directories.
        match std::fs::create_dir_all(dir).and_then(|_| std::fs::canonicalize(dir)) {
            Ok(d) => d,
            Err(e) => {
                self.0.push(format!("{name} {} cannot be created: {e}", dir.display()));
                dir.to_path_buf()
            }
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.0))
        }
    }
}

impl HttpArgs {
    fn check(&self, p: &mut Problems, key_required: bool) -> HttpConfig {
        let listen = p.listen("HOST", &self.host, "PORT", &self.port);
        let api_key = self.api_key.clone().filter(|k| !k.is_empty());
        match &api_key {
            Some(k) if k.len() < 16 || k.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                p.0.push("INFRA_API_KEY must be at least 16 characters without spaces".into())
            }
            None if key_required => p.0.push("INFRA_API_KEY is required".into()),
            _ => {}
        }
        HttpConfig {
            listen,
            api_key,
            rate_limit_per_minute: p.num(
                "RATE_LIMIT_PER_MINUTE",
                &self.rate_limit_per_minute,
                0,
                1_000_000_000,
                100,
            ),
            auth_failure_limit_per_minute: p.num(
                "AUTH_FAILURE_LIMIT_PER_MINUTE",
                &self.auth_failure_limit_per_minute,
                0,
                1_000_000,
                30,
            ),
            cors_origins: CorsOrigins::parse(&self.cors_origins).unwrap_or_else(|bad| {
                p.0.extend(bad);
                CorsOrigins::Any
            }),
            trust_forwarded_for: p.flag("TRUST_FORWARDED_FOR", &self.trust_forwarded_for),
            sync_timeout: Duration::from_millis(p.num(
                "SYNC_TIMEOUT_MS",
                &self.sync_timeout_ms,
                100,
                3_600_000,
                300_000,
            )),
        }
    }

    pub fn local() -> HttpArgs {
        HttpArgs {
            host: "127.0.0.1".into(),
            port: "0".into(),
            api_key: None,
            rate_limit_per_minute: "100".into(),
            auth_failure_limit_per_minute: "30".into(),
            cors_origins: "*".into(),
            trust_forwarded_for: "false".into(),
            sync_timeout_ms: "300000".into(),
        }
    }
}

impl AiArgs {
    fn check(&self, p: &mut Problems) -> AiConfig {
        let node_url = p
            .url("AI_NODE_URL", &self.ai_node_url, &["http", "https"])
            .filter(|u| {
                // The relay's HTTP client has no TLS: say so now, not at the first call.
                let plain = u.scheme() == "http";
                if !plain {
                    p.0.push(
                        "AI_NODE_URL must be an http URL: the relay does not speak HTTPS to the AI node (keep the node on a private network, or put a local TLS-terminating proxy in front of it)"
                            .into(),
                    );
                }
                plain
            })
            .map(|mut u| {
                // Joining "api/tags" needs a trailing slash on the base.
                if !u.path().ends_with('/') {
                    let path = format!("{}/", u.path());
                    u.set_path(&path);
                }
                u
            });
        if self.default_model.trim().is_empty() {
            p.0.push("DEFAULT_MODEL_ID must not be empty".into());
        }
        AiConfig {
            node_url,
            default_model: self.default_model.trim().to_string(),
            max_calls: p.num("AI_MAX_CALLS_PER_INVOCATION", &self.ai_max_calls, 0, 10_000, 20),
        }
    }

    pub fn local() -> AiArgs {
        AiArgs {
            ai_node_url: None,
            default_model: "llama3:8b".into(),
            ai_max_calls: "20".into(),
        }
    }
}

impl PoolArgs {
    fn check(&self, p: &mut Problems) -> PoolConfig {
        let python = match resolve_python(&self.python) {
            Ok(path) => path,
            Err(e) => {
                p.0.push(format!("PYTHON_BIN: {e}"));
                PathBuf::new()
            }
        };
        PoolConfig {
            worker_concurrency: p.num("WORKER_CONCURRENCY", &self.worker_concurrency, 1, 1024, 1),
            keep_alive: Duration::from_secs(p.num("WARM_KEEP_ALIVE_SECONDS", &self.keep_alive_seconds, 1, 86_400, 300)),
            max_warm_instances: p.num("MAX_WARM_INSTANCES", &self.max_warm_instances, 0, 10_000, 32),
            bwrap: match self.sandbox.trim() {
                "none" => None,
                "auto" => crate::runtime::host::find_bwrap().ok(),
                "bwrap" => crate::runtime::host::find_bwrap()
                    .map_err(|e| p.0.push(format!("SANDBOX=bwrap: {e}")))
                    .ok(),
                other => {
                    p.0.push(format!("SANDBOX must be auto, bwrap or none, got {other:?}"));
                    None
                }
            },
            python,
            node: match self.node.trim() {
                "auto" => resolve_node("node").ok(),
                "" | "none" => None,
                bin => resolve_node(bin).map_err(|e| p.0.push(format!("NODE_BIN: {e}"))).ok(),
            },
            memory_mb: match self.memory_mb.trim() {
                "auto" => host_memory_mb().map(|m| m * 4 / 5).unwrap_or(4096),
                raw => p.num("WORKER_MEMORY_MB", raw, 128, 16 * 1024 * 1024, 4096),
            },
            cgroups: match self.cgroups.trim() {
                // Process-count cgroups are taken wherever offered.
                "off" => crate::runtime::cgroup::CgroupRoot::detect(false).ok(),
                "auto" => crate::runtime::cgroup::CgroupRoot::detect(true)
                    .or_else(|why| {
                        tracing::debug!(why, "no memory cgroups");
                        crate::runtime::cgroup::CgroupRoot::detect(false)
                    })
                    .ok(),
                "required" => crate::runtime::cgroup::CgroupRoot::detect(true)
                    .map_err(|e| p.0.push(format!("MEMORY_CGROUPS=required: {e}")))
                    .ok(),
                other => {
                    p.0.push(format!("MEMORY_CGROUPS must be auto, required or off, got {other:?}"));
                    None
                }
            },
            stem_cells: p.num("STEM_CELLS", &self.stem_cells, 0, 64, 2),
            instance_uid_base: p.num(
                "INSTANCE_UID_BASE",
                &self.instance_uid_base,
                1000,
                4_000_000_000,
                100_000,
            ),
            instance_uid_lock_dir: {
                let dir = PathBuf::from(self.instance_uid_lock_dir.trim());
                if !dir.is_absolute() {
                    p.0.push(format!(
                        "INSTANCE_UID_LOCK_DIR must be an absolute path, got {:?}",
                        self.instance_uid_lock_dir
                    ));
                }
                dir
            },
            instances_as_root: match self.instance_user.trim() {
                "auto" => false,
                "root" => true,
                other => {
                    p.0.push(format!("INSTANCE_USER must be auto or root, got {other:?}"));
                    false
                }
            },
            tmp_bytes: p.num("INSTANCE_TMP_MB", &self.instance_tmp_mb, 16, 10_240, 512u64) * 1024 * 1024,
        }
        .checked(p)
    }

    pub fn local() -> PoolArgs {
        PoolArgs {
            worker_concurrency: "4".into(),
            keep_alive_seconds: "300".into(),
            max_warm_instances: "32".into(),
            python: "python3".into(),
            node: "auto".into(),
            memory_mb: "auto".into(),
            sandbox: "auto".into(),
            cgroups: "auto".into(),
            stem_cells: "2".into(),
            instance_uid_base: "100000".into(),
            instance_uid_lock_dir: "/run/infra-controller/uids".into(),
            instance_user: "auto".into(),
            instance_tmp_mb: "512".into(),
        }
    }
}

impl CloudArgs {
    fn check(&self, p: &mut Problems) -> CloudConfig {
        let aws = self.aws.check(p);
        let bucket = p.required("BUCKET_NAME", &self.bucket_name);
        let sqs_url = p
            .url("SQS_URL", &self.sqs_url, &["http", "https"])
            .map(|u| u.to_string());
        if self.sqs_url.as_deref().is_none_or(|s| s.trim().is_empty()) {
            p.0.push("SQS_URL is required".into());
        }
        let redis_port: u16 = p.num("REDIS_PORT", &self.redis_port, 1, u16::MAX, 6379);
        let redis_url = match (
            &self.redis_url,
            self.redis_host.as_deref().map(str::trim).filter(|h| !h.is_empty()),
        ) {
            (Some(u), _) if !u.trim().is_empty() => p
                .url("REDIS_URL", &Some(u.clone()), &["redis", "rediss"])
                .map(|u| u.to_string())
                .unwrap_or_default(),
            (_, Some(host)) => format!("redis://{host}:{redis_port}"),
            _ => {
                p.0.push("REDIS_URL or REDIS_HOST is required".into());
                String::new()
            }
        };
        let job_ttl = p.num("JOB_TTL_SECONDS", &self.job_ttl_seconds, 60, 30 * 86_400, 86_400);
        let logs_days: u64 = p.num("LOGS_RETENTION_DAYS", &self.logs_retention_days, 1, 3650, 7);
        CloudConfig {
            aws,
            bucket,
            sqs_url: sqs_url.unwrap_or_default(),
            redis_url,
            redis_key_prefix: self.redis_key_prefix.clone(),
            job_ttl: Duration::from_secs(job_ttl),
            logs_table: self.logs_table_name.clone().filter(|t| !t.trim().is_empty()),
            logs_retention: Duration::from_secs(logs_days * 86_400),
        }
    }
}

impl UpArgs {
    /// Defaults for embedding and tests: loopback, a free port, the given dir.
    pub fn local(data_dir: PathBuf) -> UpArgs {
        UpArgs {
            http: HttpArgs::local(),
            ai: AiArgs::local(),
            pool: PoolArgs::local(),
            data_dir,
            functions_dir: None,
            shutdown_timeout_seconds: "30".into(),
            visibility_timeout_seconds: "30".into(),
        }
    }

    pub fn validate(&self) -> Result<UpConfig, ConfigErrors> {
        let mut p = Problems::default();
        let http = self.http.check(&mut p, false);
        let ai = self.ai.check(&mut p);
        let pool = self.pool.check(&mut p);
        let shutdown = p.num("SHUTDOWN_TIMEOUT_SECONDS", &self.shutdown_timeout_seconds, 0, 3600, 30);
        let visibility = p.num(
            "VISIBILITY_TIMEOUT_SECONDS",
            &self.visibility_timeout_seconds,
            2,
            43_200,
            30,
        );
        let data_dir = p.dir("INFRA_DATA_DIR", &self.data_dir);
        if let Some(dir) = &self.functions_dir {
            if !dir.is_dir() {
                p.0.push(format!("FUNCTIONS_DIR: {} is not a directory", dir.display()));
            }
        }
        p.finish(UpConfig {
            http,
            ai,
            pool,
            data_dir,
            functions_dir: self.functions_dir.clone(),
            shutdown_timeout: Duration::from_secs(shutdown),
            visibility_timeout: Duration::from_secs(visibility),
        })
    }
}

impl ApiArgs {
    pub fn validate(&self) -> Result<ApiConfig, ConfigErrors> {
        let mut p = Problems::default();
        let http = self.http.check(&mut p, true);
        let ai = self.ai.check(&mut p);
        let cloud = self.cloud.check(&mut p);
        let table = p.required("TABLE_NAME", &self.table_name);
        let shutdown = p.num("SHUTDOWN_TIMEOUT_SECONDS", &self.shutdown_timeout_seconds, 0, 3600, 30);
        p.finish(ApiConfig {
            http,
            ai,
            cloud,
            table,
            shutdown_timeout: Duration::from_secs(shutdown),
        })
    }
}

impl WorkerArgs {
    pub fn validate(&self) -> Result<WorkerConfig, ConfigErrors> {
        let mut p = Problems::default();
        let pool = self.pool.check(&mut p);
        let ai = self.ai.check(&mut p);
        let cloud = self.cloud.check(&mut p);
        let listen = p.listen("WORKER_HOST", &self.host, "WORKER_PORT", &self.port);
        let shutdown = p.num("SHUTDOWN_TIMEOUT_SECONDS", &self.shutdown_timeout_seconds, 0, 3600, 30);
        let visibility = p.num(
            "VISIBILITY_TIMEOUT_SECONDS",
            &self.visibility_timeout_seconds,
            2,
            43_200,
            30,
        );
        let data_dir = p.dir("WORKER_DATA_DIR", &self.data_dir);
        p.finish(WorkerConfig {
            pool,
            ai,
            cloud,
            data_dir,
            listen,
            shutdown_timeout: Duration::from_secs(shutdown),
            visibility_timeout: Duration::from_secs(visibility),
            table: self.table_name.clone().filter(|t| !t.trim().is_empty()),
        })
    }
}

/// The real path of a Node.js 18+ binary.
fn resolve_node(node: &str) -> Result<PathBuf, String> {
    let out = std::process::Command::new(node)
        .args([
            "-e",
            "if (+process.versions.node.split('.')[0] < 18) process.exit(2); console.log(process.execPath)",
        ])
        .output()
        .map_err(|e| format!("cannot run {node:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{node:?} is not a usable Node.js 18+ binary"));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Physical memory in MB.
fn host_memory_mb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// Finds the real interpreter behind `python` (version managers install shims
/// that need environment variables instances do not get) and checks it is 3.8+.
fn resolve_python(python: &str) -> Result<PathBuf, String> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import sys; assert sys.version_info >= (3, 8), sys.version; print(sys.executable)",
        ])
        .output()
        .map_err(|e| format!("cannot run {python:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{python:?} is not a usable Python 3.8+ interpreter"));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if path.is_empty() {
        return Err(format!("{python:?} did not report its executable path"));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_are_any_or_exact_origins() {
        assert_eq!(CorsOrigins::parse("*"), Ok(CorsOrigins::Any));
        assert_eq!(CorsOrigins::parse(""), Ok(CorsOrigins::Any));
        assert_eq!(
            CorsOrigins::parse(" https://Dash.Example.com , http://localhost:3000/ "),
            Ok(CorsOrigins::List(vec![
                "https://dash.example.com".into(),
                "http://localhost:3000".into()
            ]))
        );
        for bad in [
            "dash.example.com",
            "https://x.com/path",
            "ftp://x.com",
            "https://u:p@x.com",
            "https://x.com?q",
        ] {
            let errors = CorsOrigins::parse(&format!("https://ok.com,{bad}")).unwrap_err();
            assert_eq!(errors.len(), 1, "{bad}");
            assert!(errors[0].contains("CORS_ORIGINS"), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = UpArgs::local(dir.path().to_path_buf());
        args.http.port = "http".into();
        args.http.host = "not a host".into();
        args.http.api_key = Some("short".into());
        args.ai.ai_node_url = Some("ftp://x".into());
        args.pool.worker_concurrency = "0".into();
        args.http.trust_forwarded_for = "maybe".into();
        args.pool.python = "/nonexistent/python".into();
        let e = args.validate().unwrap_err();
        assert_eq!(e.0.len(), 7, "{e}");
        let text = e.to_string();
        for needle in [
            "PORT",
            "HOST",
            "INFRA_API_KEY",
            "AI_NODE_URL",
            "WORKER_CONCURRENCY",
            "TRUST_FORWARDED_FOR",
            "PYTHON_BIN",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn an_https_ai_node_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = UpArgs::local(dir.path().to_path_buf());
        args.ai.ai_node_url = Some("https://ai.internal:11434".into());
        let e = args.validate().unwrap_err().to_string();
        assert!(e.contains("does not speak HTTPS"), "{e}");
    }

    #[test]
    fn local_defaults_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = UpArgs::local(dir.path().to_path_buf()).validate().unwrap();
        assert_eq!(cfg.http.listen.port(), 0);
        assert!(cfg.pool.python.is_absolute());
        let mut args = UpArgs::local(dir.path().to_path_buf());
        args.ai.ai_node_url = Some("http://127.0.0.1:11434".into());
        assert_eq!(
            args.validate().unwrap().ai.node_url.unwrap().as_str(),
            "http://127.0.0.1:11434/"
        );
    }

    #[test]
    fn api_requires_its_backends_and_key() {
        let cli = Cli::try_parse_from(["infra", "api"]).unwrap();
        let Command::Api(mut args) = cli.command else {
            panic!("not api")
        };
        // The environment of the test process must not leak into this check.
        args.http.api_key = None;
        args.cloud = CloudArgs {
            aws: AwsArgs::default(),
            bucket_name: None,
            sqs_url: None,
            redis_url: Some("http://wrong-scheme:1".into()),
            redis_host: None,
            redis_port: "6379".into(),
            redis_key_prefix: String::new(),
            job_ttl_seconds: "86400".into(),
            logs_table_name: None,
            logs_retention_days: "7".into(),
        };
        args.table_name = None;
        let text = args.validate().unwrap_err().to_string();
        for needle in [
            "INFRA_API_KEY is required",
            "AWS_REGION is required",
            "BUCKET_NAME is required",
            "SQS_URL is required",
            "TABLE_NAME is required",
            "REDIS_URL must be a redis or rediss URL",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert!(
            !text.contains("wrong-scheme"),
            "URLs may hold passwords; they are not echoed"
        );
    }

    #[test]
    fn redis_host_and_port_make_a_url() {
        let mut p = Problems::default();
        let args = CloudArgs {
            aws: AwsArgs {
                aws_region: Some("eu-west-1".into()),
                ..AwsArgs::default()
            },
            bucket_name: Some("b".into()),
            sqs_url: Some("https://sqs.eu-west-1.amazonaws.com/1/q".into()),
            redis_url: None,
            redis_host: Some("cache.internal".into()),
            redis_port: "6380".into(),
            redis_key_prefix: String::new(),
            job_ttl_seconds: "86400".into(),
            logs_table_name: None,
            logs_retention_days: "7".into(),
        };
        let cfg = args.check(&mut p);
        assert!(p.0.is_empty(), "{:?}", p.0);
        assert_eq!(cfg.redis_url, "redis://cache.internal:6380");
    }
}
