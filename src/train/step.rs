//! One training step: the views, the forward pass of each pair, the objective, backward and
//! SGD, and the per-step monitors it leaves on the device.
use crate::analysis;
use crate::augment::Augmenter;
use crate::config::{Online, Target};
use crate::dist::{self, Reducer};
use crate::error::{Error, Result};
use crate::model::{SiameseOutput, SimSiam, PROTOTYPES};
use crate::monitor::l2_normalize;
use crate::objective::{External, MemoryBank, Objective, ViewQueue};
use crate::optim::Sgd;
use tch::nn::ModuleT;
use tch::{Kind, Tensor};

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
    /// The inverse predictor's own loss (NaN without one).
    pub inverse_loss: Tensor,
    /// The predictor's own regression loss (NaN when `objective.predictor_loss` is off).
    pub predictor_loss: Tensor,
    /// z and p of both views, for the monitors (detached).
    pub z1: Tensor,
    pub p1: Tensor,
    pub z2: Tensor,
    pub p2: Tensor,
    /// The per-step monitors of [`STEP_STATS`] ([`step_stats`]), computed as part of the step
    /// so that a captured CUDA graph computes them too, with no launches of their own.
    pub stats: Tensor,
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
    /// SwAV's first epoch(s): the prototypes get no update (`objective.swav.freeze_epochs`).
    pub freeze_prototypes: bool,
    /// SwAV's queue, from `objective.swav.queue_start_epoch` on: used once full, and this
    /// step's projections pushed after the update.
    pub swav_queue: Option<&'a mut ViewQueue>,
    /// MoCo's queue of keys: the negatives, then this step's keys pushed after the update.
    pub infonce_queue: Option<&'a mut ViewQueue>,
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
    model.normalize_prototypes();
    let pairs = forward_pairs(model, views);
    let out = &pairs[0];
    let inverse =
        model.inverse.as_ref().map(|h| [h.forward_t(&out.p1.detach(), true), h.forward_t(&out.p2.detach(), true)]);
    let c = &objective.cfg;
    // Mirror SimSiam's h, trained apart from the encoder on detached projections.
    let regressed = (c.predictor_loss > 0.0).then(|| {
        [model.predictor.forward_t(&out.z1.detach(), true), model.predictor.forward_t(&out.z2.detach(), true)]
    });
    let mut memory = targets.memory;
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
    let prototypes = model.prototypes.as_ref().map(Tensor::shallow_clone);
    let mut swav_queue = targets.swav_queue;
    let mut infonce_queue = targets.infonce_queue;
    // MoCo's keys: the target branch's z (the momentum encoder's), else this step's.
    let keys = infonce_queue.is_some().then(|| match &targets.cached {
        Some([a, b]) => [a.detach(), b.detach()],
        None => [out.z1.detach(), out.z2.detach()],
    });
    let ext = External {
        per_image,
        inverse,
        cached: targets.cached,
        oracle,
        regressed,
        prototypes,
        swav_queue: swav_queue.as_ref().and_then(|q| q.ready()),
        infonce_queue: infonce_queue.as_ref().and_then(|q| q.ready()),
    };
    let mut loss = objective.loss(&pairs, &ext);
    // The online probe learns from detached features: it never shapes the representation.
    let mut probe_acc = Tensor::zeros([], (Kind::Float, out.z1.device()));
    if let (Some(probe), Some(labels)) = (&model.online_probe, &targets.labels) {
        let logits = out.y1.detach().apply(probe);
        probe_acc = logits.argmax(1, false).eq_tensor(labels).to_kind(Kind::Float).mean(Kind::Float);
        loss = &loss + logits.cross_entropy_for_logits(labels);
    }
    let (inverse, regressed) = (ext.inverse, ext.regressed);
    // A collective that failed inside the forward pass (synchronised BN) stops the step here.
    if let Some(e) = dist::take_forward_error() {
        return Err(e);
    }
    drop(forward);
    opt.zero_grad();
    let backward = crate::profile::range(c"backward");
    // fp16: the loss times the scaler's scale (the update divides the gradients by it).
    let scaled = opt.loss_scaler.as_ref().map(|s| s.scale_loss(&loss));
    let to_differentiate = scaled.as_ref().unwrap_or(&loss);
    match reducer {
        Some(r) => {
            r.prepare(to_differentiate)?;
            to_differentiate.f_backward().map_err(|e| Error::Distributed {
                rank: Some(r.rank()),
                msg: format!("the backward pass (gradient all-reduce) failed ({}): {e}", dist::PEER_FAILURE),
            })?;
        }
        None => to_differentiate.f_backward()?,
    }
    drop(backward);
    if targets.freeze_prototypes {
        opt.drop_grads(PROTOTYPES);
    }
    let update = crate::profile::range(c"optimizer");
    opt.step();
    drop(update);
    if let Some((bank, idx)) = memory.as_mut() {
        bank.update(idx, &out.z1, &out.z2);
    }
    if let Some(queue) = swav_queue.as_mut() {
        queue.push(&out.z1, &out.z2);
    }
    if let (Some(queue), Some([k1, k2])) = (infonce_queue.as_mut(), &keys) {
        queue.push(k1, k2);
    }
    // NaN (logged as null) where the head is absent.
    let none = || Tensor::full([], f64::NAN, (Kind::Float, loss.device()));
    let inverse_loss = inverse.as_ref().map_or_else(none, |inv| objective.inverse_loss(out, inv).detach());
    let predictor_loss = regressed.as_ref().map_or_else(none, |reg| objective.predictor_loss(out, reg).detach());
    let mut step_out = StepOut {
        loss: loss.detach(),
        probe_acc,
        inverse_loss,
        predictor_loss,
        z1: out.z1.detach(),
        p1: out.p1.detach(),
        z2: out.z2.detach(),
        p2: out.p2.detach(),
        stats: Tensor::new(),
    };
    let monitors = crate::profile::range(c"monitors");
    step_out.stats = tch::no_grad(|| step_stats(&step_out, objective));
    drop(monitors);
    Ok(step_out)
}

/// The per-step monitors, in the order of the tensor [`step_stats`] returns.
pub const STEP_STATS: [&str; 15] = [
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
    "predictor_loss",
    "online_probe_acc",
];

/// The per-step monitors of [`STEP_STATS`] as one tensor on the device, so logging costs one
/// host sync per flush, not per value: loss, `collapse_std` of z, Zhang et al.'s `m_o, m_r, m_r2`
/// of Z and of P, `eta_p*` with `cos(o_e + 0.5 o_p, o_p)`, the norms of the objective's extra
/// gradient's centre and residual parts (online view 2, target view 1), and the inverse
/// predictor's and the predictor's own losses.
pub fn step_stats(out: &StepOut, objective: &Objective) -> Tensor {
    // Z and P of view 1 normalised and centred once for all of these.
    let centred = analysis::Centred::new(&out.z1, &out.p1);
    let ge = objective.online_vector(&out.z2, &out.p2).and_then(|x| centred.extra_gradient(objective, x));
    Tensor::cat(
        &[
            out.loss.to_kind(Kind::Float).view([1]),
            centred.step_monitors(ge.as_ref()),
            out.inverse_loss.to_kind(Kind::Float).view([1]),
            out.predictor_loss.to_kind(Kind::Float).view([1]),
            out.probe_acc.to_kind(Kind::Float).view([1]),
        ],
        0,
    )
}
