//! The audit trail's anchors (`store::audit`): the server's Ed25519 signing key, and signed
//! checkpoints written to the store and appended to a file outside it. Verification checks the
//! chain against both.

use super::{now_ms, App, AppError, Result};
use crate::config::Settings;
use crate::store::{audit, Checkpoint, Verification, Verifier};
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Anchor {
    key: SigningKey,
    file: PathBuf,
    every_entries: i64,
    every: Duration,
    /// The entry the last checkpoint covered, and when it was written (the start, before any).
    last: tokio::sync::Mutex<(i64, Instant)>,
}

impl Anchor {
    /// Loads the signing key, or makes one (0600) with its public key beside it (`.pub`, base64) on
    /// first start. A key file others may read is refused.
    pub fn open(settings: &Settings, last_checkpoint: i64) -> anyhow::Result<Anchor> {
        let path = settings.signing_key_path();
        let key = if path.exists() {
            load_key(&path)?
        } else {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            crate::auth::write_private(&path, hex::encode(key.to_bytes()).as_bytes())
                .map_err(|e| anyhow::anyhow!("writing the audit signing key {}: {e}", path.display()))?;
            key
        };
        let public = public_key_b64(&key.verifying_key());
        std::fs::write(pub_path(&path), format!("{public}\n"))
            .map_err(|e| anyhow::anyhow!("writing the audit public key: {e}"))?;
        Ok(Anchor {
            key,
            file: settings.checkpoint_path(),
            every_entries: settings.audit.checkpoint_every_entries as i64,
            every: Duration::from_secs(settings.audit.checkpoint_every_secs),
            last: tokio::sync::Mutex::new((last_checkpoint, Instant::now())),
        })
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// How often the server looks whether a checkpoint is due.
    pub fn tick(&self) -> Duration {
        self.every.min(Duration::from_secs(1))
    }

    /// The checkpoint file's checkpoints (none when it does not exist yet).
    fn read_file(&self) -> std::result::Result<Vec<Checkpoint>, String> {
        read_checkpoint_file(&self.file)
    }

    /// Appends one checkpoint to the file and syncs it.
    fn append(&self, cp: &Checkpoint) -> std::io::Result<()> {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&self.file)?;
        let line = serde_json::to_string(cp).map_err(std::io::Error::other)?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()
    }
}

/// The public key as base64 (32 bytes), as printed at start and written to the `.pub` file.
pub fn public_key_b64(k: &VerifyingKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(k.to_bytes())
}

fn pub_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "the audit signing key {} can be read by others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
    }
    let text = std::fs::read_to_string(path)?;
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| anyhow::anyhow!("{} is not an audit signing key (64 hex characters)", path.display()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// A checkpoint file's lines (a missing file has none); a line that is not a checkpoint is named.
pub fn read_checkpoint_file(path: &Path) -> std::result::Result<Vec<Checkpoint>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("the checkpoint file cannot be read: {e}")),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|_| format!("line {} of the checkpoint file is not a checkpoint", i + 1))
        })
        .collect()
}

impl App {
    /// Writes a signed checkpoint of the trail's head when one is due (`[audit]`: entries not
    /// covered, or time since the last) or `force`d (at shutdown); the checkpoint written, if any.
    pub async fn checkpoint_audit(&self, force: bool) -> Result<Option<Checkpoint>> {
        let a = &self.anchor;
        let mut last = a.last.lock().await;
        let Some((seq, head)) = self.store.audit_head().await? else {
            return Ok(None);
        };
        let uncovered = seq - last.0;
        if uncovered <= 0 || !(force || uncovered >= a.every_entries || last.1.elapsed() >= a.every) {
            return Ok(None);
        }
        let cp = Checkpoint::sign(&a.key, seq, &head, now_ms());
        self.store.add_checkpoint(&cp).await?;
        *last = (seq, Instant::now());
        let (file_cp, anchor) = (cp.clone(), Arc::clone(&self.anchor));
        tokio::task::spawn_blocking(move || anchor.append(&file_cp))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?
            .map_err(|e| AppError::Internal(format!("the checkpoint file was not written: {e}")))?;
        Ok(Some(cp))
    }

    /// Checks the audit trail: every entry's hash and link, and the chain against every signed
    /// checkpoint of the store and of the checkpoint file.
    pub async fn verify_audit(&self) -> Result<Verification> {
        let anchor = Arc::clone(&self.anchor);
        let file = tokio::task::spawn_blocking(move || anchor.read_file())
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?;
        let broken = |seq: i64, why: String| Verification {
            entries: 0,
            first_broken: Some((seq, why)),
            checkpoints: 0,
        };
        let file = match file {
            Ok(f) => f,
            Err(why) => return Ok(broken(1, why)),
        };
        let all = match audit::merge_checkpoints(self.store.checkpoints().await?, file) {
            Ok(all) => all,
            Err((seq, why)) => return Ok(broken(seq.max(1), why)),
        };
        Ok(self
            .store
            .verify_audit(Verifier::anchored(all, &self.anchor.verifying_key()))
            .await?)
    }

    /// What an export begins with: the public key, every signed checkpoint (store and file, merged)
    /// and the trail's length now. A checkpoint is written first, so the export is anchored up to
    /// its end.
    pub async fn audit_export_head(&self) -> Result<(String, Vec<Checkpoint>, i64)> {
        self.checkpoint_audit(true).await?;
        let anchor = Arc::clone(&self.anchor);
        let file = tokio::task::spawn_blocking(move || anchor.read_file())
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?
            .map_err(AppError::Internal)?;
        let all = audit::merge_checkpoints(self.store.checkpoints().await?, file)
            .map_err(|(seq, why)| AppError::Internal(format!("checkpoint {seq}: {why}")))?;
        let entries = all.last().map(|c| c.seq).unwrap_or(0);
        Ok((self.audit_public_key(), all, entries))
    }

    /// A page of the audit trail for an export.
    pub async fn audit_page(&self, after: i64, limit: usize) -> Result<Vec<audit::AuditEntry>> {
        Ok(self.store.audit_page(after, limit).await?)
    }

    /// How often the server looks whether a checkpoint is due.
    pub fn audit_checkpoint_tick(&self) -> Duration {
        self.anchor.tick()
    }

    /// The key that signs the audit checkpoints.
    pub fn audit_public_key(&self) -> String {
        public_key_b64(&self.anchor.verifying_key())
    }
}
