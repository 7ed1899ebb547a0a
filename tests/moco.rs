//! MoCo v2 as an objective (SimSiam Table 4's MoCo v2 row): the queue-negative InfoNCE by hand,
//! the symmetrised loss with the momentum encoder's keys, the random-start queue, the constant
//! momentum, and the `moco` method.
use simsiam::config::{Config, EmaSchedule, ObjectiveConfig, PredictorKind};
use simsiam::model::SiameseOutput;
use simsiam::objective::{moco_loss, External, Objective, ViewQueue};
use simsiam::train::Ema;
use tch::{Device, Tensor};

/// A `[b, d]` f64 leaf of standard normals from its own seeded generator.
fn leaf(seed: u64, b: i64, d: i64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f64> = (0..b * d).map(|_| rng.sample(rand_distr::StandardNormal)).collect();
    Tensor::from_slice(&v).view([b, d]).set_requires_grad(true)
}

fn unit_row(t: &Tensor, i: i64) -> Vec<f64> {
    let r: Vec<f64> = (0..t.size()[1]).map(|j| t.double_value(&[i, j])).collect();
    let n = r.iter().map(|v| v * v).sum::<f64>().sqrt();
    r.iter().map(|v| v / n).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `-mean_i log( exp(q_i.k_i/t) / (exp(q_i.k_i/t) + sum_j exp(q_i.n_j/t)) )`, plain loops.
fn hand_moco(q: &Tensor, k: &Tensor, queue: &Tensor, t: f64) -> f64 {
    let b = q.size()[0];
    let negatives: Vec<Vec<f64>> = (0..queue.size()[0]).map(|j| unit_row(queue, j)).collect();
    let per: Vec<f64> = (0..b)
        .map(|i| {
            let qi = unit_row(q, i);
            let pos = dot(&qi, &unit_row(k, i)) / t;
            let all: f64 = pos.exp() + negatives.iter().map(|n| (dot(&qi, n) / t).exp()).sum::<f64>();
            -(pos.exp() / all).ln()
        })
        .collect();
    per.iter().sum::<f64>() / b as f64
}

#[test]
fn moco_loss_by_hand_and_only_the_queries_learn() {
    let (q, k) = (leaf(1, 5, 6), leaf(2, 5, 6));
    let queue = {
        let n = leaf(3, 7, 6).detach();
        &n / n.norm_scalaropt_dim(2.0, &[1i64][..], true)
    };
    let got = moco_loss(&q, &k, &queue, 0.2);
    let want = hand_moco(&q, &k, &queue, 0.2);
    assert!((got.double_value(&[]) - want).abs() < 1e-10, "{} against {want}", got.double_value(&[]));
    got.backward();
    assert!(q.grad().abs().max().double_value(&[]) > 0.0);
    assert!(!k.grad().defined(), "the keys are the momentum encoder's: no gradient");
}

/// The objective's InfoNCE with a queue: keys from the target branch (the EMA network's z, as
/// `External::cached`), each view's queries against the other view's queued keys, symmetrised.
#[test]
fn the_objective_symmetrises_moco_over_the_two_views() {
    let cfg = Config::resolve_method("cifar10", "moco", None, &[]).unwrap();
    let o =
        SiameseOutput { z1: leaf(1, 4, 6), z2: leaf(2, 4, 6), p1: leaf(3, 4, 6), p2: leaf(4, 4, 6), y1: leaf(5, 4, 3) };
    let keys = [leaf(6, 4, 6).detach(), leaf(7, 4, 6).detach()];
    let queue = Tensor::stack(&[leaf(8, 9, 6).detach(), leaf(9, 9, 6).detach()], 0);
    let queue = &queue / queue.norm_scalaropt_dim(2.0, &[2i64][..], true);
    let ext = External {
        cached: Some([keys[0].shallow_clone(), keys[1].shallow_clone()]),
        infonce_queue: Some(queue.shallow_clone()),
        ..Default::default()
    };
    let got = Objective::new(&cfg.objective).loss(std::slice::from_ref(&o), &ext).double_value(&[]);
    let t = cfg.objective.infonce_temperature;
    let want = 0.5 * (hand_moco(&o.z1, &keys[1], &queue.get(1), t) + hand_moco(&o.z2, &keys[0], &queue.get(0), t));
    assert!((got - want).abs() < 1e-10, "{got} against {want}");
}

#[test]
fn moco_method_its_queue_and_momentum() {
    let c = Config::resolve_method("cifar10", "moco", None, &[]).unwrap();
    let (m, o) = (&c.model, &c.objective);
    assert_eq!(
        (m.predictor, m.ema_target, m.ema_momentum, m.ema_schedule),
        (PredictorKind::Identity, true, 0.99, EmaSchedule::Constant)
    );
    assert_eq!((o.main_weight, o.infonce, o.infonce_temperature, o.infonce_queue), (0.0, 1.0, 0.2, 4096));
    // MoCo's momentum stays put; BYOL's rises to 1.
    for step in [0, 50, 100] {
        assert_eq!(Ema::momentum(EmaSchedule::Constant, 0.99, step, 100), 0.99);
    }
    assert_eq!(Ema::momentum(EmaSchedule::Cosine, 0.99, 100, 100), 1.0);
    // The queue starts full of random unit vectors: negatives from the first step.
    let q = ViewQueue::random(16, 8, Device::Cpu);
    let z = q.ready().expect("usable at once");
    let norms = z.norm_scalaropt_dim(2.0, &[2i64][..], false);
    assert!(norms.allclose(&norms.ones_like(), 1e-5, 1e-5, false));
    assert_eq!(z.size(), [2, 16, 8]);
    let default = ObjectiveConfig::default();
    assert_eq!(default.infonce_queue, 0, "SimCLR's in-batch negatives by default");
}
