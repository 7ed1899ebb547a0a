//! The linear probe learns a linearly separable set; top-k accuracy by hand.
use simsiam::eval::linear::{probe_features, topk_accuracy, ProbeConfig};
use tch::{Device, Kind, Tensor};

#[test]
fn probe_learns_a_linearly_separable_set_to_100_percent() {
    tch::manual_seed(0);
    // 4 classes, 16-d features: class c is a Gaussian blob around 3 * e_c.
    let make = |n: i64| {
        let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(4);
        let x = Tensor::randn([n, 16], (Kind::Float, Device::Cpu)) * 0.3 + y.one_hot(16).to_kind(Kind::Float) * 3.0;
        (x, y)
    };
    let (tx, ty) = make(400);
    let (vx, vy) = make(200);
    let cfg = ProbeConfig { epochs: 30, batch_size: 64, lr: 0.5, augment: false, ..Default::default() };
    let r = probe_features(&tx, &ty, &vx, &vy, 4, &cfg);
    assert_eq!(r.top1, 100.0, "{r:?}");
    assert_eq!(r.top5, 100.0);
    // With BN before the classifier, too.
    let r = probe_features(&tx, &ty, &vx, &vy, 4, &ProbeConfig { bn: true, ..cfg });
    assert_eq!(r.top1, 100.0, "{r:?}");
}

#[test]
fn topk_accuracy_by_hand() {
    let logits = Tensor::from_slice(&[
        0.9f32, 0.1, 0.0, 0.0, 0.0, 0.0, 0.2, 0.8, 0.1, 0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5,
    ])
    .view([3, 6]);
    // Row 0: top-1 = 0 (label 0: hit). Row 1: top-1 = 1 (label 0: miss, in top-5).
    // Row 2: ranks 5,4,3,2,1 (label 0: miss in top-5).
    let labels = Tensor::from_slice(&[0i64, 0, 0]);
    let (t1, t5) = topk_accuracy(&logits, &labels);
    assert!((t1 - 100.0 / 3.0).abs() < 1e-4 && (t5 - 200.0 / 3.0).abs() < 1e-4, "{t1} {t5}");
}

/// The official code's LARS (`main_lincls.py --lars`, `simsiam/optimizer.py`), by hand: a
/// weight matrix's update `d = g + wd w` is scaled by `trust ||w|| / ||d||`; a bias takes its
/// plain gradient, without weight decay or scaling.
#[test]
fn lars_scales_each_update_by_the_trust_ratio() {
    use simsiam::optim::{Param, Sgd};
    // w = [[3, 4]] (norm 5), g = [[0, 2]], wd = 0.1, trust 0.001, lr 1, no momentum yet:
    // d = g + wd w = (0.3, 2.4), ||d|| = sqrt(5.85); ratio = 0.001 * 5 / sqrt(5.85); w -= ratio d.
    // b = [1], g_b = [0.5]: b -= 0.5.
    let w = Tensor::from_slice(&[3.0f64, 4.0]).view([1, 2]).set_requires_grad(true);
    let b = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
    ((&w * Tensor::from_slice(&[0.0f64, 2.0]).view([1, 2])).sum(Kind::Double) + &b * 0.5).sum(Kind::Double).backward();
    let params = vec![
        Param { name: "w".into(), tensor: w.shallow_clone(), group: 0 },
        Param { name: "b".into(), tensor: b.shallow_clone(), group: 0 },
    ];
    let mut opt = Sgd::new(params, 1, 0.9, 0.1);
    opt.lrs = vec![1.0];
    opt.lars_trust = Some(0.001);
    opt.step();
    let ratio = 0.001 * 5.0 / 5.85f64.sqrt();
    let got = Vec::<f64>::try_from(w.detach().view([-1])).unwrap();
    let want = [3.0 - ratio * 0.3, 4.0 - ratio * 2.4];
    assert!((got[0] - want[0]).abs() < 1e-12 && (got[1] - want[1]).abs() < 1e-12, "{got:?} against {want:?}");
    assert_eq!(b.detach().double_value(&[0]), 0.5);
    // The probe with LARS learns the separable set too.
    tch::manual_seed(0);
    let y = Tensor::arange(400, (Kind::Int64, Device::Cpu)).remainder(4);
    let x = Tensor::randn([400, 16], (Kind::Float, Device::Cpu)) * 0.3 + y.one_hot(16).to_kind(Kind::Float) * 3.0;
    let cfg = ProbeConfig { epochs: 30, batch_size: 64, lr: 5.0, augment: false, lars: true, ..Default::default() };
    assert_eq!(probe_features(&x, &y, &x, &y, 4, &cfg).top1, 100.0);
}

/// A probe is its config's, seed included: two fits with one seed end with the same loss to the
/// bit whatever the random state before them (the head's initial weights were once drawn
/// before the probe set its seed, so `eval linear` gave another figure each time), and another
/// seed gives another fit.
#[test]
fn probe_repeats_with_its_seed() {
    tch::manual_seed(0);
    let x = Tensor::randn([256, 16], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(4, [256], (Kind::Int64, Device::Cpu));
    let cfg = ProbeConfig { epochs: 2, batch_size: 64, lr: 0.5, augment: false, ..Default::default() };
    let fit = |state: i64, cfg: &ProbeConfig| {
        tch::manual_seed(state);
        probe_features(&x, &y, &x, &y, 4, cfg).train_loss
    };
    let first = fit(1, &cfg);
    assert_eq!(first, fit(2, &cfg));
    assert_ne!(first, fit(1, &ProbeConfig { seed: cfg.seed + 1, ..cfg.clone() }));
}
