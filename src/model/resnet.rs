//! ResNet-18/34/50 with torchvision's structure, parameter names and initialisation
//! (conv: Kaiming normal, fan-out, ReLU gain, or `nn.Conv2d`'s own reset; BN: gamma 1, beta 0;
//! optional zero-init of each block's last BN gamma), plus the CIFAR variant (3x3 stride-1
//! stem, no max-pool).
use super::norm::BatchNorm;
use crate::config::{Arch, ConvInit, ModelConfig};
use tch::nn::{self, ModuleT};
use tch::Tensor;

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64, init: ConvInit) -> nn::Conv2D {
    let ws_init = match init {
        ConvInit::KaimingFanOut => nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ConvInit::Pytorch => super::pytorch_uniform(cin * k * k),
    };
    nn::conv2d(p, cin, cout, k, nn::ConvConfig { stride, padding, bias: false, ws_init, ..Default::default() })
}

fn bn(p: nn::Path, c: i64, gamma: f64) -> BatchNorm {
    BatchNorm::new(p, 2, c, true, gamma)
}

#[derive(Debug)]
struct Block {
    convs: Vec<(nn::Conv2D, BatchNorm)>,
    downsample: Option<(nn::Conv2D, BatchNorm)>,
}

impl Block {
    /// BasicBlock (two 3x3 convs, expansion 1) or Bottleneck (1x1, 3x3 with the stride, 1x1;
    /// expansion 4), named `conv{i}`/`bn{i}` and `downsample.{0,1}` as in torchvision.
    fn new(p: &nn::Path, cin: i64, planes: i64, stride: i64, bottleneck: bool, cfg: &ModelConfig) -> (Block, i64) {
        let last_gamma = if cfg.zero_init_residual { 0.0 } else { 1.0 };
        let (specs, cout): (Vec<(i64, i64, i64, i64)>, i64) = if bottleneck {
            (vec![(cin, planes, 1, 1), (planes, planes, 3, stride), (planes, planes * 4, 1, 1)], planes * 4)
        } else {
            (vec![(cin, planes, 3, stride), (planes, planes, 3, 1)], planes)
        };
        let n = specs.len();
        let convs = specs
            .into_iter()
            .enumerate()
            .map(|(i, (ci, co, k, s))| {
                let gamma = if i + 1 == n { last_gamma } else { 1.0 };
                let c = conv(p / format!("conv{}", i + 1), ci, co, k, s, k / 2, cfg.conv_init);
                (c, bn(p / format!("bn{}", i + 1), co, gamma))
            })
            .collect();
        let downsample = (stride != 1 || cin != cout).then(|| {
            let d = p / "downsample";
            (conv(&d / "0", cin, cout, 1, stride, 0, cfg.conv_init), bn(&d / "1", cout, 1.0))
        });
        (Block { convs, downsample }, cout)
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let n = self.convs.len();
        let mut h = x.shallow_clone();
        for (i, (c, b)) in self.convs.iter().enumerate() {
            h = h.apply(c).apply_t(b, train);
            if i + 1 < n {
                h = h.relu();
            }
        }
        let identity = match &self.downsample {
            Some((c, b)) => x.apply(c).apply_t(b, train),
            None => x.shallow_clone(),
        };
        (h + identity).relu()
    }
}

/// The backbone: image `[B,3,H,W]` -> pooled features `[B, out_dim]` (torchvision's `fc` is
/// not built; SimSiam puts its projector there).
#[derive(Debug)]
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: BatchNorm,
    stem_relu: bool,
    maxpool: bool,
    layers: Vec<Vec<Block>>,
    pub out_dim: i64,
}

impl ResNet {
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> ResNet {
        let (depths, bottleneck) = match cfg.arch {
            Arch::Resnet18 => ([2, 2, 2, 2], false),
            Arch::Resnet34 => ([3, 4, 6, 3], false),
            Arch::Resnet50 => ([3, 4, 6, 3], true),
        };
        let w = cfg.width;
        let (conv1, maxpool) = if cfg.cifar_stem {
            (conv(p / "conv1", 3, w, 3, 1, 1, cfg.conv_init), false)
        } else {
            (conv(p / "conv1", 3, w, 7, 2, 3, cfg.conv_init), true)
        };
        let bn1 = bn(p / "bn1", w, 1.0);
        let mut cin = w;
        let mut layers = Vec::new();
        for (i, &depth) in depths.iter().enumerate() {
            let planes = w << i;
            let lp = p / format!("layer{}", i + 1);
            let mut blocks = Vec::new();
            for j in 0..depth {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let (b, cout) = Block::new(&(&lp / j), cin, planes, stride, bottleneck, cfg);
                blocks.push(b);
                cin = cout;
            }
            layers.push(blocks);
        }
        ResNet { conv1, bn1, stem_relu: cfg.stem_relu, maxpool, layers, out_dim: cin }
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.apply(&self.conv1).apply_t(&self.bn1, train);
        if self.stem_relu {
            h = h.relu();
        }
        if self.maxpool {
            h = h.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for layer in &self.layers {
            for block in layer {
                h = block.forward_t(&h, train);
            }
        }
        // Global average pool: [B, C, h, w] -> [B, C]
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}
