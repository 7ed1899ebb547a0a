//! The SimSiam network (Chen & He 2021, `simsiam/builder.py`): encoder f = backbone +
//! projector, predictor h. The objective decides where stop-gradient goes.
pub mod heads;
pub mod norm;
pub mod resnet;

use crate::config::ModelConfig;
use crate::precision;
use heads::{Mlp, Predictor};
use resnet::ResNet;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// PyTorch's own reset of `nn.Linear` and `nn.Conv2d` weights (Kaiming uniform, a = sqrt(5)) and
/// of their biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub(crate) fn pytorch_uniform(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform { lo: -bound, up: bound }
}

/// VarStore prefixes; the optimiser gives `predictor.*` its own (constant-lr) group.
pub const BACKBONE: &str = "backbone";
pub const PROJECTOR: &str = "projector";
pub const PREDICTOR: &str = "predictor";
/// The inverse predictor h_inv (Zhang et al. Fig. 2c), in the predictor's lr group.
pub const INVERSE_PREDICTOR: &str = "predictor_inverse";
/// The online linear probe, in its own group (own lr, no weight decay).
pub const ONLINE_PROBE: &str = "online_probe";
/// SwAV's prototypes `[K, d]`, in the encoder's group (as in SwAV, one lr for all).
pub const PROTOTYPES: &str = "prototypes";

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
    /// SwAV's prototypes `[K, d]` (`objective.swav.weight > 0`): rows kept at unit norm by
    /// [`SimSiam::normalize_prototypes`] before every step.
    pub prototypes: Option<Tensor>,
    pub dim: i64,
    /// Train-mode BatchNorm statistics over this many equal parts of the batch (ghost BN).
    pub bn_splits: i64,
    /// Forward passes under autocast in this dtype (`None`: fp32); outputs are fp32.
    pub autocast: Option<Kind>,
    /// Inputs in the channels-last layout (the weights are converted by [`crate::precision`]).
    pub channels_last: bool,
}

impl SimSiam {
    /// With h_inv (`with_inverse`), `prototypes` SwAV prototypes (0 = none) and an online probe
    /// over `probe_classes` classes (0 = none).
    pub fn new(root: &nn::Path, cfg: &ModelConfig, with_inverse: bool, prototypes: i64, probe_classes: i64) -> SimSiam {
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
        // SwAV's `nn.Linear(d, K, bias=False)`: PyTorch's default init, normalised at each step.
        let prototypes = (prototypes > 0)
            .then(|| (root / PROTOTYPES).var("weight", &[prototypes, cfg.dim], pytorch_uniform(cfg.dim)));
        SimSiam {
            backbone,
            projector,
            predictor,
            inverse,
            online_probe,
            prototypes,
            dim: cfg.dim,
            bn_splits: cfg.bn_splits as i64,
            autocast: None,
            channels_last: false,
        }
    }

    /// Runs `f` on the inputs under the speed options (channels-last input, autocast) and
    /// returns its outputs in fp32. In train mode with `bn_splits > 1`, `f` runs on each part of
    /// the batch (its own BatchNorm statistics) and the outputs are concatenated.
    fn run(&self, xs: &[&Tensor], train: bool, f: impl Fn(&[Tensor]) -> Vec<Tensor>) -> Vec<Tensor> {
        let prep = |x: &Tensor| if self.channels_last { precision::channels_last(x) } else { x.shallow_clone() };
        precision::autocast(self.autocast, xs[0].device(), || {
            let n = if train { self.bn_splits } else { 1 };
            let parts: Vec<Vec<Tensor>> = if n > 1 {
                let chunks: Vec<Vec<Tensor>> = xs.iter().map(|x| x.chunk(n, 0)).collect();
                (0..n as usize).map(|i| f(&chunks.iter().map(|c| prep(&c[i])).collect::<Vec<_>>())).collect()
            } else {
                vec![f(&xs.iter().map(|x| prep(x)).collect::<Vec<_>>())]
            };
            (0..parts[0].len())
                .map(|j| {
                    let out = match &parts[..] {
                        [one] => one[j].shallow_clone(),
                        many => Tensor::cat(&many.iter().map(|p| p[j].shallow_clone()).collect::<Vec<_>>(), 0),
                    };
                    out.to_kind(Kind::Float)
                })
                .collect()
        })
    }

    /// SwAV's projection of the prototypes onto the unit sphere, in place and outside autograd,
    /// as SwAV does at the start of every iteration; a no-op without prototypes.
    pub fn normalize_prototypes(&self) {
        if let Some(c) = &self.prototypes {
            tch::no_grad(|| {
                let mut c = c.shallow_clone();
                c.copy_(&crate::monitor::l2_normalize(&c));
            });
        }
    }

    /// z = f(x): `[B,3,H,W] -> [B, d]`.
    pub fn encode(&self, x: &Tensor, train: bool) -> Tensor {
        let f = |x: &[Tensor]| vec![self.backbone.forward_t(&x[0], train).apply_t(&self.projector, train)];
        self.run(&[x], train, f).remove(0)
    }

    /// Both the backbone feature y and the projection z of one view, in one forward pass:
    /// `[B,3,H,W] -> ([B, C], [B, d])`.
    pub fn features_and_projection(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let f = |x: &[Tensor]| {
            let y = self.backbone.forward_t(&x[0], train);
            let z = y.apply_t(&self.projector, train);
            vec![y, z]
        };
        let mut out = self.run(&[x], train, f);
        let z = out.pop().expect("z");
        (out.pop().expect("y"), z)
    }

    /// Backbone features y (what downstream tasks use): `[B,3,H,W] -> [B, C]`.
    pub fn features(&self, x: &Tensor, train: bool) -> Tensor {
        self.run(&[x], train, |x| vec![self.backbone.forward_t(&x[0], train)]).remove(0)
    }

    /// `x1, x2 -> z1, z2, p1, p2`. Each view is its own forward pass, so BatchNorm statistics are
    /// per view, as in the official code.
    pub fn forward(&self, x1: &Tensor, x2: &Tensor, train: bool) -> SiameseOutput {
        let f = |x: &[Tensor]| {
            let y1 = self.backbone.forward_t(&x[0], train);
            let z1 = y1.apply_t(&self.projector, train);
            let z2 = self.backbone.forward_t(&x[1], train).apply_t(&self.projector, train);
            let p1 = self.predictor.forward_t(&z1, train);
            let p2 = self.predictor.forward_t(&z2, train);
            vec![z1, z2, p1, p2, y1]
        };
        let mut o = self.run(&[x1, x2], train, f).into_iter();
        let mut next = || o.next().expect("five outputs");
        SiameseOutput { z1: next(), z2: next(), p1: next(), p2: next(), y1: next() }
    }
}
