//! `lobby-server`: the Lobby check-in service.
use anyhow::Context;
use clap::Parser;
use lobby_service::auth::{bootstrap_credentials, parse_token_file, Credentials};
use lobby_service::config::Settings;
use lobby_service::core::App;
use lobby_service::server::run;
use lobby_service::vision::Vision;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "lobby-server", version, about = "Lobby contactless check-in service")]
struct Args {
    /// Settings file (TOML); every key is optional and overrides the embedded defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default 127.0.0.1:50051].
    #[arg(long, env = "LOBBY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory: the SQLite store, installed models, credentials [default lobby-data].
    #[arg(long, env = "LOBBY_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    // Faiss and OpenBLAS must not start their own thread pools on top of ours. Set before any thread
    // exists (the async runtime is built below).
    if std::env::var_os("OMP_NUM_THREADS").is_none() {
        std::env::set_var("OMP_NUM_THREADS", "1");
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(Args::parse()))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let mut settings = Settings::load(args.config.as_deref())?;
    if let Some(l) = args.listen {
        settings.listen = l;
    }
    if let Some(d) = args.data_dir {
        settings.data_dir = d;
    }
    let creds = load_credentials(&settings)?;
    let model_dir = settings.model_dir();
    let paths = lobby_models::ensure(&model_dir, &settings.model_source())
        .context("models are not ready; the service cannot start")?;
    let vision = Arc::new(Vision::load(&paths, App::vision_config(&settings))?);
    tracing::info!(models = %model_dir.display(), "models verified and loaded");
    let listen = settings.listen;
    let app = Arc::new(App::start(settings, vision).await?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(addr = %listener.local_addr()?, "lobby-server listening");
    let shutdown = async {
        stop_signal().await;
        tracing::info!("shutting down");
    };
    run(listener, shutdown, app, Arc::new(creds)).await
}

/// SIGTERM (a service manager's stop) or Ctrl-C, whichever comes first.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Tokens from the settings and token files; with none configured, the data directory's generated
/// credentials (made on first start, see README).
fn load_credentials(s: &Settings) -> anyhow::Result<Credentials> {
    let mut entries = s.auth.tokens.clone();
    for f in &s.auth.token_files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading token file {}", f.display()))?;
        entries.extend(parse_token_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?);
    }
    if entries.is_empty() {
        let (generated, tokens_file) = bootstrap_credentials(&s.data_dir, "demo-hotel")?;
        if let Some(path) = tokens_file {
            tracing::warn!(file = %path.display(), "no credentials configured: generated one token per role (kiosk for property demo-hotel); read them from this file, then delete it");
        } else {
            tracing::info!(file = %s.data_dir.join("credentials.toml").display(), "using generated credentials");
        }
        entries = generated;
    }
    Credentials::new(&entries).map_err(|e| anyhow::anyhow!(e))
}
