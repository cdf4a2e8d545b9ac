//! The face pipeline on real photos from ../shared/data and real models.

use lobby_service::vision::VisionError;
use lobby_tests::{data_dir, read, vision};
use std::collections::HashMap;

/// Same person must score above different people on uncropped_identities/pairs.csv.
#[test]
fn same_person_scores_above_different_people_on_uncropped_photos() {
    let (Some(data), Some(v)) = (data_dir(), vision()) else {
        return;
    };
    let dir = data.join("uncropped_identities");
    let text = std::fs::read_to_string(dir.join("pairs.csv")).expect("pairs.csv");
    let mut emb = HashMap::new();
    let (mut same, mut diff) = (Vec::new(), Vec::new());
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let mut get = |rel: &str| {
            emb.entry(rel.to_string())
                .or_insert_with(|| {
                    let a = v
                        .analyze_bytes(&read(&dir, rel))
                        .unwrap_or_else(|e| panic!("{rel}: {e}"));
                    a.primary.unwrap_or_else(|| panic!("no face in {rel}")).embedding
                })
                .clone()
        };
        let (a, b) = (get(f[0]), get(f[1]));
        let s = a.cosine(&b);
        if f[2] == "1" {
            same.push(s)
        } else {
            diff.push(s)
        }
    }
    assert!(
        same.len() > 100 && diff.len() > 200,
        "pairs read: {} same, {} diff",
        same.len(),
        diff.len()
    );
    // Ranking quality: the probability that a random same pair outscores a random different pair.
    let ordered = same
        .iter()
        .map(|s| diff.iter().filter(|d| *d < s).count())
        .sum::<usize>();
    let auc = ordered as f64 / (same.len() * diff.len()) as f64;
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    eprintln!(
        "uncropped: same mean {:.3}, diff mean {:.3}, AUC {auc:.4}",
        mean(&same),
        mean(&diff)
    );
    assert!(auc > 0.99, "AUC {auc}");
    assert!(
        mean(&same) - mean(&diff) > 0.4,
        "means {} vs {}",
        mean(&same),
        mean(&diff)
    );
}

/// Each edge case with a documented face count gives that count (no face: zero).
#[test]
fn edge_cases_give_the_documented_number_of_faces() {
    let (Some(data), Some(v)) = (data_dir(), vision()) else {
        return;
    };
    let dir = data.join("edge_cases");
    let text = std::fs::read_to_string(dir.join("manifest.csv")).expect("manifest.csv");
    // Known hard negative: YuNet gives the dog's face 0.66, above the 0.6 detection threshold that
    // real masked faces need (MFR2 and RWMFD masked faces score down to 0.65). The dog must then be
    // stopped downstream: liveness calls it not live (and it matches no guest).
    const HARD_NEGATIVES: [&str; 1] = ["no_face/nuaa_testimg_1.jpg"];
    let mut wrong = Vec::new();
    let mut checked = 0;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (rel, expected) = (f[0], f[2]);
        let Ok(expected) = expected.parse::<usize>() else {
            continue;
        };
        let img = v.decode(&read(&dir, rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        if HARD_NEGATIVES.contains(&rel) {
            let a = v.analyze(&img).unwrap();
            if let Some(p) = a.primary {
                assert!(
                    p.liveness.p_real < 0.5,
                    "{rel}: hard negative passed liveness ({})",
                    p.liveness.p_real
                );
            }
            continue;
        }
        let n = v.detect(&img).unwrap().len();
        checked += 1;
        if n != expected {
            wrong.push(format!("{rel}: expected {expected}, found {n}"));
        }
    }
    assert!(checked >= 40, "only {checked} edge cases asserted");
    assert!(
        wrong.is_empty(),
        "{} of {checked} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// EXIF orientation 6: stored landscape, upright portrait once rotated; the face is then upright.
#[test]
fn exif_rotated_photo_decodes_upright() {
    let (Some(data), Some(v)) = (data_dir(), vision()) else {
        return;
    };
    let img = v
        .decode(&read(&data, "edge_cases/live_reference/image_T1.jpg"))
        .unwrap();
    assert_eq!((img.width(), img.height()), (480, 640), "EXIF rotation not applied");
    let a = v.analyze(&img).unwrap();
    let f = a.primary.expect("face in the upright photo").face;
    let eyes_y = (f.landmarks[0].y + f.landmarks[1].y) / 2.0;
    let mouth_y = (f.landmarks[3].y + f.landmarks[4].y) / 2.0;
    assert!(eyes_y < mouth_y, "face is not upright: eyes {eyes_y}, mouth {mouth_y}");
    assert!(f.landmarks[0].x < f.landmarks[1].x, "eye order");
}

/// RGBA PNG, WebP named .jpg/.jpeg and PNG named .jpg decode by content and give a face.
#[test]
fn rgba_webp_and_misnamed_files_decode_and_give_a_face() {
    let (Some(data), Some(v)) = (data_dir(), vision()) else {
        return;
    };
    for rel in [
        "uncropped_identities/images/alex_lacamoire/alex-lacamoire.png",
        "uncropped_identities/images/deepface_person02/img47.jpg",
        "uncropped_identities/images/inspireface_RD/d1.jpeg",
        "edge_cases/rotated/rot_0.jpg",
    ] {
        let path = data.join(rel);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let a = v.analyze_bytes(&bytes).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(a.primary.is_some(), "no face in {rel}");
    }
}

/// A photo rotated by 90/180/270 degrees in its pixels (no EXIF) still decodes; the upright one has
/// a frontal, level face whose quality measures are sane.
#[test]
fn quality_measures_on_a_real_upright_face() {
    let (Some(data), Some(v)) = (data_dir(), vision()) else {
        return;
    };
    let a = v
        .analyze_bytes(&read(&data, "edge_cases/resolution_ladder/obama-720p.jpg"))
        .unwrap();
    let p = a.primary.expect("face");
    let q = p.quality;
    assert!(q.face_size_px > 80.0, "{q:?}");
    assert!(
        q.roll_deg.abs() < 15.0 && q.yaw_deg.abs() < 25.0 && q.pitch_deg.abs() < 25.0,
        "{q:?}"
    );
    assert!(q.brightness > 40.0 && q.brightness < 230.0, "{q:?}");
    assert_eq!(q.out_of_frame, 0.0);
    assert_eq!(q.comparable_faces, 1);
    // The same face cut by the border reports part of the box outside the photo.
    let cut = v
        .analyze_bytes(&read(&data, "edge_cases/partial_face/obama_partial_face.jpg"))
        .unwrap();
    if let Some(c) = cut.primary {
        assert!(c.quality.out_of_frame > 0.0, "{:?}", c.quality);
    }
    // A strongly blurred face is less sharp than a clear one.
    let blur = v
        .analyze_bytes(&read(&data, "edge_cases/dark_or_blurred/blur.jpg"))
        .unwrap();
    if let Some(b) = blur.primary {
        assert!(
            b.quality.sharpness < q.sharpness,
            "blurred {} vs clear {}",
            b.quality.sharpness,
            q.sharpness
        );
    }
    // Three people side by side in the middle of the photo: "one person at a time".
    let three = v
        .analyze_bytes(&read(&data, "edge_cases/multi_face/compreface_011_3.jpg"))
        .unwrap();
    assert!(three.primary.expect("face").quality.comparable_faces >= 2);
    // Two people at the photo's two edges: the guest is the more central one, the other does not
    // count (a companion beside the kiosk, not someone in front of it).
    let two = v
        .analyze_bytes(&read(&data, "edge_cases/multi_face/two_people.jpg"))
        .unwrap();
    assert_eq!(two.faces.len(), 2);
    assert_eq!(two.primary.expect("face").quality.comparable_faces, 1);
}

/// The live capture scores as live, the phone-screen replays of the same scene do not (on average).
#[test]
fn liveness_separates_live_capture_from_screen_replays() {
    let (Some(data), Some(v)) = (data_dir(), vision()) else {
        return;
    };
    let p = |rel: &str| {
        let a = v.analyze_bytes(&read(&data, rel)).unwrap();
        a.primary.unwrap_or_else(|| panic!("no face in {rel}")).liveness.p_real
    };
    let live = p("edge_cases/live_reference/image_T1.jpg");
    let f1 = p("edge_cases/spoof_screen/image_F1.jpg");
    let f2 = p("edge_cases/spoof_screen/image_F2.jpg");
    eprintln!("liveness p(real): live {live:.3}, F1 {f1:.3}, F2 {f2:.3}");
    assert!(live > 0.5, "live capture scored {live}");
    assert!(f1 < 0.5 && f2 < 0.5, "replays scored {f1}, {f2}");
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// A PNG whose header claims `w` x `h` pixels, with almost no data behind it.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut chunk = |kind: &[u8], body: &[u8]| {
        out.extend((body.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend(body);
        out.extend(&c);
        out.extend(crc32(&c).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

/// Corrupt, truncated, hostile and non-image bytes give typed errors, never a panic.
#[test]
fn hostile_inputs_give_typed_errors() {
    let (Some(data), Some(v)) = (data_dir(), vision()) else {
        return;
    };
    let jpeg = read(&data, "edge_cases/resolution_ladder/obama-480p.jpg");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("text", b"hello, this is not an image".to_vec()),
        ("truncated jpeg", jpeg[..jpeg.len() / 3].to_vec()),
        ("jpeg header only", jpeg[..200].to_vec()),
        ("corrupted jpeg", {
            let mut j = jpeg.clone();
            for b in j.iter_mut().skip(600).step_by(7) {
                *b ^= 0x5A;
            }
            j
        }),
        ("png bomb 30000x30000", png_bomb(30000, 30000)),
        ("png with broken data", png_bomb(64, 64)),
        ("gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec()),
    ];
    for (what, bytes) in cases {
        match v.analyze_bytes(&bytes) {
            Err(e) => {
                assert!(e.is_bad_input(), "{what}: {e} should be a bad-input error");
                if what.starts_with("png bomb") {
                    assert!(matches!(e, VisionError::ImageTooLarge { .. }), "{what}: {e}");
                }
            }
            // A corrupted JPEG may still decode to a (garbled) picture: that is fine, as long as
            // nothing panicked and the answer is well-formed.
            Ok(a) => assert!(
                what == "corrupted jpeg" || what == "truncated jpeg",
                "{what} decoded: {}x{}",
                a.width,
                a.height
            ),
        }
    }
}
