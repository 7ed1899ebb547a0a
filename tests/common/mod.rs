#![allow(dead_code)]
//! Test helpers: real files written by the tests themselves.
pub mod steps;
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
    signal_after(child, run, lines, libc::SIGINT)
}

/// [`interrupt_after`] with any signal (a SIGKILL leaves no exit code: `None`).
pub fn signal_after(child: std::process::Child, run: &Path, lines: usize, signal: i32) -> (Option<i32>, String) {
    use std::time::{Duration, Instant};
    let t0 = Instant::now();
    let count = || std::fs::read_to_string(run.join("metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0);
    while count() < lines {
        assert!(t0.elapsed() < Duration::from_secs(120), "run did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: signalling a child process of this test.
    unsafe { libc::kill(child.id() as i32, signal) };
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

/// The fused SGD kernel against the per-parameter reference on `dev` (tests/optim.rs, tests/gpu.rs):
/// parameters in two groups (own lr and wd), one channels-last, one without a gradient in the
/// first step; three steps, with a save/load of the momentum buffers in the middle.
pub fn fused_sgd_equals_per_parameter(dev: tch::Device) {
    use simsiam::optim::{Param, Sgd};
    use tch::{Kind, Tensor};
    let shapes: [&[i64]; 4] = [&[8, 3, 3, 3], &[8], &[16, 8], &[5]];
    let init: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, dev))).collect();
    let grads: Vec<Vec<Tensor>> =
        (0..3).map(|_| shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, dev))).collect()).collect();
    // `tensor_lr`: the fused kernel reads each group's lr from a device tensor (what a
    // captured CUDA graph replays with).
    let run = |fused: bool, reload: bool, tensor_lr: bool| {
        let ws: Vec<Tensor> = init
            .iter()
            .map(|t| if t.dim() == 4 { simsiam::precision::channels_last(t) } else { t.copy() }.set_requires_grad(true))
            .collect();
        let params = ws
            .iter()
            .enumerate()
            .map(|(i, w)| Param { name: format!("p{i}"), tensor: w.shallow_clone(), group: usize::from(i >= 2) })
            .collect();
        let mut opt = Sgd::new(params, 2, 0.9, 5e-4);
        opt.fused = fused;
        opt.lrs = vec![0.1, 0.03];
        opt.wds = vec![5e-4, 0.0];
        if tensor_lr {
            opt.lr_tensors = Some(opt.lrs.iter().map(|&lr| Tensor::full([], lr, (Kind::Float, dev))).collect());
        }
        let tmp = tempfile::tempdir().unwrap();
        for (s, gs) in grads.iter().enumerate() {
            opt.zero_grad();
            // d loss / d w_i = g_i; the last parameter gets no gradient in the first step.
            let terms: Vec<Tensor> = ws
                .iter()
                .zip(gs)
                .enumerate()
                .filter(|(i, _)| !(s == 0 && *i == 3))
                .map(|(_, (w, g))| (w * g).sum(Kind::Float))
                .collect();
            Tensor::stack(&terms, 0).sum(Kind::Float).backward();
            opt.step();
            if reload && s == 1 {
                let f = tmp.path().join("opt.safetensors");
                opt.save(&f).unwrap();
                opt.load(&f).unwrap();
            }
        }
        assert_eq!(opt.fused, fused, "no fallback");
        ws
    };
    let reference = run(false, false, false);
    for (fused, reload, tensor_lr) in [(true, false, false), (true, true, false), (true, false, true)] {
        for (a, b) in run(fused, reload, tensor_lr).iter().zip(&reference) {
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "fused {fused} reload {reload} tensor lr {tensor_lr}: max difference {diff}");
        }
    }
    assert!(simsiam::precision::is_channels_last(&reference[0]));
}

/// SGD with fp16's loss scaler on `dev` (tests/optim.rs, tests/gpu.rs), fused and per
/// parameter: a step whose scaled gradients hold an inf or a NaN changes no weight and no
/// momentum buffer and halves the scale (the first step here, so no buffer exists yet); every
/// other step equals plain SGD on the unscaled gradients, exactly (the scale is a power of two),
/// and the scale and its count of clean steps survive a save and load of the optimiser state.
pub fn loss_scaled_sgd_matches_plain_sgd(dev: tch::Device) {
    use simsiam::optim::{Param, Sgd};
    use simsiam::precision::LossScaler;
    use tch::{Kind, Tensor};
    let shapes: [&[i64]; 3] = [&[8, 3, 3, 3], &[16, 8], &[5]];
    let init: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, dev))).collect();
    let grads: Vec<Vec<Tensor>> =
        (0..4).map(|_| shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, dev))).collect()).collect();
    let run = |fused: bool, scaled: bool| {
        let ws: Vec<Tensor> = init.iter().map(|t| t.copy().set_requires_grad(true)).collect();
        let params =
            ws.iter().enumerate().map(|(i, w)| Param { name: format!("p{i}"), tensor: w.shallow_clone(), group: 0 });
        let mut opt = Sgd::new(params.collect(), 1, 0.9, 5e-4);
        opt.fused = fused;
        opt.lrs = vec![0.1];
        opt.loss_scaler = scaled.then(|| LossScaler::new(dev));
        let tmp = tempfile::tempdir().unwrap();
        // The scaled runs start with an overflowed step that plain SGD never takes.
        let steps: Vec<(bool, &Vec<Tensor>)> = if scaled {
            std::iter::once((true, &grads[0])).chain(grads[1..].iter().map(|g| (false, g))).collect()
        } else {
            grads[1..].iter().map(|g| (false, g)).collect()
        };
        for (s, (overflow, gs)) in steps.into_iter().enumerate() {
            opt.zero_grad();
            // d loss / d w_i = g_i (an inf in p1's first entry, a NaN in p2's, when it overflows).
            let terms: Vec<Tensor> = ws
                .iter()
                .zip(gs)
                .enumerate()
                .map(|(i, (w, g))| {
                    let g = match (overflow, i) {
                        (true, 1) => g.flatten(0, -1).index_fill(0, &Tensor::from(0i64).to_device(dev), f64::INFINITY),
                        (true, 2) => g.index_fill(0, &Tensor::from(0i64).to_device(dev), f64::NAN),
                        _ => g.flatten(0, -1),
                    };
                    (w.flatten(0, -1) * g).sum(Kind::Float)
                })
                .collect();
            let loss = Tensor::stack(&terms, 0).sum(Kind::Float);
            let before: Vec<Tensor> = ws.iter().map(|w| w.copy()).collect();
            match &opt.loss_scaler {
                Some(sc) => sc.scale_loss(&loss).backward(),
                None => loss.backward(),
            }
            opt.step();
            if overflow {
                for (w, b) in ws.iter().zip(&before) {
                    assert!(w.equal(b), "fused {fused}: an overflowed step moved a weight");
                }
                let sc = opt.loss_scaler.as_ref().unwrap();
                assert_eq!(sc.found_inf().double_value(&[0]), 1.0);
                assert_eq!(sc.scale.double_value(&[0]), LossScaler::INIT_SCALE / 2.0);
            }
            if s == 2 {
                let f = tmp.path().join("opt.safetensors");
                opt.save(&f).unwrap();
                // A fresh scaler (scale 2^16, nothing counted) gets the saved state back.
                if opt.loss_scaler.is_some() {
                    opt.loss_scaler = Some(LossScaler::new(dev));
                }
                opt.load(&f).unwrap();
            }
        }
        assert_eq!(opt.fused, fused, "no fallback");
        if let Some(sc) = &opt.loss_scaler {
            // One overflow, then three clean steps (the save and load in between).
            assert_eq!(sc.scale.double_value(&[0]), LossScaler::INIT_SCALE / 2.0);
            assert_eq!(sc.growth_tracker.int64_value(&[0]), 3);
            assert_eq!(sc.skipped_steps(), 1);
        }
        ws
    };
    let reference = run(false, false);
    for fused in [false, true] {
        for (a, b) in run(fused, true).iter().zip(&reference) {
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "fused {fused}, loss-scaled: max difference {diff} from plain SGD");
        }
    }
}
