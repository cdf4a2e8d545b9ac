//! Audit bundles: export the trail from a server (staff), verify a bundle offline.

use crate::proto as pv;
use crate::Authed;
use anyhow::{Context, Result};
use lobby_proto::audit::{self, AuditEntry, BundleHeader, BundleLine, Checkpoint, Verification};
use pv::front_desk_service_client::FrontDeskServiceClient;
use std::io::Write;
use std::path::Path;

/// Streams the trail into a bundle at `path` (written beside it and renamed when complete); returns
/// the entries and checkpoints written.
pub async fn export(c: &mut FrontDeskServiceClient<Authed>, path: &Path) -> Result<(u64, u64)> {
    let mut stream = c.export_audit_trail(pv::ExportAuditTrailRequest {}).await?.into_inner();
    let head = stream.message().await?.context("the server sent nothing")?;
    let tmp = path.with_extension("partial");
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
    let header = BundleHeader {
        format: audit::BUNDLE_FORMAT.into(),
        public_key: head.public_key.clone(),
        exported_at_ms: chrono::Utc::now().timestamp_millis(),
        checkpoints: head.checkpoints.len() as u64,
        entries: head.total_entries,
    };
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    for c in &head.checkpoints {
        let line = BundleLine::Checkpoint(Checkpoint::from(c));
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    }
    let mut n = 0u64;
    while let Some(chunk) = stream.message().await? {
        for e in chunk.entries {
            let line = BundleLine::Entry(AuditEntry::from(e));
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
            n += 1;
        }
    }
    if n != head.total_entries {
        anyhow::bail!("the export ended after {n} of {} entries", head.total_entries);
    }
    out.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok((n, header.checkpoints))
}

/// Verifies the bundle at `path` against `public_key` (base64, or a file holding it).
pub fn verify_file(path: &Path, public_key: &str) -> Result<Verification> {
    let key_text = match std::fs::read_to_string(public_key) {
        Ok(t) => t,
        Err(_) => public_key.to_string(),
    };
    let key = audit::parse_public_key(&key_text).map_err(anyhow::Error::msg)?;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    audit::verify_bundle(std::io::BufReader::new(f), &key).map_err(anyhow::Error::msg)
}
