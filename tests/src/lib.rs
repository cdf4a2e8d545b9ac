//! Shared helpers for Lobby's end-to-end tests: where the real photos and models are, and one
//! loaded [`Vision`] per test binary.
//!
//! Data: `LOBBY_TEST_DATA` or `../shared/data` beside the repository. Models: installed into
//! `LOBBY_MODEL_DIR` (default `target/lobby-test-models`) from `LOBBY_MODEL_MIRROR` (default
//! `../shared/models`) or `LOBBY_MODEL_BASE_URL`. When either is absent a test says so loudly and
//! is skipped — except under CI (`CI=true`), where it fails.

use lobby_models::{ensure, ModelPaths, Source};
use lobby_service::vision::{Vision, VisionConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

/// Fails under CI, otherwise prints a loud skip notice. Returns `None` so callers can `return`.
pub fn missing<T>(what: &str) -> Option<T> {
    if in_ci() {
        panic!("{what} — required under CI=true");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {what} !!!!!!!!\n");
    None
}

/// The data folder, or `None` (after a loud notice) when it is absent outside CI.
pub fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LOBBY_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/data"));
    if dir.join("README.md").exists() {
        Some(dir)
    } else {
        missing(&format!(
            "test photos not found at {} (set LOBBY_TEST_DATA)",
            dir.display()
        ))
    }
}

/// The verified models, installed from the mirror on first use.
pub fn model_paths() -> Option<ModelPaths> {
    static PATHS: OnceLock<Result<ModelPaths, String>> = OnceLock::new();
    let r = PATHS.get_or_init(|| {
        let dir = std::env::var_os("LOBBY_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/lobby-test-models"));
        // As `Source::from_env`, but the default mirror is found from the repository, not the cwd.
        let source = match std::env::var("LOBBY_MODEL_BASE_URL").ok().filter(|u| !u.is_empty()) {
            Some(url) => Source::BaseUrl(url),
            None => Source::Mirror(
                std::env::var_os("LOBBY_MODEL_MIRROR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| workspace_root().join("../shared/models")),
            ),
        };
        ensure(&dir, &source).map_err(|e| e.to_string())
    });
    match r {
        Ok(p) => Some(p.clone()),
        Err(e) => missing(&format!("models unavailable: {e}")),
    }
}

/// One shared pipeline per test binary (models load once).
pub fn vision() -> Option<Arc<Vision>> {
    static VISION: OnceLock<Arc<Vision>> = OnceLock::new();
    let paths = model_paths()?;
    Some(
        VISION
            .get_or_init(|| Arc::new(Vision::load(&paths, VisionConfig::default()).expect("models load")))
            .clone(),
    )
}

/// Reads a file under the data folder.
pub fn read(data: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(data.join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}
