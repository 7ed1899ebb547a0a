//! The disk cache of decoded stores (`data.cache_dir`). Decoding an archive or a folder of
//! images is the slow part of a load (minutes for ImageNet); the first load decodes straight
//! into `DIR/<key>.u8`, the raw `N x S x S x 3` pixels, and writes `DIR/<key>.json` (names,
//! labels, classes, and the key) last, so a header exists only beside complete pixels. Later
//! loads map the pixels file into memory (read-only, private: the file is never changed) and
//! the pages are read from disk as batches touch them.
//!
//! The key is the source's absolute path, its fingerprint (a file's size and modification
//! time; for a folder, the count, total size and latest modification time of everything in
//! it, subfolders of class folders included) and the decoding options: any change to the
//! images, the image size or `skip_corrupt` makes another key, so an entry is never stale.
use super::{decode, ImageStore};
use crate::config::{DataConfig, DataFormat};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::UNIX_EPOCH;
use tch::{Device, Kind, Tensor};

/// Bumped when the files' layout, or the pixels decoding gives, change.
/// 2: folders' fingerprints cover every level (class folders' subfolders are read since).
/// 3: the resize lands on torchvision's pixels where the long side does not scale to a whole
///    pixel count (it was rounded, and the crop's offset floored: a pixel's shift); PPM and PGM
///    files are images, JPEGs with data after their end are read, an archive's hidden folders
///    are skipped; the header keeps the sources' sizes.
/// 4: a folder's images come in torchvision's `ImageFolder` order (a class folder's own files
///    before its subfolders'), an archive's in its folder's order (not member order), and an
///    archive's classes are the folders below the shared prefix (not each image's own folder);
///    16-bit PNGs keep each sample's high byte, as PIL does (they were rounded, v / 257); an
///    archive's hard and symbolic links are the images they name (they were passed over).
const VERSION: u32 = 4;

#[derive(Serialize, Deserialize)]
struct Header {
    key: String,
    images: usize,
    image_size: usize,
    classes: Vec<String>,
    names: Vec<String>,
    labels: Vec<i64>,
    skipped: usize,
    #[serde(default)]
    source_sides: Option<super::Sides>,
}

/// The store of the archive or folder `path` (`format` is `Tar` or `Folder`), from the cache
/// in `dir` when it holds this key, else decoded into it.
pub(crate) fn load(path: &Path, format: DataFormat, d: &DataConfig, dir: &Path) -> Result<ImageStore> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    remove_abandoned(dir);
    let key = key(path, format, d)?;
    let stem: String = Sha256::digest(key.as_bytes()).iter().take(12).map(|b| format!("{b:02x}")).collect();
    let pixels = dir.join(format!("{stem}.u8"));
    let header = dir.join(format!("{stem}.json"));
    match read(&key, &pixels, &header) {
        Ok(Some(store)) => {
            eprintln!("data: {} read from the cache ({})", path.display(), pixels.display());
            return Ok(store);
        }
        Ok(None) => {}
        Err(why) => eprintln!(
            "note: the cached store {} of {} is unusable ({why}); decoding again",
            pixels.display(),
            path.display()
        ),
    }
    // Decoded into a file of this process's own, renamed into place when complete, so that
    // processes decoding the same source at once (an experiment's parallel workers) never
    // read each other's half-written rows.
    let tmp = dir.join(format!("{stem}.u8.{}.{}.tmp", host(), std::process::id()));
    let decoded = decode_into(path, format, d, &tmp).and_then(|store| {
        std::fs::rename(&tmp, &pixels).map_err(|e| Error::io(&pixels, e))?;
        Ok(store)
    });
    let store = decoded.inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    let h = Header {
        key,
        images: store.len(),
        image_size: d.image_size,
        classes: store.classes.clone(),
        names: store.names.clone(),
        labels: Vec::<i64>::try_from(&store.labels).expect("int64 labels"),
        skipped: store.skipped,
        source_sides: store.source_sides,
    };
    crate::checkpoint::write_atomic(&header, serde_json::to_string(&h).expect("json").as_bytes())?;
    eprintln!("data: {} decoded into the cache ({})", path.display(), pixels.display());
    Ok(store)
}

/// This machine's name, which a temporary file carries beside the pid: a cache folder on a
/// shared disk is seen by other machines' processes, whose pids mean nothing here.
fn host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok { &buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())] } else { &[][..] };
    let name: String =
        String::from_utf8_lossy(name).chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// Removes the temporary pixel files in `dir` that processes of this machine left when they
/// died while decoding (a second Ctrl-C, a kill, an OOM): a store's worth of disk each,
/// which no later load would otherwise reclaim. Files of live processes and of other
/// machines are left alone.
fn remove_abandoned(dir: &Path) {
    let (this_host, Ok(entries)) = (host(), std::fs::read_dir(dir)) else { return };
    for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // `<stem>.u8.<host>.<pid>.tmp`
        let Some((_, rest)) = name.strip_suffix(".tmp").and_then(|n| n.split_once(".u8.")) else { continue };
        let Some((host, pid)) = rest.rsplit_once('.') else { continue };
        let Some(pid) = pid.parse::<libc::pid_t>().ok().filter(|&p| p > 0) else { continue };
        // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if host == this_host && !alive {
            let gib = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / (1u64 << 30) as f64;
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    eprintln!("note: removed {} ({gib:.2} GiB), left by a decode that was stopped", path.display())
                }
                Err(e) => eprintln!("note: cannot remove {}, left by a decode that was stopped: {e}", path.display()),
            }
        }
    }
}

/// Decodes the archive or folder `path` into the file `tmp`, complete and on disk on return.
fn decode_into(path: &Path, format: DataFormat, d: &DataConfig, tmp: &Path) -> Result<ImageStore> {
    let store = decode::decode_all(super::encoded(path, format, d)?, d.image_size, d.skip_corrupt, path, Some(tmp))?;
    if store.skipped > 0 {
        // The file holds a row for every image, the unreadable ones unwritten: keep the others.
        let bytes = Vec::<u8>::try_from(store.images.flatten(0, -1))
            .map_err(|e| Error::data(path, format!("cannot read the decoded store back: {e}")))?;
        std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e))?;
    }
    std::fs::File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(tmp, e))?;
    Ok(store)
}

/// The cached store of `key`: None when there is none, an error saying why one is unusable.
fn read(key: &str, pixels: &Path, header: &Path) -> std::result::Result<Option<ImageStore>, String> {
    if !header.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(header).map_err(|e| format!("{}: {e}", header.display()))?;
    let h: Header = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", header.display()))?;
    if h.key != key {
        return Err(format!("{} was written for another source: {}", header.display(), h.key));
    }
    let row = h.image_size * h.image_size * 3;
    let want = (h.images * row) as u64;
    let have = std::fs::metadata(pixels).map_err(|e| format!("{}: {e}", pixels.display()))?.len();
    if have != want || h.names.len() != h.images || h.labels.len() != h.images {
        return Err(format!("{have} bytes of pixels for {} images of {want} bytes", h.images));
    }
    let shape = [h.images as i64, h.image_size as i64, h.image_size as i64, 3];
    let images = Tensor::f_from_file(&pixels.to_string_lossy(), false, want as i64, (Kind::Uint8, Device::Cpu))
        .map_err(|e| format!("cannot map {}: {e}", pixels.display()))?
        .view(shape);
    let store = ImageStore::new(images, Tensor::from_slice(&h.labels), h.classes, h.names);
    Ok(Some(ImageStore { skipped: h.skipped, source_sides: h.source_sides, ..store }.into_mapped()))
}

/// What a cached store was made from (see the module's doc).
fn key(path: &Path, format: DataFormat, d: &DataConfig) -> Result<String> {
    let abs = path.canonicalize().map_err(|e| Error::io(path, e))?;
    let (count, bytes, latest) = fingerprint(&abs)?;
    Ok(format!(
        "simsiam store v{VERSION} | {} | {count} entries, {bytes} bytes, latest change {latest} ns | {format:?} | \
         {} px | skip_corrupt {}",
        abs.display(),
        d.image_size,
        d.skip_corrupt
    ))
}

/// (entries, bytes, latest modification in ns since the epoch) of `p` and everything below it
/// (links followed, as the folder reader follows them).
fn fingerprint(p: &Path) -> Result<(u64, u64, u128)> {
    let mut acc = (0, 0, 0);
    for entry in walkdir::WalkDir::new(p).follow_links(true) {
        let entry = entry.map_err(|e| Error::data(e.path().unwrap_or(p), format!("cannot list: {e}")))?;
        let m = entry.metadata().map_err(|e| Error::data(entry.path(), format!("cannot read metadata: {e}")))?;
        let changed = m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        acc = (acc.0 + 1, acc.1 + if m.is_file() { m.len() } else { 0 }, acc.2.max(changed));
    }
    Ok(acc)
}
