#![allow(dead_code)]
//! Test helpers: real files written by the tests themselves.
use simsiam::data::{write_cifar_batch, CifarKind};
use std::path::{Path, PathBuf};

/// The shared CIFAR-10 JPEG copy (`../shared/data/cifar10-jpeg`), if present.
pub fn shared_cifar() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10-jpeg");
    p.join("test.tar.gz").is_file().then_some(p)
}

/// Deterministic pseudo-random bytes.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// A CIFAR-10 binary file of `n` images whose colour depends on the class (learnable), with
/// pixel noise, labels cycling 0..classes.
pub fn write_cifar(path: &Path, kind: CifarKind, n: usize, classes: u8) {
    let noise = bytes(n * 3072, n as u64);
    let mut images = vec![0u8; n * 3072];
    let labels: Vec<u8> = (0..n).map(|i| (i % classes as usize) as u8).collect();
    for i in 0..n {
        let l = labels[i] as usize;
        for p in 0..1024 {
            let (y, x) = (p / 32, p % 32);
            let base = [(l * 97) % 256, (l * 53 + x * 4) % 256, (l * 31 + y * 4) % 256];
            for c in 0..3 {
                let v = base[c] as i32 + (noise[i * 3072 + p * 3 + c] as i32 % 48) - 24;
                images[i * 3072 + p * 3 + c] = v.clamp(0, 255) as u8;
            }
        }
    }
    write_cifar_batch(path, kind, &images, &labels).unwrap();
}

pub fn save_rgb(path: &Path, w: u32, h: u32, seed: u64) {
    let img = image::RgbImage::from_raw(w, h, bytes((w * h * 3) as usize, seed)).unwrap();
    img.save(path).unwrap();
}

/// Waits until `run`'s metrics.jsonl has `lines` lines, then sends SIGINT (Ctrl-C) to `child`
/// and returns its exit code and stderr.
pub fn interrupt_after(child: std::process::Child, run: &Path, lines: usize) -> (Option<i32>, String) {
    use std::time::{Duration, Instant};
    let t0 = Instant::now();
    let count = || std::fs::read_to_string(run.join("metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0);
    while count() < lines {
        assert!(t0.elapsed() < Duration::from_secs(120), "run did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: signalling a child process of this test.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A very small model, one thread, all training images: runs whose shape (steps, epochs,
/// checkpoints, ranks) is under test, not what they learn.
pub const SMALL_MODEL: [&str; 6] = [
    "model.width=4",
    "model.dim=32",
    "model.proj_hidden=32",
    "model.pred_hidden=8",
    "data.train_limit=0",
    "run.threads=1",
];
