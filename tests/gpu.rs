//! CUDA paths. Each test skips (with a message) when no CUDA device is visible, so CI, which
//! has no GPU, passes; run them on a GPU machine with `scripts/test.sh --test gpu -- --test-threads 1`
//! (several set libtorch's global seed, so they must not run at once).
mod common;
use simsiam::augment::*;
use simsiam::config::Config;
use simsiam::train::{step, views, Network, StepTargets};
use tch::{Device, Kind, Tensor};

fn cuda() -> Option<Device> {
    simsiam::device::load_cuda_backend();
    if tch::Cuda::is_available() {
        Some(Device::Cuda(0))
    } else {
        eprintln!("skipped: no CUDA device visible");
        None
    }
}

#[test]
fn cuda_augmentation_ops_match_cpu_for_the_same_parameters() {
    let Some(dev) = cuda() else { return };
    tch::manual_seed(1);
    let x = Tensor::rand([8, 3, 32, 32], (Kind::Float, Device::Cpu));
    let f = Tensor::rand([8], (Kind::Float, Device::Cpu)) + 0.5;
    let h = Tensor::rand([8], (Kind::Float, Device::Cpu)) * 0.2 - 0.1;
    let boxes = sample_crop_boxes(Draw::whole(8, Device::Cpu), 32, 32, [0.2, 1.0], [0.75, 4.0 / 3.0]);
    let flip = Tensor::rand([8], (Kind::Float, Device::Cpu)).lt(0.5);
    let on = Tensor::ones([8], (Kind::Bool, Device::Cpu));
    let check = |cpu: Tensor, gpu: Tensor| assert!(cpu.allclose(&gpu.to_device(Device::Cpu), 1e-4, 1e-5, false));
    let g = |t: &Tensor| t.to_device(dev);
    check(adjust_brightness(&x, &f), adjust_brightness(&g(&x), &g(&f)));
    check(adjust_contrast(&x, &f), adjust_contrast(&g(&x), &g(&f)));
    check(adjust_saturation(&x, &f), adjust_saturation(&g(&x), &g(&f)));
    check(adjust_hue(&x, &h), adjust_hue(&g(&x), &g(&h)));
    check(resized_crop_flip(&x, &boxes, &flip, 32), resized_crop_flip(&g(&x), &g(&boxes), &g(&flip), 32));
    // Shrunk to 12 px: the antialiasing's wider filter (and TF32 matrix products would show).
    check(resized_crop_flip(&x, &boxes, &flip, 12), resized_crop_flip(&g(&x), &g(&boxes), &g(&flip), 12));
    check(gaussian_blur(&x, &f, &on, 5), gaussian_blur(&g(&x), &g(&f), &g(&on), 5));
}

#[test]
fn cuda_training_steps_lower_the_loss_on_a_fixed_batch() {
    let Some(dev) = cuda() else { return };
    let cfg = Config::resolve("tiny", None, &["optim.batch_size=64".into()]).unwrap();
    tch::manual_seed(0);
    let net = Network::new(&cfg, dev);
    assert!(net.vs.device().is_cuda());
    let objective = simsiam::objective::Objective::new(&cfg.objective);
    let aug = Augmenter::new(&cfg.augment, 32, dev);
    let mut opt = simsiam::optim::Sgd::new(net.params(&cfg), 2, 0.9, 5e-4);
    opt.lrs = vec![0.05; 2];
    let images = Tensor::randint(256, [64, 32, 32, 3], (Kind::Uint8, dev));
    let xs = views(&aug, &images, 2);
    let first =
        step(&net.model, &objective, &mut opt, &xs, StepTargets::default(), None).unwrap().loss.double_value(&[]);
    let mut last = first;
    for _ in 0..30 {
        last =
            step(&net.model, &objective, &mut opt, &xs, StepTargets::default(), None).unwrap().loss.double_value(&[]);
    }
    assert!(last.is_finite() && last < first - 0.1, "loss {first} -> {last}");
}

/// A one-rank data-parallel job on the GPU goes through NCCL (TCPStore rendezvous,
/// ProcessGroupNCCL from the embedded helper, DDP's Reducer) and trains.
#[test]
fn cuda_one_rank_nccl_job_trains() {
    let Some(_) = cuda() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train.bin");
    common::write_cifar(&train, simsiam::data::CifarKind::Cifar10, 512, 10);
    let port = simsiam::dist::free_port().unwrap();
    for (k, v) in [("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")] {
        std::env::set_var(k, v);
    }
    std::env::set_var("MASTER_PORT", port.to_string());
    let sets: Vec<String> = [
        format!("data.train={:?}", train.display().to_string()),
        format!("run.out_dir={:?}", tmp.path().join("run").display().to_string()),
        "run.device=\"cuda\"".into(),
        "run.epochs=2".into(),
        "model.width=8".into(),
        "model.dim=128".into(),
        "model.proj_hidden=128".into(),
        "model.pred_hidden=32".into(),
        "data.train_limit=0".into(),
        "monitor.knn_at_init=false".into(),
    ]
    .into();
    let cfg = Config::resolve("tiny", None, &sets).unwrap();
    let summary = simsiam::train::train(&cfg, &Default::default());
    for k in ["RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"] {
        std::env::remove_var(k);
    }
    let summary = summary.unwrap();
    assert_eq!(summary.steps, 2 * (512 / 64));
    assert!(summary.final_loss.is_finite() && summary.final_loss < 0.0, "{summary:?}");
}

/// The CUDA defaults (bf16 autocast + channels-last) compute what fp32 computes, up to bf16's
/// precision, and their checkpoints save and load.
#[test]
fn cuda_fast_defaults_match_fp32() {
    let Some(dev) = cuda() else { return };
    let sets = |p: &str| -> Vec<String> { vec![format!("run.precision=\"{p}\""), "model.width=16".into()] };
    let mut slow_cfg = Config::resolve("tiny", None, &sets("fp32")).unwrap();
    slow_cfg.run.channels_last = false;
    let fast_cfg = Config::resolve("tiny", None, &sets("auto")).unwrap();
    let slow = Network::new(&slow_cfg, dev);
    let mut fast = Network::new(&fast_cfg, dev);
    fast.vs.copy(&slow.vs).unwrap();
    assert_eq!((fast.model.autocast, fast.model.channels_last), (Some(Kind::BFloat16), true));
    let conv = fast.vs.variables().into_iter().find(|(n, _)| n == "backbone.conv1.weight").unwrap().1;
    assert!(simsiam::precision::is_channels_last(&conv));
    let x1 = Tensor::randn([64, 3, 32, 32], (Kind::Float, dev));
    let x2 = Tensor::randn([64, 3, 32, 32], (Kind::Float, dev));
    let (a, b) = (slow.model.forward(&x1, &x2, true), fast.model.forward(&x1, &x2, true));
    assert_eq!(b.z1.kind(), Kind::Float);
    let cos = Tensor::cosine_similarity(&a.z1, &b.z1, 1, 1e-8).min().double_value(&[]);
    assert!(cos > 0.99, "cos(z_fp32, z_fast) down to {cos}");
    let tmp = tempfile::tempdir().unwrap();
    let opt = simsiam::optim::Sgd::new(fast.params(&fast_cfg), 3, 0.9, 5e-4);
    let dir = simsiam::checkpoint::save(tmp.path(), &fast.vs, &opt, Default::default(), &[], 2).unwrap();
    // Loaded into an fp32, contiguous network: every tensor (BN running statistics included,
    // which the bf16 forward above updated) as the fast network holds it.
    let mut again = Network::new(&slow_cfg, dev);
    simsiam::checkpoint::load_model(&mut again.vs, &dir).unwrap();
    let saved = fast.vs.variables();
    for (name, t) in again.vs.variables() {
        let d = (&t - &saved[&name]).abs().max().double_value(&[]);
        assert!(d == 0.0, "{name}: differs by {d} after save/load");
    }
}

/// PyTorch's fused SGD kernel (the default update) equals the per-parameter form on the GPU,
/// channels-last weights included.
#[test]
fn cuda_fused_sgd_equals_the_per_parameter_update() {
    let Some(dev) = cuda() else { return };
    common::fused_sgd_equals_per_parameter(dev);
}

/// fp16's loss-scaled update on the GPU (the fused kernel reads the overflow flag on the
/// device): overflowed steps skipped, the rest equal to plain SGD.
#[test]
fn cuda_loss_scaled_sgd_skips_overflowed_steps_and_otherwise_equals_plain_sgd() {
    let Some(dev) = cuda() else { return };
    common::loss_scaled_sgd_matches_plain_sgd(dev);
}

/// Two training steps of each method (SimSiam, SimCLR, BYOL, MoCo, SwAV, and SimSiam in the
/// official code's layout) on CUDA, in float32 with cuDNN's TF32 off (`run.tf32 = false`),
/// against PyTorch's with lightly's losses on the CPU (`tests/fixtures/pytorch/steps*`): the
/// losses within 1e-4, every weight, BN statistic and EMA tensor within 1e-2 of its update.
#[test]
fn cuda_steps_of_each_method_are_pytorchs() {
    let Some(dev) = cuda() else { return };
    /// Puts libtorch's TF32 setting back, whatever the test does.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            simsiam::precision::set_cudnn_tf32(self.0);
        }
    }
    let _restore = Restore(simsiam::precision::cudnn_tf32());
    simsiam::precision::set_cudnn_tf32(false);
    common::steps::two_steps_of_each_method_are_pytorchs(dev, 1e-2);
}

/// `run.cuda_graph`: after the eager warm-up, the step captured once and replayed equals the
/// eager steps (same views, same per-step lr), and a replay reads the lr of its own step; for
/// SimSiam and for SwAV (whose step also normalises its prototypes in place).
#[test]
fn cuda_graph_steps_equal_eager_steps() {
    let Some(dev) = cuda() else { return };
    for method in ["simsiam", "swav"] {
        graph_steps_equal_eager_steps(dev, method);
    }
}

/// The trainable weights that only the update moves: all but SwAV's prototypes, which every
/// step renormalises, at lr 0 too.
fn moved_by_lr(net: &Network) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = net.vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().filter(|(n, t)| t.requires_grad() && !n.starts_with("prototypes")).map(|(_, t)| t).collect()
}

fn graph_steps_equal_eager_steps(dev: Device, method: &str) {
    let set = ["optim.batch_size=64".into(), "model.width=16".into()];
    let cfg = Config::resolve_method("tiny", method, None, &set).unwrap();
    let objective = simsiam::objective::Objective::new(&cfg.objective);
    let aug = Augmenter::new(&cfg.augment, 32, dev);
    let batches: Vec<Vec<Tensor>> =
        (0..8).map(|_| views(&aug, &Tensor::randint(256, [64, 32, 32, 3], (Kind::Uint8, dev)), 2)).collect();
    // The last step's lr is 0: a replay that kept the captured lr would move the weights.
    let lr_at = |s: usize| if s == 7 { 0.0 } else { 0.05 * (1.0 - s as f64 / 10.0) };
    let train = |graph: bool| {
        tch::manual_seed(3);
        let net = Network::new(&cfg, dev);
        let mut opt = simsiam::optim::Sgd::new(net.params(&cfg), 3, 0.9, 5e-4);
        let mut stepper = simsiam::graph::Stepper::new(graph, dev);
        let mut losses = Vec::new();
        let mut before_last = Vec::new();
        for (s, xs) in batches.iter().enumerate() {
            opt.lrs = vec![lr_at(s); 3];
            if s == 7 {
                before_last = moved_by_lr(&net).iter().map(|t| t.copy()).collect();
            }
            let out = stepper.step(&net.model, &objective, &mut opt, xs, StepTargets::default(), None).unwrap();
            losses.push(out.loss.double_value(&[]));
        }
        assert_eq!(stepper.captured(), graph);
        for (a, b) in moved_by_lr(&net).iter().zip(&before_last) {
            assert_eq!((a - b).abs().max().double_value(&[]), 0.0, "lr 0 moved a weight (graph {graph})");
        }
        (losses, net.vs.trainable_variables())
    };
    let (eager_losses, eager_w) = train(false);
    let (graph_losses, graph_w) = train(true);
    for (s, (a, b)) in eager_losses.iter().zip(&graph_losses).enumerate() {
        assert!((a - b).abs() < 1e-3, "{method} step {s}: loss {a} eager, {b} graph");
    }
    for (a, b) in eager_w.iter().zip(&graph_w) {
        let d = (a - b).abs().max().double_value(&[]);
        assert!(d < 1e-3, "{method}: weights differ by {d}");
    }
}

/// `run.prefetch` on a GPU: step k + 1's views are made on a second stream while step k runs.
/// Each must equal the views made in turn from the same seed, read at once on the step's stream:
/// the views are queued after a long matmul chain, so a take that did not wait for the second
/// stream would read them half made.
#[test]
fn cuda_prefetched_views_equal_views_made_in_turn() {
    let Some(dev) = cuda() else { return };
    let cfg = Config::resolve("cifar10", None, &[]).unwrap();
    let aug = Augmenter::new(&cfg.augment, 32, dev);
    let store = Tensor::randint(256, [4 * 512, 32, 32, 3], (Kind::Uint8, dev));
    let slow = Tensor::randn([2048, 2048], (Kind::Float, dev)) / 45.0;
    let make = |k: usize| {
        let mut y = slow.shallow_clone();
        for _ in 0..50 {
            y = y.matmul(&slow);
        }
        tch::manual_seed(k as i64);
        views(&aug, &store.narrow(0, (k % 4) as i64 * 512, 512), 2)
    };
    let want: Vec<Vec<Tensor>> = (0..7).map(make).collect();
    let mut prefetch = simsiam::prefetch::Prefetcher::new(true, dev);
    for (k, want) in want.iter().enumerate().take(6) {
        let xs = prefetch.take(k, || make(k)).unwrap();
        prefetch.ahead(k + 1, || make(k + 1)).unwrap();
        for (x, w) in xs.iter().zip(want) {
            assert!(x.equal(w), "step {k}: the prefetched views differ from those made in turn");
        }
    }
}

/// The per-step losses of a 2-epoch `tiny` run on the GPU on 512 CIFAR-style images written
/// to `dir`, with `extra` overrides (cuDNN autotuning off, so runs differ only by cuDNN's
/// nondeterminism).
fn gpu_loss_curve(dir: &std::path::Path, name: &str, extra: &[&str]) -> Vec<f64> {
    let train = dir.join("train.bin");
    if !train.exists() {
        common::write_cifar(&train, simsiam::data::CifarKind::Cifar10, 512, 10);
    }
    let run = dir.join(name);
    let mut sets: Vec<String> = [
        format!("data.train={:?}", train.display().to_string()),
        format!("run.out_dir={:?}", run.display().to_string()),
        "run.device=\"cuda\"".into(),
        "run.epochs=2".into(),
        "run.cudnn_benchmark=false".into(),
        "monitor.log_every=1".into(),
        "monitor.knn_at_init=false".into(),
        "monitor.knn_every=0".into(),
        "data.train_limit=0".into(),
    ]
    .into();
    sets.extend(extra.iter().map(|s| s.to_string()));
    let cfg = Config::resolve("tiny", None, &sets).unwrap();
    let summary = simsiam::train::train(&cfg, &Default::default()).unwrap();
    assert_eq!(summary.steps, 2 * (512 / 64));
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("loss").and_then(|l| l.as_f64()))
        .collect()
}

/// Each of `runs` (a name and its overrides) follows the plain run's loss curve at every step.
fn assert_curves_follow_the_plain_run(runs: &[(&str, &[&str])]) {
    let tmp = tempfile::tempdir().unwrap();
    let plain = gpu_loss_curve(tmp.path(), "plain", &[]);
    assert_eq!(plain.len(), 16);
    for (name, extra) in runs {
        let got = gpu_loss_curve(tmp.path(), name, extra);
        assert_eq!(got.len(), plain.len(), "{name}");
        for (s, (a, b)) in plain.iter().zip(&got).enumerate() {
            assert!((a - b).abs() < 2e-3, "{name}, step {s}: loss {a} plain, {b}");
        }
    }
}

/// fp16 autocast with loss scaling on the GPU (what `run.precision = "auto"` picks on a V100 or
/// a T4): a run's loss curve follows the fp32 run's, and with the step captured as a CUDA graph
/// (the scaler's unscale, overflow flag and update all on the device) it follows the eager fp16
/// run. The device line names the GPU's compute capability, from which `auto` chose.
#[test]
fn cuda_fp16_training_follows_fp32_and_runs_as_a_graph() {
    let Some(dev) = cuda() else { return };
    assert!(simsiam::device::describe(dev).contains("compute capability"), "{}", simsiam::device::describe(dev));
    let tmp = tempfile::tempdir().unwrap();
    let fp32 = gpu_loss_curve(tmp.path(), "fp32", &["run.precision=\"fp32\"", "run.channels_last=false"]);
    let fp16 = gpu_loss_curve(tmp.path(), "fp16", &["run.precision=\"fp16\""]);
    let graph = gpu_loss_curve(tmp.path(), "fp16-graph", &["run.precision=\"fp16\"", "run.cuda_graph=true"]);
    assert_eq!((fp16.len(), graph.len()), (fp32.len(), fp32.len()));
    for (s, ((a, b), c)) in fp32.iter().zip(&fp16).zip(&graph).enumerate() {
        assert!((a - b).abs() < 2e-2, "step {s}: loss {a} fp32, {b} fp16");
        assert!((b - c).abs() < 2e-3, "step {s}: loss {b} fp16 eager, {c} fp16 graph");
    }
    let summary = std::fs::read_to_string(tmp.path().join("fp16/summary.json")).unwrap();
    assert!(summary.contains("fp16 autocast with loss scaling"), "{summary}");
}

/// Training on a GPU with `run.prefetch`, alone and with `run.cuda_graph`, follows the plain
/// run's loss curve (up to cuDNN's run-to-run differences), across an epoch boundary.
#[test]
fn cuda_prefetch_and_graph_training_follow_the_plain_run() {
    let Some(_) = cuda() else { return };
    assert_curves_follow_the_plain_run(&[
        ("prefetch", &["run.prefetch=true"]),
        ("both", &["run.prefetch=true", "run.cuda_graph=true"]),
    ]);
}

/// `data.store = "host"`: the images stay in host memory, each batch gathered there and copied
/// over from pinned memory on the current stream. Its batches are the device store's, bit for
/// bit (also when the copy is queued behind a long matmul chain), and training from it, alone
/// and with `run.prefetch` (the copy then queued on the second stream), follows the device
/// store's loss curve.
#[test]
fn cuda_host_store_gathers_and_trains_as_the_device_store() {
    use simsiam::config::StorePlace;
    let Some(dev) = cuda() else { return };
    let store = simsiam::data::ImageStore::new(
        Tensor::randint(256, [2048, 32, 32, 3], (Kind::Uint8, Device::Cpu)),
        Tensor::zeros([2048], (Kind::Int64, Device::Cpu)),
        Vec::new(),
        vec![String::new(); 2048],
    );
    let on_gpu = store.place(dev, StorePlace::Device).unwrap();
    let on_host = store.place(dev, StorePlace::Host).unwrap();
    assert!(!on_gpu.on_host_for(dev) && on_host.on_host_for(dev));
    assert_eq!(on_host.labels.device(), dev);
    let slow = Tensor::randn([2048, 2048], (Kind::Float, dev)) / 45.0;
    for k in 0..4i64 {
        let order = Tensor::randperm(2048, (Kind::Int64, Device::Cpu)).narrow(0, 0, 512);
        let mut y = slow.shallow_clone();
        for _ in 0..50 {
            y = y.matmul(&slow);
        }
        let got = on_host.gather(&order, dev);
        assert_eq!(got.device(), dev);
        assert!(got.equal(&on_gpu.gather(&order.to_device(dev), dev)), "batch {k}");
    }
    assert_curves_follow_the_plain_run(&[
        ("host", &["data.store=\"host\""]),
        ("host-prefetch", &["data.store=\"host\"", "run.prefetch=true"]),
    ]);
}
