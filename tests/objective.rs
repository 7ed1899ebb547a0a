//! The loss and its gradient against the hand formula; stop-gradient really stops it;
//! collapse_std on collapsed and Gaussian batches.
use simsiam::config::{ObjectiveConfig, Similarity, Symmetry};
use simsiam::model::SiameseOutput;
use simsiam::monitor::{collapse_std, verdict, CollapseVerdict};
use simsiam::objective::{External, Objective};
use tch::{Device, Kind, Tensor};

/// A `[b, d]` leaf of standard normals from its own seeded generator, not torch's global one:
/// tests run in parallel threads, and another test drawing between a `manual_seed` and its
/// `randn` would make two calls with one seed differ.
fn leaf(seed: u64, b: i64, d: i64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f64> = (0..b * d).map(|_| rng.sample(rand_distr::StandardNormal)).collect();
    Tensor::from_slice(&v).view([b, d]).set_requires_grad(true)
}

fn unit(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, &[1i64][..], true)
}

fn outputs() -> SiameseOutput {
    SiameseOutput { z1: leaf(1, 5, 7), z2: leaf(2, 5, 7), p1: leaf(3, 5, 7), p2: leaf(4, 5, 7), y1: leaf(5, 5, 3) }
}

#[test]
fn symmetric_loss_value_and_gradient_match_the_hand_formula() {
    let o = outputs();
    let loss = Objective::new(&ObjectiveConfig::default()).pair_loss(&o);
    let cos = |p: &Tensor, z: &Tensor| (unit(p) * unit(z)).sum_dim_intlist(&[1i64][..], false, Kind::Double);
    let want = -(cos(&o.p1, &o.z2).mean(Kind::Double) + cos(&o.p2, &o.z1).mean(Kind::Double)) * 0.5;
    assert!((loss.double_value(&[]) - want.double_value(&[])).abs() < 1e-12);
    loss.backward();
    // dL/dp1 = -(1/2B) (ẑ2 - cos(p1, z2) p̂1) / ||p1||
    let b = 5.0;
    let c = cos(&o.p1, &o.z2).unsqueeze(1);
    let g = -(unit(&o.z2) - &c * unit(&o.p1)) / o.p1.norm_scalaropt_dim(2.0, &[1i64][..], true) / (2.0 * b);
    assert!(o.p1.grad().allclose(&g.detach(), 1e-10, 1e-12, false));
    // Stop-gradient: no gradient reaches z through the target branch.
    assert!(!o.z1.grad().defined() || o.z1.grad().abs().max().double_value(&[]) == 0.0);
    assert!(!o.z2.grad().defined() || o.z2.grad().abs().max().double_value(&[]) == 0.0);
}

#[test]
fn without_stop_gradient_the_target_branch_gets_the_mirror_gradient() {
    let o = outputs();
    let cfg = ObjectiveConfig { stop_grad: false, ..Default::default() };
    Objective::new(&cfg).pair_loss(&o).backward();
    let cos = (unit(&o.p1) * unit(&o.z2)).sum_dim_intlist(&[1i64][..], false, Kind::Double).unsqueeze(1);
    let g = -(unit(&o.p1) - &cos * unit(&o.z2)) / o.z2.norm_scalaropt_dim(2.0, &[1i64][..], true) / 10.0;
    assert!(o.z2.grad().allclose(&g.detach(), 1e-10, 1e-12, false));
}

#[test]
fn asymmetric_and_cross_entropy_variants() {
    let o = outputs();
    let asym = ObjectiveConfig { symmetry: Symmetry::Asymmetric, ..Default::default() };
    Objective::new(&asym).pair_loss(&o).backward();
    assert!(!o.p2.grad().defined() || o.p2.grad().abs().max().double_value(&[]) == 0.0, "p2 unused");
    let o = outputs();
    let ce = ObjectiveConfig { similarity: Similarity::CrossEntropy, ..Default::default() };
    let l = Objective::new(&ce).pair_loss(&o).double_value(&[]);
    let h = |p: &Tensor, z: &Tensor| {
        (z.softmax(1, Kind::Double) * p.log_softmax(1, Kind::Double))
            .sum_dim_intlist(&[1i64][..], false, Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    };
    assert!((l - -(h(&o.p1, &o.z2) + h(&o.p2, &o.z1)) / 2.0).abs() < 1e-12);
}

#[test]
fn loss_reaches_minus_one_when_prediction_matches_target() {
    let z = leaf(9, 4, 6);
    let o = SiameseOutput {
        z1: z.shallow_clone(),
        z2: &z * 3.0,
        p1: &z * 2.0,
        p2: z.shallow_clone(),
        y1: z.shallow_clone(),
    };
    let l = Objective::new(&ObjectiveConfig::default()).pair_loss(&o).double_value(&[]);
    assert!((l + 1.0).abs() < 1e-12);
}

#[test]
fn collapse_std_is_zero_for_a_collapsed_batch_and_one_over_sqrt_d_for_gaussians() {
    let row = Tensor::randn([1, 64], (Kind::Float, Device::Cpu));
    let collapsed = row.expand([256, 64], false) * 5.0;
    assert!(collapse_std(&collapsed).double_value(&[]) < 1e-6);
    for d in [64i64, 512, 2048] {
        tch::manual_seed(d);
        let z = Tensor::randn([4096, d], (Kind::Float, Device::Cpu));
        let s = collapse_std(&z).double_value(&[]);
        let want = 1.0 / (d as f64).sqrt();
        assert!((s / want - 1.0).abs() < 0.02, "d={d}: {s} vs {want}");
    }
}

#[test]
fn verdict_separates_collapse_from_failure_to_converge() {
    assert_eq!(verdict(-0.999, Some(-1.0), 0.01, None), CollapseVerdict::Collapsed);
    assert_eq!(verdict(-0.95, Some(-1.0), 0.25, None), CollapseVerdict::Collapsed);
    assert_eq!(verdict(-0.95, Some(-1.0), 0.7, None), CollapseVerdict::Healthy);
    assert_eq!(verdict(-0.2, Some(-1.0), 0.9, None), CollapseVerdict::NotConverged);
    assert_eq!(verdict(-0.4, Some(-1.0), 0.9, None), CollapseVerdict::Healthy);
    assert_eq!(verdict(-0.9, Some(-1.0), 0.8, None), CollapseVerdict::Healthy);
}

/// Collapse is judged against where the run started: from a head with output BN (spread ~1
/// at step 0) the plain 0.5 threshold; from the narrow cone of a head without BN (0.40 at
/// step 0 in `docs/results/cpu-small-nobn`) the spread must have halved, else the run is
/// `Narrow`, as is a spread below 0.5 whose loss is not at its minimum. Without a start, the
/// plain thresholds.
#[test]
fn verdict_judges_the_spread_against_its_start() {
    // Heads with output BN: the same as without a start.
    assert_eq!(verdict(-0.95, Some(-1.0), 0.25, Some(0.998)), CollapseVerdict::Collapsed);
    assert_eq!(verdict(-0.95, Some(-1.0), 0.49, Some(1.0)), CollapseVerdict::Collapsed);
    // Never a larger threshold than 0.5, whatever the start.
    assert_eq!(verdict(-0.95, Some(-1.0), 0.55, Some(1.4)), CollapseVerdict::Healthy);
    // No-BN heads: at their start, or narrowed by less than half: narrow, not collapsed.
    assert_eq!(verdict(-0.91, Some(-1.0), 0.40, Some(0.404)), CollapseVerdict::Narrow);
    assert_eq!(verdict(-0.94, Some(-1.0), 0.324, Some(0.404)), CollapseVerdict::Narrow);
    // ... halved: collapsed.
    assert_eq!(verdict(-0.98, Some(-1.0), 0.15, Some(0.404)), CollapseVerdict::Collapsed);
    // Whatever the loss (a no-BN head's straddles any band around -0.9), unless far above its
    // minimum: then the run did not converge.
    assert_eq!(verdict(-0.85, Some(-1.0), 0.40, Some(0.404)), CollapseVerdict::Narrow);
    // Halved from a spread start but the loss not at its minimum yet: narrow (collapsing), not
    // healthy; with or without a start.
    assert_eq!(verdict(-0.885, Some(-1.0), 0.42, Some(0.998)), CollapseVerdict::Narrow);
    assert_eq!(verdict(-0.885, Some(-1.0), 0.42, None), CollapseVerdict::Narrow);
    assert_eq!(verdict(-0.2, Some(-1.0), 0.40, Some(0.404)), CollapseVerdict::NotConverged);
}

/// InfoNCE's weights for anchor rows X `[B, d]` against Z_b, one pair at a time:
/// `w_ij = exp(X_i . Z_j / t) / sum_{k != i} exp(X_i . Z_k / t)` for j != i, and w_ii = 0.
fn hand_weights(x: &Tensor, zb: &Tensor, t: f64) -> Vec<Vec<f64>> {
    let b = zb.size()[0];
    (0..b)
        .map(|i| {
            let e: Vec<f64> = (0..b)
                .map(|j| if j == i { 0.0 } else { (x.get(i).dot(&zb.get(j)).double_value(&[]) / t).exp() })
                .collect();
            let total: f64 = e.iter().sum();
            e.iter().map(|v| v / total).collect()
        })
        .collect()
}

/// `sum_j w_ij V_j` for every row i, term by term.
fn weighted_rows(w: &[Vec<f64>], v: &Tensor) -> Tensor {
    let rows: Vec<Tensor> = w
        .iter()
        .map(|wi| wi.iter().enumerate().fold(v.get(0).zeros_like(), |acc, (j, &c)| acc + v.get(j as i64) * c))
        .collect();
    Tensor::stack(&rows, 0)
}

/// Each target variant, built by hand here (independently of the library), from normalised
/// X_a (the online vector), Z_a, Z_b, P_b `[B, d]`; InfoNCE's temperature `t`.
fn hand_target(
    t: simsiam::config::Target,
    x: &Tensor,
    za: &Tensor,
    zb: &Tensor,
    pb: &Tensor,
    ext: &Tensor,
    temp: f64,
) -> Tensor {
    use simsiam::config::Target::*;
    let mean = |x: &Tensor| x.mean_dim(&[0i64][..], true, Kind::Double);
    let b = zb.size()[0];
    // Z_n[i] = Z_b[i - 1 mod B]
    let idx: Vec<i64> = (0..b).map(|i| (i + b - 1) % b).collect();
    let zn = zb.index_select(0, &Tensor::from_slice(&idx));
    match t {
        Zb => zb.copy(),
        Pb => pb.copy(),
        PbPlusOe => pb + mean(zb) - mean(pb),
        PbPlusRe => zb - mean(zb) + mean(pb),
        ZbMinusZn => zb - &zn,
        ZbMinusOz => zb - mean(zb),
        ZbMinusRn => zb - (&zn - mean(zb)),
        ZbMinusSoftZn => zb - weighted_rows(&hand_weights(x, zb, temp), zb),
        // r_j = Z_j - o_z
        ZbMinusSoftRn => zb - weighted_rows(&hand_weights(x, zb, temp), &(zb - mean(zb))),
        Oz => mean(za).expand_as(za),
        Ra => za - mean(za),
        Eoa | Memory => ext.copy(),
        Inverse => unit(ext),
    }
}

#[test]
fn every_target_variant_gives_the_designed_gradient_on_the_online_vector() {
    use simsiam::config::{Form, Online, Target::*};
    // -dL/dx for L = -mean_m X_m . sg(G_m), X = x/||x||: (I - X X^T) G / (M ||x||) (EXPERIMENTS §0).
    #[rustfmt::skip]
    let targets = [
        Zb, Pb, PbPlusOe, PbPlusRe, // SimSiam's split (Zhang et al. Table 4)
        ZbMinusZn, ZbMinusOz, ZbMinusRn, // the triplet's (Table 3)
        ZbMinusSoftZn, ZbMinusSoftRn, // InfoNCE's (the unified view)
        Oz, Ra, // the dummy gradients (Fig. 4)
        Eoa, Memory, Inverse, // built by the step
    ];
    for target in targets {
        for online in [Online::P, Online::Z] {
            let o = outputs();
            let cfg = ObjectiveConfig {
                online,
                target,
                form: Form::Dot,
                symmetry: Symmetry::Asymmetric,
                infonce_temperature: 0.3,
                ..Default::default()
            };
            // Step-provided targets: per image (eoa, memory), or h_inv(sg p) of each view.
            let ext_t = leaf(11, 5, 7);
            let ext = match target {
                Eoa | Memory => External { per_image: Some(ext_t.detach()), ..Default::default() },
                Inverse => External { inverse: Some([leaf(12, 5, 7), ext_t.shallow_clone()]), ..Default::default() },
                _ => External::default(),
            };
            Objective::new(&cfg).loss(std::slice::from_ref(&o), &ext).backward();
            let x = match online {
                Online::P => &o.p1,
                Online::Z => &o.z1,
                Online::Oracle => unreachable!("not in this loop"),
            };
            let xn = unit(x);
            let g = hand_target(target, &xn.detach(), &unit(&o.z1), &unit(&o.z2), &unit(&o.p2), &ext_t.detach(), 0.3)
                .detach();
            let along = (&xn * &g).sum_dim_intlist(&[1i64][..], true, Kind::Double);
            let m = x.size()[0] as f64;
            let want = -(&g - &xn * along) / x.norm_scalaropt_dim(2.0, &[1i64][..], true) / m;
            let got = x.grad();
            assert!(got.allclose(&want.detach(), 1e-9, 1e-12, false), "{target:?} / {online:?}");
            // Stop-gradient: nothing reaches the target view.
            for other in [&o.z2, &o.p2] {
                let g = other.grad();
                assert!(
                    !g.defined() || g.abs().max().double_value(&[]) == 0.0,
                    "{target:?}: gradient leaked to view b"
                );
            }
        }
    }
}

#[test]
fn the_residual_dummy_gradient_acts_as_minus_the_centre() {
    // Zhang et al.: for L = -Z_a . sg(r_a), the Z_a part of r_a is a dummy (Z_a . Z_a = 1), so
    // the effective gradient on x is that of the target -o_z.
    use simsiam::config::{Form, Online, Target};
    let o = outputs();
    let cfg = |t| ObjectiveConfig {
        online: Online::Z,
        target: t,
        form: Form::Dot,
        symmetry: Symmetry::Asymmetric,
        ..Default::default()
    };
    Objective::new(&cfg(Target::Ra)).pair_loss(&o).backward();
    let g_ra = o.z1.grad().copy();
    let o2 = outputs();
    Objective::new(&cfg(Target::Oz)).pair_loss(&o2).backward();
    assert!(g_ra.allclose(&(-o2.z1.grad()), 1e-9, 1e-12, false));
}

#[test]
fn simsiam_default_equals_dot_form_with_unit_target() {
    let o = outputs();
    let a = Objective::new(&ObjectiveConfig::default()).pair_loss(&o).double_value(&[]);
    let dot = ObjectiveConfig { form: simsiam::config::Form::Dot, ..Default::default() };
    let b = Objective::new(&dot).pair_loss(&o).double_value(&[]);
    assert!((a - b).abs() < 1e-12);
}

#[test]
fn memory_bank_moving_average_by_hand() {
    use simsiam::objective::MemoryBank;
    let mut bank = MemoryBank::new(3, 2, 0.8, Device::Cpu);
    let t = |v: &[f32]| Tensor::from_slice(v).view([-1, 2]);
    let idx = Tensor::from_slice(&[2i64]);
    // First visit: the mean of the two normalised views, (1,0) and (0,1) -> (0.5, 0.5).
    let target = bank.target(&idx, &t(&[3.0, 0.0]), &t(&[0.0, 2.0]));
    assert!(target.allclose(&t(&[0.5, 0.5]), 1e-6, 1e-7, false));
    bank.update(&idx, &t(&[3.0, 0.0]), &t(&[0.0, 2.0]));
    // Second visit with both views (1, 0): 0.8 (0.5, 0.5) + 0.2 (1, 0) = (0.6, 0.4).
    assert!(bank.target(&idx, &t(&[5.0, 0.0]), &t(&[1.0, 0.0])).allclose(&t(&[0.5, 0.5]), 1e-6, 1e-7, false));
    bank.update(&idx, &t(&[5.0, 0.0]), &t(&[1.0, 0.0]));
    assert!(bank.eta.narrow(0, 2, 1).allclose(&t(&[0.6, 0.4]), 1e-6, 1e-7, false));
    // Other images untouched and unseen.
    assert_eq!(bank.seen.int64_value(&[0]), 0);
    assert_eq!(bank.eta.narrow(0, 0, 2).abs().sum(Kind::Float).double_value(&[]), 0.0);
}

/// The bank's unspecified details as options (EXPERIMENTS.md §1.7): raw projections averaged
/// when `memory_normalize` is off; with `memory_init = "random"` every entry starts as a unit
/// vector, so an image's first target is its entry, not its own views.
#[test]
fn memory_bank_options_raw_averages_and_a_random_start() {
    use simsiam::config::MemoryInit;
    use simsiam::objective::MemoryBank;
    let t = |v: &[f32]| Tensor::from_slice(v).view([-1, 2]);
    let idx = Tensor::from_slice(&[1i64]);
    let raw = ObjectiveConfig { memory_normalize: false, ..Default::default() };
    let mut bank = MemoryBank::from_config(3, 2, &raw, Device::Cpu);
    // First visit: (3, 0) and (0, 2) -> (1.5, 1).
    assert!(bank.target(&idx, &t(&[3.0, 0.0]), &t(&[0.0, 2.0])).allclose(&t(&[1.5, 1.0]), 1e-6, 1e-7, false));
    bank.update(&idx, &t(&[3.0, 0.0]), &t(&[0.0, 2.0]));
    bank.update(&idx, &t(&[5.0, 0.0]), &t(&[1.0, 0.0]));
    // 0.8 (1.5, 1) + 0.2 (3, 0) = (1.8, 0.8).
    assert!(bank.eta.narrow(0, 1, 1).allclose(&t(&[1.8, 0.8]), 1e-6, 1e-7, false));
    let random = ObjectiveConfig { memory_init: MemoryInit::Random, ..Default::default() };
    let bank = MemoryBank::from_config(5, 4, &random, Device::Cpu);
    let norms = bank.eta.norm_scalaropt_dim(2.0, &[1i64][..], false);
    assert!(norms.allclose(&Tensor::ones([5], (Kind::Float, Device::Cpu)), 1e-5, 1e-6, false), "{norms}");
    assert_eq!(bank.seen.sum(Kind::Int64).int64_value(&[]), 5, "every entry counts as visited");
    let views = Tensor::ones([1, 4], (Kind::Float, Device::Cpu));
    let first = bank.target(&idx, &views, &views);
    assert!(first.allclose(&bank.eta.narrow(0, 1, 1), 0.0, 0.0, false), "its entry, not its views");
}

#[test]
fn asymmetric_twice_averages_two_independent_pairs() {
    let (a, b) = (
        outputs(),
        SiameseOutput {
            z1: leaf(21, 5, 7),
            z2: leaf(22, 5, 7),
            p1: leaf(23, 5, 7),
            p2: leaf(24, 5, 7),
            y1: leaf(25, 5, 3),
        },
    );
    let asym = Objective::new(&ObjectiveConfig { symmetry: Symmetry::Asymmetric, ..Default::default() });
    let twice = Objective::new(&ObjectiveConfig { symmetry: Symmetry::AsymmetricTwice, ..Default::default() });
    assert_eq!(twice.views(), 4);
    let want = (asym.pair_loss(&a).double_value(&[]) + asym.pair_loss(&b).double_value(&[])) / 2.0;
    let got = twice.loss(&[a, b], &External::default()).double_value(&[]);
    assert!((got - want).abs() < 1e-12);
}

#[test]
fn decorrelation_and_infonce_by_hand() {
    use simsiam::config::Decorrelation;
    use simsiam::objective::{decorrelation_loss, infonce_loss};
    // Rows (1,1)/√2 and (-1,-1)/√2: covariance [[1,1],[1,1]] = correlation; off-diagonal
    // squares sum to 2, over d = 2: 1 for both forms.
    let z = Tensor::from_slice(&[1.0f64, 1.0, -1.0, -1.0]).view([2, 2]);
    for form in [Decorrelation::Correlation, Decorrelation::Covariance] {
        assert!((decorrelation_loss(&z, form).double_value(&[]) - 1.0).abs() < 1e-6, "{form:?}");
    }
    // Rows ±e_i: uncorrelated dimensions.
    let e =
        Tensor::cat(&[Tensor::eye(3, (Kind::Double, Device::Cpu)), -Tensor::eye(3, (Kind::Double, Device::Cpu))], 0);
    assert!(decorrelation_loss(&e, Decorrelation::Correlation).double_value(&[]).abs() < 1e-9);
    // NT-Xent, B = 2, identical orthogonal views, t = 1: rows (e1, e2, e1, e2); each row has its
    // positive at similarity 1 and two negatives at 0: -log(e / (e + 2)) = log(1 + 2/e).
    let v = Tensor::eye(2, (Kind::Double, Device::Cpu));
    let want = (1.0 + 2.0 * (-1.0f64).exp()).ln();
    assert!((infonce_loss(&v, &v, 1.0).double_value(&[]) - want).abs() < 1e-6, "log_softmax runs in f32");
    // t = 0.5, view 2 = view 1 rotated by 60 degrees: vectors at 0, 90 (view 1) and 60, 150
    // degrees (view 2). Each positive is 60 degrees away (logit cos 60 / 0.5 = 1). Row 0 deg:
    // negatives at 90 (logit 0) and 150 (-sqrt 3); row 90: at 0 (0) and 60 (+sqrt 3); row 60 is
    // like row 90, row 150 like row 0. Mean of -log softmax over the four rows.
    let a = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0]).view([2, 2]);
    let (c, s) = (0.5f64, 0.75f64.sqrt());
    let b = Tensor::from_slice(&[c, s, -s, c]).view([2, 2]);
    let r3 = 3f64.sqrt();
    let l1 = -(1.0f64.exp() / (1.0 + 1.0f64.exp() + (-r3).exp())).ln();
    let l2 = -(1.0f64.exp() / (1.0 + 1.0f64.exp() + r3.exp())).ln();
    assert!((infonce_loss(&a, &b, 0.5).double_value(&[]) - (l1 + l2) / 2.0).abs() < 1e-6);
}

/// Zhang et al. §2.11: for InfoNCE with anchor X_a, positive Z_b and the batch's other Z_b as
/// negatives, `-dL/dX_a = (1 - lambda_b)/t [Z_b + G_e]`, `G_e = -sum_i lambda~_i Z_i`. The
/// `zb_minus_soft_zn` target is that bracket: autograd of the real InfoNCE loss (here, not the
/// library's) divided by the per-sample scale gives it. `zb_minus_soft_rn` differs from it by
/// exactly o_z (the weights sum to 1), and at a large temperature, where the weights are
/// uniform, its residual part sum lambda~_i r_i = -r_b/(B - 1) is small.
#[test]
fn soft_negative_targets_are_the_infonce_gradient_split() {
    use simsiam::config::{Form, Online, Target};
    let t = 0.2;
    let (b, d) = (6, 4);
    let x = unit(&leaf(21, b, d)).detach().set_requires_grad(true);
    let za = unit(&leaf(22, b, d)).detach();
    let zb = unit(&leaf(23, b, d)).detach();
    // L = sum_i -log softmax_j(X_i . Z_b[j] / t)[i], over all j (positive and negatives).
    let logits = x.matmul(&zb.tr()) / t; // [B, B]
    let lsm = logits.log_softmax(1, Kind::Double);
    let loss = -lsm.diagonal(0, 0, 1).sum(Kind::Double);
    loss.backward();
    let lambda_b = lsm.exp().diagonal(0, 0, 1).detach().unsqueeze(1); // [B, 1]
    let want = -x.grad() * t / (1.0 - lambda_b);
    let cfg = |target| ObjectiveConfig {
        online: Online::Z,
        target,
        form: Form::Dot,
        infonce_temperature: t,
        ..Default::default()
    };
    let obj = Objective::new(&cfg(Target::ZbMinusSoftZn));
    let got = obj.target(&x, &za, &zb, &zb, None);
    assert!(got.allclose(&want, 1e-9, 1e-12, false), "{got} vs {want}");
    // The residual split: G_e - r_e = o_e = -o_z.
    let o_z = zb.mean_dim(&[0i64][..], true, Kind::Double);
    let r = Objective::new(&cfg(Target::ZbMinusSoftRn)).target(&x, &za, &zb, &zb, None);
    assert!((&r - &got).allclose(&o_z.expand_as(&r), 1e-12, 1e-12, false));
    // At t = 1e9 the weights are uniform over the B - 1 others: r_e = -sum r_i/(B - 1) = r_b/(B - 1).
    let big = ObjectiveConfig { infonce_temperature: 1e9, ..cfg(Target::ZbMinusSoftRn) };
    let r_e = Objective::new(&big).target(&x, &za, &zb, &zb, None) - &zb;
    let r_b = &zb - &o_z;
    assert!(r_e.allclose(&(&r_b / (b - 1) as f64), 1e-5, 1e-7, false));
}

/// SimSiam §6.2's "SimCLR w/ predictor (& stop-grad)": NT-Xent with P as queries and Z as keys,
/// against a row-by-row hand computation; with `infonce_stop_grad` nothing reaches the keys.
#[test]
fn infonce_with_predictor_queries_by_hand_and_its_stop_gradient() {
    use simsiam::config::Online;
    use simsiam::objective::infonce_loss_of_queries;
    let t = 0.5;
    let o = outputs();
    let (q, k) = (unit(&Tensor::cat(&[&o.p1, &o.p2], 0)), unit(&Tensor::cat(&[&o.z1, &o.z2], 0)));
    let n = q.size()[0];
    let mut want = 0.0;
    for i in 0..n {
        let pos = (i + n / 2) % n;
        let logit = |j: i64| q.get(i).dot(&k.get(j)).double_value(&[]) / t;
        let den: f64 = (0..n).filter(|&j| j != i).map(|j| logit(j).exp()).sum();
        want += -(logit(pos).exp() / den).ln();
    }
    want /= n as f64;
    let got = infonce_loss_of_queries(&o.p1, &o.p2, &o.z1, &o.z2, t).double_value(&[]);
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    for stop in [false, true] {
        let o = outputs();
        let cfg = ObjectiveConfig {
            main_weight: 0.0,
            infonce: 1.0,
            infonce_temperature: t,
            infonce_online: Online::P,
            infonce_stop_grad: stop,
            ..Default::default()
        };
        let loss = Objective::new(&cfg).pair_loss(&o);
        assert!((loss.double_value(&[]) - want).abs() < 1e-9);
        loss.backward();
        assert!(o.p1.grad().abs().max().double_value(&[]) > 0.0, "the queries learn");
        let key_grad = o.z1.grad();
        let reached = key_grad.defined() && key_grad.abs().max().double_value(&[]) > 0.0;
        assert_eq!(reached, !stop, "infonce_stop_grad = {stop}");
    }
}

/// The monitored extra gradient G_e is the target minus its basic part: SimSiam's Z_b - P_b,
/// mirror SimSiam's P_b - Z_b, the triplet's -Z_n, InfoNCE's -sum lambda_i Z_i, nothing for the naive Siamese and the
/// symmetric predictor, and none for the dummy gradients.
#[test]
fn extra_gradient_is_the_target_minus_its_basic_part() {
    use simsiam::config::{Form, Online, Target};
    let o = outputs();
    let (za, pa, zb, pb) = (unit(&o.z2), unit(&o.p2), unit(&o.z1), unit(&o.p1));
    let ge = |online, target| {
        let cfg = ObjectiveConfig { online, target, form: Form::Dot, infonce_temperature: 0.3, ..Default::default() };
        let obj = Objective::new(&cfg);
        obj.extra_gradient(&unit(obj.online_vector(&o.z2, &o.p2).unwrap()), &zb, &pb)
    };
    let close = |a: Option<Tensor>, b: Tensor| {
        let a = a.expect("an extra gradient");
        a.allclose(&b.to_kind(a.kind()), 1e-5, 1e-6, false)
    };
    assert!(close(ge(Online::P, Target::Zb), &zb - &pb), "SimSiam");
    assert!(close(ge(Online::Z, Target::Zb), zb.zeros_like()), "naive Siamese");
    assert!(close(ge(Online::P, Target::Pb), zb.zeros_like()), "symmetric predictor");
    assert!(close(ge(Online::Z, Target::Pb), &pb - &zb), "mirror SimSiam");
    let b = zb.size()[0];
    let idx: Vec<i64> = (0..b).map(|i| (i + b - 1) % b).collect();
    let zn = zb.index_select(0, &Tensor::from_slice(&idx));
    assert!(close(ge(Online::Z, Target::ZbMinusZn), -&zn), "triplet");
    let soft = weighted_rows(&hand_weights(&za.detach(), &zb.detach(), 0.3), &zb.detach());
    assert!(close(ge(Online::Z, Target::ZbMinusSoftZn), -soft), "InfoNCE");
    // With online P, InfoNCE's weights come from P_a.
    let soft_p = weighted_rows(&hand_weights(&pa.detach(), &zb.detach(), 0.3), &zb.detach());
    assert!(close(ge(Online::P, Target::ZbMinusSoftZn), -soft_p), "InfoNCE, online P");
    assert!(ge(Online::Z, Target::Oz).is_none() && ge(Online::Z, Target::Memory).is_none());
    // SimCLR (only the InfoNCE loss) has no target, so no extra gradient.
    let simclr = ObjectiveConfig { main_weight: 0.0, infonce: 1.0, ..Default::default() };
    assert!(Objective::new(&simclr).extra_gradient(&pa, &zb, &pb).is_none());
}

/// Mirror SimSiam (Zhang et al. Fig. 1c): online Z, target sg(P_b), and the predictor's own
/// regression loss `½ [D(h(sg z1), sg z2) + D(h(sg z2), sg z1)]`, by hand. It adds with its
/// weight; its gradient reaches the regressed h(sg z) only, never z; the minimum counts it.
#[test]
fn the_predictor_s_own_loss_by_hand_and_where_its_gradient_goes() {
    use simsiam::config::{Online, Target};
    let o = outputs();
    let reg = [leaf(21, 5, 7), leaf(22, 5, 7)];
    let cos = |p: &Tensor, z: &Tensor| (unit(p) * unit(z)).sum_dim_intlist(&[1i64][..], false, Kind::Double);
    let want = -(cos(&reg[0], &o.z2).mean(Kind::Double) + cos(&reg[1], &o.z1).mean(Kind::Double)) * 0.5;
    let want = want.double_value(&[]);
    let mirror =
        |w: f64| ObjectiveConfig { online: Online::Z, target: Target::Pb, predictor_loss: w, ..Default::default() };
    let obj = Objective::new(&mirror(0.5));
    assert!((obj.predictor_loss(&o, &reg).double_value(&[]) - want).abs() < 1e-12);
    let main = Objective::new(&mirror(0.0)).pair_loss(&o).double_value(&[]);
    let main_by_hand = -(cos(&o.z1, &o.p2).mean(Kind::Double) + cos(&o.z2, &o.p1).mean(Kind::Double)) * 0.5;
    assert!((main - main_by_hand.double_value(&[])).abs() < 1e-12, "the target is P_b");
    let ext = External { regressed: Some([reg[0].shallow_clone(), reg[1].shallow_clone()]), ..Default::default() };
    let total = obj.loss(std::slice::from_ref(&o), &ext);
    assert!((total.double_value(&[]) - (main + 0.5 * want)).abs() < 1e-12);
    total.backward();
    // dD/dreg0 of -mean cos(reg0, z2), times the weight 0.5 and the ½ of the two views.
    let c = cos(&reg[0], &o.z2).unsqueeze(1);
    let g = -(unit(&o.z2) - &c * unit(&reg[0])) / reg[0].norm_scalaropt_dim(2.0, &[1i64][..], true) / 5.0 * 0.25;
    assert!(reg[0].grad().allclose(&g.detach(), 1e-10, 1e-12, false));
    // z gets only the main loss's gradient as online vector: the same as without the head loss.
    let o2 = outputs();
    Objective::new(&mirror(0.0)).pair_loss(&o2).backward();
    for (z, z_alone) in [(&o.z1, &o2.z1), (&o.z2, &o2.z2)] {
        assert!(z.grad().allclose(&z_alone.grad(), 1e-12, 1e-12, false), "the head's loss leaked into z");
    }
    assert!(!o.p1.grad().defined() || o.p1.grad().abs().max().double_value(&[]) == 0.0, "P is only a target");
    assert_eq!(obj.minimum(), Some(-1.5), "both losses at -1 on a collapsed representation");
    // Symmetrised, the main loss -½[cos(z1, h(z2)) + cos(z2, h(z1))] pairs the same vectors as
    // the predictor's own: with h(sg z) = p, weight 1 doubles it. The encoder learns through z
    // only, h through its own loss only.
    let same = [o.p1.detach(), o.p2.detach()];
    let ext = External { regressed: Some([same[0].shallow_clone(), same[1].shallow_clone()]), ..Default::default() };
    let mirror1 = Objective::new(&mirror(1.0));
    let total = mirror1.loss(std::slice::from_ref(&o), &ext).double_value(&[]);
    assert!((total - 2.0 * mirror1.predictor_loss(&o, &same).double_value(&[])).abs() < 1e-12);
    // Its verdict's loss bands are per unit loss: -1.85 of -2 is -0.925 of -1 (collapsed with
    // the spread down from 1.0 to 0.3), where the plain band would not call it at the minimum.
    assert_eq!(mirror1.loss_scale(), 2.0);
    assert_eq!(mirror1.verdict(-1.85, 0.3, Some(1.0)), CollapseVerdict::Collapsed);
    assert_eq!(verdict(-1.85, mirror1.minimum(), 0.3, Some(1.0)), CollapseVerdict::Narrow);
    assert_eq!(mirror1.verdict(-0.5, 0.9, Some(1.0)), CollapseVerdict::NotConverged, "-0.25 a unit");
}

#[test]
fn extra_losses_add_with_their_weights() {
    let o = outputs();
    let base = Objective::new(&ObjectiveConfig::default()).pair_loss(&o).double_value(&[]);
    let cfg = ObjectiveConfig {
        main_weight: 0.5,
        decorrelation: 2.0,
        infonce: 3.0,
        infonce_temperature: 0.5,
        ..Default::default()
    };
    let got = Objective::new(&cfg).pair_loss(&o).double_value(&[]);
    use simsiam::config::Decorrelation::Correlation;
    use simsiam::objective::{decorrelation_loss, infonce_loss};
    let dc = (decorrelation_loss(&o.z1, Correlation).double_value(&[])
        + decorrelation_loss(&o.z2, Correlation).double_value(&[]))
        / 2.0;
    let nce = infonce_loss(&o.z1, &o.z2, 0.5).double_value(&[]);
    assert!((got - (0.5 * base + 2.0 * dc + 3.0 * nce)).abs() < 1e-10);
    assert_eq!(Objective::new(&cfg).minimum(), None);
}

#[test]
fn cached_targets_equal_to_the_current_ones_are_simsiam() {
    // k-step alternation with k = 1: the cached z are this step's, and nothing changes.
    let a = outputs();
    let plain = Objective::new(&ObjectiveConfig::default());
    let la = plain.pair_loss(&a);
    la.backward();
    let b = outputs();
    let ext = External { cached: Some([b.z1.detach(), b.z2.detach()]), ..Default::default() };
    let lb = plain.loss(std::slice::from_ref(&b), &ext);
    lb.backward();
    assert!((la.double_value(&[]) - lb.double_value(&[])).abs() < 1e-12);
    assert!(a.p1.grad().allclose(&b.p1.grad(), 1e-12, 1e-14, false));
    assert!(a.p2.grad().allclose(&b.p2.grad(), 1e-12, 1e-14, false));
    // A stale cache changes the target, and only the target.
    let c = outputs();
    let stale = External { cached: Some([c.z1.detach() * 0.0 + 1.0, c.z2.detach()]), ..Default::default() };
    assert!((plain.loss(std::slice::from_ref(&c), &stale).double_value(&[]) - la.double_value(&[])).abs() > 1e-6);
}

#[test]
fn byol_ema_update_and_schedule_by_hand() {
    use simsiam::config::{Config, EmaSchedule};
    use simsiam::train::{Ema, Network};
    let cfg = Config::resolve_method("tiny", "byol", None, &[]).unwrap();
    assert!(cfg.model.ema_target && cfg.model.ema_momentum == 0.99);
    let mut net = Network::new(&cfg, Device::Cpu);
    let name = "backbone.conv1.weight";
    let online = net.vs.variables()[name].shallow_clone();
    let before = net.ema.as_ref().unwrap().vs.variables()[name].copy();
    assert!(before.equal(&online), "the target starts as a copy");
    tch::no_grad(|| {
        let _ = online.shallow_clone().g_add_scalar_(1.0);
    });
    net.ema.as_mut().unwrap().update(0.9);
    // xi <- 0.9 xi + 0.1 (xi + 1) = xi + 0.1
    let after = net.ema.as_ref().unwrap().vs.variables()[name].copy();
    assert!(after.allclose(&(&before + 0.1), 1e-6, 1e-7, false));
    assert!(!net.ema.as_ref().unwrap().vs.variables()[name].requires_grad(), "the target takes no gradient");
    // tau_k = 1 - (1 - 0.99)(cos(pi k/K) + 1)/2: 0.99 at the start, 0.995 halfway, 1 at the end.
    assert!((Ema::momentum(EmaSchedule::Cosine, 0.99, 0, 100) - 0.99).abs() < 1e-12);
    assert!((Ema::momentum(EmaSchedule::Cosine, 0.99, 50, 100) - 0.995).abs() < 1e-12);
    assert!((Ema::momentum(EmaSchedule::Cosine, 0.99, 100, 100) - 1.0).abs() < 1e-12);
}

#[test]
fn simclr_method_is_nt_xent_without_predictor() {
    use simsiam::config::{Config, PredictorKind};
    let c = Config::resolve_method("cifar10", "simclr", None, &[]).unwrap();
    assert_eq!(
        (c.model.predictor, c.objective.main_weight, c.objective.infonce, c.objective.infonce_temperature),
        (PredictorKind::Identity, 0.0, 1.0, 0.5)
    );
    // The loss is exactly NT-Xent on z.
    let o = outputs();
    let got = Objective::new(&c.objective).pair_loss(&o).double_value(&[]);
    let want = simsiam::objective::infonce_loss(&o.z1, &o.z2, 0.5).double_value(&[]);
    assert!((got - want).abs() < 1e-9);
    assert!(Config::resolve_method("cifar10", "mocov9", None, &[]).unwrap_err().to_string().contains("simclr"));
}

#[test]
fn the_online_probe_never_changes_the_representation() {
    use simsiam::augment::Augmenter;
    use simsiam::config::Config;
    use simsiam::optim::Sgd;
    use simsiam::train::{step, views, Network, StepTargets};
    // Same weights and views for both networks by copying, not by seeding: tests share
    // libtorch's global generator across threads.
    let cfg = Config::resolve("tiny", None, &["optim.batch_size=16".into()]).unwrap();
    let with = Network::build(&cfg, Device::Cpu, 10);
    let mut without = Network::build(&cfg, Device::Cpu, 0);
    without.vs.copy(&with.vs).unwrap();
    let aug = Augmenter::new(&cfg.augment, 32, Device::Cpu);
    let images = Tensor::randint(256, [16, 32, 32, 3], (Kind::Uint8, Device::Cpu));
    let xs = views(&aug, &images, 2);
    let labels = Tensor::arange(16, (Kind::Int64, Device::Cpu)).remainder(10);
    let objective = Objective::new(&cfg.objective);
    let run = |net: &Network, labels: Option<Tensor>| {
        let mut opt = Sgd::new(net.params(&cfg), 3, 0.9, 5e-4);
        opt.lrs = vec![0.1, 0.1, 0.5];
        let out =
            step(&net.model, &objective, &mut opt, &xs, StepTargets { labels, ..Default::default() }, None).unwrap();
        (net.vs.variables()["backbone.layer4.1.conv2.weight"].copy(), out.loss.double_value(&[]))
    };
    let (w0, l0) = run(&without, None);
    let (w1, l1) = run(&with, Some(labels));
    assert!(w0.allclose(&w1, 1e-6, 1e-7, false), "backbone the same with and without the probe");
    assert!(l1 > l0, "the probe's cross-entropy is part of the reported loss");
}

#[test]
fn oracle_predictor_is_a_posterior_average_of_the_bank() {
    use simsiam::objective::MemoryBank;
    let mut bank = MemoryBank::new(4, 3, 0.8, Device::Cpu);
    let eye = Tensor::eye(3, (Kind::Float, Device::Cpu));
    // Images 0 and 1 visited: centres e1 and e2.
    let first = Tensor::from_slice(&[0i64, 1]);
    bank.update(&first, &eye.narrow(0, 0, 2), &eye.narrow(0, 0, 2));
    // Image 2 in this batch, its views near e2 + a little e3.
    let idx = Tensor::from_slice(&[2i64]);
    let z = Tensor::from_slice(&[0.0f32, 1.0, 0.3]).view([1, 3]).set_requires_grad(true);
    let sharp = |exclude| bank.oracle(&idx, &z, &z, &z, 200.0, exclude);
    // With its own (current) entry, the sharpest match is itself: normalize(z).
    let own = sharp(false);
    assert!(own.allclose(&(&z / z.norm()).detach(), 1e-3, 1e-4, false), "{own}");
    // Without it, the nearest other centre: e2.
    assert!(sharp(true).allclose(&eye.narrow(0, 1, 1), 1e-3, 1e-4, false));
    // A soft kappa averages: weights sum to 1, so h is inside the hull of the candidates.
    let soft = bank.oracle(&idx, &z, &z, &z, 1.0, true);
    assert!((soft.sum(Kind::Float).double_value(&[]) - 1.0).abs() < 1e-5, "rows e1, e2 sum to 1 each");
    // The gradient reaches z through the weights; the bank takes none.
    soft.sum(Kind::Float).backward();
    assert!(z.grad().defined());
    assert!(!bank.eta.requires_grad());
}
