//! The load-time operator swap (`vision::fastops`: our depthwise, 1x1 and max-pool kernels with their
//! activations fused) must not change what the pipeline says about a photo. Every model is planned
//! twice — by tract alone and with the swap — and the two pipelines analyse the same real photos:
//! faces, landmarks, liveness, mask score and embedding must agree to float rounding.
//! The swap is a field of the pipeline's settings (`VisionConfig::fast_ops`), so both pipelines
//! live side by side in one process.

use lobby_service::vision::{Vision, VisionConfig};
use lobby_tests::{data_dir, model_paths, read};
use std::path::Path;

fn photos(data: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (folder, take) in [
        ("uncropped_identities/images", 12),
        ("mfr2/images", 8),
        ("nuaa_antispoof/images", 6),
    ] {
        let mut files: Vec<String> = Vec::new();
        let mut stack = vec![data.join(folder)];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(data) {
                    files.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        files.sort();
        // Spread over the folder: every k-th photo.
        let step = (files.len() / take).max(1);
        out.extend(files.into_iter().step_by(step).take(take));
    }
    out
}

#[test]
fn the_operator_swap_leaves_every_answer_the_same() {
    let (Some(data), Some(paths)) = (data_dir(), model_paths()) else {
        return;
    };
    let tract_only = VisionConfig {
        fast_ops: false,
        ..VisionConfig::default()
    };
    let tract = Vision::load(&paths, tract_only).expect("models load");
    let files = photos(&data);
    assert!(files.len() >= 20, "photos found: {}", files.len());
    let before: Vec<_> = files.iter().map(|f| tract.analyze_bytes(&read(&data, f))).collect();
    let fast = Vision::load(&paths, VisionConfig::default()).expect("models load");
    let mut compared = 0;
    for (f, a) in files.iter().zip(before) {
        let b = fast.analyze_bytes(&read(&data, f));
        let (Ok(a), Ok(b)) = (a, b) else {
            panic!("{f}: one pipeline failed where the other did not, or both did");
        };
        assert_eq!(a.faces.len(), b.faces.len(), "{f}: faces found");
        for (x, y) in a.faces.iter().zip(&b.faces) {
            assert!(
                (x.score - y.score).abs() < 1e-4,
                "{f}: detection score {} vs {}",
                x.score,
                y.score
            );
            for (p, q) in x.landmarks.iter().zip(&y.landmarks) {
                assert!(
                    (p.x - q.x).abs() < 0.01 && (p.y - q.y).abs() < 0.01,
                    "{f}: landmark moved"
                );
            }
        }
        let (Some(a), Some(b)) = (a.primary, b.primary) else {
            continue;
        };
        let cos = a.embedding.cosine(&b.embedding);
        assert!(cos > 0.99999, "{f}: embeddings differ, cosine {cos}");
        assert!((a.liveness.p_real - b.liveness.p_real).abs() < 1e-4, "{f}: liveness");
        assert!((a.mask.p_masked - b.mask.p_masked).abs() < 1e-4, "{f}: mask score");
        compared += 1;
    }
    eprintln!(
        "fastops: {} photos, {compared} faces compared, the same answers",
        files.len()
    );
    assert!(compared >= 15, "faces compared: {compared}");
}
