//! The verbs: each reads its arguments, talks to the API, prints, and says
//! how it ended (`CliError` → exit code).

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::Api;
use super::deploy::{self, Overrides};
use super::error::CliError;
use super::output::{self, Format, JobState};
use super::profile;
use super::{ClientOpts, DeployArgs, FnArgs, FnCommand, InvokeArgs, JobsArgs, JobsCommand, LoginArgs, LogsArgs};

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn api(opts: &ClientOpts) -> Result<Api, CliError> {
    let profile = profile::load(profile::path().as_deref())?;
    Api::new(profile::target(opts.url.as_deref(), opts.api_key.as_deref(), &profile)?)
}

pub async fn function(args: &FnArgs) -> Result<(), CliError> {
    let format = args.opts.output;
    match &args.command {
        FnCommand::Deploy(a) => deploy(&api(&args.opts)?, a, format).await,
        FnCommand::List => {
            let functions = api(&args.opts)?.list_functions().await?;
            out(&match format {
                Format::Table => output::function_list(&functions),
                _ => output::document(&Value::Array(functions), format),
            });
            Ok(())
        }
        FnCommand::Get { function } => {
            let api = api(&args.opts)?;
            let id = api.resolve(function).await?;
            let f = api.get_function(&id).await?;
            out(&match format {
                Format::Table => output::function_detail(&f),
                _ => output::document(&f, format),
            });
            Ok(())
        }
        FnCommand::Invoke(a) => invoke(&api(&args.opts)?, a, format).await,
        FnCommand::Logs(a) => logs(&api(&args.opts)?, a, format).await,
        FnCommand::Delete { function } => {
            let api = api(&args.opts)?;
            let id = api.resolve(function).await?;
            let answer = api.delete_function(&id).await?;
            out(&match format {
                Format::Table if *function == id => format!("deleted function {id}\n"),
                Format::Table => format!("deleted function {function} ({id})\n"),
                _ => output::document(&answer, format),
            });
            Ok(())
        }
    }
}

async fn deploy(api: &Api, a: &DeployArgs, format: Format) -> Result<(), CliError> {
    let flags = Overrides {
        name: a.name.clone(),
        runtime: a.runtime.clone(),
        memory_mb: a.memory,
        timeout_ms: a.timeout,
        min_warm: a.min_warm,
        handler: a.handler.clone(),
        description: a.description.clone(),
        env: a.env.clone(),
        set: a.set.clone(),
    };
    let plan = deploy::plan(&a.path, &flags).await?;
    // Deploying a name that exists updates that function (new code, settings).
    let functions = api.list_functions().await?;
    let same_name: Vec<String> = functions
        .iter()
        .filter(|f| f["name"] == plan.name.as_str())
        .map(|f| output::cell(&f["functionId"]))
        .collect();
    let existing = match same_name.as_slice() {
        [] => None,
        [id] => Some(id.clone()),
        many => {
            return Err(CliError::Usage(format!(
                "{} functions are named {:?} ({}): delete the extra ones or deploy under another --name",
                many.len(),
                plan.name,
                many.join(", ")
            )))
        }
    };
    let size = plan.upload.bytes.len();
    let progress = Progress::start(format, format!("uploading {} ({})", plan.upload.file_name, bytes(size)));
    let answer = api.upload(plan.upload, existing.as_deref()).await;
    progress.stop();
    let answer = answer?;
    out(&match format {
        Format::Table => {
            // POST /upload nests the function; PUT answers with it at the top.
            let f = if answer["function"].is_object() {
                &answer["function"]
            } else {
                &answer
            };
            format!(
                "{} function {} ({}): {}, {} MB\n",
                if existing.is_some() { "updated" } else { "created" },
                output::cell(&f["name"]),
                output::cell(&f["functionId"]),
                output::cell(&f["runtime"]),
                output::cell(&f["memoryMb"]),
            )
        }
        _ => output::document(&answer, format),
    });
    Ok(())
}

async fn invoke(api: &Api, a: &InvokeArgs, format: Format) -> Result<(), CliError> {
    let input = super::input::read_data(a.data.as_deref())?;
    let id = api.resolve(&a.function).await?;
    let mut answer = api.run(&id, &input, a.model.as_deref(), a.asynchronous).await?;
    if a.follow && matches!(output::job_state(&answer), JobState::Pending | JobState::WaitRanOut) {
        answer = follow(api, &output::job_id(&answer), format).await?;
    }
    show_job(&answer, format)
}

/// Prints a job and says how it ended: a pending job is no failure.
fn show_job(job: &Value, format: Format) -> Result<(), CliError> {
    out(&match format {
        Format::Table => output::job(job),
        _ => output::document(job, format),
    });
    let id = output::job_id(job);
    match output::job_state(job) {
        JobState::Pending | JobState::Succeeded => Ok(()),
        JobState::WaitRanOut => Err(CliError::Failed(format!(
            "the wait for the result ran out; job {id} goes on: `infra jobs get {id} --follow`"
        ))),
        JobState::Failed(status) => {
            let why = match job["error"]["message"].as_str() {
                Some(m) => format!(": {}", output::short(m, 200)),
                None => String::new(),
            };
            Err(CliError::Failed(format!("the run ended {status}{why} (job {id})")))
        }
    }
}

/// Polls `/status` until the job has finished: quickly at first, then each second.
async fn follow(api: &Api, job_id: &str, format: Format) -> Result<Value, CliError> {
    let progress = Progress::start(format, format!("waiting for job {job_id}"));
    let mut pause = Duration::from_millis(50);
    let outcome = loop {
        match api.status(job_id).await {
            Ok(job) if output::job_state(&job) == JobState::Pending => {}
            other => break other,
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    };
    progress.stop();
    outcome
}

async fn logs(api: &Api, a: &LogsArgs, format: Format) -> Result<(), CliError> {
    let id = api.resolve(&a.function).await?;
    if !a.follow {
        let entries = api.logs(&id, a.limit).await?;
        out(&match format {
            Format::Table => output::log_lines(&entries),
            _ => output::document(&Value::Array(entries), format),
        });
        return Ok(());
    }
    // Followed: one line per invocation as it appears (JSON: one object a line).
    let line = |e: &Value| match format {
        Format::Table => output::log_line(e),
        _ => format!("{e}\n"),
    };
    // Each poll reads this many; the first one's older entries are known, not shown.
    let window = a.limit.max(100);
    let mut fresh = api.logs(&id, window).await?;
    let mut seen: HashSet<String> = fresh
        .iter()
        .skip(a.limit as usize)
        .map(|e| output::cell(&e["requestId"]))
        .collect();
    loop {
        let mut text = String::new();
        for e in fresh.iter().rev() {
            if seen.insert(output::cell(&e["requestId"])) {
                text.push_str(&line(e));
            }
        }
        out(&text);
        tokio::time::sleep(Duration::from_secs(1)).await;
        fresh = api.logs(&id, window).await?;
    }
}

pub async fn jobs(args: &JobsArgs) -> Result<(), CliError> {
    let format = args.opts.output;
    match &args.command {
        JobsCommand::Get { job, follow: wait } => {
            let api = api(&args.opts)?;
            let mut answer = api.status(job).await?;
            if *wait && output::job_state(&answer) == JobState::Pending {
                answer = follow(&api, job, format).await?;
            }
            show_job(&answer, format)
        }
    }
}

pub async fn login(args: &LoginArgs) -> Result<(), CliError> {
    let path = profile::path()
        .ok_or_else(|| CliError::Usage("no config directory: set XDG_CONFIG_HOME or HOME".to_string()))?;
    let key = match args.api_key.as_deref().filter(|k| !k.is_empty()) {
        Some(k) => k.to_string(),
        None => read_key()?,
    };
    let target = profile::target(args.url.as_deref(), Some(&key), &profile::Profile::default())?;
    // Checked before it is kept: a typo is found now, not at the next command.
    let api = Api::new(target.clone())?;
    let functions = api.list_functions().await?;
    profile::save(
        &path,
        &profile::Profile {
            url: Some(target.url.clone()),
            api_key: Some(key),
        },
    )?;
    out(&format!(
        "logged in to {} ({} functions); profile written to {}\n",
        target.url,
        functions.len(),
        path.display()
    ));
    Ok(())
}

/// The key from stdin: typed without echo on a terminal, else the first line.
fn read_key() -> Result<String, CliError> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("API key: ");
    }
    let echo = if tty { EchoOff::new() } else { None };
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    drop(echo);
    if tty {
        eprintln!();
    }
    read.map_err(|e| CliError::Usage(format!("cannot read the API key from stdin: {e}")))?;
    let key = line.trim().to_string();
    if key.is_empty() {
        return Err(CliError::Usage(
            "no API key: pass --api-key, set INFRA_API_KEY, or type it on stdin".to_string(),
        ));
    }
    Ok(key)
}

/// The terminal's echo turned off while the key is typed, back on when dropped.
struct EchoOff(libc::termios);

impl EchoOff {
    fn new() -> Option<EchoOff> {
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0 or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return None;
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: a termios read from this terminal, with ECHO cleared.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) } != 0 {
            return None;
        }
        Some(EchoOff(saved))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}

fn bytes(n: usize) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// A spinner with the elapsed time on stderr, only for people: when stderr
/// is a terminal and the output is a table.
struct Progress(Option<tokio::task::JoinHandle<()>>);

impl Progress {
    fn start(format: Format, message: String) -> Progress {
        if format != Format::Table || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let started = Instant::now();
        Progress(Some(tokio::spawn(async move {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            for i in 0usize.. {
                eprint!(
                    "\r{} {message} {:.1}s ",
                    FRAMES[i % FRAMES.len()],
                    started.elapsed().as_secs_f64()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })))
    }

    fn stop(self) {
        if let Some(task) = self.0 {
            task.abort();
            // Clear the spinner's line.
            eprint!("\r\x1b[2K");
        }
    }
}
