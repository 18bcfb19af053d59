//! Command line and environment configuration. Values are read as text and
//! validated together, so a bad configuration lists every problem at once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Up(UpArgs),
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value = "8080")]
    pub port: String,
    /// Where functions, artifacts, jobs and the queue are kept.
    #[arg(long, env = "INFRA_DATA_DIR", default_value = ".infra-data")]
    pub data_dir: PathBuf,
    /// API key clients send as `x-api-key` (at least 16 characters). When
    /// unset, one is generated, printed once and kept in the data dir.
    #[arg(long, env = "INFRA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Base URL of the Ollama-compatible AI node.
    #[arg(long, env = "AI_NODE_URL")]
    pub ai_node_url: Option<String>,
    /// Model used when a run names none.
    #[arg(long, env = "DEFAULT_MODEL_ID", default_value = "llama3:8b")]
    pub default_model: String,
    /// Requests per minute per client IP; 0 disables the limit.
    #[arg(long, env = "RATE_LIMIT_PER_MINUTE", default_value = "100")]
    pub rate_limit_per_minute: String,
    /// Take the client IP from X-Forwarded-For (only behind a trusted proxy).
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value = "false")]
    pub trust_forwarded_for: String,
    /// Jobs run at the same time.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value = "4")]
    pub worker_concurrency: String,
    /// How long an idle warm instance is kept.
    #[arg(long, env = "WARM_KEEP_ALIVE_SECONDS", default_value = "300")]
    pub keep_alive_seconds: String,
    /// Most idle warm instances kept (least recently used go first).
    #[arg(long, env = "MAX_WARM_INSTANCES", default_value = "32")]
    pub max_warm_instances: String,
    /// Longest a synchronous /run waits before answering 504 with the jobId.
    #[arg(long, env = "SYNC_TIMEOUT_MS", default_value = "300000")]
    pub sync_timeout_ms: String,
    /// Longest a shutdown waits for in-flight requests and jobs.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value = "30")]
    pub shutdown_timeout_seconds: String,
    /// Queue visibility timeout; running jobs are extended before it lapses.
    #[arg(long, env = "VISIBILITY_TIMEOUT_SECONDS", default_value = "30")]
    pub visibility_timeout_seconds: String,
    /// Python interpreter for function instances.
    #[arg(long, env = "PYTHON_BIN", default_value = "python3")]
    pub python: String,
}

/// Validated configuration of `infra up`.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub api_key: Option<String>,
    pub ai_node_url: Option<reqwest::Url>,
    pub default_model: String,
    pub rate_limit_per_minute: u32,
    pub trust_forwarded_for: bool,
    pub worker_concurrency: usize,
    pub keep_alive: Duration,
    pub max_warm_instances: usize,
    pub sync_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub visibility_timeout: Duration,
    /// Resolved interpreter path.
    pub python: PathBuf,
}

/// Every configuration problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

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
}

impl UpArgs {
    /// Defaults for embedding and tests: loopback, a free port, the given dir.
    pub fn local(data_dir: PathBuf) -> UpArgs {
        UpArgs {
            host: "127.0.0.1".into(),
            port: "0".into(),
            data_dir,
            api_key: None,
            ai_node_url: None,
            default_model: "llama3:8b".into(),
            rate_limit_per_minute: "100".into(),
            trust_forwarded_for: "false".into(),
            worker_concurrency: "4".into(),
            keep_alive_seconds: "300".into(),
            max_warm_instances: "32".into(),
            sync_timeout_ms: "300000".into(),
            shutdown_timeout_seconds: "30".into(),
            visibility_timeout_seconds: "30".into(),
            python: "python3".into(),
        }
    }

    pub fn validate(&self) -> Result<UpConfig, ConfigErrors> {
        let mut p = Problems(Vec::new());
        let port: u16 = p.num("PORT", &self.port, 0, u16::MAX, 0);
        let ip = match self.host.trim() {
            "localhost" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            h => h.parse::<IpAddr>().ok(),
        };
        if ip.is_none() {
            p.0.push(format!(
                "HOST must be an IP address (or localhost), got {:?}",
                self.host
            ));
        }
        let api_key = self.api_key.clone().filter(|k| !k.is_empty());
        if let Some(k) = &api_key {
            if k.len() < 16 || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
                p.0.push("INFRA_API_KEY must be at least 16 characters without spaces".into());
            }
        }
        let ai_node_url = match self.ai_node_url.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(raw) => match reqwest::Url::parse(raw) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                    // Joining "api/tags" needs a trailing slash on the base.
                    let mut u = u;
                    if !u.path().ends_with('/') {
                        let path = format!("{}/", u.path());
                        u.set_path(&path);
                    }
                    Some(u)
                }
                _ => {
                    p.0.push(format!("AI_NODE_URL must be an http(s) URL, got {raw:?}"));
                    None
                }
            },
        };
        if self.default_model.trim().is_empty() {
            p.0.push("DEFAULT_MODEL_ID must not be empty".into());
        }
        let rate_limit_per_minute = p.num(
            "RATE_LIMIT_PER_MINUTE",
            &self.rate_limit_per_minute,
            0,
            1_000_000_000,
            100,
        );
        let trust_forwarded_for = p.flag("TRUST_FORWARDED_FOR", &self.trust_forwarded_for);
        let worker_concurrency = p.num("WORKER_CONCURRENCY", &self.worker_concurrency, 1, 1024, 1);
        let keep_alive = p.num("WARM_KEEP_ALIVE_SECONDS", &self.keep_alive_seconds, 1, 86_400, 300);
        let max_warm_instances = p.num("MAX_WARM_INSTANCES", &self.max_warm_instances, 0, 10_000, 32);
        let sync_timeout = p.num("SYNC_TIMEOUT_MS", &self.sync_timeout_ms, 100, 3_600_000, 300_000);
        let shutdown = p.num("SHUTDOWN_TIMEOUT_SECONDS", &self.shutdown_timeout_seconds, 0, 3600, 30);
        let visibility = p.num(
            "VISIBILITY_TIMEOUT_SECONDS",
            &self.visibility_timeout_seconds,
            2,
            43_200,
            30,
        );
        let python = match resolve_python(&self.python) {
            Ok(path) => path,
            Err(e) => {
                p.0.push(format!("PYTHON_BIN: {e}"));
                PathBuf::new()
            }
        };
        // Absolute, because instances run in their own working directories.
        let data_dir = match std::fs::create_dir_all(&self.data_dir).and_then(|_| std::fs::canonicalize(&self.data_dir))
        {
            Ok(d) => d,
            Err(e) => {
                p.0.push(format!(
                    "INFRA_DATA_DIR {} cannot be created: {e}",
                    self.data_dir.display()
                ));
                self.data_dir.clone()
            }
        };
        if !p.0.is_empty() {
            return Err(ConfigErrors(p.0));
        }
        Ok(UpConfig {
            listen: SocketAddr::new(ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), port),
            data_dir,
            api_key,
            ai_node_url,
            default_model: self.default_model.trim().to_string(),
            rate_limit_per_minute,
            trust_forwarded_for,
            worker_concurrency,
            keep_alive: Duration::from_secs(keep_alive),
            max_warm_instances,
            sync_timeout: Duration::from_millis(sync_timeout),
            shutdown_timeout: Duration::from_secs(shutdown),
            visibility_timeout: Duration::from_secs(visibility),
            python,
        })
    }
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
    fn every_problem_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = UpArgs::local(dir.path().to_path_buf());
        args.port = "http".into();
        args.host = "not a host".into();
        args.api_key = Some("short".into());
        args.ai_node_url = Some("ftp://x".into());
        args.worker_concurrency = "0".into();
        args.trust_forwarded_for = "maybe".into();
        args.python = "/nonexistent/python".into();
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
    fn local_defaults_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = UpArgs::local(dir.path().to_path_buf()).validate().unwrap();
        assert_eq!(cfg.listen.port(), 0);
        assert!(cfg.python.is_absolute());
        let mut args = UpArgs::local(dir.path().to_path_buf());
        args.ai_node_url = Some("http://127.0.0.1:11434".into());
        assert_eq!(
            args.validate().unwrap().ai_node_url.unwrap().as_str(),
            "http://127.0.0.1:11434/"
        );
    }
}
