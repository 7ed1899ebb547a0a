//! SGD with momentum and weight decay (PyTorch's `torch.optim.SGD` update), with parameter
//! groups and state that can be saved: tch's optimiser cannot export its momentum buffers,
//! which an exact resume needs. Also the lr schedule (linear scaling, warm-up, cosine).
use crate::error::{Error, Result};
use crate::precision::LossScaler;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::Tensor;

/// A named parameter in a group.
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub group: usize,
}

#[derive(Debug)]
pub struct Sgd {
    pub params: Vec<Param>,
    /// lr per group.
    pub lrs: Vec<f64>,
    /// Weight decay per group (all `weight_decay` at first).
    pub wds: Vec<f64>,
    pub momentum: f64,
    pub weight_decay: f64,
    /// LARS as the official code's `main_lincls.py --lars` runs it (`simsiam/optimizer.py`, from
    /// MoCo v3): a weight matrix's or kernel's update `d = g + wd w` is scaled by
    /// `trust * ||w|| / ||d||` (1 where either norm is 0); biases and other parameters of one
    /// dimension or none take the plain gradient, without weight decay or scaling. `None` =
    /// plain SGD.
    pub lars_trust: Option<f64>,
    /// Use PyTorch's fused kernels (cleared, with a warning, if libtorch refuses them).
    pub fused: bool,
    /// lr per group as 0-dim fp32 tensors on the parameters' device, which the fused kernel
    /// reads when it runs instead of `lrs` (the caller keeps them equal to `lrs`): what a
    /// captured CUDA graph needs, since it replays its kernels with the arguments they had.
    pub lr_tensors: Option<Vec<Tensor>>,
    /// fp16 autocast's dynamic loss scaling: the step unscales the gradients, skips the update
    /// if they overflowed and adjusts the scale ([`LossScaler`]); the training step multiplies
    /// the loss by its scale before the backward pass.
    pub loss_scaler: Option<LossScaler>,
    bufs: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(params: Vec<Param>, groups: usize, momentum: f64, weight_decay: f64) -> Sgd {
        let n = params.len();
        Sgd {
            params,
            lrs: vec![0.0; groups],
            wds: vec![weight_decay; groups],
            momentum,
            weight_decay,
            lars_trust: None,
            fused: true,
            lr_tensors: None,
            loss_scaler: None,
            bufs: (0..n).map(|_| None).collect(),
        }
    }

    /// Drops every gradient, as PyTorch's `zero_grad()` (its default `set_to_none=True`): the
    /// next backward writes each gradient afresh instead of adding it to a zeroed buffer, which
    /// saves a zeroing pass and one add per parameter tensor and step. A parameter the loss does
    /// not reach then has no gradient and is not updated (no weight decay, no momentum), as in
    /// PyTorch. In a captured CUDA graph this is host-side only: the backward recorded after it
    /// writes the graph's own gradient tensors.
    pub fn zero_grad(&mut self) {
        let ts: Vec<&Tensor> = self.params.iter().map(|p| &p.tensor).collect();
        fused::grads_to_none(&ts);
    }

    /// Drops the gradients of the parameters whose names start with `prefix`, so that this
    /// step leaves them as they are (no weight decay, no momentum), as SwAV's frozen
    /// prototypes (`p.grad = None`).
    pub fn drop_grads(&self, prefix: &str) {
        let ts: Vec<&Tensor> = self.params.iter().filter(|p| p.name.starts_with(prefix)).map(|p| &p.tensor).collect();
        fused::grads_to_none(&ts);
    }

    /// `d = g + wd * w; buf = m * buf + d (buf = d at first); w -= lr * buf`.
    ///
    /// Plain SGD runs as PyTorch's fused kernel (`_fused_sgd_`: one launch per call on a GPU
    /// instead of about six per parameter), one call per lr/wd group and first step (a first
    /// step sets the buffer instead of decaying it); LARS runs per parameter. With a
    /// [`LossScaler`] the gradients are unscaled first and a step whose gradients overflowed
    /// changes nothing (the fused kernel reads the flag on the device; the per-parameter form
    /// reads it on the host), then the scale is updated.
    ///
    /// # Panics
    /// If libtorch refuses to unscale the gradients, which only gradients on another device
    /// than the scaler's could make it do (a bug, as a failed tensor op in tch).
    pub fn step(&mut self) {
        let mut calls: BTreeMap<(usize, bool), Vec<usize>> = BTreeMap::new();
        for (i, p) in self.params.iter().enumerate() {
            if p.tensor.grad().defined() {
                calls.entry((p.group, self.bufs[i].is_none())).or_default().push(i);
            }
        }
        if let Some(scaler) = &self.loss_scaler {
            let grads: Vec<Tensor> = calls.values().flatten().map(|&i| self.params[i].tensor.grad()).collect();
            if let Err(e) = scaler.unscale(&grads) {
                panic!("unscaling the fp16 gradients failed: {}", e.lines().next().unwrap_or_default())
            }
        }
        let mut skipped = None;
        for ((group, first), idx) in calls {
            if self.fused && self.lars_trust.is_none() {
                match self.fused_update(group, first, &idx) {
                    Ok(()) => continue,
                    // libtorch checks its arguments before its kernel runs: nothing was updated.
                    Err(e) => self.fused_failed(&e),
                }
            }
            // The reference form reads the overflow flag on the host, once per step.
            let skip = *skipped.get_or_insert_with(|| {
                self.loss_scaler.as_ref().is_some_and(|s| s.found_inf().double_value(&[0]) != 0.0)
            });
            if !skip {
                self.update_per_param(&idx);
            }
        }
        if let Some(scaler) = self.loss_scaler.as_mut() {
            scaler.update();
        }
    }

    /// One `_fused_sgd_` call over the parameters `idx` (one group, all first steps or none).
    fn fused_update(&mut self, group: usize, first: bool, idx: &[usize]) -> std::result::Result<(), String> {
        let ws: Vec<Tensor> = idx.iter().map(|&i| self.params[i].tensor.shallow_clone()).collect();
        let gs: Vec<Tensor> = ws.iter().map(|w| w.grad()).collect();
        // New buffers laid out as their parameters (channels-last too): the kernel works on storage.
        // A step that may be skipped (loss scaling) starts them at zero as a later step, which
        // is the same update (`buf = m * 0 + d`) and leaves a valid buffer if it is skipped.
        let found_inf = self.loss_scaler.as_ref().map(|s| s.found_inf());
        let fresh = |w: &Tensor| if found_inf.is_some() { w.zeros_like() } else { w.empty_like() };
        let bs: Vec<Tensor> = idx
            .iter()
            .zip(&ws)
            .map(|(&i, w)| self.bufs[i].as_ref().map_or_else(|| fresh(w), |b| b.shallow_clone()))
            .collect();
        let lr = match &self.lr_tensors {
            Some(t) => fused::Lr::Tensor(&t[group]),
            None => fused::Lr::Value(self.lrs[group]),
        };
        let first_kernel = first && found_inf.is_none();
        tch::no_grad(|| fused::sgd(&ws, &gs, &bs, self.wds[group], self.momentum, lr, first_kernel, found_inf))?;
        if first {
            for (&i, b) in idx.iter().zip(bs) {
                self.bufs[i] = Some(b);
            }
        }
        Ok(())
    }

    /// A libtorch without the fused kernels for this device: say so once, go on per parameter.
    fn fused_failed(&mut self, msg: &str) {
        eprintln!("warning: PyTorch's fused SGD kernels failed ({msg}); using the per-parameter update");
        self.fused = false;
    }

    /// The reference form of the update (and LARS), one parameter at a time, over `idx`.
    fn update_per_param(&mut self, idx: &[usize]) {
        tch::no_grad(|| {
            for &i in idx {
                let (p, buf) = (&mut self.params[i], &mut self.bufs[i]);
                let g = p.tensor.grad();
                // LARS leaves biases (dim <= 1) alone: no weight decay, no scaling.
                let lars = self.lars_trust.filter(|_| p.tensor.dim() > 1);
                let wd = if self.lars_trust.is_some() && lars.is_none() { 0.0 } else { self.wds[p.group] };
                let mut d = if wd != 0.0 { &g + &p.tensor * wd } else { g.shallow_clone() };
                if let Some(trust) = lars {
                    // The layer's own lr: trust ||w|| / ||d||, 1 where either norm is 0.
                    let (wn, dn) = (p.tensor.norm(), d.norm());
                    let ok = wn.gt(0.0).logical_and(&dn.gt(0.0));
                    let ratio = (&wn * trust / &dn).where_scalarother(&ok, 1.0);
                    d = &d * ratio; // out of place: d may share the grad's storage
                }
                let b = match buf {
                    Some(b) => {
                        let _ = b.g_mul_scalar_(self.momentum).g_add_(&d);
                        b
                    }
                    None => {
                        let b = buf.insert(p.tensor.empty_like());
                        b.copy_(&d);
                        b
                    }
                };
                let lr = self.lrs[p.group];
                let _ = p.tensor.g_add_(&(&*b * (-lr)));
            }
        });
    }

    /// How far the last step moved each weight matrix or kernel (`dim >= 2`): the names, and as
    /// one `[n, 2]` tensor on the parameters' device, `|w|` and `|Δw| = lr·|buf|` (SGD moves w
    /// by exactly `lr·buf`, weight decay, momentum and LARS's scaling included). Under the
    /// BatchNorm that follows most of these weights the loss does not depend on `|w|`, so what
    /// a step does to the function is `|Δw|/|w|`, which falls as `lr/|w|²`: the initial scale
    /// sets the pace of learning until weight decay has shrunk the norms. Parameters that the
    /// last step did not update (no gradient, or no step yet) are left out: `None` if that is
    /// all of them. A step the loss scaler skipped (fp16 overflow) moved nothing: `|Δw| = 0`.
    pub fn update_norms(&self) -> Option<(Vec<&str>, Tensor)> {
        let (names, rows): (Vec<&str>, Vec<Tensor>) = tch::no_grad(|| {
            // 0 if the last step was skipped, else 1 (on the device).
            let moved = self.loss_scaler.as_ref().map(|s| -s.found_inf().view([]) + 1.0);
            self.params
                .iter()
                .zip(&self.bufs)
                .filter_map(|(p, b)| {
                    let b = b.as_ref().filter(|_| p.tensor.dim() >= 2 && p.tensor.grad().defined())?;
                    let w = p.tensor.norm();
                    let step = b.norm() * self.lrs[p.group];
                    let step = moved.as_ref().map_or_else(|| step.shallow_clone(), |m| &step * m);
                    Some((p.name.as_str(), Tensor::stack(&[w, step], 0)))
                })
                .unzip()
        });
        (!rows.is_empty()).then(|| (names, Tensor::stack(&rows, 0)))
    }

    /// The momentum buffers by parameter name, and the loss scaler's state if there is one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = self
            .params
            .iter()
            .zip(&self.bufs)
            .filter_map(|(p, b)| b.as_ref().map(|b| (p.name.clone(), b.shallow_clone())))
            .collect();
        if let Some(scaler) = &self.loss_scaler {
            named.extend(scaler.state().map(|(n, t)| (n.to_string(), t.shallow_clone())));
        }
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        crate::checkpoint::write_safetensors(&refs, path)
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let saved: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| Error::data(path, format!("cannot read the optimiser state: {e}")))?
            .into_iter()
            .collect();
        for (p, b) in self.params.iter().zip(self.bufs.iter_mut()) {
            // Laid out as the parameter (the fused kernel works on storage).
            *b = saved.get(&p.name).map(|t| {
                let mut b = p.tensor.empty_like();
                b.copy_(t);
                b
            });
        }
        if let Some(scaler) = self.loss_scaler.as_mut() {
            scaler.load(&saved);
        }
        Ok(())
    }
}

/// lr at (fractional) epoch `t`: linear warm-up from 0 over `warmup` epochs, then
/// `init_lr * 0.5 * (1 + cos(pi * (t - warmup) / (epochs - warmup)))`.
pub fn cosine_lr(init_lr: f64, t: f64, epochs: usize, warmup: usize) -> f64 {
    let w = warmup as f64;
    if t < w {
        return init_lr * t / w;
    }
    let span = (epochs as f64 - w).max(1.0);
    init_lr * 0.5 * (1.0 + (std::f64::consts::PI * (t - w) / span).cos())
}

/// PyTorch's fused optimiser kernels (`csrc/optim.cpp`).
mod fused {
    use std::ffi::{c_char, c_int, c_void};
    use tch::Tensor;

    extern "C" {
        fn ss_fused_sgd(
            params: *const *mut c_void,
            grads: *const *mut c_void,
            bufs: *const *mut c_void,
            n: c_int,
            wd: f64,
            momentum: f64,
            lr: f64,
            lr_tensor: *mut c_void,
            first: c_int,
            found_inf: *mut c_void,
            err: *mut *mut c_char,
        );
        fn ss_grads_to_none(ts: *const *mut c_void, n: c_int);
    }

    fn ptrs(ts: &[Tensor]) -> Vec<*mut c_void> {
        ts.iter().map(|t| t.as_ptr() as *mut c_void).collect()
    }

    /// libtorch's message, first line (the rest is a C++ stack trace).
    fn first_line(msg: String) -> String {
        msg.lines().next().unwrap_or_default().to_string()
    }

    /// The lr of a fused update: a value, or a 0-dim fp32 tensor read when the kernel runs.
    pub enum Lr<'a> {
        Value(f64),
        Tensor(&'a Tensor),
    }

    /// One `_fused_sgd_` call over tensors of one device, dtype and (per tensor) layout; a
    /// no-op where `found_inf` (`[1]` fp32) is non-zero.
    #[allow(clippy::too_many_arguments)]
    pub fn sgd(
        ws: &[Tensor],
        gs: &[Tensor],
        bs: &[Tensor],
        wd: f64,
        momentum: f64,
        lr: Lr,
        first: bool,
        found_inf: Option<&Tensor>,
    ) -> Result<(), String> {
        let (w, g, b) = (ptrs(ws), ptrs(gs), ptrs(bs));
        let (n, first) = (w.len() as c_int, first as c_int);
        let (lr, lr_tensor) = match lr {
            Lr::Value(v) => (v, std::ptr::null_mut()),
            Lr::Tensor(t) => (0.0, t.as_ptr() as *mut c_void),
        };
        let found_inf = found_inf.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut c_void);
        // SAFETY: live `at::Tensor*`s (tch's `as_ptr`) borrowed for the call.
        crate::ffi::call(|err| unsafe {
            ss_fused_sgd(w.as_ptr(), g.as_ptr(), b.as_ptr(), n, wd, momentum, lr, lr_tensor, first, found_inf, err)
        })
        .map_err(first_line)
    }

    /// Makes each tensor's `.grad` undefined.
    pub fn grads_to_none(ts: &[&Tensor]) {
        let p: Vec<*mut c_void> = ts.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        // SAFETY: live `at::Tensor*`s borrowed for the call; it cannot fail.
        unsafe { ss_grads_to_none(p.as_ptr(), p.len() as c_int) }
    }
}
