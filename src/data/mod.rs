//! Image data: readers for CIFAR binary batches, folders of class folders and tar/tar.gz
//! archives of such folders (or of loose images: unlabelled data, for pre-training). Every
//! reader decodes once, in parallel, into one uint8 `N x H x W x 3` store with labels and class
//! names; training moves the store to its device.
mod archive;
mod cache;
mod cifar;
mod decode;
mod folder;
mod mapped;

pub use cifar::{write_cifar_batch, CifarKind};
pub use decode::decode_to_square;

use crate::config::{DataConfig, DataFormat, StorePlace};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Which split a CIFAR folder should yield (`data_batch_*` vs `test_batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Decoded images of one split.
#[derive(Debug)]
pub struct ImageStore {
    /// `[N, H, W, 3]` uint8.
    pub images: Tensor,
    /// `[N]` int64 class indices into `classes`; -1 for unlabelled images.
    pub labels: Tensor,
    /// Sorted class names; empty for unlabelled data (loose images, no class folders).
    pub classes: Vec<String>,
    /// One name per image (a path inside the source), for embeddings and error messages.
    pub names: Vec<String>,
    /// Images skipped as unreadable (only with `skip_corrupt`).
    pub skipped: usize,
    /// The shorter sides of the source images before they were resized to the store's size
    /// (decoded archives and folders; None for CIFAR binaries).
    pub source_sides: Option<Sides>,
    /// Whether `images` is a file of the disk cache (`data.cache_dir`) mapped into memory, whose
    /// pages the kernel reads as batches touch them and evicts under memory pressure: its reads
    /// are then advised ([`ImageStore::will_need`], [`ImageStore::batches`]).
    mapped: bool,
}

impl ImageStore {
    /// A store of images in memory: `images` `[N, H, W, 3]` uint8, `labels` `[N]` int64 (-1
    /// unlabelled), the sorted class names and one name per image.
    pub fn new(images: Tensor, labels: Tensor, classes: Vec<String>, names: Vec<String>) -> ImageStore {
        ImageStore { images, labels, classes, names, skipped: 0, source_sides: None, mapped: false }
    }

    /// This store, its images being a mapping of a disk-cache file: marked as read in random
    /// order, and its reads advised from now on (see `mapped`).
    fn into_mapped(self) -> ImageStore {
        mapped::read_in_random_order(&self.images);
        ImageStore { mapped: true, ..self }
    }

    /// Whether the images are a mapping of the disk cache's file (`data.cache_dir`), read from
    /// the disk as they are used, rather than held in memory.
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    pub fn image_size(&self) -> usize {
        self.images.size()[1] as usize
    }
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }
    /// What the images are, not where they are: 64 bits of SHA-256 over the image count and
    /// size, the class names and labels, and the pixels of up to 1,024 evenly spaced images
    /// (every row would take minutes on ImageNet). A resume compares it with the run's, so
    /// other data of the same size is caught while the same data moved is not.
    pub fn digest(&self) -> u64 {
        use sha2::{Digest, Sha256};
        let n = self.len() as i64;
        let mut h = Sha256::new();
        h.update(format!("{n} images of {} px; classes {:?}\n", self.image_size(), self.classes));
        let labels = Vec::<i64>::try_from(self.labels.to_device(tch::Device::Cpu)).expect("int64 labels");
        h.update(labels.iter().flat_map(|l| l.to_le_bytes()).collect::<Vec<u8>>());
        let sample = n.min(1024);
        if sample > 0 {
            let idx = tch::Tensor::from_slice(&(0..sample).map(|i| i * n / sample).collect::<Vec<i64>>());
            self.will_need(&idx);
            let rows = self.images.index_select(0, &idx.to_device(self.images.device()));
            h.update(Vec::<u8>::try_from(rows.to_device(tch::Device::Cpu).flatten(0, -1)).expect("uint8 images"));
        }
        // 64 bits are plenty to tell two datasets apart, and keep a position `Copy`.
        u64::from_le_bytes(h.finalize()[..8].try_into().expect("32 bytes"))
    }

    /// Whether the images have classes (a folder or archive of loose images has none).
    pub fn labelled(&self) -> bool {
        !self.classes.is_empty()
    }

    /// This held-out store with its labels re-indexed by `reference`'s class names, so that a
    /// label means the same class in both (a test folder may lack some of the training classes;
    /// it may not have others). `what` names the two sources in the error. Unlabelled stores
    /// are returned as they are.
    pub fn aligned_to(self, reference: &ImageStore, what: &str) -> Result<ImageStore> {
        if !self.labelled() || !reference.labelled() || self.classes == reference.classes {
            return Ok(self);
        }
        let missing: Vec<&String> =
            self.classes.iter().filter(|c| reference.classes.binary_search(c).is_err()).collect();
        if !missing.is_empty() {
            return Err(Error::config(format!(
                "{what}: the held-out data has {} class(es) the training data lacks: {missing:?}",
                missing.len()
            )));
        }
        let index: Vec<i64> =
            self.classes.iter().map(|c| reference.classes.binary_search(c).map_or(-1, |i| i as i64)).collect();
        let labels = Tensor::from_slice(&index).index_select(0, &self.labels.to_device(Device::Cpu));
        Ok(ImageStore { labels: labels.to_device(self.labels.device()), classes: reference.classes.clone(), ..self })
    }
    /// Keeps `limit` images chosen by a seeded shuffle (all when `limit` is 0 or too large).
    pub fn subset(self, limit: usize, seed: u64) -> ImageStore {
        if limit == 0 || limit >= self.len() {
            return self;
        }
        let mut idx: Vec<i64> = (0..self.len() as i64).collect();
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(limit);
        idx.sort_unstable();
        let t = Tensor::from_slice(&idx);
        ImageStore {
            images: self.images.index_select(0, &t),
            labels: self.labels.index_select(0, &t),
            names: idx.iter().map(|&i| self.names[i as usize].clone()).collect(),
            classes: self.classes,
            skipped: self.skipped,
            source_sides: self.source_sides,
            mapped: false,
        }
    }

    /// The store's size in bytes (`N x S x S x 3`).
    pub fn bytes(&self) -> u64 {
        self.images.numel() as u64
    }

    /// Moves the store to a device (images stay uint8: 4x less memory and transfer than f32).
    /// The whole store lives there, `N x S x S x 3` bytes: 147 MiB for CIFAR-10's 50k images at
    /// 32 px, but 180 GiB for ImageNet's 1.28M at 224 px; when it does not fit, the error says
    /// how large it is and what to change.
    pub fn to_device(&self, device: Device) -> Result<ImageStore> {
        let too_big = |e: tch::TchError| {
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            Error::config(format!(
                "the image store ({} images at {} px, {:.2} GiB) does not fit on {device:?}: {first}; \
                 set data.store = \"host\" to keep it in host memory, or lower data.image_size or data.train_limit",
                self.len(),
                self.image_size(),
                gib(self.bytes())
            ))
        };
        Ok(ImageStore {
            images: self.images.f_to_device(device).map_err(too_big)?,
            labels: self.labels.f_to_device(device).map_err(too_big)?,
            // Staying on the CPU is no copy: the same mapping.
            mapped: self.mapped && device == Device::Cpu,
            ..self.clone_meta()
        })
    }

    /// The store placed for a run on `device` (`data.store`): all of it on the device, or the
    /// images in host memory (the labels, 8 bytes an image, on the device either way). `Auto`
    /// keeps it on a GPU when it takes at most a quarter of the GPU's memory.
    pub fn place(&self, device: Device, place: StorePlace) -> Result<ImageStore> {
        let host = match (place, device) {
            (_, Device::Cpu) | (StorePlace::Device, _) => false,
            (StorePlace::Host, _) => true,
            (StorePlace::Auto, Device::Cuda(i)) => {
                let total = crate::device::cuda_helper().ok().and_then(|h| h.total_memory(i));
                let host = total.is_some_and(|t| self.bytes() > t / 4);
                if let (true, Some(t)) = (host, total) {
                    eprintln!(
                        "note: the image store ({:.2} GiB) is over a quarter of cuda:{i}'s {:.1} GiB: it stays in \
                         host memory and each batch is copied over (data.store = \"device\" puts it on the GPU)",
                        gib(self.bytes()),
                        gib(t)
                    );
                }
                host
            }
            (StorePlace::Auto, _) => false,
        };
        if !host {
            return self.to_device(device);
        }
        let labels = self.labels.f_to_device(device).map_err(|e| Error::config(format!("the labels: {e}")))?;
        Ok(ImageStore { images: self.images.shallow_clone(), labels, ..self.clone_meta() })
    }

    /// Whether the images are somewhere other than `device` (a host store, `data.store`).
    pub fn on_host_for(&self, device: Device) -> bool {
        self.images.device() != device
    }

    /// The images of rows `idx` (`[B]` int64, on the store's device) on `device`: a gather
    /// where the store lives, then, for a host store, a copy from pinned memory that is queued
    /// on the current stream while the host goes on (the pinned block is not reused before
    /// the copy is done: PyTorch's caching host allocator records the copy's stream).
    /// `[B, S, S, 3]` uint8.
    pub fn gather(&self, idx: &Tensor, device: Device) -> Tensor {
        let rows = self.images.index_select(0, idx);
        if rows.device() == device {
            return rows;
        }
        rows.pin_memory(device).to_device_(device, Kind::Uint8, true, false)
    }

    /// The images in order, `batch` rows at a time (`[b, H, W, 3]` views, no copy). From a
    /// mapped store each batch's successor is read ahead while the batch is used.
    pub fn batches(&self, batch: i64) -> impl Iterator<Item = Tensor> + '_ {
        let n = self.images.size()[0];
        (0..n).step_by(batch.max(1) as usize).map(move |s| {
            let b = batch.min(n - s);
            if self.mapped {
                // This batch too when it is the first; then each time the one after.
                let from = if s == 0 { 0 } else { s + b };
                mapped::will_need(&self.images, from..(s + 2 * b).min(n));
            }
            self.images.narrow(0, s, b)
        })
    }

    /// Asks the kernel to read rows `rows` (`[B]` int64 on the CPU) of a mapped store in the
    /// background: the training loop names the next batch's rows while this one trains, so
    /// their gather finds them in memory instead of waiting on the disk. Nothing for a store in
    /// memory.
    pub fn will_need(&self, rows: &Tensor) {
        if !self.mapped {
            return;
        }
        // The order is a hint's input only: a tensor that is not host int64 gives no hint.
        for r in Vec::<i64>::try_from(rows).unwrap_or_default() {
            mapped::will_need(&self.images, r..r + 1);
        }
    }

    /// Another handle on the same images and labels (no copy).
    pub fn shallow_clone(&self) -> ImageStore {
        ImageStore { images: self.images.shallow_clone(), labels: self.labels.shallow_clone(), ..self.clone_meta() }
    }

    /// Everything but the tensors, for a store built from this one's tensors.
    fn clone_meta(&self) -> ImageStore {
        ImageStore {
            images: Tensor::new(),
            labels: Tensor::new(),
            classes: self.classes.clone(),
            names: self.names.clone(),
            skipped: self.skipped,
            source_sides: self.source_sides,
            mapped: self.mapped,
        }
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// One undecoded image: where it came from, its class, its encoded bytes.
pub(crate) struct Encoded {
    pub name: String,
    pub class: String,
    pub bytes: Bytes,
}

/// An image's encoded bytes: read already (an archive member), or a file to read when it is
/// decoded (so a folder's encoded images are never all in memory at once).
pub(crate) enum Bytes {
    Loaded(Vec<u8>),
    File(PathBuf),
    /// The archive's image member of this ordinal, read again as it is decoded: past the
    /// memory a load may keep (`data.archive_memory_mib`).
    Member(usize),
}

impl Bytes {
    fn read(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            Bytes::Loaded(b) => Ok(std::borrow::Cow::Borrowed(b)),
            Bytes::File(p) => std::fs::read(p).map(std::borrow::Cow::Owned).map_err(|e| Error::io(p, e)),
            Bytes::Member(_) => unreachable!("an archive's later members are read in its second pass"),
        }
    }
}

/// The image files the folder and archive readers take: torchvision's `ImageFolder` list
/// (`IMG_EXTENSIONS`), matched case-insensitively.
pub const IMAGE_EXTENSIONS: [&str; 9] = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm"];

pub(crate) fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    IMAGE_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// The key that puts a class's images in torchvision's `ImageFolder` order: by the folder
/// below the class folder that holds the image (`""`, `"a"`, `"a/sub"`), compared as a string,
/// as Python's `sorted(os.walk(class_dir))` compares them ("a" < "a b" < "a.b" < "a/sub"),
/// then by file name. The folder and archive readers sort by it, so an image's row is its index
/// in `ImageFolder(root).samples`.
pub(crate) fn image_folder_order(folder: &str, file: &str) -> (String, String) {
    (folder.to_string(), file.to_string())
}

/// "no .jpg, .jpeg, ... images" for error messages.
pub(crate) fn image_kinds() -> String {
    IMAGE_EXTENSIONS.join(", ")
}

/// Loads a split from `path`, choosing the reader from `format` (or from the path for `Auto`);
/// [`open`] with these decoding options and no disk cache.
pub fn load(
    path: &Path,
    format: DataFormat,
    split: Split,
    image_size: usize,
    skip_corrupt: bool,
) -> Result<ImageStore> {
    open(path, split, &DataConfig { format, image_size, skip_corrupt, ..Default::default() })
}

/// An error when `path` does not exist: it says which folder a relative path was read from,
/// and begins with `what` (a field or flag and how to name other data) when given.
pub fn missing(path: &Path, what: &str) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let from = match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => format!(" (read from the current folder, {})", cwd.display()),
        _ => String::new(),
    };
    Err(Error::data(path, format!("{what}{}no such file or folder{from}", if what.is_empty() { "" } else { ": " })))
}

/// The smallest, median and largest shorter side, in pixels, of a dataset's source images.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sides {
    pub min: u32,
    pub median: u32,
    pub max: u32,
}

impl Sides {
    /// Of the shorter sides `sides` (None when empty).
    pub fn of(mut sides: Vec<u32>) -> Option<Sides> {
        sides.sort_unstable();
        Some(Sides { min: *sides.first()?, median: sides[sides.len() / 2], max: *sides.last()? })
    }

    /// What a store of `size` px does to these images, when it matters: a store much smaller
    /// than the photos (a CIFAR preset on one's own photos keeps 32 px of them) or larger
    /// than most of them (every image enlarged: memory for no detail).
    pub fn note(&self, size: usize) -> Option<String> {
        let median = self.median as usize;
        let what = if median >= 2 * size {
            format!("shrinks them to {size} px (data.image_size; for photos, the imagenet preset stores 256 px)")
        } else if 3 * median < 2 * size {
            format!("enlarges most of them to {size} px (data.image_size): memory that adds no detail")
        } else {
            return None;
        };
        Some(format!("the images' shorter sides are {}-{} px (median {median}); the store {what}", self.min, self.max))
    }
}

/// A decode this long, without `data.cache_dir`, is worth keeping: the load says so.
const SLOW_DECODE_MINUTES: f64 = 0.5;

/// Loads a split as the config's `[data]` fields say, choosing the reader from `data.format`
/// (or from the path), through the disk cache of `data.cache_dir` (when set) for archives and
/// image folders, whose decoding is the slow part.
pub fn open(path: &Path, split: Split, d: &DataConfig) -> Result<ImageStore> {
    missing(path, "")?;
    let format = match d.format {
        DataFormat::Auto => detect(path)?,
        f => f,
    };
    match (format, &d.cache_dir) {
        (DataFormat::Cifar10 | DataFormat::Cifar100, _) => {
            let kind = if format == DataFormat::Cifar10 { CifarKind::Cifar10 } else { CifarKind::Cifar100 };
            cifar::load(path, kind, split, d.image_size)
        }
        (_, Some(dir)) => cache::load(path, format, d, dir),
        (_, None) => {
            let t = std::time::Instant::now();
            let store = decode::decode_all(encoded(path, format, d)?, d.image_size, d.skip_corrupt, path, None)?;
            let minutes = t.elapsed().as_secs_f64() / 60.0;
            if minutes >= SLOW_DECODE_MINUTES {
                eprintln!(
                    "note: {}: decoding took {minutes:.1} min; --set data.cache_dir='\"DIR\"' keeps the decoded \
                     store on disk, and later runs map it instead",
                    path.display()
                );
            }
            Ok(store)
        }
    }
    .inspect(|store| {
        if let Some(note) = store.source_sides.and_then(|s| s.note(d.image_size)) {
            eprintln!("note: {}: {note}", path.display());
        }
    })
}

/// The undecoded images and the class names of an archive (`Tar`) or a folder (`Folder`).
fn encoded(path: &Path, format: DataFormat, d: &DataConfig) -> Result<(Vec<Encoded>, Vec<String>)> {
    match format {
        DataFormat::Tar => archive::read(path, d.archive_memory_mib << 20),
        DataFormat::Folder => folder::read(path),
        other => unreachable!("{other:?} is read without decoding"),
    }
}

fn detect(path: &Path) -> Result<DataFormat> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if path.is_file() {
        if name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            return Ok(DataFormat::Tar);
        }
        if name.ends_with(".bin") {
            return cifar::detect_file(path);
        }
        return Err(Error::data(path, "unknown data file type: expected .tar, .tar.gz, .tgz or a CIFAR .bin batch"));
    }
    let has = |f: &str| path.join(f).is_file();
    if has("data_batch_1.bin") || has("test_batch.bin") {
        return Ok(DataFormat::Cifar10);
    }
    if has("train.bin") || has("test.bin") {
        return Ok(DataFormat::Cifar100);
    }
    Ok(DataFormat::Folder)
}

pub(crate) fn source_name(base: &Path, inner: &str) -> PathBuf {
    PathBuf::from(format!("{}:{}", base.display(), inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::{EntryType, Header};

    fn append(b: &mut tar::Builder<impl std::io::Write>, name: &str, bytes: &[u8]) {
        let mut h = Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, bytes).unwrap();
    }

    fn append_link(b: &mut tar::Builder<impl std::io::Write>, kind: EntryType, name: &str, target: &str) {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o644);
        b.append_link(&mut h, name, target).unwrap();
    }

    /// A `w x 10` PNG, its pixels from `seed`.
    fn png(w: u32, seed: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, 10, |x, y| image::Rgb([seed, x as u8 * 9, y as u8 * 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// An archive read in two passes (the images past `data.archive_memory_mib` read again as
    /// they are decoded) gives the store read in one: all kept, none kept, or some. The
    /// archive has its members out of order, a hard link after its target, a symbolic link
    /// before its target, a per-class archive and a cut JPEG (skipped on request).
    #[test]
    fn an_archive_read_in_two_passes_is_the_archive_read_in_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mut jpeg = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(16, 16, image::Rgb([1, 2, 3]))
            .write_to(&mut jpeg, image::ImageFormat::Jpeg)
            .unwrap();
        let cut = &jpeg.get_ref()[..jpeg.get_ref().len() / 2];
        let mut inner = tar::Builder::new(Vec::new());
        append(&mut inner, "i1.png", &png(12, 50));
        append(&mut inner, "i0.png", &png(13, 51));
        let inner = inner.into_inner().unwrap();
        let path = tmp.path().join("mixed.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        append(&mut b, "d/b/3.png", &png(14, 3));
        append(&mut b, "d/b/cut.jpg", cut);
        append(&mut b, "d/a/2.png", &png(20, 2));
        // Memory for these three: the rest is read again, the hard link's target kept.
        let three = png(14, 3).len() + cut.len() + png(20, 2).len();
        append(&mut b, "d/a/1.png", &png(10, 1));
        append(&mut b, "d/c.tar", &inner);
        append_link(&mut b, EntryType::Link, "d/b/hard.png", "d/a/2.png");
        append_link(&mut b, EntryType::Symlink, "d/a/soft.png", "../b/later.png");
        append(&mut b, "d/b/later.png", &png(11, 4));
        b.into_inner().unwrap();

        let listed = |memory: usize| {
            let (images, _) = archive::read(&path, memory).unwrap();
            images.iter().filter(|e| matches!(e.bytes, Bytes::Member(_))).count()
        };
        // 1.png, the inner archive's two, later.png and the link to it.
        assert_eq!((listed(usize::MAX), listed(three), listed(0)), (0, 5, 9), "images read again, of 9");
        let load =
            |memory: usize| decode::decode_all(archive::read(&path, memory).unwrap(), 8, true, &path, None).unwrap();
        let whole = load(usize::MAX);
        assert_eq!((whole.len(), whole.skipped), (8, 1));
        assert_eq!(whole.classes, ["a", "b", "c"]);
        for memory in [0, three] {
            let s = load(memory);
            assert!(s.images.equal(&whole.images), "memory {memory}: other pixels");
            assert_eq!(
                (&s.names, &s.classes, s.skipped),
                (&whole.names, &whole.classes, whole.skipped),
                "memory {memory}"
            );
            assert!(s.labels.equal(&whole.labels), "memory {memory}: other labels");
            assert_eq!(s.source_sides, whole.source_sides, "memory {memory}");
        }
        // An archive that lost a member between the passes: an error naming the image.
        let (mut images, classes) = archive::read(&path, 0).unwrap();
        images[0].bytes = Bytes::Member(99);
        let name = images[0].name.clone();
        let e = decode::decode_all((images, classes), 8, true, &path, None).unwrap_err().to_string();
        assert!(e.contains(&name) && e.contains("second pass"), "{e}");
    }
}
