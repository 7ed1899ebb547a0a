//! The SGD update: the fused kernel path (PyTorch's `_fused_sgd_`) against the per-parameter
//! reference and against hand-computed values.
mod common;
use simsiam::optim::{Param, Sgd};
use tch::{Device, Kind, Tensor};

/// `loss = sum(w^2)` for one scalar parameter `w0 = 1`, wd 0.1, momentum 0.9, lr 0.5:
/// step 1: d = 2 + 0.1 = 2.1, buf = 2.1, w = 1 - 1.05 = -0.05;
/// step 2: d = -0.1 - 0.005 = -0.105, buf = 1.89 - 0.105 = 1.785, w = -0.05 - 0.8925 = -0.9425.
#[test]
fn fused_sgd_matches_the_hand_computed_update() {
    for fused in [true, false] {
        let w = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut opt = Sgd::new(vec![Param { name: "w".into(), tensor: w.shallow_clone(), group: 0 }], 1, 0.9, 0.1);
        opt.fused = fused;
        opt.lrs = vec![0.5];
        let mut seen = vec![];
        for _ in 0..2 {
            opt.zero_grad();
            (&w * &w).sum(Kind::Float).backward();
            opt.step();
            seen.push(w.double_value(&[0]));
        }
        assert!(opt.fused == fused, "the fused kernels ran on the CPU (no fallback)");
        assert!((seen[0] - -0.05).abs() < 1e-6 && (seen[1] - -0.9425).abs() < 1e-6, "fused {fused}: {seen:?}");
    }
}

/// Many parameters in two groups (own lr and wd), one of them channels-last, one without a
/// gradient in the first step: three fused steps equal three per-parameter steps, momentum
/// buffers included, and a save/load in the middle changes nothing.
#[test]
fn fused_sgd_equals_the_per_parameter_update() {
    common::fused_sgd_equals_per_parameter(Device::Cpu);
}

/// fp16's loss scaling in the update: an overflowed step is skipped whole (weights, momentum)
/// and halves the scale; the other steps equal plain SGD exactly, fused and per parameter, and
/// the scaler's state is saved and loaded with the momentum buffers.
#[test]
fn loss_scaled_sgd_skips_overflowed_steps_and_otherwise_equals_plain_sgd() {
    common::loss_scaled_sgd_matches_plain_sgd(Device::Cpu);
}

/// The `weights` monitor under fp16 loss scaling: a step skipped for overflowed gradients moved
/// no weight, so its relative update reads 0 (the momentum buffer still holds the step before's),
/// and the next clean step's reads as plain SGD's.
#[test]
fn a_skipped_step_reports_no_update() {
    use simsiam::optim::{Param, Sgd};
    use simsiam::precision::LossScaler;
    let w = Tensor::from_slice(&[3.0f32, 4.0]).view([1, 2]).set_requires_grad(true);
    let mut opt = Sgd::new(vec![Param { name: "w".into(), tensor: w.shallow_clone(), group: 0 }], 1, 0.9, 0.0);
    opt.lrs = vec![0.1];
    opt.loss_scaler = Some(LossScaler::new(Device::Cpu));
    // d loss / d w = g.
    let step = |opt: &mut Sgd, g: [f32; 2]| {
        opt.zero_grad();
        let loss = (&w * Tensor::from_slice(&g).view([1, 2])).sum(tch::Kind::Float);
        opt.loss_scaler.as_ref().unwrap().scale_loss(&loss).backward();
        opt.step();
        let (_, norms) = opt.update_norms().unwrap();
        Vec::<f32>::try_from(norms.flatten(0, -1)).unwrap()
    };
    // Clean: buf = g = (0.6, 0.8), |Δw| = 0.1, w = (2.94, 3.92), |w| = 4.9.
    let first = step(&mut opt, [0.6, 0.8]);
    assert!((first[0] - 4.9).abs() < 1e-5 && (first[1] - 0.1).abs() < 1e-6, "{first:?}");
    let skipped = step(&mut opt, [f32::INFINITY, 0.0]);
    assert!((skipped[0] - 4.9).abs() < 1e-5 && skipped[1] == 0.0, "{skipped:?}");
    // Clean again: buf = 0.9 (0.6, 0.8) + (0.6, 0.8) = 1.9 (0.6, 0.8), |Δw| = 0.19, |w| = 4.71.
    let after = step(&mut opt, [0.6, 0.8]);
    assert!((after[0] - 4.71).abs() < 1e-5 && (after[1] - 0.19).abs() < 1e-6, "{after:?}");
}

/// The `weights` monitor after one step, by hand. Loss `sum_i c_i |w_i|² / 2` (gradient
/// `c_i w_i`), wd 0.1, so the first step's buffer is `(c_i + 0.1) w_i` and it moves `w_i` by
/// `lr (c_i + 0.1) |w_i|` to `(1 - lr (c_i + 0.1)) w_i`. Encoder lr 0.2, predictor lr 0.1:
/// - stem `[3, 4]`, c 1: moved 0.2 · 1.1 · 5 = 1.1, now 0.78 · 5 = 3.9;
/// - layer1 `[[1, 0], [0, 0]]`, c 1: moved 0.22, now 0.78; and `[[0, 2]]`, c 3: moved
///   0.2 · 3.1 · 2 = 1.24, now 0.38 · 2 = 0.76; its BN gamma (1-d) is not a weight matrix;
/// - predictor `[[1], [1]]`, c 1: moved 0.1 · 1.1 · √2, now 0.89 · √2;
/// - the projector's weight has no gradient (not in the loss): no `projector` entry;
/// - layer1's residual branch gain is the mean |gamma| of its block's last BN, `bn2`.
#[test]
fn weights_event_reports_norms_and_relative_updates() {
    let m = |rows: &[&[f32]]| Tensor::from_slice2(rows).set_requires_grad(true);
    let ws = [
        ("backbone.conv1.weight", m(&[&[3.0, 4.0]]), 0, 1.0),
        ("backbone.layer1.0.bn1.weight", Tensor::from_slice(&[1.0f32, 1.0]).set_requires_grad(true), 0, 1.0),
        ("backbone.layer1.0.conv1.weight", m(&[&[1.0, 0.0], &[0.0, 0.0]]), 0, 1.0),
        ("backbone.layer1.1.conv2.weight", m(&[&[0.0, 2.0]]), 0, 3.0),
        ("predictor.0.linear.weight", m(&[&[1.0], &[1.0]]), 1, 1.0),
        ("projector.0.linear.weight", m(&[&[2.0]]), 0, 1.0),
        // Block 0's last BN (bn2 after bn1), not in the loss: its gain is the mean |gamma|, 0.375.
        ("backbone.layer1.0.bn2.weight", Tensor::from_slice(&[0.5f32, -0.25]).set_requires_grad(true), 0, 1.0),
    ];
    let params = ws.iter().map(|(n, t, g, _)| Param { name: n.to_string(), tensor: t.shallow_clone(), group: *g });
    let mut opt = Sgd::new(params.collect(), 2, 0.9, 0.1);
    opt.lrs = vec![0.2, 0.1];
    assert!(simsiam::train::weights_event(&opt, 0, 0).is_none(), "no line before the first update");
    opt.zero_grad();
    let loss: Tensor = ws[..5].iter().map(|(_, t, _, c)| t.square().sum(Kind::Float) * (*c / 2.0)).sum();
    loss.backward();
    opt.step();
    let v = simsiam::train::weights_event(&opt, 3, 7).expect("a line after a step");
    assert_eq!((v["event"].as_str(), v["epoch"].as_u64(), v["step"].as_u64()), (Some("weights"), Some(3), Some(7)));
    let mut keys: Vec<&String> = v["norm"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["backbone", "layer1", "predictor", "stem"]);
    let layer1 = (0.78f64.powi(2) + 0.76f64.powi(2)).sqrt();
    let backbone = (3.9f64.powi(2) + layer1.powi(2)).sqrt();
    let want = [
        ("stem", 3.9, 1.1 / 3.9),
        ("layer1", layer1, (0.22f64.powi(2) + 1.24f64.powi(2)).sqrt() / layer1),
        ("predictor", 0.89 * 2f64.sqrt(), 0.11 / 0.89),
        ("backbone", backbone, (1.1f64.powi(2) + 0.22f64.powi(2) + 1.24f64.powi(2)).sqrt() / backbone),
    ];
    for (k, norm, update) in want {
        let (n, u) = (v["norm"][k].as_f64().unwrap(), v["update"][k].as_f64().unwrap());
        assert!(
            (n - norm).abs() < 1e-5 && (u - update).abs() < 1e-5,
            "{k}: |w| {n} (want {norm}), update {u} (want {update})"
        );
    }
    let gains = v["branch_gain"].as_object().unwrap();
    assert_eq!(gains.len(), 2, "{gains:?}");
    for k in ["layer1", "backbone"] {
        assert!((gains[k].as_f64().unwrap() - 0.375).abs() < 1e-7, "{k}: {gains:?}");
    }
}
