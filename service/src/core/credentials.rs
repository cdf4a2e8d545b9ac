//! Credentials with a life cycle: the token format, issuing, listing and revoking. Tokens are never
//! stored, only their sha256; an issued token reads `lby_<token id>_<secret>` so that its id can
//! be named (in logs, in `credentials revoke`) without the secret. The auth layer checks them.

use super::{App, AppError, Result};
use crate::config::Role;
use crate::store::{CredentialRow, Store};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn hex_digest(h: &[u8; 32]) -> String {
    hex::encode(h)
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A token for a fixed credential (its holder is named in the settings).
pub fn new_token() -> String {
    format!("lby_{}", random_hex(32))
}

/// A new issued credential: the token (shown once, never stored) and the row that is stored.
pub fn issue(
    role: Role,
    holder: &str,
    property: Option<&str>,
    expires_at_ms: Option<i64>,
    now_ms: i64,
) -> std::result::Result<(String, CredentialRow), String> {
    validate_holder(holder)?;
    if role == Role::Kiosk && property.unwrap_or("").is_empty() {
        return Err("a kiosk credential must name its property".into());
    }
    if let Some(p) = property {
        validate_holder(p).map_err(|e| format!("property: {e}"))?;
    }
    if expires_at_ms.is_some_and(|e| e <= now_ms) {
        return Err("the expiry is in the past".into());
    }
    let token_id = format!("t{}", random_hex(6));
    let token = format!("lby_{token_id}_{}", random_hex(32));
    let row = CredentialRow {
        token_id,
        holder: holder.to_string(),
        role,
        property: property.map(str::to_string),
        sha256: hex_digest(&hash_token(&token)),
        created_at_ms: now_ms,
        expires_at_ms,
        revoked_at_ms: None,
    };
    Ok((token, row))
}

/// Holder and property names: 1-64 of `A-Z a-z 0-9 . _ -` (they appear in logs and the audit).
pub fn validate_holder(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1-64 characters of letters, digits, '.', '_' or '-'"
        ))
    }
}

/// The token id of an issued token (`lby_<id>_<secret>`), if it has that shape.
pub fn token_id(token: &str) -> Option<&str> {
    let (id, secret) = token.strip_prefix("lby_")?.split_once('_')?;
    (id.len() <= 32 && !secret.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(id)
}

/// Issues a credential and stores it (with its audit entry); returns the token, shown once.
pub async fn add(
    store: &dyn Store,
    role: Role,
    holder: &str,
    property: Option<&str>,
    expires_at_ms: Option<i64>,
    actor: &str,
) -> Result<(String, CredentialRow)> {
    let now = super::now_ms();
    let (token, row) = issue(role, holder, property, expires_at_ms, now).map_err(AppError::InvalidArgument)?;
    store.add_credential(&row, actor, now).await?;
    Ok((token, row))
}

/// Revokes an issued credential by its token id (with its audit entry).
pub async fn revoke(store: &dyn Store, token_id: &str, actor: &str) -> Result<CredentialRow> {
    Ok(store.revoke_credential(token_id, actor, super::now_ms()).await?)
}

impl App {
    /// The issued credentials, as the store has them now (the auth layer re-reads them).
    pub async fn issued_credentials(&self) -> Result<Vec<CredentialRow>> {
        Ok(self.store.credentials().await?)
    }
}
