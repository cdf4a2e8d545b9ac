//! Kiosk-like frames for the benchmarks: 640x480 JPEGs made from the full-size photos of
//! `uncropped_identities`, framed as a lobby kiosk camera would see a guest standing in front of it
//! (the face about 40 % of the frame height, centred a little above the middle).
//!
//! The frames are written to a folder (`frames.csv` + JPEGs) so that the Python peer runs on exactly
//! the same bytes. Never commit that folder: it is made from the photos.

use crate::datasets;
use anyhow::{bail, Context, Result};
use image::{codecs::jpeg::JpegEncoder, imageops::FilterType, RgbImage};
use lobby_service::vision::{quality, Vision};
use std::path::{Path, PathBuf};

pub const FRAME_W: u32 = 640;
pub const FRAME_H: u32 = 480;
/// Face box height as a share of the frame height.
const FACE_SHARE: f32 = 0.40;
const JPEG_QUALITY: u8 = 90;

#[derive(Debug, Clone)]
pub struct Frame {
    pub file: String,
    pub identity: String,
    pub jpeg: Vec<u8>,
}

/// The photos of `uncropped_identities`: the first photo of each identity (manifest order) is the
/// enrolment photo, the others become check-in frames.
pub struct Split {
    pub enrol: Vec<(PathBuf, String)>,
    pub probes: Vec<(PathBuf, String)>,
}

pub fn split(data: &Path) -> Result<Split> {
    let (_, ids) = datasets::uncropped(&data.join("uncropped_identities"))?;
    let mut seen = std::collections::HashSet::new();
    let (mut enrol, mut probes) = (Vec::new(), Vec::new());
    for (path, id) in ids {
        if seen.insert(id.clone()) {
            enrol.push((path, id));
        } else {
            probes.push((path, id));
        }
    }
    Ok(Split { enrol, probes })
}

/// Frames one photo as a kiosk would: a 4:3 crop around the primary face, scaled to 640x480.
/// `None` when the photo has no face.
pub fn frame_photo(vision: &Vision, bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    let img = vision.decode(bytes)?;
    let faces = vision.detect(&img)?;
    let Some(i) = quality::primary_face(&faces, img.width(), img.height()) else {
        return Ok(None);
    };
    let b = &faces[i].bbox;
    let (iw, ih) = (img.width() as f32, img.height() as f32);
    // Crop height so the face is FACE_SHARE of it; no larger than the photo allows at 4:3.
    let mut ch = (b.h / FACE_SHARE).max(32.0);
    let mut cw = ch * 4.0 / 3.0;
    if cw > iw {
        cw = iw;
        ch = cw * 3.0 / 4.0;
    }
    if ch > ih {
        ch = ih;
        cw = ch * 4.0 / 3.0;
    }
    let cx = b.x + b.w / 2.0;
    let cy = b.y + b.h * 0.6; // face a little above the middle
    let x0 = (cx - cw / 2.0).clamp(0.0, (iw - cw).max(0.0));
    let y0 = (cy - ch / 2.0).clamp(0.0, (ih - ch).max(0.0));
    let crop = image::imageops::crop_imm(&img, x0 as u32, y0 as u32, cw as u32, ch as u32).to_image();
    let frame: RgbImage = image::imageops::resize(&crop, FRAME_W, FRAME_H, FilterType::Triangle);
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY).encode_image(&frame)?;
    Ok(Some(out))
}

/// Makes the kiosk frames of every probe photo.
pub fn make_frames(vision: &Vision, split: &Split) -> Result<Vec<Frame>> {
    let mut frames = Vec::new();
    for (k, (path, id)) in split.probes.iter().enumerate() {
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        if let Some(jpeg) = frame_photo(vision, &bytes)? {
            frames.push(Frame {
                file: format!("frame-{k:03}.jpg"),
                identity: id.clone(),
                jpeg,
            });
        }
    }
    if frames.is_empty() {
        bail!("no kiosk frames could be made");
    }
    Ok(frames)
}

/// Writes frames as `DIR/frame-NNN.jpg` and `DIR/frames.csv` (file,identity).
pub fn write_frames(dir: &Path, frames: &[Frame]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut csv = String::from("file,identity\n");
    for f in frames {
        std::fs::write(dir.join(&f.file), &f.jpeg)?;
        csv.push_str(&format!("{},{}\n", f.file, f.identity));
    }
    std::fs::write(dir.join("frames.csv"), csv)?;
    Ok(())
}

/// Reads the frames written by [`write_frames`].
pub fn read_frames(dir: &Path) -> Result<Vec<Frame>> {
    let csv = datasets::Csv::read(&dir.join("frames.csv"))
        .with_context(|| format!("{}: make the frames first (lobby-stages --frames-out)", dir.display()))?;
    let (cf, ci) = (csv.col("file")?, csv.col("identity")?);
    csv.rows
        .iter()
        .map(|r| {
            Ok(Frame {
                file: r[cf].clone(),
                identity: r[ci].clone(),
                jpeg: std::fs::read(dir.join(&r[cf]))?,
            })
        })
        .collect()
}
