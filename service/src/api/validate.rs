//! Validation at the boundary: the shape of each field a caller sends. What the fields mean (scope,
//! consent, the ladder) is the core's business.

use crate::core::{AppError, Result};
use chrono::NaiveDate;

pub fn bad(m: impl Into<String>) -> AppError {
    AppError::InvalidArgument(m.into())
}

/// Ids (property, reservation code, decision id): 1-64 characters of `A-Z a-z 0-9 _ - . :`.
pub fn ident<'a>(field: &str, v: &'a str) -> Result<&'a str> {
    let ok = !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
    if ok {
        Ok(v)
    } else {
        Err(bad(format!(
            "{field} must be 1-64 characters of A-Z, a-z, 0-9, _ - . :"
        )))
    }
}

/// Free text: at most `max` characters, no control characters; non-blank when `required`.
pub fn text<'a>(field: &str, v: &'a str, max: usize, required: bool) -> Result<&'a str> {
    if required && v.trim().is_empty() {
        return Err(bad(format!("{field} is required")));
    }
    if v.chars().count() > max || v.chars().any(|c| c.is_control()) {
        return Err(bad(format!(
            "{field} must be at most {max} characters, without control characters"
        )));
    }
    Ok(v)
}

pub fn date(field: &str, v: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| bad(format!("{field} must be a date YYYY-MM-DD")))
}

/// A check-in frame's fields: a photo (none when the guest declines face check-in), a well-formed
/// code if any, a QR of sane length.
pub fn check_in_frame(r: &lobby_proto::v1::CheckInRequest) -> Result<()> {
    if r.guest_declines_face {
        if !r.photo.is_empty() {
            return Err(bad(
                "a guest who declines face check-in is not photographed: send no photo with guest_declines_face",
            ));
        }
    } else if r.photo.is_empty() {
        return Err(bad("photo is required"));
    }
    if !r.reservation_code.is_empty() {
        ident("reservation_code", &r.reservation_code)?;
    }
    if r.health_qr.len() > crate::core::healthcode::MAX_QR_LEN {
        return Err(bad("health_qr is too long"));
    }
    Ok(())
}

/// A pending-reviews page token (`<created_at_ms>.<decision id>`, as `convert::page_token` makes
/// it); empty: the first page.
pub fn page_token(t: &str) -> Result<Option<crate::store::ReviewCursor>> {
    if t.is_empty() {
        return Ok(None);
    }
    let parsed = t
        .split_once('.')
        .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, ident("page_token", id).ok()?)));
    match parsed {
        Some((created_at_ms, id)) => Ok(Some(crate::store::ReviewCursor {
            created_at_ms,
            id: id.to_string(),
        })),
        None => Err(bad("page_token is not one this server gave")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents_and_text() {
        assert!(ident("x", "p-1.a:b_2").is_ok());
        assert!(ident("x", "").is_err());
        assert!(ident("x", "a b").is_err());
        assert!(ident("x", &"a".repeat(65)).is_err());
        assert!(text("x", " ", 10, true).is_err());
        assert!(text("x", "", 10, false).is_ok());
        assert!(text("x", "a\u{7}", 10, false).is_err());
        assert!(text("x", &"é".repeat(10), 10, true).is_ok());
        assert!(date("d", "2026-02-30").is_err());
        assert!(date("d", "2026-12-05").is_ok());
    }
}
