//! The methods trained beside SimSiam (SimCLR, MoCo v2, SwAV, BYOL), each objective as its
//! `--method` configures it, against lightly's losses on the same vectors: the loss and its
//! gradient on every input that takes one (`tests/fixtures/methods/`, written by
//! `scripts/reference/methods_fixture.py` with torch 2.11.0 and lightly 1.6.0, in float64).
//! The hand-formula tests (`tests/objective.rs`, `tests/moco.rs`, `tests/swav.rs`) check our
//! reading of the papers; these check it against an implementation the peers use. Then two
//! whole training steps of each method (and of SimSiam) against PyTorch's on the same weights
//! and views (`tests/fixtures/pytorch/steps*`, `scripts/reference/steps_fixture.py`): train-mode
//! BN, backward, SGD with weight decay, the EMA target and MoCo's queue included.
mod common;
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

/// Two training steps of each method from the same weights on the same views as PyTorch with
/// lightly's losses: the weights after them within a thousandth of their update
/// (`common::steps`).
#[test]
fn two_steps_of_each_method_are_pytorchs() {
    common::steps::two_steps_of_each_method_are_pytorchs(tch::Device::Cpu, 1e-3);
}
