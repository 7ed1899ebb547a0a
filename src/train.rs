//! The training loop: data store on the device -> two augmented views -> SimSiam step, with
//! per-step metrics (JSON lines), the kNN monitor, atomic checkpoints, exact resume, Ctrl-C
//! handling and a stop on a non-finite loss.
use crate::analysis;
use crate::augment::Augmenter;
use crate::checkpoint::{self, Position};
use crate::config::{Config, DistBackend, Online, Target};
use crate::data::{self, ImageStore, Split};
use crate::dist::{self, Group, Reducer};
use crate::error::{Error, Result};
use crate::eval::knn;
use crate::model::{SiameseOutput, SimSiam, INVERSE_PREDICTOR, ONLINE_PROBE, PREDICTOR};
use crate::monitor::l2_normalize;
use crate::objective::{External, MemoryBank, Objective};
use crate::optim::{cosine_lr, Param, Sgd};
use indicatif::ProgressBar;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::nn::ModuleT;
use tch::{nn, Device, Kind, Tensor};

/// A model with its variables, built from a config on a device.
pub struct Network {
    pub vs: nn::VarStore,
    pub model: SimSiam,
    /// BYOL's target network: an exponential moving average of the online weights.
    pub ema: Option<Ema>,
}

/// The EMA target network (BYOL): same architecture, frozen, updated after every step.
pub struct Ema {
    pub vs: nn::VarStore,
    pub model: SimSiam,
    /// (EMA tensor, online tensor) for every trainable online parameter.
    pairs: Vec<(Tensor, Tensor)>,
}

impl Ema {
    /// `xi <- tau xi + (1 - tau) theta` for every parameter.
    pub fn update(&mut self, tau: f64) {
        tch::no_grad(|| {
            for (e, o) in &mut self.pairs {
                let _ = e.g_mul_scalar_(tau).g_add_(&(&*o * (1.0 - tau)));
            }
        });
    }

    /// BYOL's schedule: `1 - (1 - tau_base)(cos(pi k / K) + 1) / 2`, from tau_base to 1.
    pub fn momentum(tau_base: f64, step: usize, total: usize) -> f64 {
        let frac = step as f64 / total.max(1) as f64;
        1.0 - (1.0 - tau_base) * ((std::f64::consts::PI * frac).cos() + 1.0) / 2.0
    }
}

impl Network {
    pub fn new(cfg: &Config, device: Device) -> Network {
        Network::build(cfg, device, 0)
    }

    /// With an online linear probe over `probe_classes` classes (0 = none). The speed options
    /// (`run.precision`, `run.channels_last`) apply to both networks.
    pub fn build(cfg: &Config, device: Device, probe_classes: i64) -> Network {
        let fast = |model: &mut SimSiam, vs: &nn::VarStore| {
            model.autocast = crate::precision::autocast_kind(cfg.run.precision, device);
            model.channels_last = cfg.run.channels_last && device.is_cuda();
            if model.channels_last {
                crate::precision::vars_to_channels_last(vs);
            }
        };
        let vs = nn::VarStore::new(device);
        let mut model = SimSiam::new(&vs.root(), &cfg.model, cfg.objective.target == Target::Inverse, probe_classes);
        fast(&mut model, &vs);
        let ema = cfg.model.ema_target.then(|| {
            let mut evs = nn::VarStore::new(device);
            let mut emodel = SimSiam::new(&evs.root(), &cfg.model, false, 0);
            evs.copy(&vs).expect("same architecture");
            fast(&mut emodel, &evs);
            evs.freeze();
            let online = vs.variables();
            let mut names: Vec<String> =
                online.iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n.clone()).collect();
            names.sort();
            let theirs = evs.variables();
            // Parameters the target has (not the online probe's nor h_inv's).
            let pairs = names
                .iter()
                .filter_map(|n| theirs.get(n).map(|t| (t.shallow_clone(), online[n].shallow_clone())))
                .collect();
            Ema { vs: evs, model: emodel, pairs }
        });
        Network { vs, model, ema }
    }

    /// Trainable parameters by name (sorted, so the order is stable), in three groups:
    /// 0 = encoder, 1 = predictor (kept at a constant lr with `fix_pred_lr`), 2 = online probe.
    pub fn params(&self, cfg: &Config) -> Vec<Param> {
        let mut named: Vec<(String, Tensor)> =
            self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
            .into_iter()
            .filter(|(n, _)| cfg.model.pred_trainable || !n.starts_with(PREDICTOR))
            .map(|(name, tensor)| {
                let group = if name.starts_with(ONLINE_PROBE) {
                    2
                } else {
                    usize::from(name.starts_with(PREDICTOR) || name.starts_with(INVERSE_PREDICTOR))
                };
                Param { name, tensor, group }
            })
            .collect()
    }
}

/// `n` independent augmented views of a uint8 batch `[B,H,W,3]`, each `[B,3,S,S]`.
pub fn views(aug: &Augmenter, images: &Tensor, n: usize) -> Vec<Tensor> {
    tch::no_grad(|| aug.views(images, n))
}

/// The `eoa` target: the mean normalised projection of `k` fresh views of each image, with the
/// current weights (train-mode BN, as the targets of a SimSiam step), detached. `[B, d]`
pub fn eoa_target(model: &SimSiam, aug: &Augmenter, images: &Tensor, k: usize) -> Tensor {
    tch::no_grad(|| {
        let sum = aug
            .views(images, k)
            .iter()
            .map(|x| l2_normalize(&model.encode(x, true)))
            .reduce(|a, b| a + b)
            .expect("k >= 1");
        sum / k as f64
    })
}

/// What one step leaves for the monitors, detached and still on the device.
pub struct StepOut {
    /// The training loss (with the online probe's cross-entropy when it is on).
    pub loss: Tensor,
    /// The online probe's accuracy on this batch (0 without one).
    pub probe_acc: Tensor,
    /// The inverse predictor's own loss (0 without one).
    pub inverse_loss: Tensor,
    /// z and p of view 1, for the monitors.
    pub z1: Tensor,
    pub p1: Tensor,
}

/// Targets of a step that come from outside the views.
#[derive(Default)]
pub struct StepTargets<'a> {
    /// `eoa` targets `[B, d]`.
    pub eoa: Option<Tensor>,
    /// The `memory` bank and the batch's image indices.
    pub memory: Option<(&'a mut MemoryBank, &'a Tensor)>,
    /// k-step alternation: cached target projections of the two views.
    pub cached: Option<[Tensor; 2]>,
    /// Class labels of the batch, for the online probe.
    pub labels: Option<Tensor>,
}

/// The train-mode forward pass of each pair of views (`[x1, x2, x1', x2', ...]`).
pub fn forward_pairs(model: &SimSiam, views: &[Tensor]) -> Vec<SiameseOutput> {
    views.chunks(2).map(|v| model.forward(&v[0], &v[1], true)).collect()
}

/// One update: forward each pair of views, the objective (with the inverse predictor and the
/// step-provided targets where configured), backward, SGD; then the memory bank's update.
/// In a data-parallel job `reducer` averages the gradients over ranks during the backward pass.
pub fn step(
    model: &SimSiam,
    objective: &Objective,
    opt: &mut Sgd,
    views: &[Tensor],
    targets: StepTargets,
    reducer: Option<&Reducer>,
) -> Result<StepOut> {
    let forward = crate::profile::range(c"forward");
    let pairs = forward_pairs(model, views);
    let out = &pairs[0];
    let inverse =
        model.inverse.as_ref().map(|h| [h.forward_t(&out.p1.detach(), true), h.forward_t(&out.p2.detach(), true)]);
    let mut memory = targets.memory;
    let c = &objective.cfg;
    let per_image = match &memory {
        Some((bank, idx)) if c.target == Target::Memory => Some(bank.target(idx, &out.z1, &out.z2)),
        _ => targets.eoa,
    };
    let oracle = match &memory {
        Some((bank, idx)) if c.online == Online::Oracle => {
            let h = |z: &Tensor| bank.oracle(idx, &out.z1, &out.z2, z, c.oracle_kappa, c.oracle_exclude_self);
            Some([h(&out.z1), h(&out.z2)])
        }
        _ => None,
    };
    let ext = External { per_image, inverse, cached: targets.cached, oracle };
    let mut loss = objective.loss(&pairs, &ext);
    // The online probe learns from detached features: it never shapes the representation.
    let mut probe_acc = Tensor::zeros([], (Kind::Float, out.z1.device()));
    if let (Some(probe), Some(labels)) = (&model.online_probe, &targets.labels) {
        let logits = out.y1.detach().apply(probe);
        probe_acc = logits.argmax(1, false).eq_tensor(labels).to_kind(Kind::Float).mean(Kind::Float);
        loss = &loss + logits.cross_entropy_for_logits(labels);
    }
    let inverse = ext.inverse;
    // A collective that failed inside the forward pass (synchronised BN) stops the step here.
    if let Some(e) = dist::take_forward_error() {
        return Err(e);
    }
    drop(forward);
    opt.zero_grad();
    let backward = crate::profile::range(c"backward");
    match reducer {
        Some(r) => {
            r.prepare(&loss)?;
            loss.f_backward().map_err(|e| Error::Distributed {
                rank: Some(r.rank()),
                msg: format!("the backward pass (gradient all-reduce) failed ({}): {e}", dist::PEER_FAILURE),
            })?;
        }
        None => loss.f_backward()?,
    }
    drop(backward);
    let update = crate::profile::range(c"optimizer");
    opt.step();
    drop(update);
    if let Some((bank, idx)) = memory.as_mut() {
        bank.update(idx, &out.z1, &out.z2);
    }
    let inverse_loss = match &inverse {
        Some(inv) => objective.inverse_loss(out, inv).detach(),
        None => Tensor::zeros([], (Kind::Float, loss.device())),
    };
    Ok(StepOut { loss: loss.detach(), probe_acc, inverse_loss, z1: out.z1.detach(), p1: out.p1.detach() })
}

/// The per-step monitors, in the order of the `[8]` tensor [`step_stats`] returns.
pub const STEP_STATS: [&str; 14] = [
    "loss",
    "collapse_std",
    "m_o_z",
    "m_r_z",
    "m_r2_z",
    "m_o_p",
    "m_r_p",
    "m_r2_p",
    "eta_p_star",
    "cos_eta_minus_half",
    "o_e_norm",
    "r_e_norm",
    "inverse_loss",
    "online_probe_acc",
];

/// The per-step monitors of [`STEP_STATS`] as one tensor on the device, so logging costs one
/// host sync per flush, not per value: loss, `collapse_std` of z, Zhang et al.'s `m_o, m_r, m_r2`
/// of Z and of P, `eta_p*` with `cos(o_e + 0.5 o_p, o_p)`, the norms of the extra gradient's
/// centre and residual parts, and the inverse predictor's loss.
pub fn step_stats(out: &StepOut) -> Tensor {
    Tensor::cat(
        &[
            out.loss.to_kind(Kind::Float).view([1]),
            // Z and P normalised and centred once for all of these.
            analysis::Centred::new(&out.z1, &out.p1).step_monitors(),
            out.inverse_loss.to_kind(Kind::Float).view([1]),
            out.probe_acc.to_kind(Kind::Float).view([1]),
        ],
        0,
    )
}

/// Geometry of a fixed evaluation subset (eval-mode BN): spectra of z and y, covariance of z,
/// and Zhang et al.'s `c(eta)` grid from z and p.
fn geometry(model: &SimSiam, images: &Tensor, aug: &Augmenter) -> (analysis::Geometry, Vec<(f64, f64)>) {
    tch::no_grad(|| {
        let (mut zs, mut ys) = (Vec::new(), Vec::new());
        let n = images.size()[0];
        for s in (0..n).step_by(512) {
            let x = aug.eval_view(&images.narrow(0, s, 512.min(n - s)));
            let y = model.features(&x, false);
            zs.push(y.apply_t(&model.projector, false));
            ys.push(y);
        }
        let z = Tensor::cat(&zs, 0);
        let p = model.predictor.forward_t(&z, false);
        (analysis::geometry(&z, &Tensor::cat(&ys, 0)), analysis::eta_grid(&z, &p))
    })
}

/// Training state beyond weights and optimiser, for the checkpoint: the memory bank, the EMA
/// target network.
fn extra_state(memory: &Option<MemoryBank>, ema: &Option<Ema>) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    if let Some(b) = memory {
        out.push(("memory.eta".to_string(), b.eta.shallow_clone()));
        out.push(("memory.seen".to_string(), b.seen.shallow_clone()));
    }
    if let Some(e) = ema {
        out.extend(e.vs.variables().into_iter().map(|(n, t)| (format!("ema.{n}"), t)));
    }
    out
}

fn save_checkpoint(
    cfg: &Config,
    run_dir: &Path,
    net: &Network,
    opt: &Sgd,
    pos: Position,
    memory: &Option<MemoryBank>,
) -> Result<PathBuf> {
    let extra = extra_state(memory, &net.ema);
    let refs: Vec<(&str, &Tensor)> = extra.iter().map(|(n, t)| (n.as_str(), t)).collect();
    checkpoint::save(run_dir, &net.vs, opt, pos, &refs, cfg.run.keep_checkpoints)
}

/// Resumes from the run's latest checkpoint: weights, optimiser, EMA target and memory bank
/// state; returns the position to continue from. The training data must be the run's (same
/// number of images); when it was passed at a new place, the saved config follows it.
fn restore(
    cfg: &Config,
    net: &mut Network,
    opt: &mut Sgd,
    memory: &mut Option<MemoryBank>,
    train_images: usize,
    lead: bool,
) -> Result<Position> {
    let run_dir = &cfg.run.out_dir;
    let ckpt = checkpoint::latest(run_dir)?.ok_or_else(|| Error::data(run_dir, "no checkpoint to resume from"))?;
    let saved = checkpoint::load_position(&ckpt)?;
    if saved.train_images != 0 && saved.train_images != train_images {
        return Err(Error::config(format!(
            "data.train: {train_images} training images now, {} when the run started: a resume needs the same training data",
            saved.train_images
        )));
    }
    checkpoint::load_model(&mut net.vs, &ckpt)?;
    opt.load(&ckpt.join("optim.safetensors"))?;
    let state = checkpoint::load_extra(&ckpt)?;
    if let Some(e) = net.ema.as_mut() {
        for (n, mut t) in e.vs.variables() {
            let src = state.get(&format!("ema.{n}")).ok_or_else(|| {
                Error::data(&ckpt, format!("the EMA target's `{n}` is missing from state.safetensors"))
            })?;
            tch::no_grad(|| t.copy_(src));
        }
    }
    if let Some(bank) = memory.as_mut() {
        let missing = || Error::data(&ckpt, "the memory bank (state.safetensors) is missing");
        bank.eta = state.get("memory.eta").ok_or_else(missing)?.to_device(bank.eta.device());
        bank.seen = state.get("memory.seen").ok_or_else(missing)?.to_device(bank.seen.device());
    }
    if lead {
        let cfg_path = run_dir.join("config.toml");
        let mut saved_cfg = Config::load(&cfg_path)?;
        if saved_cfg.data.train != cfg.data.train || saved_cfg.data.test != cfg.data.test {
            (saved_cfg.data.train, saved_cfg.data.test) = (cfg.data.train.clone(), cfg.data.test.clone());
            checkpoint::write_atomic(&cfg_path, saved_cfg.to_toml().as_bytes())?;
        }
        eprintln!("resuming from {} (epoch {}, step {})", ckpt.display(), saved.epoch, saved.global_step);
    }
    Ok(Position { train_images, ..saved })
}

/// Loads the train and (optional) test stores named by the config.
pub fn load_data(cfg: &Config) -> Result<(ImageStore, Option<ImageStore>)> {
    let d = &cfg.data;
    let train_path =
        d.train.as_ref().ok_or_else(|| Error::config("data.train: no training data given (pass --data PATH)"))?;
    let train = data::open(train_path, Split::Train, d)?.subset(d.train_limit, cfg.run.seed);
    let test = match &d.test {
        Some(p) => Some(data::open(p, Split::Test, d)?.subset(d.test_limit, cfg.run.seed.wrapping_add(1)).aligned_to(
            &train,
            &format!("data.test ({}) against data.train ({})", p.display(), train_path.display()),
        )?),
        None => None,
    };
    Ok((train, test))
}

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

/// What a finished run reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub epochs: usize,
    pub steps: usize,
    pub final_loss: f64,
    pub collapse_std: f64,
    pub collapse_std_scaled: f64,
    pub knn_init: Option<f64>,
    pub knn_final: Option<f64>,
    /// Means over the last 10% of steps (at least one) of the per-step monitors: `loss`,
    /// `collapse_std_scaled`, `m_o_z`, `m_r_z`, `m_o_p`, `m_r_p`.
    pub tail: Tail,
    pub train_seconds: f64,
    pub images_per_s: f64,
    pub device: String,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Tail {
    pub loss: f64,
    pub collapse_std_scaled: f64,
    pub m_o_z: f64,
    pub m_r_z: f64,
    pub m_o_p: f64,
    pub m_r_p: f64,
}

/// Means of the step monitors over the last 10% of the steps logged in `metrics.jsonl`.
pub fn tail_means(run_dir: &Path) -> Result<Tail> {
    let rows = crate::report::read_lines(&run_dir.join("metrics.jsonl"))?;
    let steps: Vec<&serde_json::Value> = rows.iter().filter(|r| r.get("loss").is_some()).collect();
    let n = (steps.len() / 10).max(1).min(steps.len());
    let tail = &steps[steps.len() - n..];
    let mean = |k: &str| tail.iter().filter_map(|r| r[k].as_f64()).sum::<f64>() / n.max(1) as f64;
    Ok(Tail {
        loss: mean("loss"),
        collapse_std_scaled: mean("collapse_std_scaled"),
        m_o_z: mean("m_o_z"),
        m_r_z: mean("m_r_z"),
        m_o_p: mean("m_o_p"),
        m_r_p: mean("m_r_p"),
    })
}

/// Per-step values kept on the device until the next flush (one host sync per flush).
struct Pending {
    epoch: usize,
    step: usize,
    lr: f64,
    /// See [`STEP_STATS`].
    stats: Tensor,
}

struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens `metrics.jsonl`; on resume drops lines past the checkpoint's step, so the file
    /// holds exactly one line per step taken by the weights being trained.
    fn open(run_dir: &Path, keep_below_step: Option<usize>) -> Result<MetricsLog> {
        let path = run_dir.join("metrics.jsonl");
        if let Some(limit) = keep_below_step {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| (s as usize) < limit)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(&path, kept).map_err(|e| Error::io(&path, e))?;
        }
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { file, path })
    }
    fn write(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| Error::io(&self.path, e))
    }
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
}

/// The last decoded train and test stores of a process that trains several runs (an
/// experiment's arms): a run whose `[data]` fields and seed (which picks the `*_limit`
/// subsets) equal the last load's reuses its stores instead of decoding the images again.
#[derive(Default)]
pub struct SharedStores {
    last: std::sync::Mutex<Option<LastLoad>>,
    decodes: std::sync::atomic::AtomicUsize,
}

struct LastLoad {
    data: crate::config::DataConfig,
    seed: u64,
    train: ImageStore,
    test: Option<ImageStore>,
}

impl SharedStores {
    /// `load_data(cfg)`, or the stores of the last call if it had the same data fields and seed.
    pub fn load(&self, cfg: &Config) -> Result<(ImageStore, Option<ImageStore>)> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = last.as_ref().filter(|c| c.data == cfg.data && c.seed == cfg.run.seed) {
            return Ok((c.train.shallow_clone(), c.test.as_ref().map(ImageStore::shallow_clone)));
        }
        let (train, test) = load_data(cfg)?;
        self.decodes.fetch_add(1, Ordering::SeqCst);
        *last = Some(LastLoad {
            data: cfg.data.clone(),
            seed: cfg.run.seed,
            train: train.shallow_clone(),
            test: test.as_ref().map(ImageStore::shallow_clone),
        });
        Ok((train, test))
    }

    /// How many times the data was decoded (not reused).
    pub fn decodes(&self) -> usize {
        self.decodes.load(Ordering::SeqCst)
    }
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

pub fn train(cfg: &Config, control: &RunControl) -> Result<Summary> {
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
            "data: {} training images{} ({}, {}px) loaded in {:.1}s; device {}",
            train_store.len(),
            test_store.as_ref().map(|t| format!(", {} test images", t.len())).unwrap_or_default(),
            if train_store.labelled() { format!("{} classes", train_store.num_classes()) } else { "unlabelled".into() },
            train_store.image_size(),
            t_load.elapsed().as_secs_f64(),
            crate::device::describe(device)
        );
    }
    if device.is_cuda() {
        // Let cuDNN pick the fastest convolution algorithms for these fixed shapes.
        tch::Cuda::cudnn_set_benchmark(cfg.run.cudnn_benchmark);
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
    if test_store.is_some() && !knn_on && lead {
        eprintln!("note: the kNN monitor is off: it needs class folders in both the training and the held-out data");
    }
    tch::manual_seed(cfg.run.seed as i64);
    let probe_classes = if cfg.monitor.online_probe_lr > 0.0 { train_store.num_classes() as i64 } else { 0 };
    let mut net = Network::build(cfg, device, probe_classes);
    if let (Some(f), false) = (&cfg.model.init_from, control.resume) {
        let n = crate::export::init_from_torchvision(&mut net.vs, f)?;
        eprintln!("backbone initialised from {} ({n} tensors)", f.display());
    }
    if let (Some(f), false) = (&cfg.model.init_checkpoint, control.resume) {
        net.vs.load(f).map_err(|e| Error::data(f, format!("cannot start from this checkpoint: {e}")))?;
        eprintln!("weights initialised from {}", f.display());
    }
    let objective = Objective::new(&cfg.objective);
    // Each rank draws its shard's views as one process would draw the global batch's.
    let aug =
        Augmenter::new(&cfg.augment, cfg.data.image_size, device).sharded((rank * local_batch) as i64, batch as i64);
    let params = net.params(cfg);
    let mut opt = Sgd::new(params, 3, cfg.optim.momentum, cfg.optim.weight_decay);
    opt.fused = cfg.optim.fused;
    opt.lrs[2] = cfg.monitor.online_probe_lr;
    opt.wds[2] = 0.0;

    let mut memory = (cfg.objective.target == Target::Memory || cfg.objective.online == Online::Oracle)
        .then(|| MemoryBank::new(train_store.len() as i64, cfg.model.dim, cfg.objective.memory_momentum, device));
    let mut pos = if control.resume {
        restore(cfg, &mut net, &mut opt, &mut memory, train_store.len(), lead)?
    } else {
        Position { train_images: train_store.len(), ..Position::default() }
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
    let mut log =
        if lead { Some(MetricsLog::open(&run_dir, control.resume.then_some(pos.global_step))?) } else { None };

    let knn = |net: &Network| -> Option<f64> {
        test_dev.as_ref().filter(|_| knn_on).map(|test| {
            knn::knn_accuracy(&net.model, &train_dev, test, &aug, &[cfg.monitor.knn_k], cfg.monitor.knn_t)[0]
        })
    };
    let mut summary = Summary {
        epochs: cfg.run.epochs,
        steps: 0,
        final_loss: f64::NAN,
        collapse_std: f64::NAN,
        collapse_std_scaled: f64::NAN,
        knn_init: None,
        knn_final: None,
        tail: Tail::default(),
        train_seconds: 0.0,
        images_per_s: 0.0,
        device: crate::device::describe(device),
    };
    // A fixed evaluation subset for the geometry monitor: the first images of the test split
    // (or of the training split without one).
    let geometry_images = {
        let src = test_dev.as_ref().unwrap_or(&train_dev);
        src.images.narrow(0, 0, (cfg.monitor.geometry_samples as i64).min(src.len() as i64)).to_device(device)
    };
    // The epoch monitors: kNN top-1 on the test split and the geometry of the fixed subset.
    let evaluate = |net: &Network, log: &mut MetricsLog, pos: Position| -> Result<Option<f64>> {
        let acc = knn(net);
        if let Some(acc) = acc {
            log.write(json!({"event": "knn", "epoch": pos.epoch, "step": pos.global_step, "knn_top1": acc, "k": cfg.monitor.knn_k, "t": cfg.monitor.knn_t}))?;
        }
        let (g, grid) = geometry(&net.model, &geometry_images, &aug);
        log.write(
            json!({"event": "geometry", "epoch": pos.epoch, "step": pos.global_step, "geometry": g, "eta_grid": grid}),
        )?;
        if cfg.monitor.instances {
            let src = test_dev.as_ref().unwrap_or(&train_dev);
            let n = cfg.monitor.instances_n.min(src.len());
            let probe = crate::analyse::Probe {
                model: &net.model,
                images: src.images.narrow(0, 0, n as i64).to_device(device),
                aug: &aug,
                aug_cfg: &cfg.augment,
                image_size: cfg.data.image_size,
                k: cfg.monitor.instances_k,
                train_bn: false,
            };
            let v = probe.instances(&[n], false);
            let row = &v["by_size"][0];
            log.write(json!({
                "event": "instances", "epoch": pos.epoch, "step": pos.global_step, "instances": n,
                "top1": row["id"]["top1"], "top5": row["id"]["top5"], "entropy": row["id"]["entropy"],
                "p_true": row["id"]["p_true"], "between_fraction": row["between_fraction"],
                "kappa_shared": row["kappa_shared"], "mean_resultant": v["mean_resultant"],
            }))?;
        }
        Ok(acc)
    };
    if let (Some(log), true) = (log.as_mut(), cfg.monitor.knn_at_init && pos.global_step == 0) {
        summary.knn_init = evaluate(&net, log, pos)?;
        if let Some(acc) = summary.knn_init {
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
    let sqrt_d = (cfg.model.dim as f64).sqrt();
    let mut pending: Vec<Pending> = Vec::new();
    // k-step alternation: (views, cached target projections) of the coming steps.
    let mut cache: std::collections::VecDeque<(Vec<Tensor>, [Tensor; 2])> = Default::default();
    let mut last_ckpt =
        checkpoint::latest(&run_dir)?.map(|p| p.display().to_string()).unwrap_or_else(|| "(none yet)".into());
    let mut last_knn: Option<f64> = summary.knn_init;
    let t_train = Instant::now();
    let mut t_flush = Instant::now();
    let mut images_done = 0usize;

    // Fetches pending step metrics (one sync), checks them, writes them.
    let flush = |pending: &mut Vec<Pending>,
                 log: &mut Option<MetricsLog>,
                 summary: &mut Summary,
                 last_ckpt: &str,
                 t_flush: &mut Instant|
     -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let stats = Tensor::stack(&pending.iter().map(|p| p.stats.shallow_clone()).collect::<Vec<_>>(), 0);
        let rows = Vec::<Vec<f64>>::try_from(stats.to_kind(Kind::Double).to_device(Device::Cpu)).expect("f64 rows");
        let ips = (pending.len() * batch) as f64 / t_flush.elapsed().as_secs_f64();
        *t_flush = Instant::now();
        for (p, row) in pending.iter().zip(&rows) {
            let loss = row[0];
            if !loss.is_finite() {
                return Err(Error::NonFinite {
                    epoch: p.epoch,
                    step: p.step,
                    value: loss,
                    checkpoint: last_ckpt.to_string(),
                });
            }
            // Only rank 0 logs; the other ranks' rows hold just the loss.
            let Some(log) = log.as_mut() else { continue };
            let mut line = json!({"epoch": p.epoch, "step": p.step, "lr": p.lr, "images_per_s": ips, "collapse_std_scaled": row[1] * sqrt_d});
            for (name, v) in STEP_STATS.iter().zip(row) {
                line[*name] = json!(v);
            }
            log.write(line)?;
        }
        if log.is_none() {
            pending.clear();
            return Ok(());
        }
        let last = rows.last().expect("non-empty");
        summary.final_loss = last[0];
        summary.collapse_std = last[1];
        summary.collapse_std_scaled = last[1] * sqrt_d;
        pending.clear();
        Ok(())
    };

    // Flushes the metrics; in a job, also agrees with the other ranks whether to stop (Ctrl-C, or
    // a non-finite loss, on any rank), so that every rank leaves at the same step. Ok(true): stop.
    let sync_point = |pending: &mut Vec<Pending>,
                      log: &mut Option<MetricsLog>,
                      summary: &mut Summary,
                      last_ckpt: &str,
                      t_flush: &mut Instant|
     -> Result<bool> {
        let flushed = flush(pending, log, summary, last_ckpt, t_flush);
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
    // Ctrl-C: rank 0 saves a checkpoint at this position; every rank stops.
    let interrupted = |net: &Network, opt: &Sgd, pos: Position, memory: &Option<MemoryBank>| -> Result<Summary> {
        pb.abandon();
        if lead {
            let dir = save_checkpoint(cfg, &run_dir, net, opt, pos, memory)?;
            eprintln!("checkpoint written to {}", dir.display());
        }
        Err(Error::Interrupted { epoch: pos.epoch, step: pos.global_step, dir: run_dir.display().to_string() })
    };

    let mut stepper = crate::graph::Stepper::new(cfg.run.cuda_graph, device);
    // Targets that draw augmentations too must draw them after the step's views, as without it.
    let draws_more = cfg.objective.target == Target::Eoa || cfg.objective.alternation_k > 1;
    if cfg.run.prefetch && draws_more && lead {
        eprintln!("warning: run.prefetch: this run's targets draw augmentations too (EOA or k-step alternation); the views are made in turn");
    }
    let mut prefetch = crate::prefetch::Prefetcher::new(cfg.run.prefetch && !draws_more, device);
    while pos.epoch < cfg.run.epochs {
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
            // BYOL: the target branch's z from the EMA network (train-mode BN, as BYOL).
            let cached = match &net.ema {
                Some(e) => Some(tch::no_grad(|| [e.model.encode(&xs[0], true), e.model.encode(&xs[1], true)])),
                None => cached,
            };
            let targets = StepTargets {
                labels: net.model.online_probe.as_ref().map(|_| train_dev.labels.index_select(0, &idx)),
                cached,
                eoa: (cfg.objective.target == Target::Eoa)
                    .then(|| eoa_target(&net.model, &aug, &images_of(s), cfg.objective.eoa_k)),
                memory: memory.as_mut().map(|bank| (bank, &idx)),
            };
            let out = stepper.step(&net.model, &objective, &mut opt, &xs, targets, reducer.as_ref())?;
            if let Some(e) = net.ema.as_mut() {
                e.update(Ema::momentum(cfg.model.ema_momentum, pos.global_step, total_steps));
            }
            // The monitors are rank 0's; the others only check their loss.
            let stats = if lead { step_stats(&out) } else { out.loss.to_kind(Kind::Float).view([1]) };
            pending.push(Pending { epoch: pos.epoch, step: pos.global_step, lr, stats });

            pos.step_in_epoch += 1;
            pos.global_step += 1;
            images_done += batch;
            pb.inc(1);
            let due = pending.len() >= cfg.monitor.log_every;
            // Alone, a run checks for Ctrl-C after every step; ranks agree at flush points.
            let stop = if due || (group.is_none() && control.interrupt.load(Ordering::SeqCst)) {
                sync_point(&mut pending, &mut log, &mut summary, &last_ckpt, &mut t_flush)?
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
                return interrupted(&net, &opt, pos, &memory);
            }
        }
        if sync_point(&mut pending, &mut log, &mut summary, &last_ckpt, &mut t_flush)? {
            return interrupted(&net, &opt, pos, &memory);
        }
        pos.epoch += 1;
        pos.step_in_epoch = 0;
        let last = pos.epoch == cfg.run.epochs;
        let every = cfg.monitor.knn_every;
        let log_0 = log.as_mut().filter(|_| (every > 0 && pos.epoch % every == 0) || last);
        if let Some(log_0) = log_0 {
            if let Some(acc) = evaluate(&net, log_0, pos)? {
                last_knn = Some(acc);
            }
            say(
                &pb,
                format!(
                    "epoch {:>4}/{}  loss {:+.4}  collapse_std·√d {:.3}{}  {:.0} img/s",
                    pos.epoch,
                    cfg.run.epochs,
                    summary.final_loss,
                    summary.collapse_std_scaled,
                    last_knn.map(|k| format!("  kNN {k:.2}%")).unwrap_or_default(),
                    images_done as f64 / t_train.elapsed().as_secs_f64()
                ),
            );
        }
        if lead && (pos.epoch % cfg.run.checkpoint_every == 0 || last) {
            last_ckpt = save_checkpoint(cfg, &run_dir, &net, &opt, pos, &memory)?.display().to_string();
        }
    }
    pb.finish_and_clear();
    summary.steps = pos.global_step;
    summary.knn_final = last_knn;
    summary.train_seconds = t_train.elapsed().as_secs_f64();
    summary.images_per_s = images_done as f64 / summary.train_seconds.max(1e-9);
    if !lead {
        return Ok(summary);
    }
    drop(log);
    summary.tail = tail_means(&run_dir)?;
    let s_path = run_dir.join("summary.json");
    std::fs::write(&s_path, serde_json::to_string_pretty(&summary).expect("json"))
        .map_err(|e| Error::io(&s_path, e))?;
    // The report is a convenience: failing to draw it must not fail a finished run.
    match crate::report::write_report(&run_dir) {
        Ok(p) => eprintln!("report: {}", p.display()),
        Err(e) => eprintln!("warning: no report written ({e}); retry with `simsiam report {}`", run_dir.display()),
    }
    Ok(summary)
}
