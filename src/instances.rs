//! Estimators for the blog's optimal-predictor and "shards" hypotheses (EXPERIMENTS.md §3.1)
//! and intrinsic dimension (§3.5): von Mises-Fisher concentration and normaliser (with a
//! numerically stable log-Bessel), instance centres from K augmentations, the posterior
//! p(x'|Z) and instance identification, the oracle predictor h*, and TwoNN.
use crate::augment::Augmenter;
use crate::model::SimSiam;
use crate::monitor::l2_normalize;
use rand::Rng;
use rand_distr::{Beta, Distribution, StandardNormal};
use serde::Serialize;
use tch::{Kind, Tensor};

/// `log I_nu(x)` for `nu >= 0`, `x > 0`: Debye's uniform asymptotic expansion (four terms) at an
/// order `N = nu + m >= 50`, then the downward recurrence `I_{k-1} = I_{k+1} + (2k/x) I_k`,
/// stable for I, in ratio form (no overflow) down to `nu`. Accurate to about 1e-9 relative.
pub fn log_bessel_i(nu: f64, x: f64) -> f64 {
    assert!(nu >= 0.0 && x > 0.0, "log_bessel_i needs nu >= 0 and x > 0, got ({nu}, {x})");
    let m = (50.0 - nu).max(0.0).ceil();
    let top = nu + m;
    let mut log_i = debye_log_i(top, x);
    if m == 0.0 {
        return log_i;
    }
    // rho_k = I_k / I_{k+1}; rho_{k-1} = 1 / rho_k + 2k / x.
    let mut rho = (debye_log_i(top, x) - debye_log_i(top + 1.0, x)).exp();
    let mut k = top;
    // log I_{k-1} = log I_k + log rho_{k-1}
    while k > nu + 0.5 {
        rho = 1.0 / rho + 2.0 * k / x;
        log_i += rho.ln();
        k -= 1.0;
    }
    log_i
}

/// Debye's expansion of `log I_nu(nu z)`, for large `nu`.
fn debye_log_i(nu: f64, x: f64) -> f64 {
    let z = x / nu;
    let s = (1.0 + z * z).sqrt();
    let t = 1.0 / s;
    let eta = s + (z / (1.0 + s)).ln();
    let (t2, t3, t4) = (t * t, t * t * t, t.powi(4));
    let u1 = (3.0 * t - 5.0 * t3) / 24.0;
    let u2 = (81.0 * t2 - 462.0 * t4 + 385.0 * t.powi(6)) / 1152.0;
    let u3 = (30375.0 * t3 - 369603.0 * t.powi(5) + 765765.0 * t.powi(7) - 425425.0 * t.powi(9)) / 414720.0;
    let u4 = (4465125.0 * t4 - 94121676.0 * t.powi(6) + 349922430.0 * t.powi(8) - 446185740.0 * t.powi(10)
        + 185910725.0 * t.powi(12))
        / 39813120.0;
    let series = 1.0 + u1 / nu + u2 / nu.powi(2) + u3 / nu.powi(3) + u4 / nu.powi(4);
    nu * eta - 0.5 * (2.0 * std::f64::consts::PI * nu).ln() - 0.25 * (1.0 + z * z).ln() + series.ln()
}

/// `log C_d(kappa) = (d/2 - 1) log kappa - (d/2) log 2 pi - log I_{d/2 - 1}(kappa)`, the vMF
/// normaliser on the unit sphere in R^d.
pub fn vmf_log_normaliser(d: usize, kappa: f64) -> f64 {
    let h = d as f64 / 2.0;
    (h - 1.0) * kappa.ln() - h * (2.0 * std::f64::consts::PI).ln() - log_bessel_i(h - 1.0, kappa)
}

/// Banerjee et al. (2005): `kappa ~ R (d - R^2) / (1 - R^2)` from the mean resultant length R.
pub fn kappa_hat(r: f64, d: usize) -> f64 {
    let r = r.clamp(1e-12, 1.0 - 1e-12);
    r * (d as f64 - r * r) / (1.0 - r * r)
}

/// `A_d(kappa) = I_{d/2}(kappa) / I_{d/2 - 1}(kappa)`, the mean resultant length of a vMF.
pub fn vmf_mean_resultant(d: usize, kappa: f64) -> f64 {
    let h = d as f64 / 2.0;
    (log_bessel_i(h, kappa) - log_bessel_i(h - 1.0, kappa)).exp()
}

/// The maximum-likelihood concentration: Banerjee's estimate refined by Newton steps on
/// `A_d(kappa) = R` (Sra 2012), `A'(kappa) = 1 - A^2 - (d - 1) A / kappa`.
pub fn kappa_mle(r: f64, d: usize) -> f64 {
    let mut k = kappa_hat(r, d);
    for _ in 0..4 {
        let a = vmf_mean_resultant(d, k);
        let step = (a - r) / (1.0 - a * a - (d as f64 - 1.0) * a / k);
        k = (k - step).max(1e-8);
    }
    k
}

/// The finite-K bias correction of the mean resultant length: `R^2 ~ R_inf^2 + (1 - R_inf^2)/K`
/// gives `R_inf^2 = (K R^2 - 1) / (K - 1)` (clamped at 0).
pub fn resultant_unbiased(r: f64, k: usize) -> f64 {
    if k < 2 {
        return r;
    }
    ((k as f64 * r * r - 1.0) / (k as f64 - 1.0)).max(0.0).sqrt()
}

/// `n` samples of the vMF distribution with mean direction `mu` (unit) and concentration
/// `kappa` (Wood 1994). `[n, d]`, f64.
pub fn sample_vmf(mu: &[f64], kappa: f64, n: usize, rng: &mut impl Rng) -> Vec<Vec<f64>> {
    let d = mu.len();
    let dm1 = (d - 1) as f64;
    let b = (-2.0 * kappa + (4.0 * kappa * kappa + dm1 * dm1).sqrt()) / dm1;
    let x0 = (1.0 - b) / (1.0 + b);
    let c = kappa * x0 + dm1 * (1.0 - x0 * x0).ln();
    let beta = Beta::new(dm1 / 2.0, dm1 / 2.0).expect("d >= 2");
    (0..n)
        .map(|_| {
            let w = loop {
                let z: f64 = beta.sample(rng);
                let w = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z);
                let u: f64 = rng.gen();
                if kappa * w + dm1 * (1.0 - x0 * w).ln() - c >= u.ln() {
                    break w;
                }
            };
            // A uniform direction orthogonal to mu.
            let mut v: Vec<f64> = (0..d).map(|_| StandardNormal.sample(rng)).collect();
            let along: f64 = v.iter().zip(mu).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(mu).for_each(|(a, m)| *a -= along * m);
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            mu.iter().zip(&v).map(|(m, a)| w * m + (1.0 - w * w).max(0.0).sqrt() * a / norm).collect()
        })
        .collect()
}

/// Instance centres from `k` augmented views of every image (eval- or train-mode BN):
/// `f_bar` `[N, d]` (mean of normalised z, not re-normalised) and its norm, the mean resultant
/// length `R_bar` `[N]`.
pub fn centres(
    model: &SimSiam,
    images: &Tensor,
    aug: &Augmenter,
    k: usize,
    train_bn: bool,
    batch: i64,
) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        // Batch by batch, keeping only the centres: the bank of every view is K times larger.
        let (mut f_bars, mut rs) = (Vec::new(), Vec::new());
        views_by_batch(model, images, aug, k, train_bn, batch, |z, _| {
            let (f_bar, r) = centres_of(&z);
            f_bars.push(f_bar);
            rs.push(r);
        });
        (Tensor::cat(&f_bars, 0), Tensor::cat(&rs, 0))
    })
}

/// The centres `f_bar` `[N, d]` and mean resultant lengths `[N]` of a bank of unit views `[N, K, d]`.
pub fn centres_of(bank: &Tensor) -> (Tensor, Tensor) {
    let f_bar = bank.mean_dim(&[1i64][..], false, Kind::Float);
    let r = f_bar.norm_scalaropt_dim(2.0, &[1i64][..], false);
    (f_bar, r)
}

/// The posterior over instances with one shared concentration: `p(x'|Z) = softmax(kappa mu_x' . Z)`.
/// `z` `[M, d]`, `mu` `[N, d]` (unit) -> `[M, N]`.
pub fn posterior_shared(z: &Tensor, mu: &Tensor, kappa: f64) -> Tensor {
    (l2_normalize(z).matmul(&mu.tr()) * kappa).softmax(1, Kind::Float)
}

/// The posterior with per-instance concentrations `kappa` `[N]`:
/// `softmax(log C_d(kappa_x') + kappa_x' mu_x' . Z)`.
pub fn posterior_per_instance(z: &Tensor, mu: &Tensor, kappa: &[f64]) -> Tensor {
    let d = mu.size()[1] as usize;
    let log_c: Vec<f32> = kappa.iter().map(|&k| vmf_log_normaliser(d, k) as f32).collect();
    let kap = Tensor::from_slice(&kappa.iter().map(|&k| k as f32).collect::<Vec<_>>()).to_device(mu.device());
    let log_c = Tensor::from_slice(&log_c).to_device(mu.device());
    (l2_normalize(z).matmul(&mu.tr()) * kap.unsqueeze(0) + log_c.unsqueeze(0)).softmax(1, Kind::Float)
}

/// The kernel-density posterior (EXPERIMENTS.md §3.1, variant (b)): each instance's density is
/// a mixture of vMF kernels of one concentration `kappa` at its K bank views,
/// `p(x'|Z) = softmax_x'( logsumexp_k kappa Z . v_x'k )`. `z` `[M, d]`, `bank` `[N, K, d]` (unit)
/// -> `[M, N]`, computed in query chunks so the `[M, N K]` similarities never exist whole.
pub fn posterior_kernel(z: &Tensor, bank: &Tensor, kappa: f64) -> Tensor {
    let (n, k, d) = bank.size3().expect("bank [N, K, d]");
    let flat = bank.reshape([n * k, d]).tr(); // [d, N K]
    let zn = l2_normalize(z);
    let m = zn.size()[0];
    let rows = ((1i64 << 26) / (n * k)).max(1);
    let parts: Vec<Tensor> = (0..m)
        .step_by(rows as usize)
        .map(|s| {
            let sims = zn.narrow(0, s, rows.min(m - s)).matmul(&flat) * kappa; // [m', N K]
            sims.view([-1, n, k]).logsumexp(&[2i64][..], false).softmax(1, Kind::Float)
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// `k` normalised training-augmentation views of every image, of z and of the backbone
/// feature y: `([N, k, d_z], [N, k, d_y])`. Their means over k are the instance centres of
/// either space; the views themselves are the kernel posterior's bank.
pub fn view_bank(
    model: &SimSiam,
    images: &Tensor,
    aug: &Augmenter,
    k: usize,
    train_bn: bool,
    batch: i64,
) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        let (mut zs, mut ys) = (Vec::new(), Vec::new());
        views_by_batch(model, images, aug, k, train_bn, batch, |z, y| {
            zs.push(z);
            ys.push(y);
        });
        (Tensor::cat(&zs, 0), Tensor::cat(&ys, 0))
    })
}

/// Hands `f` each batch's `k` normalised views of z and y, `([b, k, d_z], [b, k, d_y])`.
fn views_by_batch(
    model: &SimSiam,
    images: &Tensor,
    aug: &Augmenter,
    k: usize,
    train_bn: bool,
    batch: i64,
    mut f: impl FnMut(Tensor, Tensor),
) {
    let n = images.size()[0];
    // Minutes of work on a CPU at the analyses' defaults: a line every few minutes says where
    // it is (no bar: the per-epoch monitors run this inside training's bar).
    let progress = crate::progress::Progress::log_only((n as usize * k) as u64, "views for the instance centres");
    for s in (0..n).step_by(batch as usize) {
        let b = images.narrow(0, s, batch.min(n - s));
        let (mut zk, mut yk) = (Vec::new(), Vec::new());
        for _ in 0..k {
            let (y, z) = model.features_and_projection(&aug.view(&b), train_bn);
            zk.push(l2_normalize(&z));
            yk.push(l2_normalize(&y));
            progress.inc(b.size()[0] as u64);
        }
        f(Tensor::stack(&zk, 1), Tensor::stack(&yk, 1));
    }
}

/// The oracle predictor `h*(z) = sum_x' p(x'|Z) f_bar(x')`: `[M, N] x [N, d] -> [M, d]`.
pub fn oracle_predictor(posterior: &Tensor, f_bar: &Tensor) -> Tensor {
    posterior.matmul(f_bar)
}

/// Instance identification from a posterior `[M, N]` and each query's true instance `[M]`.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceId {
    pub top1: f64,
    pub top5: f64,
    /// Mean posterior entropy (nats).
    pub entropy: f64,
    /// Mean posterior probability of the true instance.
    pub p_true: f64,
    pub instances: i64,
}

pub fn instance_id(posterior: &Tensor, truth: &Tensor) -> InstanceId {
    let n = posterior.size()[1];
    let k = n.min(5);
    let (_, top) = posterior.topk(k, 1, true, true);
    let hit = top.eq_tensor(&truth.unsqueeze(1));
    let mean = |t: Tensor| t.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    let p = posterior.to_kind(Kind::Double);
    InstanceId {
        top1: mean(hit.narrow(1, 0, 1).any_dim(1, false)) * 100.0,
        top5: mean(hit.any_dim(1, false)) * 100.0,
        entropy: mean(-(&p * p.clamp_min(1e-300).log()).sum_dim_intlist(&[1i64][..], false, Kind::Double)),
        p_true: mean(p.gather(1, &truth.unsqueeze(1), false)),
        instances: n,
    }
}

/// The blog's "between two centres" condition (B6): the fraction of query views whose two most
/// probable instances both have posterior above 0.05 and `<mu_1 - Z, mu_2 - Z> < 0`.
/// `posterior` `[M, N]`, `mu` `[N, d]` (unit), `z` `[M, d]`.
pub fn between_fraction(posterior: &Tensor, mu: &Tensor, z: &Tensor) -> f64 {
    if posterior.size()[1] < 2 {
        return 0.0;
    }
    let (p, idx) = posterior.topk(2, 1, true, true);
    let zn = l2_normalize(z);
    let m1 = mu.index_select(0, &idx.select(1, 0));
    let m2 = mu.index_select(0, &idx.select(1, 1));
    let inner = ((&m1 - &zn) * (&m2 - &zn)).sum_dim_intlist(&[1i64][..], false, Kind::Float);
    let both = p.select(1, 0).gt(0.05).logical_and(&p.select(1, 1).gt(0.05));
    inner.lt(0.0).logical_and(&both).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

/// The distances of each row of `x` `[N, D]` to its `k` nearest other rows, ascending
/// `[N', k]`, after dropping exact duplicate rows (which would give zero distances).
fn nearest_distances(x: &Tensor, k: i64) -> Tensor {
    let (x, _, _) = x.to_kind(Kind::Double).unique_dim(0, false, false, false);
    // compute_mode 2: exact differences (the matrix-product path is less precise for near points).
    let dist = Tensor::cdist(&x, &x, 2.0, Some(2));
    let n = dist.size()[0];
    let dist = dist.masked_fill(&Tensor::eye(n, (Kind::Bool, dist.device())), f64::INFINITY);
    dist.topk(k.min(n - 1), 1, false, true).0
}

/// TwoNN intrinsic dimension (Facco et al. 2017): from the ratio `mu = r2 / r1` of each point's
/// second to first nearest-neighbour distance, the MLE `d = (N - 1) / sum log mu`. Exact
/// duplicates are dropped first. `x` `[N, D]`.
pub fn two_nn(x: &Tensor) -> f64 {
    let near = nearest_distances(x, 2);
    let n = near.size()[0];
    let r1 = near.select(1, 0);
    let r2 = near.select(1, 1);
    let ok = r1.isfinite().logical_and(&r2.isfinite());
    let logmu = (r2 / r1).log().masked_select(&ok);
    let m = logmu.size()[0].min(n);
    (m - 1) as f64 / logmu.sum(Kind::Double).double_value(&[])
}

/// The MLE intrinsic dimension of Levina & Bickel (2004) with `k` neighbours, pooled over points
/// as MacKay & Ghahramani's correction does (averaging the inverse estimates):
/// `d = [ mean_x 1/(k-1) sum_{j<k} log(T_k(x) / T_j(x)) ]^-1`. A cross-check of TwoNN.
pub fn mle_intrinsic_dim(x: &Tensor, k: i64) -> f64 {
    assert!(k >= 3, "mle_intrinsic_dim needs k >= 3");
    let t = nearest_distances(x, k);
    let k = t.size()[1];
    let logs = t.log(); // [N, k]
    let inv = (logs.narrow(1, k - 1, 1) - logs.narrow(1, 0, k - 1)).sum_dim_intlist(&[1i64][..], false, Kind::Double)
        / (k - 1) as f64;
    1.0 / inv.mean(Kind::Double).double_value(&[])
}
