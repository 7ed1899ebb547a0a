//! Checkpoints of a run's whole training state and the exact resume from them.
use super::{Ema, Network};
use crate::checkpoint::{self, Position};
use crate::config::{Config, Online, Target};
use crate::data::ImageStore;
use crate::error::{Error, Result};
use crate::objective::{MemoryBank, ViewQueue};
use crate::optim::Sgd;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Training state beyond weights, optimiser and BYOL's EMA target: what some objectives keep
/// across steps, saved in each checkpoint's `state.safetensors`.
#[derive(Debug, Default)]
pub struct RunState {
    /// The `memory` target's (and the `oracle` predictor's) per-image bank.
    pub memory: Option<MemoryBank>,
    /// SwAV's queue (`objective.swav.queue`).
    pub swav_queue: Option<ViewQueue>,
    /// MoCo's queue of keys (`objective.infonce_queue`).
    pub infonce_queue: Option<ViewQueue>,
}

impl RunState {
    /// What `cfg` needs, fresh, for `n` training images; a rank of `world` keeps its share of
    /// each queue (MoCo's starts as random unit vectors, from libtorch's seeded generator).
    pub fn new(cfg: &Config, n: usize, world: usize, device: tch::Device) -> RunState {
        let ob = &cfg.objective;
        let memory = (ob.target == Target::Memory || ob.online == Online::Oracle)
            .then(|| MemoryBank::from_config(n as i64, cfg.model.dim, ob, device));
        let swav_queue = (ob.swav.weight > 0.0 && ob.swav.queue > 0)
            .then(|| ViewQueue::new(ob.swav.queue / world.max(1), cfg.model.dim, device));
        let infonce_queue = (ob.infonce > 0.0 && ob.infonce_queue > 0)
            .then(|| ViewQueue::random(ob.infonce_queue / world.max(1), cfg.model.dim, device));
        RunState { memory, swav_queue, infonce_queue }
    }

    /// The queues by the name their tensors have in a checkpoint.
    fn queues(&self) -> [(&'static str, &Option<ViewQueue>); 2] {
        [("swav", &self.swav_queue), ("infonce", &self.infonce_queue)]
    }

    fn queues_mut(&mut self) -> [(&'static str, &mut Option<ViewQueue>); 2] {
        [("swav", &mut self.swav_queue), ("infonce", &mut self.infonce_queue)]
    }
}

/// The tensors of [`RunState`] and of the EMA target network, by name, for the checkpoint.
fn extra_state(state: &RunState, ema: &Option<Ema>) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    if let Some(b) = &state.memory {
        out.push(("memory.eta".to_string(), b.eta.shallow_clone()));
        out.push(("memory.seen".to_string(), b.seen.shallow_clone()));
    }
    for (name, queue) in state.queues() {
        if let Some(q) = queue {
            out.push((format!("{name}.queue"), q.z.shallow_clone()));
            out.push((format!("{name}.queue_filled"), Tensor::from(q.filled as i64)));
        }
    }
    if let Some(e) = ema {
        out.extend(e.vs.variables().into_iter().map(|(n, t)| (format!("ema.{n}"), t)));
    }
    out
}

pub(super) fn save_checkpoint(
    cfg: &Config,
    run_dir: &Path,
    net: &Network,
    opt: &Sgd,
    pos: Position,
    state: &RunState,
) -> Result<PathBuf> {
    let extra = extra_state(state, &net.ema);
    let refs: Vec<(&str, &Tensor)> = extra.iter().map(|(n, t)| (n.as_str(), t)).collect();
    checkpoint::save(run_dir, &net.vs, opt, pos, &refs, cfg.run.keep_checkpoints)
}

/// Resumes from the run's latest checkpoint: weights, optimiser, EMA target and memory bank
/// state; returns the position to continue from. The training data must be the run's (the same
/// number of images and the same [`ImageStore::digest`]); when it was passed at a new place,
/// the saved config follows it.
pub(super) fn restore(
    cfg: &Config,
    net: &mut Network,
    opt: &mut Sgd,
    run_state: &mut RunState,
    train: &ImageStore,
    lead: bool,
) -> Result<Position> {
    let run_dir = &cfg.run.out_dir;
    let ckpt = checkpoint::latest(run_dir)?.ok_or_else(|| Error::data(run_dir, "no checkpoint to resume from"))?;
    let saved = checkpoint::load_position(&ckpt).map_err(|e| unreadable(run_dir, &ckpt, e))?;
    let train_images = train.len();
    if saved.train_images != 0 && saved.train_images != train_images {
        return Err(Error::config(format!(
            "data.train: {train_images} training images now, {} when the run started: a resume needs the same training data",
            saved.train_images
        )));
    }
    if saved.train_digest != 0 && saved.train_digest != train.digest() {
        return Err(Error::config(format!(
            "data.train: not the images the run started on (as many, {train_images}, but other pixels, labels, \
             classes or order): a resume needs the same training data, in the same order (moved is fine)"
        )));
    }
    checkpoint::load_model(&mut net.vs, &ckpt).map_err(|e| unreadable(run_dir, &ckpt, e))?;
    opt.load(&ckpt.join("optim.safetensors")).map_err(|e| unreadable(run_dir, &ckpt, e))?;
    let state = checkpoint::load_extra(&ckpt).map_err(|e| unreadable(run_dir, &ckpt, e))?;
    if let Some(e) = net.ema.as_mut() {
        for (n, mut t) in e.vs.variables() {
            let src = state.get(&format!("ema.{n}")).ok_or_else(|| {
                Error::data(&ckpt, format!("the EMA target's `{n}` is missing from state.safetensors"))
            })?;
            tch::no_grad(|| t.copy_(src));
        }
    }
    if let Some(bank) = run_state.memory.as_mut() {
        let missing = || Error::data(&ckpt, "the memory bank (state.safetensors) is missing");
        bank.eta = state.get("memory.eta").ok_or_else(missing)?.to_device(bank.eta.device());
        bank.seen = state.get("memory.seen").ok_or_else(missing)?.to_device(bank.seen.device());
    }
    for (name, queue) in run_state.queues_mut() {
        let Some(queue) = queue else { continue };
        let missing = || Error::data(&ckpt, format!("the {name} queue (state.safetensors) is missing"));
        let z = state.get(&format!("{name}.queue")).ok_or_else(missing)?;
        if z.size() != queue.z.size() {
            return Err(Error::data(
                &ckpt,
                format!("the {name} queue was saved as {:?}, this run keeps {:?}", z.size(), queue.z.size()),
            ));
        }
        queue.z = z.to_device(queue.z.device());
        queue.filled = state.get(&format!("{name}.queue_filled")).ok_or_else(missing)?.int64_value(&[]) as usize;
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

/// A latest checkpoint that cannot be read (a disk fault, a file removed by hand): the error,
/// and the earlier checkpoint the run keeps, if any, with how to resume from it instead.
fn unreadable(run_dir: &Path, ckpt: &Path, e: Error) -> Error {
    let earlier = checkpoint::all(run_dir).ok().and_then(|all| all.into_iter().rev().find(|c| c != ckpt));
    match earlier.as_ref().and_then(|c| c.file_name()) {
        Some(name) => Error::data(
            run_dir,
            format!(
                "{e}; an earlier checkpoint is kept: to resume from it, `echo {} > {}` and resume again",
                name.to_string_lossy(),
                checkpoint::dir(run_dir).join("latest").display()
            ),
        ),
        None => e,
    }
}

/// A run's saved config, with its device replaced by `device` when given, and that device.
pub fn run_config(run: &Path, device: Option<String>) -> Result<(Config, tch::Device)> {
    let mut cfg = Config::load(&run.join("config.toml")).map_err(|e| match e {
        Error::Io { .. } => Error::data(run, format!("not a run folder ({e})")),
        e => e,
    })?;
    if let Some(d) = device {
        cfg.run.device = d;
    }
    let device = crate::device::parse_device(&cfg.run.device)?;
    Ok((cfg, device))
}

/// A run's saved config and the network of its latest checkpoint, on the run's device (or
/// `device`).
pub fn load_run(run: &Path, device: Option<String>) -> Result<(Config, tch::Device, Network)> {
    load_run_at(run, "latest", device)
}

/// [`load_run`] with the weights of the checkpoint named `checkpoint` ([`checkpoint::named`]).
pub fn load_run_at(run: &Path, checkpoint: &str, device: Option<String>) -> Result<(Config, tch::Device, Network)> {
    let (cfg, device) = run_config(run, device)?;
    let ckpt = checkpoint::named(run, checkpoint)?;
    let mut net = Network::new(&cfg, device);
    checkpoint::load_model(&mut net.vs, &ckpt)?;
    Ok((cfg, device, net))
}
