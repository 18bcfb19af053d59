//! What the client prints. Pure: values in (what the API answered), text
//! out. `-o json` and `-o yaml` print the API's answer unchanged, so scripts
//! read the documented API shapes; tables are for people.

use serde_json::Value;

use super::error::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables and short summaries for people.
    Table,
    /// The API's answer as JSON (one document; `logs --follow`: one entry per line).
    Json,
    /// The API's answer as YAML.
    Yaml,
}

/// The API's answer as `-o json|yaml` prints it (with a final newline).
pub fn document(value: &Value, format: Format) -> String {
    match format {
        Format::Yaml => serde_yaml::to_string(value).unwrap_or_else(|_| format!("{value}\n")),
        _ => {
            let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
            text.push('\n');
            text
        }
    }
}

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `key  value` lines, keys aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs.iter().map(|(k, v)| format!("{k:width$}  {v}\n")).collect()
}

/// A JSON value as a cell: strings bare, null as `-`, others as JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// At most `max` characters of the first line, with `…` when cut.
pub fn short(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= max && line.len() == text.trim_end().len() {
        return line.to_string();
    }
    let mut out: String = line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// An RFC 3339 time to the second, as `2026-12-02 08:30:07`.
fn when(v: &Value) -> String {
    match v.as_str() {
        Some(t) if t.len() >= 19 => t[..19].replace('T', " "),
        _ => cell(v),
    }
}

fn ms(v: &Value) -> String {
    match v.as_f64() {
        Some(n) if n >= 100.0 || n.fract() == 0.0 => format!("{n:.0} ms"),
        Some(n) => format!("{n:.1} ms"),
        None => "-".to_string(),
    }
}

/// `GET /functions` as a table.
pub fn function_list(functions: &[Value]) -> String {
    let rows: Vec<Vec<String>> = functions
        .iter()
        .map(|f| {
            vec![
                cell(&f["name"]),
                cell(&f["functionId"]),
                cell(&f["runtime"]),
                format!("{} MB", cell(&f["memoryMb"])),
                cell(&f["warmPool"]["minWarm"]),
                cell(&f["invocations"]),
                ms(&f["avgDuration"]),
                cell(&f["owner"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ID",
            "RUNTIME",
            "MEMORY",
            "MIN WARM",
            "INVOCATIONS",
            "AVG",
            "OWNER",
        ],
        &rows,
    )
}

/// One function as `key value` lines.
pub fn function_detail(f: &Value) -> String {
    let env = match f["envVarNames"].as_array() {
        Some(names) if !names.is_empty() => names.iter().map(cell).collect::<Vec<_>>().join(", "),
        _ => "-".to_string(),
    };
    let timeout = match f["timeoutMs"].as_u64() {
        Some(t) => format!("{} s", t as f64 / 1000.0),
        None => "-".to_string(),
    };
    fields(&[
        ("name", cell(&f["name"])),
        ("id", cell(&f["functionId"])),
        ("description", cell(&f["description"])),
        ("runtime", cell(&f["runtime"])),
        ("handler", cell(&f["handler"])),
        ("memory", format!("{} MB", cell(&f["memoryMb"]))),
        ("timeout", timeout),
        ("min warm", cell(&f["warmPool"]["minWarm"])),
        ("network", cell(&f["network"])),
        ("env", env),
        ("invocations", cell(&f["invocations"])),
        ("finished runs", cell(&f["finishedRuns"])),
        ("avg duration", ms(&f["avgDuration"])),
        ("owner", cell(&f["owner"])),
        ("sha256", cell(&f["sha256"])),
        ("uploaded", when(&f["uploadedAt"])),
        ("updated", when(&f["updatedAt"])),
    ])
}

/// Where a job stands, from a `/run` or `/status` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Queued or running (`status: pending`, or a 202 `ACCEPTED`).
    Pending,
    Succeeded,
    /// Finished without success: the status (FAILED, TIMEOUT, OOM, …).
    Failed(String),
    /// A synchronous wait ran out; the job goes on (`statusUrl` says where).
    WaitRanOut,
}

pub fn job_state(job: &Value) -> JobState {
    match job["status"].as_str().unwrap_or_default() {
        "pending" | "ACCEPTED" => JobState::Pending,
        "SUCCESS" => JobState::Succeeded,
        // The sync wait's TIMEOUT has no result, only where to follow it.
        "TIMEOUT" if job.get("statusUrl").is_some() => JobState::WaitRanOut,
        other => JobState::Failed(other.to_string()),
    }
}

/// The job's id in any of its answers.
pub fn job_id(job: &Value) -> String {
    cell(if job["jobId"].is_string() {
        &job["jobId"]
    } else {
        &job["requestId"]
    })
}

/// A job's state or outcome for people: a summary, the result, the output.
pub fn job(job: &Value) -> String {
    let id = job_id(job);
    let mut out = match job_state(job) {
        JobState::Pending => {
            let status = job["state"].as_str().or(job["status"].as_str()).unwrap_or("PENDING");
            let mut pairs = vec![("job", id.clone()), ("status", status.to_string())];
            if job["functionId"].is_string() {
                pairs.push(("function", cell(&job["functionId"])));
            }
            pairs.push(("follow", format!("infra jobs get {id} --follow")));
            fields(&pairs)
        }
        JobState::WaitRanOut => fields(&[
            ("job", id),
            ("status", "still running (the wait ran out)".to_string()),
            ("message", cell(&job["message"])),
        ]),
        JobState::Succeeded | JobState::Failed(_) => {
            let mut start = cell(&job["startKind"]);
            if job["coldStart"] == Value::Bool(true) {
                start.push_str(", cold start");
            }
            let memory = match (job["peakMemoryBytes"].as_u64(), job["allocatedMemoryMb"].as_u64()) {
                (Some(peak), Some(of)) => format!("{:.1} MB peak of {of} MB", peak as f64 / 1_048_576.0),
                (Some(peak), None) => format!("{:.1} MB peak", peak as f64 / 1_048_576.0),
                _ => "-".to_string(),
            };
            let mut pairs = vec![
                ("job", id),
                ("status", cell(&job["status"])),
                ("duration", ms(&job["durationMs"])),
                ("handler", ms(&job["handlerDurationMs"])),
                ("start", start),
                ("memory", memory),
            ];
            if let Some(error) = job["error"].as_object() {
                pairs.push((
                    "error",
                    format!(
                        "{}: {}",
                        cell(error.get("type").unwrap_or(&Value::Null)),
                        cell(error.get("message").unwrap_or(&Value::Null))
                    ),
                ));
            }
            if let Some(tip) = job["optimizationTip"].as_str() {
                pairs.push(("tip", tip.to_string()));
            }
            let mut out = fields(&pairs);
            if job_state(job) == JobState::Succeeded {
                out.push_str("result:\n");
                out.push_str(&indent(&pretty(&job["result"])));
            }
            for stream in ["stdout", "stderr"] {
                if let Some(text) = job[stream].as_str().filter(|t| !t.trim().is_empty()) {
                    out.push_str(&format!("{stream}:\n"));
                    out.push_str(&indent(text));
                }
            }
            out
        }
    };
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn pretty(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// One invocation of `GET /functions/{id}/logs` as a line, like `tail`:
/// time, status, duration, peak memory, start, request id, message.
pub fn log_line(e: &Value) -> String {
    let start = if e["coldStart"] == Value::Bool(true) {
        "cold"
    } else {
        "warm"
    };
    let message = match e["error"]["message"].as_str() {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => cell(&e["message"]),
    };
    format!(
        "{}  {:<8} {:>8}  {:>4} MB  {start}  {}  {}\n",
        when(&e["timestamp"]),
        cell(&e["status"]),
        ms(&e["duration"]),
        cell(&e["memory"]),
        cell(&e["requestId"]),
        short(&message, 100),
    )
}

/// A function's logs, oldest first (the API answers newest first).
pub fn log_lines(entries: &[Value]) -> String {
    entries.iter().rev().map(log_line).collect()
}

/// Name or id to id, from `GET /functions`: an id is taken as it is; a name
/// must be held by exactly one function.
pub fn resolve(functions: &[Value], wanted: &str) -> Result<String, CliError> {
    if functions.iter().any(|f| f["functionId"] == wanted) {
        return Ok(wanted.to_string());
    }
    let ids: Vec<String> = functions
        .iter()
        .filter(|f| f["name"] == wanted)
        .map(|f| cell(&f["functionId"]))
        .collect();
    match ids.as_slice() {
        [id] => Ok(id.clone()),
        [] => Err(CliError::NotFound(format!(
            "no function named or with the id {wanted:?} (see `infra fn list`)"
        ))),
        many => Err(CliError::Usage(format!(
            "the name {wanted:?} is ambiguous: {} functions have it ({}); give an id",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// What an error answer says: `message` where `error` is only the
/// status's words (401, 429), else `error`; its request id for the logs.
pub fn api_message(status: u16, body: &Value) -> String {
    let error = body["error"].as_str().unwrap_or_default();
    let detail = body["message"].as_str().unwrap_or_default();
    let text = match (error, detail) {
        ("", "") => return format!("the server answered HTTP {status}"),
        ("", d) => d.to_string(),
        (e, "") => e.to_string(),
        (e, d) => format!("{e}: {d}"),
    };
    match body["requestId"].as_str() {
        Some(id) => format!("{text} (HTTP {status}, request {id})"),
        None => format!("{text} (HTTP {status})"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_columns() {
        let out = table(
            &["NAME", "ID"],
            &[vec!["hello".into(), "1".into()], vec!["a".into(), "22".into()]],
        );
        assert_eq!(out, "NAME   ID\nhello  1\na      22\n");
    }

    #[test]
    fn function_list_shows_the_columns_people_look_for() {
        let out = function_list(&[json!({
            "name": "hello", "functionId": "f-1", "runtime": "python", "memoryMb": 256,
            "warmPool": {"minWarm": 1}, "invocations": 3, "avgDuration": 12, "owner": null,
        })]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME   ID   RUNTIME  MEMORY  MIN WARM"), "{out}");
        assert!(lines[1].contains("hello  f-1  python   256 MB  1"), "{out}");
        assert!(lines[1].ends_with("12 ms  -"), "{out}");
    }

    #[test]
    fn function_detail_never_needs_env_values() {
        let out = function_detail(&json!({"name": "x", "envVarNames": ["A", "B"], "timeoutMs": 1500}));
        assert!(out.contains("env            A, B\n"), "{out}");
        assert!(out.contains("timeout        1.5 s\n"), "{out}");
    }

    #[test]
    fn job_states() {
        assert_eq!(job_state(&json!({"status": "pending"})), JobState::Pending);
        assert_eq!(job_state(&json!({"status": "ACCEPTED"})), JobState::Pending);
        assert_eq!(job_state(&json!({"status": "SUCCESS"})), JobState::Succeeded);
        assert_eq!(
            job_state(&json!({"status": "TIMEOUT", "requestId": "r"})),
            JobState::Failed("TIMEOUT".into())
        );
        assert_eq!(
            job_state(&json!({"status": "TIMEOUT", "jobId": "j", "statusUrl": "/status/j"})),
            JobState::WaitRanOut
        );
        assert_eq!(
            job_state(&json!({"status": "FAILED"})),
            JobState::Failed("FAILED".into())
        );
    }

    #[test]
    fn a_finished_job_shows_result_and_output() {
        let out = job(&json!({
            "jobId": "j1", "status": "SUCCESS", "durationMs": 12.34, "handlerDurationMs": 0.42,
            "startKind": "warm", "peakMemoryBytes": 10485760, "allocatedMemoryMb": 128,
            "result": {"message": "hi"}, "stdout": "printed\n{\"message\": \"hi\"}\n", "stderr": "",
        }));
        assert!(
            out.starts_with("job       j1\nstatus    SUCCESS\nduration  12.3 ms\nhandler   0.4 ms\n"),
            "{out}"
        );
        assert!(out.contains("memory    10.0 MB peak of 128 MB\n"), "{out}");
        assert!(out.contains("result:\n  {\n    \"message\": \"hi\"\n  }\n"), "{out}");
        assert!(out.contains("stdout:\n  printed\n"), "{out}");
        assert!(!out.contains("stderr:"), "{out}");
    }

    #[test]
    fn a_failed_job_shows_its_error() {
        let out = job(&json!({
            "jobId": "j1", "status": "FAILED", "error": {"type": "ValueError", "message": "boom"},
            "stderr": "Traceback ...",
        }));
        assert!(out.contains("error     ValueError: boom\n"), "{out}");
        assert!(!out.contains("result:"), "{out}");
        assert!(out.contains("stderr:\n  Traceback ...\n"), "{out}");
    }

    #[test]
    fn log_lines_are_oldest_first() {
        let newest_first = [
            json!({"timestamp": "2026-12-02T08:30:09.5Z", "status": "FAILED", "duration": 7, "memory": 9,
                   "coldStart": false, "requestId": "r2", "message": "x", "error": {"message": "boom"}}),
            json!({"timestamp": "2026-12-02T08:30:07.1Z", "status": "SUCCESS", "duration": 40, "memory": 9,
                   "coldStart": true, "requestId": "r1", "message": "hello\nworld"}),
        ];
        let out = log_lines(&newest_first);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "2026-12-02 08:30:07  SUCCESS     40 ms     9 MB  cold  r1  hello…"
        );
        assert!(lines[1].ends_with("warm  r2  boom"), "{out}");
    }

    #[test]
    fn names_resolve_to_ids() {
        let fns = [
            json!({"functionId": "a1", "name": "hello"}),
            json!({"functionId": "b2", "name": "dup"}),
            json!({"functionId": "c3", "name": "dup"}),
        ];
        assert_eq!(resolve(&fns, "hello").unwrap(), "a1");
        assert_eq!(resolve(&fns, "b2").unwrap(), "b2");
        let err = resolve(&fns, "nope").unwrap_err();
        assert_eq!(err.code(), 3);
        let err = resolve(&fns, "dup").unwrap_err();
        assert_eq!(err.code(), 2);
        assert!(err.to_string().contains("b2, c3"), "{err}");
    }

    #[test]
    fn api_messages() {
        let body =
            json!({"error": "Unauthorized", "message": "missing or invalid x-api-key header", "requestId": "r1"});
        assert_eq!(
            api_message(401, &body),
            "Unauthorized: missing or invalid x-api-key header (HTTP 401, request r1)"
        );
        assert_eq!(
            api_message(400, &json!({"error": "invalid function settings: memoryMb ..."})),
            "invalid function settings: memoryMb ... (HTTP 400)"
        );
        assert_eq!(api_message(502, &Value::Null), "the server answered HTTP 502");
    }

    #[test]
    fn documents_are_the_answer_unchanged() {
        let v = json!({"b": 1, "a": [true]});
        assert_eq!(serde_json::from_str::<Value>(&document(&v, Format::Json)).unwrap(), v);
        assert_eq!(serde_yaml::from_str::<Value>(&document(&v, Format::Yaml)).unwrap(), v);
    }
}
