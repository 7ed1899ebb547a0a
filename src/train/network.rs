//! The network a run trains: the model with its variables, BYOL's EMA target, the optimiser's
//! parameter groups.
use crate::config::{Config, EmaSchedule, Target};
use crate::model::{SimSiam, INVERSE_PREDICTOR, ONLINE_PROBE, PREDICTOR};
use crate::optim::{Param, Sgd};
use crate::precision::LossScaler;
use tch::{nn, Device, Tensor};

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
    /// BYOL's and MoCo's target branch: both views' z from the EMA network (train-mode BN, as
    /// BYOL), detached.
    pub fn projections(&self, xs: &[Tensor]) -> [Tensor; 2] {
        tch::no_grad(|| [self.model.encode(&xs[0], true), self.model.encode(&xs[1], true)])
    }

    /// `xi <- tau xi + (1 - tau) theta` for every parameter.
    pub fn update(&mut self, tau: f64) {
        tch::no_grad(|| {
            for (e, o) in &mut self.pairs {
                let _ = e.g_mul_scalar_(tau).g_add_(&(&*o * (1.0 - tau)));
            }
        });
    }

    /// The momentum of step `step` of `total`: BYOL's cosine schedule
    /// `1 - (1 - tau_base)(cos(pi k / K) + 1) / 2`, from tau_base to 1, or MoCo's constant
    /// tau_base.
    pub fn momentum(schedule: EmaSchedule, tau_base: f64, step: usize, total: usize) -> f64 {
        match schedule {
            EmaSchedule::Cosine => {
                let frac = step as f64 / total.max(1) as f64;
                1.0 - (1.0 - tau_base) * ((std::f64::consts::PI * frac).cos() + 1.0) / 2.0
            }
            EmaSchedule::Constant => tau_base,
        }
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
        let swav = &cfg.objective.swav;
        let prototypes = if swav.weight > 0.0 { swav.prototypes } else { 0 };
        let mut model =
            SimSiam::new(&vs.root(), &cfg.model, cfg.objective.target == Target::Inverse, prototypes, probe_classes);
        fast(&mut model, &vs);
        let ema = cfg.model.ema_target.then(|| {
            let mut evs = nn::VarStore::new(device);
            let mut emodel = SimSiam::new(&evs.root(), &cfg.model, false, 0, 0);
            evs.copy(&vs).expect("same architecture");
            fast(&mut emodel, &evs);
            evs.freeze();
            let online = vs.variables();
            let mut names: Vec<String> =
                online.iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n.clone()).collect();
            names.sort();
            let theirs = evs.variables();
            // Parameters the target has (not the online probe's, h_inv's nor the prototypes).
            let pairs = names
                .iter()
                .filter_map(|n| theirs.get(n).map(|t| (t.shallow_clone(), online[n].shallow_clone())))
                .collect();
            Ema { vs: evs, model: emodel, pairs }
        });
        Network { vs, model, ema }
    }

    /// Sets the weights from a file trained elsewhere (`model.init_from`; see `import`), BYOL's
    /// target network with them.
    pub fn init_from(
        &mut self,
        path: &std::path::Path,
        cfg: &crate::config::ModelConfig,
    ) -> crate::Result<crate::import::Imported> {
        let imported = crate::import::init_from(&mut self.vs, path, cfg)?;
        self.sync_target();
        Ok(imported)
    }

    /// One step of the training loop on the views `xs`: the target branch's projections from
    /// the EMA network where there is one (BYOL's targets, MoCo's keys; they replace `targets`'
    /// cached ones), the step (`stepper`: eager or a CUDA graph's replay), then the EMA update
    /// with the momentum of `global_step` of `total_steps` (`model.ema_schedule`).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        cfg: &crate::config::ModelConfig,
        stepper: &mut crate::graph::Stepper,
        objective: &crate::objective::Objective,
        opt: &mut Sgd,
        xs: &[Tensor],
        mut targets: super::StepTargets,
        (global_step, total_steps): (usize, usize),
        reducer: Option<&crate::dist::Reducer>,
    ) -> crate::Result<super::StepOut> {
        if let Some(e) = &self.ema {
            targets.cached = Some(e.projections(xs));
        }
        let out = stepper.step(&self.model, objective, opt, xs, targets, reducer)?;
        if let Some(e) = self.ema.as_mut() {
            e.update(Ema::momentum(cfg.ema_schedule, cfg.ema_momentum, global_step, total_steps));
        }
        Ok(out)
    }

    /// Starts BYOL's target network from the online weights again: after they were set from a
    /// file (`model.init_from`, `model.init_checkpoint`), as at the start of any BYOL run.
    pub fn sync_target(&mut self) {
        if let Some(ema) = &mut self.ema {
            ema.vs.copy(&self.vs).expect("same architecture");
        }
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

    /// The training optimiser over [`Network::params`]: SGD with the recipe's momentum and
    /// weight decay (none for the online probe, whose constant lr is set here), PyTorch's fused
    /// update as `optim.fused` says, and the loss scaler fp16 autocast needs. The lrs of the
    /// encoder and the predictor are the caller's, step by step.
    pub fn optimizer(&self, cfg: &Config) -> Sgd {
        let mut opt = Sgd::new(self.params(cfg), 3, cfg.optim.momentum, cfg.optim.weight_decay);
        opt.fused = cfg.optim.fused;
        opt.loss_scaler = LossScaler::for_autocast(self.model.autocast, self.vs.device());
        opt.lrs[2] = cfg.monitor.online_probe_lr;
        opt.wds[2] = 0.0;
        opt
    }
}
