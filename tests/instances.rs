//! Estimators for the shards analysis against reference values and synthetic data.
#![allow(clippy::excessive_precision)] // reference values printed by mpmath at full f64 precision
use rand::SeedableRng;
use simsiam::instances::*;
use simsiam::monitor::l2_normalize;
use tch::{Device, Kind, Tensor};

#[test]
fn log_bessel_matches_reference_values_over_wide_orders_and_arguments() {
    // log I_nu(x) from mpmath at 40 digits.
    let reference = [
        (0.5, 0.1, -1.375417787678170e+00),
        (0.5, 10.0, 7.929768918237150e+00),
        (1.0, 1.0, -5.706479874908312e-01),
        (5.0, 0.5, -1.170855461878510e+01),
        (5.0, 50.0, 4.687524039300679e+01),
        (63.0, 1.0, -2.446736826419241e+02),
        (63.0, 100.0, 7.744012064535400e+01),
        (255.0, 10.0, -7.512077957423228e+02),
        (255.0, 1000.0, 9.632718797997048e+02),
        (1023.0, 5.0, -5.133908890739737e+03),
        (1023.0, 2000.0, 1.738892719322590e+03),
        (1023.0, 100000.0, 9.998809197445503e+04),
    ];
    for (nu, x, want) in reference {
        let got = log_bessel_i(nu, x);
        assert!((got - want).abs() <= 1e-8 * want.abs().max(1.0), "log I_{nu}({x}) = {got}, want {want}");
    }
}

#[test]
fn kappa_estimator_recovers_kappa_from_vmf_samples() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for (d, kappa) in [(3usize, 5.0f64), (16, 20.0), (128, 300.0)] {
        let mut mu = vec![0.0; d];
        mu[0] = 0.6;
        mu[1] = 0.8;
        let xs = sample_vmf(&mu, kappa, 20_000, &mut rng);
        // Samples are unit vectors around mu.
        assert!(xs.iter().all(|x| (x.iter().map(|v| v * v).sum::<f64>() - 1.0).abs() < 1e-9));
        let mean: Vec<f64> = (0..d).map(|j| xs.iter().map(|x| x[j]).sum::<f64>() / xs.len() as f64).collect();
        let r = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        let cos = mean.iter().zip(&mu).map(|(a, b)| a * b).sum::<f64>() / r;
        assert!(cos > 0.99, "mean direction");
        // The MLE (Newton on A_d(kappa) = R) recovers kappa at every d; Banerjee's closed form,
        // an approximation, at high d.
        let k = kappa_mle(r, d);
        assert!((k / kappa - 1.0).abs() < 0.03, "d={d}: kappa_mle {k} vs {kappa}");
        if d >= 16 {
            assert!((kappa_hat(r, d) / kappa - 1.0).abs() < 0.05, "d={d}: kappa_hat");
        }
    }
    // The finite-K correction: R_inf = 0 gives R^2 = 1/K.
    assert!(resultant_unbiased((1.0f64 / 8.0).sqrt(), 8).abs() < 1e-6);
    assert!((resultant_unbiased(0.5, 4) - ((4.0 * 0.25 - 1.0f64) / 3.0).max(0.0).sqrt()).abs() < 1e-12);
}

#[test]
fn vmf_normaliser_integrates_to_one_on_the_circle() {
    // d = 2: C_2(kappa) = 1 / (2 pi I_0(kappa)); integral over the circle of C exp(kappa cos t) = 1.
    let kappa = 3.0;
    let c = vmf_log_normaliser(2, kappa).exp();
    let n = 100_000;
    let integral: f64 =
        (0..n).map(|i| (kappa * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()).exp()).sum::<f64>()
            * 2.0
            * std::f64::consts::PI
            / n as f64;
    assert!((c * integral - 1.0).abs() < 1e-6);
}

#[test]
fn instance_id_is_perfect_on_separated_centres_and_chance_on_identical_ones() {
    tch::manual_seed(0);
    let n = 50;
    // Orthogonal centres in R^50; the queries are each centre plus small noise, 4 per instance.
    let mu = Tensor::eye(n, (Kind::Float, Device::Cpu));
    let truth = Tensor::arange(n, (Kind::Int64, Device::Cpu)).repeat([4]);
    let z = mu.index_select(0, &truth) + Tensor::randn([4 * n, n], (Kind::Float, Device::Cpu)) * 0.05;
    let r = instance_id(&posterior_shared(&z, &mu, 50.0), &truth);
    assert_eq!((r.top1, r.top5), (100.0, 100.0));
    assert!(r.p_true > 0.99 && r.entropy < 0.05, "{r:?}");
    // Identical centres: the posterior is uniform, identification at chance.
    let same = Tensor::ones([n, n], (Kind::Float, Device::Cpu)) / (n as f64).sqrt();
    let r = instance_id(&posterior_shared(&z, &same, 50.0), &truth);
    assert!((r.p_true - 1.0 / n as f64).abs() < 1e-6 && (r.entropy - (n as f64).ln()).abs() < 1e-4, "{r:?}");
    assert!(r.top1 <= 100.0 / n as f64 + 1e-9, "{r:?}");
    // Per-instance kappas equal to the shared one give the same posterior (normalisers cancel).
    let a = posterior_shared(&z, &mu, 50.0);
    let b = posterior_per_instance(&z, &mu, &vec![50.0; n as usize]);
    assert!(a.allclose(&b, 1e-4, 1e-6, false));
    // The oracle predictor of a one-hot posterior is that instance's centre.
    let f_bar = mu.shallow_clone() * 0.7;
    let h = oracle_predictor(&Tensor::eye(n, (Kind::Float, Device::Cpu)), &f_bar);
    assert!(h.allclose(&f_bar, 1e-6, 1e-7, false));
}

#[test]
fn two_nn_recovers_known_intrinsic_dimensions() {
    tch::manual_seed(1);
    for d in [2i64, 5, 8] {
        // d-dimensional Gaussian data embedded in 32 dimensions by a random orthogonal map.
        let x = Tensor::randn([3000, d], (Kind::Double, Device::Cpu));
        let (q, _) = Tensor::linalg_qr(&Tensor::randn([32, 32], (Kind::Double, Device::Cpu)), "reduced");
        let emb = x.matmul(&q.narrow(0, 0, d));
        let est = two_nn(&emb);
        assert!((est / d as f64 - 1.0).abs() < 0.15, "d={d}: TwoNN {est}");
    }
    // Duplicates are ignored.
    let x = Tensor::randn([500, 3], (Kind::Double, Device::Cpu));
    let dup = Tensor::cat(&[&x, &x], 0);
    assert!((two_nn(&dup) / 3.0 - 1.0).abs() < 0.3);
}

#[test]
fn levina_bickel_recovers_known_intrinsic_dimensions() {
    tch::manual_seed(2);
    for d in [2i64, 5, 8] {
        let x = Tensor::randn([3000, d], (Kind::Double, Device::Cpu));
        let (q, _) = Tensor::linalg_qr(&Tensor::randn([32, 32], (Kind::Double, Device::Cpu)), "reduced");
        let est = mle_intrinsic_dim(&x.matmul(&q.narrow(0, 0, d)), 20);
        assert!((est / d as f64 - 1.0).abs() < 0.15, "d={d}: MLE {est}");
    }
}

#[test]
fn kernel_posterior_reduces_to_the_shared_one_and_identifies_separated_instances() {
    tch::manual_seed(3);
    let n = 40;
    let mu = Tensor::eye(n, (Kind::Float, Device::Cpu));
    let truth = Tensor::arange(n, (Kind::Int64, Device::Cpu)).repeat([3]);
    let z = mu.index_select(0, &truth) + Tensor::randn([3 * n, n], (Kind::Float, Device::Cpu)) * 0.05;
    // One bank view per instance at its centre: the mixture is one vMF kernel, the shared posterior.
    let a = posterior_kernel(&z, &mu.unsqueeze(1), 20.0);
    let b = posterior_shared(&z, &mu, 20.0);
    assert!(a.allclose(&b, 1e-5, 1e-6, false));
    // K noisy views per instance around separated centres: identification is perfect.
    let noisy = mu.unsqueeze(1) + Tensor::randn([n, 6, n], (Kind::Float, Device::Cpu)) * 0.05;
    let bank = l2_normalize(&noisy.view([-1, n])).view([n, 6, n]); // unit views
    let r = instance_id(&posterior_kernel(&z, &bank, 50.0), &truth);
    assert_eq!((r.top1, r.top5), (100.0, 100.0));
    // Every instance with the same views: the posterior is uniform.
    let same = bank.narrow(0, 0, 1).expand([n, 6, n], false).contiguous();
    let r = instance_id(&posterior_kernel(&z, &same, 50.0), &truth);
    assert!((r.p_true - 1.0 / n as f64).abs() < 1e-6, "{r:?}");
}
