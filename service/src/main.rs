//! `lobby-server`: the Lobby check-in service.
use anyhow::Context;
use clap::{Parser, Subcommand};
use lobby_service::auth::{bootstrap_credentials, parse_token_file, Credentials};
use lobby_service::config::{Role, Settings};
use lobby_service::core::{credentials, App};
use lobby_service::server::{check_transport, run};
use lobby_service::store::Store;
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
    /// Serve plaintext on a non-loopback address (tokens, photos and health QRs in the clear).
    /// Without it the server refuses to start there unless TLS is configured.
    #[arg(long)]
    insecure_plaintext: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Manage issued credentials in the store; a running server picks changes up within
    /// auth.reload_ms, without a restart.
    #[command(subcommand)]
    Credentials(CredentialsCmd),
    /// Seal every stored template with a new template key, then drop the old keys from the key
    /// file. The server must be stopped (it holds the data directory's lock); a rotation cut short
    /// leaves every template readable, and is finished by running it again.
    RotateTemplateKey {
        /// Who is rotating, for the audit trail.
        #[arg(long, default_value = "operator")]
        by: String,
    },
    /// Print the effective settings (embedded defaults, the --config file, LOBBY__* variables and
    /// the flags; secrets redacted) and check them: exit status 0 when the server would start with
    /// them, non-zero with the reason when not.
    CheckConfig,
}

#[derive(Subcommand)]
enum CredentialsCmd {
    /// Issue a token for a role, a holder (a named person, kiosk or system) and a property scope;
    /// prints the token once (only its sha256 is stored).
    Add {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Who holds it: recorded as the caller in decisions, overrides and the audit trail.
        #[arg(long)]
        holder: String,
        /// The property it is limited to (required for kiosks).
        #[arg(long)]
        property: Option<String>,
        /// Valid for this many hours (default: until revoked).
        #[arg(long)]
        expires_in_hours: Option<u32>,
        /// Who is issuing it, for the audit trail.
        #[arg(long, default_value = "operator")]
        by: String,
    },
    /// Every issued credential: token id, holder, role, property, created, expires, revoked.
    List,
    /// Revoke a credential by its token id (the part after `lby_`, before the second `_`).
    Revoke {
        token_id: String,
        #[arg(long, default_value = "operator")]
        by: String,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?}: use kiosk, staff or enroller"))
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
        .block_on(start(Args::parse()))
}

async fn start(mut args: Args) -> anyhow::Result<()> {
    let mut settings = Settings::load(args.config.as_deref())?;
    if let Some(l) = args.listen {
        settings.listen = l;
    }
    if let Some(d) = args.data_dir.take() {
        settings.data_dir = d;
    }
    match args.command.take() {
        Some(Command::Credentials(c)) => manage_credentials(&settings, c).await,
        Some(Command::RotateTemplateKey { by }) => rotate_template_key(&settings, &by).await,
        Some(Command::CheckConfig) => check_config(&args, &settings),
        None => serve(args, settings).await,
    }
}

/// One server per data directory, and a key rotation only while none runs: the lock is held for
/// the process's life (the kernel releases it however the process ends).
fn lock_data_dir(settings: &Settings) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let path = settings.data_dir.join("lobby.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "a lobby-server is running on {} (it holds {})",
            settings.data_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// `lobby-server check-config`: what `Settings::load` checks (types, ranges, unknown keys), plus
/// what the server checks before it listens (TLS files readable, no plaintext off loopback).
fn check_config(args: &Args, settings: &Settings) -> anyhow::Result<()> {
    print!("{}", settings.to_redacted_toml()?);
    lobby_service::server::tls_config(&settings.tls).context("tls")?;
    check_transport(settings.listen, &settings.tls, args.insecure_plaintext).map_err(anyhow::Error::msg)?;
    eprintln!("configuration OK");
    Ok(())
}

async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    lobby_service::store::open(settings).await
}

async fn rotate_template_key(settings: &Settings, by: &str) -> anyhow::Result<()> {
    let _lock = lock_data_dir(settings).context("stop the server before rotating the template key")?;
    let file = settings.template_key_path();
    let (new, old, n) = lobby_service::store::rotate_template_key(settings, by, lobby_service::core::now_ms()).await?;
    eprintln!(
        "template key {new} now seals every template ({n} re-sealed); keys {old:?} removed from {}",
        file.display()
    );
    Ok(())
}

async fn manage_credentials(settings: &Settings, cmd: CredentialsCmd) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    let fmt_ms = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%dT%H:%MZ").to_string())
            .unwrap_or_else(|| "-".into())
    };
    match cmd {
        CredentialsCmd::Add {
            role,
            holder,
            property,
            expires_in_hours,
            by,
        } => {
            let expires = expires_in_hours.map(|h| credentials_now() + i64::from(h) * 3_600_000);
            let (token, row) =
                credentials::add(store.as_ref(), role, &holder, property.as_deref(), expires, &by).await?;
            eprintln!(
                "issued {} for {} ({}, property {}, expires {}); the token is shown only now:",
                row.token_id,
                row.holder,
                row.role.as_str(),
                row.property.as_deref().unwrap_or("any"),
                fmt_ms(row.expires_at_ms)
            );
            println!("{token}");
        }
        CredentialsCmd::List => {
            println!("token_id\tholder\trole\tproperty\tcreated\texpires\trevoked");
            for r in store.credentials().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    r.token_id,
                    r.holder,
                    r.role.as_str(),
                    r.property.as_deref().unwrap_or("-"),
                    fmt_ms(Some(r.created_at_ms)),
                    fmt_ms(r.expires_at_ms),
                    fmt_ms(r.revoked_at_ms)
                );
            }
        }
        CredentialsCmd::Revoke { token_id, by } => {
            let r = credentials::revoke(store.as_ref(), &token_id, &by).await?;
            eprintln!(
                "revoked {} ({} {}); a running server refuses it within auth.reload_ms",
                r.token_id,
                r.role.as_str(),
                r.holder
            );
        }
    }
    Ok(())
}

fn credentials_now() -> i64 {
    lobby_service::core::now_ms()
}

async fn serve(args: Args, settings: Settings) -> anyhow::Result<()> {
    check_transport(settings.listen, &settings.tls, args.insecure_plaintext).map_err(anyhow::Error::msg)?;
    if !settings.tls.enabled() && !settings.listen.ip().is_loopback() {
        tracing::warn!(addr = %settings.listen, "--insecure-plaintext: bearer tokens, face photos and health QRs cross the network in the clear");
    }
    let _lock = lock_data_dir(&settings)?;
    let creds = load_credentials(&settings)?;
    let model_dir = settings.model_dir();
    let paths = lobby_models::ensure(&model_dir, &settings.model_source())
        .context("models are not ready; the service cannot start")?;
    let vision = Arc::new(Vision::load(&paths, App::vision_config(&settings))?);
    tracing::info!(models = %model_dir.display(), "models verified and loaded");
    let listen = settings.listen;
    let app = Arc::new(App::start(settings, vision).await?);
    tracing::info!(
        public_key = %app.audit_public_key(),
        file = %app.settings().signing_key_path().display(),
        checkpoints = %app.settings().checkpoint_path().display(),
        "audit checkpoints are signed with this key (keep it to verify exported trails)"
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(addr = %listener.local_addr()?, tls = settings_tls(&app), "lobby-server listening");
    let shutdown = async {
        stop_signal().await;
        tracing::info!("shutting down");
    };
    run(listener, shutdown, app, Arc::new(creds)).await
}

fn settings_tls(app: &App) -> &'static str {
    let t = &app.settings().tls;
    match (t.enabled(), t.client_ca.is_some()) {
        (false, _) => "off (plaintext)",
        (true, false) => "on",
        (true, true) => "on, client certificates verified (mutual TLS)",
    }
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
