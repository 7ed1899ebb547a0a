//! The training loop: data store on the device -> two augmented views -> SimSiam step, with
//! per-step metrics (JSON lines), the kNN monitor, atomic checkpoints, exact resume, Ctrl-C
//! handling and a stop on a non-finite loss.
mod metrics;
mod monitors;
mod network;
mod resume;
mod step;
mod stores;

pub use metrics::{run_ends, start_of, tail_of, weights_event, write_diverged_summary, Summary, Tail};
pub use network::{Ema, Network};
pub use resume::{load_run, load_run_at, run_config, RunState};
pub use step::{eoa_target, forward_pairs, step, step_stats, views, StepOut, StepTargets, STEP_STATS};
pub use stores::{load_data, SharedStores};

use crate::augment::Augmenter;
use crate::checkpoint::{self, Position};
use crate::config::{Config, DistBackend, Online, Target};
use crate::dist::{self, Group, Reducer};
use crate::error::{Error, Result};
use crate::objective::Objective;
use crate::optim::{cosine_lr, Sgd};
use indicatif::ProgressBar;
use metrics::{MetricsLog, Pending, StepLog};
use monitors::EpochMonitors;
use resume::{restore, save_checkpoint};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Tensor};

/// The seed of step `s`: every step re-seeds libtorch's generator, so a resumed run draws the
/// same augmentations as an uninterrupted one.
fn step_seed(seed: u64, step: usize) -> i64 {
    // splitmix64 of (seed, step)
    let mut x = seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((x ^ (x >> 31)) >> 1) as i64
}

/// The image order of an epoch: a seeded permutation (independent of where a run resumed).
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<i64> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut idx: Vec<i64> = (0..n as i64).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ ((epoch as u64 + 1) << 32)));
    idx
}

/// Prints a line above the progress bar, or to stderr when there is no bar (not a terminal).
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

/// This invocation's pace, for the progress lines and the summary: since when, from which
/// step, out of how many.
struct Pace {
    since: Instant,
    first_step: usize,
    total_steps: usize,
    steps_per_epoch: usize,
    epochs: usize,
    batch: usize,
}

impl Pace {
    /// Images per second this invocation, up to `pos`.
    fn images_per_s(&self, pos: Position) -> f64 {
        let done = pos.global_step.saturating_sub(self.first_step);
        (done * self.batch) as f64 / self.since.elapsed().as_secs_f64().max(1e-9)
    }
}

/// `epoch E/N [step s/S]  loss  collapse_std·√d  img/s  [ETA]` at `pos` (the step within the
/// epoch shown unless at its start; the time left unless the run is done).
fn progress_line(summary: &Summary, pos: Position, pace: &Pace) -> String {
    let left = pace.total_steps.saturating_sub(pos.global_step) * pace.batch;
    let eta = match left {
        0 => String::new(),
        _ => {
            let secs = left as f64 / pace.images_per_s(pos).max(1e-9);
            format!("  ETA {}", indicatif::HumanDuration(std::time::Duration::from_secs_f64(secs)))
        }
    };
    let step = if pos.step_in_epoch > 0 {
        format!(" step {}/{}", pos.step_in_epoch, pace.steps_per_epoch)
    } else {
        String::new()
    };
    format!(
        "epoch {:>4}/{}{step}  loss {:+.4}  collapse_std·√d {:.3}  {:.0} img/s{eta}",
        pos.epoch + usize::from(pos.step_in_epoch > 0),
        pace.epochs,
        summary.final_loss,
        summary.collapse_std_scaled,
        pace.images_per_s(pos),
    )
}

/// Options that are about this invocation, not the experiment (not saved in the config).
#[derive(Clone, Default)]
pub struct RunControl {
    /// Set by Ctrl-C: save a checkpoint and stop.
    pub interrupt: Arc<AtomicBool>,
    /// Continue from the run folder's latest checkpoint.
    pub resume: bool,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// Decoded data shared by the runs of this process (an experiment's arms), if any.
    pub data: Option<Arc<SharedStores>>,
    /// This invocation's command line: appended to the run's `commands.txt`, and named by the
    /// reports that say how they were made.
    pub command: Option<String>,
    /// Stop once this many epochs are done, with a checkpoint there ([`Error::Paused`]): the
    /// rest of the schedule (the lr follows `run.epochs`) is left to a resume.
    pub until_epoch: Option<usize>,
}

/// Joins the data-parallel job this process is a rank of (the torchrun environment), if any:
/// the group, and the device (each rank takes the GPU of its `LOCAL_RANK`).
fn join_job(cfg: &Config, device: Device) -> Result<(Option<Arc<Group>>, Device)> {
    let Some(launch) = dist::Launch::from_env()? else { return Ok((None, device)) };
    let device = match device {
        Device::Cuda(_) if matches!(cfg.run.device.as_str(), "auto" | "cuda") => Device::Cuda(launch.local_rank),
        d => d,
    };
    // NCCL for CUDA tensors, Gloo for CPU ones (as torch.distributed's defaults).
    let backend = match cfg.dist.backend {
        DistBackend::Auto if device.is_cuda() => "nccl",
        DistBackend::Auto | DistBackend::Gloo => "gloo",
        DistBackend::Nccl if !device.is_cuda() => {
            return Err(Error::config("dist.backend: \"nccl\" needs a CUDA run.device; use \"gloo\" on CPU"))
        }
        DistBackend::Nccl => "nccl",
    };
    if backend == "nccl" {
        dist::load_nccl().map_err(|e| Error::config(format!("dist.backend: nccl: {e}")))?;
    }
    let group = Group::join(&launch, backend, std::time::Duration::from_secs_f64(cfg.dist.timeout_s))?;
    let (world, batch) = (group.world, cfg.optim.batch_size);
    if batch % world != 0 || (batch / world) % cfg.model.bn_splits != 0 {
        return Err(Error::config(format!(
            "optim.batch_size: the global batch ({batch}) must split evenly over {world} ranks \
             (and each rank's share over model.bn_splits = {})",
            cfg.model.bn_splits
        )));
    }
    let per_image_state = cfg.objective.target == Target::Memory || cfg.objective.online == Online::Oracle;
    if world > 1 && per_image_state {
        return Err(Error::config(
            "objective.target = \"memory\" / objective.online = \"oracle\": a memory bank is per image \
             and is not shared across ranks; run these with one rank",
        ));
    }
    if launch.rank == 0 {
        eprintln!(
            "distributed: {world} ranks, {backend}, {} images per rank per step{}",
            batch / world,
            if cfg.dist.sync_bn { ", synchronised BatchNorm" } else { "" }
        );
    }
    Ok((Some(Arc::new(group)), device))
}

/// Clears the synchronised-BN group when training ends, however it ends.
struct SyncBnGuard;
impl Drop for SyncBnGuard {
    fn drop(&mut self) {
        dist::set_sync_bn(None);
    }
}

/// The saved summary of a run whose schedule is done (its latest checkpoint is at
/// `run.epochs`), if it has one: resuming it has nothing to train, and must not rewrite what
/// the run reported.
fn finished(cfg: &Config) -> Result<Option<(Summary, PathBuf)>> {
    let run_dir = &cfg.run.out_dir;
    let Some(ckpt) = checkpoint::latest(run_dir)? else { return Ok(None) };
    let pos = checkpoint::load_position(&ckpt)?;
    let path = run_dir.join("summary.json");
    if pos.epoch < cfg.run.epochs || !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let summary = serde_json::from_str(&text).map_err(|e| Error::data(&path, format!("not a run summary: {e}")))?;
    Ok(Some((summary, ckpt)))
}

pub fn train(cfg: &Config, control: &RunControl) -> Result<Summary> {
    if control.resume {
        if let Some((summary, ckpt)) = finished(cfg)? {
            if dist::Launch::from_env()?.is_none_or(|l| l.rank == 0) {
                eprintln!(
                    "{}: the run already finished its {} epochs; nothing to train (its summary: summary.json). \
                     To train on from its weights, start a new run with --set model.init_checkpoint='\"{}\"'",
                    cfg.run.out_dir.display(),
                    cfg.run.epochs,
                    ckpt.join("model.safetensors").display()
                );
            }
            return Ok(summary);
        }
    }
    let device = crate::device::parse_device(&cfg.run.device)?;
    if cfg.run.threads > 0 {
        tch::set_num_threads(cfg.run.threads as i32);
    }
    let (group, device) = join_job(cfg, device)?;
    let (rank, world) = group.as_ref().map(|g| (g.rank, g.world)).unwrap_or((0, 1));
    // Rank 0 leads: it writes the run folder (config, metrics, checkpoints, report) and
    // evaluates; the others train and wait for it in the next collective.
    let lead = rank == 0;
    let _sync_bn = SyncBnGuard;
    if cfg.dist.sync_bn && world > 1 {
        dist::set_sync_bn(group.clone());
    }
    let run_dir = cfg.run.out_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|e| Error::io(&run_dir, e))?;
    // One training process per run folder (rank 0 holds it for a data-parallel job).
    let _lock = if lead { Some(checkpoint::lock_run(&run_dir)?) } else { None };
    let cfg_path = run_dir.join("config.toml");
    if !control.resume && lead {
        if checkpoint::latest(&run_dir)?.is_some() {
            return Err(Error::config(format!(
                "run.out_dir: {} already holds a run; continue it with --resume {0}, or choose another --out",
                run_dir.display()
            )));
        }
        checkpoint::write_atomic(&cfg_path, cfg.to_toml().as_bytes())?;
    }
    if let (Some(command), true) = (&control.command, lead) {
        // Every invocation that trained this run, in order (a start, then its resumes).
        let path = run_dir.join("commands.txt");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{command}\n").as_bytes()))
            .map_err(|e| Error::io(&path, e))?;
    }

    let t_load = Instant::now();
    let (train_store, test_store) = match &control.data {
        Some(cache) => cache.load(cfg)?,
        None => load_data(cfg)?,
    };
    let batch = cfg.optim.batch_size;
    if train_store.len() < batch {
        return Err(Error::config(format!(
            "optim.batch_size: {batch} is larger than the {} training images",
            train_store.len()
        )));
    }
    let local_batch = batch / world;
    if lead {
        eprintln!(
            "data: {} training images{} ({}, {}px) loaded in {:.1}s; device {}, {}",
            train_store.len(),
            test_store.as_ref().map(|t| format!(", {} test images", t.len())).unwrap_or_default(),
            if train_store.labelled() { format!("{} classes", train_store.num_classes()) } else { "unlabelled".into() },
            train_store.image_size(),
            t_load.elapsed().as_secs_f64(),
            crate::device::describe(device),
            crate::precision::describe(crate::precision::autocast_kind(cfg.run.precision, device))
        );
    }
    if lead && !device.is_cuda() && cfg.run.precision == crate::config::Precision::Fp16 {
        eprintln!(
            "note: run.precision = \"fp16\" on the CPU: libtorch's CPU fp16 convolutions are some 100 times slower \
             than fp32's (it is meant for V100- and T4-class GPUs); \"auto\" trains in fp32 here"
        );
    }
    if device.is_cuda() {
        // cuDNN's autotuning for these fixed shapes, and whether its fp32 convolutions use TF32.
        crate::precision::configure_cudnn(&cfg.run);
    }
    if cfg.monitor.online_probe_lr > 0.0 && !train_store.labelled() {
        return Err(Error::config(
            "monitor.online_probe_lr: the online probe needs labelled training data (class folders); set it to 0",
        ));
    }
    let train_dev = train_store.place(device, cfg.data.store)?;
    let test_dev = test_store.as_ref().map(|t| t.place(device, cfg.data.store)).transpose()?;

    // The kNN monitor needs classes on both sides; unlabelled data still gets the others.
    let knn_on = test_store.as_ref().is_some_and(|t| t.labelled() && train_store.labelled());
    if knn_on && cfg.monitor.knn_k > train_store.len() {
        return Err(Error::config(format!(
            "monitor.knn_k: {} neighbours, but the kNN bank (the training data) holds only {} images",
            cfg.monitor.knn_k,
            train_store.len()
        )));
    }
    if test_store.is_some() && !knn_on && lead {
        eprintln!("note: the kNN monitor is off: it needs class folders in both the training and the held-out data");
    }
    let queue = cfg.objective.infonce_queue;
    if cfg.objective.infonce > 0.0 && queue >= train_store.len() {
        return Err(Error::config(format!(
            "objective.infonce_queue: {queue} keys, but the training data holds {} images: the queue would hold \
             each image's own earlier keys among its negatives; use fewer keys than images",
            train_store.len()
        )));
    }
    tch::manual_seed(cfg.run.seed as i64);
    let probe_classes = if cfg.monitor.online_probe_lr > 0.0 { train_store.num_classes() as i64 } else { 0 };
    let mut net = Network::build(cfg, device, probe_classes);
    if let (Some(f), false) = (&cfg.model.init_from, control.resume) {
        let imported = net.init_from(f, &cfg.model)?;
        if lead {
            eprintln!("initialised from {}: {imported}", f.display());
        }
    }
    if let (Some(f), false) = (&cfg.model.init_checkpoint, control.resume) {
        net.vs.load(f).map_err(|e| Error::data(f, format!("cannot start from this checkpoint: {e}")))?;
        net.sync_target();
        if lead {
            eprintln!("weights initialised from {}", f.display());
        }
    }
    let objective = Objective::new(&cfg.objective);
    // Each rank draws its shard's views as one process would draw the global batch's.
    let aug =
        Augmenter::new(&cfg.augment, cfg.data.image_size, device).sharded((rank * local_batch) as i64, batch as i64);
    let mut opt = net.optimizer(cfg);

    let mut state = RunState::new(cfg, train_store.len(), world, device);
    let mut pos = if control.resume {
        restore(cfg, &mut net, &mut opt, &mut state, &train_store, lead)?
    } else {
        Position { train_images: train_store.len(), train_digest: train_store.digest(), ..Position::default() }
    };
    // DDP's start: every rank from rank 0's weights, then gradients averaged in every backward.
    let reducer = match &group {
        Some(g) => {
            let mut vars: Vec<(String, Tensor)> = net.vs.variables().into_iter().collect();
            if let Some(e) = &net.ema {
                vars.extend(e.vs.variables().into_iter().map(|(n, t)| (format!("ema.{n}"), t)));
            }
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            g.broadcast_all(vars.iter().map(|(_, t)| t))?;
            // Gradients become ready roughly in the reverse of the parameters' order.
            let ps: Vec<Tensor> = opt.params.iter().rev().map(|p| p.tensor.shallow_clone()).collect();
            Some(Reducer::new(g.clone(), &ps, cfg.dist.bucket_mb, cfg.dist.find_unused)?)
        }
        None => None,
    };
    let file = if lead { Some(MetricsLog::open(&run_dir, control.resume.then_some(pos.global_step))?) } else { None };
    let mut log = StepLog::new(file, batch, cfg.model.dim);

    let mut summary = Summary::new(cfg.run.epochs, crate::device::describe(device));
    summary.precision = crate::precision::describe(net.model.autocast).to_string();
    let monitors = EpochMonitors::new(cfg, &train_dev, test_dev.as_ref(), knn_on, &aug, device);
    // The latest kNN top-1, for the progress bar (the summary's come from the metrics file).
    let mut last_knn: Option<f64> = None;
    if let (Some(log), true) = (log.file.as_mut(), cfg.monitor.knn_at_init && pos.global_step == 0) {
        last_knn = monitors.run(&net, log, pos)?;
        if let Some(acc) = last_knn {
            eprintln!("kNN top-1 at initialisation: {acc:.2}%");
        }
    }

    let n = train_dev.len();
    let steps_per_epoch = n / batch; // drop_last, as the official DataLoader
    let total_steps = steps_per_epoch * cfg.run.epochs;
    let pb = if control.progress && lead {
        crate::progress::bar(total_steps as u64, "steps")
    } else {
        ProgressBar::hidden()
    };
    pb.set_position(pos.global_step as u64);

    let init_lr = cfg.optim.init_lr();
    // k-step alternation: (views, cached target projections) of the coming steps.
    let mut cache: std::collections::VecDeque<(Vec<Tensor>, [Tensor; 2])> = Default::default();
    let mut last_ckpt =
        checkpoint::latest(&run_dir)?.map(|p| p.display().to_string()).unwrap_or_else(|| "(none yet)".into());
    // The global step of the newest checkpoint (a resume starts at one).
    let mut saved_at = control.resume.then_some(pos.global_step);
    let (mut last_save, mut last_said) = (Instant::now(), Instant::now());
    let pace = Pace {
        since: Instant::now(),
        first_step: pos.global_step,
        total_steps,
        steps_per_epoch,
        epochs: cfg.run.epochs,
        batch,
    };
    // `pos` with the training time of the whole run so far, as a checkpoint saves it.
    let earlier_seconds = pos.train_seconds;
    let timed = |pos: Position| Position { train_seconds: earlier_seconds + pace.since.elapsed().as_secs_f64(), ..pos };

    // Flushes the metrics; in a job, also agrees with the other ranks whether to stop (Ctrl-C, or
    // a non-finite loss, on any rank), so that every rank leaves at the same step. Ok(true): stop.
    let sync_point = |log: &mut StepLog,
                      summary: &mut Summary,
                      last_ckpt: &str,
                      opt: &Sgd,
                      pos: Position|
     -> Result<bool> {
        let had_steps = log.pending() > 0;
        if let Some(g) = &group {
            log.average_losses(g)?;
        }
        let mut flushed = log.flush(summary, last_ckpt);
        // `monitor.weights`: after the lines of the steps just flushed, how far the last one
        // moved each stage's weights (rank 0's file only). A failed write is a failed flush, so
        // that in a job every rank still reaches the agreement below.
        if let (Some(file), true, true) = (log.file.as_mut(), had_steps && flushed.is_ok(), cfg.monitor.weights) {
            if let Some(line) = metrics::weights_event(opt, pos.epoch, pos.global_step.saturating_sub(1)) {
                flushed = file.write(line);
            }
        }
        let interrupt = control.interrupt.load(Ordering::SeqCst);
        let Some(g) = &group else { return flushed.map(|_| interrupt) };
        let any = g.any(&[interrupt, flushed.is_err()])?;
        flushed?;
        if any[1] {
            return Err(Error::Distributed {
                rank: Some(rank),
                msg: "stopping: another rank failed (see rank 0's message: a non-finite loss keeps the last good checkpoint)"
                    .into(),
            });
        }
        Ok(any[0])
    };
    // Ctrl-C: rank 0 saves a checkpoint at this position (unless the newest one, `saved_at`, is
    // already there); every rank stops.
    let interrupted = |net: &Network, opt: &Sgd, pos: Position, state: &RunState, saved_at: Option<usize>| {
        pb.abandon();
        if lead && saved_at != Some(pos.global_step) {
            let dir = save_checkpoint(cfg, &run_dir, net, opt, timed(pos), state)?;
            eprintln!("checkpoint written to {}", dir.display());
        }
        Err::<Summary, _>(Error::Interrupted {
            epoch: pos.epoch,
            step: pos.global_step,
            dir: run_dir.display().to_string(),
        })
    };

    let mut stepper = crate::graph::Stepper::new(cfg.run.cuda_graph, device);
    // Targets that draw augmentations too must draw them after the step's views, as without it.
    let draws_more = cfg.objective.target == Target::Eoa || cfg.objective.alternation_k > 1;
    if cfg.run.prefetch && draws_more && lead {
        eprintln!("warning: run.prefetch: this run's targets draw augmentations too (EOA or k-step alternation); the views are made in turn");
    }
    let mut prefetch = crate::prefetch::Prefetcher::new(cfg.run.prefetch && !draws_more, device);
    // Ctrl-C while the data loaded or the monitors at initialisation ran: stop before the first
    // step, a new run with its initial weights saved (so that `--resume` starts it where it
    // would have), a resumed one as its checkpoint left it. (A job's ranks agree at their first
    // sync point instead.)
    if group.is_none() && control.interrupt.load(Ordering::SeqCst) && pos.epoch < cfg.run.epochs {
        return interrupted(&net, &opt, pos, &state, saved_at);
    }
    while pos.epoch < cfg.run.epochs {
        if control.until_epoch.is_some_and(|u| pos.epoch >= u) {
            pb.finish_and_clear();
            if lead && saved_at != Some(pos.global_step) {
                save_checkpoint(cfg, &run_dir, &net, &opt, timed(pos), &state)?;
            }
            let dir = run_dir.display().to_string();
            return Err(Error::Paused { epoch: pos.epoch, epochs: cfg.run.epochs, dir });
        }
        // The epoch's order on the device once, so a step's batch indices are a slice of it: a
        // host-to-device copy per step would wait for the GPU to finish the step before. A
        // host store (`data.store`) gathers its images with a host copy of the order.
        let order_host = Tensor::from_slice(&epoch_order(n, cfg.run.seed, pos.epoch));
        let order = order_host.to_device(device);
        let store_order = if train_dev.on_host_for(device) { &order_host } else { &order };
        let lr_at = |t: f64| cosine_lr(init_lr, t, cfg.run.epochs, cfg.optim.warmup_epochs);
        while pos.step_in_epoch < steps_per_epoch {
            let s = pos.step_in_epoch;
            let frac = if cfg.optim.lr_per_step || pos.epoch < cfg.optim.warmup_epochs {
                s as f64 / steps_per_epoch as f64
            } else {
                0.0
            };
            let lr = lr_at(pos.epoch as f64 + frac);
            opt.lrs[0] = lr;
            opt.lrs[1] = if cfg.optim.fix_pred_lr { init_lr } else { lr };

            // This rank's share of global batch j (rank r takes the r-th slice of every batch).
            let slice_of = |order: &Tensor, j: usize| {
                let first = j * batch + rank * local_batch;
                order.narrow(0, first as i64, local_batch as i64)
            };
            let batch_of = |j: usize| slice_of(&order, j);
            // The images of that share on the device, wherever the store lives.
            let images_of = |j: usize| train_dev.gather(&slice_of(store_order, j), device);
            // `n` views of this epoch's step j (j >= s), seeded by its global step.
            let step_views = |j: usize, n: usize| {
                tch::manual_seed(step_seed(cfg.run.seed, pos.global_step + j - s));
                views(&aug, &images_of(j), n)
            };
            let k = cfg.objective.alternation_k;
            if k > 1 && cache.is_empty() {
                // Alternation, step 1 (eta^t <- F_theta^t(T'(x))): the views of the next k batches
                // of this epoch and their projections with the current weights.
                for j in s..(s + k).min(steps_per_epoch) {
                    let xs = step_views(j, 2);
                    let bn = cfg.objective.alternation_bn_train;
                    let z = tch::no_grad(|| [net.model.encode(&xs[0], bn), net.model.encode(&xs[1], bn)]);
                    cache.push_back((xs, z));
                }
            }
            // A store mapped from the disk cache: the rows of the batch that the next gather
            // takes (two steps on when `run.prefetch` makes the next views before this step)
            // are read from the disk while this step runs.
            let ahead = s + 1 + usize::from(prefetch.on());
            if train_dev.is_mapped() && ahead < steps_per_epoch {
                train_dev.will_need(&slice_of(&order_host, ahead));
            }
            let idx = batch_of(s);
            let n_views = objective.views();
            let (xs, cached) = match cache.pop_front() {
                Some((xs, z)) => (xs, Some(z)),
                None => {
                    let xs = prefetch.take(pos.global_step, || step_views(s, n_views))?;
                    // `run.prefetch`: the next step's views, queued before this step.
                    if s + 1 < steps_per_epoch {
                        prefetch.ahead(pos.global_step + 1, || step_views(s + 1, n_views))?;
                    }
                    (xs, None)
                }
            };
            let targets = StepTargets {
                labels: net.model.online_probe.as_ref().map(|_| train_dev.labels.index_select(0, &idx)),
                cached,
                eoa: (cfg.objective.target == Target::Eoa)
                    .then(|| eoa_target(&net.model, &aug, &images_of(s), cfg.objective.eoa_k)),
                memory: state.memory.as_mut().map(|bank| (bank, &idx)),
                freeze_prototypes: net.model.prototypes.is_some() && pos.epoch < cfg.objective.swav.freeze_epochs,
                swav_queue: state.swav_queue.as_mut().filter(|_| pos.epoch >= cfg.objective.swav.queue_start_epoch),
                infonce_queue: state.infonce_queue.as_mut(),
            };
            let at = (pos.global_step, total_steps);
            let out = net.step(&cfg.model, &mut stepper, &objective, &mut opt, &xs, targets, at, reducer.as_ref())?;
            // The monitors are rank 0's to log; the others only check their loss (row[0]).
            let stats = out.stats;
            log.push(Pending { epoch: pos.epoch, step: pos.global_step, lr, stats });

            pos.step_in_epoch += 1;
            pos.global_step += 1;
            pb.inc(1);
            let due = log.pending() >= cfg.monitor.log_every;
            // Alone, a run checks for Ctrl-C after every step; ranks agree at flush points.
            let stop = if due || (group.is_none() && control.interrupt.load(Ordering::SeqCst)) {
                sync_point(&mut log, &mut summary, &last_ckpt, &opt, pos)?
            } else {
                false
            };
            if due {
                pb.set_message(format!(
                    "epoch {} loss {:.4} std·√d {:.3}{}",
                    pos.epoch + 1,
                    summary.final_loss,
                    summary.collapse_std_scaled,
                    last_knn.map(|k| format!(" kNN {k:.1}%")).unwrap_or_default()
                ));
            }
            if stop {
                return interrupted(&net, &opt, pos, &state, saved_at);
            }
            // In a log file (no bar), a line every few minutes within a long epoch (its end
            // has its own line).
            let within = pos.step_in_epoch < steps_per_epoch;
            let quiet_s = last_said.elapsed().as_secs_f64();
            if lead && due && within && pb.is_hidden() && quiet_s >= 60.0 * cfg.monitor.progress_minutes {
                say(&pb, progress_line(&summary, pos, &pace));
                last_said = Instant::now();
            }
            // `run.checkpoint_minutes`: within the epoch, just after a flush (every step so far
            // had a finite loss), and only where a resume repeats the run exactly (no cached
            // alternation targets pending).
            let minutes = cfg.run.checkpoint_minutes;
            if lead
                && due
                && minutes > 0.0
                && cache.is_empty()
                && within
                && last_save.elapsed().as_secs_f64() >= 60.0 * minutes
            {
                last_ckpt = save_checkpoint(cfg, &run_dir, &net, &opt, timed(pos), &state)?.display().to_string();
                (saved_at, last_save) = (Some(pos.global_step), Instant::now());
            }
        }
        if sync_point(&mut log, &mut summary, &last_ckpt, &opt, pos)? {
            return interrupted(&net, &opt, pos, &state, saved_at);
        }
        // Judged before the epoch monitors write their lines; said after the epoch's own line.
        let collapse = log.collapse_check(pos.epoch, pos.global_step.saturating_sub(1), &objective)?;
        pos.epoch += 1;
        pos.step_in_epoch = 0;
        let last = pos.epoch == cfg.run.epochs;
        let every = cfg.monitor.knn_every;
        let log_0 = log.file.as_mut().filter(|_| (every > 0 && pos.epoch % every == 0) || last);
        let monitored = log_0.is_some();
        let knn_now = match log_0 {
            Some(log_0) => monitors.run(&net, log_0, pos)?,
            None => None,
        };
        last_knn = knn_now.or(last_knn);
        // On a terminal the bar shows every epoch; in a log file (no bar) every epoch gets a line.
        if lead && (monitored || pb.is_hidden()) {
            let knn = knn_now.map(|k| format!("  kNN {k:.2}%")).unwrap_or_default();
            say(&pb, format!("{}{knn}", progress_line(&summary, pos, &pace)));
            last_said = Instant::now();
        }
        if let Some(warning) = collapse {
            say(&pb, warning);
        }
        if lead && (pos.epoch % cfg.run.checkpoint_every == 0 || last) {
            last_ckpt = save_checkpoint(cfg, &run_dir, &net, &opt, timed(pos), &state)?.display().to_string();
            (saved_at, last_save) = (Some(pos.global_step), Instant::now());
        }
    }
    pb.finish_and_clear();
    summary.steps = pos.global_step;
    summary.train_seconds = timed(pos).train_seconds;
    // The whole run's rate, unless an older checkpoint did not record its time.
    summary.images_per_s = if earlier_seconds > 0.0 || pace.first_step == 0 {
        (pos.global_step * batch) as f64 / summary.train_seconds.max(1e-9)
    } else {
        pace.images_per_s(pos)
    };
    if let Some(scaler) = &opt.loss_scaler {
        summary.loss_scale = Some(scaler.scale.double_value(&[0]));
        summary.skipped_steps = Some(scaler.skipped_steps());
    }
    if !lead {
        return Ok(summary);
    }
    drop(log);
    metrics::complete_from_log(&mut summary, &run_dir, (cfg.model.dim as f64).sqrt())?;
    let start = summary.start.as_ref().map(|t| t.collapse_std_scaled);
    let (loss, spread) = (summary.tail.loss, summary.tail.collapse_std_scaled);
    let verdict = objective.verdict(loss, spread, start);
    summary.verdict = Some(verdict);
    eprintln!(
        "collapse verdict: {verdict:?} (last 10% of steps: loss {loss:+.4}, sqrt(d)·collapse_std {spread:.3}{})",
        start.map_or(String::new(), |s| format!(", {s:.3} at step 0"))
    );
    let s_path = run_dir.join("summary.json");
    // Atomic: an experiment skips an arm by its summary, so a torn one must never exist.
    checkpoint::write_atomic(&s_path, serde_json::to_string_pretty(&summary).expect("json").as_bytes())?;
    // The report is a convenience: failing to draw it must not fail a finished run.
    match crate::report::write_report(&run_dir) {
        Ok(p) => eprintln!("report: {}", p.display()),
        Err(e) => eprintln!("warning: no report written ({e}); retry with `simsiam report {}`", run_dir.display()),
    }
    Ok(summary)
}
