//! Synthetic seeds for the fuzz targets, written to `tests/fuzz/seeds/<target>/`: small images drawn
//! here (a cartoon face among them, so that the detector has something to find; no real photo),
//! well-formed and broken request messages, health-code QRs signed by the fuzzing issuer, and
//! import CSVs. Deterministic: the same files on every run.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageEncoder, Rgb, RgbImage};
use lobby_proto::prost::Message;
use lobby_proto::v1 as pv;
use std::path::{Path, PathBuf};

/// As `lobby_service::fuzzing` (the fuzzing issuer's key seed, the guest, the time).
const ISSUER_SEED: [u8; 32] = [7; 32];
const QR_NOW: i64 = 1_800_000_000;

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds")
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = out_dir().join(target);
    std::fs::create_dir_all(&dir).expect("seed dir");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn in_ellipse(x: f32, y: f32, cx: f32, cy: f32, rx: f32, ry: f32) -> bool {
    let (dx, dy) = ((x - cx) / rx, (y - cy) / ry);
    dx * dx + dy * dy <= 1.0
}

/// A frontal cartoon face, `w` x `h`, on a grey-blue gradient.
fn cartoon_face(w: u32, h: u32) -> RgbImage {
    let (fw, fh) = (w as f32, h as f32);
    let (cx, cy) = (fw * 0.5, fh * 0.52);
    let (hx, hy) = (fw * 0.30, fh * 0.33);
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as f32 + 0.5, y as f32 + 0.5);
        let mut p = [
            (120.0 + 60.0 * y / fh) as u8,
            (130.0 + 40.0 * y / fh) as u8,
            (150.0 + 30.0 * x / fw) as u8,
        ];
        // Neck and shoulders.
        if (x - cx).abs() < hx * 0.45 && y > cy + hy * 0.6 {
            p = [205, 150, 120];
        }
        if y > cy + hy * 1.25 && in_ellipse(x, y, cx, fh * 1.15, fw * 0.55, fh * 0.3) {
            p = [40, 60, 110];
        }
        // Hair, then the face over it.
        if in_ellipse(x, y, cx, cy - hy * 0.15, hx * 1.12, hy * 1.08) {
            p = [50, 35, 25];
        }
        if in_ellipse(x, y, cx, cy, hx, hy) && y > cy - hy * 0.62 {
            // Skin, a little darker towards the edge.
            let (dx, dy) = ((x - cx) / hx, (y - cy) / hy);
            let shade = 1.0 - 0.25 * (dx * dx + dy * dy);
            p = [(230.0 * shade) as u8, (180.0 * shade) as u8, (150.0 * shade) as u8];
        }
        for side in [-1.0f32, 1.0] {
            let ex = cx + side * hx * 0.40;
            let ey = cy - hy * 0.12;
            // Eyebrow, eye white, iris, pupil.
            if in_ellipse(x, y, ex, ey - hy * 0.2, hx * 0.26, hy * 0.045) {
                p = [60, 40, 30];
            }
            if in_ellipse(x, y, ex, ey, hx * 0.22, hy * 0.09) {
                p = [245, 245, 240];
                if in_ellipse(x, y, ex, ey, hx * 0.10, hy * 0.09) {
                    p = [90, 60, 40];
                }
                if in_ellipse(x, y, ex, ey, hx * 0.045, hy * 0.04) {
                    p = [10, 10, 10];
                }
            }
        }
        // Nose (shading and nostrils), mouth.
        if in_ellipse(x, y, cx, cy + hy * 0.18, hx * 0.10, hy * 0.20) && x > cx {
            p = [
                (p[0] as f32 * 0.85) as u8,
                (p[1] as f32 * 0.85) as u8,
                (p[2] as f32 * 0.85) as u8,
            ];
        }
        for side in [-1.0f32, 1.0] {
            if in_ellipse(x, y, cx + side * hx * 0.08, cy + hy * 0.34, hx * 0.05, hy * 0.03) {
                p = [110, 60, 50];
            }
        }
        if in_ellipse(x, y, cx, cy + hy * 0.58, hx * 0.34, hy * 0.08) {
            p = if in_ellipse(x, y, cx, cy + hy * 0.58, hx * 0.30, hy * 0.015) {
                [90, 20, 30]
            } else {
                [180, 70, 75]
            };
        }
        Rgb(p)
    })
}

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            ((x + y) * 7 % 256) as u8,
        ])
    })
}

fn jpeg(img: &DynamicImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_with_encoder(JpegEncoder::new_with_quality(&mut out, quality))
        .expect("jpeg");
    out
}

fn png_of(img: &DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("png");
    out
}

/// A JPEG with an EXIF APP1 segment carrying `orientation` (1-8), right after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    // TIFF, little-endian: header, IFD0 with one entry (0x0112 SHORT 1 = orientation), no next IFD.
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// An indexed-colour PNG (the `image` encoder writes none).
fn palette_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(png::ColorType::Indexed);
        e.set_depth(png::BitDepth::Four);
        e.set_palette(
            (0..16u8)
                .flat_map(|i| [i * 16, 255 - i * 16, i * 8])
                .collect::<Vec<u8>>(),
        );
        e.set_trns(vec![255u8, 128, 0]);
        let mut wr = e.write_header().expect("png header");
        let row = w.div_ceil(2) as usize;
        let data: Vec<u8> = (0..row * h as usize).map(|i| (i * 37 % 256) as u8).collect();
        wr.write_image_data(&data).expect("png data");
    }
    out
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |mut c, &b| {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
        c
    })
}

/// A 1x1 indexed PNG whose PLTE chunk is `plte_len` bytes (valid CRCs, stored-deflate IDAT).
fn indexed_png_with_plte(plte_len: usize) -> Vec<u8> {
    let chunk = |out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 3, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"PLTE",
        &(0..plte_len).map(|i| (i * 50) as u8).collect::<Vec<u8>>(),
    );
    // zlib: header, one stored block of the row [filter 0, index 0], Adler-32 of it.
    chunk(
        &mut out,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x02, 0x00, 0xFD, 0xFF, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01,
        ],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn photos() {
    // Found by fuzzing: a PLTE chunk whose length is not a multiple of 3 panics png 0.18.1
    // (transform/palette.rs:74, image-rs/image-png#694); the service contains the panic.
    write("photo", "regression_png_plte_len4.png", &indexed_png_with_plte(4));
    write("photo", "valid_png_plte_len3.png", &indexed_png_with_plte(3));
    let face = DynamicImage::ImageRgb8(cartoon_face(200, 240));
    write("photo", "face_cartoon_q85.jpg", &jpeg(&face, 85));
    write("photo", "face_cartoon.png", &png_of(&face));
    let small_face = DynamicImage::ImageRgb8(cartoon_face(96, 112));
    write("photo", "face_cartoon_small_q60.jpg", &jpeg(&small_face, 60));
    write(
        "photo",
        "face_cartoon_exif6_q70.jpg",
        &with_exif_orientation(&jpeg(&DynamicImage::ImageRgb8(cartoon_face(120, 96)), 70), 6),
    );
    let g = DynamicImage::ImageRgb8(gradient(48, 32));
    write("photo", "gradient_q75.jpg", &jpeg(&g, 75));
    write(
        "photo",
        "gradient_gray_q50.jpg",
        &jpeg(&DynamicImage::ImageLuma8(g.to_luma8()), 50),
    );
    write("photo", "gradient_rgb.png", &png_of(&g));
    write(
        "photo",
        "gradient_rgba.png",
        &png_of(&DynamicImage::ImageRgba8(g.to_rgba8())),
    );
    write(
        "photo",
        "gradient_la.png",
        &png_of(&DynamicImage::ImageLumaA8(g.to_luma_alpha8())),
    );
    write(
        "photo",
        "gradient_rgb16.png",
        &png_of(&DynamicImage::ImageRgb16(g.to_rgb16())),
    );
    write("photo", "palette4.png", &palette_png(13, 7));
    write(
        "photo",
        "one_pixel.png",
        &png_of(&DynamicImage::ImageRgb8(gradient(1, 1))),
    );
    write(
        "photo",
        "strip_256x1.png",
        &png_of(&DynamicImage::ImageRgb8(gradient(256, 1))),
    );
    write(
        "photo",
        "strip_1x200_q90.jpg",
        &jpeg(&DynamicImage::ImageRgb8(gradient(1, 200)), 90),
    );
    let mut webp = Vec::new();
    WebPEncoder::new_lossless(&mut webp)
        .write_image(g.as_bytes(), g.width(), g.height(), image::ExtendedColorType::Rgb8)
        .expect("webp");
    write("photo", "gradient_lossless.webp", &webp);
}

fn requests() {
    let mut n = 0;
    let mut put = |kind: u8, name: &str, body: Vec<u8>| {
        let mut bytes = vec![kind];
        bytes.extend(body);
        write("api_request", &format!("{n:02}_{name}.bin"), &bytes);
        n += 1;
    };
    let reservation = pv::Reservation {
        property_id: "hotel-1".into(),
        reservation_code: "R-1001".into(),
        guest: Some(pv::Guest {
            guest_id: String::new(),
            full_name: "Ada Example".into(),
            guest_ref: "G-1".into(),
        }),
        arrival_date: "2027-01-15".into(),
        departure_date: "2027-01-17".into(),
        status: pv::ReservationStatus::Booked as i32,
        ..Default::default()
    };
    put(
        0,
        "upsert",
        pv::UpsertReservationRequest {
            reservation: Some(reservation.clone()),
        }
        .encode_to_vec(),
    );
    let mut bad = reservation.clone();
    bad.departure_date = "2027-02-30".into();
    bad.status = 99;
    put(
        0,
        "upsert_bad_date",
        pv::UpsertReservationRequest { reservation: Some(bad) }.encode_to_vec(),
    );
    put(
        1,
        "enroll",
        pv::EnrollFaceRequest {
            property_id: "hotel-1".into(),
            reservation_code: "R-1001".into(),
            photos: vec![b"\xff\xd8\xff".to_vec(), vec![0x89, b'P', b'N', b'G']],
            consent: Some(pv::Consent {
                granted: true,
                method: "booking-form".into(),
                text_version: "v3".into(),
                recorded_at_ms: 1_800_000_000_000,
            }),
        }
        .encode_to_vec(),
    );
    put(
        2,
        "health",
        pv::UpdateHealthCodeRequest {
            property_id: "hotel-1".into(),
            reservation_code: "R-1001".into(),
            status: Some(pv::HealthStatus {
                colour: pv::HealthColour::Green as i32,
                issued_at_ms: 1_800_000_000_000,
                expires_at_ms: 1_800_086_400_000,
                source: "issuer-a".into(),
            }),
        }
        .encode_to_vec(),
    );
    put(
        3,
        "erase",
        pv::EraseGuestRequest {
            property_id: "hotel-1".into(),
            reservation_code: "R-1001".into(),
            reason: "guest asked".into(),
        }
        .encode_to_vec(),
    );
    put(
        4,
        "get_reservation",
        pv::GetReservationRequest {
            property_id: "hotel-1".into(),
            reservation_code: "R-1001".into(),
        }
        .encode_to_vec(),
    );
    put(
        5,
        "check_in",
        pv::CheckInRequest {
            guest_declines_face: false,
            photo: b"\xff\xd8\xff\xe0".to_vec(),
            reservation_code: "R-1001".into(),
            health_qr: "LHC1.e30.AA".into(),
        }
        .encode_to_vec(),
    );
    put(
        6,
        "stream_reviews",
        pv::StreamReviewsRequest {
            property_id: "hotel-1".into(),
        }
        .encode_to_vec(),
    );
    put(
        7,
        "override",
        pv::OverrideDecisionRequest {
            decision_id: "d-0123456789abcdef".into(),
            action: pv::OverrideAction::Approve as i32,
            reason: "checked the passport at the desk".into(),
        }
        .encode_to_vec(),
    );
    put(
        8,
        "get_decision",
        pv::GetDecisionRequest {
            decision_id: "d-0123456789abcdef".into(),
        }
        .encode_to_vec(),
    );
    put(9, "verify_audit", pv::VerifyAuditTrailRequest {}.encode_to_vec());
    put(
        10,
        "list_pending",
        pv::ListPendingReviewsRequest {
            property_id: "hotel-1".into(),
            page_size: 20,
            page_token: "1800000000000.d-0123456789abcdef".into(),
        }
        .encode_to_vec(),
    );
}

fn qrs() {
    let key = SigningKey::from_bytes(&ISSUER_SEED);
    let payload = |colour: &str, issued: i64, expires: i64, guest: &str| {
        format!(r#"{{"guest_ref":"{guest}","colour":"{colour}","issued_at":{issued},"expires_at":{expires}}}"#)
    };
    let sign = |p: &str| {
        format!(
            "LHC1.{}.{}",
            URL_SAFE_NO_PAD.encode(p),
            URL_SAFE_NO_PAD.encode(key.sign(p.as_bytes()).to_bytes())
        )
    };
    let good = payload("GREEN", QR_NOW - 60, QR_NOW + 3600, "G-1");
    write("health_qr", "signed_green.txt", sign(&good).as_bytes());
    write(
        "health_qr",
        "signed_red_other_guest.txt",
        sign(&payload("RED", QR_NOW - 60, QR_NOW + 3600, "G-2")).as_bytes(),
    );
    write("health_qr", "payload_green.json", good.as_bytes());
    write(
        "health_qr",
        "payload_yellow_stale.json",
        payload("YELLOW", QR_NOW - 200_000, QR_NOW + 3600, "G-1").as_bytes(),
    );
    write(
        "health_qr",
        "payload_unknown_field.json",
        br#"{"guest_ref":"G-1","colour":"UNKNOWN","issued_at":0,"expires_at":1,"x":[1.5e300,null]}"#,
    );
    write("health_qr", "garbage.txt", b"LHC1.!!.??");
    // Found with the fuzz target (not by its random search): signed times at the ends of i64
    // overflowed in `verify_qr` (a panic with overflow checks; without them, "fresh" and a
    // negative expiry).
    write(
        "health_qr",
        "regression_issued_at_min.json",
        payload("GREEN", i64::MIN, QR_NOW + 3600, "G-1").as_bytes(),
    );
    write(
        "health_qr",
        "regression_expires_at_max.json",
        payload("GREEN", QR_NOW - 60, i64::MAX, "G-1").as_bytes(),
    );
}

fn csvs() {
    write(
        "csv_import",
        "basic.csv",
        b"property,reservation_code,full_name,guest_ref,arrival,departure,consent,photos\n\
          hotel-1,R-1001,Ada Example,G-1,today,today+2,yes,ada1.jpg;ada2.jpg\n\
          hotel-1,R-1002,Bo Example,,2027-01-15,2027-01-16,no,\n",
    );
    write(
        "csv_import",
        "reordered_blank_lines.csv",
        b"photos , consent, departure,arrival,guest_ref,full_name,reservation_code,property,extra\n\n  \n\
          ;;x.png,YES,2027-13-01,today+x,G\xc3\xa9,Zo\xc3\xab \xc3\x85str\xc3\xb6m,R:1,h_1,?\n\
          short,row\n",
    );
    // Found by fuzzing: a date this far ahead panicked in `relative_date`.
    write(
        "csv_import",
        "regression_today_plus_overflow.csv",
        b"property,reservation_code,full_name,guest_ref,arrival,departure,consent,photos\n\
          hotel-1,R-1003,Cy Example,G-3,today,today+29999999999999,no,\n",
    );
    write(
        "csv_import",
        "header_only.csv",
        b"property,reservation_code,full_name,guest_ref,arrival,departure,consent,photos",
    );
}

fn main() {
    let _ = std::fs::remove_dir_all(out_dir());
    photos();
    requests();
    qrs();
    csvs();
    println!("seeds written to {}", out_dir().display());
}
