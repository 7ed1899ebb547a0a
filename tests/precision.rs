//! The speed options must not change what is learned: bf16 autocast (checked on the CPU's
//! autocast, the same mechanism as CUDA's) keeps weights and loss in fp32 and stays close to
//! the fp32 forward; channels-last weights compute the same function and save as usual.
use simsiam::config::{Config, Precision};
use simsiam::objective::{External, Objective};
use simsiam::optim::Sgd;
use simsiam::precision::{autocast_kind, channels_last, is_channels_last, vars_to_channels_last};
use simsiam::train::Network;
use tch::{Device, Kind, Tensor};

/// libtorch's generator is global: tests that seed it and build networks take turns.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn small(extra: &[&str]) -> Config {
    let mut sets: Vec<String> =
        ["model.width=8", "model.dim=64", "model.proj_hidden=64", "model.pred_hidden=16"].map(String::from).into();
    sets.extend(extra.iter().map(|s| s.to_string()));
    Config::resolve("tiny", None, &sets).unwrap()
}

#[test]
fn precision_auto_is_bf16_on_cuda_only() {
    assert_eq!(autocast_kind(Precision::Auto, Device::Cpu), None);
    assert_eq!(autocast_kind(Precision::Auto, Device::Cuda(0)), Some(Kind::BFloat16));
    assert_eq!(autocast_kind(Precision::Fp32, Device::Cuda(0)), None);
    assert_eq!(autocast_kind(Precision::Bf16, Device::Cpu), Some(Kind::BFloat16));
}

#[test]
fn bf16_autocast_keeps_fp32_outputs_weights_and_loss_close_to_fp32() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let x1 = Tensor::randn([16, 3, 32, 32], (Kind::Float, Device::Cpu));
    let x2 = Tensor::randn([16, 3, 32, 32], (Kind::Float, Device::Cpu));
    let run = |precision: &str| {
        tch::manual_seed(3);
        let cfg = small(&[&format!("run.precision=\"{precision}\"")]);
        let net = Network::new(&cfg, Device::Cpu);
        let out = net.model.forward(&x1, &x2, true);
        let z = out.z1.detach();
        let loss = Objective::new(&cfg.objective).loss(&[out], &External::default());
        let mut opt = Sgd::new(net.params(&cfg), 3, 0.9, 5e-4);
        opt.lrs = vec![0.1; 3];
        loss.backward();
        opt.step();
        (net, loss.double_value(&[]), loss.kind(), z)
    };
    let (fp32, l32, _, z32) = run("fp32");
    let (bf16, l16, kind, z16) = run("bf16");
    assert_eq!(bf16.model.autocast, Some(Kind::BFloat16));
    assert_eq!(kind, Kind::Float, "the loss is computed in fp32");
    // bf16 keeps about 3 significant digits through 18 layers: the projections agree in
    // direction to well under a degree, the loss (a mean of cosines near 0 at init) to 1e-2.
    let cos = Tensor::cosine_similarity(&z32, &z16, 1, 1e-8).min().double_value(&[]);
    assert!(cos > 0.999, "cos(z_fp32, z_bf16) down to {cos}");
    assert!((l32 - l16).abs() < 5e-2 && l16.is_finite(), "fp32 loss {l32} vs bf16 {l16}");
    // And bf16 really ran: the two losses are not bit-equal.
    assert_ne!(l32, l16);
    for (name, t) in bf16.vs.variables() {
        assert_eq!(t.kind(), Kind::Float, "{name}: master weights stay fp32");
    }
    let o = bf16.model.forward(&x1, &x2, false);
    assert!([&o.z1, &o.z2, &o.p1, &o.p2, &o.y1].iter().all(|t| t.kind() == Kind::Float));
    // The region is left: a plain matmul afterwards is fp32.
    assert_eq!(x1.flatten(1, -1).matmul(&x1.flatten(1, -1).tr()).kind(), Kind::Float);
    drop(fp32);
}

#[test]
fn channels_last_weights_compute_the_same_function_and_save_dense() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(5);
    let cfg = small(&["run.precision=\"fp32\""]);
    let net = Network::new(&cfg, Device::Cpu);
    let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
    let before = net.model.features(&x, false);
    vars_to_channels_last(&net.vs);
    let conv = net.vs.variables().into_iter().find(|(n, _)| n == "backbone.conv1.weight").unwrap().1;
    assert!(is_channels_last(&conv) && !conv.is_contiguous());
    let xl = channels_last(&x);
    assert!(is_channels_last(&xl));
    assert_eq!(xl.size(), x.size());
    let after = net.model.features(&xl, false);
    let d = (&before - &after).abs().max().double_value(&[]);
    assert!(d < 1e-4, "channels-last changed the features by {d}");
    // A checkpoint of channels-last weights loads back into a fresh model.
    let tmp = tempfile::tempdir().unwrap();
    let opt = Sgd::new(net.params(&cfg), 3, 0.9, 5e-4);
    let dir = simsiam::checkpoint::save(tmp.path(), &net.vs, &opt, Default::default(), &[], 2).unwrap();
    let mut fresh = Network::new(&cfg, Device::Cpu);
    simsiam::checkpoint::load_model(&mut fresh.vs, &dir).unwrap();
    let again = fresh.model.features(&x, false);
    assert!((&before - &again).abs().max().double_value(&[]) < 1e-5);
}
