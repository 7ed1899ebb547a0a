//! `simsiam bench`: throughput of the training step alone (views already on the device), of
//! the augmentation alone, end to end (uint8 store, placed by `data.store` -> the batch's rows
//! on the device -> two views -> step), and as `simsiam train` runs it (end to end plus the
//! flush of the per-step monitors to the host), after warm-up.
//! Benchmarks live here, not in the test suite.
use crate::augment::Augmenter;
use crate::config::{Config, Online, Target};
use crate::data::ImageStore;
use crate::error::{Error, Result};
use crate::graph::Stepper;
use crate::objective::{External, Objective};
use crate::optim::Sgd;
use crate::prefetch::Prefetcher;
use crate::train::{forward_pairs, step, views, Network, RunState, StepOut, StepTargets};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Forward + backward + update on views already on the device, with the per-step monitors
    /// the step computes on the device (`train::step_stats`).
    Step,
    /// Two augmented views from the uint8 store.
    Augment,
    /// Store -> augmentation -> step.
    EndToEnd,
    /// `end-to-end` plus what the training loop adds to a step: every `monitor.log_every`
    /// steps, the copy of the per-step monitors to the host (the loop's one sync per flush;
    /// the JSON lines are not written). What `simsiam train` trains at, kNN passes and
    /// checkpoints aside.
    Train,
    /// Part of `step`: the forward pass and the loss (autograd recording, no backward).
    Forward,
    /// Part of `step`: the SGD update (on the gradients of one step; dropping them before the
    /// next backward costs nothing: `Sgd::zero_grad`).
    Optimizer,
}

#[derive(Debug, Serialize)]
pub struct Measurement {
    pub mode: Mode,
    pub device: String,
    pub batch_size: usize,
    /// The stored images' side and the views' (`data.image_size`, `augment.view_size`), pixels.
    pub image_size: usize,
    pub view_size: usize,
    pub steps: usize,
    /// Images per second; each image is two views.
    pub images_per_s: f64,
    pub ms_per_step: f64,
    /// The forward pass's autocast dtype (`fp32` without), and channels-last weights/inputs.
    pub precision: String,
    pub channels_last: bool,
    /// The timed steps were replays of a captured CUDA graph (`run.cuda_graph`).
    pub cuda_graph: bool,
    /// End to end, each iteration's views were made during the previous step (`run.prefetch`).
    pub prefetch: bool,
    /// Where the uint8 store was (`data.store`): `device`, or `host` (each batch copied over).
    pub store: String,
    /// Peak memory over the timed steps: the CUDA caching allocator's peak on a GPU, the
    /// process's peak resident set on the CPU (MiB).
    pub peak_memory_mib: Option<f64>,
    /// With `--profile DIR`: `DIR/MODE-profile.{md,json}` and `DIR/MODE-trace.json`, from
    /// iterations run after the timed ones (the profiler's overhead is not in the timing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// Where `--profile` writes, and how many iterations it records.
#[derive(Debug, Clone)]
pub struct ProfileOpts {
    pub dir: PathBuf,
    pub steps: usize,
}

impl Mode {
    /// The name used in JSON and file names.
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).expect("a unit variant")
    }
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
/// the config's size (throughput does not depend on pixel values); then, with `profile`,
/// records a few more under PyTorch's profiler.
pub fn measure(
    cfg: &Config,
    mode: Mode,
    warmup: usize,
    steps: usize,
    profile: Option<&ProfileOpts>,
) -> Result<Measurement> {
    let device = crate::device::parse_device(&cfg.run.device)?;
    if cfg.run.threads > 0 {
        tch::set_num_threads(cfg.run.threads as i32);
    }
    if device.is_cuda() {
        crate::precision::configure_cudnn(&cfg.run);
    }
    let ob = &cfg.objective;
    let from_the_loop = [
        (ob.target == Target::Eoa, "objective.target = \"eoa\""),
        (ob.target == Target::Memory, "objective.target = \"memory\""),
        (ob.online == Online::Oracle, "objective.online = \"oracle\""),
        (ob.alternation_k > 1, "objective.alternation_k > 1"),
    ];
    if let Some((_, what)) = from_the_loop.iter().find(|(on, _)| *on) {
        return Err(Error::config(format!(
            "simsiam bench: {what}: its targets come from the training loop, which bench does not run; \
             time `simsiam train` instead"
        )));
    }
    tch::manual_seed(cfg.run.seed as i64);
    let b = cfg.optim.batch_size as i64;
    let s = cfg.data.image_size as i64;
    let mut net = Network::new(cfg, device);
    let objective = Objective::new(&cfg.objective);
    let aug = Augmenter::new(&cfg.augment, cfg.data.image_size, device);
    let mut opt = net.optimizer(cfg);
    opt.lrs[..2].fill(cfg.optim.init_lr());
    // A store of four batches, placed and read as training places and reads it (`data.store`):
    // a slice of the epoch's order where the store lives, then a gather of those rows (and for
    // a host store, the copy from pinned memory).
    const STORE_BATCHES: i64 = 4;
    let rows = STORE_BATCHES * b;
    let store = ImageStore::new(
        Tensor::randint(256, [rows, s, s, 3], (Kind::Uint8, Device::Cpu)),
        Tensor::zeros([rows], (Kind::Int64, Device::Cpu)),
        Vec::new(),
        vec![String::new(); rows as usize],
    )
    .place(device, cfg.data.store)?;
    let order = Tensor::randperm(rows, (Kind::Int64, store.images.device()));
    // BYOL's and MoCo's target network and the queues: their work is part of a step.
    let mut state = RunState::new(cfg, rows as usize, 1, device);
    let batch = |i: usize| store.gather(&order.narrow(0, (i as i64 % STORE_BATCHES) * b, b), device);
    let images = batch(0);
    let n = objective.views();
    let fixed = views(&aug, &images, n);
    if mode == Mode::Optimizer {
        // Gradients for every parameter, as after a backward pass.
        step(&net.model, &objective, &mut opt, &fixed, StepTargets::default(), None)?;
    }
    // `run.cuda_graph`: the warm-up's first steps are eager, then the step is captured.
    let mut stepper = Stepper::new(cfg.run.cuda_graph, device);
    // `run.prefetch`: end to end, the next iteration's views are queued before this step.
    let end_to_end = matches!(mode, Mode::EndToEnd | Mode::Train);
    let mut prefetch = Prefetcher::new(cfg.run.prefetch && end_to_end, device);
    // `train`: the monitors of the steps since the last flush, on the device.
    let mut pending: Vec<Tensor> = Vec::new();
    let prefetch_on = prefetch.on();
    let mut iteration = 0;
    // One training step as the loop takes it: the EMA target's projections, the queues, the
    // step, the EMA update (at the schedule's first momentum).
    let mut train_step = |net: &mut Network, xs: &[Tensor], stepper: &mut Stepper, opt: &mut Sgd| -> Result<StepOut> {
        let targets = StepTargets {
            swav_queue: state.swav_queue.as_mut(),
            infonce_queue: state.infonce_queue.as_mut(),
            ..Default::default()
        };
        net.step(&cfg.model, stepper, &objective, opt, xs, targets, (0, 1), None)
    };
    // One iteration; true once the steps are replays of a captured graph.
    let mut once = || -> Result<bool> {
        match mode {
            Mode::Step => drop(train_step(&mut net, &fixed, &mut stepper, &mut opt)?),
            Mode::Augment => drop(views(&aug, &images, n)),
            Mode::EndToEnd | Mode::Train => {
                iteration += 1;
                let xs = {
                    let _r = crate::profile::range(c"augment");
                    let xs = prefetch.take(iteration, || views(&aug, &batch(iteration), n))?;
                    prefetch.ahead(iteration + 1, || views(&aug, &batch(iteration + 1), n))?;
                    xs
                };
                let out = train_step(&mut net, &xs, &mut stepper, &mut opt)?;
                if mode == Mode::Train {
                    pending.push(out.stats);
                    if pending.len() >= cfg.monitor.log_every {
                        let rows = Tensor::stack(&pending, 0).to_kind(Kind::Double).to_device(Device::Cpu);
                        drop(rows);
                        pending.clear();
                    }
                }
            }
            Mode::Forward => {
                let ext = External {
                    prototypes: net.model.prototypes.as_ref().map(Tensor::shallow_clone),
                    ..Default::default()
                };
                drop(objective.loss(&forward_pairs(&net.model, &fixed), &ext))
            }
            // The update alone, on the gradients the warm-up left (zero_grad would drop them).
            Mode::Optimizer => opt.step(),
        }
        Ok(stepper.captured())
    };
    let mut captured = false;
    for _ in 0..warmup {
        captured = once()?;
    }
    // With a graph wanted, the capture happens before the timing, however short the warm-up.
    let steps_mode = matches!(mode, Mode::Step | Mode::EndToEnd | Mode::Train);
    for _ in 0..=crate::graph::WARMUP_STEPS {
        if captured || !(steps_mode && cfg.run.cuda_graph && device.is_cuda()) {
            break;
        }
        captured = once()?;
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
        captured = once()?;
    }
    sync(device);
    let secs = t.elapsed().as_secs_f64();
    let peak_memory_mib = match cuda {
        Some((h, i)) => Some(h.peak_allocated(i) as f64 / (1024.0 * 1024.0)),
        None if device.is_cuda() => None,
        None => peak_rss_mib(),
    };
    let profile = match profile {
        Some(p) => Some(write_profile(p, mode, secs * 1e3 / steps as f64, device, &mut once)?),
        None => None,
    };
    Ok(Measurement {
        mode,
        device: crate::device::describe(device),
        batch_size: b as usize,
        image_size: s as usize,
        view_size: aug.view_side() as usize,
        steps,
        images_per_s: (b as usize * steps) as f64 / secs,
        ms_per_step: secs * 1e3 / steps as f64,
        precision: crate::precision::name(net.model.autocast).into(),
        channels_last: net.model.channels_last,
        cuda_graph: captured,
        prefetch: prefetch_on,
        store: if store.on_host_for(device) { "host" } else { "device" }.into(),
        peak_memory_mib,
        profile,
    })
}

/// Records `p.steps` iterations of `once` under the profiler; writes the trace and the
/// summary (markdown, JSON) under `p.dir` and returns the summary's path.
fn write_profile(
    p: &ProfileOpts,
    mode: Mode,
    timed_ms: f64,
    device: Device,
    once: &mut dyn FnMut() -> Result<bool>,
) -> Result<String> {
    std::fs::create_dir_all(&p.dir).map_err(|e| Error::io(&p.dir, e))?;
    let name = mode.name();
    let file = |what: &str| p.dir.join(format!("{name}-{what}"));
    let t = Instant::now();
    let ((), events) = crate::profile::record(device.is_cuda(), Some(&file("trace.json")), || {
        for _ in 0..p.steps {
            once()?;
        }
        sync(device);
        Ok(())
    })?;
    let summary = crate::profile::summarise(&events, p.steps, t.elapsed().as_nanos() as u64);
    let title = format!("`{name}` ({timed_ms:.2} ms per step unprofiled; {})", crate::device::describe(device));
    let md = file("profile.md");
    std::fs::write(&md, summary.markdown(&title)).map_err(|e| Error::io(&md, e))?;
    let json = file("profile.json");
    std::fs::write(&json, serde_json::to_string_pretty(&summary).expect("json")).map_err(|e| Error::io(&json, e))?;
    Ok(md.display().to_string())
}
