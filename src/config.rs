//! Typed configuration. Every default is the paper's CIFAR recipe (SimSiam, App. D); presets in
//! `configs/*.toml` change only what differs. Any field can be overridden with
//! `--set section.field=value`, and the resolved config is saved with each run.
use crate::error::{Error, Result};
use documented::DocumentedFieldsOpt;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, DocumentedFieldsOpt)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The run: where it writes, its seed, device, schedule length, checkpoints and speed options.
    pub run: RunConfig,
    /// The images: where they are, their format, the stored size and where the store lives.
    pub data: DataConfig,
    /// The training views: SimSiam's / MoCo v2's augmentation, and the normalisation.
    pub augment: AugmentConfig,
    /// The encoder (backbone + projector), the predictor, their initialisation, BYOL's EMA target.
    pub model: ModelConfig,
    /// The loss as a value: online vector, target, form, similarity, symmetry, extra losses.
    pub objective: ObjectiveConfig,
    /// SGD: batch, lr (linear scaling, cosine), momentum, weight decay, the predictor's lr.
    pub optim: OptimConfig,
    /// What a run measures as it trains: kNN, per-step metrics, geometry, weights.
    pub monitor: MonitorConfig,
    /// Data-parallel training: backend, synchronised BN, timeouts, gradient buckets.
    pub dist: DistConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, DocumentedFieldsOpt)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Folder for metrics, checkpoints, the resolved config and the report.
    pub out_dir: PathBuf,
    /// Seeds the initialisation, the data order, the augmentations and the data subsets: a run
    /// repeats from its config and seed.
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// Length of the schedule: the cosine lr decay runs over this many epochs.
    pub epochs: usize,
    /// Write a checkpoint every this many epochs (and always at the end).
    pub checkpoint_every: usize,
    /// Also write one within an epoch once this many minutes have passed since the last (at
    /// the next metrics flush; 0: off), so that a killed job (out of memory, preempted, a
    /// lost machine) loses at most this much work. A resume from it repeats the run step for
    /// step, as from any checkpoint.
    pub checkpoint_minutes: f64,
    /// How many of the newest checkpoints to keep (0: all of them, e.g. to analyse the
    /// representation at several epochs with `simsiam analyse --checkpoint`).
    pub keep_checkpoints: usize,
    /// CPU threads for libtorch (0: libtorch's default for the machine). A CPU run repeats
    /// bit for bit only at the same count: its kernels sum in an order that depends on it.
    pub threads: usize,
    /// On CUDA, let cuDNN autotune convolution algorithms (fast; not bit-reproducible).
    pub cudnn_benchmark: bool,
    /// On CUDA, let cuDNN's fp32 convolutions use TF32 tensor cores (Ampere and newer), as
    /// PyTorch does by default (`torch.backends.cudnn.allow_tf32`): faster, with the
    /// convolutions' inputs rounded to TF32's 10-bit mantissa (relative rounding up to 2^-11,
    /// about 5e-4). Only fp32 convolutions are affected (`precision = "fp32"`; under autocast
    /// they run in bf16 or fp16), and matrix products stay full fp32.
    /// Off: full fp32 convolutions, to compare with a CPU run.
    pub tf32: bool,
    /// The network's forward pass: `auto`, `fp32`, `bf16` or `fp16` (autocast; fp16 with dynamic
    /// loss scaling, as PyTorch's `GradScaler`). `auto` is what the device's tensor cores run
    /// fastest: bf16 from compute capability 8.0 (A100, H100), fp16 on 7.x (V100, T4: no bf16
    /// tensor cores), fp32 on older GPUs and the CPU. Weights, optimiser, BN statistics and the
    /// loss stay fp32 either way.
    pub precision: Precision,
    /// On CUDA, convolution weights and inputs in the channels-last layout (tensor-core friendly).
    pub channels_last: bool,
    /// On CUDA, capture the training step (forward, backward, update) once as a CUDA graph and
    /// replay it, so its thousand-odd kernels cost one launch. Plain steps of one process only
    /// (no memory bank, EOA, cached or EMA targets, online probe, inverse predictor, LARS);
    /// others run eagerly, with a warning. Off until measured on a GPU (BENCHMARKS.md).
    pub cuda_graph: bool,
    /// Make the next step's views while this step trains: on a GPU, on a second CUDA stream,
    /// so the augmentation overlaps the step instead of running before it. The views are the
    /// same as without it (each step's augmentation has its own seed). Steps whose targets
    /// draw augmentations too (EOA, k-step alternation) make their views in turn, with a
    /// warning. Off until measured on a GPU (BENCHMARKS.md).
    pub prefetch: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Auto,
    Fp32,
    Bf16,
    Fp16,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            out_dir: PathBuf::from("runs/simsiam"),
            seed: 0,
            device: "auto".into(),
            epochs: 800,
            checkpoint_every: 10,
            checkpoint_minutes: 30.0,
            keep_checkpoints: 2,
            threads: 0,
            cudnn_benchmark: true,
            tf32: true,
            precision: Precision::Auto,
            channels_last: true,
            cuda_graph: false,
            prefetch: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// Decide from the path: `.tar`/`.tar.gz`/`.tgz`, CIFAR `.bin` files or folders of them, or
    /// a folder of class folders.
    Auto,
    Cifar10,
    Cifar100,
    Folder,
    Tar,
}

/// Where the decoded training images live while a run reads them (`data.store`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StorePlace {
    /// On the device when the store takes at most a quarter of the GPU's memory (the rest is
    /// the model's), else in host memory. On the CPU the two are the same memory.
    Auto,
    /// All of it on the device: each step's batch is a gather there, with no copies.
    Device,
    /// In host memory: each batch is gathered on the host and copied to the device from pinned
    /// memory, queued on the stream (for stores larger than the GPU, e.g. ImageNet at 224 px).
    Host,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, DocumentedFieldsOpt)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Training images (labels are used only by the monitors).
    pub train: Option<PathBuf>,
    /// Held-out images for the kNN monitor and evaluation.
    pub test: Option<PathBuf>,
    /// `auto` (from the path: `.tar`/`.tar.gz`/`.tgz`, CIFAR `.bin` files or folders of them, a
    /// folder of class folders), `cifar10`, `cifar100`, `folder` or `tar`.
    pub format: DataFormat,
    /// Side of the square images kept in the store (resize shorter side + centre crop).
    pub image_size: usize,
    /// Use only the first N training images (after a seeded shuffle); 0 = all.
    pub train_limit: usize,
    /// Use only the first N test images (after a seeded shuffle); 0 = all.
    pub test_limit: usize,
    /// Skip unreadable images (and report how many) instead of stopping.
    pub skip_corrupt: bool,
    /// Where the decoded images live while training and evaluating: `auto`, `device`, `host`.
    pub store: StorePlace,
    /// A folder for decoded archives and image folders: the first load writes the store there
    /// (one raw file and a header), later loads map it into memory instead of decoding.
    pub cache_dir: Option<PathBuf>,
    /// How many MiB of an archive's encoded images a load keeps while it lists the archive;
    /// the images past them are read again, in a second pass, as they are decoded. So loading
    /// ImageNet's 147 GB training tar needs about the store's memory, not the store's and the
    /// tar's.
    pub archive_memory_mib: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            train: None,
            test: None,
            format: DataFormat::Auto,
            image_size: 32,
            train_limit: 0,
            test_limit: 0,
            skip_corrupt: false,
            store: StorePlace::Auto,
            cache_dir: None,
            archive_memory_mib: 1024,
        }
    }
}

/// SimSiam / MoCo v2 augmentation (torchvision definitions), two independent views per image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, DocumentedFieldsOpt)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// RandomResizedCrop area range, as a fraction of the image.
    pub crop_scale: [f64; 2],
    /// RandomResizedCrop aspect-ratio range.
    pub crop_ratio: [f64; 2],
    /// Horizontal flip probability.
    pub flip_p: f64,
    /// Probability of applying colour jitter (its four parts in random order per image).
    pub jitter_p: f64,
    /// ColorJitter brightness strength: a factor uniform in [max(0, 1 - s), 1 + s].
    pub brightness: f64,
    /// ColorJitter contrast strength, as brightness.
    pub contrast: f64,
    /// ColorJitter saturation strength, as brightness.
    pub saturation: f64,
    /// ColorJitter hue shift: uniform in [-hue, hue] (at most 0.5).
    pub hue: f64,
    /// RandomGrayscale probability (ITU-R 601-2 luma).
    pub grayscale_p: f64,
    /// Gaussian blur probability; negative = auto (0.5 above 32 px, off at 32 px and below).
    pub blur_p: f64,
    /// Gaussian blur sigma range, in pixels.
    pub blur_sigma: [f64; 2],
    /// Per-channel normalisation mean (CIFAR-10's by default; ImageNet's in that preset).
    pub mean: [f64; 3],
    /// Per-channel normalisation standard deviation.
    pub std: [f64; 3],
    /// Side of the views the network sees: RandomResizedCrop's output, and the centre crop
    /// evaluation takes of a stored image. 0 = `data.image_size`. Smaller than the store, the
    /// training crops come from more of each image and evaluation is torchvision's `Resize` +
    /// `CenterCrop`: the ImageNet protocol is a 256-px store with 224-px views.
    pub view_size: usize,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            crop_scale: [0.2, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip_p: 0.5,
            jitter_p: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.1,
            grayscale_p: 0.2,
            blur_p: -1.0,
            blur_sigma: [0.1, 2.0],
            // CIFAR-10 channel statistics.
            mean: [0.4914, 0.4822, 0.4465],
            std: [0.2470, 0.2435, 0.2616],
            view_size: 0,
        }
    }
}

impl AugmentConfig {
    /// Every random op off (the crop is the whole image): views equal the normalised image.
    /// Keeps the normalisation of `self`.
    pub fn identity(&self) -> AugmentConfig {
        AugmentConfig {
            crop_scale: [1.0, 1.0],
            crop_ratio: [1.0, 1.0],
            flip_p: 0.0,
            jitter_p: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.0,
            ..self.clone()
        }
    }

    /// The side of the views for a store of `image_size`-pixel images (`view_size`, or the
    /// store's side when it is 0).
    pub fn view_side(&self, image_size: usize) -> usize {
        if self.view_size == 0 {
            image_size
        } else {
            self.view_size
        }
    }

    /// The blur probability in force for a given image size.
    pub fn effective_blur_p(&self, image_size: usize) -> f64 {
        if self.blur_p >= 0.0 {
            self.blur_p
        } else if image_size > 32 {
            0.5
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
}

/// How the backbone's convolutions start (BN layers start at gamma 1, beta 0 either way).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConvInit {
    /// torchvision's ResNet: Kaiming normal, fan-out, ReLU gain (std sqrt(2 / fan_out)); the
    /// official SimSiam code builds its encoder from torchvision's models.
    KaimingFanOut,
    /// `nn.Conv2d`'s own reset: Kaiming uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in))
    /// (std 1/sqrt(3 fan_in)), as CIFAR ResNets that do not re-initialise (lightly's
    /// `ResNetGenerator`, kuangliu's). Under BN the function is the same, but the weights of a
    /// stage's 3x3 convolutions are sqrt(6) times smaller, so each SGD step turns them about 6
    /// times further: early training is much faster (the PyTorch peer's dynamics).
    Pytorch,
}

/// The prediction head `h`, as a value: the variants of SimSiam Table 1 and Zhang et al. §2.12.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PredictorKind {
    /// Linear(d, hidden, no bias) + BN + ReLU + Linear(hidden, d): the paper's bottleneck.
    Mlp,
    /// `h = identity` (Table 1a).
    Identity,
    /// A single fully connected layer `Wz (+ b)`.
    Linear,
    /// `h(z) = z + b`, b learnable and initialised to 0 (Zhang et al.).
    Bias,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, DocumentedFieldsOpt)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Backbone: `resnet18`, `resnet34` or `resnet50` (torchvision's layout).
    pub arch: Arch,
    /// 3x3 stride-1 stem without max-pool (the CIFAR variant).
    pub cifar_stem: bool,
    /// Channels of the first stage (64 in torchvision); smaller for quick CPU runs.
    pub width: i64,
    /// Initialise the last BN gamma of every residual block to 0.
    pub zero_init_residual: bool,
    /// The convolutions' initialisation (see [`ConvInit`]).
    pub conv_init: ConvInit,
    /// ReLU after the stem's BatchNorm, as in torchvision's ResNet and lightly's own forward.
    /// `false` reproduces a backbone built as lightly's examples build it,
    /// `nn.Sequential(*list(ResNetGenerator(...).children())[:-1])`, which skips that ReLU.
    pub stem_relu: bool,
    /// Projector layers (2 for CIFAR, 3 for ImageNet).
    pub proj_layers: usize,
    /// Width of the projector's hidden layers.
    pub proj_hidden: i64,
    /// Output dimension d of the projector (and predictor).
    pub dim: i64,
    /// BatchNorm after each hidden layer of the projector (SimSiam Table 3).
    pub proj_hidden_bn: bool,
    /// BatchNorm on the projector's output (SimSiam: yes).
    pub proj_output_bn: bool,
    /// Learnable scale and shift in that output BN (the official code: none).
    pub proj_output_bn_affine: bool,
    /// The predictor h: `mlp` (the paper's bottleneck), `identity` (no predictor), `linear`
    /// (one FC layer) or `bias` (h(z) = z + b).
    pub predictor: PredictorKind,
    /// Predictor hidden width (d/4 in the paper).
    pub pred_hidden: i64,
    /// BatchNorm after the predictor's hidden layer (SimSiam: yes).
    pub pred_hidden_bn: bool,
    /// BatchNorm on the predictor's output (SimSiam Table 3d: unstable).
    pub pred_output_bn: bool,
    /// Linear predictor: with a bias term.
    pub pred_bias: bool,
    /// Train the predictor (false = fixed at its random initialisation, Table 1b).
    pub pred_trainable: bool,
    /// Start the backbone, and the heads when the file has them, from weights trained
    /// elsewhere: torchvision-layout safetensors (`simsiam export`) or a PyTorch checkpoint
    /// (`torch.save`: the official code's, solo-learn's, lightly's, torchvision's); see
    /// `import`.
    pub init_from: Option<PathBuf>,
    /// `init_from`: the prefix of the backbone to take when the file holds several (MoCo's
    /// `state_dict.module.encoder_q.`, BYOL's online and target networks).
    pub init_prefix: Option<String>,
    /// `init_from`: also take the projector and predictor when the file has them.
    pub init_heads: bool,
    /// Start every weight this model has from a checkpoint's `model.safetensors` (entries the
    /// model lacks, e.g. a predictor it drops, are ignored); the optimiser starts fresh.
    pub init_checkpoint: Option<PathBuf>,
    /// BYOL: the target branch's z comes from an exponential moving average of the backbone and
    /// projector, not from the online network.
    pub ema_target: bool,
    /// BYOL's base momentum tau, raised to 1 over training: `1 - (1 - tau)(cos(pi k/K) + 1)/2`
    /// (`ema_schedule = "cosine"`), or MoCo's constant momentum (`"constant"`).
    pub ema_momentum: f64,
    /// How `ema_momentum` moves: `cosine` (BYOL, to 1) or `constant` (MoCo).
    pub ema_schedule: EmaSchedule,
    /// BatchNorm statistics over this many equal parts of each (per-rank) batch ("ghost" BN):
    /// N reproduces, on one device, the per-GPU statistics of N ranks without `dist.sync_bn`.
    pub bn_splits: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: Arch::Resnet18,
            cifar_stem: true,
            width: 64,
            zero_init_residual: true,
            conv_init: ConvInit::KaimingFanOut,
            stem_relu: true,
            proj_layers: 2,
            proj_hidden: 2048,
            dim: 2048,
            proj_hidden_bn: true,
            proj_output_bn: true,
            proj_output_bn_affine: false,
            predictor: PredictorKind::Mlp,
            pred_hidden: 512,
            pred_hidden_bn: true,
            pred_output_bn: false,
            pred_bias: true,
            pred_trainable: true,
            init_from: None,
            init_prefix: None,
            init_heads: true,
            init_checkpoint: None,
            ema_target: false,
            ema_momentum: 0.99,
            ema_schedule: EmaSchedule::Cosine,
            bn_splits: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Similarity {
    /// D(p, z) = -cos(p, z).
    Cosine,
    /// D(p, z) = -softmax(z) . log softmax(p) over channels (SimSiam §4.5).
    CrossEntropy,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Symmetry {
    /// ½D(p1, sg z2) + ½D(p2, sg z1).
    Symmetric,
    /// D(p1, sg z2) only.
    Asymmetric,
    /// The asymmetric loss on two independently drawn pairs per image (4 views):
    /// ½[D(p1, sg z2) + D(p3, sg z4)] (SimSiam §4.6, "asym. 2x").
    AsymmetricTwice,
}

/// Which vector of view a carries the gradient (EXPERIMENTS.md §5: `online`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Online {
    /// The prediction P_a = normalize(h(z_a)) (SimSiam).
    P,
    /// The projection Z_a = normalize(z_a) (naive Siamese, Zhang et al.'s triplet and
    /// dummy-gradient losses).
    Z,
    /// The blog's non-parametric optimal predictor over a memory bank of instance centres,
    /// `h_kappa(z) = sum_j softmax_j(kappa mu_j . Z) sg(f_bar_j)` (EXPERIMENTS.md §3.8, B7): the
    /// gradient reaches z only through the softmax weights.
    Oracle,
}

/// The target G the online vector is pulled towards (Zhang et al. §2.5-2.7). All vectors are
/// l2-normalised; means o_z, o_p are over the target view's batch (over view a for `OZ`, `RA`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Z_b: SimSiam (online P) or the naive Siamese (online Z).
    Zb,
    /// P_b: the symmetric predictor.
    Pb,
    /// P_b + o_e, o_e = o_z - o_p: SimSiam's extra gradient, centre part only.
    PbPlusOe,
    /// P_b + r_e = Z_b - o_z + o_p: SimSiam's extra gradient, residual part only.
    PbPlusRe,
    /// Z_b - Z_n (triplet; Z_n = the next image's Z_b in the batch).
    ZbMinusZn,
    /// Z_b - o_z: basic + o_e of the triplet.
    ZbMinusOz,
    /// Z_b - (Z_n - o_z): basic + r_e of the triplet.
    ZbMinusRn,
    /// Z_b - sum_i lambda_i Z_i: InfoNCE's negative gradient on the online vector X_a, up to its
    /// per-sample scale (1 - lambda_b)/tau (Zhang et al. §2.11). The negatives i are the other
    /// images' Z_b in the batch, weighted `lambda_i = softmax_i(X_a . Z_i / tau)` with
    /// `tau = objective.infonce_temperature`; basic + G_e.
    ZbMinusSoftZn,
    /// Z_b - sum_i lambda_i (Z_i - o_z): InfoNCE's basic gradient + r_e, its extra gradient
    /// without the centre part (o_e = -o_z is `zb_minus_oz`).
    ZbMinusSoftRn,
    /// o_z of view a: the de-centring dummy-gradient experiment (i), expected to collapse.
    Oz,
    /// r_a = Z_a - o_z of view a: dummy-gradient experiment (ii), de-centring.
    Ra,
    /// Explicit expectation over augmentations (Zhang et al. Table 1): the mean normalised Z
    /// of `eoa_k` fresh views of the image, computed with the current weights.
    Eoa,
    /// A per-image moving average `eta_x <- m eta_x + (1 - m) mean(Z_1, Z_2)` of normalised
    /// projections (SimSiam §5.2), momentum `memory_momentum` (and `memory_init`,
    /// `memory_normalize`).
    Memory,
    /// normalize(h_inv(p_b)): the inverse predictor on the stop-gradient path (Zhang et al.
    /// Fig. 2c), trained at the same time by its own loss -cos(h_inv(sg p), sg z).
    Inverse,
}

/// How the per-image bank of the `memory` target (and the `oracle` predictor) starts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MemoryInit {
    /// An image's entry is its first visit's value, so its first target is its own views' mean.
    FirstVisit,
    /// Every entry starts as a random unit vector, drawn with the run's seed.
    Random,
}

/// How the EMA target network's momentum moves over training.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EmaSchedule {
    /// BYOL: from `ema_momentum` to 1 on a cosine.
    Cosine,
    /// MoCo: `ema_momentum` throughout.
    Constant,
}

/// How the online vector meets the detached target.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// `-cos(online, target)`: SimSiam's D. For a unit-norm target the same as `dot`.
    Cosine,
    /// `-X . G` with the raw (not re-normalised) target: the negative gradient on X is exactly
    /// G (EXPERIMENTS.md §0, implementation rule).
    Dot,
}

/// The de-correlation regulariser's form (EXPERIMENTS.md §2.9; Zhang et al.'s exact formula is
/// not known, so both candidates are offered and neither is called "the paper's").
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Decorrelation {
    /// `(1/d) sum_{i != j} rho_ij^2` over the correlation matrix of normalised Z.
    Correlation,
    /// `(1/d) sum_{i != j} C_ij^2` over its covariance (VICReg's covariance term).
    Covariance,
}

/// The loss as a value (SimSiam eq. 4 and its ablations, Zhang et al.'s gradient variants).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, DocumentedFieldsOpt)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveConfig {
    /// The vector of view a that carries the gradient: `p` (SimSiam), `z` (naive Siamese,
    /// triplet, dummy gradients) or `oracle` (the blog's non-parametric optimal predictor).
    pub online: Online,
    /// The detached target the online vector is pulled towards: `zb` (SimSiam), `pb`,
    /// `pb_plus_oe`, `pb_plus_re`, `zb_minus_zn`, `zb_minus_oz`, `zb_minus_rn`,
    /// `zb_minus_soft_zn`, `zb_minus_soft_rn`, `oz`, `ra`, `eoa`, `memory` or `inverse`
    /// (Zhang et al. §2.5-2.7; EXPERIMENTS.md §5).
    pub target: Target,
    /// `cosine` (-cos(online, target), SimSiam's D) or `dot` (-X . G with the raw target, whose
    /// negative gradient on X is exactly G).
    pub form: Form,
    /// `cosine` or `cross_entropy` (softmax over channels, SimSiam §4.5).
    pub similarity: Similarity,
    /// `symmetric` (the paper's loss), `asymmetric` or `asymmetric_twice` (two pairs per
    /// image, SimSiam §4.6).
    pub symmetry: Symmetry,
    /// Stop-gradient on the target branch (Fig. 2).
    pub stop_grad: bool,
    /// Views averaged by the `eoa` target.
    pub eoa_k: usize,
    /// Momentum m of the `memory` target and of the `oracle` predictor's bank.
    pub memory_momentum: f64,
    /// How that bank starts: each image's first visit, or random unit vectors (SimSiam §5.2
    /// does not say).
    pub memory_init: MemoryInit,
    /// Average normalised projections into the bank (SimSiam's footnote 5), or raw ones.
    pub memory_normalize: bool,
    /// Concentration kappa of the `oracle` predictor's softmax.
    pub oracle_kappa: f64,
    /// Leave each image's own bank entry out of the `oracle` predictor (the ablation).
    pub oracle_exclude_self: bool,
    /// Weight of the main (target) loss; 0 leaves only the extra losses (Fig. 5b, phase 3).
    pub main_weight: f64,
    /// k-step alternation (SimSiam §5): with k > 1, the views of the next k batches and their
    /// targets sg(z) are computed with the current weights, then k SGD steps use those cached
    /// targets. k = 1 is SimSiam.
    pub alternation_k: usize,
    /// BatchNorm mode while computing the cached targets (train-mode batch statistics match
    /// SimSiam at k = 1; the paper does not say).
    pub alternation_bn_train: bool,
    /// Weight of the de-correlation regulariser on normalised Z of both views (0 = off).
    pub decorrelation: f64,
    /// `correlation` (off-diagonal correlations squared) or `covariance` (VICReg's term).
    pub decorrelation_form: Decorrelation,
    /// Weight of an InfoNCE loss between the two views' normalised Z, in-batch negatives
    /// (0 = off).
    pub infonce: f64,
    /// Its temperature, and that of the `zb_minus_soft_*` targets' weights.
    pub infonce_temperature: f64,
    /// The InfoNCE's queries: Z (SimCLR) or P, the predictor's output (SimSiam §6.2, "SimCLR
    /// w/ predictor"). The keys are always Z.
    pub infonce_online: Online,
    /// Stop-gradient on the InfoNCE's keys (SimSiam §6.2, "w/ pred. & stop-grad").
    pub infonce_stop_grad: bool,
    /// MoCo's negatives (0 = off: SimCLR's in-batch negatives): the InfoNCE's keys come from
    /// the target branch (the momentum encoder with `model.ema_target`) and each query is set
    /// against its own key and this many past keys of the other view, a queue that starts as
    /// random unit vectors; symmetrised over the two views. Global, like `optim.batch_size`:
    /// each rank of a data-parallel job keeps `infonce_queue / N`.
    pub infonce_queue: usize,
    /// Weight of the predictor's own regression loss `½ Σ D(h(sg z_a), sg z_b)` (0 = off). It
    /// trains h where h gets no gradient from the main loss: on the stop-gradient path, as the
    /// EOA reading would place it (Zhang et al. Fig. 1c, "mirror SimSiam": `online = "z"`,
    /// `target = "pb"`, so the target is sg(normalize(h(z_b)))). Only h learns from it; it costs
    /// a second train-mode forward of h per view, on detached z (h's BN statistics see both).
    pub predictor_loss: f64,
    /// SwAV's swapped prediction over learned prototypes (SimSiam §6.2's SwAV rows).
    pub swav: SwavConfig,
}

/// SwAV (Caron et al. 2020) as an extra loss: each view's normalised projection is scored
/// against K prototypes, Sinkhorn-Knopp turns one view's scores into soft codes that spread the
/// batch evenly over the prototypes, and the other view predicts those codes (cross-entropy of
/// a softmax at temperature t). Defaults are SwAV's ImageNet recipe (`main_swav.py`): 3,000
/// prototypes, t 0.1, epsilon 0.05, 3 iterations, prototypes frozen in the first epoch; two
/// views, no queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, DocumentedFieldsOpt)]
#[serde(deny_unknown_fields, default)]
pub struct SwavConfig {
    /// Weight of the loss (0 = off). The SwAV method (`--method swav`) sets it to 1 and the
    /// main loss's weight to 0.
    pub weight: f64,
    /// K, the number of prototypes (rows of the `prototypes` matrix `[K, d]`).
    pub prototypes: i64,
    /// Temperature of the softmax over prototype scores that predicts the codes.
    pub temperature: f64,
    /// Entropy regularisation epsilon of the Sinkhorn-Knopp codes: `exp(scores / epsilon)`.
    pub epsilon: f64,
    /// Sinkhorn-Knopp iterations.
    pub sinkhorn_iterations: usize,
    /// The predicting side: Z (SwAV) or P = h(z) (SimSiam §6.2, "SwAV w/ predictor"); the
    /// codes always come from Z.
    pub online: Online,
    /// No gradient through the codes (SwAV computes them under `no_grad`); off is SimSiam
    /// §6.2's "SwAV, remove stop-grad", which the paper reports diverging (NaN).
    pub stop_grad: bool,
    /// Epochs at the start during which the prototypes get no update (SwAV's
    /// `freeze_prototypes_niters`: the first epoch).
    pub freeze_epochs: usize,
    /// SwAV's queue for small batches (`queue_length`; 0 = off): the normalised projections of
    /// this many recent images per view join the batch in the Sinkhorn-Knopp codes, so that
    /// the equipartition spans more than one batch. A multiple of `optim.batch_size`; like it,
    /// global: in a data-parallel job each rank keeps `queue / N` and its codes spread its own
    /// share over the prototypes (SwAV's distributed Sinkhorn sums over all ranks; here, as
    /// InfoNCE's negatives and lightly's `SwaVLoss` by default, each rank's are its own).
    pub queue: usize,
    /// The epoch from which the queue fills (`epoch_queue_starts`); it is used once full.
    pub queue_start_epoch: usize,
}

impl Default for SwavConfig {
    fn default() -> Self {
        SwavConfig {
            weight: 0.0,
            prototypes: 3000,
            temperature: 0.1,
            epsilon: 0.05,
            sinkhorn_iterations: 3,
            online: Online::Z,
            stop_grad: true,
            freeze_epochs: 1,
            queue: 0,
            queue_start_epoch: 15,
        }
    }
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig {
            online: Online::P,
            target: Target::Zb,
            form: Form::Cosine,
            similarity: Similarity::Cosine,
            symmetry: Symmetry::Symmetric,
            stop_grad: true,
            eoa_k: 8,
            memory_momentum: 0.8,
            memory_init: MemoryInit::FirstVisit,
            memory_normalize: true,
            oracle_kappa: 10.0,
            oracle_exclude_self: false,
            main_weight: 1.0,
            alternation_k: 1,
            alternation_bn_train: true,
            decorrelation: 0.0,
            decorrelation_form: Decorrelation::Correlation,
            infonce: 0.0,
            infonce_temperature: 0.1,
            infonce_online: Online::Z,
            infonce_stop_grad: false,
            infonce_queue: 0,
            predictor_loss: 0.0,
            swav: SwavConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, DocumentedFieldsOpt)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Images per step (the global batch in a data-parallel job; each image gives two views).
    pub batch_size: usize,
    /// lr = base_lr x batch_size / 256.
    pub base_lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Applied to every parameter, BN included (SimSiam App. A).
    pub weight_decay: f64,
    /// Linear warm-up from 0, in epochs, before the cosine decay.
    pub warmup_epochs: usize,
    /// Keep the predictor's lr constant at the initial lr (the paper's final recipe, Table 1c).
    pub fix_pred_lr: bool,
    /// Update the cosine schedule every step instead of every epoch (official code: per epoch).
    pub lr_per_step: bool,
    /// The update as PyTorch's fused multi-tensor kernel (`SGD(fused=True)`: a few kernel
    /// launches per step instead of about six per parameter); same arithmetic.
    pub fused: bool,
}

/// Data-parallel training (`simsiam train --nproc N`, or N ranks started by torchrun / Slurm).
/// `optim.batch_size` is the global batch: each rank takes `batch_size / N` images per step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, DocumentedFieldsOpt)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// Collectives: `nccl` on CUDA, `gloo` on CPU; `auto` picks by device.
    pub backend: DistBackend,
    /// Synchronised BatchNorm: batch statistics over all ranks (the official ImageNet recipe).
    pub sync_bn: bool,
    /// Seconds a rank waits for the rendezvous or for a collective before the job stops with an
    /// error (rank 0's evaluation and checkpoints must fit in it).
    pub timeout_s: f64,
    /// Gradient bucket size in MiB (DDP's `bucket_cap_mb`).
    pub bucket_mb: f64,
    /// DDP's `find_unused_parameters`: needed when a trainable parameter gets no gradient
    /// (e.g. a trained predictor that the objective does not use); costs a graph traversal.
    pub find_unused: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DistBackend {
    Auto,
    Gloo,
    Nccl,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            backend: DistBackend::Auto,
            sync_bn: false,
            timeout_s: 1800.0,
            bucket_mb: 25.0,
            find_unused: false,
        }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            batch_size: 512,
            base_lr: 0.03,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_epochs: 0,
            fix_pred_lr: true,
            lr_per_step: false,
            fused: true,
        }
    }
}

impl OptimConfig {
    /// The initial lr after the linear scaling rule.
    pub fn init_lr(&self) -> f64 {
        self.base_lr * self.batch_size as f64 / 256.0
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, DocumentedFieldsOpt)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Run the kNN monitor every this many epochs (0 = only at the start and end).
    pub knn_every: usize,
    /// Neighbours of the weighted kNN classifier (200 in the SSL literature).
    pub knn_k: usize,
    /// Its temperature: each neighbour votes with weight exp(cos / t).
    pub knn_t: f64,
    /// Fetch per-step metrics from the device every this many steps (one sync each time).
    pub log_every: usize,
    /// Without a progress bar (stderr not a terminal: a job's log file), print a progress line
    /// at least this often within an epoch (at a metrics flush), besides one per epoch.
    pub progress_minutes: f64,
    /// Also run the kNN monitor before the first step (the network at initialisation).
    pub knn_at_init: bool,
    /// Train a linear classifier on detached backbone features during pre-training (solo-learn's
    /// online probe), with this constant lr and no weight decay (0 = off). Uses the labels.
    pub online_probe_lr: f64,
    /// Also measure instance identification (B6: top-1/top-5, posterior entropy, the "between
    /// two centres" fraction, mean resultant length) on the first `instances_n` test images with
    /// `instances_k` views each, at every monitor epoch.
    pub instances: bool,
    /// Test images of the instance-identification monitor (`instances`).
    pub instances_n: usize,
    /// Views per image of that monitor.
    pub instances_k: usize,
    /// Images of the fixed subset on which the geometry monitor (effective rank, RankMe, PCA
    /// dimensions, off-diagonal covariance) runs at each kNN epoch.
    pub geometry_samples: usize,
    /// After each flush of the per-step metrics, log how far the last step moved the weights:
    /// per stage (`stem`, `layer1`..`layer4`, `projector`, `predictor`) and for the whole
    /// backbone, `|w|` and the relative update `|Δw|/|w|`, and per backbone stage the residual
    /// branches' gain (mean |gamma| of each block's last BN): a `"weights"` line.
    pub weights: bool,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            knn_every: 10,
            knn_k: 200,
            knn_t: 0.1,
            log_every: 10,
            progress_minutes: 5.0,
            knn_at_init: true,
            online_probe_lr: 0.0,
            instances: false,
            instances_n: 1000,
            instances_k: 8,
            geometry_samples: 2048,
            weights: true,
        }
    }
}

/// The presets shipped with the tool: name, one-line description, TOML text.
pub const PRESETS: &[(&str, &str, &str)] = &[
    (
        "cifar10",
        "SimSiam App. D: ResNet-18 CIFAR variant, 800 epochs, batch 512",
        include_str!("../configs/cifar10.toml"),
    ),
    (
        "cifar100",
        "The cifar10 recipe on CIFAR-100 (Zhang et al.'s setting: 200 epochs)",
        include_str!("../configs/cifar100.toml"),
    ),
    (
        "imagenet",
        "SimSiam §3: ResNet-50, 3-layer projector, 224 px, 100 epochs, base lr 0.05",
        include_str!("../configs/imagenet.toml"),
    ),
    (
        "tiny",
        "Minutes on a 2-core CPU: ResNet-18 at width 8, 10k CIFAR images, d = 512, 8 epochs",
        include_str!("../configs/tiny.toml"),
    ),
];

/// Methods: overlays on any preset (`--method`), each a set of config values.
pub const METHODS: &[(&str, &str, &str)] = &[
    ("simsiam", "SimSiam (Chen & He 2021): predictor, stop-gradient, negative cosine", ""),
    (
        "simclr",
        "SimCLR (Chen et al. 2020): NT-Xent on z, temperature 0.5, no predictor",
        include_str!("../configs/methods/simclr.toml"),
    ),
    (
        "byol",
        "BYOL (Grill et al. 2020): predictor, EMA target network (0.99 -> 1)",
        include_str!("../configs/methods/byol.toml"),
    ),
    (
        "swav",
        "SwAV (Caron et al. 2020): Sinkhorn codes over 3,000 prototypes, swapped prediction, no predictor",
        include_str!("../configs/methods/swav.toml"),
    ),
    (
        "moco",
        "MoCo v2 (Chen et al. 2020): InfoNCE t 0.2 against a momentum encoder's keys (0.99), 4,096 queued negatives",
        include_str!("../configs/methods/moco.toml"),
    ),
];

fn method_text(name: &str) -> Result<&'static str> {
    METHODS.iter().find(|(n, _, _)| *n == name).map(|(_, _, t)| *t).ok_or_else(|| {
        let names: Vec<_> = METHODS.iter().map(|(n, _, _)| *n).collect();
        Error::config(format!("--method: unknown method {name:?}, expected one of {}", names.join(", ")))
    })
}

fn preset_text(name: &str) -> Result<&'static str> {
    PRESETS.iter().find(|(n, _, _)| *n == name).map(|(_, _, t)| *t).ok_or_else(|| {
        let names: Vec<_> = PRESETS.iter().map(|(n, _, _)| *n).collect();
        Error::config(format!("--preset: unknown preset {name:?}, expected one of {}", names.join(", ")))
    })
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table> {
    text.parse::<toml::Table>().map_err(|e| Error::config(format!("{origin}: not valid TOML: {e}")))
}

/// Deep-merges `over` into `base` (tables merge, everything else replaces).
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Parses the right-hand side of `--set key=value`: a TOML literal if it is one
/// (`3`, `0.5`, `true`, `[0.2, 1.0]`, `"x"`), else a bare string.
fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Whether `table` sets `field` (a path such as `optim.base_lr` or `augment.crop_scale[0]`).
fn holds(table: &toml::Table, field: &str) -> bool {
    let mut parts = field.split('.').map(|p| p.split('[').next().unwrap_or(p));
    let Some(first) = parts.next() else { return false };
    let mut cur = table.get(first);
    for p in parts {
        cur = cur.and_then(|v| v.as_table()).and_then(|t| t.get(p));
    }
    cur.is_some()
}

/// `path` made absolute from the current folder. Links are kept (`/data/imagenet` stays so
/// when `/data` is a link, and follows it if it is moved), except in a path with `..`, which
/// is resolved on disk where it exists (a `..` after a link is not its lexical parent).
/// Unchanged if the current folder cannot be read.
fn absolute(path: &Path) -> PathBuf {
    let Ok(abs) = std::path::absolute(path) else { return path.to_path_buf() };
    if abs.components().any(|c| c == std::path::Component::ParentDir) {
        return abs.canonicalize().unwrap_or(abs);
    }
    abs
}

/// Applies one `section.field=value` override.
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) =
        spec.split_once('=').ok_or_else(|| Error::config(format!("--set {spec:?}: expected section.field=value")))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::config(format!("--set {spec:?}: empty key segment in {key:?}")));
    }
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| Error::config(format!("--set {spec:?}: {p:?} is a value, not a section")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), parse_value(raw.trim()));
    Ok(())
}

impl Config {
    /// Resolves a config from a preset, an optional TOML file and `key=value` overrides, in
    /// that order, then validates it. Unknown keys are errors that name the key.
    pub fn resolve(preset: &str, file: Option<&Path>, overrides: &[String]) -> Result<Config> {
        Self::resolve_method(preset, "simsiam", file, overrides)
    }

    /// As [`Config::resolve`], with a method overlay (`simsiam`, `simclr`, `byol`) merged over
    /// the preset.
    pub fn resolve_method(preset: &str, method: &str, file: Option<&Path>, overrides: &[String]) -> Result<Config> {
        let mut table = parse_table(preset_text(preset)?, &format!("preset {preset}"))?;
        merge(&mut table, parse_table(method_text(method)?, &format!("method {method}"))?);
        let file_table = match file {
            Some(f) => {
                let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
                let t = parse_table(&text, &f.display().to_string())?;
                merge(&mut table, t.clone());
                Some((f, t))
            }
            None => None,
        };
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        // A bad field is blamed on what set it last: a flag, the file, or the preset. A flag
        // sets a field when its key is the field, a section above it, or (for an unknown
        // section, which the error names alone) a key below it.
        let origin = |field: &str| {
            let sets = |key: &str| {
                let key = key.trim();
                field == key
                    || field.strip_prefix(key).is_some_and(|rest| rest.starts_with(['.', '[']))
                    || key.strip_prefix(field).is_some_and(|rest| rest.starts_with('.'))
            };
            if let Some(o) = overrides.iter().rev().find(|o| o.split_once('=').is_some_and(|(k, _)| sets(k))) {
                return format!("--set {o}");
            }
            match &file_table {
                Some((f, t)) if holds(t, field) => f.display().to_string(),
                _ => format!("preset {preset}"),
            }
        };
        let mut cfg = Self::from_table(table, origin)?;
        cfg.absolute_paths();
        Ok(cfg)
    }

    /// Makes the input paths (data, cache, weights to start from) absolute, read from the
    /// current folder as given: the run's saved config then works from any folder, for `eval`,
    /// `embed`, `analyse` and `--resume` alike. (`run.out_dir` stays as given: the run
    /// folder is always named again when it is used.) An empty path is none, since TOML has no
    /// null: `--set data.test=""` drops a config file's held-out data.
    pub fn absolute_paths(&mut self) {
        let (d, m) = (&mut self.data, &mut self.model);
        for p in [&mut d.train, &mut d.test, &mut d.cache_dir, &mut m.init_from, &mut m.init_checkpoint] {
            *p = p.take().filter(|path| !path.as_os_str().is_empty()).map(|path| absolute(&path));
        }
    }

    /// Reads a saved config (a run's `config.toml`).
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let table = parse_table(&text, &path.display().to_string())?;
        Self::from_table(table, |_| path.display().to_string())
    }

    /// Deserialises and validates; `origin` names the source of a field that fails.
    fn from_table(table: toml::Table, origin: impl Fn(&str) -> String) -> Result<Config> {
        let cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            Error::config(format!("{}: field `{path}`: {}", origin(&path), e.into_inner().message()))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// [`Config::to_toml`] with each section's and field's doc comment above it as `#` lines
    /// (`simsiam presets NAME --explain`): the same values, so it reads back as the same config.
    pub fn to_toml_explained(&self) -> String {
        let mut doc: toml_edit::DocumentMut = self.to_toml().parse().expect("our own TOML parses");
        for (section, item) in doc.iter_mut() {
            if let Some(table) = item.as_table_mut() {
                explain_table(table, "", &section);
            }
        }
        doc.to_string().trim_start().to_string()
    }

    /// Range checks; each error names the field and the expected range.
    pub fn validate(&self) -> Result<()> {
        let fail =
            |field: &str, want: &str, got: String| Err(Error::config(format!("{field}: expected {want}, got {got}")));
        let prob = |field: &str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                fail(field, "a probability in [0, 1]", p.to_string())
            }
        };
        let a = &self.augment;
        prob("augment.flip_p", a.flip_p)?;
        prob("augment.jitter_p", a.jitter_p)?;
        prob("augment.grayscale_p", a.grayscale_p)?;
        if a.blur_p >= 0.0 {
            prob("augment.blur_p", a.blur_p)?;
        }
        let [s0, s1] = a.crop_scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return fail("augment.crop_scale", "0 < lo <= hi <= 1", format!("{:?}", a.crop_scale));
        }
        let [r0, r1] = a.crop_ratio;
        if !(r0 > 0.0 && r0 <= r1) {
            return fail("augment.crop_ratio", "0 < lo <= hi", format!("{:?}", a.crop_ratio));
        }
        for (f, v) in [
            ("augment.brightness", a.brightness),
            ("augment.contrast", a.contrast),
            ("augment.saturation", a.saturation),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return fail(f, "a jitter strength in [0, 1]", v.to_string());
            }
        }
        if !(0.0..=0.5).contains(&a.hue) {
            return fail("augment.hue", "a value in [0, 0.5]", a.hue.to_string());
        }
        let [b0, b1] = a.blur_sigma;
        if !(b0 > 0.0 && b0 <= b1) {
            return fail("augment.blur_sigma", "0 < lo <= hi", format!("{:?}", a.blur_sigma));
        }
        if a.std.iter().any(|s| *s <= 0.0) {
            return fail("augment.std", "positive values", format!("{:?}", a.std));
        }
        if self.data.image_size < 8 {
            return fail("data.image_size", "at least 8", self.data.image_size.to_string());
        }
        if a.view_size != 0 && !(8..=self.data.image_size).contains(&a.view_size) {
            let want = format!("0 (data.image_size) or 8 to data.image_size ({})", self.data.image_size);
            return fail("augment.view_size", &want, a.view_size.to_string());
        }
        if self.run.epochs == 0 {
            return fail("run.epochs", "at least 1", "0".into());
        }
        crate::device::DeviceSpec::parse(&self.run.device)?;
        if self.run.checkpoint_every == 0 {
            return fail("run.checkpoint_every", "at least 1", "0".into());
        }
        if !(self.run.checkpoint_minutes >= 0.0 && self.run.checkpoint_minutes.is_finite()) {
            return fail("run.checkpoint_minutes", "0 (off) or more", self.run.checkpoint_minutes.to_string());
        }
        let o = &self.optim;
        if o.batch_size < 2 {
            return fail("optim.batch_size", "at least 2 (BatchNorm needs two samples)", o.batch_size.to_string());
        }
        if !(o.base_lr > 0.0 && o.base_lr.is_finite()) {
            return fail("optim.base_lr", "a positive number", o.base_lr.to_string());
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return fail("optim.momentum", "a value in [0, 1)", o.momentum.to_string());
        }
        if o.weight_decay < 0.0 {
            return fail("optim.weight_decay", "a non-negative number", o.weight_decay.to_string());
        }
        if o.warmup_epochs >= self.run.epochs && o.warmup_epochs > 0 {
            return fail("optim.warmup_epochs", "fewer than run.epochs", o.warmup_epochs.to_string());
        }
        let m = &self.model;
        if m.width < 1 {
            return fail("model.width", "at least 1", m.width.to_string());
        }
        if m.dim < 1 || m.proj_hidden < 1 || m.pred_hidden < 1 {
            return fail(
                "model.dim / proj_hidden / pred_hidden",
                "positive widths",
                format!("{} / {} / {}", m.dim, m.proj_hidden, m.pred_hidden),
            );
        }
        if !(0.0..=1.0).contains(&m.ema_momentum) {
            return fail("model.ema_momentum", "a value in [0, 1]", m.ema_momentum.to_string());
        }
        if m.bn_splits < 1 || !o.batch_size.is_multiple_of(m.bn_splits) || o.batch_size / m.bn_splits < 2 {
            return fail(
                "model.bn_splits",
                &format!("a divisor of optim.batch_size ({}) leaving at least 2 images per part", o.batch_size),
                m.bn_splits.to_string(),
            );
        }
        let d = &self.dist;
        if !(d.timeout_s > 0.0 && d.timeout_s.is_finite()) {
            return fail("dist.timeout_s", "a positive number of seconds", d.timeout_s.to_string());
        }
        if !(d.bucket_mb > 0.0 && d.bucket_mb.is_finite()) {
            return fail("dist.bucket_mb", "a positive size in MiB", d.bucket_mb.to_string());
        }
        if m.proj_layers < 1 {
            return fail("model.proj_layers", "at least 1", m.proj_layers.to_string());
        }
        let ob = &self.objective;
        if ob.similarity == Similarity::CrossEntropy && (ob.target != Target::Zb || ob.form != Form::Cosine) {
            return fail(
                "objective.similarity",
                "cosine unless objective.target = \"zb\" and objective.form = \"cosine\"",
                "cross_entropy".into(),
            );
        }
        if ob.infonce_online == Online::Oracle {
            return fail("objective.infonce_online", "\"z\" or \"p\"", "\"oracle\"".into());
        }
        if ob.infonce_temperature.is_nan() || ob.infonce_temperature <= 0.0 {
            return fail("objective.infonce_temperature", "a positive temperature", ob.infonce_temperature.to_string());
        }
        let weights = [ob.main_weight, ob.decorrelation, ob.infonce, ob.predictor_loss, ob.swav.weight];
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return fail(
                "objective.main_weight / decorrelation / infonce / predictor_loss / swav.weight",
                "finite non-negative weights",
                format!(
                    "{} / {} / {} / {} / {}",
                    ob.main_weight, ob.decorrelation, ob.infonce, ob.predictor_loss, ob.swav.weight
                ),
            );
        }
        if weights.iter().all(|w| *w == 0.0) {
            return fail(
                "objective.main_weight / decorrelation / infonce / predictor_loss / swav.weight",
                "at least one positive weight (with all at 0 there is no loss to train)",
                "all 0".into(),
            );
        }
        let sw = &ob.swav;
        if sw.prototypes < 1 {
            return fail("objective.swav.prototypes", "at least 1", sw.prototypes.to_string());
        }
        if !(sw.temperature > 0.0 && sw.temperature.is_finite()) {
            return fail("objective.swav.temperature", "a positive temperature", sw.temperature.to_string());
        }
        if !(sw.epsilon > 0.0 && sw.epsilon.is_finite()) {
            return fail("objective.swav.epsilon", "a positive number", sw.epsilon.to_string());
        }
        if sw.sinkhorn_iterations == 0 {
            return fail("objective.swav.sinkhorn_iterations", "at least 1", "0".into());
        }
        if sw.online == Online::Oracle {
            return fail("objective.swav.online", "\"z\" or \"p\"", "\"oracle\"".into());
        }
        if !sw.queue.is_multiple_of(o.batch_size) {
            return fail(
                "objective.swav.queue",
                &format!("0 or a multiple of optim.batch_size ({})", o.batch_size),
                sw.queue.to_string(),
            );
        }
        if ob.predictor_loss > 0.0 && (self.model.predictor == PredictorKind::Identity || !self.model.pred_trainable) {
            return fail(
                "objective.predictor_loss",
                "0 with model.predictor = \"identity\" or model.pred_trainable = false (nothing to train)",
                ob.predictor_loss.to_string(),
            );
        }
        if ob.alternation_k == 0 {
            return fail("objective.alternation_k", "at least 1", "0".into());
        }
        if ob.alternation_k > 1 && self.model.ema_target {
            return fail(
                "objective.alternation_k",
                "1 with model.ema_target (both supply the target branch)",
                ob.alternation_k.to_string(),
            );
        }
        if ob.alternation_k > 1 && ob.symmetry == Symmetry::AsymmetricTwice {
            return fail(
                "objective.alternation_k",
                "1 with objective.symmetry = \"asymmetric_twice\"",
                ob.alternation_k.to_string(),
            );
        }
        if ob.online == Online::Oracle && (ob.similarity != Similarity::Cosine || ob.oracle_kappa <= 0.0) {
            return fail(
                "objective.online",
                "\"oracle\" with the cosine similarity and objective.oracle_kappa > 0",
                format!("{:?}", ob.similarity),
            );
        }
        if ob.eoa_k == 0 {
            return fail("objective.eoa_k", "at least 1", "0".into());
        }
        if !(0.0..1.0).contains(&ob.memory_momentum) {
            return fail("objective.memory_momentum", "a value in [0, 1)", ob.memory_momentum.to_string());
        }
        let mo = &self.monitor;
        if mo.knn_k == 0 {
            return fail("monitor.knn_k", "at least 1", "0".into());
        }
        if mo.knn_t.is_nan() || mo.knn_t <= 0.0 {
            return fail("monitor.knn_t", "a positive temperature", mo.knn_t.to_string());
        }
        if mo.instances && (mo.instances_k < 2 || mo.instances_n < 10) {
            return fail(
                "monitor.instances_k / instances_n",
                "at least 2 views and 10 images",
                format!("{} / {}", mo.instances_k, mo.instances_n),
            );
        }
        if mo.online_probe_lr < 0.0 {
            return fail("monitor.online_probe_lr", "a non-negative lr (0 = off)", mo.online_probe_lr.to_string());
        }
        if mo.geometry_samples < 2 {
            return fail("monitor.geometry_samples", "at least 2", mo.geometry_samples.to_string());
        }
        if !(mo.progress_minutes > 0.0 && mo.progress_minutes.is_finite()) {
            return fail("monitor.progress_minutes", "a positive number", mo.progress_minutes.to_string());
        }
        if mo.log_every == 0 {
            return fail("monitor.log_every", "at least 1", "0".into());
        }
        Ok(())
    }
}

/// The doc comment of field `field` of the TOML table `section` (`run`, `objective.swav`, ...;
/// `""` for the sections themselves), as written in this file.
pub fn field_doc(section: &str, field: &str) -> Option<&'static str> {
    let doc = match section {
        "" => Config::get_field_docs(field),
        "run" => RunConfig::get_field_docs(field),
        "data" => DataConfig::get_field_docs(field),
        "augment" => AugmentConfig::get_field_docs(field),
        "model" => ModelConfig::get_field_docs(field),
        "objective" => ObjectiveConfig::get_field_docs(field),
        "objective.swav" => SwavConfig::get_field_docs(field),
        "optim" => OptimConfig::get_field_docs(field),
        "monitor" => MonitorConfig::get_field_docs(field),
        "dist" => DistConfig::get_field_docs(field),
        _ => return None,
    };
    doc.ok()
}

/// `doc` as TOML comment lines, each ending in a newline.
fn comment(doc: &str) -> String {
    doc.lines().map(|l| if l.is_empty() { "#\n".to_string() } else { format!("# {l}\n") }).collect()
}

/// Puts the doc comment of table `name` (within `parent`) above its header, and each of its
/// fields' above the field, recursing into sub-tables (`[objective.swav]`).
fn explain_table(table: &mut toml_edit::Table, parent: &str, name: &str) {
    let path = if parent.is_empty() { name.to_string() } else { format!("{parent}.{name}") };
    if let Some(doc) = field_doc(parent, name) {
        table.decor_mut().set_prefix(format!("\n{}", comment(doc)));
    }
    let keys: Vec<String> = table.iter().map(|(k, _)| k.to_string()).collect();
    for key in keys {
        if let Some(sub) = table.get_mut(&key).and_then(|i| i.as_table_mut()) {
            explain_table(sub, &path, &key);
        } else if let (Some(doc), Some(mut k)) = (field_doc(&path, &key), table.key_mut(&key)) {
            k.leaf_decor_mut().set_prefix(comment(doc));
        }
    }
}
