//! Two training steps of each method against PyTorch's with lightly's losses, on one device:
//! `tests/methods.rs` (CPU) and `tests/gpu.rs` (CUDA) run it.
use std::collections::HashMap;
use std::path::PathBuf;

use simsiam::config::Config;
use simsiam::graph::Stepper;
use simsiam::objective::{Objective, ViewQueue};
use simsiam::train::{Network, StepTargets};
use tch::{Device, Tensor};

/// The weights' and views' file of `tests/fixtures/pytorch/` (`scripts/reference/steps_fixture.py`).
fn pytorch(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch").join(name)
}

/// The official code's network (`official.pth.tar`): the 7x7 stem with max-pool, the 3-layer
/// projector of width 32.
const OFFICIAL: &[&str] = &["model.cifar_stem=false", "model.proj_layers=3", "model.proj_hidden=32"];

/// A network of `method` shaped as the fixtures' (ResNet-18 at width 4, d = 32; solo-learn's
/// CIFAR stem and 2-layer projector unless `extra` says otherwise; SwAV's 10 prototypes, MoCo's
/// 16 queued keys; SGD momentum 0.9, wd 5e-4; float32), its weights from `file`, on `dev`.
fn network(method: &str, file: &str, extra: &[&str], dev: Device) -> (Config, Network) {
    let sets: Vec<String> = [
        "model.width=4",
        "model.dim=32",
        "model.pred_hidden=8",
        "model.proj_hidden=24",
        "optim.momentum=0.9",
        "optim.weight_decay=5e-4",
        "objective.swav.prototypes=10",
        "objective.infonce_queue=16",
        "run.precision=\"fp32\"",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    let cfg = Config::resolve_method("tiny", method, None, &sets).unwrap();
    let mut net = Network::new(&cfg, dev);
    net.init_from(&pytorch(file), &cfg.model).unwrap();
    (cfg, net)
}

/// For every tensor of `want` (by name, those `keep` selects) the largest difference of `got`'s
/// from it, over its tolerance: `rtol` of how far the steps moved it from `init`, plus two
/// float32 ulps of its largest value (an EMA's update is a few ulps of its weights). Returns the
/// worst of these ratios (the test wants it below 1) and the worst difference relative to the
/// update alone.
fn worst(
    got: &tch::nn::VarStore,
    want: &tch::nn::VarStore,
    init: &tch::nn::VarStore,
    keep: fn(&str) -> bool,
    rtol: f64,
) -> (f64, f64) {
    let (got, init) = (got.variables(), init.variables());
    let mut compared = 0;
    let (mut ratio, mut of_update): (f64, f64) = (0.0, 0.0);
    for (name, w) in want.variables().into_iter().filter(|(n, _)| keep(n)) {
        let moved = (&w - &init[&name]).abs().max().double_value(&[]);
        let diff = (got[&name].to_device(Device::Cpu) - &w).abs().max().double_value(&[]);
        let ulp = f64::from(f32::EPSILON) * w.abs().max().double_value(&[]);
        assert!(moved > 0.0, "{name}: not moved by PyTorch's steps");
        ratio = ratio.max(diff / (rtol * moved + 2.0 * ulp));
        of_update = of_update.max(diff / moved);
        compared += 1;
    }
    assert!(compared > 60, "only {compared} tensors compared");
    (ratio, of_update)
}

/// Two training steps of each method from the same weights on the same views as PyTorch with
/// lightly's losses (`scripts/reference/steps_fixture.py`), through the training loop's
/// `Network::step`: the EMA network's targets, the step (SwAV's prototypes normalised first;
/// MoCo's keys pushed after), the EMA update with the schedule's momentum. The losses agree, and
/// every weight, BN statistic, EMA tensor, prototype and queued key after the two steps agrees
/// to a small fraction (`rtol`) of how far the steps moved it. The fixture's steps ran on the
/// CPU, in float32; on `dev` ours run in float32 too.
pub fn two_steps_of_each_method_are_pytorchs(dev: Device, rtol: f64) {
    let fx: HashMap<String, Tensor> =
        Tensor::read_safetensors(pytorch("steps.safetensors")).unwrap().into_iter().collect();
    let solo = |m| (m, m, "solo.ckpt", &[][..]);
    let cases = ["simsiam", "simclr", "byol", "moco", "swav"].map(solo);
    // SimSiam as facebookresearch/simsiam builds it, its projector's last bias frozen.
    for (case, method, file, extra) in cases.into_iter().chain([("official", "simsiam", "official.pth.tar", OFFICIAL)])
    {
        let (_, init) = network(method, file, extra, Device::Cpu);
        let (cfg, mut net) = network(method, file, extra, dev);
        let objective = Objective::new(&cfg.objective);
        let mut opt = net.optimizer(&cfg);
        // The predictor's group at its own lr, as the fixture's.
        opt.lrs[0] = 0.05;
        opt.lrs[1] = 0.08;
        let mut queue = (method == "moco").then(|| ViewQueue { z: fx["moco.queue.init"].to_device(dev), filled: 16 });
        if let Some(c) = &net.model.prototypes {
            tch::no_grad(|| c.shallow_clone().copy_(&fx["swav.prototypes.init"].to_device(dev)));
        }
        let mut stepper = Stepper::new(false, dev);
        let mut losses = vec![];
        for s in 0..2 {
            let xs = [fx[&format!("x.{s}.0")].to_device(dev), fx[&format!("x.{s}.1")].to_device(dev)];
            let targets = StepTargets { infonce_queue: queue.as_mut(), ..Default::default() };
            // Step s of 4: BYOL's momentum 1 - 0.01 (cos(pi s / 4) + 1) / 2, as the fixture's.
            let out = net.step(&cfg.model, &mut stepper, &objective, &mut opt, &xs, targets, (s, 4), None).unwrap();
            losses.push(out.loss.double_value(&[]));
        }
        let want_loss = &fx[&format!("{case}.loss")];
        for (s, got) in losses.iter().enumerate() {
            let want = want_loss.double_value(&[s as i64]);
            assert!(
                (got - want).abs() < 1e-2 * rtol * want.abs().max(1.0),
                "{case}, step {s}: loss {got}, PyTorch's {want}"
            );
        }
        let (_, after) = network(method, &format!("steps-{case}.pt"), extra, Device::Cpu);
        let online = |n: &str| !n.starts_with(simsiam::model::PROTOTYPES);
        let (r, w) = worst(&net.vs, &after.vs, &init.vs, online, rtol);
        eprintln!("{case}: losses {losses:?}; weights off by {w:.1e} of their update");
        assert!(r < 1.0, "{case}: a weight after two steps is off by {w:.1e} of its update");
        if let Some(e) = &net.ema {
            let (_, ema) = network(method, &format!("steps-{case}-ema.pt"), extra, Device::Cpu);
            let encoder = |n: &str| n.starts_with("backbone") || n.starts_with("projector");
            let (r, w) = worst(&e.vs, &ema.vs, &init.vs, encoder, rtol);
            eprintln!("{method}: EMA network off by {w:.1e} of its update ({r:.2} of the tolerance)");
            assert!(r < 1.0, "{method}: an EMA tensor after two steps is off by {w:.1e} of its update");
        }
        let close = |got: &Tensor, want: &Tensor, what: &str| {
            let d = (got.to_device(Device::Cpu) - want).abs().max().double_value(&[]);
            assert!(d < 1e-2 * rtol, "{method}: {what} off by {d}");
        };
        if let Some(q) = &queue {
            close(&q.z, &fx["moco.queue.after"], "the queue");
        }
        if let Some(c) = &net.model.prototypes {
            close(c, &fx["swav.prototypes.after"], "the prototypes");
        }
    }
}
