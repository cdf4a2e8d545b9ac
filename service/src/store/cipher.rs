//! Secrets of the store: the template keys (templates are stored sealed with XChaCha20-Poly1305,
//! each row naming the key that sealed it, so keys can rotate) and the keyed hashes that stand for
//! a guest or a decision's personal fields in the audit trail (HMAC-SHA256 under a key kept in the
//! guest's or the decision's own row: deleting that key, at erasure or by retention, leaves the
//! trail's references pointing at nobody).
//!
//! The template keys come from the environment variable `LOBBY_TEMPLATE_KEYS` when it is set (a
//! secret manager's injection), else from the key file (`store.template_key_file`, made 0600 on
//! first start). Both hold `<key id>:<64 hex>` entries, one per line (or comma-separated); the last
//! is the current key, the others only open rows not yet re-sealed (`lobby-server
//! rotate-template-key`).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The environment variable that, when set, holds the template keys instead of the key file.
pub const KEYS_ENV: &str = "LOBBY_TEMPLATE_KEYS";

const NONCE: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The template keys: every key a stored row may name, the last one sealing new rows.
pub struct TemplateKeys {
    keys: Vec<(String, XChaCha20Poly1305)>,
    /// Where they came from: the file they can be rotated in, or None for the environment.
    file: Option<PathBuf>,
}

impl std::fmt::Debug for TemplateKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("TemplateKeys")
            .field("ids", &ids)
            .field("file", &self.file)
            .finish()
    }
}

fn random32() -> Zeroizing<[u8; 32]> {
    use rand::RngCore;
    let mut k = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(k.as_mut());
    k
}

/// Refuses a secret file that others may read.
pub(crate) fn check_private(path: &Path, what: &str) -> Result<(), KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| KeyError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Invalid(format!(
                "the {what} {} can be read by others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let _ = (path, what);
    Ok(())
}

impl TemplateKeys {
    /// The keys in `text` (`id:hex` entries); the last is current.
    pub fn parse(text: &str, file: Option<PathBuf>) -> Result<TemplateKeys, KeyError> {
        let mut keys = Vec::new();
        for entry in text.split([',', '\n']).map(str::trim).filter(|e| !e.is_empty()) {
            let (id, hex_key) = entry
                .split_once(':')
                .ok_or_else(|| KeyError::Invalid("a template key entry is not <id>:<64 hex>".into()))?;
            let id = id.trim();
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(KeyError::Invalid(format!(
                    "template key id {id:?}: use letters, digits, - and _"
                )));
            }
            let bytes = Zeroizing::new(hex::decode(hex_key.trim()).unwrap_or_default());
            if bytes.len() != 32 {
                return Err(KeyError::Invalid(format!("template key {id}: not 64 hex characters")));
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err(KeyError::Invalid(format!("template key id {id} appears twice")));
            }
            keys.push((
                id.to_string(),
                XChaCha20Poly1305::new_from_slice(&bytes).expect("32-byte key"),
            ));
        }
        if keys.is_empty() {
            return Err(KeyError::Invalid("no template key given".into()));
        }
        Ok(TemplateKeys { keys, file })
    }

    /// From `LOBBY_TEMPLATE_KEYS` if set, else from `file`, made (0600, one new key) if missing.
    pub fn load(file: &Path) -> Result<TemplateKeys, KeyError> {
        if let Ok(text) = std::env::var(KEYS_ENV) {
            let text = Zeroizing::new(text);
            return TemplateKeys::parse(&text, None);
        }
        if !file.exists() {
            let line = Zeroizing::new(format!("k1:{}\n", hex::encode(random32().as_ref())));
            crate::auth::write_private(file, line.as_bytes()).map_err(|source| KeyError::Io {
                path: file.to_path_buf(),
                source,
            })?;
        }
        check_private(file, "template key file")?;
        let text = Zeroizing::new(std::fs::read_to_string(file).map_err(|source| KeyError::Io {
            path: file.to_path_buf(),
            source,
        })?);
        TemplateKeys::parse(&text, Some(file.to_path_buf()))
    }

    /// One fresh key kept nowhere (tests and throwaway stores).
    pub fn ephemeral() -> TemplateKeys {
        let text = Zeroizing::new(format!("e1:{}", hex::encode(random32().as_ref())));
        TemplateKeys::parse(&text, None).expect("a well-formed key")
    }

    /// The key that seals new rows.
    pub fn current_id(&self) -> &str {
        &self.keys[self.keys.len() - 1].0
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Seals `plain` under the current key, bound to `aad` (the row's owner): nonce || ciphertext.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> (String, Vec<u8>) {
        use rand::RngCore;
        let (id, cipher) = &self.keys[self.keys.len() - 1];
        let mut nonce = [0u8; NONCE];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .expect("XChaCha20-Poly1305 seals any message of a template's size");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        (id.clone(), out)
    }

    /// Opens a row sealed by `seal` under key `id`; None when the key is unknown or the row (or its
    /// owner) was altered.
    pub fn open(&self, id: &str, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (_, cipher) = self.keys.iter().find(|(k, _)| k == id)?;
        if sealed.len() < NONCE {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE);
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
            .ok()
    }

    /// Appends a new key to the key file (it becomes current) and returns the keys with it. The
    /// old keys stay until [`TemplateKeys::keep_only_current`], after every row is re-sealed: a
    /// rotation cut short by a crash leaves every row readable.
    pub fn add_key(&self) -> Result<TemplateKeys, KeyError> {
        let file = self.file.as_ref().ok_or_else(|| {
            KeyError::Invalid(format!(
                "the template keys come from {KEYS_ENV}; rotate them where they are kept, with the old key after the new one's line"
            ))
        })?;
        let n = (1..)
            .map(|i| format!("k{}", self.keys.len() + i))
            .find(|id| self.keys.iter().all(|(k, _)| k != id))
            .expect("an unused id");
        let old = Zeroizing::new(std::fs::read_to_string(file).map_err(|source| KeyError::Io {
            path: file.clone(),
            source,
        })?);
        let text = Zeroizing::new(format!(
            "{}\n{n}:{}\n",
            old.trim_end(),
            hex::encode(random32().as_ref())
        ));
        replace_private(file, &text)?;
        TemplateKeys::parse(&text, Some(file.clone()))
    }

    /// Rewrites the key file with the current key only (every row is sealed with it).
    pub fn keep_only_current(&self) -> Result<(), KeyError> {
        let Some(file) = &self.file else { return Ok(()) };
        let text = Zeroizing::new(std::fs::read_to_string(file).map_err(|source| KeyError::Io {
            path: file.clone(),
            source,
        })?);
        let id = self.current_id();
        let line = text
            .split([',', '\n'])
            .map(str::trim)
            .find(|e| e.split_once(':').is_some_and(|(k, _)| k.trim() == id))
            .ok_or_else(|| KeyError::Invalid(format!("key {id} is no longer in {}", file.display())))?;
        replace_private(file, &Zeroizing::new(format!("{line}\n")))
    }
}

/// Replaces a 0600 file atomically (a temporary file beside it, synced, renamed over it).
fn replace_private(file: &Path, text: &str) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: file.to_path_buf(),
        source,
    };
    let tmp = file.with_extension("tmp");
    crate::auth::write_private(&tmp, text.as_bytes()).map_err(io)?;
    std::fs::rename(&tmp, file).map_err(io)?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// What a template's seal is bound to: the row's owner and meaning, so a sealed vector moved to
/// another guest, property, kind or model no longer opens.
pub fn template_aad(guest_id: &str, property: &str, kind: &str, model_id: &str) -> Vec<u8> {
    format!("lobby-template-v1\0{guest_id}\0{property}\0{kind}\0{model_id}").into_bytes()
}

/// A new random key for a guest's or a decision's keyed hashes.
pub fn new_subject_key() -> Vec<u8> {
    random32().to_vec()
}

/// HMAC-SHA256 of `what` under `key`, as hex (first 16 bytes: a reference, not a secret).
pub fn keyed_hash(key: &[u8], what: &str) -> String {
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(what.as_bytes());
    hex::encode(&m.finalize().into_bytes()[..16])
}

/// A guest's pseudonymous reference in the audit trail and in decisions.
pub fn guest_ref(key: &[u8]) -> String {
    format!("p_{}", keyed_hash(key, "lobby-guest-ref-v1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_rows_open_only_with_their_key_and_owner() {
        let k = TemplateKeys::parse(&format!("a:{}", "11".repeat(32)), None).unwrap();
        let (id, sealed) = k.seal(b"owner-1", b"vector bytes");
        assert_eq!(id, "a");
        assert!(!sealed.windows(12).any(|w| w == b"vector bytes"));
        assert_eq!(k.open("a", b"owner-1", &sealed).unwrap(), b"vector bytes");
        assert!(k.open("a", b"owner-2", &sealed).is_none(), "moved to another owner");
        assert!(k.open("b", b"owner-1", &sealed).is_none(), "unknown key");
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(k.open("a", b"owner-1", &bad).is_none(), "altered");
        let two = TemplateKeys::parse(&format!("a:{}\nb:{}", "11".repeat(32), "22".repeat(32)), None).unwrap();
        assert_eq!(two.current_id(), "b");
        assert_eq!(two.open("a", b"owner-1", &sealed).unwrap(), b"vector bytes");
        assert!(TemplateKeys::parse("a:12", None).is_err());
        assert!(TemplateKeys::parse("", None).is_err());
    }

    #[test]
    fn a_key_file_is_made_private_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("template.key");
        let k = TemplateKeys::load(&f).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let (id, sealed) = k.seal(b"o", b"x");
        let k2 = k.add_key().unwrap();
        assert_ne!(k2.current_id(), id);
        assert_eq!(k2.open(&id, b"o", &sealed).unwrap(), b"x");
        k2.keep_only_current().unwrap();
        let k3 = TemplateKeys::load(&f).unwrap();
        assert_eq!(k3.ids(), vec![k2.current_id().to_string()]);
        assert!(k3.open(&id, b"o", &sealed).is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(TemplateKeys::load(&f).is_err(), "a key file others can read is refused");
        }
    }
}
