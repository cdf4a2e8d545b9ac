//! The fuzzing corpus (tests/fuzz: corpus/<target>/ as `cargo fuzz cmin` left it, and the synthetic
//! seeds/<target>/) replayed through the entry points the fuzz targets call, on the real models: no
//! input may panic. A crash that fuzzing finds is fixed by adding its input to the corpus, so this
//! keeps it fixed. Also checks that the seeds still reach what they were made for (a face found in
//! the cartoon photo, a signed QR accepted, the well-formed requests and CSV rows accepted).
//!
//! The photo test needs the models (`lobby_tests::model_paths`): without them it fails under
//! `CI=true` and is skipped loudly otherwise.

use lobby_service::core::healthcode::QrProblem;
use lobby_service::domain::Colour;
use lobby_service::fuzzing;
use lobby_service::vision::VisionError;
use lobby_tests::{model_paths, workspace_root};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

fn fuzz_dir() -> PathBuf {
    workspace_root().join("tests/fuzz")
}

/// Every committed input of `target`: corpus/ then seeds/, each sorted by name.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut all = Vec::new();
    for part in ["corpus", "seeds"] {
        let dir = fuzz_dir().join(part).join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        for f in files {
            let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
            all.push((
                format!(
                    "{part}/{target}/{}",
                    f.file_name().unwrap_or_default().to_string_lossy()
                ),
                bytes,
            ));
        }
    }
    all
}

/// Runs `entry` on every input of `target`; fails naming each input that panicked.
fn replay(target: &str, mut entry: impl FnMut(&[u8])) -> usize {
    let all = inputs(target);
    let panicked: Vec<&str> = all
        .iter()
        .filter(|(_, bytes)| catch_unwind(AssertUnwindSafe(|| entry(bytes))).is_err())
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(panicked.is_empty(), "{target}: these inputs panic: {panicked:?}");
    eprintln!("{target}: {} inputs replayed", all.len());
    all.len()
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let p = fuzz_dir().join("seeds").join(target).join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The csv_import target's body (tests/fuzz/fuzz_targets/csv_import.rs): parse, then convert each
/// row's reservation as the service does. The parse result, and each row's conversion.
fn csv_import(bytes: &[u8]) -> Option<Vec<bool>> {
    let parsed = lobby_kiosk_client::import::parse_bytes(bytes).ok()?;
    Some(
        parsed
            .rows
            .into_iter()
            .map(|(_, row)| fuzzing::reservation(row.reservation).is_ok())
            .collect(),
    )
}

#[test]
fn photo_corpus() {
    let Some(paths) = model_paths() else { return };
    let vision = fuzzing::photo_vision(&paths).expect("models load");
    let (mut decoded, mut analysed) = (0, 0);
    let n = replay("photo", |bytes| match fuzzing::photo(&vision, bytes) {
        Ok(Some(_)) => analysed += 1,
        Ok(None) => decoded += 1,
        Err(_) => {}
    });
    eprintln!("photo: {decoded} decoded only, {analysed} decoded and analysed, of {n}");
    // Beyond what the fuzz target samples: the whole pipeline on every input that decodes.
    let mut faces = 0;
    replay("photo", |bytes| {
        if let Ok(e) = fuzzing::photo_analysed(&vision, bytes) {
            faces += usize::from(e.analysis.primary.is_some());
        }
    });
    eprintln!("photo: a guest's face found in {faces} inputs");
    // The seeds reach the whole pipeline: the cartoon face is found, and gets both templates.
    for name in ["face_cartoon_q85.jpg", "face_cartoon.png", "face_cartoon_small_q60.jpg"] {
        let e = fuzzing::photo_analysed(&vision, &seed("photo", name)).expect(name);
        let primary = e
            .analysis
            .primary
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no face found"));
        assert!(primary.face.score > 0.6, "{name}: face score {}", primary.face.score);
        assert!(e.masked.is_some() && e.second.is_some(), "{name}: templates missing");
    }
    // Found by fuzzing: a PLTE chunk of 4 bytes panics png 0.18.1 (transform/palette.rs:74,
    // image-rs/image-png#694); the service contains it as an undecodable photo.
    assert!(matches!(
        fuzzing::photo(&vision, &seed("photo", "regression_png_plte_len4.png")),
        Err(VisionError::UndecodableImage(_))
    ));
    for name in [
        "valid_png_plte_len3.png",
        "gradient_lossless.webp",
        "palette4.png",
        "face_cartoon_exif6_q70.jpg",
        "strip_256x1.png",
    ] {
        assert!(vision.decode(&seed("photo", name)).is_ok(), "{name} does not decode");
    }
}

#[test]
fn health_qr_corpus() {
    replay("health_qr", |bytes| {
        let _ = fuzzing::health_qr(bytes);
    });
    let green = fuzzing::health_qr(&seed("health_qr", "signed_green.txt")).expect("UTF-8");
    assert_eq!(green.as_sent.map(|h| h.colour), Ok(Colour::Green));
    let payload = fuzzing::health_qr(&seed("health_qr", "payload_green.json")).expect("UTF-8");
    assert_eq!(payload.signed.map(|h| h.colour), Ok(Colour::Green));
    // Found with the fuzz target: times at the ends of i64 overflowed (healthcode.rs); a QR issued
    // at i64::MIN is stale, one expiring at i64::MAX seconds expires at i64::MAX ms.
    let min = fuzzing::health_qr(&seed("health_qr", "regression_issued_at_min.json")).expect("UTF-8");
    assert_eq!(min.signed, Err(QrProblem::Stale));
    let max = fuzzing::health_qr(&seed("health_qr", "regression_expires_at_max.json")).expect("UTF-8");
    assert_eq!(max.signed.map(|h| h.expires_at_ms), Ok(i64::MAX));
    let other = fuzzing::health_qr(&seed("health_qr", "signed_red_other_guest.txt")).expect("UTF-8");
    assert_eq!(other.as_sent.map(|h| h.colour), Err(QrProblem::OtherGuest));
}

#[test]
fn api_request_corpus() {
    replay("api_request", |bytes| {
        let _ = fuzzing::api_request(bytes);
    });
    // Every well-formed seed is accepted, the broken one is refused.
    for (name, bytes) in inputs("api_request").iter().filter(|(n, _)| n.starts_with("seeds/")) {
        let r = fuzzing::api_request(bytes);
        assert_eq!(r.is_ok(), !name.contains("_bad"), "{name}: {r:?}");
    }
}

#[test]
fn csv_import_corpus() {
    replay("csv_import", |bytes| {
        let _ = csv_import(bytes);
    });
    assert_eq!(csv_import(&seed("csv_import", "basic.csv")), Some(vec![true, true]));
    assert_eq!(csv_import(&seed("csv_import", "header_only.csv")), Some(vec![]));
    // Found by fuzzing: `today+29999999999999` panicked in the parser; now the row is sent as
    // written and the service refuses its date.
    assert_eq!(
        csv_import(&seed("csv_import", "regression_today_plus_overflow.csv")),
        Some(vec![false])
    );
}
