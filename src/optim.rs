//! SGD with momentum and weight decay (PyTorch's `torch.optim.SGD` update), with parameter
//! groups and state that can be saved: tch's optimiser cannot export its momentum buffers,
//! which an exact resume needs. Also the lr schedule (linear scaling, warm-up, cosine).
use crate::error::Result;
use std::collections::HashMap;
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
    /// LARS (apex LARC, clip off): scale each parameter's update by
    /// `trust * ||w|| / (||g|| + wd ||w||)`; `None` = plain SGD.
    pub lars_trust: Option<f64>,
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
            bufs: (0..n).map(|_| None).collect(),
        }
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// `d = g + wd * w; buf = m * buf + d (buf = d at first); w -= lr * buf`.
    pub fn step(&mut self) {
        tch::no_grad(|| {
            for (p, buf) in self.params.iter_mut().zip(self.bufs.iter_mut()) {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let wd = self.wds[p.group];
                let mut d = if wd != 0.0 { &g + &p.tensor * wd } else { g.shallow_clone() };
                if let Some(trust) = self.lars_trust {
                    // Adaptive lr per parameter; 1 where either norm is 0 (LARC).
                    let (wn, gn) = (p.tensor.norm(), g.norm());
                    let ratio = (&wn * trust) / (&gn + &wn * wd + 1e-12);
                    let ok = wn.gt(0.0).logical_and(&gn.gt(0.0));
                    d = &d * ratio.where_scalarother(&ok, 1.0); // out of place: d may share the grad's storage
                }
                let b = match buf {
                    Some(b) => {
                        let _ = b.g_mul_scalar_(self.momentum).g_add_(&d);
                        b
                    }
                    None => buf.insert(d.detach().copy()),
                };
                let lr = self.lrs[p.group];
                let _ = p.tensor.g_add_(&(&*b * (-lr)));
            }
        });
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let named: Vec<(String, Tensor)> = self
            .params
            .iter()
            .zip(&self.bufs)
            .filter_map(|(p, b)| b.as_ref().map(|b| (p.name.clone(), b.shallow_clone())))
            .collect();
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        crate::checkpoint::write_safetensors(&refs, path)
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let saved: HashMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
        for (p, b) in self.params.iter().zip(self.bufs.iter_mut()) {
            *b = saved.get(&p.name).map(|t| t.to_device(p.tensor.device()));
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
