use std::process::ExitCode;

use clap::Parser;
use infra_controller::app::{self, Running};
use infra_controller::cli;
use infra_controller::config::{Cli, Command, ConfigErrors};
use infra_controller::telemetry;

fn main() -> ExitCode {
    // Before any client exists (kube, AWS, Redis): one TLS crypto provider.
    infra_controller::tls::install_crypto_provider();
    let cli = Cli::parse();
    // Validate before anything starts: every problem at once, exit 1.
    let role = match &cli.command {
        Command::Up(a) => a.validate().map(|c| Role::Up(Box::new(c))),
        Command::Api(a) => a.validate().map(|c| Role::Api(Box::new(c))),
        Command::Worker(a) => a.validate().map(|c| Role::Worker(Box::new(c))),
        Command::Operator(a) => a.validate().map(|c| Role::Operator(Box::new(c))),
        Command::Crd => {
            return match infra_controller::operator::crd::crd_yaml() {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot render the CRD: {e}");
                    ExitCode::from(1)
                }
            }
        }
        // The client verbs: no server, no log lines; their own exit codes.
        Command::Function(a) => return cli::main(cli::Verb::Fn(a)),
        Command::Jobs(a) => return cli::main(cli::Verb::Jobs(a)),
        Command::Login(a) => return cli::main(cli::Verb::Login(a)),
        Command::Completions { shell } => return cli::completions(*shell),
    };
    let role = match role {
        Ok(r) => r,
        Err(ConfigErrors(problems)) => {
            eprintln!("{}", ConfigErrors(problems));
            return ExitCode::from(1);
        }
    };
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infra failed: {e:#}");
            ExitCode::from(1)
        }
    }
}

enum Role {
    Up(Box<infra_controller::config::UpConfig>),
    Api(Box<infra_controller::config::ApiConfig>),
    Worker(Box<infra_controller::config::WorkerConfig>),
    Operator(Box<infra_controller::config::OperatorConfig>),
}

async fn run(role: Role) -> anyhow::Result<()> {
    let running: Running = match role {
        Role::Up(cfg) => {
            let key_file = cfg.data_dir.join("api-key");
            let running = app::start_up(*cfg).await?;
            // The banner goes to stderr, not the JSON log: the key must never be logged.
            eprintln!("Infra Controller is up: http://{}", running.addr);
            match (&running.api_key, running.api_key_generated) {
                (Some(key), true) => {
                    eprintln!("API key (generated, shown once; kept in {}): {key}", key_file.display())
                }
                _ => eprintln!("API key: INFRA_API_KEY, or the one kept in {}", key_file.display()),
            }
            running
        }
        Role::Api(cfg) => app::start_api(*cfg).await?,
        Role::Worker(cfg) => app::start_worker(*cfg).await?,
        Role::Operator(cfg) => app::start_operator(*cfg).await?,
    };
    tokio::select! {
        _ = wait_for_signal() => tracing::info!("shutdown requested; draining"),
        // A role that cannot go on (e.g. the operator without its CRD) stops by itself.
        _ = running.stopping() => {}
    }
    running.shutdown();
    running.wait().await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
