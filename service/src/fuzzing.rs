//! Entry points for coverage-guided fuzzing (`tests/fuzz`, `cargo +nightly fuzz`) and for replaying
//! its corpus as an ordinary test (`tests/tests/fuzz_corpus.rs`). Each takes bytes as an untrusted
//! caller sends them and runs the code the service runs on them, returning what that code returns.
//! None of them may panic, hang or allocate without bound on any input: that is what is fuzzed.
//!
//! - [`photo`]: a photo as the service decodes it, and (for a sample of inputs) the whole face
//!   pipeline on it, as an enrolment runs it.
//! - [`health_qr`]: a health-code QR text, verified as sent, and its payload verified once more
//!   with a valid signature (so the checks behind the signature are reached too).
//! - [`api_request`]: a protobuf request message, decoded and validated and converted exactly as
//!   its gRPC handler does before it calls the core.
//!
//! Not part of the service's API (hidden from its documentation).

use crate::api::{convert, validate};
use crate::config::Settings;
use crate::core::healthcode::{self, HealthRecord, QrProblem};
use crate::core::{Analyser, App, AppError, Consent, Enrolment, REVIEW_PAGE};
use crate::store::{ReservationInput, ReviewCursor};
use crate::vision::{Vision, VisionError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use lobby_models::ModelPaths;
use lobby_proto::prost::Message;
use lobby_proto::v1 as pv;
use std::sync::OnceLock;

/// Largest photo (width x height) the fuzzing pipeline decodes: small, so that one execution stays
/// fast; the header check that enforces it is the service's own (`limits.max_pixels`).
pub const PHOTO_MAX_PIXELS: u64 = 256 * 256;

/// One input in this many (chosen by a hash of its bytes, so a replay makes the same choice) goes
/// through the whole face pipeline after decoding; the rest are only decoded. The detector's cost
/// does not shrink with the photo (it scales every photo to a 480 or 640-px canvas, up to three
/// passes when no face is found) and an enrolment adds the masked template and the second stage:
/// under the fuzzer's instrumentation (coverage, ASan, debug assertions) one analysis takes ~0.4-7 s
/// against ~0.5 ms for a decode, so analysing every input would make a million executions weeks.
pub const ANALYSE_ONE_IN: u64 = 1024;

/// The service's defaults (`config/defaults.toml`).
fn defaults() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| Settings::load_from(None, std::iter::empty()).expect("the embedded defaults load"))
}

/// The face pipeline as the service configures it from its defaults, except that photos above
/// [`PHOTO_MAX_PIXELS`] are refused.
pub fn photo_vision(paths: &ModelPaths) -> Result<Vision, VisionError> {
    let mut cfg = App::vision_config(defaults());
    cfg.decode.max_pixels = PHOTO_MAX_PIXELS;
    Vision::load(paths, cfg)
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether [`photo`] runs the whole pipeline on `bytes`.
pub fn photo_sampled(bytes: &[u8]) -> bool {
    fnv1a(bytes).is_multiple_of(ANALYSE_ONE_IN)
}

/// A photo as a kiosk or a reservation system sends it: decoded (the service's decoder and limits,
/// on `vision` from [`photo_vision`]); for the inputs [`photo_sampled`] picks, also analysed as an
/// enrolment photo is ([`photo_analysed`]). `Ok(None)`: decoded, not analysed.
pub fn photo(vision: &Vision, bytes: &[u8]) -> Result<Option<Enrolment>, VisionError> {
    if photo_sampled(bytes) {
        photo_analysed(vision, bytes).map(Some)
    } else {
        vision.decode(bytes).map(|_| None)
    }
}

/// The whole pipeline on a photo, as enrolment runs it (a superset of a check-in's analysis):
/// decode, detect, align, quality, liveness, embed, mask detection, the masked template and the
/// cascade's second-stage embeddings (both models flip-averaged).
pub fn photo_analysed(vision: &Vision, bytes: &[u8]) -> Result<Enrolment, VisionError> {
    Analyser::enrolment(vision, bytes, [true, true])
}

/// The guest a fuzzed health QR is checked for.
pub const QR_GUEST_REF: &str = "G-1";
/// The time a fuzzed health QR is checked at (2027-01-15T08:00:00Z).
pub const QR_NOW_MS: i64 = 1_800_000_000_000;

/// The fuzzing health-code issuer (a fixed test key, trusted only here).
fn qr_issuer() -> &'static SigningKey {
    static K: OnceLock<SigningKey> = OnceLock::new();
    K.get_or_init(|| SigningKey::from_bytes(&[7; 32]))
}

/// What [`health_qr`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct QrChecks {
    /// The text verified as it was sent (almost always `Invalid`: the signature).
    pub as_sent: Result<HealthRecord, QrProblem>,
    /// The input's bytes as the payload of a QR that the trusted issuer signed: JSON, freshness and
    /// the guest binding, which an unsigned input never reaches.
    pub signed: Result<HealthRecord, QrProblem>,
}

/// A health-code QR: `bytes` as the QR text a kiosk sends (not UTF-8: `None`, a protobuf string
/// cannot carry it), verified against the fuzzing issuer with the service's default maximum age;
/// and `bytes` as a payload signed by that issuer, verified the same way.
pub fn health_qr(bytes: &[u8]) -> Option<QrChecks> {
    let text = std::str::from_utf8(bytes).ok()?;
    let issuers: [VerifyingKey; 1] = [qr_issuer().verifying_key()];
    let max_age = defaults().health.qr_max_age_secs;
    let as_sent = healthcode::verify_qr(text, &issuers, QR_GUEST_REF, QR_NOW_MS, max_age);
    let sig = qr_issuer().sign(bytes);
    let signed_qr = format!(
        "LHC1.{}.{}",
        URL_SAFE_NO_PAD.encode(bytes),
        URL_SAFE_NO_PAD.encode(sig.to_bytes())
    );
    let signed = healthcode::verify_qr(&signed_qr, &issuers, QR_GUEST_REF, QR_NOW_MS, max_age);
    Some(QrChecks { as_sent, signed })
}

/// The request messages [`api_request`] decodes, by the value of its first byte (modulo their
/// number).
pub const API_REQUESTS: [&str; 11] = [
    "UpsertReservationRequest",
    "EnrollFaceRequest",
    "UpdateHealthCodeRequest",
    "EraseGuestRequest",
    "GetReservationRequest",
    "CheckInRequest",
    "StreamReviewsRequest",
    "OverrideDecisionRequest",
    "GetDecisionRequest",
    "VerifyAuditTrailRequest",
    "ListPendingReviewsRequest",
];

fn decode<M: Message + Default>(name: &str, bytes: &[u8]) -> Result<M, AppError> {
    M::decode(bytes).map_err(|e| AppError::InvalidArgument(format!("{name} does not decode: {e}")))
}

/// A request to the API: the first byte picks the message ([`API_REQUESTS`]), the rest is its
/// protobuf encoding. Empty input: `Ok(())`.
pub fn api_request(bytes: &[u8]) -> Result<(), AppError> {
    let Some((&kind, body)) = bytes.split_first() else {
        return Ok(());
    };
    match kind as usize % API_REQUESTS.len() {
        0 => upsert_reservation(body).map(drop),
        1 => enroll_face(body).map(drop),
        2 => update_health_code(body).map(drop),
        3 => erase_guest(body),
        4 => get_reservation(body),
        5 => check_in(body),
        6 => stream_reviews(body),
        7 => override_decision(body),
        8 => get_decision(body),
        9 => decode::<pv::VerifyAuditTrailRequest>(API_REQUESTS[9], body).map(drop),
        _ => list_pending_reviews(body).map(drop),
    }
}

/// `ReservationService.UpsertReservation`'s checks.
pub fn upsert_reservation(body: &[u8]) -> Result<ReservationInput, AppError> {
    let r: pv::UpsertReservationRequest = decode(API_REQUESTS[0], body)?;
    reservation(r.reservation.ok_or_else(|| validate::bad("reservation is required"))?)
}

/// A reservation as a reservation system sends it (upsert, or the CLI's CSV import), converted.
pub fn reservation(r: pv::Reservation) -> Result<ReservationInput, AppError> {
    ReservationInput::try_from(r)
}

/// `ReservationService.EnrollFace`'s checks (the photos themselves: [`photo`]).
pub fn enroll_face(body: &[u8]) -> Result<Consent, AppError> {
    let r: pv::EnrollFaceRequest = decode(API_REQUESTS[1], body)?;
    validate::ident("property_id", &r.property_id)?;
    validate::ident("reservation_code", &r.reservation_code)?;
    let consent = r.consent.unwrap_or_default();
    let max = defaults().limits.max_photos_per_enrolment;
    if r.photos.is_empty() || r.photos.len() > max {
        return Err(validate::bad(format!("send 1-{max} photos")));
    }
    Ok(Consent {
        granted: consent.granted,
        method: validate::text("consent.method", &consent.method, 64, consent.granted)?.into(),
        text_version: validate::text("consent.text_version", &consent.text_version, 64, consent.granted)?.into(),
        at_ms: consent.recorded_at_ms,
    })
}

/// `ReservationService.UpdateHealthCode`'s checks.
pub fn update_health_code(body: &[u8]) -> Result<HealthRecord, AppError> {
    let r: pv::UpdateHealthCodeRequest = decode(API_REQUESTS[2], body)?;
    let h = HealthRecord::try_from(r.status.ok_or_else(|| validate::bad("status is required"))?)?;
    validate::ident("property_id", &r.property_id)?;
    validate::ident("reservation_code", &r.reservation_code)?;
    Ok(h)
}

/// `ReservationService.EraseGuest`'s checks.
pub fn erase_guest(body: &[u8]) -> Result<(), AppError> {
    let r: pv::EraseGuestRequest = decode(API_REQUESTS[3], body)?;
    validate::ident("property_id", &r.property_id)?;
    validate::ident("reservation_code", &r.reservation_code)?;
    validate::text("reason", &r.reason, 500, true)?;
    Ok(())
}

/// `ReservationService.GetReservation`'s checks.
pub fn get_reservation(body: &[u8]) -> Result<(), AppError> {
    let r: pv::GetReservationRequest = decode(API_REQUESTS[4], body)?;
    validate::ident("property_id", &r.property_id)?;
    validate::ident("reservation_code", &r.reservation_code)?;
    Ok(())
}

/// `KioskService.CheckIn`'s (and each `CheckInStream` frame's) checks.
pub fn check_in(body: &[u8]) -> Result<(), AppError> {
    let r: pv::CheckInRequest = decode(API_REQUESTS[5], body)?;
    validate::check_in_frame(&r)
}

/// `FrontDeskService.StreamReviews`' checks.
pub fn stream_reviews(body: &[u8]) -> Result<(), AppError> {
    let r: pv::StreamReviewsRequest = decode(API_REQUESTS[6], body)?;
    if !r.property_id.is_empty() {
        validate::ident("property_id", &r.property_id)?;
    }
    Ok(())
}

/// `FrontDeskService.ListPendingReviews`' checks: the page size and the page token it asks for.
pub fn list_pending_reviews(body: &[u8]) -> Result<(usize, Option<ReviewCursor>), AppError> {
    let r: pv::ListPendingReviewsRequest = decode(API_REQUESTS[10], body)?;
    if !r.property_id.is_empty() {
        validate::ident("property_id", &r.property_id)?;
    }
    let size = match r.page_size {
        0 => REVIEW_PAGE,
        n if n as usize <= REVIEW_PAGE => n as usize,
        _ => return Err(validate::bad(format!("page_size must be 1-{REVIEW_PAGE}"))),
    };
    Ok((size, validate::page_token(&r.page_token)?))
}

/// `FrontDeskService.OverrideDecision`'s checks.
pub fn override_decision(body: &[u8]) -> Result<(), AppError> {
    let r: pv::OverrideDecisionRequest = decode(API_REQUESTS[7], body)?;
    convert::override_action(r.action)?;
    validate::text("reason", &r.reason, 500, true)?;
    validate::ident("decision_id", &r.decision_id)?;
    Ok(())
}

/// `FrontDeskService.GetDecision`'s checks.
pub fn get_decision(body: &[u8]) -> Result<(), AppError> {
    let r: pv::GetDecisionRequest = decode(API_REQUESTS[8], body)?;
    validate::ident("decision_id", &r.decision_id)?;
    Ok(())
}
