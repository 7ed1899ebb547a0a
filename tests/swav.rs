//! SwAV as an objective (SimSiam §6.2's SwAV rows): Sinkhorn-Knopp codes and the swapped
//! prediction against a plain-loop transcription of SwAV's `main_swav.py`, where the
//! stop-gradient on the codes sends the gradient, the `swav` method, the prototypes' per-step
//! normalisation and their frozen first epoch.
use simsiam::config::{Config, ObjectiveConfig, Online, PredictorKind, SwavConfig};
use simsiam::model::SiameseOutput;
use simsiam::objective::{sinkhorn, swav_loss, External, Objective, ViewQueue};
use tch::{Device, Kind, Tensor};

/// A `[b, d]` f64 leaf of standard normals from its own seeded generator.
fn leaf(seed: u64, b: i64, d: i64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f64> = (0..b * d).map(|_| rng.sample(rand_distr::StandardNormal)).collect();
    Tensor::from_slice(&v).view([b, d]).set_requires_grad(true)
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let (b, k) = (t.size()[0], t.size()[1]);
    (0..b).map(|i| (0..k).map(|j| t.double_value(&[i, j])).collect()).collect()
}

fn unit_rows(x: &[Vec<f64>]) -> Vec<Vec<f64>> {
    x.iter()
        .map(|r| {
            let n = r.iter().map(|v| v * v).sum::<f64>().sqrt();
            r.iter().map(|v| v / n).collect()
        })
        .collect()
}

/// `scores[i][k] = x_i . c_k` as they are.
fn dot_scores(x: &[Vec<f64>], c: &[Vec<f64>]) -> Vec<Vec<f64>> {
    x.iter().map(|xi| c.iter().map(|ck| xi.iter().zip(ck).map(|(a, b)| a * b).sum()).collect()).collect()
}

/// `scores[i][k] = x_i . c_k` of unit rows.
fn hand_scores(x: &[Vec<f64>], c: &[Vec<f64>]) -> Vec<Vec<f64>> {
    dot_scores(&unit_rows(x), c)
}

/// SwAV's `distributed_sinkhorn` (one process), line by line on `[K][B]` nested vectors:
/// `Q = exp(out / eps).t(); Q /= sum(Q); repeat { Q /= rowsum; Q /= K; Q /= colsum; Q /= B }; Q *= B`.
fn hand_sinkhorn(scores: &[Vec<f64>], eps: f64, iters: usize) -> Vec<Vec<f64>> {
    let (b, k) = (scores.len(), scores[0].len());
    let mut q: Vec<Vec<f64>> = (0..k).map(|j| (0..b).map(|i| (scores[i][j] / eps).exp()).collect()).collect();
    let total: f64 = q.iter().flatten().sum();
    q.iter_mut().flatten().for_each(|v| *v /= total);
    for _ in 0..iters {
        for row in q.iter_mut() {
            let s: f64 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s * k as f64);
        }
        let col: Vec<f64> = (0..b).map(|i| q.iter().map(|row| row[i]).sum()).collect();
        for row in q.iter_mut() {
            row.iter_mut().zip(&col).for_each(|(v, s)| *v /= s * b as f64);
        }
    }
    (0..b).map(|i| (0..k).map(|j| q[j][i] * b as f64).collect()).collect()
}

/// `-mean_i sum_k q[i][k] log softmax(scores[i] / t)[k]`.
fn hand_cross_entropy(q: &[Vec<f64>], scores: &[Vec<f64>], t: f64) -> f64 {
    let per: Vec<f64> = q
        .iter()
        .zip(scores)
        .map(|(qi, si)| {
            let m = si.iter().cloned().fold(f64::MIN, f64::max) / t;
            let lse = m + si.iter().map(|s| (s / t - m).exp()).sum::<f64>().ln();
            -qi.iter().zip(si).map(|(q, s)| q * (s / t - lse)).sum::<f64>()
        })
        .collect();
    per.iter().sum::<f64>() / per.len() as f64
}

fn outputs(b: i64, d: i64) -> SiameseOutput {
    SiameseOutput { z1: leaf(1, b, d), z2: leaf(2, b, d), p1: leaf(3, b, d), p2: leaf(4, b, d), y1: leaf(5, b, 3) }
}

/// `K` unit prototypes of dimension d (what the step leaves before its forward pass).
fn prototypes(k: i64, d: i64) -> Tensor {
    let c = leaf(9, k, d).detach();
    (&c / c.norm_scalaropt_dim(2.0, &[1i64][..], true)).set_requires_grad(true)
}

#[test]
fn sinkhorn_codes_match_swav_and_spread_the_batch_over_the_prototypes() {
    let scores =
        Tensor::from_slice(&(0..24).map(|i| ((i * 7 % 11) as f64 / 5.5 - 1.0) * 0.9).collect::<Vec<_>>()).view([6, 4]); // B = 6 samples, K = 4 prototypes, scores in [-0.9, 0.9]
    let q = rows(&sinkhorn(&scores, 0.05, 3));
    let want = hand_sinkhorn(&rows(&scores), 0.05, 3);
    for (qi, wi) in q.iter().zip(&want) {
        for (a, b) in qi.iter().zip(wi) {
            assert!((a - b).abs() < 1e-12, "code {a} against SwAV's {b}");
        }
        // Each sample's codes are a distribution.
        assert!((qi.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
    // Iterated to convergence, each prototype takes B/K = 1.5 of the batch.
    let q = sinkhorn(&scores, 0.5, 200);
    let per_prototype = q.sum_dim_intlist(&[0i64][..], false, Kind::Double);
    assert!(per_prototype.allclose(&Tensor::full([4], 1.5, (Kind::Double, Device::Cpu)), 1e-9, 1e-9, false));
    // exp(scores / eps) would overflow (or, shifted, underflow to a prototype of no mass) in
    // f32 at eps 0.005; the log-domain codes are finite and still distributions.
    let q = sinkhorn(&scores.to_kind(Kind::Float), 0.005, 3);
    assert!(bool::try_from(q.isfinite().all()).unwrap());
    let ones = Tensor::ones([6], (Kind::Float, Device::Cpu));
    assert!(q.sum_dim_intlist(&[1i64][..], false, Kind::Float).allclose(&ones, 1e-5, 1e-5, false));
}

#[test]
fn swapped_prediction_loss_by_hand() {
    let (b, d, k) = (5, 6, 4);
    let o = outputs(b, d);
    let c = prototypes(k, d);
    for online in [Online::Z, Online::P] {
        let cfg = SwavConfig { prototypes: k, online, ..SwavConfig::default() };
        let (x1, x2) = if online == Online::P { (&o.p1, &o.p2) } else { (&o.z1, &o.z2) };
        let got = swav_loss([x1, x2], [&o.z1, &o.z2], &c, None, &cfg).double_value(&[]);
        let cr = rows(&c);
        let code = |z: &Tensor| hand_sinkhorn(&hand_scores(&rows(z), &cr), cfg.epsilon, cfg.sinkhorn_iterations);
        let predict = |x: &Tensor, q: &[Vec<f64>]| hand_cross_entropy(q, &hand_scores(&rows(x), &cr), cfg.temperature);
        let want = 0.5 * (predict(x1, &code(&o.z2)) + predict(x2, &code(&o.z1)));
        assert!((got - want).abs() < 1e-10, "{online:?}: {got} against {want}");
    }
}

/// The gradient that reaches z when the predicting side is P: with SwAV's stop-gradient z
/// makes only the codes, which are constants, so none; without it, through Sinkhorn.
#[test]
fn the_codes_stop_gradient_is_where_swav_puts_it() {
    let (b, d, k) = (8, 6, 5);
    let c = prototypes(k, d);
    for stop_grad in [true, false] {
        let o = outputs(b, d);
        let cfg = SwavConfig { prototypes: k, online: Online::P, stop_grad, ..SwavConfig::default() };
        swav_loss([&o.p1, &o.p2], [&o.z1, &o.z2], &c, None, &cfg).backward();
        let zg = o.z1.grad();
        let z_moved = zg.defined() && zg.abs().max().double_value(&[]) > 0.0;
        assert_eq!(z_moved, !stop_grad, "stop_grad = {stop_grad}: z gets a gradient only through the codes");
        assert!(o.p1.grad().abs().max().double_value(&[]) > 0.0, "the predictions always learn");
        assert!(c.grad().abs().max().double_value(&[]) > 0.0, "so do the prototypes");
        let _ = c.grad().zero_();
    }
}

#[test]
fn swav_method_and_its_config_errors() {
    let cfg = Config::resolve_method("cifar10", "swav", None, &[]).unwrap();
    let s = &cfg.objective.swav;
    assert_eq!((cfg.model.predictor, cfg.objective.main_weight), (PredictorKind::Identity, 0.0));
    assert_eq!((s.weight, s.prototypes, s.temperature, s.epsilon), (1.0, 3000, 0.1, 0.05));
    assert_eq!((s.sinkhorn_iterations, s.online, s.stop_grad, s.freeze_epochs), (3, Online::Z, true, 1));
    // The method's loss is SwAV's alone, from the prototypes the step passes.
    let (o, c) = (outputs(4, 6), prototypes(7, 6));
    let obj =
        Objective::new(&ObjectiveConfig { swav: SwavConfig { prototypes: 7, ..s.clone() }, ..cfg.objective.clone() });
    let ext = External { prototypes: Some(c.shallow_clone()), ..Default::default() };
    let got = obj.loss(std::slice::from_ref(&o), &ext).double_value(&[]);
    let want = swav_loss([&o.z1, &o.z2], [&o.z1, &o.z2], &c, None, &obj.cfg.swav).double_value(&[]);
    assert!((got - want).abs() < 1e-12);
    assert_eq!(obj.minimum(), None, "no collapse minimum for an extra loss");
    for (set, field) in [
        ("objective.swav.prototypes=0", "objective.swav.prototypes"),
        ("objective.swav.temperature=0.0", "objective.swav.temperature"),
        ("objective.swav.epsilon=-1.0", "objective.swav.epsilon"),
        ("objective.swav.sinkhorn_iterations=0", "objective.swav.sinkhorn_iterations"),
        ("objective.swav.online=\"oracle\"", "objective.swav.online"),
        ("objective.swav.weight=-1.0", "swav.weight"),
        ("objective.swav.queue=100", "objective.swav.queue"),
    ] {
        let e = Config::resolve_method("cifar10", "swav", None, &[set.into()]).unwrap_err().to_string();
        assert!(e.contains(field), "{set}: {e}");
    }
    let e = Config::resolve("cifar10", None, &["objective.swav.queue=10".into()]).unwrap_err().to_string();
    assert!(e.contains("queue"), "unknown fields are named: {e}");
}

/// The step normalises the prototypes before its forward pass, and leaves them alone while
/// they are frozen (no decay, no momentum) while the rest of the network trains.
#[test]
fn prototypes_are_unit_rows_and_frozen_in_the_first_epoch() {
    use simsiam::augment::Augmenter;
    use simsiam::optim::Sgd;
    use simsiam::train::{step, views, Network, StepTargets};
    let set = ["optim.batch_size=16".to_string(), "objective.swav.prototypes=30".into()];
    let cfg = Config::resolve_method("tiny", "swav", None, &set).unwrap();
    let net = Network::new(&cfg, Device::Cpu);
    let vars = net.vs.variables();
    let c = vars["prototypes.weight"].shallow_clone();
    assert_eq!(c.size(), [30, cfg.model.dim]);
    let params = net.params(&cfg);
    assert_eq!(params.iter().find(|p| p.name == "prototypes.weight").map(|p| p.group), Some(0), "encoder's lr group");
    let aug = Augmenter::new(&cfg.augment, 32, Device::Cpu);
    let xs = views(&aug, &Tensor::randint(256, [16, 32, 32, 3], (Kind::Uint8, Device::Cpu)), 2);
    let objective = Objective::new(&cfg.objective);
    let mut opt = Sgd::new(params, 3, 0.9, 5e-4);
    opt.lrs = vec![0.5, 0.5, 0.0];
    let norms = |t: &Tensor| t.norm_scalaropt_dim(2.0, &[1i64][..], false);
    let conv = || vars["backbone.conv1.weight"].copy();
    let (c0, w0) = (c.copy(), conv());
    assert!(!norms(&c0).ones_like().allclose(&norms(&c0), 1e-3, 1e-3, false), "PyTorch's init is not unit");
    let frozen = StepTargets { freeze_prototypes: true, ..Default::default() };
    step(&net.model, &objective, &mut opt, &xs, frozen, None).unwrap();
    let unit = tch::no_grad(|| &c0 / c0.norm_scalaropt_dim(2.0, &[1i64][..], true));
    assert!(c.allclose(&unit, 1e-6, 1e-7, false), "frozen: normalised, not updated");
    assert!(!conv().allclose(&w0, 1e-7, 1e-8, false), "the backbone trains meanwhile");
    step(&net.model, &objective, &mut opt, &xs, StepTargets::default(), None).unwrap();
    assert!(!c.allclose(&unit, 1e-4, 1e-5, false), "after the freeze the prototypes learn");
    step(&net.model, &objective, &mut opt, &xs, StepTargets::default(), None).unwrap();
    net.model.normalize_prototypes();
    assert!(norms(&c).allclose(&norms(&c).ones_like(), 1e-6, 1e-6, false));
}

/// SwAV's own loop in the exp domain, as tensor ops (`[B, K]` scores -> `[B, K]` codes).
fn exp_domain_sinkhorn(scores: &Tensor, eps: f64, iters: usize) -> Tensor {
    let kind = scores.kind();
    let mut q = (scores / eps).exp().tr(); // [K, B]
    let (k, b) = (q.size()[0] as f64, q.size()[1] as f64);
    q = &q / q.sum(kind);
    for _ in 0..iters {
        q = &q / q.sum_dim_intlist(&[1i64][..], true, kind) / k;
        q = &q / q.sum_dim_intlist(&[0i64][..], true, kind) / b;
    }
    (q * b).tr()
}

/// The gradient of `sum(codes(scores) * weights)` with respect to the scores: ours and SwAV's.
fn code_gradients(scores: &Tensor, weights: &Tensor) -> (Tensor, Tensor) {
    let grad_of = |codes: &dyn Fn(&Tensor) -> Tensor| {
        let s = scores.detach().set_requires_grad(true);
        (codes(&s) * weights).sum(s.kind()).backward();
        s.grad()
    };
    (grad_of(&|s| sinkhorn(s, 0.05, 3)), grad_of(&|s| exp_domain_sinkhorn(s, 0.05, 3)))
}

/// Without the stop-gradient the codes' gradient matters: the log-domain normalisations give
/// SwAV's exp-domain gradient, not only its values.
#[test]
fn log_domain_codes_have_swavs_gradient() {
    let scores = leaf(11, 8, 5).detach().tanh(); // in (-1, 1)
    let (ours, swav) = code_gradients(&scores, &leaf(12, 8, 5).detach());
    assert!(swav.abs().max().double_value(&[]) > 1e-3, "a gradient worth comparing");
    assert!(ours.allclose(&swav, 1e-9, 1e-12, false), "max difference {}", (ours - swav).abs().max());
    // At SwAV's size in f32 (batch 64, 3,000 prototypes, unit vectors), SwAV's own loop is
    // finite too and the two gradients agree: the log domain is not what keeps a run without
    // the stop-gradient from overflowing (the swav-predictor experiment's check).
    let unit = |t: Tensor| &t / t.norm_scalaropt_dim(2.0, &[1i64][..], true);
    let (z, c) = (unit(leaf(13, 64, 128).detach()), unit(leaf(14, 3000, 128).detach()));
    let scores = z.matmul(&c.tr()).to_kind(Kind::Float);
    let (ours, swav) = code_gradients(&scores, &leaf(15, 64, 3000).detach().to_kind(Kind::Float));
    assert!(bool::try_from(swav.isfinite().all()).unwrap());
    let scale = swav.abs().max().double_value(&[]);
    let diff = (&ours - &swav).abs().max().double_value(&[]);
    assert!(diff < 1e-3 * scale, "f32: max difference {diff} of {scale}");
}

/// SwAV's queue: newest first, the oldest dropped, ready once full; with it, each view's codes
/// are Sinkhorn-Knopp over the queue's scores and the batch's together, the batch's rows kept.
#[test]
fn the_queue_joins_the_codes_once_full() {
    let (b, d, k, len) = (4, 6, 5, 8);
    let mut queue = ViewQueue::new(len, d, Device::Cpu);
    let batches: Vec<(Tensor, Tensor)> = (0..3).map(|i| (leaf(20 + i, b, d), leaf(30 + i, b, d))).collect();
    let unit = |t: &Tensor| t.detach() / t.norm_scalaropt_dim(2.0, &[1i64][..], true).detach();
    queue.push(&batches[0].0, &batches[0].1);
    assert!(queue.ready().is_none(), "half full");
    queue.push(&batches[1].0, &batches[1].1);
    queue.push(&batches[2].0, &batches[2].1);
    let z = queue.ready().expect("full");
    assert_eq!(z.size(), [2, len as i64, d]);
    assert!(!z.requires_grad());
    // View 1's rows: batch 2 (newest), then batch 1; batch 0 is gone.
    let want = Tensor::cat(&[unit(&batches[2].0), unit(&batches[1].0)], 0).to_kind(Kind::Float);
    assert!(z.get(0).allclose(&want, 1e-6, 1e-6, false));
    let want = Tensor::cat(&[unit(&batches[2].1), unit(&batches[1].1)], 0).to_kind(Kind::Float);
    assert!(z.get(1).allclose(&want, 1e-6, 1e-6, false));

    let o = outputs(b, d);
    let c = prototypes(k, d);
    let cfg = SwavConfig { prototypes: k, ..SwavConfig::default() };
    let zq = z.to_kind(Kind::Double);
    let got = swav_loss([&o.z1, &o.z2], [&o.z1, &o.z2], &c, Some(&zq), &cfg).double_value(&[]);
    let cr = rows(&c);
    let code = |v: i64, zv: &Tensor| {
        // The queue holds normalised projections: SwAV scores them as they are.
        let mut s = dot_scores(&rows(&zq.get(v)), &cr);
        s.extend(hand_scores(&rows(zv), &cr));
        hand_sinkhorn(&s, cfg.epsilon, cfg.sinkhorn_iterations).split_off(len)
    };
    let predict = |x: &Tensor, q: &[Vec<f64>]| hand_cross_entropy(q, &hand_scores(&rows(x), &cr), cfg.temperature);
    let want = 0.5 * (predict(&o.z1, &code(1, &o.z2)) + predict(&o.z2, &code(0, &o.z1)));
    assert!((got - want).abs() < 1e-10, "{got} against {want}");
    let without = swav_loss([&o.z1, &o.z2], [&o.z1, &o.z2], &c, None, &cfg).double_value(&[]);
    assert!((got - without).abs() > 1e-6, "the queue changes the codes");
}
