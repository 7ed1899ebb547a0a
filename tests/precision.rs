//! The speed options must not change what is learned: bf16 and fp16 autocast (checked on the
//! CPU's autocast, the same mechanism as CUDA's) keep weights and loss in fp32 and stay close
//! to fp32; fp16's loss scaler keeps the gradients fp16 would flush to zero; `auto` picks the
//! precision the GPU's tensor cores run; channels-last weights compute the same function and
//! save as usual.
use simsiam::config::{Config, Precision};
use simsiam::objective::{External, Objective};
use simsiam::optim::Sgd;
use simsiam::precision::{
    auto_for_capability, autocast, autocast_kind, channels_last, is_channels_last, vars_to_channels_last, LossScaler,
};
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
fn precision_auto_follows_the_gpu_generation() {
    assert_eq!(autocast_kind(Precision::Auto, Device::Cpu), None);
    assert_eq!(autocast_kind(Precision::Fp32, Device::Cuda(0)), None);
    assert_eq!(autocast_kind(Precision::Bf16, Device::Cpu), Some(Kind::BFloat16));
    assert_eq!(autocast_kind(Precision::Fp16, Device::Cpu), Some(Kind::Half));
    // Without a visible GPU the capability is unknown: bf16, as on the H100 (capability 9.0).
    assert_eq!(autocast_kind(Precision::Auto, Device::Cuda(0)), Some(Kind::BFloat16));
    let gpus = [
        ("H100", Some((9, 0)), Some(Kind::BFloat16)),
        ("A100", Some((8, 0)), Some(Kind::BFloat16)),
        ("RTX 3090", Some((8, 6)), Some(Kind::BFloat16)),
        ("RTX 5090", Some((12, 0)), Some(Kind::BFloat16)),
        ("T4", Some((7, 5)), Some(Kind::Half)),
        ("V100", Some((7, 0)), Some(Kind::Half)),
        ("P100", Some((6, 0)), None),
        ("unknown", None, Some(Kind::BFloat16)),
    ];
    for (gpu, capability, want) in gpus {
        assert_eq!(auto_for_capability(capability), want, "{gpu}");
    }
}

/// `GradScaler`'s arithmetic by hand: the loss times 2^16; gradients divided by it with no
/// overflow found; an inf or a NaN anywhere flags the step (counted as skipped) and halves the
/// scale; 2,000 clean steps in a row double it.
#[test]
fn loss_scaler_scales_unscales_and_adapts_as_pytorch_gradscaler() {
    let mut s = LossScaler::new(Device::Cpu);
    assert_eq!(s.scale_loss(&Tensor::from(-0.75f32)).double_value(&[]), -0.75 * 65536.0);
    let grads = [Tensor::from_slice(&[65536.0f32, -131072.0]), Tensor::from_slice(&[16384.0f32])];
    s.unscale(&grads).unwrap();
    assert_eq!(Vec::<f32>::try_from(&grads[0]).unwrap(), [1.0, -2.0]);
    assert_eq!(Vec::<f32>::try_from(&grads[1]).unwrap(), [0.25]);
    assert_eq!(s.found_inf().double_value(&[0]), 0.0);
    s.update();
    assert_eq!((s.scale.double_value(&[0]), s.growth_tracker.int64_value(&[0])), (65536.0, 1));
    for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        let grads = [Tensor::from_slice(&[1.0f32]), Tensor::from_slice(&[2.0f32, bad])];
        let before = s.scale.double_value(&[0]);
        s.unscale(&grads).unwrap();
        assert_eq!(s.found_inf().double_value(&[0]), 1.0, "{bad}");
        s.update();
        assert_eq!((s.scale.double_value(&[0]), s.growth_tracker.int64_value(&[0])), (before / 2.0, 0), "{bad}");
    }
    assert_eq!(s.skipped_steps(), 3);
    let _ = s.growth_tracker.fill_(LossScaler::GROWTH_INTERVAL - 1);
    s.unscale(&[Tensor::from_slice(&[1.0f32])]).unwrap();
    s.update();
    assert_eq!((s.scale.double_value(&[0]), s.growth_tracker.int64_value(&[0])), (65536.0 / 8.0 * 2.0, 0));
}

/// Why fp16 needs the scaler: a weight gradient of 1e-8 (fp16's smallest subnormal is 6e-8)
/// is lost in an fp16 matmul's backward pass; scaled by 2^16 it survives and, unscaled,
/// equals the fp32 gradient to fp16's precision. bf16 (fp32's exponent range) keeps it unscaled.
#[test]
fn fp16_loses_tiny_gradients_that_loss_scaling_keeps() {
    let x = Tensor::full([1, 8], 1e-4, (Kind::Float, Device::Cpu));
    let w0 = Tensor::full([3, 8], 0.5, (Kind::Float, Device::Cpu));
    // d loss / d w = 1e-4 x: each entry 1e-8.
    let grad = |kind: Option<Kind>, scaler: Option<&LossScaler>| {
        let w = w0.copy().set_requires_grad(true);
        let loss =
            autocast(kind, Device::Cpu, || x.linear(&w, None::<Tensor>)).to_kind(Kind::Float).sum(Kind::Float) * 1e-4;
        match scaler {
            Some(s) => {
                s.scale_loss(&loss).backward();
                s.unscale(&[w.grad()]).unwrap();
            }
            None => loss.backward(),
        }
        w.grad()
    };
    let fp32 = grad(None, None);
    assert!((fp32.mean(Kind::Float).double_value(&[]) - 1e-8).abs() < 1e-12);
    let lost = grad(Some(Kind::Half), None);
    assert!(lost.abs().max().double_value(&[]) < 1e-8, "fp16 without scaling kept {lost}");
    let kept = grad(Some(Kind::Half), Some(&LossScaler::new(Device::Cpu)));
    let rel = ((&kept - &fp32).abs().max() / 1e-8).double_value(&[]);
    assert!(rel < 1e-2, "loss-scaled fp16 gradient off by {rel} of its size");
    let bf16 = grad(Some(Kind::BFloat16), None);
    assert!(((&bf16 - &fp32).abs().max() / 1e-8).double_value(&[]) < 2e-2);
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

/// `run.tf32` (on by default, as PyTorch's `torch.backends.cudnn.allow_tf32`) reaches libtorch's
/// process-wide setting.
#[test]
fn tf32_is_on_by_default_and_switches_libtorchs_setting() {
    use simsiam::precision::{configure_cudnn, cudnn_tf32};
    let on = Config::resolve("tiny", None, &[]).unwrap();
    assert!(on.run.tf32);
    let off = Config::resolve("tiny", None, &["run.tf32=false".into()]).unwrap();
    configure_cudnn(&off.run);
    assert!(!cudnn_tf32());
    configure_cudnn(&on.run);
    assert!(cudnn_tf32());
}
