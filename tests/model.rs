//! The backbone's initialisation: each `model.conv_init` gives the weight scale of its
//! PyTorch counterpart, and `zero_init_residual` zeroes exactly the last BN gamma of each block.
use simsiam::config::Config;
use simsiam::train::Network;
use tch::{Device, Kind};

fn network(sets: &[&str]) -> Network {
    let mut s: Vec<String> = vec!["model.width=16".into()];
    s.extend(sets.iter().map(|x| x.to_string()));
    tch::manual_seed(3);
    Network::new(&Config::resolve("cifar10", None, &s).unwrap(), Device::Cpu)
}

/// (std, max |w|) of a variable.
fn stats(net: &Network, name: &str) -> (f64, f64) {
    let t = net.vs.variables()[name].to_kind(Kind::Double);
    (t.std(true).double_value(&[]), t.abs().max().double_value(&[]))
}

#[test]
fn conv_init_matches_torchvision_and_nn_conv2d() {
    // layer2.0.conv2: 32 -> 32 channels, 3x3: fan_in = fan_out = 288.
    let name = "backbone.layer2.0.conv2.weight";
    let fan: f64 = 32.0 * 9.0;
    let (std, _) = stats(&network(&[]), name);
    let want = (2.0 / fan).sqrt(); // torchvision: kaiming_normal_(fan_out, relu)
    assert!((std / want - 1.0).abs() < 0.05, "kaiming_fan_out: std {std}, expected {want}");

    let (std, max) = stats(&network(&["model.conv_init=\"pytorch\""]), name);
    let bound = 1.0 / fan.sqrt(); // nn.Conv2d: kaiming_uniform_(a = sqrt(5)) = U(+-1/sqrt(fan_in))
    assert!((std / (bound / 3f64.sqrt()) - 1.0).abs() < 0.05, "pytorch: std {std}, expected {}", bound / 3f64.sqrt());
    assert!(max <= bound && max > 0.95 * bound, "pytorch: max |w| {max}, bound {bound}");

    // The stem: fan_in = 27, fan_out = 16 * 9 = 144 (the two rules differ here).
    let (std, _) = stats(&network(&[]), "backbone.conv1.weight");
    assert!((std / (2.0f64 / 144.0).sqrt() - 1.0).abs() < 0.15, "stem std {std}");
}

#[test]
fn zero_init_residual_zeroes_each_blocks_last_gamma_only() {
    for zero in [true, false] {
        let net = network(&[&format!("model.zero_init_residual={zero}")]);
        for (n, t) in net.vs.variables() {
            if n.starts_with("backbone.") && n.ends_with(".weight") && n.contains("bn") {
                let is_last = n.contains(".bn2.");
                let want = if zero && is_last { 0.0 } else { 1.0 };
                let got = t.mean(Kind::Float).double_value(&[]);
                assert_eq!(got, want, "{n}: gamma mean {got}, zero_init_residual = {zero}");
            }
        }
    }
}

/// `model.stem_relu = false` (a backbone built as lightly's examples build it) drops only the
/// ReLU after the stem's BN: the same variables, other features. With zero-init
/// residual blocks it changes nothing at the start, since the first block's own ReLU follows.
#[test]
fn stem_relu_off_changes_the_features_only_when_the_branches_are_on() {
    let x = tch::Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
    for zero in [false, true] {
        let z = format!("model.zero_init_residual={zero}");
        let (on, mut off) = (network(&[&z]), network(&[&z, "model.stem_relu=false"]));
        let names = |n: &Network| {
            let mut v: Vec<String> = n.vs.variables().into_keys().collect();
            v.sort();
            v
        };
        assert_eq!(names(&on), names(&off), "the same variables");
        // The same weights (tests run in parallel threads and share libtorch's generator).
        off.vs.copy(&on.vs).unwrap();
        let (f_on, f_off) = (on.model.features(&x, true), off.model.features(&x, true));
        let diff = (&f_on - &f_off).abs().max().double_value(&[]);
        if zero {
            assert_eq!(diff, 0.0, "zero-init: the first block's ReLU makes the stem's redundant");
        } else {
            assert!(diff > 1e-3, "branches on: features should differ, max |diff| {diff}");
        }
    }
}
