//! Geometry monitors against identities and matrices with known spectra.
use simsiam::analysis::*;
use tch::{Device, Kind, Tensor};

fn v(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap()
}

#[test]
fn centre_residual_identities() {
    tch::manual_seed(0);
    // Shifted Gaussians: a clear centre plus residuals.
    let z = Tensor::randn([512, 32], (Kind::Float, Device::Cpu)) + 1.5;
    let [m_o, m_r, m_r2] = v(&centre_residual(&z))[..] else { panic!() };
    // mean ||r||^2 = 1 - m_o^2 exactly (Z is unit-norm); Jensen: m_r <= m_r2.
    assert!((m_r2 * m_r2 - (1.0 - m_o * m_o)).abs() < 1e-5, "{m_o} {m_r2}");
    assert!(m_r <= m_r2 + 1e-7 && m_o > 0.5);
    // A collapsed batch: m_o = 1, m_r = 0.
    let c = Tensor::randn([1, 32], (Kind::Float, Device::Cpu)).expand([64, 32], false) * 3.0;
    let r = v(&centre_residual(&c));
    assert!((r[0] - 1.0).abs() < 1e-6 && r[1] < 1e-3 && r[2] < 1e-3, "{r:?}");
}

/// A centred `[n, d]` matrix with singular values `sigma`.
fn with_singular_values(n: i64, sigma: &[f64]) -> Tensor {
    let d = sigma.len() as i64;
    let a = Tensor::randn([n, d], (Kind::Double, Device::Cpu));
    let a = &a - a.mean_dim(&[0i64][..], true, Kind::Double);
    let (q, _) = Tensor::linalg_qr(&a, "reduced"); // centred orthonormal columns
    let b = Tensor::randn([d, d], (Kind::Double, Device::Cpu));
    let (vmat, _) = Tensor::linalg_qr(&b, "reduced");
    q.matmul(&Tensor::from_slice(sigma).diag(0)).matmul(&vmat.tr())
}

#[test]
fn effective_rank_of_known_singular_values() {
    // Two equal singular values: erank 2; (1, 3): exp(H(1/4, 3/4)) = 1.7548.
    let x = Tensor::from_slice(&[1.0f64, 0.0, -1.0, 0.0, 0.0, 1.0, 0.0, -1.0]).view([4, 2]);
    assert!((effective_rank(&x) - 2.0).abs() < 1e-9);
    let x = Tensor::from_slice(&[1.0f64, 0.0, -1.0, 0.0, 0.0, 3.0, 0.0, -3.0]).view([4, 2]);
    let h: f64 = -(0.25f64 * 0.25f64.ln() + 0.75 * 0.75f64.ln());
    assert!((effective_rank(&x) - h.exp()).abs() < 1e-9);
    // Eight equal singular values: erank 8; a rank-3 matrix in 16 dims: erank 3.
    tch::manual_seed(1);
    assert!((effective_rank(&with_singular_values(200, &[2.0; 8])) - 8.0).abs() < 1e-6);
    let mut s = vec![0.0; 16];
    s[..3].copy_from_slice(&[5.0, 5.0, 5.0]);
    assert!((effective_rank(&with_singular_values(200, &s)) - 3.0).abs() < 1e-4);
    // RankMe on the same centred matrix agrees (up to its epsilon).
    assert!((rankme(&with_singular_values(200, &[1.0; 6])) - 6.0).abs() < 1e-3);
}

#[test]
fn pca_dimensions_and_participation_ratio() {
    assert_eq!(pca_dims(&[4.0, 3.0, 2.0, 1.0], 0.90), 3);
    assert_eq!(pca_dims(&[4.0, 3.0, 2.0, 1.0], 0.99), 4);
    assert_eq!(pca_dims(&[4.0, 3.0, 2.0, 1.0], 0.40), 1);
    tch::manual_seed(2);
    // Covariance eigenvalues sigma^2/(n-1) = (9, 9, 1, 1) x c: PR = 20^2 / 164; cumulative
    // shares 0.45, 0.90, 0.95, 1.0 give k90 = 2, k95 = 3, k99 = 4.
    let s = spectrum(&with_singular_values(101, &[3.0, 3.0, 1.0, 1.0]));
    assert!((s.participation_ratio - 400.0 / 164.0).abs() < 1e-9, "{s:?}");
    assert_eq!((s.pca_k90, s.pca_k95, s.pca_k99), (2, 3, 4));
}

#[test]
fn off_diagonal_covariance_is_zero_for_independent_axes_and_large_for_correlated() {
    // Rows ±e_i: normalised, centred, covariance is diagonal.
    let x = Tensor::cat(&[Tensor::eye(8, (Kind::Float, Device::Cpu)), -Tensor::eye(8, (Kind::Float, Device::Cpu))], 0);
    let o = off_diagonal(&x);
    assert!(o.cov_abs < 1e-12 && o.corr_abs < 1e-9, "{o:?}");
    // Every dimension a copy of one signal: correlations are all 1.
    tch::manual_seed(3);
    let base = Tensor::randn([256, 1], (Kind::Float, Device::Cpu)) + 0.1;
    let x = base.expand([256, 4], false) + Tensor::randn([256, 4], (Kind::Float, Device::Cpu)) * 1e-4;
    assert!(off_diagonal(&x).corr_abs > 0.9);
}

#[test]
fn eta_p_by_hand() {
    // Z all e1, P all e2: o_z = e1, o_p = e2, o_e = e1 - e2; eta_p* = (o_e . o_p)/|o_p|^2 = -1;
    // cos(o_e + 0.5 o_p, o_p) = cos(e1 - 0.5 e2, e2) = -0.5 / sqrt(1.25).
    let e = |i: i64| Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)).index_fill(1, &Tensor::from_slice(&[i]), 2.0);
    let r = v(&eta_p(&e(0), &e(1)));
    assert!((r[0] + 1.0).abs() < 1e-6 && (r[1] + 0.5 / 1.25f64.sqrt()).abs() < 1e-6, "{r:?}");
    // P = Z: o_e = 0, eta_p* = 0.
    assert!(v(&eta_p(&e(0), &e(0)))[0].abs() < 1e-6);
}

#[test]
fn extra_gradient_norms_by_hand() {
    // SimSiam's G_e = Z - P with Z all e1, P all e2: o_e = e1 - e2 (norm sqrt 2), residuals all 0.
    let e = |i: i64| Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)).index_fill(1, &Tensor::from_slice(&[i]), 1.0);
    let r = v(&extra_gradient_norms(&(e(0) - e(1))));
    assert!((r[0] - 2f64.sqrt()).abs() < 1e-6 && r[1].abs() < 1e-6, "{r:?}");
    // Rows (1, 0) and (-1, 0): o_e = 0, each residual of norm 1.
    let pm = Tensor::from_slice(&[1.0f32, 0.0, -1.0, 0.0]).view([2, 2]);
    let r = v(&extra_gradient_norms(&pm));
    assert!(r[0].abs() < 1e-6 && (r[1] - 1.0).abs() < 1e-6, "{r:?}");
    // Rows (3, 4) and (1, 0): o_e = (2, 2), residuals (1, 2) and (-1, -2), norm sqrt 5 each.
    let g = Tensor::from_slice(&[3.0f32, 4.0, 1.0, 0.0]).view([2, 2]);
    let r = v(&extra_gradient_norms(&g));
    assert!((r[0] - 8f64.sqrt()).abs() < 1e-6 && (r[1] - 5f64.sqrt()).abs() < 1e-6, "{r:?}");
}

#[test]
fn eta_grid_crosses_zero_at_eta_p_star() {
    // Z all e1, P all e2: eta_p* = -1, so c(-1) = 0 and c(eta) < 0 above it (o_e - eta o_p has
    // the o_p component -1 - eta).
    let e = |i: i64| Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)).index_fill(1, &Tensor::from_slice(&[i]), 2.0);
    let grid = eta_grid(&e(0), &e(1));
    assert_eq!(grid.len(), 21);
    assert_eq!((grid[0].0, grid[20].0), (-1.0, 1.0));
    assert!(grid[0].1.abs() < 1e-9, "{grid:?}");
    assert!(grid[1..].iter().all(|(_, c)| *c < 0.0));
    // c(-0.5) here is cos(e1 - 0.5 e2, e2) = -0.5 / sqrt(1.25), as eta_p's second output.
    assert!((grid[5].1 + 0.5 / 1.25f64.sqrt()).abs() < 1e-6);
}

#[test]
fn collapse_auc_and_spectral_decay_by_hand() {
    // D equal singular values: cumsum/sum = k/D, mean (D + 1) / 2D; rank one: 1.
    assert!((collapse_auc(&[2.0; 8]) - 9.0 / 16.0).abs() < 1e-12);
    assert!((collapse_auc(&[3.0, 0.0, 0.0, 0.0]) - 1.0).abs() < 1e-12);
    // (3, 1): cumulative shares 0.75, 1 -> 0.875.
    assert!((collapse_auc(&[3.0, 1.0]) - 0.875).abs() < 1e-12);
    // lambda_i = 3 i^-1.5 gives alpha = 1.5; numerical zeros after it are left out of the fit.
    let mut lambda: Vec<f64> = (1..=50).map(|i| 3.0 * (i as f64).powf(-1.5)).collect();
    assert!((spectral_decay(&lambda) - 1.5).abs() < 1e-9);
    lambda.extend([1e-20; 10]);
    assert!((spectral_decay(&lambda) - 1.5).abs() < 1e-9);
    // Through `spectrum`: four equal singular values.
    tch::manual_seed(4);
    let s = spectrum(&with_singular_values(100, &[1.0; 4]));
    assert!((s.collapse_auc - 5.0 / 8.0).abs() < 1e-9 && s.spectral_decay.abs() < 1e-6, "{s:?}");
}

#[test]
fn bootstrap_interval_brackets_the_sample_statistic_with_the_expected_width() {
    tch::manual_seed(5);
    let x = Tensor::randn([400, 1], (Kind::Double, Device::Cpu)) + 2.0;
    let full = x.mean(Kind::Double).double_value(&[]);
    let [ci] = bootstrap_ci(&x, 200, |t| [t.mean(Kind::Double).double_value(&[])]);
    // The mean's standard error is 1/sqrt(400) = 0.05: a 95% interval about 0.196 wide.
    assert!(ci[0] < full && full < ci[1], "{ci:?} around {full}");
    assert!(((ci[1] - ci[0]) / 0.196 - 1.0).abs() < 0.3, "{ci:?}");
    // Identical rows: every resample is the same, the interval a point.
    let [ci] = bootstrap_ci(&Tensor::ones([50, 3], (Kind::Double, Device::Cpu)), 20, |t| {
        [t.sum(Kind::Double).double_value(&[])]
    });
    assert_eq!(ci, [150.0, 150.0]);
}
