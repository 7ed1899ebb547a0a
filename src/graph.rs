//! The training step captured once as a CUDA graph and replayed (`run.cuda_graph`).
//!
//! Eager, a SimSiam step on a GPU is some thousand kernel launches (forward, backward, the
//! fused update), each a few microseconds of host time, so the host can fall behind the GPU
//! and the augmentation of the next batch cannot start early. A captured graph launches them
//! all at once. What a replay cannot change is fixed at capture: the tensors it reads and
//! writes (the views are copied into static inputs; the outputs are overwritten by the next
//! replay) and every scalar argument, which is why the optimiser reads its lr from a device
//! tensor ([`Sgd::lr_tensors`]) and why steps with per-step inputs from outside (a memory bank,
//! EOA or cached targets, labels, a gradient all-reduce) run eagerly. Capture needs a stream
//! other than the default one: while a graph is wanted, the loop's work (warm-up, capture,
//! replays, monitors, and the augmentation unless `run.prefetch` moves it to a stream of its
//! own) runs on one such stream, as PyTorch advises (warm-up on the capture's stream).
use crate::device::{CudaHelper, Owned, PoolStream, RawGraph, StreamGuard};
use crate::error::{Error, Result};
use crate::model::SimSiam;
use crate::objective::Objective;
use crate::optim::Sgd;
use crate::train::{step, StepOut, StepTargets};
use tch::{Device, Kind, Tensor};

/// Eager steps before the capture: cuDNN's autotuning, cuBLAS handles and the gradients'
/// and momentum buffers' first allocations must happen outside it.
pub const WARMUP_STEPS: usize = 3;

/// A captured graph (`csrc/cuda.cpp`), freed on drop.
type Graph = Owned<RawGraph>;

/// A pool stream current on its device while this lives, ordered after the work queued so
/// far on the stream that was current; dropped, that stream is current again and ordered after
/// this one's work (device-side waits both ways, as PyTorch's `wait_stream`).
struct SideStream {
    /// Declared first: popped before the stream is released.
    current: Option<Owned<StreamGuard>>,
    stream: Owned<PoolStream>,
    device: usize,
}

impl SideStream {
    fn enter(device: usize) -> std::result::Result<SideStream, String> {
        let h = crate::device::cuda_helper()?;
        let stream = Owned::new(h.stream_new(device)?, h, CudaHelper::stream_free);
        let current = Owned::new(h.stream_push(stream.get())?, h, CudaHelper::stream_pop);
        Ok(SideStream { current: Some(current), stream, device })
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        let h = self.stream.helper;
        // Recorded while this stream is still current: the end of its work.
        let done = h.event_record(self.device).map(|e| Owned::new(e, h, CudaHelper::event_free));
        drop(self.current.take());
        if let Err(e) = done.and_then(|e| h.event_wait(e.get(), self.device)) {
            eprintln!("warning: run.cuda_graph: the default stream could not wait for the graph's stream ({e})");
        }
    }
}

/// One step captured on its own static inputs and outputs.
pub struct CapturedStep {
    graph: Graph,
    /// Where each replay reads its views, `[B, 3, S, S]` each.
    views: Vec<Tensor>,
    /// Where each replay leaves the step's outputs.
    out: StepOut,
}

fn capture_error(msg: impl std::fmt::Display) -> Error {
    Error::CudaGraph(msg.to_string())
}

impl CapturedStep {
    /// Records one step on copies of `views` (nothing runs: call [`CapturedStep::run`] for the
    /// step itself). `opt` gets its lr tensors here and keeps them. The current stream must not
    /// be the default one ([`Stepper`] sees to it).
    pub fn capture(model: &SimSiam, objective: &Objective, opt: &mut Sgd, views: &[Tensor]) -> Result<CapturedStep> {
        if !views[0].device().is_cuda() {
            return Err(capture_error("the views are not on a CUDA device"));
        }
        let helper = crate::device::cuda_helper().map_err(capture_error)?;
        if !opt.fused || opt.lars_trust.is_some() {
            return Err(capture_error("the update is not PyTorch's fused SGD (optim.fused = false, or LARS)"));
        }
        let device = views[0].device();
        opt.lr_tensors = Some(opt.lrs.iter().map(|&lr| Tensor::full([], lr, (Kind::Float, device))).collect());
        let inputs: Vec<Tensor> = views.iter().map(|v| v.copy()).collect();
        let graph = Owned::new(helper.graph_begin().map_err(capture_error)?, helper, CudaHelper::graph_free);
        // A failed op panics in tch; the capture must still be ended, or the stream stays in capture.
        let recorded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            step(model, objective, opt, &inputs, StepTargets::default(), None)
        }));
        let ended = helper.graph_end(graph.get()).map_err(capture_error);
        let out = match recorded {
            Ok(out) => out,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                Err(capture_error(msg.unwrap_or_else(|| "a tensor operation failed".into())))
            }
        };
        match (out, ended) {
            (Ok(out), Ok(())) if opt.fused => Ok(CapturedStep { graph, views: inputs, out }),
            (Ok(_), Ok(())) => {
                opt.lr_tensors = None;
                Err(capture_error("the fused update failed while capturing"))
            }
            (Err(e), _) | (_, Err(e)) => {
                opt.lr_tensors = None;
                Err(e)
            }
        }
    }

    /// One step: `views` copied into the graph's inputs, the lr tensors set from `opt.lrs`,
    /// the graph replayed. The outputs alias the graph's, valid until the next replay (work
    /// queued on the stream before it sees them), except the monitors' `stats`, copied out
    /// (one small kernel), since the loop keeps them until its next flush.
    pub fn run(&self, opt: &Sgd, views: &[Tensor]) -> Result<StepOut> {
        if views.len() != self.views.len() || views.iter().zip(&self.views).any(|(a, b)| a.size() != b.size()) {
            return Err(capture_error("a step's views differ in number or shape from the captured ones"));
        }
        tch::no_grad(|| {
            for (dst, src) in self.views.iter().zip(views) {
                dst.shallow_clone().copy_(src);
            }
            if let Some(ts) = &opt.lr_tensors {
                for (t, &lr) in ts.iter().zip(&opt.lrs) {
                    let _ = t.shallow_clone().fill_(lr);
                }
            }
        });
        self.graph.helper.graph_replay(self.graph.get()).map_err(capture_error)?;
        let o = &self.out;
        Ok(StepOut {
            loss: o.loss.shallow_clone(),
            probe_acc: o.probe_acc.shallow_clone(),
            inverse_loss: o.inverse_loss.shallow_clone(),
            predictor_loss: o.predictor_loss.shallow_clone(),
            z1: o.z1.shallow_clone(),
            p1: o.p1.shallow_clone(),
            z2: o.z2.shallow_clone(),
            p2: o.p2.shallow_clone(),
            stats: o.stats.copy(),
        })
    }
}

enum State {
    Eager,
    /// Eager steps done so far, before the capture.
    WarmingUp(usize),
    Captured(CapturedStep),
}

/// Runs training steps eagerly, or, with `run.cuda_graph`, as replays of one captured step
/// once [`WARMUP_STEPS`] eager ones have run: the one place the train loop and `bench` step.
pub struct Stepper {
    state: State,
    /// While a graph is wanted: the stream all the work runs on. Declared after `state`, so
    /// the graph is freed before the stream is left.
    stream: Option<SideStream>,
}

impl Stepper {
    /// `wanted`: `run.cuda_graph`. Off, with a warning, where graphs cannot run. Create it
    /// after the model and data are on the device and keep it for the whole loop.
    pub fn new(wanted: bool, device: Device) -> Stepper {
        let eager = |why: String| {
            eprintln!("warning: run.cuda_graph: {why}; the steps run eagerly");
            Stepper { state: State::Eager, stream: None }
        };
        match (wanted, device) {
            (false, _) => Stepper { state: State::Eager, stream: None },
            (true, Device::Cuda(i)) => match SideStream::enter(i) {
                Ok(s) => Stepper { state: State::WarmingUp(0), stream: Some(s) },
                Err(e) => eager(format!("no side stream ({e})")),
            },
            (true, _) => eager("it needs a CUDA device".into()),
        }
    }

    /// From now on every step is eager, on the default stream.
    fn go_eager(&mut self, opt: &mut Sgd) {
        self.state = State::Eager;
        self.stream = None;
        opt.lr_tensors = None;
    }

    /// Whether steps are replays of a captured graph now.
    pub fn captured(&self) -> bool {
        matches!(self.state, State::Captured(_))
    }

    /// One training step (see [`crate::train::step`]).
    pub fn step(
        &mut self,
        model: &SimSiam,
        objective: &Objective,
        opt: &mut Sgd,
        views: &[Tensor],
        targets: StepTargets,
        reducer: Option<&crate::dist::Reducer>,
    ) -> Result<StepOut> {
        // SwAV's frozen first epoch runs eagerly and does not count towards the warm-up: the
        // graph is captured once the prototypes train.
        if targets.freeze_prototypes {
            return step(model, objective, opt, views, targets, reducer);
        }
        if matches!(self.state, State::WarmingUp(_) | State::Captured(_)) {
            let outside = [
                (targets.eoa.is_some(), "EOA targets"),
                (targets.memory.is_some(), "a memory bank"),
                (targets.cached.is_some(), "cached or EMA targets"),
                (targets.labels.is_some(), "the online probe's labels"),
                (reducer.is_some(), "a gradient all-reduce"),
                (model.inverse.is_some(), "an inverse predictor"),
                (objective.cfg.predictor_loss > 0.0, "the predictor's own loss"),
                (targets.swav_queue.is_some(), "SwAV's queue"),
                (targets.infonce_queue.is_some(), "MoCo's queue"),
            ];
            if let Some((_, what)) = outside.iter().find(|(yes, _)| *yes) {
                eprintln!(
                    "warning: run.cuda_graph: this run's steps use {what} from outside the step; they run eagerly"
                );
                self.go_eager(opt);
            }
        }
        match &mut self.state {
            State::Eager => step(model, objective, opt, views, targets, reducer),
            State::WarmingUp(n) if *n < WARMUP_STEPS => {
                *n += 1;
                step(model, objective, opt, views, targets, reducer)
            }
            State::WarmingUp(_) => match CapturedStep::capture(model, objective, opt, views) {
                Ok(c) => {
                    let out = c.run(opt, views);
                    self.state = State::Captured(c);
                    out
                }
                Err(e) => {
                    eprintln!("warning: {e}; the steps run eagerly");
                    self.go_eager(opt);
                    step(model, objective, opt, views, targets, reducer)
                }
            },
            State::Captured(c) => c.run(opt, views),
        }
    }
}
