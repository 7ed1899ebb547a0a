//! Representation geometry (EXPERIMENTS.md §2.4, §2.10, §3.5): Zhang et al.'s centre/residual
//! split and the spectral measures of dimensional collapse. Inputs are `[N, D]` matrices.
use crate::monitor::{collapse_std_of_unit, l2_normalize};
use crate::objective::Objective;
use serde::Serialize;
use tch::{Kind, Tensor};

/// A batch's normalised projections Z and predictions P `[B, d]` with their batch means
/// `o_z`, `o_p` `[1, d]`, computed once for every per-step monitor (detached, f32).
pub struct Centred {
    zn: Tensor,
    pn: Tensor,
    o_z: Tensor,
    o_p: Tensor,
}

fn unit(x: &Tensor) -> Tensor {
    l2_normalize(&x.detach().to_kind(Kind::Float))
}

fn batch_mean(x: &Tensor) -> Tensor {
    x.mean_dim(&[0i64][..], true, Kind::Float)
}

/// `[m_o, m_r, m_r2]` of unit rows `xn` around their mean `o`.
fn residual_norms(xn: &Tensor, o: &Tensor) -> Tensor {
    let rn = (xn - o).norm_scalaropt_dim(2.0, &[1i64][..], false); // [B]
    Tensor::stack(&[o.norm(), rn.mean(Kind::Float), rn.square().mean(Kind::Float).sqrt()], 0)
}

impl Centred {
    pub fn new(z: &Tensor, p: &Tensor) -> Centred {
        let (zn, pn) = (unit(z), unit(p));
        let (o_z, o_p) = (batch_mean(&zn), batch_mean(&pn));
        Centred { zn, pn, o_z, o_p }
    }

    /// Zhang et al. §2.8: with `o_e = o_z - o_p`, `eta_p* = (o_e . o_p) / ||o_p||^2` (where
    /// `cos(o_e - eta o_p, o_p)` is 0) and `cos(o_e + 0.5 o_p, o_p)`, which the paper finds near 0
    /// (eta_p* near -0.5: de-centring). `[2]`.
    pub fn eta_p(&self) -> Tensor {
        let (o_p, o_e) = (self.o_p.view([-1]), (&self.o_z - &self.o_p).view([-1]));
        let eta = o_e.dot(&o_p) / o_p.dot(&o_p).clamp_min(1e-12);
        let c = Tensor::cosine_similarity(&(&o_e + &o_p * 0.5).unsqueeze(0), &o_p.unsqueeze(0), 1, 1e-8);
        Tensor::cat(&[eta.view([1]), c.view([1])], 0)
    }

    /// The objective's extra gradient ([`Objective::extra_gradient`]) with this batch as the
    /// target view and `x_a`, the other view's raw online vector, as the online one: this
    /// batch's vectors are normalised once for every monitor.
    pub fn extra_gradient(&self, objective: &Objective, x_a: &Tensor) -> Option<Tensor> {
        objective.extra_gradient(&unit(x_a), &self.zn, &self.pn)
    }

    /// The step monitors after the loss, in `train::STEP_STATS` order: `collapse_std` of Z,
    /// `m_o, m_r, m_r2` of Z and of P, `eta_p*` and `cos(o_e + 0.5 o_p, o_p)`, and
    /// [`extra_gradient_norms`] of the objective's extra gradient `ge` (NaN, logged as null,
    /// for objectives without one). `[11]`, on the device.
    pub fn step_monitors(&self, ge: Option<&Tensor>) -> Tensor {
        Tensor::cat(
            &[
                collapse_std_of_unit(&self.zn).view([1]),
                residual_norms(&self.zn, &self.o_z),
                residual_norms(&self.pn, &self.o_p),
                self.eta_p(),
                ge.map_or_else(|| Tensor::full([2], f64::NAN, (Kind::Float, self.zn.device())), extra_gradient_norms),
            ],
            0,
        )
    }
}

/// Zhang et al.'s decomposition of normalised `Z = o + r` over a batch, `o = mean(Z)`:
/// `m_o = ||o||`, `m_r = mean ||r_m||`, `m_r2 = sqrt(mean ||r_m||^2)`. Collapse: m_o -> 1,
/// m_r -> 0. Identity used in tests: `mean ||r_m||^2 = 1 - m_o^2`. Returns a `[3]` tensor on
/// the input's device (no host sync).
pub fn centre_residual(z: &Tensor) -> Tensor {
    let zn = unit(z);
    residual_norms(&zn, &batch_mean(&zn))
}

/// [`Centred::eta_p`] of a batch.
pub fn eta_p(z: &Tensor, p: &Tensor) -> Tensor {
    Centred::new(z, p).eta_p()
}

/// Norms of an extra gradient `G_e` `[B, d]` split into its centre and residual parts (Zhang
/// et al. §2.6-2.7): `||o_e||`, `o_e` its batch mean, and `mean ||r_e||`, `r_e = G_e - o_e`.
/// For SimSiam (`G_e = Z - P`) these are `||o_z - o_p||` and `mean ||(Z - o_z) - (P - o_p)||`.
/// `[2]`, f32.
pub fn extra_gradient_norms(ge: &Tensor) -> Tensor {
    let ge = ge.to_kind(Kind::Float);
    let o_e = batch_mean(&ge);
    let r_e = (&ge - &o_e).norm_scalaropt_dim(2.0, &[1i64][..], false);
    Tensor::stack(&[o_e.norm(), r_e.mean(Kind::Float)], 0)
}

/// `c(eta) = cos(o_e - eta o_p, o_p)` for eta in [-1, 1] in steps of 0.1 (Zhang et al. Fig. 5a):
/// where it crosses 0 is `eta_p*`.
pub fn eta_grid(z: &Tensor, p: &Tensor) -> Vec<(f64, f64)> {
    let mean = |x: &Tensor| l2_normalize(&x.detach().to_kind(Kind::Double)).mean_dim(&[0i64][..], false, Kind::Double);
    let (o_z, o_p) = (mean(z), mean(p));
    let o_e = &o_z - &o_p;
    (0..=20)
        .map(|i| {
            let eta = -1.0 + 0.1 * i as f64;
            let v = &o_e - &o_p * eta;
            let c = v.dot(&o_p) / (v.norm() * o_p.norm()).clamp_min(1e-12);
            ((eta * 10.0).round() / 10.0, c.double_value(&[]))
        })
        .collect()
}

/// Mean absolute and mean squared off-diagonal covariance and correlation of normalised Z.
#[derive(Debug, Clone, Serialize)]
pub struct OffDiagonal {
    pub cov_abs: f64,
    pub cov_sq: f64,
    pub corr_abs: f64,
    pub corr_sq: f64,
}

pub fn off_diagonal(z: &Tensor) -> OffDiagonal {
    let zn = l2_normalize(&z.to_kind(Kind::Double));
    let (n, d) = (zn.size()[0], zn.size()[1]);
    let zc = &zn - zn.mean_dim(&[0i64][..], true, Kind::Double);
    let cov = zc.tr().matmul(&zc) / (n - 1) as f64; // [D, D]
    let var = cov.diag(0);
    let corr = &cov / (var.unsqueeze(1) * var.unsqueeze(0) + 1e-12).sqrt();
    let off = Tensor::ones([d, d], (Kind::Double, zn.device())) - Tensor::eye(d, (Kind::Double, zn.device()));
    let pairs = (d * (d - 1)) as f64;
    let mean = |t: &Tensor| (t * &off).sum(Kind::Double).double_value(&[]) / pairs;
    OffDiagonal {
        cov_abs: mean(&cov.abs()),
        cov_sq: mean(&cov.square()),
        corr_abs: mean(&corr.abs()),
        corr_sq: mean(&corr.square()),
    }
}

/// `exp(H(p))` with `p = sigma / sum sigma + eps`, taking `0 log 0 = 0` (exactly zero singular
/// values, e.g. of ReLU features with dead channels, add nothing).
fn entropy_rank(sigma: &Tensor, eps: f64) -> f64 {
    let p = sigma / sigma.sum(Kind::Double) + eps;
    (-(&p * p.clamp_min(1e-300).log()).sum(Kind::Double)).exp().double_value(&[])
}

/// Singular values of a matrix, in f64, descending.
fn singular_values(x: &Tensor) -> Tensor {
    x.to_kind(Kind::Double).svd(true, false).1
}

fn centred(x: &Tensor) -> Tensor {
    let xd = x.to_kind(Kind::Double);
    &xd - xd.mean_dim(&[0i64][..], true, Kind::Double)
}

/// Effective rank (Roy & Vetterli 2007) of the centred matrix: `exp(H(sigma / sum sigma))`.
pub fn effective_rank(x: &Tensor) -> f64 {
    entropy_rank(&singular_values(&centred(x)), 0.0)
}

/// RankMe (Garrido et al. 2023): the same entropy on the uncentred matrix, `p_k + 1e-7`.
pub fn rankme(x: &Tensor) -> f64 {
    entropy_rank(&singular_values(x), 1e-7)
}

/// Covariance eigenvalues (descending) of the centred matrix: `sigma^2 / (N - 1)`.
pub fn covariance_spectrum(x: &Tensor) -> Vec<f64> {
    let s = singular_values(&centred(x));
    Vec::<f64>::try_from(s.square() / (x.size()[0] - 1) as f64).expect("f64")
}

/// Collapse AUC (Li, Efros & Pathak 2022, eq. 2) from the singular values of the centred
/// representation: `mean_k cumsum(sigma)_k / sum sigma`. `(D + 1) / 2D` for D equal singular
/// values, 1 for rank one: higher means more collapsed.
pub fn collapse_auc(sigma: &[f64]) -> f64 {
    let total: f64 = sigma.iter().sum::<f64>().max(1e-300);
    let mut acc = 0.0;
    sigma
        .iter()
        .map(|s| {
            acc += s;
            acc / total
        })
        .sum::<f64>()
        / sigma.len().max(1) as f64
}

/// Spectral decay alpha (alpha-ReQ, Agrawal et al. 2022): the least-squares slope of
/// `-log lambda_i` against `log i` over the eigenvalues above `1e-10 lambda_1` (numerical zeros
/// would dominate the fit). `lambda_i = c i^-alpha` gives alpha exactly.
pub fn spectral_decay(lambda: &[f64]) -> f64 {
    let floor = lambda.first().copied().unwrap_or(0.0) * 1e-10;
    let pts: Vec<(f64, f64)> = lambda
        .iter()
        .enumerate()
        .take_while(|(_, &l)| l > floor && l > 0.0)
        .map(|(i, &l)| (((i + 1) as f64).ln(), l.ln()))
        .collect();
    if pts.len() < 2 {
        return f64::NAN;
    }
    let n = pts.len() as f64;
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    -sxy / sxx
}

/// Spectral measures of one representation.
#[derive(Debug, Clone, Serialize)]
pub struct Spectrum {
    pub effective_rank: f64,
    pub rankme: f64,
    /// `(sum lambda)^2 / sum lambda^2`.
    pub participation_ratio: f64,
    /// Smallest k whose leading eigenvalues hold 90 / 95 / 99% of the variance.
    pub pca_k90: usize,
    pub pca_k95: usize,
    pub pca_k99: usize,
    /// Li et al.'s collapse AUC of the centred representation (higher: more collapsed).
    pub collapse_auc: f64,
    /// The power-law exponent of the covariance spectrum (alpha-ReQ).
    pub spectral_decay: f64,
}

/// The fraction of the variance held by the leading 1, 2, ... eigenvalues.
pub fn cumulative_variance(lambda: &[f64]) -> Vec<f64> {
    let total: f64 = lambda.iter().sum::<f64>().max(1e-300);
    lambda
        .iter()
        .scan(0.0, |acc, l| {
            *acc += l;
            Some(*acc / total)
        })
        .collect()
}

/// Smallest k with `sum_{i<=k} lambda_i / sum lambda >= q`.
pub fn pca_dims(lambda: &[f64], q: f64) -> usize {
    let total: f64 = lambda.iter().sum();
    let mut acc = 0.0;
    for (i, l) in lambda.iter().enumerate() {
        acc += l;
        if acc >= q * total - 1e-12 {
            return i + 1;
        }
    }
    lambda.len()
}

/// `(sum lambda)^2 / sum lambda^2` of covariance eigenvalues (the stable rank).
pub fn participation_ratio(lambda: &[f64]) -> f64 {
    let s1: f64 = lambda.iter().sum();
    let s2: f64 = lambda.iter().map(|l| l * l).sum();
    s1 * s1 / s2.max(1e-300)
}

/// Every spectral measure of `x` `[N, D]`, from one SVD of the centred matrix (and one of the
/// uncentred for RankMe).
pub fn spectrum(x: &Tensor) -> Spectrum {
    spectrum_and_eigenvalues(x).0
}

/// [`spectrum`] and the covariance eigenvalues it was computed from (descending), for callers
/// that also want the spectrum itself without a second SVD.
pub fn spectrum_and_eigenvalues(x: &Tensor) -> (Spectrum, Vec<f64>) {
    let sigma_t = singular_values(&centred(x));
    let sigma = Vec::<f64>::try_from(&sigma_t).expect("f64");
    let lambda: Vec<f64> = sigma.iter().map(|s| s * s / (x.size()[0] - 1) as f64).collect();
    let s = Spectrum {
        effective_rank: entropy_rank(&sigma_t, 0.0),
        rankme: rankme(x),
        participation_ratio: participation_ratio(&lambda),
        pca_k90: pca_dims(&lambda, 0.90),
        pca_k95: pca_dims(&lambda, 0.95),
        pca_k99: pca_dims(&lambda, 0.99),
        collapse_auc: collapse_auc(&sigma),
        spectral_decay: spectral_decay(&lambda),
    };
    (s, lambda)
}

/// Effective rank and participation ratio from one symmetric eigensolve of the centred Gram
/// matrix `[D, D]` (cheaper than the SVD of `[N, D]` when N >> D: the bootstrap's inner loop).
pub fn linear_dims(x: &Tensor) -> [f64; 2] {
    let xc = centred(x);
    let lambda = xc.tr().matmul(&xc).linalg_eigvalsh("L").clamp_min(0.0); // ascending
    let lambda_v = Vec::<f64>::try_from(&lambda).expect("f64");
    [entropy_rank(&lambda.sqrt(), 0.0), participation_ratio(&lambda_v)]
}

/// 95% percentile bootstrap intervals of the measures `f` returns, over the rows of `x`
/// `[N, D]` (`reps` resamples with replacement, from torch's generator: seed it for a
/// reproducible interval). The linear dimension measures depend on N, so EXPERIMENTS.md §3.5
/// asks for their spread. A resample repeats rows, which lowers spectral measures (effective
/// rank, RankMe): for those the interval's width is the spread, and it lies below the value.
pub fn bootstrap_ci<const M: usize>(x: &Tensor, reps: usize, f: impl Fn(&Tensor) -> [f64; M]) -> [[f64; 2]; M] {
    let n = x.size()[0];
    let draws: Vec<[f64; M]> =
        (0..reps).map(|_| f(&x.index_select(0, &Tensor::randint(n, [n], (Kind::Int64, x.device()))))).collect();
    std::array::from_fn(|j| {
        let mut v: Vec<f64> = draws.iter().map(|d| d[j]).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * (reps - 1) as f64).round() as usize).min(reps - 1)];
        [at(0.025), at(0.975)]
    })
}

/// The geometry monitor of a fixed evaluation subset: spectra of z (projector output) and y
/// (backbone features), and the off-diagonal covariance of normalised z.
#[derive(Debug, Clone, Serialize)]
pub struct Geometry {
    pub z: Spectrum,
    pub y: Spectrum,
    pub z_off_diagonal: OffDiagonal,
}

pub fn geometry(z: &Tensor, y: &Tensor) -> Geometry {
    Geometry { z: spectrum(z), y: spectrum(y), z_off_diagonal: off_diagonal(z) }
}
