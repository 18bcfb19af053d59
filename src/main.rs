use std::process::ExitCode;

use clap::Parser;
use infra_controller::config::{Cli, Command};
use infra_controller::{app, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => {
            let cfg = match args.validate() {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("{e}");
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
            match runtime.block_on(up(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("infra up failed: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn up(cfg: infra_controller::config::UpConfig) -> anyhow::Result<()> {
    let data_dir = cfg.data_dir.clone();
    let running = app::start_up(cfg).await?;
    // The banner goes to stderr, not the JSON log: the key must never be logged.
    eprintln!("Infra Controller is up: http://{}", running.addr);
    if running.api_key_generated {
        eprintln!(
            "API key (generated, shown once; kept in {}): {}",
            data_dir.join("api-key").display(),
            running.api_key
        );
    } else {
        eprintln!(
            "API key: the one you configured (or {} )",
            data_dir.join("api-key").display()
        );
    }
    wait_for_signal().await;
    tracing::info!("shutdown requested; draining");
    running.shutdown();
    running.wait().await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
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
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
