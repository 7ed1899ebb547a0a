//! BatchNorm, per rank or synchronised across ranks. In train mode with a sync-BN group set
//! ([`crate::dist::set_sync_bn`]) the batch statistics are those of the global batch, as
//! PyTorch's `SyncBatchNorm`: each rank's mean and biased variance are all-gathered with their
//! counts (one collective forward, one backward, both differentiable) and combined exactly.
//! Otherwise it is libtorch's `batch_norm` (cuDNN on GPU). Same parameters and names either way.
use crate::dist;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// BatchNorm as PyTorch initialises it (gamma 1 unless given, beta 0; tch's default gamma is
/// U(0, 1)); momentum 0.1, eps 1e-5.
#[derive(Debug)]
pub struct BatchNorm {
    inner: nn::BatchNorm,
    momentum: f64,
    eps: f64,
}

impl BatchNorm {
    /// Over `[B, C]` (`nd = 1`) or `[B, C, H, W]` (`nd = 2`) inputs, named `weight`, `bias`,
    /// `running_mean`, `running_var` under `p`.
    pub fn new<'a>(p: impl std::borrow::Borrow<nn::Path<'a>>, nd: usize, c: i64, affine: bool, gamma: f64) -> Self {
        let cfg = nn::BatchNormConfig {
            affine,
            ws_init: nn::Init::Const(gamma),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let (momentum, eps) = (cfg.momentum, cfg.eps);
        let inner = if nd == 1 { nn::batch_norm1d(p, c, cfg) } else { nn::batch_norm2d(p, c, cfg) };
        BatchNorm { inner, momentum, eps }
    }

    /// Train-mode BN with the global batch's statistics (see the module doc).
    fn forward_sync(&self, x: &Tensor, group: &dist::Group) -> Result<Tensor, crate::Error> {
        let c = x.size()[1];
        // Per channel: reduce over every dim but 1.
        let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
        let shape: Vec<i64> = (0..x.dim() as i64).map(|d| if d == 1 { c } else { 1 }).collect();
        let count = (x.numel() as i64 / c) as f64;
        let xf = x.to_kind(Kind::Float);
        // This rank's per-channel mean and biased variance, [C] each, and its count, [1]
        // (made on the device: no host copy).
        let mean_r = xf.mean_dim(&dims[..], false, Kind::Float);
        let var_r = (&xf - mean_r.view(&shape[..])).square().mean_dim(&dims[..], false, Kind::Float);
        let n_r = Tensor::full([1], count, (Kind::Float, x.device()));
        // [W, 2C + 1]: (mean, biased variance, count) of every rank.
        let all = group.all_gather_autograd(&Tensor::cat(&[mean_r, var_r, n_r], 0))?;
        let n = all.narrow(1, 2 * c, 1); // [W, 1]
        let total = n.sum(Kind::Float);
        let means = all.narrow(1, 0, c); // [W, C]
        let mean = (&means * &n).sum_dim_intlist(0, false, Kind::Float) / &total; // [C]

        // [C]: the pooled variance, within-rank plus between-rank parts.
        let var =
            ((all.narrow(1, c, c) + (&means - &mean).square()) * &n).sum_dim_intlist(0, false, Kind::Float) / &total;
        let inv_std = (&var + self.eps).rsqrt();
        let mut y = (&xf - mean.view(&shape[..])) * inv_std.view(&shape[..]);
        if let (Some(w), Some(b)) = (&self.inner.ws, &self.inner.bs) {
            y = y * w.view(&shape[..]) + b.view(&shape[..]);
        }
        tch::no_grad(|| {
            let m = self.momentum;
            let unbiased = &var * (&total / (&total - 1.0));
            let mut rm = self.inner.running_mean.shallow_clone();
            let mut rv = self.inner.running_var.shallow_clone();
            let _ = rm.g_mul_scalar_(1.0 - m).g_add_(&(mean.detach() * m));
            let _ = rv.g_mul_scalar_(1.0 - m).g_add_(&(unbiased.detach() * m));
        });
        Ok(y.to_kind(x.kind()))
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            if let Some(group) = dist::sync_bn_group() {
                match self.forward_sync(x, &group) {
                    Ok(y) => return y,
                    // A forward pass cannot return an error: the training step picks it up
                    // before the backward pass and stops the run.
                    Err(e) => dist::record_forward_error(e),
                }
            }
        }
        self.inner.forward_t(x, train)
    }
}
