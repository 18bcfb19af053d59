//! The client verbs of `infra` (`infra fn …`, `infra jobs get`, `infra
//! login`, `infra completions`): the platform's public HTTP API from a
//! terminal or a script, without curl. Reference: `docs/cli.md`.
//!
//! `client` speaks HTTP, `output` renders (pure), `input` parses what users
//! type (pure), `deploy` packages code, `profile` finds the target and key,
//! `commands` runs the verbs; `error` holds the exit codes.

pub mod client;
pub mod commands;
pub mod deploy;
pub mod error;
pub mod input;
pub mod output;
pub mod profile;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use error::CliError;
pub use output::Format;

/// Where the API is and how to sign in; every client verb takes them.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// The API's base URL [default: the profile's, else http://127.0.0.1:8080].
    #[arg(long, env = "INFRA_URL", global = true)]
    pub url: Option<String>,
    /// The API key (sent as x-api-key) [default: the profile's].
    #[arg(long, env = "INFRA_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// Output: tables for people, or the API's answer as JSON or YAML.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct FnArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: FnCommand,
}

#[derive(Debug, Subcommand)]
pub enum FnCommand {
    /// Deploy a function from a source file, a folder (zipped for you) or a
    /// `Function` YAML (inline code). A function of the same name is updated.
    Deploy(DeployArgs),
    /// List functions.
    #[command(alias = "ls")]
    List,
    /// Show one function.
    Get {
        /// Name or id.
        function: String,
    },
    /// Run a function, synchronously (the result) or as a job (--async).
    Invoke(InvokeArgs),
    /// Show a function's recent invocations, oldest first.
    Logs(LogsArgs),
    /// Delete a function and its code.
    #[command(alias = "rm")]
    Delete {
        /// Name or id.
        function: String,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// A `.py`/`.js`/`.mjs`/`.zip` file, a folder, or a `.yaml` holding one `Function`.
    pub path: PathBuf,
    /// Name [default: the YAML's metadata.name, the folder's or the file's name].
    #[arg(long)]
    pub name: Option<String>,
    /// `python` or `nodejs` [default: from the file, or the folder's main.py / index.js].
    #[arg(long)]
    pub runtime: Option<String>,
    /// Memory in MB (128–10240).
    #[arg(long, value_name = "MB")]
    pub memory: Option<u32>,
    /// Longest a run may take: `30s`, `500ms`, `2m` (a bare number is seconds).
    #[arg(long, value_parser = input::duration_ms, value_name = "DURATION")]
    pub timeout: Option<u64>,
    /// Instances each worker keeps initialized (0–100).
    #[arg(long, value_name = "N")]
    pub min_warm: Option<u32>,
    /// `module.function` [default: main.handler / index.handler].
    #[arg(long)]
    pub handler: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// An environment variable of the function (repeatable); values are never shown back.
    #[arg(long = "env", value_parser = input::key_value, value_name = "KEY=VALUE")]
    pub env: Vec<(String, String)>,
    /// Any other setting of `POST /upload` by name, e.g. `--set maxRetries=0` (repeatable).
    #[arg(long = "set", value_parser = input::setting, value_name = "NAME=VALUE")]
    pub set: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// Name or id.
    pub function: String,
    /// The input: JSON, `@file` or `@-` (stdin) [default: {}].
    #[arg(short, long, value_name = "JSON|@FILE")]
    pub data: Option<String>,
    /// The AI model the function may use (`modelId`) [default: the platform's].
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Queue a job and answer at once with its id.
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Wait for the job's outcome (with --async, or when a sync wait runs out).
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Name or id.
    pub function: String,
    /// Keep printing new invocations (Ctrl-C stops).
    #[arg(short, long)]
    pub follow: bool,
    /// Most invocations shown (1–1000).
    #[arg(long, default_value = "20", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: JobsCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// A job's state, or its outcome once finished.
    Get {
        /// The job id (`jobId` of `infra fn invoke --async`).
        job: String,
        /// Wait until it has finished.
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The API's base URL [default: http://127.0.0.1:8080].
    #[arg(long, env = "INFRA_URL")]
    pub url: Option<String>,
    /// The API key; read from stdin when not given (not echoed on a terminal).
    #[arg(long, env = "INFRA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// A client verb to run.
pub enum Verb<'a> {
    Fn(&'a FnArgs),
    Jobs(&'a JobsArgs),
    Login(&'a LoginArgs),
}

/// Runs a client verb on a small runtime of its own and returns its exit
/// code; a failure is one line on stderr.
pub fn main(verb: Verb<'_>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async {
        match verb {
            Verb::Fn(a) => commands::function(a).await,
            Verb::Jobs(a) => commands::jobs(a).await,
            Verb::Login(a) => commands::login(a).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// `infra completions SHELL`: the completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory;
    use std::io::Write;
    let mut command = crate::config::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "infra", &mut script);
    // A closed pipe (`| head`) is not worth a panic.
    let _ = std::io::stdout().write_all(&script);
    ExitCode::SUCCESS
}
