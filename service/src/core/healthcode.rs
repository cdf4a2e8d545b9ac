//! Health codes: the status colours, and the signed QR payload a guest shows at the kiosk.
//!
//! QR text: `LHC1.<base64url(payload)>.<base64url(signature)>`, where the payload is JSON
//! `{"guest_ref","colour","issued_at","expires_at"}` (Unix seconds) and the signature is Ed25519
//! over the exact payload bytes by an issuer whose public key is configured. Because the signature
//! covers the bytes as sent, no canonical re-encoding is needed to verify.

pub use crate::domain::{Colour, HealthRecord};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "LHC1";
/// QR texts longer than this are refused before any parsing.
pub const MAX_QR_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrPayload {
    pub guest_ref: String,
    pub colour: Colour,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Why a QR does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrProblem {
    /// Malformed, unknown issuer, or bad signature.
    Invalid,
    /// Expired, issued too long ago, or issued in the future.
    Stale,
    /// Signed and fresh, but for another person.
    OtherGuest,
}

pub fn parse_public_key(b64: &str) -> Result<VerifyingKey, String> {
    let bytes = STANDARD.decode(b64.trim()).map_err(|e| e.to_string())?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| "not 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&arr).map_err(|e| e.to_string())
}

/// Verifies a QR text against the configured issuers: signature, then freshness, then that it is
/// bound to `guest_ref`. Returns the health record it carries.
pub fn verify_qr(
    qr: &str,
    issuers: &[VerifyingKey],
    guest_ref: &str,
    now_ms: i64,
    max_age_secs: i64,
) -> Result<HealthRecord, QrProblem> {
    if qr.len() > MAX_QR_LEN {
        return Err(QrProblem::Invalid);
    }
    let mut parts = qr.trim().split('.');
    let (Some(PREFIX), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(QrProblem::Invalid);
    };
    let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| QrProblem::Invalid)?;
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| QrProblem::Invalid)?;
    let sig = Signature::from_slice(&sig).map_err(|_| QrProblem::Invalid)?;
    if !issuers.iter().any(|k| k.verify_strict(&payload, &sig).is_ok()) {
        return Err(QrProblem::Invalid);
    }
    let body: QrPayload = serde_json::from_slice(&payload).map_err(|_| QrProblem::Invalid)?;
    let now = now_ms / 1000;
    // Saturating: the times are whatever the issuer signed (an `issued_at` of i64::MIN wrapped to
    // "fresh" before, and an `expires_at` beyond ~292 million years to a negative expiry).
    if body.issued_at > now.saturating_add(60)
        || now >= body.expires_at
        || now.saturating_sub(body.issued_at) > max_age_secs
    {
        return Err(QrProblem::Stale);
    }
    // The guest reference is not secret, but compare without early exit anyway.
    use subtle::ConstantTimeEq;
    if guest_ref.is_empty() || !bool::from(body.guest_ref.as_bytes().ct_eq(guest_ref.as_bytes())) {
        return Err(QrProblem::OtherGuest);
    }
    Ok(HealthRecord {
        colour: body.colour,
        issued_at_ms: body.issued_at.saturating_mul(1000),
        expires_at_ms: body.expires_at.saturating_mul(1000),
        source: "kiosk-qr".into(),
    })
}

/// Makes a QR text (the issuer's side; used by tests and the demo issuer tool).
pub fn sign_qr(key: &SigningKey, payload: &QrPayload) -> String {
    let bytes = serde_json::to_vec(payload).unwrap_or_default();
    let sig = key.sign(&bytes);
    format!(
        "{PREFIX}.{}.{}",
        URL_SAFE_NO_PAD.encode(&bytes),
        URL_SAFE_NO_PAD.encode(sig.to_bytes())
    )
}

pub fn public_key_b64(key: &SigningKey) -> String {
    STANDARD.encode(key.verifying_key().to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn payload(now: i64) -> QrPayload {
        QrPayload {
            guest_ref: "G-1".into(),
            colour: Colour::Green,
            issued_at: now - 60,
            expires_at: now + 3600,
        }
    }

    #[test]
    fn a_good_qr_verifies_and_everything_else_does_not() {
        let now = 1_800_000_000i64;
        let k = key(7);
        let issuers = [k.verifying_key()];
        let qr = sign_qr(&k, &payload(now));
        let ok = verify_qr(&qr, &issuers, "G-1", now * 1000, 86400).unwrap();
        assert_eq!(ok.colour, Colour::Green);
        // Someone else's.
        assert_eq!(
            verify_qr(&qr, &issuers, "G-2", now * 1000, 86400),
            Err(QrProblem::OtherGuest)
        );
        // Signed by an unknown issuer.
        let forged = sign_qr(&key(8), &payload(now));
        assert_eq!(
            verify_qr(&forged, &issuers, "G-1", now * 1000, 86400),
            Err(QrProblem::Invalid)
        );
        // Payload changed after signing (RED -> GREEN).
        let mut red = payload(now);
        red.colour = Colour::Red;
        let red_qr = sign_qr(&k, &red);
        let parts: Vec<&str> = red_qr.split('.').collect();
        let green_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload(now)).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], green_payload, parts[2]);
        assert_eq!(
            verify_qr(&tampered, &issuers, "G-1", now * 1000, 86400),
            Err(QrProblem::Invalid)
        );
        // Expired, and too old.
        let mut old = payload(now);
        old.expires_at = now - 1;
        assert_eq!(
            verify_qr(&sign_qr(&k, &old), &issuers, "G-1", now * 1000, 86400),
            Err(QrProblem::Stale)
        );
        let mut aged = payload(now);
        aged.issued_at = now - 2 * 86400;
        assert_eq!(
            verify_qr(&sign_qr(&k, &aged), &issuers, "G-1", now * 1000, 86400),
            Err(QrProblem::Stale)
        );
        // Garbage.
        for bad in ["", "LHC1", "LHC1.a.b", "LHC1.!!.??", "X.Y.Z.W"] {
            assert_eq!(
                verify_qr(bad, &issuers, "G-1", now * 1000, 86400),
                Err(QrProblem::Invalid),
                "{bad}"
            );
        }
    }
}
