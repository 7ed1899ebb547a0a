//! `simsiam bench`: throughput of the training step alone (views already on the device), of
//! the augmentation alone, and end to end (uint8 store -> two views -> step), after warm-up.
//! Benchmarks live here, not in the test suite.
use crate::augment::Augmenter;
use crate::config::Config;
use crate::error::Result;
use crate::objective::Objective;
use crate::optim::Sgd;
use crate::train::{forward_pairs, step, views, Network, StepTargets};
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Forward + backward + update on views already on the device.
    Step,
    /// Two augmented views from the uint8 store.
    Augment,
    /// Store -> augmentation -> step, as training runs it.
    EndToEnd,
    /// Part of `step`: the forward pass and the loss (autograd recording, no backward).
    Forward,
    /// Part of `step`: zeroing the gradients and the SGD update (gradients from one step).
    Optimizer,
}

#[derive(Debug, Serialize)]
pub struct Measurement {
    pub mode: Mode,
    pub device: String,
    pub batch_size: usize,
    pub steps: usize,
    /// Images per second; each image is two views.
    pub images_per_s: f64,
    pub ms_per_step: f64,
    /// The forward pass's autocast dtype (`fp32` without), and channels-last weights/inputs.
    pub precision: String,
    pub channels_last: bool,
    /// Peak memory over the timed steps: the CUDA caching allocator's peak on a GPU, the
    /// process's peak resident set on the CPU (MiB).
    pub peak_memory_mib: Option<f64>,
}

/// The process's peak resident set size (MiB), from `getrusage`.
fn peak_rss_mib() -> Option<f64> {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0).then(|| u.ru_maxrss as f64 / 1024.0)
}

/// Waits for queued device work so wall-clock time measures it.
fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Times `steps` iterations of `mode` after `warmup` untimed ones, on random uint8 images of
/// the config's size (throughput does not depend on pixel values).
pub fn measure(cfg: &Config, mode: Mode, warmup: usize, steps: usize) -> Result<Measurement> {
    let device = crate::device::parse_device(&cfg.run.device)?;
    if cfg.run.threads > 0 {
        tch::set_num_threads(cfg.run.threads as i32);
    }
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(cfg.run.cudnn_benchmark);
    }
    tch::manual_seed(cfg.run.seed as i64);
    let b = cfg.optim.batch_size as i64;
    let s = cfg.data.image_size as i64;
    let net = Network::new(cfg, device);
    let objective = Objective::new(&cfg.objective);
    let aug = Augmenter::new(&cfg.augment, cfg.data.image_size, device);
    let mut opt = Sgd::new(net.params(cfg), 2, cfg.optim.momentum, cfg.optim.weight_decay);
    opt.fused = cfg.optim.fused;
    opt.lrs = vec![cfg.optim.init_lr(); 2];
    let images = Tensor::randint(256, [b, s, s, 3], (Kind::Uint8, device));
    let n = objective.views();
    let fixed = views(&aug, &images, n);
    if mode == Mode::Optimizer {
        // Gradients for every parameter, as after a backward pass.
        step(&net.model, &objective, &mut opt, &fixed, StepTargets::default(), None)?;
    }
    let mut once = || -> Result<()> {
        match mode {
            Mode::Step => drop(step(&net.model, &objective, &mut opt, &fixed, StepTargets::default(), None)?),
            Mode::Augment => drop(views(&aug, &images, n)),
            Mode::EndToEnd => {
                drop(step(&net.model, &objective, &mut opt, &views(&aug, &images, n), StepTargets::default(), None)?)
            }
            Mode::Forward => drop(objective.loss(&forward_pairs(&net.model, &fixed), &Default::default())),
            Mode::Optimizer => {
                opt.zero_grad();
                opt.step()
            }
        }
        Ok(())
    };
    for _ in 0..warmup {
        once()?;
    }
    sync(device);
    let cuda = match device {
        Device::Cuda(i) => crate::device::cuda_helper().ok().map(|h| (h, i)),
        _ => None,
    };
    if let Some((h, i)) = cuda {
        h.reset_peak(i);
    }
    let t = Instant::now();
    for _ in 0..steps {
        once()?;
    }
    sync(device);
    let secs = t.elapsed().as_secs_f64();
    Ok(Measurement {
        mode,
        device: crate::device::describe(device),
        batch_size: b as usize,
        steps,
        images_per_s: (b as usize * steps) as f64 / secs,
        ms_per_step: secs * 1e3 / steps as f64,
        precision: net.model.autocast.map(|k| format!("{k:?}").to_lowercase()).unwrap_or_else(|| "fp32".into()),
        channels_last: net.model.channels_last,
        peak_memory_mib: match cuda {
            Some((h, i)) => Some(h.peak_allocated(i) as f64 / (1024.0 * 1024.0)),
            None if device.is_cuda() => None,
            None => peak_rss_mib(),
        },
    })
}
