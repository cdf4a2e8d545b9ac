//! `lobby-models`: install or verify the models the service loads.
use clap::{Parser, Subcommand};
use lobby_models::{default_model_dir, install, verify, Installed, Manifest, Source};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "lobby-models", about = "Install and verify Lobby's models (sha256-checked)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Copy or download every model into DEST, verifying sha256.
    Install {
        /// Folder the service loads models from [env LOBBY_MODEL_DIR, default lobby-data/models].
        #[arg(long)]
        dest: Option<PathBuf>,
        /// Mirror folder to copy from [env LOBBY_MODEL_MIRROR, default ../shared/models].
        #[arg(long, conflicts_with = "base_url")]
        mirror: Option<PathBuf>,
        /// Base URL to download from [env LOBBY_MODEL_BASE_URL].
        #[arg(long)]
        base_url: Option<String>,
    },
    /// Check the installed models by sha256.
    Verify {
        #[arg(long)]
        dest: Option<PathBuf>,
    },
    /// Print the manifest.
    List,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Install { dest, mirror, base_url } => {
            let dest = dest.unwrap_or_else(default_model_dir);
            let source = match (mirror, base_url) {
                (Some(m), _) => Source::Mirror(m),
                (None, Some(u)) => Source::BaseUrl(u),
                (None, None) => Source::from_env(),
            };
            for (file, what) in install(&dest, &source)? {
                let what = match what {
                    Installed::AlreadyPresent => "already installed, sha256 ok",
                    Installed::Fetched => "installed, sha256 ok",
                };
                println!("{file}: {what}");
            }
            println!("models in {} (from {source})", dest.display());
        }
        Cmd::Verify { dest } => {
            let dest = dest.unwrap_or_else(default_model_dir);
            verify(&dest)?;
            println!("all models in {} verified", dest.display());
        }
        Cmd::List => {
            for m in Manifest::embedded().models {
                println!(
                    "{:<14} {:<48} {}  {} B  {}\n    {}\n    in:  {}\n    out: {}",
                    m.id, m.file, m.sha256, m.bytes, m.licence, m.role, m.input, m.output
                );
            }
        }
    }
    Ok(())
}
