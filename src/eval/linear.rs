//! Linear probe: a linear classifier on frozen backbone features (eval-mode BN), as SimSiam's
//! `main_lincls.py`: fc initialised N(0, 0.01) with bias 0, SGD with momentum 0.9, no weight
//! decay, cosine lr per epoch. Defaults are the common CIFAR recipe (lr 30, batch 256, 100
//! epochs, random crop with 4-pixel padding + flip; ImageNet's random resized crop + flip where
//! the views are smaller than the stored images). Optionally a BatchNorm without affine
//! before the classifier (MAE / MoCo v3 style), and precomputed features when augmentation is
//! off (one backbone pass instead of one per epoch).
use crate::augment::Augmenter;
use crate::data::ImageStore;
use crate::model::SimSiam;
use crate::optim::{cosine_lr, Param, Sgd};
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// The probe's recipe; also an experiment's `[linear]` table (fields left out keep these
/// defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Augment the training images (random crop with padding 4 + flip; `RandomResizedCrop` +
    /// flip when the views are smaller than the store: [`Augmenter::probe_view`]); off =
    /// precomputed features.
    pub augment: bool,
    /// BatchNorm1d(affine=False) before the linear layer.
    pub bn: bool,
    /// LARS (trust coefficient 0.001, as `main_lincls.py --lars`) for large batches.
    pub lars: bool,
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            epochs: 100,
            batch_size: 256,
            lr: 30.0,
            momentum: 0.9,
            weight_decay: 0.0,
            augment: true,
            bn: false,
            lars: false,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeResult {
    pub top1: f64,
    pub top5: f64,
    pub train_loss: f64,
    pub config: ProbeConfig,
}

/// The classifier head and its optimiser.
struct Head {
    _vs: nn::VarStore,
    bn: Option<nn::BatchNorm>,
    fc: nn::Linear,
    opt: Sgd,
}

impl Head {
    fn new(dim: i64, classes: i64, cfg: &ProbeConfig, device: tch::Device) -> Head {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let bn = cfg.bn.then(|| {
            nn::batch_norm1d(&root / "bn", dim, nn::BatchNormConfig { affine: false, eps: 1e-6, ..Default::default() })
        });
        let init = nn::LinearConfig {
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.01 },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let fc = nn::linear(&root / "fc", dim, classes, init);
        let params = vec![
            Param { name: "fc.weight".into(), tensor: fc.ws.shallow_clone(), group: 0 },
            Param { name: "fc.bias".into(), tensor: fc.bs.as_ref().expect("bias").shallow_clone(), group: 0 },
        ];
        let mut opt = Sgd::new(params, 1, cfg.momentum, cfg.weight_decay);
        opt.lars_trust = cfg.lars.then_some(0.001);
        Head { _vs: vs, bn, fc, opt }
    }

    /// Logits `[B, classes]` of features `[B, C]`.
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.bn {
            Some(bn) => bn.forward_t(x, train).apply(&self.fc),
            None => x.apply(&self.fc),
        }
    }

    fn step(&mut self, x: &Tensor, y: &Tensor) -> Tensor {
        let loss = self.forward(x, true).cross_entropy_for_logits(y);
        self.opt.zero_grad();
        loss.backward();
        self.opt.step();
        loss.detach()
    }
}

/// Top-1 and top-5 accuracy (percent) of logits against labels.
pub fn topk_accuracy(logits: &Tensor, labels: &Tensor) -> (f64, f64) {
    let k = logits.size()[1].min(5);
    let (_, idx) = logits.topk(k, 1, true, true);
    let hit = idx.eq_tensor(&labels.unsqueeze(1));
    let pct = |t: Tensor| t.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]) * 100.0;
    (pct(hit.narrow(1, 0, 1).any_dim(1, false)), pct(hit.any_dim(1, false)))
}

fn features(model: &SimSiam, images: &Tensor, aug: &Augmenter, augment: bool) -> Tensor {
    tch::no_grad(|| {
        let x = if augment { aug.probe_view(images) } else { aug.eval_view(images) };
        model.features(&x, false).to_kind(Kind::Float)
    })
}

fn all_features(model: &SimSiam, store: &ImageStore, aug: &Augmenter) -> Tensor {
    Tensor::cat(&store.batches(512).map(|rows| features(model, &rows, aug, false)).collect::<Vec<_>>(), 0)
}

/// Trains a linear head on `train_x` `[N, C]` (or on features computed per batch from
/// augmented images when `images` is given) and evaluates it on `test_x`.
fn fit(
    train: Source,
    train_y: &Tensor,
    test_x: &Tensor,
    test_y: &Tensor,
    classes: i64,
    cfg: &ProbeConfig,
) -> ProbeResult {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let dim = test_x.size()[1];
    let device = test_x.device();
    // Seeded before the head's initial weights are drawn: the probe is its config's.
    tch::manual_seed(cfg.seed as i64);
    let mut head = Head::new(dim, classes, cfg, device);
    let n = train_y.size()[0] as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut last_loss = Tensor::zeros([], (Kind::Float, device));
    let pb = crate::progress::Progress::new(cfg.epochs as u64, "probe epochs");
    for epoch in 0..cfg.epochs {
        head.opt.lrs[0] = cosine_lr(cfg.lr, epoch as f64, cfg.epochs, 0);
        let mut order: Vec<i64> = (0..n as i64).collect();
        order.shuffle(&mut rng);
        let chunks: Vec<&[i64]> = order.chunks(cfg.batch_size).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let idx = Tensor::from_slice(chunk).to_device(device);
            let x = match &train {
                Source::Features(f) => f.index_select(0, &idx),
                Source::Images { model, store, aug } => {
                    // A store mapped from the disk cache reads the next batch while this one is used.
                    if let Some(next) = chunks.get(i + 1) {
                        store.will_need(&Tensor::from_slice(next));
                    }
                    // A host store (`data.store`) gathers with the indices on the host.
                    let at = if store.on_host_for(device) { Tensor::from_slice(chunk) } else { idx.shallow_clone() };
                    features(model, &store.gather(&at, device), aug, true)
                }
            };
            last_loss = head.step(&x, &train_y.index_select(0, &idx));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let logits = tch::no_grad(|| head.forward(test_x, false));
    let (top1, top5) = topk_accuracy(&logits, test_y);
    ProbeResult { top1, top5, train_loss: last_loss.double_value(&[]), config: cfg.clone() }
}

enum Source<'a> {
    Features(Tensor),
    Images { model: &'a SimSiam, store: &'a ImageStore, aug: &'a Augmenter },
}

/// Linear probe on precomputed features (`[N, C]`, labels `[N]`).
pub fn probe_features(
    train_x: &Tensor,
    train_y: &Tensor,
    test_x: &Tensor,
    test_y: &Tensor,
    classes: i64,
    cfg: &ProbeConfig,
) -> ProbeResult {
    fit(Source::Features(train_x.shallow_clone()), train_y, test_x, test_y, classes, cfg)
}

/// Linear probe of a model's frozen backbone on image stores (both on the model's device).
pub fn probe(
    model: &SimSiam,
    train: &ImageStore,
    test: &ImageStore,
    aug: &Augmenter,
    cfg: &ProbeConfig,
) -> ProbeResult {
    let test_x = all_features(model, test, aug);
    let classes = train.num_classes() as i64;
    let source = if cfg.augment {
        Source::Images { model, store: train, aug }
    } else {
        Source::Features(all_features(model, train, aug))
    };
    fit(source, &train.labels, &test_x, &test.labels, classes, cfg)
}
