use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use infra_controller::app::{self, Running};
use infra_controller::config::UpArgs;
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

pub const KEY: &str = "test-api-key-0123456789";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    running: Option<Running>,
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_with(|_| {}).await
    }

    /// Starts `infra up` in-process on a free port with its own data dir.
    /// Tests get a high rate limit unless they set one.
    pub async fn start_with(configure: impl FnOnce(&mut UpArgs)) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = UpArgs::local(dir.path().to_path_buf());
        args.http.api_key = Some(KEY.to_string());
        args.http.rate_limit_per_minute = "100000".into();
        args.shutdown_timeout_seconds = "5".into();
        // Apps in one test process are like workers on one host: each needs
        // its own uid range, or one's fork bomb uses up another's process limit.
        static NEXT_UID_RANGE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let range = NEXT_UID_RANGE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        args.pool.instance_uid_base = (200_000 + range * 1024).to_string();
        configure(&mut args);
        let cfg = args.validate().expect("valid config");
        let running = app::start_up(cfg).await.expect("start");
        TestApp {
            base: format!("http://{}", running.addr),
            client: reqwest::Client::new(),
            dir,
            running: Some(running),
        }
    }

    /// Shuts the platform down and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
            running.wait().await.expect("clean stop");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// An unauthenticated GET (probes, OpenAPI) decoded as JSON.
    pub async fn public_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("text")
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).header("x-api-key", KEY)
    }

    /// A GET with the key, decoded as JSON whatever its status.
    pub async fn fetch_json(&self, path: &str) -> Value {
        self.get(path)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).header("x-api-key", KEY)
    }

    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.put(self.url(path)).header("x-api-key", KEY)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path)).header("x-api-key", KEY)
    }

    /// Uploads `file_name` with `data` and extra form fields; returns the raw response.
    pub async fn upload_raw(&self, file_name: &str, data: Vec<u8>, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut form = Form::new().part("file", Part::bytes(data).file_name(file_name.to_string()));
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        self.post("/upload")
            .multipart(form)
            .send()
            .await
            .expect("upload request")
    }

    /// Uploads Python source as `main.py`; returns the function id.
    pub async fn upload_py(&self, source: &str, fields: &[(&str, &str)]) -> String {
        self.upload_file("main.py", source, fields).await
    }

    /// Uploads one source file (its extension picks the runtime); returns the function id.
    pub async fn upload_file(&self, file_name: &str, source: &str, fields: &[(&str, &str)]) -> String {
        let resp = self.upload_raw(file_name, source.as_bytes().to_vec(), fields).await;
        let status = resp.status();
        let body: Value = resp.json().await.expect("json");
        assert_eq!(status, 200, "upload failed: {body}");
        body["functionId"].as_str().expect("functionId").to_string()
    }

    pub async fn run(&self, function_id: &str, input: Value) -> (u16, Value) {
        let resp = self
            .post("/run")
            .json(&json!({"functionId": function_id, "inputData": input}))
            .send()
            .await
            .expect("run request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("json"))
    }

    /// A sync run that must answer 200; returns the result body.
    pub async fn run_ok(&self, function_id: &str, input: Value) -> Value {
        let (status, body) = self.run(function_id, input).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn run_async(&self, function_id: &str, input: Value) -> String {
        let resp = self
            .post("/run")
            .header("x-async", "true")
            .json(&json!({"functionId": function_id, "inputData": input}))
            .send()
            .await
            .expect("run request");
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["status"], "ACCEPTED");
        body["jobId"].as_str().expect("jobId").to_string()
    }

    pub async fn status(&self, job_id: &str) -> (u16, Value) {
        let resp = self.get(&format!("/status/{job_id}")).send().await.expect("status");
        (resp.status().as_u16(), resp.json().await.expect("json"))
    }

    /// Polls `/status` until the job is terminal; returns every status seen and the final body.
    pub async fn wait_job(&self, job_id: &str, within: Duration) -> (Vec<String>, Value) {
        wait_job_at(&self.client, &self.base, job_id, within).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown();
        }
    }
}

pub async fn wait_job_at(client: &reqwest::Client, base: &str, job_id: &str, within: Duration) -> (Vec<String>, Value) {
    let deadline = Instant::now() + within;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let resp = client
            .get(format!("{base}/status/{job_id}"))
            .header("x-api-key", KEY)
            .send()
            .await
            .expect("status");
        assert_eq!(resp.status(), 200, "status of {job_id}");
        let body: Value = resp.json().await.expect("json");
        // In progress: `status` is the original's `pending`; `state` says PENDING or RUNNING.
        let status = match body["status"].as_str().unwrap_or_default() {
            "pending" => body["state"].as_str().unwrap_or_default().to_string(),
            other => other.to_string(),
        };
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if !matches!(status.as_str(), "PENDING" | "RUNNING") {
            return (seen, body);
        }
        assert!(
            Instant::now() < deadline,
            "job {job_id} not finished in {within:?}; seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A zip of the given entries.
pub fn zip_of(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .expect("zip entry");
        w.write_all(data.as_bytes()).expect("zip write");
    }
    w.finish().expect("zip").into_inner()
}

/// Files below `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(dir) {
                    out.push(rel.to_path_buf());
                }
            }
        }
    }
    out.sort();
    out
}

pub const ECHO: &str = "def handler(event, context):\n    return {'echo': event, 'requestId': context.request_id}\n";

/// A running `infra` process.
pub struct Proc {
    pub child: Child,
    pub base: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the real `infra` binary with `args` and env vars (on top of a
/// cleaned environment) and waits for its "listening" log line.
pub fn spawn_infra(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infra"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::inherit());
    for var in [
        "PORT",
        "HOST",
        "INFRA_API_KEY",
        "RATE_LIMIT_PER_MINUTE",
        "AI_NODE_URL",
        "REDIS_URL",
        "REDIS_HOST",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn infra");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "listening" {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!("infra {args:?} did not start listening");
        }
    };
    Proc {
        child,
        base: format!("http://{addr}"),
    }
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

pub fn sigterm(child: &Child) {
    signal(child, libc::SIGTERM);
}

pub fn wait_exit(child: &mut Child, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "process did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether bubblewrap can sandbox functions on this host (what the
/// platform's `SANDBOX=auto` decides).
pub fn sandbox_available() -> bool {
    infra_controller::runtime::host::find_bwrap().is_ok()
}

/// Uploads Python source as `main.py` to the API at `base`; returns the function id.
pub async fn upload_at(client: &reqwest::Client, base: &str, source: &str) -> String {
    upload_at_with(client, base, source, &[]).await
}

/// Uploads Python source as `main.py` with extra form fields.
pub async fn upload_at_with(client: &reqwest::Client, base: &str, source: &str, fields: &[(&str, &str)]) -> String {
    let mut form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(source.as_bytes().to_vec()).file_name("main.py"),
    );
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    let r = client
        .post(format!("{base}/upload"))
        .header("x-api-key", KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["functionId"].as_str().unwrap().to_string()
}

/// `POST /run` at `base`, sync or async; returns the status and body.
pub async fn run_at(client: &reqwest::Client, base: &str, id: &str, input: Value, asynchronous: bool) -> (u16, Value) {
    let mut req = client.post(format!("{base}/run")).header("x-api-key", KEY);
    if asynchronous {
        req = req.header("x-async", "true");
    }
    let r = req
        .json(&json!({"functionId": id, "inputData": input}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// An authenticated GET decoded as JSON.
pub async fn get_json(client: &reqwest::Client, url: String) -> Value {
    authed_get(client, url).await.json().await.unwrap()
}

/// An authenticated GET as text (e.g. `/metrics`).
pub async fn get_text(client: &reqwest::Client, url: String) -> String {
    authed_get(client, url).await.text().await.unwrap()
}

async fn authed_get(client: &reqwest::Client, url: String) -> reqwest::Response {
    client.get(url).header("x-api-key", KEY).send().await.unwrap()
}

/// The Unix time `secs` from now, for handlers that run until one moment
/// (`time.sleep(max(0, event['until'] - time.time()))`): however slowly a
/// loaded machine polls, such a job is still running until then, and a run
/// again after it ends at once.
pub fn until(secs: f64) -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
        + secs
}

/// A Python handler that runs until `event['until']`, then returns `returns`.
pub fn runs_until(returns: &str) -> String {
    format!("import time\ndef handler(event, context):\n    time.sleep(max(0, event['until'] - time.time()))\n    return {returns}\n")
}
