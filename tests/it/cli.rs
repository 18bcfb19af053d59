//! The client verbs (`infra fn …`, `infra jobs get`, `infra login`): the real
//! `infra` binary against a running `infra up`, as a script would use it;
//! `-o json` is parsed, exit codes and stderr are checked.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::helpers::*;

/// One `infra` invocation's outcome.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// Succeeded, and said nothing on stderr (not a terminal: no progress).
    fn ok(self) -> Out {
        assert_eq!(self.code, 0, "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        assert_eq!(self.stderr, "", "stderr of a success");
        self
    }

    /// Failed with `code` and one line on stderr holding `words`.
    fn fails(&self, code: i32, words: &str) {
        assert_eq!(self.code, code, "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        assert_eq!(self.stderr.lines().count(), 1, "one line: {}", self.stderr);
        assert!(self.stderr.starts_with("error: "), "{}", self.stderr);
        assert!(self.stderr.contains(words), "{:?} not in: {}", words, self.stderr);
    }
}

/// The client with a clean environment: the target and key given, its own
/// config directory (no profile unless a test writes one).
struct Client {
    env: Vec<(String, String)>,
    home: tempfile::TempDir,
}

impl Client {
    fn new(url: &str, key: Option<&str>) -> Client {
        let home = tempfile::tempdir().expect("tempdir");
        let mut env = vec![
            ("INFRA_URL".to_string(), url.to_string()),
            ("HOME".to_string(), home.path().display().to_string()),
            (
                "XDG_CONFIG_HOME".to_string(),
                home.path().join("config").display().to_string(),
            ),
        ];
        if let Some(key) = key {
            env.push(("INFRA_API_KEY".to_string(), key.to_string()));
        }
        Client { env, home }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_infra"));
        cmd.args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(repo())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, None).await
    }

    async fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = self.command(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("spawn infra");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await.expect("stdin");
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("infra {args:?} did not finish"))
            .expect("wait");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn profile(&self) -> PathBuf {
        self.home.path().join("config/infra/profile.yaml")
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The README's tour, command for command: deploy (YAML, file, folder),
/// list, get, invoke sync and async with --follow, jobs, logs, delete.
#[tokio::test]
async fn the_tour_deploys_runs_follows_and_deletes() {
    let app = TestApp::start().await;
    let cli = Client::new(&app.base, Some(KEY));

    // A Function YAML: inline code, env from the ConfigMap beside it, minWarm.
    let yaml = cli
        .run(&["fn", "deploy", "examples/functions/hello.yaml", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(yaml["function"]["name"], "hello", "{yaml}");
    assert_eq!(yaml["function"]["warmPool"]["minWarm"], 1);
    assert_eq!(yaml["function"]["envVarNames"], serde_json::json!(["GREETING"]));
    let out = cli
        .run(&["fn", "invoke", "hello", "-d", r#"{"name":"Ada"}"#])
        .await
        .ok();
    assert!(out.stdout.contains("status    SUCCESS\n"), "{}", out.stdout);
    assert!(out.stdout.contains("result:\n  Hello, Ada!\n"), "{}", out.stdout);

    // A file under the same name: the function is updated, not doubled.
    let out = cli
        .run(&[
            "fn",
            "deploy",
            "examples/hello/main.py",
            "--name",
            "hello",
            "--memory",
            "256",
        ])
        .await
        .ok();
    assert!(out.stdout.starts_with("updated function hello ("), "{}", out.stdout);
    let hello_id = yaml["functionId"].as_str().unwrap().to_string();
    assert!(out.stdout.contains(&hello_id), "{}", out.stdout);

    // A folder, zipped by the client.
    let out = cli
        .run(&[
            "fn",
            "deploy",
            "examples/wordcount",
            "--handler",
            "app.count",
            "--env",
            "MODE=test",
        ])
        .await
        .ok();
    assert!(out.stdout.starts_with("created function wordcount ("), "{}", out.stdout);

    let list = cli.run(&["fn", "list", "-o", "json"]).await.ok().json();
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["hello", "wordcount"]);
    let table = cli.run(&["fn", "list"]).await.ok().stdout;
    assert!(table.starts_with("NAME "), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("hello ") && l.contains("256 MB")),
        "{table}"
    );

    let f = cli.run(&["fn", "get", "hello", "-o", "json"]).await.ok().json();
    assert_eq!(f["functionId"], hello_id.as_str());
    assert_eq!(f["memoryMb"], 256);
    let f = cli.run(&["fn", "get", "wordcount", "-o", "yaml"]).await.ok().stdout;
    let f: Value = serde_yaml::from_str(&f).unwrap();
    assert_eq!(f["handler"], "app.count");
    assert_eq!(f["envVarNames"], serde_json::json!(["MODE"]));

    // Sync, input from a file, the API's answer as JSON.
    let input = app.dir.path().join("input.json");
    std::fs::write(&input, r#"{"text": "the cat and the hat", "n": 1}"#).unwrap();
    let run = cli
        .run(&[
            "fn",
            "invoke",
            "wordcount",
            "--data",
            &format!("@{}", input.display()),
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(run["status"], "SUCCESS", "{run}");
    assert_eq!(run["result"]["top"], serde_json::json!([["the", 2]]));

    // Async and followed to the end.
    let run = cli
        .run(&[
            "fn",
            "invoke",
            "hello",
            "--async",
            "--follow",
            "-d",
            r#"{"name":"Grace"}"#,
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(run["status"], "SUCCESS", "{run}");
    assert_eq!(run["result"]["message"], "Hello, Grace!");
    let followed_id = run["requestId"].as_str().unwrap().to_string();

    // Async, then the job looked up by id.
    let accepted = cli
        .run(&["fn", "invoke", "hello", "--async", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(accepted["status"], "ACCEPTED");
    let job = accepted["jobId"].as_str().unwrap().to_string();
    let done = cli
        .run(&["jobs", "get", &job, "--follow", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(done["result"]["message"], "Hello, world!");
    let table = cli.run(&["jobs", "get", &job]).await.ok().stdout;
    assert!(
        table.starts_with(&format!("job       {job}\nstatus    SUCCESS\n")),
        "{table}"
    );

    // Logs: the API's entries, and lines for people. (A log is written just
    // after the outcome, so the newest may take a moment.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = cli.run(&["fn", "logs", "hello", "-o", "json"]).await.ok().json();
        let ids: Vec<&str> = logs
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["requestId"].as_str().unwrap())
            .collect();
        if ids.contains(&followed_id.as_str()) && ids.contains(&job.as_str()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = cli.run(&["fn", "logs", "hello", "--limit", "1"]).await.ok().stdout;
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(lines.contains("SUCCESS") && lines.contains(&job), "{lines}");

    // Followed logs show a run made after they started.
    let mut follower = cli
        .command(&["fn", "logs", "hello", "--follow", "--limit", "1", "-o", "json"])
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(first["requestId"], job.as_str());
    let later = app.run_async(&hello_id, serde_json::json!({"name": "Lin"})).await;
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("a line");
            let entry: Value = serde_json::from_str(&line).unwrap();
            if entry["requestId"] == later.as_str() {
                return entry;
            }
        }
    })
    .await
    .expect("the new run is followed");
    assert_eq!(seen["status"], "SUCCESS");
    follower.kill().await.unwrap();

    // The Function YAML again: a deploy under an existing name updates it.
    let out = cli.run(&["fn", "deploy", "examples/functions/hello.yaml"]).await.ok();
    assert!(
        out.stdout.starts_with(&format!("updated function hello ({hello_id})")),
        "{}",
        out.stdout
    );
    let run = cli
        .run(&["fn", "invoke", "hello", "-d", r#"{"name":"Ada"}"#, "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(run["result"], "Hello, Ada!", "{run}");

    let out = cli.run(&["fn", "delete", "wordcount"]).await.ok();
    assert!(out.stdout.starts_with("deleted function wordcount ("), "{}", out.stdout);
    cli.run(&["fn", "get", "wordcount"]).await.fails(3, "no function named");
    let gone = cli.run(&["fn", "delete", &hello_id, "-o", "json"]).await.ok().json();
    assert_eq!(gone["deletedId"], hello_id.as_str());
    assert_eq!(
        cli.run(&["fn", "list", "-o", "json"]).await.ok().json(),
        serde_json::json!([])
    );
}

/// Each failure: its exit code and one clear line on stderr.
#[tokio::test]
async fn failures_exit_non_zero_with_one_clear_line() {
    let app = TestApp::start().await;
    let cli = Client::new(&app.base, Some(KEY));
    cli.run(&["fn", "deploy", "examples/hello/main.py", "--name", "hello"])
        .await
        .ok();

    // Bad key, no key.
    let wrong = Client::new(&app.base, Some("wrong-key-0123456789"));
    let out = wrong.run(&["fn", "list"]).await;
    out.fails(4, "the API key was refused");
    assert!(
        !out.stderr.contains("wrong-key"),
        "the key is never printed: {}",
        out.stderr
    );
    Client::new(&app.base, None)
        .run(&["fn", "invoke", "hello"])
        .await
        .fails(4, "no API key");

    // Unknown function, unknown job.
    cli.run(&["fn", "invoke", "nope"])
        .await
        .fails(3, r#"no function named or with the id "nope""#);
    cli.run(&["fn", "logs", "nope"]).await.fails(3, "nope");
    cli.run(&["jobs", "get", "00000000-0000-4000-8000-000000000000"])
        .await
        .fails(3, "not found");

    // Invalid settings: the API's message; invalid input found before any request.
    cli.run(&[
        "fn",
        "deploy",
        "examples/hello/main.py",
        "--name",
        "big",
        "--memory",
        "5",
    ])
    .await
    .fails(
        2,
        "invalid function settings: memoryMb must be an integer from 128 to 10240",
    );
    cli.run(&["fn", "deploy", "examples/hello/main.py", "--runtime", "cobol"])
        .await
        .fails(2, "runtime");
    cli.run(&["fn", "invoke", "hello", "--data", "{name: Ada}"])
        .await
        .fails(2, "--data is not valid JSON");
    cli.run(&["fn", "deploy", "examples/missing.py"])
        .await
        .fails(2, "cannot read examples/missing.py");
    let out = cli
        .run(&["fn", "deploy", "examples/hello/main.py", "--timeout", "2h"])
        .await;
    assert_eq!(out.code, 2, "clap's usage errors are 2 too: {}", out.stderr);

    // A name two functions share.
    app.upload_py(ECHO, &[("name", "twin")]).await;
    app.upload_py(ECHO, &[("name", "twin")]).await;
    cli.run(&["fn", "get", "twin"]).await.fails(2, "ambiguous");

    // The function failed: exit 1, the output still printed for reading.
    let failing = app.dir.path().join("failing.py");
    std::fs::write(&failing, "def handler(event, context):\n    raise ValueError('boom')\n").unwrap();
    cli.run(&["fn", "deploy", failing.to_str().unwrap()]).await.ok();
    let out = cli.run(&["fn", "invoke", "failing.py", "-o", "json"]).await;
    out.fails(1, "the run ended FAILED: boom");
    assert_eq!(out.json()["error"]["type"], "ValueError");
    cli.run(&["fn", "invoke", "failing.py", "--async", "--follow"])
        .await
        .fails(1, "FAILED");

    // Server down.
    let app_url = app.base.clone();
    app.stop().await;
    let out = cli.run(&["fn", "list", "-o", "json"]).await;
    out.fails(5, &format!("cannot reach the API at {app_url}"));
    assert_eq!(out.stdout, "");
}

/// `infra login` keeps the URL and key in a private profile that later
/// commands use; a refused key is not kept.
#[tokio::test]
async fn login_keeps_a_private_profile() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::start().await;
    let cli = Client::new("", None);

    let out = cli
        .run_with_stdin(&["login", "--url", &app.base], Some("wrong-key-0123456789\n"))
        .await;
    out.fails(4, "refused");
    assert!(!cli.profile().exists());

    let out = cli
        .run_with_stdin(&["login", "--url", &app.base], Some(&format!("{KEY}\n")))
        .await
        .ok();
    assert!(
        out.stdout.starts_with(&format!("logged in to {}", app.base)),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(KEY), "the key is never printed");
    let mode = std::fs::metadata(cli.profile()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // No INFRA_URL / INFRA_API_KEY: the profile's.
    cli.run(&["fn", "deploy", "examples/node-hello/index.js", "--min-warm", "1"])
        .await
        .ok();
    let list = cli.run(&["fn", "list", "-o", "json"]).await.ok().json();
    assert_eq!(list[0]["name"], "index.js");
    assert_eq!(list[0]["runtime"], "nodejs");
    // A flag wins over the profile.
    cli.run(&["fn", "list", "--api-key", "wrong-key-0123456789"])
        .await
        .fails(4, "refused");

    let script = cli.run(&["completions", "bash"]).await.ok().stdout;
    assert!(script.contains("_infra()") && script.contains("invoke"), "{script}");
}

/// The README's AI function: `--model` picks the model the function asks.
#[tokio::test]
async fn invoke_with_a_model() {
    let node = crate::ai::FakeOllama::start().await;
    let url = node.url.clone();
    let app = TestApp::start_with(move |a| a.ai.ai_node_url = Some(url)).await;
    let cli = Client::new(&app.base, Some(KEY));
    cli.run(&["fn", "deploy", "examples/ask/main.py", "--name", "ask"])
        .await
        .ok();
    let run = cli
        .run(&[
            "fn",
            "invoke",
            "ask",
            "-d",
            r#"{"question":"why warm?"}"#,
            "--model",
            "qwen2:0.5b",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(
        run["result"],
        serde_json::json!({"model": "qwen2:0.5b", "answer": "echo: why warm?"}),
        "{run}"
    );
}

/// A synchronous wait that runs out on the server: exit 1 naming the job
/// that goes on; with --follow, the job is followed to its outcome.
#[tokio::test]
async fn a_sync_wait_that_runs_out_is_followed() {
    let app = TestApp::start_with(|a| a.http.sync_timeout_ms = "300".into()).await;
    let cli = Client::new(&app.base, Some(KEY));
    let slow = app.dir.path().join("slow.py");
    std::fs::write(
        &slow,
        "import time\n\ndef handler(event, context):\n    time.sleep(1)\n    return 'done'\n",
    )
    .unwrap();
    cli.run(&["fn", "deploy", slow.to_str().unwrap(), "--name", "slow"])
        .await
        .ok();
    let out = cli.run(&["fn", "invoke", "slow", "-o", "json"]).await;
    out.fails(1, "the wait for the result ran out; job ");
    let job = out.json()["jobId"].as_str().unwrap().to_string();
    assert!(
        out.stderr.contains(&format!("infra jobs get {job} --follow")),
        "{}",
        out.stderr
    );
    let done = cli
        .run(&["jobs", "get", &job, "--follow", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(done["result"], "done", "{done}");

    let out = cli.run(&["fn", "invoke", "slow", "--follow"]).await.ok();
    assert!(out.stdout.contains("status    SUCCESS\n"), "{}", out.stdout);
    assert!(out.stdout.contains("result:\n  done\n"), "{}", out.stdout);
}
