//! CIFAR-10 / CIFAR-100 binary batches (the `*-binary.tar.gz` releases).
//! CIFAR-10 records: 1 label byte + 3072 pixel bytes (R plane, G plane, B plane, 32x32 each).
//! CIFAR-100 records: coarse label byte + fine label byte + 3072 pixel bytes; we use the fine label.
use super::{ImageStore, Split};
use crate::config::DataFormat;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

const PIXELS: usize = 3 * 32 * 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    Cifar10,
    Cifar100,
}

impl CifarKind {
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }
    fn record(self) -> usize {
        self.label_bytes() + PIXELS
    }
    fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }
}

pub(crate) fn detect_file(path: &Path) -> Result<DataFormat> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len() as usize;
    if len > 0 && len.is_multiple_of(CifarKind::Cifar10.record()) {
        Ok(DataFormat::Cifar10)
    } else if len > 0 && len.is_multiple_of(CifarKind::Cifar100.record()) {
        Ok(DataFormat::Cifar100)
    } else {
        Err(size_error(path, len))
    }
}

fn size_error(path: &Path, len: usize) -> Error {
    Error::data(
        path,
        format!("size {len} bytes is not a positive multiple of 3073 (CIFAR-10 records) or 3074 (CIFAR-100 records)"),
    )
}

fn files_for(dir: &Path, kind: CifarKind, split: Split) -> Vec<PathBuf> {
    match (kind, split) {
        (CifarKind::Cifar10, Split::Train) => (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect(),
        (CifarKind::Cifar10, Split::Test) => vec![dir.join("test_batch.bin")],
        (CifarKind::Cifar100, Split::Train) => vec![dir.join("train.bin")],
        (CifarKind::Cifar100, Split::Test) => vec![dir.join("test.bin")],
    }
}

fn class_names(dir: Option<&Path>, kind: CifarKind) -> Vec<String> {
    let meta = match kind {
        CifarKind::Cifar10 => "batches.meta.txt",
        CifarKind::Cifar100 => "fine_label_names.txt",
    };
    if let Some(text) = dir.and_then(|d| std::fs::read_to_string(d.join(meta)).ok()) {
        let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        if names.len() == kind.num_classes() {
            return names;
        }
    }
    (0..kind.num_classes()).map(|i| format!("class_{i:03}")).collect()
}

pub(crate) fn load(path: &Path, kind: CifarKind, split: Split, image_size: usize) -> Result<ImageStore> {
    if image_size != 32 {
        return Err(Error::config(format!("data.image_size: CIFAR binaries are 32x32, got {image_size}")));
    }
    let (files, meta_dir) = if path.is_dir() {
        let files = files_for(path, kind, split);
        for f in &files {
            if !f.is_file() {
                return Err(Error::data(f, "missing CIFAR batch file"));
            }
        }
        (files, Some(path))
    } else {
        (vec![path.to_path_buf()], path.parent())
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut names = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
        if bytes.is_empty() || bytes.len() % kind.record() != 0 {
            return Err(size_error(f, bytes.len()));
        }
        for (i, rec) in bytes.chunks_exact(kind.record()).enumerate() {
            let label = rec[kind.label_bytes() - 1] as usize;
            if label >= kind.num_classes() {
                return Err(Error::data(
                    f,
                    format!("record {i}: label {label} out of range for {} classes", kind.num_classes()),
                ));
            }
            labels.push(label as i64);
            // Planar CHW -> interleaved HWC.
            let px = &rec[kind.label_bytes()..];
            for p in 0..32 * 32 {
                pixels.extend_from_slice(&[px[p], px[1024 + p], px[2048 + p]]);
            }
            names.push(format!("{}#{i}", f.display()));
        }
    }
    let n = labels.len() as i64;
    Ok(ImageStore::new(
        Tensor::from_slice(&pixels).view([n, 32, 32, 3]),
        Tensor::from_slice(&labels).to_kind(Kind::Int64),
        class_names(meta_dir, kind),
        names,
    ))
}

/// Writes images (`[N, 32, 32, 3]` uint8, HWC) and labels as one CIFAR binary batch file.
pub fn write_cifar_batch(path: &Path, kind: CifarKind, images_hwc: &[u8], labels: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(labels.len() * kind.record());
    for (i, &l) in labels.iter().enumerate() {
        if kind == CifarKind::Cifar100 {
            out.push(0); // coarse label, unused
        }
        out.push(l);
        let img = &images_hwc[i * PIXELS..(i + 1) * PIXELS];
        for c in 0..3 {
            out.extend((0..1024).map(|p| img[p * 3 + c]));
        }
    }
    std::fs::write(path, out)
}
