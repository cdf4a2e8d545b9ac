//! Photo decoding: by content (JPEG, PNG, WebP), EXIF orientation applied, alpha dropped, with a
//! pixel limit checked from the header before any pixel is decoded (decompression bombs).

use super::VisionError;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use std::io::Cursor;

/// Decoding limits.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted width x height (after nothing is decoded yet: read from the header).
    pub max_pixels: u64,
    /// Largest accepted encoded size in bytes.
    pub max_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // 40 MP covers the largest phone and DSLR photos in the test data (7360 x 4912 = 36 MP).
        DecodeLimits {
            max_pixels: 40_000_000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Decodes `bytes` into an upright RGB image.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, VisionError> {
    if bytes.is_empty() {
        return Err(VisionError::EmptyImage);
    }
    if bytes.len() > limits.max_bytes {
        return Err(VisionError::ImageTooLarge {
            what: format!("{} bytes (limit {})", bytes.len(), limits.max_bytes),
        });
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| VisionError::UndecodableImage(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP) => {}
        Some(other) => return Err(VisionError::UnsupportedFormat(format!("{other:?}"))),
        None => return Err(VisionError::UnsupportedFormat("unknown (not JPEG, PNG or WebP)".into())),
    }
    // A decoder panic on hostile bytes must not take the caller down: contain it as a typed error.
    let max_pixels = limits.max_pixels;
    std::panic::catch_unwind(move || decode_checked(reader, max_pixels))
        .unwrap_or_else(|_| Err(VisionError::UndecodableImage("decoder failed on malformed data".into())))
}

fn decode_checked(mut reader: ImageReader<Cursor<&[u8]>>, max_pixels: u64) -> Result<RgbImage, VisionError> {
    let mut lim = Limits::default();
    lim.max_alloc = Some(max_pixels.saturating_mul(4).saturating_add(64 << 20));
    reader.limits(lim);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| VisionError::UndecodableImage(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(VisionError::UndecodableImage("zero-sized image".into()));
    }
    if (w as u64) * (h as u64) > max_pixels {
        return Err(VisionError::ImageTooLarge {
            what: format!("{w}x{h} pixels (limit {max_pixels})"),
        });
    }
    // A broken EXIF block is not worth refusing a photo for: decode it as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| VisionError::UndecodableImage(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}
