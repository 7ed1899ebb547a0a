//! Image data: readers for CIFAR binary batches, folders of class folders and tar/tar.gz
//! archives of such folders (or of loose images: unlabelled data, for pre-training). Every
//! reader decodes once, in parallel, into one uint8 `N x H x W x 3` store with labels and class
//! names; training moves the store to its device.
mod archive;
mod cifar;
mod decode;
mod folder;

pub use cifar::{write_cifar_batch, CifarKind};
pub use decode::decode_to_square;

use crate::config::DataFormat;
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
}

impl ImageStore {
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
        }
    }

    /// Moves the store to a device (images stay uint8: 4x less memory and transfer than f32).
    /// The whole store lives there, `N x S x S x 3` bytes: 147 MiB for CIFAR-10's 50k images at
    /// 32 px, but 180 GiB for ImageNet's 1.28M at 224 px; when it does not fit, the error says
    /// how large it is and what to change.
    pub fn to_device(&self, device: Device) -> Result<ImageStore> {
        let too_big = |e: tch::TchError| {
            let gib = self.images.numel() as f64 / (1u64 << 30) as f64;
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            Error::config(format!(
                "the image store ({} images at {} px, {gib:.2} GiB) does not fit on {device:?}: {first}; \
                 lower data.image_size or data.train_limit",
                self.len(),
                self.image_size()
            ))
        };
        Ok(ImageStore {
            images: self.images.f_to_device(device).map_err(too_big)?,
            labels: self.labels.f_to_device(device).map_err(too_big)?,
            classes: self.classes.clone(),
            names: self.names.clone(),
            skipped: self.skipped,
        })
    }
}

/// One undecoded image: where it came from, its class, its encoded bytes.
pub(crate) struct Encoded {
    pub name: String,
    pub class: String,
    pub bytes: Vec<u8>,
}

/// The image files the folder and archive readers take (torchvision's `ImageFolder` list, less
/// the netpbm formats), matched case-insensitively.
pub const IMAGE_EXTENSIONS: [&str; 7] = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"];

pub(crate) fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    IMAGE_EXTENSIONS.iter().any(|e| lower.ends_with(e))
}

/// "no .jpg, .jpeg, ... images" for error messages.
pub(crate) fn image_kinds() -> String {
    IMAGE_EXTENSIONS.join(", ")
}

/// Loads a split from `path`, choosing the reader from `format` (or from the path for `Auto`).
pub fn load(
    path: &Path,
    format: DataFormat,
    split: Split,
    image_size: usize,
    skip_corrupt: bool,
) -> Result<ImageStore> {
    if !path.exists() {
        return Err(Error::data(path, "no such file or folder"));
    }
    let format = match format {
        DataFormat::Auto => detect(path)?,
        f => f,
    };
    match format {
        DataFormat::Cifar10 | DataFormat::Cifar100 => {
            let kind = if format == DataFormat::Cifar10 { CifarKind::Cifar10 } else { CifarKind::Cifar100 };
            cifar::load(path, kind, split, image_size)
        }
        DataFormat::Tar => decode::decode_all(archive::read(path)?, image_size, skip_corrupt, path),
        DataFormat::Folder => decode::decode_all(folder::read(path)?, image_size, skip_corrupt, path),
        DataFormat::Auto => unreachable!("detect never returns Auto"),
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

/// Assembles decoded images (each `size x size x 3`) into a store; class indices follow the
/// sorted class names, as torchvision's `ImageFolder` does. No classes: unlabelled (-1).
pub(crate) fn assemble(
    items: Vec<(String, String, Vec<u8>)>,
    mut classes: Vec<String>,
    size: usize,
    skipped: usize,
    source: &Path,
) -> Result<ImageStore> {
    if items.is_empty() {
        return Err(Error::data(source, "no images found"));
    }
    classes.sort();
    classes.dedup();
    let n = items.len();
    let mut pixels = Vec::with_capacity(n * size * size * 3);
    let mut labels = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    for (name, class, px) in items {
        labels.push(if classes.is_empty() { -1 } else { classes.binary_search(&class).expect("class listed") as i64 });
        pixels.extend_from_slice(&px);
        names.push(name);
    }
    let images = Tensor::from_slice(&pixels).view([n as i64, size as i64, size as i64, 3]);
    Ok(ImageStore { images, labels: Tensor::from_slice(&labels).to_kind(Kind::Int64), classes, names, skipped })
}

pub(crate) fn source_name(base: &Path, inner: &str) -> PathBuf {
    PathBuf::from(format!("{}:{}", base.display(), inner))
}
