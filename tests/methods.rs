//! The methods trained beside SimSiam (SimCLR, MoCo v2, SwAV, BYOL), each objective as its
//! `--method` configures it, against lightly's losses on the same vectors: the loss and its
//! gradient on every input that takes one (`tests/fixtures/methods/`, written by
//! `scripts/reference/methods_fixture.py` with torch 2.11.0 and lightly 1.6.0, in float64).
//! The hand-formula tests (`tests/objective.rs`, `tests/moco.rs`, `tests/swav.rs`) check our
//! reading of the papers; these check it against an implementation the peers use. Then two
//! whole training steps of each method (and of SimSiam) against PyTorch's on the same weights
//! and views (`tests/fixtures/pytorch/steps*`, `scripts/reference/steps_fixture.py`): train-mode
//! BN, backward, SGD with weight decay, the EMA target and MoCo's queue included.
use std::collections::HashMap;
use std::path::PathBuf;

use simsiam::config::Config;
use simsiam::model::SiameseOutput;
use simsiam::objective::{sinkhorn, External, Objective};
use tch::{Kind, Tensor};

/// The fixture's arrays by name (float64, their shapes from `manifest.txt`).
struct Fixture {
    dir: PathBuf,
    shapes: HashMap<String, Vec<i64>>,
}

impl Fixture {
    fn open() -> Fixture {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/methods");
        let manifest = std::fs::read_to_string(dir.join("manifest.txt")).expect("manifest.txt");
        let shapes = manifest
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let mut it = l.split_whitespace();
                let name = it.next().unwrap().to_string();
                (name, it.map(|d| d.parse().unwrap()).collect())
            })
            .collect();
        Fixture { dir, shapes }
    }

    fn get(&self, name: &str) -> Tensor {
        let bytes = std::fs::read(self.dir.join(format!("{name}.f64"))).unwrap_or_else(|e| panic!("{name}: {e}"));
        let v: Vec<f64> = bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
        Tensor::from_slice(&v).view(self.shapes[name].as_slice())
    }

    /// An input as a fresh leaf that takes a gradient.
    fn leaf(&self, name: &str) -> Tensor {
        self.get(name).set_requires_grad(true)
    }

    fn outputs(&self) -> SiameseOutput {
        SiameseOutput {
            z1: self.leaf("z1"),
            z2: self.leaf("z2"),
            p1: self.leaf("p1"),
            p2: self.leaf("p2"),
            y1: Tensor::zeros([8, 4], (Kind::Double, tch::Device::Cpu)),
        }
    }

    /// The loss against `METHOD-loss`, and each `(name, tensor)`'s gradient against
    /// `METHOD-grad-name`; the fixture holds exactly these gradients.
    fn check(&self, method: &str, loss: &Tensor, wrt: &[(&str, &Tensor)]) {
        let want = self.get(&format!("{method}-loss")).double_value(&[0]);
        let got = loss.double_value(&[]);
        assert!((got - want).abs() < 1e-12 * want.abs().max(1.0), "{method}: loss {got}, lightly {want}");
        loss.backward();
        for (name, t) in wrt {
            let want = self.get(&format!("{method}-grad-{name}"));
            let diff = (t.grad() - &want).abs().max().double_value(&[]);
            assert!(diff < 1e-12, "{method}: gradient on {name} off by {diff}");
            assert!(want.abs().max().double_value(&[]) > 1e-3, "{method}: the gradient on {name} is not trivial");
        }
        let listed = self.shapes.keys().filter(|k| k.starts_with(&format!("{method}-grad-"))).count();
        assert_eq!(listed, wrt.len(), "{method}: every gradient of the fixture compared");
    }
}

fn objective(method: &str) -> Objective {
    Objective::new(&Config::resolve_method("tiny", method, None, &[]).unwrap().objective)
}

#[test]
fn simclr_is_lightlys_nt_xent() {
    let f = Fixture::open();
    let out = f.outputs();
    let loss = objective("simclr").pair_loss(&out);
    f.check("simclr", &loss, &[("z1", &out.z1), ("z2", &out.z2)]);
    assert!(!out.p1.grad().defined(), "SimCLR has no predictor on its path");
}

#[test]
fn moco_is_lightlys_nt_xent_with_a_memory_bank() {
    // Keys from the momentum encoder (the step passes them as the cached targets), each view's
    // queries against the other view's queued keys.
    let f = Fixture::open();
    let out = f.outputs();
    let (t1, t2) = (f.get("t1"), f.get("t2"));
    let ext = External { cached: Some([t1, t2]), infonce_queue: Some(f.get("moco_queue")), ..Default::default() };
    let loss = objective("moco").loss(std::slice::from_ref(&out), &ext);
    f.check("moco", &loss, &[("z1", &out.z1), ("z2", &out.z2)]);
}

#[test]
fn swav_is_lightlys_swapped_prediction_with_and_without_its_queue() {
    let f = Fixture::open();
    let swav = objective("swav");
    for (case, queue) in [("swav", None), ("swavq", Some(f.get("swav_queue")))] {
        let out = f.outputs();
        let prototypes = f.leaf("prototypes");
        let ext = External { prototypes: Some(prototypes.shallow_clone()), swav_queue: queue, ..Default::default() };
        let loss = swav.loss(std::slice::from_ref(&out), &ext);
        f.check(case, &loss, &[("z1", &out.z1), ("z2", &out.z2), ("prototypes", &prototypes)]);
    }
    // The codes alone: view 1's scores against its unit prototypes.
    let z1 = f.get("z1");
    let scores = (&z1 / z1.norm_scalaropt_dim(2.0, &[1i64][..], true)).matmul(&f.get("prototypes").tr());
    let diff = (sinkhorn(&scores, 0.05, 3) - f.get("sinkhorn")).abs().max().double_value(&[]);
    assert!(diff < 1e-12, "Sinkhorn-Knopp codes off by {diff}");
}

#[test]
fn byol_is_lightlys_negative_cosine_against_the_target_network() {
    let f = Fixture::open();
    let out = f.outputs();
    let ext = External { cached: Some([f.get("t1"), f.get("t2")]), ..Default::default() };
    let loss = objective("byol").loss(std::slice::from_ref(&out), &ext);
    f.check("byol", &loss, &[("p1", &out.p1), ("p2", &out.p2)]);
    assert!(!out.z1.grad().defined(), "the online z gets no gradient from the EMA target's loss");
}

/// The weights' and views' file of `tests/fixtures/pytorch/` (`scripts/reference/steps_fixture.py`).
fn pytorch(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch").join(name)
}

/// The official code's network (`official.pth.tar`): the 7x7 stem with max-pool, the 3-layer
/// projector of width 32.
const OFFICIAL: &[&str] = &["model.cifar_stem=false", "model.proj_layers=3", "model.proj_hidden=32"];

/// A network of `method` shaped as the fixtures' (ResNet-18 at width 4, d = 32; solo-learn's
/// CIFAR stem and 2-layer projector unless `extra` says otherwise; SwAV's 10 prototypes, MoCo's
/// 16 queued keys; SGD momentum 0.9, wd 5e-4), its weights from `file`.
fn network(method: &str, file: &str, extra: &[&str]) -> (Config, simsiam::train::Network) {
    let sets: Vec<String> = [
        "model.width=4",
        "model.dim=32",
        "model.pred_hidden=8",
        "model.proj_hidden=24",
        "optim.momentum=0.9",
        "optim.weight_decay=5e-4",
        "objective.swav.prototypes=10",
        "objective.infonce_queue=16",
        "run.device=\"cpu\"",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    let cfg = Config::resolve_method("tiny", method, None, &sets).unwrap();
    let mut net = simsiam::train::Network::new(&cfg, tch::Device::Cpu);
    net.init_from(&pytorch(file), &cfg.model).unwrap();
    (cfg, net)
}

/// For every tensor of `want` (by name, those `keep` selects) the largest difference of `got`'s
/// from it, over its tolerance: a thousandth of how far the steps moved it from `init`, plus two
/// float32 ulps of its largest value (an EMA's update is a few ulps of its weights). Returns the
/// worst of these ratios (the test wants it below 1) and the worst difference relative to the
/// update alone.
fn worst(
    got: &tch::nn::VarStore,
    want: &tch::nn::VarStore,
    init: &tch::nn::VarStore,
    keep: fn(&str) -> bool,
) -> (f64, f64) {
    let (got, init) = (got.variables(), init.variables());
    let mut compared = 0;
    let (mut ratio, mut of_update): (f64, f64) = (0.0, 0.0);
    for (name, w) in want.variables().into_iter().filter(|(n, _)| keep(n)) {
        let moved = (&w - &init[&name]).abs().max().double_value(&[]);
        let diff = (&got[&name] - &w).abs().max().double_value(&[]);
        let ulp = f64::from(f32::EPSILON) * w.abs().max().double_value(&[]);
        assert!(moved > 0.0, "{name}: not moved by PyTorch's steps");
        ratio = ratio.max(diff / (1e-3 * moved + 2.0 * ulp));
        of_update = of_update.max(diff / moved);
        compared += 1;
    }
    assert!(compared > 60, "only {compared} tensors compared");
    (ratio, of_update)
}

/// Two training steps of each method from the same weights on the same views as PyTorch with
/// lightly's losses (`scripts/reference/steps_fixture.py`), through the training loop's
/// `Network::step`: the EMA network's targets, the step (SwAV's prototypes normalised first;
/// MoCo's keys pushed after), the EMA update with the schedule's momentum. The losses agree, and every weight, BN
/// statistic, EMA tensor, prototype and queued key after the two steps agrees to a small
/// fraction of how far the steps moved it.
#[test]
fn two_steps_of_each_method_are_pytorchs() {
    use simsiam::graph::Stepper;
    use simsiam::objective::ViewQueue;
    use simsiam::train::StepTargets;
    let fx: HashMap<String, Tensor> =
        Tensor::read_safetensors(pytorch("steps.safetensors")).unwrap().into_iter().collect();
    let solo = |m| (m, m, "solo.ckpt", &[][..]);
    let cases = ["simsiam", "simclr", "byol", "moco", "swav"].map(solo);
    // SimSiam as facebookresearch/simsiam builds it, its projector's last bias frozen.
    for (case, method, file, extra) in cases.into_iter().chain([("official", "simsiam", "official.pth.tar", OFFICIAL)])
    {
        let (_, init) = network(method, file, extra);
        let (cfg, mut net) = network(method, file, extra);
        let objective = Objective::new(&cfg.objective);
        let mut opt = net.optimizer(&cfg);
        // The predictor's group at its own lr, as the fixture's.
        opt.lrs[0] = 0.05;
        opt.lrs[1] = 0.08;
        let mut queue = (method == "moco").then(|| ViewQueue { z: fx["moco.queue.init"].copy(), filled: 16 });
        if let Some(c) = &net.model.prototypes {
            tch::no_grad(|| c.shallow_clone().copy_(&fx["swav.prototypes.init"]));
        }
        let mut stepper = Stepper::new(false, tch::Device::Cpu);
        let mut losses = vec![];
        for s in 0..2 {
            let xs = [fx[&format!("x.{s}.0")].shallow_clone(), fx[&format!("x.{s}.1")].shallow_clone()];
            let targets = StepTargets { infonce_queue: queue.as_mut(), ..Default::default() };
            // Step s of 4: BYOL's momentum 1 - 0.01 (cos(pi s / 4) + 1) / 2, as the fixture's.
            let out = net.step(&cfg.model, &mut stepper, &objective, &mut opt, &xs, targets, (s, 4), None).unwrap();
            losses.push(out.loss.double_value(&[]));
        }
        let want_loss = &fx[&format!("{case}.loss")];
        for (s, got) in losses.iter().enumerate() {
            let want = want_loss.double_value(&[s as i64]);
            assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "{case}, step {s}: loss {got}, PyTorch's {want}");
        }
        let (_, after) = network(method, &format!("steps-{case}.pt"), extra);
        let online = |n: &str| !n.starts_with(simsiam::model::PROTOTYPES);
        let (r, w) = worst(&net.vs, &after.vs, &init.vs, online);
        eprintln!("{case}: losses {losses:?}; weights off by {w:.1e} of their update");
        assert!(r < 1.0, "{case}: a weight after two steps is off by {w:.1e} of its update");
        if let Some(e) = &net.ema {
            let (_, ema) = network(method, &format!("steps-{case}-ema.pt"), extra);
            let encoder = |n: &str| n.starts_with("backbone") || n.starts_with("projector");
            let (r, w) = worst(&e.vs, &ema.vs, &init.vs, encoder);
            eprintln!("{method}: EMA network off by {w:.1e} of its update ({r:.2} of the tolerance)");
            assert!(r < 1.0, "{method}: an EMA tensor after two steps is off by {w:.1e} of its update");
        }
        let close = |got: &Tensor, want: &Tensor, what: &str| {
            let d = (got - want).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{method}: {what} off by {d}");
        };
        if let Some(q) = &queue {
            close(&q.z, &fx["moco.queue.after"], "the queue");
        }
        if let Some(c) = &net.model.prototypes {
            close(c, &fx["swav.prototypes.after"], "the prototypes");
        }
    }
}
