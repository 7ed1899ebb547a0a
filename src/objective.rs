//! The objective: one value for every variant of SimSiam's loss and of Zhang et al.'s gradient
//! analysis. SimSiam (eq. 4) is the default: `L = ½ D(p1, sg(z2)) + ½ D(p2, sg(z1))`,
//! `D(p, z) = -cos(p, z)` averaged over the batch.
//!
//! In general, for a pair of views (a, b): the online vector X (P_a or Z_a) is pulled towards a
//! target G built from normalised vectors and detached (`stop_grad`); `form` decides whether
//! the loss is `-X . G` (the negative gradient on X is then exactly G) or `-cos(X, G)`.
use crate::config::{
    Decorrelation, Form, MemoryInit, ObjectiveConfig, Online, Similarity, SwavConfig, Symmetry, Target,
};
use crate::model::SiameseOutput;
use crate::monitor::l2_normalize;
use tch::Tensor;

/// Stop-gradient: the target branch is a constant for this step.
pub fn stop_grad(t: &Tensor) -> Tensor {
    t.detach()
}

/// Per-sample similarity `[B, d] x [B, d] -> [B]`.
pub fn similarity(p: &Tensor, z: &Tensor, kind: Similarity) -> Tensor {
    match kind {
        // F.cosine_similarity(p, z, dim=1), eps 1e-8 as PyTorch.
        Similarity::Cosine => Tensor::cosine_similarity(p, z, 1, 1e-8),
        // softmax(z) . log softmax(p) over channels (SimSiam §4.5; no temperature).
        Similarity::CrossEntropy => {
            (z.softmax(1, z.kind()) * p.log_softmax(1, p.kind())).sum_dim_intlist(&[1i64][..], false, p.kind())
        }
    }
}

/// D(p, z): the negative similarity averaged over the batch (scalar).
pub fn negative_similarity(p: &Tensor, z: &Tensor, kind: Similarity) -> Tensor {
    -similarity(p, z, kind).mean(p.kind())
}

/// The de-correlation regulariser of a batch of projections `[B, d]` (on normalised Z):
/// `(1/d) sum_{i != j} rho_ij^2` or `(1/d) sum_{i != j} C_ij^2`.
pub fn decorrelation_loss(z: &Tensor, form: Decorrelation) -> Tensor {
    let zn = l2_normalize(z);
    let (b, d) = (zn.size()[0], zn.size()[1]);
    let zc = &zn - centre(&zn);
    let cov = zc.tr().matmul(&zc) / (b - 1) as f64; // [d, d]
    let m = match form {
        Decorrelation::Covariance => cov,
        Decorrelation::Correlation => {
            let sd = (cov.diag(0) + 1e-8).sqrt();
            &cov / (sd.unsqueeze(1) * sd.unsqueeze(0))
        }
    };
    let off = m.square().sum(m.kind()) - m.diag(0).square().sum(m.kind());
    off / d as f64
}

/// SimCLR's NT-Xent (InfoNCE) over both views' projections `[B, d]`, normalised, temperature t:
/// for each of the 2B vectors, its other view is the positive and the other 2B - 2 vectors the
/// negatives.
pub fn infonce_loss(z1: &Tensor, z2: &Tensor, t: f64) -> Tensor {
    infonce_loss_of_queries(z1, z2, z1, z2, t)
}

/// NT-Xent with queries apart from the keys (SimSiam §6.2's "SimCLR w/ predictor": queries
/// P, keys Z, `[B, d]` each, normalised here): query i of the 2B is scored against all 2B keys
/// but its own view's key of its own image; its positive is its image's key of the other view.
/// With queries = keys this is [`infonce_loss`].
pub fn infonce_loss_of_queries(q1: &Tensor, q2: &Tensor, k1: &Tensor, k2: &Tensor, t: f64) -> Tensor {
    let q = l2_normalize(&Tensor::cat(&[q1, q2], 0)); // [2B, d]
    let k = l2_normalize(&Tensor::cat(&[k1, k2], 0)); // [2B, d]
    let n = q.size()[0];
    let b = n / 2;
    let eye = Tensor::eye(n, (tch::Kind::Bool, q.device()));
    // Self-similarity masked out: [2B, 2B]
    let logits = (q.matmul(&k.tr()) / t).masked_fill(&eye, f64::NEG_INFINITY);
    // The positive of row i is row i + B (mod 2B).
    let positives = Tensor::arange(n, (tch::Kind::Int64, q.device())).g_add_scalar(b).remainder(n);
    // tch's `cross_entropy_for_logits` takes the log-softmax in f32 whatever the input; keep
    // f64 inputs in f64 (the hand-checked tests), everything else in f32 as before.
    let kind = if logits.kind() == tch::Kind::Double { tch::Kind::Double } else { tch::Kind::Float };
    logits.log_softmax(-1, kind).nll_loss(&positives)
}

/// SwAV's Sinkhorn-Knopp codes (Caron et al. 2020, `distributed_sinkhorn` on one process):
/// prototype scores `[B, K]` -> soft assignments `Q [B, K]`, each row summing to 1 and each
/// prototype's column to B/K after the last iteration (the equipartition of the batch).
/// SwAV's normalisations run in the log domain (`log Q -= logsumexp`): the same codes, but
/// `exp(scores / epsilon)` can neither overflow nor leave a prototype with zero total mass when
/// epsilon is small. Computed in f32 at least (f64 stays f64).
pub fn sinkhorn(scores: &Tensor, epsilon: f64, iterations: usize) -> Tensor {
    let kind = if scores.kind() == tch::Kind::Double { tch::Kind::Double } else { tch::Kind::Float };
    let mut log_q = (scores.to_kind(kind) / epsilon).tr(); // [K, B]
    let (k, b) = (log_q.size()[0], log_q.size()[1]);
    log_q = &log_q - log_q.logsumexp(&[0i64, 1][..], true);
    for _ in 0..iterations {
        // Each prototype (row) gets total mass 1/K, then each sample (column) 1/B.
        log_q = &log_q - log_q.logsumexp(&[1i64][..], true) - (k as f64).ln();
        log_q = &log_q - log_q.logsumexp(&[0i64][..], true) - (b as f64).ln();
    }
    (log_q + (b as f64).ln()).exp().tr() // [B, K]
}

/// SwAV's swapped prediction over two views: `scores_v = normalize(x_v) C^T` with the
/// prototypes `C [K, d]` (unit rows: the step normalises them), codes `q_v` from the views'
/// projections `z_v`, and `L = -½ Σ_v mean_i Σ_k q_{other}[i, k] log softmax(scores_v / t)[i, k]`.
/// `x_v` is z_v (SwAV) or p_v (with the predictor). With `cfg.stop_grad` the codes are
/// constants, as SwAV's `no_grad`. With a full `queue` `[2, Q, d]` (view v's recent normalised
/// projections in row v), each view's codes come from Sinkhorn-Knopp over the queue's scores
/// and the batch's together, the batch's rows kept (SwAV's `[-bs:]`).
pub fn swav_loss(
    x: [&Tensor; 2],
    z: [&Tensor; 2],
    prototypes: &Tensor,
    queue: Option<&Tensor>,
    cfg: &SwavConfig,
) -> Tensor {
    let scores = |v: &Tensor| l2_normalize(v).matmul(&prototypes.tr()); // [B, K]
    let code = |v: usize| {
        let s = scores(z[v]);
        let q = match queue {
            Some(queue) => {
                let past = queue.get(v as i64).matmul(&prototypes.tr()); // [Q, K]
                let q = sinkhorn(
                    &Tensor::cat(&[past.to_kind(s.kind()), s.shallow_clone()], 0),
                    cfg.epsilon,
                    cfg.sinkhorn_iterations,
                );
                q.narrow(0, past.size()[0], s.size()[0])
            }
            None => sinkhorn(&s, cfg.epsilon, cfg.sinkhorn_iterations),
        };
        if cfg.stop_grad {
            stop_grad(&q)
        } else {
            q
        }
    };
    let predict = |x: &Tensor, q: &Tensor| {
        let logp = (scores(x) / cfg.temperature).log_softmax(1, q.kind());
        -(q * logp).sum_dim_intlist(&[1i64][..], false, q.kind()).mean(q.kind())
    };
    (predict(x[0], &code(1)) + predict(x[1], &code(0))) * 0.5
}

/// A queue of each view's recent normalised projections, newest first, detached
/// (`queue[i, bs:] = queue[i, :-bs]; queue[i, :bs] = embedding`): SwAV's, which starts empty
/// and joins the codes once full, and MoCo's of keys, which starts as random unit vectors.
#[derive(Debug)]
pub struct ViewQueue {
    /// `[2, len, d]`: row v holds view v's vectors.
    pub z: Tensor,
    /// How many rows hold projections (the rest are the zeros it starts with).
    pub filled: usize,
}

impl ViewQueue {
    /// Empty (zeros): SwAV's queue.
    pub fn new(len: usize, d: i64, device: tch::Device) -> ViewQueue {
        ViewQueue { z: Tensor::zeros([2, len as i64, d], (tch::Kind::Float, device)), filled: 0 }
    }

    /// Full of random unit vectors, drawn from libtorch's generator (the run's seed): MoCo's.
    pub fn random(len: usize, d: i64, device: tch::Device) -> ViewQueue {
        let z = Tensor::randn([2, len as i64, d], (tch::Kind::Float, device));
        ViewQueue { z: &z / z.norm_scalaropt_dim(2.0, &[2i64][..], true), filled: len }
    }

    fn len(&self) -> usize {
        self.z.size()[1] as usize
    }

    /// The queue once every row holds a projection (SwAV waits for its last row to be set).
    pub fn ready(&self) -> Option<Tensor> {
        (self.filled == self.len()).then(|| self.z.shallow_clone())
    }

    /// Puts a batch's projections `[B, d]` of both views at the front, dropping the oldest.
    pub fn push(&mut self, z1: &Tensor, z2: &Tensor) {
        let b = z1.size()[0];
        let new = Tensor::stack(&[l2_normalize(&z1.detach()), l2_normalize(&z2.detach())], 0).to_kind(tch::Kind::Float);
        let keep = (self.len() as i64 - b).max(0);
        self.z = Tensor::cat(&[new, self.z.narrow(1, 0, keep)], 1).narrow(1, 0, self.len() as i64);
        self.filled = (self.filled + b as usize).min(self.len());
    }
}

/// MoCo's InfoNCE (He et al. 2020, v2: Chen et al. 2020) for queries `q [B, d]`: each query's
/// positive is its own key `k [B, d]` (the other view through the momentum encoder, detached),
/// its negatives the queue's keys `[Q, d]` alone (no in-batch negatives);
/// `-mean_i log softmax([q_i . k_i, q_i . queue^T] / t)[0]`, all vectors normalised here.
pub fn moco_loss(q: &Tensor, k: &Tensor, queue: &Tensor, t: f64) -> Tensor {
    let (q, k) = (l2_normalize(q), l2_normalize(&k.detach()));
    let positive = (&q * &k).sum_dim_intlist(&[1i64][..], true, q.kind()); // [B, 1]
    let negatives = q.matmul(&queue.detach().to_kind(q.kind()).tr()); // [B, Q]
    let logits = Tensor::cat(&[positive, negatives], 1) / t;
    let kind = if logits.kind() == tch::Kind::Double { tch::Kind::Double } else { tch::Kind::Float };
    -logits.log_softmax(1, kind).select(1, 0).mean(kind)
}

/// InfoNCE's weights on the negatives (Zhang et al. §2.11): for anchor X_a[i] and target view b,
/// `lambda_ij = softmax_{j != i}(X_a[i] . Z_b[j] / t)` over the batch's other images `[B, B]`
/// (zero on the diagonal); detached, as the targets they build.
fn negative_weights(xa: &Tensor, zb: &Tensor, t: f64) -> Tensor {
    let b = xa.size()[0];
    let eye = Tensor::eye(b, (tch::Kind::Bool, xa.device()));
    (xa.detach().matmul(&zb.detach().tr()) / t).masked_fill(&eye, f64::NEG_INFINITY).softmax(1, xa.kind())
}

/// The `memory` target (SimSiam §5.2): a per-image moving average of projections,
/// `eta_x <- m eta_x + (1 - m) mean(Z_1, Z_2)`, by default of normalised ones (footnote 5) and
/// initialised at an image's first visit.
#[derive(Debug)]
pub struct MemoryBank {
    /// `[N, d]`
    pub eta: Tensor,
    /// `[N]`, whether each image has been visited (or initialised).
    pub seen: Tensor,
    pub momentum: f64,
    /// Average normalised projections (SimSiam's footnote 5) rather than raw ones.
    pub normalize: bool,
}

impl MemoryBank {
    /// An empty bank: each image's entry starts at its first visit, normalised projections.
    pub fn new(n: i64, d: i64, momentum: f64, device: tch::Device) -> MemoryBank {
        MemoryBank {
            eta: Tensor::zeros([n, d], (tch::Kind::Float, device)),
            seen: Tensor::zeros([n], (tch::Kind::Bool, device)),
            momentum,
            normalize: true,
        }
    }

    /// The bank `objective` asks for (`memory_momentum`, `memory_init`, `memory_normalize`);
    /// a random start draws unit vectors from libtorch's generator (the run's seed).
    pub fn from_config(n: i64, d: i64, objective: &ObjectiveConfig, device: tch::Device) -> MemoryBank {
        let mut bank = MemoryBank::new(n, d, objective.memory_momentum, device);
        bank.normalize = objective.memory_normalize;
        if objective.memory_init == MemoryInit::Random {
            bank.eta = l2_normalize(&Tensor::randn([n, d], (tch::Kind::Float, device)));
            bank.seen = Tensor::ones([n], (tch::Kind::Bool, device));
        }
        bank
    }

    /// The visit's value: the mean of the two views' projections, normalised first unless
    /// `normalize` is off (detached).
    fn visit(&self, z1: &Tensor, z2: &Tensor) -> Tensor {
        let prep = |z: &Tensor| if self.normalize { l2_normalize(&z.detach()) } else { z.detach() };
        ((prep(z1) + prep(z2)) * 0.5).to_kind(tch::Kind::Float)
    }

    /// The targets `sg(eta_x)` of a batch of image indices `[B]`; unseen images get this visit.
    pub fn target(&self, idx: &Tensor, z1: &Tensor, z2: &Tensor) -> Tensor {
        let seen = self.seen.index_select(0, idx).unsqueeze(1);
        self.eta.index_select(0, idx).where_self(&seen, &self.visit(z1, z2))
    }

    /// The oracle predictor `h_kappa(z) = sum_j softmax_j(kappa mu_j . Z) sg(f_bar_j)` over the
    /// bank (`[B, d]`, gradient into z through the weights only). Candidates: the visited bank
    /// entries of other images, plus this batch's current visit values (which stand in for the
    /// batch's own rows); with `exclude_self`, each image's own candidate is left out.
    pub fn oracle(&self, idx: &Tensor, z1: &Tensor, z2: &Tensor, z: &Tensor, kappa: f64, exclude_self: bool) -> Tensor {
        let visit = self.visit(z1, z2); // [B, d], detached
        let zn = l2_normalize(z).to_kind(tch::Kind::Float);
        let b = idx.size()[0];
        // Bank rows usable: visited, and not this batch's (they come from `visit`).
        let usable = self.seen.index_fill(0, idx, 0).unsqueeze(0); // [1, N]
        let bank_logits =
            (zn.matmul(&l2_normalize(&self.eta).tr()) * kappa).masked_fill(&usable.logical_not(), f64::NEG_INFINITY);
        let mut batch_logits = zn.matmul(&l2_normalize(&visit).tr()) * kappa; // [B, B]
        if exclude_self {
            batch_logits = batch_logits.masked_fill(&Tensor::eye(b, (tch::Kind::Bool, z.device())), f64::NEG_INFINITY);
        }
        let w = Tensor::cat(&[bank_logits, batch_logits], 1).softmax(1, tch::Kind::Float); // [B, N + B]
        w.matmul(&Tensor::cat(&[self.eta.shallow_clone(), visit], 0))
    }

    /// One update per visit.
    pub fn update(&mut self, idx: &Tensor, z1: &Tensor, z2: &Tensor) {
        let now = self.visit(z1, z2);
        let old = self.eta.index_select(0, idx);
        let seen = self.seen.index_select(0, idx).unsqueeze(1);
        let new = (&old * self.momentum + &now * (1.0 - self.momentum)).where_self(&seen, &now);
        let _ = self.eta.index_copy_(0, idx, &new);
        let _ = self.seen.index_fill_(0, idx, 1);
    }
}

/// Batch mean `[1, d]`.
fn centre(x: &Tensor) -> Tensor {
    x.mean_dim(&[0i64][..], true, x.kind())
}

/// An extra loss's vectors of both views: P (after the predictor) or Z (the oracle, which only
/// the main loss has, falls back to Z).
fn both_views(out: &SiameseOutput, online: Online) -> (&Tensor, &Tensor) {
    match online {
        Online::P => (&out.p1, &out.p2),
        Online::Z | Online::Oracle => (&out.z1, &out.z2),
    }
}

/// Targets that come from outside one pair of views, computed by the training step.
#[derive(Debug, Default)]
pub struct External {
    /// `Target::Eoa` / `Target::Memory`: one target per image `[B, d]` (detached).
    pub per_image: Option<Tensor>,
    /// `Target::Inverse`: `h_inv(sg p)` of each view of the pair, with gradient into h_inv.
    pub inverse: Option<[Tensor; 2]>,
    /// k-step alternation: the two views' projections computed with the weights of the
    /// alternation's start; they replace z of the target view.
    pub cached: Option<[Tensor; 2]>,
    /// `Online::Oracle`: h_kappa(z) of each view of the pair, with gradient into z.
    pub oracle: Option<[Tensor; 2]>,
    /// `predictor_loss > 0`: h(sg z) of each view of the pair, with gradient into h only.
    pub regressed: Option<[Tensor; 2]>,
    /// `swav.weight > 0`: the model's prototypes `[K, d]` (trainable).
    pub prototypes: Option<Tensor>,
    /// SwAV's queue `[2, Q, d]`, once full.
    pub swav_queue: Option<Tensor>,
    /// MoCo's queue of keys `[2, Q, d]` (`infonce_queue > 0`): row v holds view v's keys.
    pub infonce_queue: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct Objective {
    pub cfg: ObjectiveConfig,
}

impl Objective {
    pub fn new(cfg: &ObjectiveConfig) -> Objective {
        Objective { cfg: cfg.clone() }
    }

    fn sg(&self, t: Tensor) -> Tensor {
        if self.cfg.stop_grad {
            stop_grad(&t)
        } else {
            t
        }
    }

    /// How many augmented views of each image a step needs.
    pub fn views(&self) -> usize {
        if self.cfg.symmetry == Symmetry::AsymmetricTwice {
            4
        } else {
            2
        }
    }

    /// The target G for online view a and target view b, from normalised Z and P `[B, d]` and
    /// the normalised online vector X_a (for InfoNCE's weights); `external` is the
    /// step-provided target for `Eoa`, `Memory` and `Inverse`.
    pub fn target(&self, xa: &Tensor, za: &Tensor, zb: &Tensor, pb: &Tensor, external: Option<&Tensor>) -> Tensor {
        let ext = || external.expect("this target is computed by the training step").shallow_clone();
        let o_z = || centre(zb);
        let o_p = || centre(pb);
        // Z_n: a negative for each image, the next image of the batch.
        let z_n = || zb.roll([1], [0]);
        // InfoNCE's weighted negatives: sum_j lambda_ij Z_b[j], `[B, d]`.
        let soft_n = || negative_weights(xa, zb, self.cfg.infonce_temperature).matmul(zb);
        let g = match self.cfg.target {
            Target::Zb => zb.shallow_clone(),
            Target::Pb => pb.shallow_clone(),
            Target::PbPlusOe => pb + o_z() - o_p(),
            Target::PbPlusRe => zb - o_z() + o_p(),
            Target::ZbMinusZn => zb - z_n(),
            Target::ZbMinusOz => zb - o_z(),
            Target::ZbMinusRn => zb - (z_n() - o_z()),
            // The weights sum to 1, so sum_j lambda_ij (Z_j - o_z) = soft_n - o_z.
            Target::ZbMinusSoftZn => zb - soft_n(),
            Target::ZbMinusSoftRn => zb - (soft_n() - o_z()),
            Target::Oz => centre(za).expand_as(za),
            Target::Ra => za - centre(za),
            Target::Eoa | Target::Memory => ext(),
            Target::Inverse => l2_normalize(&ext()),
        };
        self.sg(g)
    }

    /// The loss of one direction (online view a, target view b); `oracle_a` is h_kappa(z_a).
    fn directed(
        &self,
        za: &Tensor,
        pa: &Tensor,
        zb: &Tensor,
        pb: &Tensor,
        external: Option<&Tensor>,
        oracle_a: Option<&Tensor>,
    ) -> Tensor {
        if self.cfg.similarity == Similarity::CrossEntropy {
            // On the raw vectors (softmax over channels), SimSiam §4.5.
            let x = match self.cfg.online {
                Online::P => pa,
                Online::Z | Online::Oracle => za,
            };
            return negative_similarity(x, &self.sg(zb.shallow_clone()), Similarity::CrossEntropy);
        }
        let (nza, nzb, npb) = (l2_normalize(za), l2_normalize(zb), l2_normalize(pb));
        let x = match self.cfg.online {
            Online::P => l2_normalize(pa),
            Online::Z => nza.shallow_clone(),
            Online::Oracle => l2_normalize(oracle_a.expect("the oracle predictor is computed by the training step")),
        };
        let g = self.target(&x, &nza, &nzb, &npb, external);
        match self.cfg.form {
            Form::Dot => -(&x * g).sum_dim_intlist(&[1i64][..], false, x.kind()).mean(x.kind()),
            Form::Cosine => negative_similarity(&x, &g, Similarity::Cosine),
        }
    }

    /// The online vector among a view's outputs: P or Z (none for the oracle, which the step
    /// builds).
    pub fn online_vector<'a>(&self, z: &'a Tensor, p: &'a Tensor) -> Option<&'a Tensor> {
        match self.cfg.online {
            Online::P => Some(p),
            Online::Z => Some(z),
            Online::Oracle => None,
        }
    }

    /// Zhang et al.'s extra gradient G_e (§2.6-2.7, §2.11) of this objective for online view a
    /// and target view b, from normalised X_a (view a's [`Objective::online_vector`]), Z_b and
    /// P_b `[B, d]`: the target minus its basic part, P_b for SimSiam's targets (`zb` with
    /// online P: G_e = Z_b - P_b) and the symmetric predictor's, Z_b for the naive Siamese's,
    /// mirror SimSiam's (`pb` with online Z: G_e = P_b - Z_b), the triplet's and InfoNCE's;
    /// detached. None where the target has no basic part (the dummy gradients `oz`, `ra`), is
    /// built by the step (`eoa`, `memory`, `inverse`), or the loss is not a target's
    /// (cross-entropy, oracle, or only extra losses: `main_weight = 0`, as SimCLR). Under k-step
    /// alternation it is that of this step's vectors, not the cached ones.
    pub fn extra_gradient(&self, xa: &Tensor, zb: &Tensor, pb: &Tensor) -> Option<Tensor> {
        let c = &self.cfg;
        if c.similarity == Similarity::CrossEntropy || c.main_weight == 0.0 || c.online == Online::Oracle {
            return None;
        }
        let basic = match c.target {
            Target::Zb if c.online == Online::P => pb,
            // Mirror SimSiam (online Z, target P_b): the naive Siamese's basic part, G_e = P_b - Z_b.
            Target::Pb if c.online == Online::Z => zb,
            Target::Pb | Target::PbPlusOe | Target::PbPlusRe => pb,
            Target::Zb
            | Target::ZbMinusZn
            | Target::ZbMinusOz
            | Target::ZbMinusRn
            | Target::ZbMinusSoftZn
            | Target::ZbMinusSoftRn => zb,
            Target::Oz | Target::Ra | Target::Eoa | Target::Memory | Target::Inverse => return None,
        };
        // Z_a enters only the dummy-gradient targets, which have no basic part (above).
        Some(self.target(xa, xa, zb, pb, None).detach() - basic)
    }

    /// The scalar training loss over one pair of views (two pairs for `AsymmetricTwice`), plus
    /// the inverse predictor's own loss when it is trained.
    pub fn loss(&self, pairs: &[SiameseOutput], ext: &External) -> Tensor {
        let out = &pairs[0];
        // The per-view external target for target view b (0 = view 1, 1 = view 2).
        let ext_for = |b: usize| match (&ext.per_image, &ext.inverse) {
            (Some(t), _) => Some(t.shallow_clone()),
            (None, Some(inv)) => Some(inv[b].detach()),
            _ => None,
        };
        let oracle = |a: usize| ext.oracle.as_ref().map(|o| &o[a]);
        // The target views' z: this step's, or the alternation's cached ones.
        let (t1, t2) = match &ext.cached {
            Some([a, b]) => (a, b),
            None => (&out.z1, &out.z2),
        };
        let main = || match self.cfg.symmetry {
            Symmetry::Symmetric => {
                (self.directed(&out.z1, &out.p1, t2, &out.p2, ext_for(1).as_ref(), oracle(0))
                    + self.directed(&out.z2, &out.p2, t1, &out.p1, ext_for(0).as_ref(), oracle(1)))
                    * 0.5
            }
            Symmetry::Asymmetric => self.directed(&out.z1, &out.p1, t2, &out.p2, ext_for(1).as_ref(), oracle(0)),
            Symmetry::AsymmetricTwice => {
                let second = pairs.get(1).expect("asymmetric_twice needs two pairs of views");
                (self.directed(&out.z1, &out.p1, &out.z2, &out.p2, ext_for(1).as_ref(), oracle(0))
                    + self.directed(&second.z1, &second.p1, &second.z2, &second.p2, ext_for(1).as_ref(), None))
                    * 0.5
            }
        };
        let c = &self.cfg;
        // The terms of the total; one of weight 0 is left out, not multiplied by 0, so that it
        // neither costs its compute nor puts its inputs (SimCLR's P) on the gradient's path.
        let mut terms = Vec::new();
        if c.main_weight == 1.0 {
            terms.push(main());
        } else if c.main_weight > 0.0 {
            terms.push(main() * c.main_weight);
        }
        if let Some(inv) = &ext.inverse {
            terms.push(self.inverse_loss(out, inv));
        }
        if let Some(reg) = &ext.regressed {
            terms.push(self.predictor_loss(out, reg) * c.predictor_loss);
        }
        if c.decorrelation > 0.0 {
            let dc = (decorrelation_loss(&out.z1, c.decorrelation_form)
                + decorrelation_loss(&out.z2, c.decorrelation_form))
                * 0.5;
            terms.push(dc * c.decorrelation);
        }
        if c.infonce > 0.0 {
            let (q1, q2) = both_views(out, c.infonce_online);
            let t = c.infonce_temperature;
            let nce = match &ext.infonce_queue {
                // MoCo: keys from the target branch (the momentum encoder), negatives from the
                // queue of the other view's past keys, symmetrised.
                Some(queue) => (moco_loss(q1, t2, &queue.get(1), t) + moco_loss(q2, t1, &queue.get(0), t)) * 0.5,
                None => {
                    let key = |z: &Tensor| if c.infonce_stop_grad { stop_grad(z) } else { z.shallow_clone() };
                    infonce_loss_of_queries(q1, q2, &key(&out.z1), &key(&out.z2), t)
                }
            };
            terms.push(nce * c.infonce);
        }
        if c.swav.weight > 0.0 {
            let prototypes = ext.prototypes.as_ref().expect("SwAV's prototypes are the model's, passed by the step");
            let (x1, x2) = both_views(out, c.swav.online);
            let swav = swav_loss([x1, x2], [&out.z1, &out.z2], prototypes, ext.swav_queue.as_ref(), &c.swav);
            terms.push(swav * c.swav.weight);
        }
        terms
            .into_iter()
            .reduce(|a, b| a + b)
            .expect("the config's validation leaves at least one loss of positive weight")
    }

    /// The loss of one pair of views with no step-provided targets.
    pub fn pair_loss(&self, out: &SiameseOutput) -> Tensor {
        self.loss(std::slice::from_ref(out), &External::default())
    }

    /// The inverse predictor's loss `L_inv = ½ Σ_v D(h_inv(sg p_v), sg z_v)`: it learns to map
    /// P back to Z; only h_inv gets its gradient.
    pub fn inverse_loss(&self, out: &SiameseOutput, inv: &[Tensor; 2]) -> Tensor {
        (negative_similarity(&inv[0], &stop_grad(&out.z1), Similarity::Cosine)
            + negative_similarity(&inv[1], &stop_grad(&out.z2), Similarity::Cosine))
            * 0.5
    }

    /// The predictor's own regression loss `½ [D(h(sg z_1), sg z_2) + D(h(sg z_2), sg z_1)]`
    /// from `reg = [h(sg z_1), h(sg z_2)]`: h learns to predict the other view's projection,
    /// what SimSiam's predictor does on the gradient path; nothing reaches the encoder.
    pub fn predictor_loss(&self, out: &SiameseOutput, reg: &[Tensor; 2]) -> Tensor {
        (negative_similarity(&reg[0], &stop_grad(&out.z2), Similarity::Cosine)
            + negative_similarity(&reg[1], &stop_grad(&out.z1), Similarity::Cosine))
            * 0.5
    }

    /// How many unit cosine losses the total adds up: 1 for the main loss, plus 1 for the
    /// inverse predictor's own and `predictor_loss` for the predictor's.
    pub fn loss_scale(&self) -> f64 {
        let inverse = if self.cfg.target == Target::Inverse { 1.0 } else { 0.0 };
        1.0 + inverse + self.cfg.predictor_loss
    }

    /// [`crate::monitor::verdict`] of a run of this objective, its loss bands per unit of
    /// [`Objective::loss_scale`]: a total of two cosine losses at -1.85 of its minimum -2 is
    /// each at -0.925, within the band of -1.
    pub fn verdict(&self, loss: f64, scaled_std: f64, start_std: Option<f64>) -> crate::monitor::CollapseVerdict {
        let s = self.loss_scale();
        crate::monitor::verdict(loss / s, self.minimum().map(|m| m / s), scaled_std, start_std)
    }

    /// The loss's minimum where collapse sits (-1) for SimSiam-like targets in cosine form, less
    /// 1 for the inverse predictor's loss and `predictor_loss` for the predictor's own (both
    /// reach their minimum -1 on a collapsed representation); none for the variants whose
    /// minimum depends on the batch, and none with extra losses or a re-weighted main loss.
    pub fn minimum(&self) -> Option<f64> {
        let unit_target = matches!(self.cfg.target, Target::Zb | Target::Pb | Target::Inverse);
        let extras = self.cfg.main_weight != 1.0
            || self.cfg.decorrelation > 0.0
            || self.cfg.infonce > 0.0
            || self.cfg.swav.weight > 0.0;
        let main =
            (!extras && self.cfg.similarity == Similarity::Cosine && (unit_target || self.cfg.form == Form::Cosine))
                .then_some(-1.0);
        // The heads' own losses (minimum -1 each, times their weights) are part of the total.
        main.map(|m| m - (self.loss_scale() - 1.0))
    }
}
