//! MLP heads declared as lists of blocks `(in, out, bias, batch_norm, relu)`, lightly's style:
//! the projector and every predictor variant are a few lines on the same builder.
use super::norm::BatchNorm;
use crate::config::{ModelConfig, PredictorKind};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// BatchNorm after a block's Linear: absent, with affine, or without affine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    None,
    Affine,
    NoAffine,
}

/// One `Linear -> [BN] -> [ReLU]` block.
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec {
    pub input: i64,
    pub output: i64,
    pub bias: bool,
    pub norm: Norm,
    pub relu: bool,
}

#[derive(Debug)]
pub struct Mlp {
    blocks: Vec<(nn::Linear, Option<BatchNorm>, bool)>,
}

/// PyTorch's `nn.Linear` default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
fn linear(p: nn::Path, i: i64, o: i64, bias: bool) -> nn::Linear {
    let init = super::pytorch_uniform(i);
    nn::linear(p, i, o, nn::LinearConfig { ws_init: init, bs_init: Some(init), bias })
}

impl Mlp {
    /// Blocks are named `{i}.linear` and `{i}.bn`.
    pub fn new(p: &nn::Path, specs: &[BlockSpec]) -> Mlp {
        let blocks = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let bp = p / i;
                let lin = linear(&bp / "linear", s.input, s.output, s.bias);
                let bn = match s.norm {
                    Norm::None => None,
                    Norm::Affine => Some(BatchNorm::new(&bp / "bn", 1, s.output, true, 1.0)),
                    Norm::NoAffine => Some(BatchNorm::new(&bp / "bn", 1, s.output, false, 1.0)),
                };
                (lin, bn, s.relu)
            })
            .collect();
        Mlp { blocks }
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for (lin, bn, relu) in &self.blocks {
            h = h.apply(lin);
            if let Some(bn) = bn {
                h = h.apply_t(bn, train);
            }
            if *relu {
                h = h.relu();
            }
        }
        h
    }
}

fn norm(on: bool, affine: bool) -> Norm {
    match (on, affine) {
        (false, _) => Norm::None,
        (true, true) => Norm::Affine,
        (true, false) => Norm::NoAffine,
    }
}

/// The projector (SimSiam's `encoder.fc`): `layers - 1` hidden blocks
/// `Linear(no bias) -> BN -> ReLU`, then `Linear -> BN(affine=False)`. The official code keeps
/// the output Linear's bias but freezes it, because the BN that follows cancels it; we leave it
/// out, which is the same function. Without output BN the bias is kept and trained.
pub fn projector_specs(in_dim: i64, cfg: &ModelConfig) -> Vec<BlockSpec> {
    let mut specs = Vec::new();
    let mut d = in_dim;
    for _ in 1..cfg.proj_layers {
        specs.push(BlockSpec {
            input: d,
            output: cfg.proj_hidden,
            bias: !cfg.proj_hidden_bn,
            norm: norm(cfg.proj_hidden_bn, true),
            relu: true,
        });
        d = cfg.proj_hidden;
    }
    specs.push(BlockSpec {
        input: d,
        output: cfg.dim,
        bias: !cfg.proj_output_bn,
        norm: norm(cfg.proj_output_bn, cfg.proj_output_bn_affine),
        relu: false,
    });
    specs
}

/// The predictor `h` for each [`PredictorKind`].
#[derive(Debug)]
pub enum Predictor {
    Mlp(Mlp),
    Identity,
    /// `z + b`.
    Bias(Tensor),
}

impl Predictor {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Predictor {
        let d = cfg.dim;
        match cfg.predictor {
            // Linear(d, d/4, no bias) -> BN -> ReLU -> Linear(d/4, d): the bottleneck.
            PredictorKind::Mlp => Predictor::Mlp(Mlp::new(
                p,
                &[
                    BlockSpec {
                        input: d,
                        output: cfg.pred_hidden,
                        bias: !cfg.pred_hidden_bn,
                        norm: norm(cfg.pred_hidden_bn, true),
                        relu: true,
                    },
                    BlockSpec {
                        input: cfg.pred_hidden,
                        output: d,
                        bias: !cfg.pred_output_bn,
                        norm: norm(cfg.pred_output_bn, true),
                        relu: false,
                    },
                ],
            )),
            PredictorKind::Linear => Predictor::Mlp(Mlp::new(
                p,
                &[BlockSpec { input: d, output: d, bias: cfg.pred_bias, norm: Norm::None, relu: false }],
            )),
            PredictorKind::Bias => Predictor::Bias(p.zeros("bias", &[d])),
            PredictorKind::Identity => Predictor::Identity,
        }
    }
}

impl ModuleT for Predictor {
    fn forward_t(&self, z: &Tensor, train: bool) -> Tensor {
        match self {
            Predictor::Mlp(m) => m.forward_t(z, train),
            Predictor::Identity => z.shallow_clone(),
            Predictor::Bias(b) => z + b,
        }
    }
}
