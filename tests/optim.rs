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
