//! `simsiam hypotheses`: the blog's claims C1-C6 (EXPERIMENTS.md §3) judged from measurements.
//! It reads what `simsiam analyse` wrote for a SimSiam, a SimCLR and (optionally) a BYOL run
//! trained with one schedule (their latest checkpoints, the initialisation, and any per-epoch
//! checkpoints), their `metrics.jsonl`, and optionally the outcomes of the B6/B7/C4/C5
//! experiments, and writes `report.md`, `verdicts.json` and plots. Every verdict is a stated
//! rule applied to the numbers printed beside it; nothing here trains or measures.
use crate::error::{Error, Result};
use crate::report::{read_lines, render, Figure, Series};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One trained model and what `simsiam analyse` left in its run folder.
pub struct Method {
    /// `simsiam`, `simclr`, `byol`, or another label (a column of the tables only).
    pub name: String,
    pub run: PathBuf,
    /// The latest checkpoint's analyses (`RUN/analysis/*.json`), keyed by analysis name.
    pub latest: Value,
    /// `(epoch, analyses)` of every `RUN/analysis/step-*` folder, by epoch.
    pub by_epoch: Vec<(f64, Value)>,
    /// `RUN/metrics.jsonl`.
    pub metrics: Vec<Value>,
}

/// Reads every `*.json` in `dir` into one object keyed by file stem (empty when absent).
fn read_analyses(dir: &Path) -> Result<Value> {
    let mut out = serde_json::Map::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Value::Object(out)) };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| Error::data(&p, format!("not JSON: {e}")))?;
            out.insert(p.file_stem().expect("stem").to_string_lossy().into_owned(), v);
        }
    }
    Ok(Value::Object(out))
}

impl Method {
    pub fn load(name: &str, run: &Path) -> Result<Method> {
        if !run.join("config.toml").is_file() {
            return Err(Error::data(run, format!("--run {name}=...: not a run folder (no config.toml)")));
        }
        let latest = read_analyses(&run.join("analysis"))?;
        if latest.as_object().is_none_or(|m| m.is_empty()) {
            return Err(Error::data(
                run.join("analysis"),
                format!("no analyses of {name}'s latest checkpoint: run `simsiam analyse all {}` first", run.display()),
            ));
        }
        let mut by_epoch = Vec::new();
        for e in std::fs::read_dir(run.join("analysis")).map_err(|e| Error::io(run.join("analysis"), e))?.flatten() {
            let is_step = e.file_name().to_string_lossy().starts_with("step-")
                && !e.file_name().to_string_lossy().ends_with("-train-bn");
            if is_step && e.path().is_dir() {
                let v = read_analyses(&e.path())?;
                let epoch = v.as_object().and_then(|m| m.values().find_map(|a| a["checkpoint"]["epoch"].as_f64()));
                if let Some(epoch) = epoch {
                    by_epoch.push((epoch, v));
                }
            }
        }
        by_epoch.sort_by(|a, b| a.0.total_cmp(&b.0));
        let metrics = read_lines(&run.join("metrics.jsonl"))?;
        Ok(Method { name: name.to_string(), run: run.to_path_buf(), latest, by_epoch, metrics })
    }

    fn last_event(&self, event: &str) -> Option<&Value> {
        self.metrics.iter().rev().find(|r| r["event"] == event)
    }

    /// The last training step's logged row (no `event` field).
    fn last_step(&self) -> Option<&Value> {
        self.metrics.iter().rev().find(|r| r.get("event").is_none())
    }
}

/// `v` at a dotted path (`"instances.by_size"`), as f64.
fn num(v: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(v, |v, k| v.get(k)).and_then(Value::as_f64)
}

/// A table cell reader: the number at `section.key` of an analysis.
fn field(section: &str, key: &str) -> impl Fn(&Value) -> Option<f64> {
    let path = format!("{section}.{key}");
    move |v| num(v, &path)
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map_or("–".into(), |x| format!("{x:.digits$}"))
}

/// The `by_size` row with the most instances of an `instances.json`.
fn largest_size(instances: &Value) -> Option<&Value> {
    instances["by_size"]
        .as_array()?
        .iter()
        .max_by(|a, b| num(a, "instances").unwrap_or(0.0).total_cmp(&num(b, "instances").unwrap_or(0.0)))
}

/// A hypothesis' verdict: the rule, the numbers it was applied to, and the outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub claim: &'static str,
    pub text: &'static str,
    /// `supported`, `partly`, `not supported` or `not measured`.
    pub verdict: String,
    pub rule: String,
    pub evidence: String,
}

fn verdict(claim: &'static str, text: &'static str, rule: &str, evidence: String, outcome: Option<&str>) -> Verdict {
    Verdict { claim, text, verdict: outcome.unwrap_or("not measured").to_string(), rule: rule.to_string(), evidence }
}

/// Everything the report needs.
pub struct Inputs {
    pub methods: Vec<Method>,
    /// SimSiam's initialisation analysed in train-mode BN (`RUN/analysis/init-train-bn`).
    pub init: Value,
    /// Experiment outcomes (`ROOT/NAME/outcome.json`), keyed by experiment name.
    pub experiments: Value,
}

impl Inputs {
    pub fn load(runs: &[(String, PathBuf)], experiments: Option<&Path>) -> Result<Inputs> {
        let methods = runs.iter().map(|(n, r)| Method::load(n, r)).collect::<Result<Vec<_>>>()?;
        for need in ["simsiam", "simclr"] {
            if !methods.iter().any(|m| m.name == need) {
                return Err(Error::config(format!(
                    "--run: a `{need}=RUN_DIR` run is needed (C3-C5 compare SimSiam with SimCLR)"
                )));
            }
        }
        let simsiam = &methods.iter().find(|m| m.name == "simsiam").expect("checked").run;
        let init = read_analyses(&simsiam.join("analysis").join("init-train-bn"))?;
        let mut ex = serde_json::Map::new();
        if let Some(root) = experiments {
            for name in ["oracle-predictor", "augmentation-removal", "dim-sweep"] {
                let p = root.join(name).join("outcome.json");
                if p.is_file() {
                    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
                    ex.insert(
                        name.into(),
                        serde_json::from_str(&text).map_err(|e| Error::data(&p, format!("not JSON: {e}")))?,
                    );
                }
            }
        }
        Ok(Inputs { methods, init, experiments: Value::Object(ex) })
    }

    fn method(&self, name: &str) -> Option<&Method> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// `(name, latest analyses)` of every method, then the initialisation when analysed.
    fn columns(&self) -> Vec<(String, &Value)> {
        let mut cols: Vec<(String, &Value)> = self.methods.iter().map(|m| (m.name.clone(), &m.latest)).collect();
        if self.init.as_object().is_some_and(|m| !m.is_empty()) {
            cols.push(("init (train BN)".into(), &self.init));
        }
        cols
    }

    /// An experiment arm's final kNN top-1; with seeds (one entry per seed), the mean over them,
    /// as the experiment's own orderings take it ([`crate::report::mean_sd`]).
    fn arm_knn(&self, experiment: &str, arm: &str) -> Option<f64> {
        let arms = self.experiments[experiment]["arms"].as_array()?;
        let runs: Vec<Option<f64>> =
            arms.iter().filter(|a| a["name"] == arm).map(|a| a["summary"]["knn_final"].as_f64()).collect();
        crate::report::mean_sd(&runs).map(|(mean, ..)| mean)
    }
}

/// Text for a markdown table cell (a `|` would end the cell).
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// A markdown table with one row per metric and one column per analysed model.
/// A table row: label, how to read the figure from a model's analyses, decimals.
type Row<'a> = (&'a str, &'a dyn Fn(&Value) -> Option<f64>, usize);

fn table(out: &mut String, cols: &[(String, &Value)], rows: &[Row]) {
    let _ = writeln!(out, "| metric | {} |", cols.iter().map(|c| cell(&c.0)).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(cols.len()));
    for (label, f, digits) in rows {
        let cells: Vec<String> = cols.iter().map(|(_, v)| fmt(f(v), *digits)).collect();
        let _ = writeln!(out, "| {} | {} |", cell(label), cells.join(" | "));
    }
    out.push('\n');
}

/// A two-part claim: supported when both parts hold, partly when one does, not measured when
/// either part lacks its numbers.
fn both_parts(parts: [Option<bool>; 2]) -> Option<&'static str> {
    let [a, b] = parts;
    Some(match (a?, b?) {
        (true, true) => "supported",
        (false, false) => "not supported",
        _ => "partly",
    })
}

/// The judged claims, in catalogue order.
pub fn judge(inp: &Inputs) -> Vec<Verdict> {
    let ss = &inp.method("simsiam").expect("checked").latest;
    let sc = &inp.method("simclr").expect("checked").latest;
    let mut out = Vec::new();

    // C1: h close to h*, and closer to it than to every baseline.
    let c = num(ss, "predictor.cos_h_hstar");
    let best_baseline = ["cos_h_z", "cos_h_centre_true", "cos_h_global_mean"]
        .iter()
        .filter_map(|k| num(ss, &format!("predictor.{k}")))
        .fold(f64::NAN, f64::max);
    let outcome = c.map(|c| {
        if c >= 0.9 && c > best_baseline {
            "supported"
        } else if c > best_baseline {
            "partly"
        } else {
            "not supported"
        }
    });
    out.push(verdict(
        "C1",
        "SimSiam's learned predictor approximates the optimal h*(z) = sum p(x'|z) f_bar(x')",
        "supported: mean cos(h, h*) >= 0.9 and above every baseline (cos(h, z), cos(h, f_bar(x_true)), cos(h, o)); partly: above every baseline but below 0.9; not supported otherwise",
        format!("cos(h, h*) = {}; best baseline = {}", fmt(c, 3), fmt(Some(best_baseline), 3)),
        outcome,
    ));

    // C2: the end state is sharded (p(x|z) -> 1); at least, training moves towards it.
    let ss_id = largest_size(&ss["instances"]);
    let init_id = largest_size(&inp.init["instances"]);
    let top1 = ss_id.and_then(|r| num(r, "id.top1"));
    let p_true = ss_id.and_then(|r| num(r, "id.p_true"));
    let init_top1 = init_id.and_then(|r| num(r, "id.top1"));
    let n = ss_id.and_then(|r| num(r, "instances"));
    let outcome = match (top1, p_true, init_top1) {
        (Some(t), Some(p), _) if t >= 90.0 && p >= 0.5 => Some("supported"),
        (Some(t), _, Some(i)) if t > i => Some("partly"),
        (Some(_), _, Some(_)) => Some("not supported"),
        _ => None,
    };
    out.push(verdict(
        "C2",
        "SimSiam's encoder moves the posterior p(x'|z) towards the true instance; its ideal end state is sharded (p(x|z) = 1)",
        "supported: instance-ID top-1 >= 90% and mean p(x_true|z) >= 0.5 among N test images; partly: top-1 above the initialisation's but short of that; not supported: not above the initialisation",
        format!(
            "N = {}: SimSiam top-1 {}%, p(x_true|z) {}; initialisation top-1 {}% (chance {}%)",
            fmt(n, 0),
            fmt(top1, 1),
            fmt(p_true, 3),
            fmt(init_top1, 1),
            fmt(n.map(|n| 100.0 / n), 2)
        ),
        outcome,
    ));

    // C3: no incentive to separate shards: less separation and less uniform centres than SimCLR.
    let gap = |v: &Value| num(v, "shards.separation_gap_mean_rad");
    let unif = |v: &Value| num(v, "shards.centre_uniformity");
    let outcome = both_parts([gap(ss).zip(gap(sc)).map(|(a, b)| a < b), unif(ss).zip(unif(sc)).map(|(a, b)| a > b)]);
    out.push(verdict(
        "C3",
        "SimSiam has no incentive to push shards apart, unlike SimCLR's repulsion",
        "supported: SimSiam's separation gap arccos(s_nn) - 2 rho is smaller than SimCLR's AND its centres are less uniform (higher log E exp(-2||mu - mu'||^2)); partly: one of the two",
        format!(
            "gap (rad): SimSiam {}, SimCLR {}; centre uniformity: SimSiam {}, SimCLR {}",
            fmt(gap(ss), 3),
            fmt(gap(sc), 3),
            fmt(unif(ss), 3),
            fmt(unif(sc), 3)
        ),
        outcome,
    ));

    // C4: SimSiam lies on a lower-dimensional manifold than SimCLR.
    let id = |v: &Value| num(v, "dimension.centres.two_nn");
    let er = |v: &Value| num(v, "dimension.centres.spectrum.effective_rank");
    let outcome = both_parts([id(ss).zip(id(sc)).map(|(a, b)| a < b), er(ss).zip(er(sc)).map(|(a, b)| a < b)]);
    let mut evidence = format!(
        "instance centres: TwoNN SimSiam {} vs SimCLR {}; effective rank SimSiam {} vs SimCLR {}",
        fmt(id(ss), 1),
        fmt(id(sc), 1),
        fmt(er(ss), 1),
        fmt(er(sc), 1)
    );
    let sweep = |m: &str| -> Vec<Option<f64>> {
        [256, 512, 1024, 2048].iter().map(|d| inp.arm_knn("dim-sweep", &format!("{m}-d{d}"))).collect()
    };
    if sweep("simsiam").iter().all(Option::is_some) {
        let show = |v: Vec<Option<f64>>| v.iter().map(|x| fmt(*x, 1)).collect::<Vec<_>>().join(" / ");
        let _ = write!(
            evidence,
            "; dim-sweep kNN at d = 256/512/1024/2048: SimSiam {}, SimCLR {}",
            show(sweep("simsiam")),
            show(sweep("simclr"))
        );
    }
    out.push(verdict(
        "C4",
        "SimSiam's representation lies on a lower-dimensional manifold than SimCLR's",
        "supported: the TwoNN intrinsic dimension AND the effective rank of SimSiam's instance centres are below SimCLR's; partly: one of the two (the dim-sweep's kNN trend is reported beside it, not judged)",
        evidence,
        outcome,
    ));

    // C5: SimCLR more augmentation-invariant; and removing augmentations hurts SimCLR more.
    let r = |v: &Value| num(v, "invariance.mean_resultant_unbiased");
    let invariant = r(ss).zip(r(sc)).map(|(a, b)| b > a);
    let drop = |m: &str| {
        Some(
            inp.arm_knn("augmentation-removal", &format!("{m}-full"))?
                - inp.arm_knn("augmentation-removal", &format!("{m}-crop-only"))?,
        )
    };
    let behaviour = drop("simsiam").zip(drop("simclr")).map(|(a, b)| b > a);
    let outcome = match (invariant, behaviour) {
        (Some(true), Some(true)) => Some("supported"),
        (Some(true), None) | (Some(true), Some(false)) | (Some(false), Some(true)) => Some("partly"),
        (Some(false), _) => Some("not supported"),
        (None, _) => None,
    };
    out.push(verdict(
        "C5",
        "SimCLR is more augmentation-invariant than SimSiam, so removing augmentations hurts SimCLR more",
        "supported: SimCLR's bias-corrected mean resultant length R_inf of z exceeds SimSiam's AND its kNN drop from full augmentation to crop-only is larger; partly: one of the two",
        format!(
            "R_inf: SimSiam {}, SimCLR {}; kNN drop full -> crop-only: SimSiam {}, SimCLR {} points",
            fmt(r(ss), 3),
            fmt(r(sc), 3),
            fmt(drop("simsiam"), 1),
            fmt(drop("simclr"), 1)
        ),
        outcome,
    ));

    // C6: at initialisation z is zero-mean, unit-variance per dimension, instances far apart.
    let m = |k: &str| num(&inp.init, &format!("dimension.z_moments.train_bn.{k}"));
    let (mean_abs, std, spread) = (m("dim_mean_abs"), m("dim_std_mean"), m("sqrt_d_collapse_std"));
    let moments_hold = mean_abs.zip(std).zip(spread).map(|((a, s), c)| a < 0.05 && (s - 1.0).abs() < 0.05 && c > 0.9);
    let separated = num(&inp.init, "shards.separated_fraction");
    let outcome = match (moments_hold, separated) {
        (Some(true), Some(s)) if s >= 0.5 => Some("supported"),
        (Some(true), Some(_)) => Some("partly"),
        (Some(false), Some(_)) => Some("not supported"),
        _ => None,
    };
    out.push(verdict(
        "C6",
        "At initialisation the BN'd projector output is zero-mean and unit-variance per dimension, so instances start far apart",
        "supported: at initialisation (train-mode BN) |per-dim mean| < 0.05, per-dim std within 0.05 of 1, sqrt(d) collapse_std > 0.9, AND at least half the instances' shards are separated (overlap ratio arccos(s_nn)/2rho > 1); partly: the moments hold but the shards overlap",
        format!(
            "mean |per-dim mean| {}, mean per-dim std {}, sqrt(d) collapse_std {}; separated fraction {}; instance-ID top-1 {}%",
            fmt(mean_abs, 3),
            fmt(std, 3),
            fmt(spread, 3),
            fmt(separated, 3),
            fmt(init_top1, 1)
        ),
        outcome,
    ));
    out
}

/// Renders `fig` into `plots` and links its PNG from the report.
fn figure(md: &mut String, plots: &Path, fig: Figure) -> Result<()> {
    render(plots, &fig)?;
    let _ = write!(md, "![{0}](plots/{0}.png)\n\n", fig.stem);
    Ok(())
}

/// Writes `out/report.md`, `out/verdicts.json` and `out/plots/*`; returns the report's path.
pub fn write(inp: &Inputs, out: &Path, command: &str) -> Result<PathBuf> {
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| Error::io(&plots, e))?;
    let verdicts = judge(inp);
    let cols = inp.columns();
    let mut md = String::new();
    let _ = writeln!(md, "# The blog's hypotheses (seed 000), measured\n");
    let _ = writeln!(md, "Written by `simsiam hypotheses` from the runs' analyses. Command:\n\n```\n{command}\n```\n");

    let _ = writeln!(md, "## Verdicts\n\n| claim | hypothesis | verdict | evidence |\n|---|---|---|---|");
    for v in &verdicts {
        let _ = writeln!(md, "| {} | {} | **{}** | {} |", v.claim, cell(v.text), v.verdict, cell(&v.evidence));
    }
    let _ = writeln!(md, "\nRules (applied as written, not tuned to the outcome):\n");
    for v in &verdicts {
        let _ = writeln!(md, "- {}: {}", v.claim, v.rule);
    }

    let _ = writeln!(
        md,
        "\n## The runs\n\n| method | run | analysed epoch | last logged loss | sqrt(d)·collapse_std | last kNN top-1 % |\n|---|---|---|---|---|---|"
    );
    for m in &inp.methods {
        let step = m.last_step();
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {} | {} | {} |",
            m.name,
            m.run.display(),
            fmt(m.latest.as_object().and_then(|a| a.values().find_map(|v| num(v, "checkpoint.epoch"))), 0),
            fmt(step.and_then(|s| num(s, "loss")), 3),
            fmt(step.and_then(|s| num(s, "collapse_std_scaled")), 3),
            fmt(m.last_event("knn").and_then(|k| num(k, "knn_top1")), 2),
        );
    }
    let first = &inp.methods[0].latest;
    let _ = writeln!(
        md,
        "\nAnalyses on N = {} test images with K = {} training-augmentation views each (eval-mode BN unless marked).\n",
        fmt(num(first, "dimension.n"), 0),
        fmt(num(first, "dimension.k"), 0)
    );

    // B1.
    let _ = writeln!(md, "## B1 (C1): the learned predictor against the optimal h*\n");
    let with_pred: Vec<(String, &Value)> =
        cols.iter().filter(|(n, _)| n != "simclr").map(|(n, v)| (n.clone(), *v)).collect();
    let p = |k| field("predictor", k);
    table(
        &mut md,
        &with_pred,
        &[
            ("cos(h, h*) (shared kappa)", &p("cos_h_hstar"), 3),
            ("cos(h, h*) 10% quantile", &p("cos_h_hstar_quantiles.q10"), 3),
            ("cos(h, h*) 90% quantile", &p("cos_h_hstar_quantiles.q90"), 3),
            ("cos(h, h*) (per-instance vMF)", &p("cos_h_hstar_vmf"), 3),
            ("cos(h, z)", &p("cos_h_z"), 3),
            ("cos(h, f_bar(x_true))", &p("cos_h_centre_true"), 3),
            ("cos(h, o)", &p("cos_h_global_mean"), 3),
            ("cos(h*, z)", &p("cos_hstar_z"), 3),
            ("achieved E cos(h(z1), z2)", &p("achieved_similarity"), 3),
            ("floor E R_bar", &p("floor_similarity_mean_resultant"), 3),
            ("h*'s E <h*/|h*|, f_bar>", &p("hstar_similarity"), 3),
            ("fitted shared kappa", &p("kappa_shared"), 1),
        ],
    );
    let dyn_series = |key: &str| -> Vec<Series> {
        inp.methods
            .iter()
            .filter(|m| !m.by_epoch.is_empty())
            .map(|m| {
                (m.name.clone(), m.by_epoch.iter().filter_map(|(e, v)| Some((*e, num(v, key)?))).collect::<Vec<_>>())
            })
            .filter(|(_, pts)| !pts.is_empty())
            .collect()
    };
    let hstar = dyn_series("predictor.cos_h_hstar");
    if !hstar.is_empty() {
        figure(&mut md, &plots, Figure::new("b1-cos-h-hstar", "B1: cos(h, h*) over training", "epoch", hstar))?;
    }

    // B2.
    let _ = writeln!(md, "## B2 (C2): instance identification from one view\n");
    let at_largest = |key: &'static str| move |v: &Value| largest_size(&v["instances"]).and_then(|r| num(r, key));
    table(
        &mut md,
        &cols,
        &[
            ("N (instances)", &at_largest("instances"), 0),
            ("top-1 % (z, shared kappa)", &at_largest("id.top1"), 1),
            ("top-5 % (z, shared kappa)", &at_largest("id.top5"), 1),
            ("posterior entropy (nats)", &at_largest("id.entropy"), 2),
            ("mean p(x_true|z)", &at_largest("id.p_true"), 3),
            ("top-1 % (z, per-instance vMF)", &at_largest("id_vmf.top1"), 1),
            ("top-1 % (z, kernel density)", &at_largest("id_kernel.top1"), 1),
            ("top-1 % (y, shared kappa)", &at_largest("y.id.top1"), 1),
            ("\"between two centres\" fraction", &at_largest("between_fraction"), 3),
            ("mean R_bar (bias-corrected)", &|v| num(v, "instances.mean_resultant_unbiased"), 3),
        ],
    );
    let id_vs_n: Vec<Series> = cols
        .iter()
        .map(|(n, v)| {
            let rows = v["instances"]["by_size"].as_array().cloned().unwrap_or_default();
            (n.clone(), rows.iter().filter_map(|r| Some((num(r, "instances")?, num(r, "id.top1")?))).collect())
        })
        .collect();
    figure(&mut md, &plots, Figure::new("b2-id-vs-n", "B2: instance-ID top-1 (%) against N", "instances N", id_vs_n))?;
    // B6 from the training monitor.
    let monitored: Vec<Series> = inp
        .methods
        .iter()
        .map(|m| {
            let rows: Vec<&Value> = m.metrics.iter().filter(|r| r["event"] == "instances").collect();
            (m.name.clone(), rows.iter().filter_map(|r| Some((num(r, "epoch")?, num(r, "top1")?))).collect::<Vec<_>>())
        })
        .filter(|(_, p)| p.len() > 1)
        .collect();
    if !monitored.is_empty() {
        let _ = writeln!(md, "B6, from the training monitor (shared kappa, its own N and K):\n");
        let _ = writeln!(md, "| method | epoch: top-1 % / entropy |\n|---|---|");
        for m in &inp.methods {
            let cells: Vec<String> = m
                .metrics
                .iter()
                .filter(|r| r["event"] == "instances")
                .map(|r| {
                    format!("{}: {} / {}", fmt(num(r, "epoch"), 0), fmt(num(r, "top1"), 1), fmt(num(r, "entropy"), 2))
                })
                .collect();
            let _ = writeln!(md, "| {} | {} |", m.name, cells.join(", "));
        }
        md.push('\n');
        figure(
            &mut md,
            &plots,
            Figure::new("b6-id-over-training", "B6: instance-ID top-1 (%) during training", "epoch", monitored),
        )?;
    }

    // B3.
    let _ = writeln!(md, "## B3 (C2, C3): shard geometry\n");
    let s = |k| field("shards", k);
    table(
        &mut md,
        &cols,
        &[
            ("shard radius rho (rad)", &s("radius_mean_rad"), 3),
            ("nearest-centre similarity s_nn", &s("nearest_centre_similarity_mean"), 3),
            ("margin", &s("margin_mean"), 3),
            ("P(margin > 0)", &s("p_margin_positive"), 3),
            ("overlap ratio (median)", &s("overlap_ratio_median"), 3),
            ("separated fraction", &s("separated_fraction"), 3),
            ("separation gap arccos(s_nn) - 2 rho (rad)", &s("separation_gap_mean_rad"), 3),
            ("centre uniformity (lower: more uniform)", &s("centre_uniformity"), 3),
            ("pairwise mu.mu' median", &s("pairwise_similarity_quantiles.q50"), 3),
            ("pairwise mu.mu' 99%", &s("pairwise_similarity_quantiles.q99"), 3),
        ],
    );
    let hist: Vec<Series> = cols
        .iter()
        .filter_map(|(n, v)| {
            let f = v["shards"]["pairwise_similarity_histogram"]["fractions"].as_array()?;
            let w = 2.0 / f.len() as f64;
            Some((
                n.clone(),
                f.iter().enumerate().filter_map(|(i, x)| Some((-1.0 + w * (i as f64 + 0.5), x.as_f64()?))).collect(),
            ))
        })
        .collect();
    figure(
        &mut md,
        &plots,
        Figure::new("b3-pairwise", "B3: pairwise centre similarity mu.mu' (fraction of pairs)", "mu.mu'", hist),
    )?;
    for (key, stem, title) in [
        ("shards.centre_uniformity", "b3-uniformity-over-training", "B3: centre uniformity over training"),
        (
            "shards.nearest_centre_similarity_mean",
            "b3-snn-over-training",
            "B3: nearest-centre similarity over training",
        ),
    ] {
        let series = dyn_series(key);
        if !series.is_empty() {
            figure(&mut md, &plots, Figure::new(stem, title, "epoch", series))?;
        }
    }

    // B4.
    let _ = writeln!(md, "## B4 (C4): dimensionality\n");
    for (space, label) in [("centres", "instance centres mu_x"), ("z", "z (one view)"), ("y", "backbone y")] {
        let _ = writeln!(md, "{label}:\n");
        let d = |k| field(&format!("dimension.{space}"), k);
        let ci = |k: &'static str, i: usize| {
            move |v: &Value| v["dimension"][space]["bootstrap_95"][k].as_array().and_then(|a| a.get(i)?.as_f64())
        };
        table(
            &mut md,
            &cols,
            &[
                ("effective rank", &d("spectrum.effective_rank"), 1),
                ("  resamples' 2.5% (see note)", &ci("effective_rank", 0), 1),
                ("  resamples' 97.5%", &ci("effective_rank", 1), 1),
                ("RankMe", &d("spectrum.rankme"), 1),
                ("participation ratio", &d("spectrum.participation_ratio"), 2),
                ("PCA k90", &d("spectrum.pca_k90"), 0),
                ("k95", &d("spectrum.pca_k95"), 0),
                ("k99", &d("spectrum.pca_k99"), 0),
                ("collapse AUC (higher: more collapsed)", &d("spectrum.collapse_auc"), 3),
                ("spectral decay alpha", &d("spectrum.spectral_decay"), 2),
                ("TwoNN intrinsic dimension", &d("two_nn"), 1),
                ("Levina-Bickel MLE (k = 20)", &d("mle_id"), 1),
            ],
        );
    }
    let _ = writeln!(
        md,
        "Note: the bootstrap resamples N rows with replacement; the repeated rows lower spectral \
         measures, so the resamples' range sits below the full-sample value. Read its width as the \
         sampling spread of the effective rank at this N, not as an interval around the value.\n"
    );
    let cum: Vec<Series> = cols
        .iter()
        .map(|(n, v)| {
            let pts = v["dimension"]["centres"]["cumulative_variance"].as_array().cloned().unwrap_or_default();
            (n.clone(), pts.iter().enumerate().filter_map(|(i, x)| Some(((i + 1) as f64, x.as_f64()?))).collect())
        })
        .collect();
    figure(
        &mut md,
        &plots,
        Figure::new("b4-centres-cumulative", "B4: cumulative explained variance of the centres", "components", cum),
    )?;

    // B5.
    let _ = writeln!(md, "## B5 (C5): augmentation invariance\n");
    let i = |k| field("invariance", k);
    table(
        &mut md,
        &cols,
        &[
            ("mean resultant length R_bar", &i("mean_resultant"), 3),
            ("bias-corrected R_inf", &i("mean_resultant_unbiased"), 3),
            ("variance ratio (z)", &i("variance_ratio_z"), 3),
            ("variance ratio (y)", &i("variance_ratio_y"), 3),
            ("alignment E|Z1 - Z2|^2", &i("alignment"), 3),
            ("R_inf, crop only", &i("mean_resultant_unbiased_by_family.crop"), 3),
            ("R_inf, flip only", &i("mean_resultant_unbiased_by_family.flip"), 3),
            ("R_inf, colour jitter only", &i("mean_resultant_unbiased_by_family.colour_jitter"), 3),
            ("R_inf, grayscale only", &i("mean_resultant_unbiased_by_family.grayscale"), 3),
            ("R_inf, blur only", &i("mean_resultant_unbiased_by_family.blur"), 3),
        ],
    );
    if inp.experiments["augmentation-removal"].is_object() {
        let _ = writeln!(
            md,
            "Behavioural test (`augmentation-removal`, kNN top-1 %; with seeds, the mean over them):\n\n| arm | SimSiam | SimCLR |\n|---|---|---|"
        );
        for arm in ["full", "no-blur", "no-grayscale", "no-colour-jitter", "crop-flip-only", "crop-only"] {
            let k = |m: &str| fmt(inp.arm_knn("augmentation-removal", &format!("{m}-{arm}")), 1);
            let _ = writeln!(md, "| {arm} | {} | {} |", k("simsiam"), k("simclr"));
        }
        md.push('\n');
    }

    // B7.
    if let Some(arms) = inp.experiments["oracle-predictor"]["arms"].as_array() {
        let _ = writeln!(md, "## B7 (C2, causal): training with the non-parametric oracle predictor\n");
        let _ = writeln!(md, "| arm | verdict | sqrt(d)·collapse_std | m_o(z) | kNN top-1 % |\n|---|---|---|---|---|");
        for a in arms {
            let seed = a["seed"].as_u64().map_or(String::new(), |s| format!(" (seed {s})"));
            let _ = writeln!(
                md,
                "| {}{seed} | {} | {} | {} | {} |",
                a["name"].as_str().unwrap_or("?"),
                a["verdict"].as_str().unwrap_or("?"),
                fmt(num(a, "summary.tail.collapse_std_scaled"), 3),
                fmt(num(a, "summary.tail.m_o_z"), 3),
                fmt(num(a, "summary.knn_final"), 1)
            );
        }
        md.push('\n');
    }

    let path = out.join("report.md");
    std::fs::write(&path, md).map_err(|e| Error::io(&path, e))?;
    let vj = out.join("verdicts.json");
    std::fs::write(&vj, serde_json::to_string_pretty(&json!(verdicts)).expect("json"))
        .map_err(|e| Error::io(&vj, e))?;
    Ok(path)
}
