//! Parallel image decoding (JPEG, PNG, WebP, BMP, TIFF, PPM/PGM) to square RGB (resize shorter side,
//! centre crop).
use super::{Bytes, Encoded, ImageStore};
use crate::error::{Error, Result};
use image::imageops::FilterType;
use rayon::prelude::*;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Decodes one encoded image to `size x size x 3` RGB bytes. A JPEG without its end-of-image
/// marker is reported as truncated (decoders otherwise fill the missing rows silently).
pub fn decode_to_square(bytes: &[u8], size: usize) -> std::result::Result<Vec<u8>, String> {
    decode_square(bytes, size).map(|(px, _)| px)
}

/// Whether a JPEG's image data end: an end-of-image marker after the start of its first scan.
/// The decoder would fill a cut-off image with grey rather than fail, so a truncated file is
/// caught here, as PIL (torchvision's reader) refuses it. The segments before the first scan
/// are stepped over by their lengths (an EXIF thumbnail there is a whole JPEG, end marker
/// included), and a scan's data cannot hold the marker (its 0xFF bytes are stuffed). Data
/// after the end are allowed, as PIL allows them: phones append metadata and videos there.
fn jpeg_ends(b: &[u8]) -> bool {
    let mut i = 2; // after the start-of-image marker
    while i + 4 <= b.len() {
        match (b[i], b[i + 1]) {
            (0xFF, 0xFF) => i += 1, // fill byte
            // Markers without a length: start of image, restarts, TEM.
            (0xFF, 0xD8 | 0xD0..=0xD7 | 0x01) => i += 2,
            (0xFF, 0xDA) => {
                let data = i + 2 + u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
                // From the end, where the marker is in all but files with data appended.
                return b.get(data..).is_some_and(|rest| rest.windows(2).rev().any(|w| w == [0xFF, 0xD9]));
            }
            (0xFF, 0xD9) => return false, // an end before any image data
            (0xFF, _) => i += 2 + u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize,
            _ => return false, // not a marker where one must be
        }
    }
    false
}

/// [`decode_to_square`], with the source's shorter side.
fn decode_square(bytes: &[u8], size: usize) -> std::result::Result<(Vec<u8>, u32), String> {
    let format =
        image::guess_format(bytes).map_err(|e| format!("not a JPEG, PNG, WebP, BMP, TIFF, PPM or PGM image: {e}"))?;
    if format == image::ImageFormat::Jpeg && !jpeg_ends(bytes) {
        return Err("truncated JPEG: no end-of-image marker after its image data".into());
    }
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| format!("cannot decode: {e}"))?;
    let rgb = to_rgb8(img);
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err("empty image".into());
    }
    if w as usize == size && h as usize == size {
        return Ok((rgb.into_raw(), h));
    }
    // Resize the shorter side to `size`, then take the centre square: torchvision's
    // Resize(size) + CenterCrop(size) to the pixel. Its long side is truncated,
    // int(size * long / short), and its crop's offset is int(round((n - size) / 2)), Python's
    // round (half to even): rounding either differently shifts or stretches the image by a pixel.
    let size32 = size as u32;
    let (short, long) = (w.min(h), w.max(h));
    let new_long = ((size as f64 * long as f64 / short as f64) as u32).max(size32);
    let (nw, nh) = if w <= h { (size32, new_long) } else { (new_long, size32) };
    let resized = image::imageops::resize(&rgb, nw, nh, FilterType::Triangle);
    let offset = |n: u32| ((n - size32) as f64 / 2.0).round_ties_even() as u32;
    let (x0, y0) = (offset(nw), offset(nh));
    let crop = image::imageops::crop_imm(&resized, x0, y0, size32, size32).to_image();
    Ok((crop.into_raw(), short))
}

/// The image as 8-bit RGB, as PIL's `convert("RGB")` gives it: grey replicated, alpha dropped
/// (not composited), a palette looked up, and 16-bit samples cut to their high byte, as PIL
/// reads 16-bit RGB(A) PNGs (the image crate would round, v / 257: one level off for a quarter
/// of the samples). 16-bit grey is cut the same way, where PIL clips it at 255 (`I;16` to `L`),
/// which leaves such an image nearly white.
fn to_rgb8(img: image::DynamicImage) -> image::RgbImage {
    use image::DynamicImage::{ImageLuma16, ImageLumaA16, ImageRgb16, ImageRgba16};
    let high = |v: u16| (v >> 8) as u8;
    let (w, h) = (img.width(), img.height());
    let rgb: Option<Vec<u8>> = match &img {
        ImageRgb16(b) => Some(b.as_raw().iter().map(|&v| high(v)).collect()),
        ImageRgba16(b) => Some(b.pixels().flat_map(|p| [high(p[0]), high(p[1]), high(p[2])]).collect()),
        ImageLuma16(b) => Some(b.pixels().flat_map(|p| [high(p[0]); 3]).collect()),
        ImageLumaA16(b) => Some(b.pixels().flat_map(|p| [high(p[0]); 3]).collect()),
        _ => None,
    };
    match rgb {
        Some(raw) => image::RgbImage::from_raw(w, h, raw).expect("w x h x 3 samples"),
        None => img.to_rgb8(),
    }
}

/// Decodes all images in parallel, each straight into its row of one `[N, size, size, 3]`
/// uint8 tensor. An image's encoded bytes are dropped once it is decoded (a folder's files are
/// read by the decoding threads), and a row's memory is only touched when its image is written,
/// so loading needs little more than the store (CIFAR-10: 1.0x it from a folder, 1.3x from an
/// archive, whose encoded bytes are read first up to `data.archive_memory_mib`; the members
/// past that are read again, in a second pass, while the pool decodes them; BENCHMARKS.md). An
/// unreadable image is an error naming it, unless `skip_corrupt`, in which case it is counted,
/// reported and left out. With `file`, the rows are that file's pages (a shared mapping made
/// to the store's size: the disk cache), which the kernel writes back as they fill.
pub(crate) fn decode_all(
    items: (Vec<Encoded>, Vec<String>),
    size: usize,
    skip_corrupt: bool,
    source: &Path,
    file: Option<&Path>,
) -> Result<ImageStore> {
    let (encoded, mut classes) = items;
    if encoded.is_empty() {
        return Err(Error::data(source, "no images found"));
    }
    classes.sort();
    classes.dedup();
    let (n, row) = (encoded.len(), size * size * 3);
    let (meta, bytes): (Vec<(String, String)>, Vec<Bytes>) =
        encoded.into_iter().map(|e| ((e.name, e.class), e.bytes)).unzip();
    let shape = [n as i64, size as i64, size as i64, 3];
    let gib = (n * row) as f64 / (1u64 << 30) as f64;
    let first_line = |e: tch::TchError| e.to_string().lines().next().unwrap_or_default().to_string();
    let images = match file {
        None => Tensor::f_empty(shape, (Kind::Uint8, Device::Cpu)).map_err(|e| {
            Error::data(
                source,
                format!(
                    "the decoded store ({n} images at {size} px, {gib:.2} GiB) does not fit in host memory: {}; \
                     lower data.image_size, or set data.cache_dir to decode it into a file",
                    first_line(e)
                ),
            )
        })?,
        Some(f) => {
            // Created here first, with the permissions of any file this process writes (the
            // umask's): libtorch would create it readable by its owner alone, and a cache
            // folder shared by a team would then serve no one else.
            std::fs::File::create(f).map_err(|e| Error::io(f, e))?;
            Tensor::f_from_file(&f.to_string_lossy(), true, (n * row) as i64, (Kind::Uint8, Device::Cpu))
                .map_err(|e| Error::data(f, format!("cannot map a {gib:.2} GiB store file: {}", first_line(e))))?
                .view(shape)
        }
    };
    // The address as an integer, so that the decoding closures can share it.
    let base = images.data_ptr() as usize;
    let pb = crate::progress::Progress::new(n as u64, "images decoded");
    // Decodes one image into each of `rows` (a link's row shows its target's image too):
    // its shorter side, or why it cannot be read.
    let decode_into = |rows: &[usize], bytes: &[u8]| {
        let decoded = decode_square(bytes, size).map(|(px, short)| {
            assert_eq!(px.len(), row, "decode_to_square gives size x size x 3 bytes");
            for &i in rows {
                // SAFETY: `images` is a fresh, contiguous uint8 CPU tensor of `n * row` bytes
                // that nothing else reads while the images are decoded, and each row is
                // written by the one image it shows, bytes `i * row .. (i + 1) * row`.
                unsafe { std::ptr::copy_nonoverlapping(px.as_ptr(), (base + i * row) as *mut u8, row) };
            }
            short
        });
        pb.inc(rows.len() as u64);
        decoded
    };
    // The rows of an archive's members past the memory a load keeps, by member ordinal: their
    // bytes come from a second pass over the archive.
    let mut later: Vec<Vec<usize>> = Vec::new();
    let mut now = Vec::with_capacity(n);
    for (i, b) in bytes.into_iter().enumerate() {
        match b {
            Bytes::Member(k) => {
                if later.len() <= k {
                    later.resize(k + 1, Vec::new());
                }
                later[k].push(i);
            }
            b => now.push((i, b)),
        }
    }
    let mut decoded: Vec<Option<std::result::Result<u32, String>>> = vec![None; n];
    let done: Vec<(usize, std::result::Result<u32, String>)> =
        now.into_par_iter().map(|(i, b)| Ok((i, decode_into(&[i], &b.read()?)))).collect::<Result<_>>()?;
    for (i, d) in done {
        decoded[i] = Some(d);
    }
    if !later.is_empty() {
        // One thread reads the archive in order, the pool decodes; the channel holds a few
        // images per decoding thread, so memory stays at the store's.
        let (send, receive) = std::sync::mpsc::sync_channel(2 * rayon::current_num_threads());
        let wanted = |k: usize| later.get(k).is_some_and(|rows| !rows.is_empty());
        let done: Vec<(usize, std::result::Result<u32, String>)> = std::thread::scope(|s| {
            let reader = s.spawn(|| super::archive::replay(source, &wanted, send));
            let done = receive
                .into_iter()
                .par_bridge()
                .map(|(k, bytes): (usize, Vec<u8>)| (k, decode_into(&later[k], &bytes)))
                .collect();
            reader.join().expect("the archive's reader does not panic").map(|()| done)
        })?;
        for (k, d) in done {
            for &i in &later[k] {
                decoded[i] = Some(d.clone());
            }
        }
    }
    pb.finish_and_clear();
    // Every row got its image, unless the archive changed between the two passes.
    let decoded: Vec<std::result::Result<u32, String>> = decoded
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            d.ok_or_else(|| {
                Error::data(
                    &meta[i].0,
                    "not found again in the archive's second pass: did the archive change while it was read?",
                )
            })
        })
        .collect::<Result<_>>()?;
    let mut keep = Vec::with_capacity(n);
    for (i, ((name, _), outcome)) in meta.iter().zip(&decoded).enumerate() {
        match outcome {
            Ok(_) => keep.push(i as i64),
            Err(msg) if skip_corrupt => eprintln!("warning: skipping {name}: {msg}"),
            Err(msg) => {
                return Err(Error::data(
                    name,
                    format!("{msg} (pass --set data.skip_corrupt=true to skip unreadable images)"),
                ))
            }
        }
    }
    let skipped = n - keep.len();
    if keep.is_empty() {
        return Err(Error::data(source, format!("no readable images: all {n} were skipped")));
    }
    // The rows of skipped images were never written: only the kept rows are read.
    let images = if skipped > 0 {
        eprintln!("warning: skipped {skipped} unreadable image(s) in {}", source.display());
        images.index_select(0, &Tensor::from_slice(&keep))
    } else {
        images
    };
    let kept = keep.iter().map(|&i| &meta[i as usize]);
    // Class indices follow the sorted class names, as torchvision's `ImageFolder`; no classes: -1.
    let label = |class: &String| classes.binary_search(class).map_or(-1, |c| c as i64);
    let labels: Vec<i64> = kept.clone().map(|(_, class)| label(class)).collect();
    let names = kept.map(|(name, _)| name.clone()).collect();
    let source_sides = super::Sides::of(decoded.into_iter().filter_map(|d| d.ok()).collect());
    let store =
        ImageStore { skipped, source_sides, ..ImageStore::new(images, Tensor::from_slice(&labels), classes, names) };
    // Decoded into the cache's file, the rows are read from its mapping (a copy when some were
    // skipped: the file is then written again from it).
    Ok(if file.is_some() && skipped == 0 { store.into_mapped() } else { store })
}
