//! `lobby-server`: the Lobby check-in service.
use anyhow::Context;
use clap::Parser;
use lobby_models::{ensure, Source};
use lobby_service::server::{run, AppState};
use lobby_service::vision::{Vision, VisionConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "lobby-server", version, about = "Lobby contactless check-in service")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LOBBY_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Data directory (SQLite store, installed models).
    #[arg(long, env = "LOBBY_DATA_DIR", default_value = "lobby-data")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let model_dir = std::env::var_os("LOBBY_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| args.data_dir.join("models"));
    let source = Source::from_env();
    let paths = ensure(&model_dir, &source).context("models are not ready; the service cannot start")?;
    let vision = Arc::new(Vision::load(&paths, VisionConfig::default())?);
    tracing::info!(models = %model_dir.display(), "models verified and loaded");
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "lobby-server listening");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    run(listener, shutdown, Arc::new(AppState { vision })).await
}
