//! The SimSiam network (Chen & He 2021, `simsiam/builder.py`): encoder f = backbone +
//! projector, predictor h. The objective decides where stop-gradient goes.
pub mod heads;
pub mod norm;
pub mod resnet;

use crate::config::ModelConfig;
use heads::{Mlp, Predictor};
use resnet::ResNet;
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// VarStore prefixes; the optimiser gives `predictor.*` its own (constant-lr) group.
pub const BACKBONE: &str = "backbone";
pub const PROJECTOR: &str = "projector";
pub const PREDICTOR: &str = "predictor";
/// The inverse predictor h_inv (Zhang et al. Fig. 2c), in the predictor's lr group.
pub const INVERSE_PREDICTOR: &str = "predictor_inverse";
/// The online linear probe, in its own group (own lr, no weight decay).
pub const ONLINE_PROBE: &str = "online_probe";

/// Both branches' outputs for one pair of views.
#[derive(Debug)]
pub struct SiameseOutput {
    /// Projections z = f(x), `[B, d]`.
    pub z1: Tensor,
    pub z2: Tensor,
    /// Predictions p = h(z), `[B, d]`.
    pub p1: Tensor,
    pub p2: Tensor,
    /// Backbone features y of view 1, `[B, C]` (for the online probe).
    pub y1: Tensor,
}

#[derive(Debug)]
pub struct SimSiam {
    pub backbone: ResNet,
    pub projector: Mlp,
    pub predictor: Predictor,
    /// h_inv, same architecture as h, when the objective's target needs it.
    pub inverse: Option<Predictor>,
    /// The online linear probe on detached backbone features (`online_probe_classes > 0`).
    pub online_probe: Option<nn::Linear>,
    pub dim: i64,
    /// Train-mode BatchNorm statistics over this many equal parts of the batch (ghost BN).
    pub bn_splits: i64,
}

impl SimSiam {
    pub fn new(root: &nn::Path, cfg: &ModelConfig, with_inverse: bool, probe_classes: i64) -> SimSiam {
        let backbone = ResNet::new(&(root / BACKBONE), cfg);
        let projector = Mlp::new(&(root / PROJECTOR), &heads::projector_specs(backbone.out_dim, cfg));
        let predictor = Predictor::new(&(root / PREDICTOR), cfg);
        let inverse = with_inverse.then(|| Predictor::new(&(root / INVERSE_PREDICTOR), cfg));
        let online_probe = (probe_classes > 0).then(|| {
            let init = nn::LinearConfig {
                ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.01 },
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            };
            nn::linear(root / ONLINE_PROBE, backbone.out_dim, probe_classes, init)
        });
        SimSiam { backbone, projector, predictor, inverse, online_probe, dim: cfg.dim, bn_splits: cfg.bn_splits as i64 }
    }

    /// z = f(x): `[B,3,H,W] -> [B, d]`.
    pub fn encode(&self, x: &Tensor, train: bool) -> Tensor {
        if train && self.bn_splits > 1 {
            let parts: Vec<Tensor> = x.chunk(self.bn_splits, 0).iter().map(|p| self.encode_whole(p, train)).collect();
            return Tensor::cat(&parts, 0);
        }
        self.encode_whole(x, train)
    }

    fn encode_whole(&self, x: &Tensor, train: bool) -> Tensor {
        self.backbone.forward_t(x, train).apply_t(&self.projector, train)
    }

    /// Backbone features y (what downstream tasks use): `[B,3,H,W] -> [B, C]`.
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        self.backbone.forward_t(x, train)
    }

    /// `x1, x2 -> z1, z2, p1, p2`. Each view is its own forward pass, so BatchNorm statistics are
    /// per view, as in the official code.
    /// With `bn_splits > 1` in train mode, each part of the batch is its own forward pass.
    pub fn forward(&self, x1: &Tensor, x2: &Tensor, train: bool) -> SiameseOutput {
        if !(train && self.bn_splits > 1) {
            return self.forward_whole(x1, x2, train);
        }
        let n = self.bn_splits;
        let parts: Vec<SiameseOutput> =
            x1.chunk(n, 0).iter().zip(x2.chunk(n, 0)).map(|(a, b)| self.forward_whole(a, &b, train)).collect();
        let cat = |f: fn(&SiameseOutput) -> &Tensor| Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0);
        SiameseOutput {
            z1: cat(|o| &o.z1),
            z2: cat(|o| &o.z2),
            p1: cat(|o| &o.p1),
            p2: cat(|o| &o.p2),
            y1: cat(|o| &o.y1),
        }
    }

    fn forward_whole(&self, x1: &Tensor, x2: &Tensor, train: bool) -> SiameseOutput {
        let y1 = self.backbone.forward_t(x1, train);
        let z1 = y1.apply_t(&self.projector, train);
        let z2 = self.encode_whole(x2, train);
        let p1 = self.predictor.forward_t(&z1, train);
        let p2 = self.predictor.forward_t(&z2, train);
        SiameseOutput { z1, z2, p1, p2, y1 }
    }
}
