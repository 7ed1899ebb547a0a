//! The blog-hypotheses verdicts (`simsiam hypotheses`) follow their stated rules: synthetic
//! analyses on each side of every threshold give the verdict the rule names.
use serde_json::{json, Value};
use simsiam::hypotheses::{judge, write, Inputs, Method};

fn method(name: &str, latest: Value) -> Method {
    Method { name: name.into(), run: name.into(), latest, by_epoch: Vec::new(), metrics: Vec::new() }
}

/// Analyses of a model: predictor cosines, instance-ID at N = 1000, shard gap and uniformity,
/// centres' TwoNN and effective rank, R_inf.
fn analyses(cos_h_hstar: f64, top1: f64, gap: f64, unif: f64, two_nn: f64, erank: f64, r_inf: f64) -> Value {
    json!({
        "predictor": {"cos_h_hstar": cos_h_hstar, "cos_h_z": 0.8, "cos_h_centre_true": 0.7, "cos_h_global_mean": 0.3},
        "instances": {"by_size": [
            {"instances": 100, "id": {"top1": 99.0, "p_true": 0.99}},
            {"instances": 1000, "id": {"top1": top1, "p_true": top1 / 100.0}},
        ]},
        "shards": {"separation_gap_mean_rad": gap, "centre_uniformity": unif, "separated_fraction": 0.1},
        "dimension": {"centres": {"two_nn": two_nn, "spectrum": {"effective_rank": erank}}, "n": 1000, "k": 16,
            "z_moments": {"train_bn": {"dim_mean_abs": 0.0, "dim_std_mean": 1.0, "sqrt_d_collapse_std": 0.98}}},
        "invariance": {"mean_resultant_unbiased": r_inf},
    })
}

fn inputs(simsiam: Value, simclr: Value, experiments: Value) -> Inputs {
    let init = analyses(0.0, 5.0, -1.0, -1.0, 5.0, 10.0, 0.5);
    Inputs { methods: vec![method("simsiam", simsiam), method("simclr", simclr)], init, experiments }
}

fn verdicts(inp: &Inputs) -> Vec<(String, String)> {
    judge(inp).into_iter().map(|v| (v.claim.to_string(), v.verdict)).collect()
}

fn get<'a>(v: &'a [(String, String)], claim: &str) -> &'a str {
    &v.iter().find(|(c, _)| c == claim).unwrap().1
}

#[test]
fn every_claim_follows_its_rule() {
    // SimSiam as the blog predicts: h = h*, sharded, less separated and less uniform than
    // SimCLR, lower-dimensional, less invariant.
    let blog = inputs(
        analyses(0.95, 95.0, 0.1, -2.0, 8.0, 50.0, 0.6),
        analyses(0.0, 99.0, 0.5, -3.0, 12.0, 90.0, 0.8),
        json!({}),
    );
    let v = verdicts(&blog);
    for (claim, want) in [("C1", "supported"), ("C2", "supported"), ("C3", "supported"), ("C4", "supported")] {
        assert_eq!(get(&v, claim), want, "{claim}: {v:?}");
    }
    // C5 has no behavioural arm here: the invariance half alone gives "partly".
    assert_eq!(get(&v, "C5"), "partly");
    // C6: the moments hold but only 10% of shards are separated at initialisation.
    assert_eq!(get(&v, "C6"), "partly");

    // The opposite on every count.
    let against = inputs(
        analyses(0.5, 4.0, 0.9, -4.0, 20.0, 120.0, 0.9),
        analyses(0.0, 99.0, 0.5, -3.0, 12.0, 90.0, 0.8),
        json!({}),
    );
    let v = verdicts(&against);
    for claim in ["C1", "C2", "C3", "C4", "C5"] {
        assert_eq!(get(&v, claim), "not supported", "{claim}: {v:?}");
    }

    // In between: h above its baselines but below 0.9, ID above init but short of sharded,
    // and each two-part claim with one part holding.
    let mid = inputs(
        analyses(0.85, 30.0, 0.1, -4.0, 8.0, 120.0, 0.9),
        analyses(0.0, 99.0, 0.5, -3.0, 12.0, 90.0, 0.8),
        json!({}),
    );
    let v = verdicts(&mid);
    for claim in ["C1", "C2", "C3", "C4"] {
        assert_eq!(get(&v, claim), "partly", "{claim}: {v:?}");
    }
}

#[test]
fn the_behavioural_test_completes_c5_and_missing_measurements_say_so() {
    let arm = |name: &str, knn: f64| json!({"name": name, "summary": {"knn_final": knn}});
    let removal = |ss_drop: f64, sc_drop: f64| {
        json!({"augmentation-removal": {"arms": [
            arm("simsiam-full", 50.0), arm("simsiam-crop-only", 50.0 - ss_drop),
            arm("simclr-full", 60.0), arm("simclr-crop-only", 60.0 - sc_drop),
        ]}})
    };
    let (ss, sc) = (analyses(0.95, 95.0, 0.1, -2.0, 8.0, 50.0, 0.6), analyses(0.0, 99.0, 0.5, -3.0, 12.0, 90.0, 0.8));
    assert_eq!(get(&verdicts(&inputs(ss.clone(), sc.clone(), removal(3.0, 8.0))), "C5"), "supported");
    assert_eq!(get(&verdicts(&inputs(ss.clone(), sc.clone(), removal(8.0, 3.0))), "C5"), "partly");
    // A seeded outcome lists each arm once per seed: the drops are of the means. Seed 0 alone
    // (SimSiam -6, SimCLR -4) would say "partly"; the means (-4 and -6) say "supported".
    let seeded = |name: &str, seed: u64, knn: f64| json!({"name": name, "seed": seed, "summary": {"knn_final": knn}});
    let seeds = json!({"augmentation-removal": {"arms": [
        seeded("simsiam-full", 0, 50.0), seeded("simsiam-full", 1, 50.0),
        seeded("simsiam-crop-only", 0, 44.0), seeded("simsiam-crop-only", 1, 48.0),
        seeded("simclr-full", 0, 60.0), seeded("simclr-full", 1, 60.0),
        seeded("simclr-crop-only", 0, 56.0), seeded("simclr-crop-only", 1, 52.0),
    ]}});
    let v = verdicts(&inputs(ss.clone(), sc.clone(), seeds));
    assert_eq!(get(&v, "C5"), "supported", "{v:?}");
    // Without any analyses, every claim is "not measured" rather than guessed.
    let v = verdicts(&inputs(json!({}), json!({}), json!({})));
    for claim in ["C1", "C2", "C3", "C4", "C5"] {
        assert_eq!(get(&v, claim), "not measured", "{claim}: {v:?}");
    }
}

#[test]
fn the_report_states_each_verdict_with_its_rule_and_plots() {
    let inp = inputs(
        analyses(0.95, 95.0, 0.1, -2.0, 8.0, 50.0, 0.6),
        analyses(0.0, 99.0, 0.5, -3.0, 12.0, 90.0, 0.8),
        json!({}),
    );
    let tmp = tempfile::tempdir().unwrap();
    let md = std::fs::read_to_string(write(&inp, tmp.path(), "simsiam hypotheses ...").unwrap()).unwrap();
    for claim in ["C1", "C2", "C3", "C4", "C5", "C6"] {
        assert!(md.contains(&format!("| {claim} |")), "{claim} row");
    }
    assert!(md.contains("Rules (applied as written"));
    // A '|' inside a cell is escaped, so the tables keep their columns.
    assert!(md.contains("p(x_true\\|z)"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("verdicts.json")).unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 6);
    assert!(tmp.path().join("plots/b2-id-vs-n.png").is_file());
}
