//! Parallel image decoding (JPEG, PNG, WebP, BMP, TIFF) to square RGB (resize shorter side,
//! centre crop).
use super::{assemble, Encoded, ImageStore};
use crate::error::{Error, Result};
use image::imageops::FilterType;
use rayon::prelude::*;
use std::path::Path;

/// Decodes one encoded image to `size x size x 3` RGB bytes. A JPEG without its end-of-image
/// marker is reported as truncated (decoders otherwise fill the missing rows silently).
pub fn decode_to_square(bytes: &[u8], size: usize) -> std::result::Result<Vec<u8>, String> {
    let format = image::guess_format(bytes).map_err(|e| format!("not a JPEG, PNG, WebP, BMP or TIFF image: {e}"))?;
    if format == image::ImageFormat::Jpeg {
        let tail = &bytes[bytes.len().saturating_sub(64)..];
        if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
            return Err("truncated JPEG: no end-of-image marker".into());
        }
    }
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| format!("cannot decode: {e}"))?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err("empty image".into());
    }
    if w as usize == size && h as usize == size {
        return Ok(rgb.into_raw());
    }
    // Resize the shorter side to `size`, then take the centre square (torchvision's
    // Resize(size) + CenterCrop(size)).
    let s = size as f64;
    let scale = s / (w.min(h) as f64);
    let nw = ((w as f64 * scale).round() as u32).max(size as u32);
    let nh = ((h as f64 * scale).round() as u32).max(size as u32);
    let resized = image::imageops::resize(&rgb, nw, nh, FilterType::Triangle);
    let x0 = (nw - size as u32) / 2;
    let y0 = (nh - size as u32) / 2;
    let crop = image::imageops::crop_imm(&resized, x0, y0, size as u32, size as u32).to_image();
    Ok(crop.into_raw())
}

/// Decodes all images in parallel. An unreadable image is an error naming it, unless
/// `skip_corrupt`, in which case it is counted and reported.
pub(crate) fn decode_all(
    items: (Vec<Encoded>, Vec<String>),
    size: usize,
    skip_corrupt: bool,
    source: &Path,
) -> Result<ImageStore> {
    let (encoded, classes) = items;
    let results: Vec<_> = encoded
        .into_par_iter()
        .map(|e| match decode_to_square(&e.bytes, size) {
            Ok(px) => Ok((e.name, e.class, px)),
            Err(msg) => Err((e.name, msg)),
        })
        .collect();
    let mut ok = Vec::with_capacity(results.len());
    let mut skipped = 0;
    for r in results {
        match r {
            Ok(x) => ok.push(x),
            Err((name, msg)) if skip_corrupt => {
                eprintln!("warning: skipping {name}: {msg}");
                skipped += 1;
            }
            Err((name, msg)) => {
                return Err(Error::data(
                    name,
                    format!("{msg} (pass --set data.skip_corrupt=true to skip unreadable images)"),
                ))
            }
        }
    }
    if skipped > 0 {
        eprintln!("warning: skipped {skipped} unreadable image(s) in {}", source.display());
    }
    assemble(ok, classes, size, skipped, source)
}
