//! `huitong`: the one binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use server::Config;

#[derive(Parser)]
#[command(name = "huitong", version, about = "Huitong (会通) video conferencing")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every plane in one process on embedded defaults (SQLite, in-process routing, local disk).
    Serve {
        /// Configuration file (default: ./huitong.toml if present).
        #[arg(long, env = "HUITONG_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration (defaults → file → environment) as JSON.
    Config {
        #[arg(long, env = "HUITONG_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Directory maintenance on the configured database (import, export).
    Admin {
        #[arg(long, env = "HUITONG_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: server::admin_cli::AdminCmd,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { config } => {
            let cfg = Config::load(config.as_deref())?;
            init_logging(&cfg.log);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config { config } => {
            let cfg = Config::load(config.as_deref())?;
            println!("{}", json_string(&cfg)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Admin { config, cmd } => {
            let cfg = Config::load(config.as_deref())?;
            // Warnings only: informational lines would tear the progress bar.
            init_logging("warn");
            server::admin_cli::run(cmd, cfg)
        }
    }
}

fn json_string(cfg: &Config) -> anyhow::Result<String> {
    let v = serde_json::to_value(cfg)?;
    Ok(serde_json::to_string_pretty(&v)?)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUITONG_LOG_FILTER")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let running = server::start(cfg).await.context("starting huitong")?;
    // Tests and orchestration read this line to learn the bound ports.
    println!(
        "HUITONG_READY {}",
        serde_json::json!({ "http": running.http_addr.to_string(), "udp": running.udp_addr.to_string(), "advertised": running.advertised.to_string() })
    );
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    running.shutdown().await;
    Ok(())
}
