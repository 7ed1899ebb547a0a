//! Named experiments: a claim from the seeds, the arms that test it (each a set of config
//! overrides, a value, never a copied loop), and what each arm is expected to show.
//! `simsiam experiment NAME` trains every arm (resumable; finished arms are skipped), then writes
//! `report.md` and `report.html` with a table, overlaid plots and a verdict per claim.
use crate::checkpoint;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::eval::linear::{self, ProbeConfig, ProbeResult};
use crate::monitor::CollapseVerdict;
use crate::report::{
    difference, markdown_page, mean_sd, mean_sd_cell, overlays, p_text, read_lines, render_all, t_test_p,
};
use crate::train::{self, run_ends, RunControl, Summary, Tail};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What an arm is expected to show.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    Collapsed,
    Healthy,
    NotConverged,
    /// No collapse: any verdict but collapsed (or diverged, which is no evidence either way).
    NotCollapsed,
    /// The loss became NaN or infinite and the run stopped (SimSiam §6.2's "SwAV, remove
    /// stop-grad").
    Diverged,
    /// Reported, not judged.
    Any,
}

impl Expect {
    fn admits(self, v: CollapseVerdict) -> bool {
        match self {
            Expect::Collapsed => v == CollapseVerdict::Collapsed,
            Expect::Healthy => v == CollapseVerdict::Healthy,
            Expect::NotConverged => v == CollapseVerdict::NotConverged,
            Expect::NotCollapsed => !matches!(v, CollapseVerdict::Collapsed | CollapseVerdict::Diverged),
            Expect::Diverged => v == CollapseVerdict::Diverged,
            Expect::Any => true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub name: String,
    /// A method overlay (`simsiam`, `simclr`, `byol`, `swav`, `moco`: `--method`) under the
    /// overrides; SimSiam by default.
    #[serde(default = "default_method")]
    pub method: String,
    /// Config overrides (`section.field=value`) on top of the experiment's.
    #[serde(default)]
    pub set: Vec<String>,
    pub expect: Expect,
    /// Whose collapse is judged: Z (the projector output, default) or P (the predictor output;
    /// the symmetric-predictor arms collapse there, Zhang et al.).
    #[serde(default)]
    pub space: Space,
    /// Start from the final weights of this (earlier) arm: protocols in phases (Fig. 5b).
    #[serde(default)]
    pub start_from: Option<String>,
    /// Overrides of this arm alone from the command line (`--arm-set ARM:key=value`), applied
    /// after every other.
    #[serde(skip)]
    pub command_line_set: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Space {
    #[default]
    Z,
    P,
}

impl Space {
    /// `sqrt(d)·collapse_std` in this space. In P it is estimated from m_o:
    /// `sum_j var_j = 1 - m_o^2`.
    fn spread(self, t: &Tail) -> f64 {
        match self {
            Space::Z => t.collapse_std_scaled,
            Space::P => (1.0 - t.m_o_p.powi(2)).max(0.0).sqrt(),
        }
    }
}

/// One experiment file (`experiments/*.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    /// The claim under test, in one sentence.
    pub claim: String,
    /// Where the claim comes from (paper, table, figure).
    pub source: String,
    /// The paper's outcome, with its numbers.
    pub paper: String,
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Overrides for every arm (the schedule that fits the budget, say).
    #[serde(default)]
    pub set: Vec<String>,
    /// kNN orderings that must hold, e.g. `"symmetric > asymmetric"` or `"a >= b"` (within 0.5
    /// points).
    #[serde(default)]
    pub order: Vec<String>,
    /// A linear probe of every arm's final backbone, with this recipe (`[linear]`; also
    /// `simsiam experiment --linear`). None: kNN only.
    #[serde(default)]
    pub linear: Option<ProbeConfig>,
    /// Train every arm once per seed (`<arm>/seed-<s>/`; also `simsiam experiment --seeds`):
    /// verdicts per seed, kNN and the orderings on the means, with their spread. Empty: once,
    /// with the config's seed, in `<arm>/`.
    #[serde(default)]
    pub seeds: Vec<u64>,
    #[serde(rename = "arm")]
    pub arms: Vec<Arm>,
}

fn default_method() -> String {
    "simsiam".into()
}

fn default_preset() -> String {
    "cifar10".into()
}

/// The experiments shipped with the tool.
pub const SHIPPED: &[(&str, &str)] = &[
    ("stop-gradient", include_str!("../experiments/stop-gradient.toml")),
    ("predictor", include_str!("../experiments/predictor.toml")),
    ("bn-placement", include_str!("../experiments/bn-placement.toml")),
    ("similarity", include_str!("../experiments/similarity.toml")),
    ("symmetrisation", include_str!("../experiments/symmetrisation.toml")),
    ("output-dim", include_str!("../experiments/output-dim.toml")),
    ("batch-size", include_str!("../experiments/batch-size.toml")),
    ("siamese-architectures", include_str!("../experiments/siamese-architectures.toml")),
    ("dummy-gradients", include_str!("../experiments/dummy-gradients.toml")),
    ("triplet-extra-gradient", include_str!("../experiments/triplet-extra-gradient.toml")),
    ("simsiam-extra-gradient", include_str!("../experiments/simsiam-extra-gradient.toml")),
    ("infonce-extra-gradient", include_str!("../experiments/infonce-extra-gradient.toml")),
    ("simclr-predictor", include_str!("../experiments/simclr-predictor.toml")),
    ("swav-predictor", include_str!("../experiments/swav-predictor.toml")),
    ("method-comparison", include_str!("../experiments/method-comparison.toml")),
    ("simple-predictors", include_str!("../experiments/simple-predictors.toml")),
    ("covariance", include_str!("../experiments/covariance.toml")),
    ("explicit-eoa", include_str!("../experiments/explicit-eoa.toml")),
    ("mirror-simsiam", include_str!("../experiments/mirror-simsiam.toml")),
    ("moving-average", include_str!("../experiments/moving-average.toml")),
    ("decorrelation", include_str!("../experiments/decorrelation.toml")),
    ("k-step-alternation", include_str!("../experiments/k-step-alternation.toml")),
    ("shard-dynamics", include_str!("../experiments/shard-dynamics.toml")),
    ("oracle-predictor", include_str!("../experiments/oracle-predictor.toml")),
    ("augmentation-removal", include_str!("../experiments/augmentation-removal.toml")),
    ("dim-sweep", include_str!("../experiments/dim-sweep.toml")),
];

impl Experiment {
    pub fn parse(text: &str, origin: &str) -> Result<Experiment> {
        let e: Experiment = toml::from_str(text).map_err(|e| Error::config(format!("experiment {origin}: {e}")))?;
        if e.arms.is_empty() {
            return Err(Error::config(format!("experiment {origin}: no [[arm]]")));
        }
        for (i, a) in e.arms.iter().enumerate() {
            if let Some(prev) = &a.start_from {
                if !e.arms[..i].iter().any(|b| &b.name == prev) {
                    return Err(Error::config(format!(
                        "experiment {origin}: arm {} starts from {prev:?}, which is not an earlier arm",
                        a.name
                    )));
                }
            }
        }
        if let Some(pc) = &e.linear {
            if pc.epochs == 0 || pc.batch_size == 0 || pc.lr.is_nan() || pc.lr <= 0.0 {
                return Err(Error::config(format!(
                    "experiment {origin}: [linear]: epochs, batch_size and lr must be positive"
                )));
            }
        }
        e.check_seeds(&format!("experiment {origin}: seeds"))?;
        for o in &e.order {
            parse_order(o).ok_or_else(|| {
                Error::config(format!("experiment {origin}: order {o:?}: expected \"arm > arm\" or \"arm >= arm\""))
            })?;
        }
        Ok(e)
    }

    /// A shipped experiment by name, or a TOML file by path.
    pub fn find(name: &str) -> Result<Experiment> {
        if let Some((_, text)) = SHIPPED.iter().find(|(n, _)| *n == name) {
            return Experiment::parse(text, name);
        }
        let p = Path::new(name);
        if p.is_file() {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            return Experiment::parse(&text, name);
        }
        let names: Vec<_> = SHIPPED.iter().map(|(n, _)| *n).collect();
        Err(Error::config(format!(
            "experiment {name:?}: not a shipped experiment ({}) nor a TOML file",
            names.join(", ")
        )))
    }

    /// Each seed at most once; `what` names where they were given.
    pub fn check_seeds(&self, what: &str) -> Result<()> {
        match self.seeds.iter().enumerate().find(|(i, s)| self.seeds[..*i].contains(s)) {
            Some((_, s)) => Err(Error::config(format!("{what}: seed {s} is listed twice"))),
            None => Ok(()),
        }
    }

    /// Applies `--arm-set ARM:section.field=value` overrides to their arms; an unknown arm or a
    /// value without `ARM:` is an error naming the flag.
    pub fn set_arms(&mut self, specs: &[String]) -> Result<()> {
        for spec in specs {
            let (name, set) = spec
                .split_once(':')
                .filter(|(_, set)| set.contains('='))
                .ok_or_else(|| Error::config(format!("--arm-set {spec:?}: expected ARM:section.field=value")))?;
            let names: Vec<&str> = self.arms.iter().map(|a| a.name.as_str()).collect();
            let known = names.join(", ");
            let arm = self.arms.iter_mut().find(|a| a.name == name).ok_or_else(|| {
                Error::config(format!(
                    "--arm-set {spec:?}: experiment {} has no arm {name:?} (its arms: {known})",
                    self.name
                ))
            })?;
            arm.command_line_set.push(set.to_string());
        }
        Ok(())
    }

    /// The runs of each arm: one per seed in `seeds`, or one (`None`) with the config's seed.
    pub fn runs(&self) -> Vec<Option<u64>> {
        if self.seeds.is_empty() {
            vec![None]
        } else {
            self.seeds.iter().map(|&s| Some(s)).collect()
        }
    }

    /// The resolved config of an arm: preset, experiment overrides, arm overrides, then the
    /// caller's overrides (data paths, epochs, device, ...), with the arm's own run folder.
    pub fn arm_config(&self, arm: &Arm, out: &Path, extra: &[String]) -> Result<Config> {
        self.arm_run_config(arm, out, extra, None)
    }

    /// [`Experiment::arm_config`] for one of the arm's runs: with a seed, that seed and the
    /// folder `<arm>/seed-<seed>`.
    pub fn arm_run_config(&self, arm: &Arm, out: &Path, extra: &[String], seed: Option<u64>) -> Result<Config> {
        let mut sets: Vec<String> =
            self.set.iter().chain(&arm.set).chain(extra).chain(&arm.command_line_set).cloned().collect();
        if let Some(s) = seed {
            sets.push(format!("run.seed={s}"));
        }
        let dir = run_dir(out, &arm.name, seed);
        sets.push(format!("run.out_dir={}", toml::Value::String(dir.display().to_string())));
        Config::resolve_method(&self.preset, &arm.method, None, &sets)
            .map_err(|e| Error::config(format!("experiment {}, arm {}: {e}", self.name, arm.name)))
    }
}

/// The folder of one run of an arm: `<out>/<arm>`, or `<out>/<arm>/seed-<seed>`.
pub fn run_dir(out: &Path, arm: &str, seed: Option<u64>) -> PathBuf {
    match seed {
        Some(s) => out.join(arm).join(format!("seed-{s}")),
        None => out.join(arm),
    }
}

fn parse_order(o: &str) -> Option<(String, bool, String)> {
    let (a, strict, b) = if let Some((a, b)) = o.split_once(">=") {
        (a, false, b)
    } else {
        o.split_once('>').map(|(a, b)| (a, true, b))?
    };
    Some((a.trim().to_string(), strict, b.trim().to_string()))
}

/// One arm's outcome (of one of its seeds, when the experiment has several).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmResult {
    pub name: String,
    /// The seed of this run, when the experiment trains each arm with several.
    #[serde(default)]
    pub seed: Option<u64>,
    pub expect: Expect,
    pub verdict: CollapseVerdict,
    /// `sqrt(d)·collapse_std` (in the arm's space) at the first step, which the verdict
    /// compares the end with.
    #[serde(default)]
    pub start_spread: Option<f64>,
    pub agrees: bool,
    pub summary: Summary,
    /// The linear probe, when the experiment asks for one.
    #[serde(default)]
    pub linear: Option<ProbeResult>,
}

/// The whole experiment's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub name: String,
    pub claim: String,
    pub source: String,
    pub paper: String,
    pub arms: Vec<ArmResult>,
    /// (ordering, are the arms' kNN means in its order?); `None` without a kNN figure.
    pub orders: Vec<(String, Option<bool>)>,
    /// [`Outcome::judgement`] is [`Judgement::Agrees`] over the finished arms (for readers of
    /// `outcome.json`; the claim is judged only once `pending` is empty).
    pub held: bool,
    /// Arms not trained yet (`--arms` chose others).
    #[serde(default)]
    pub pending: Vec<String>,
    /// The command that wrote this outcome (the last of the invocations an experiment's arms
    /// may have taken; each arm's `config.toml` holds its resolved settings).
    #[serde(default)]
    pub command: Option<String>,
}

/// How a claim, or one of its kNN orderings, came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Judgement {
    Agrees,
    /// Every arm's verdict as expected, but the seeds do not resolve a kNN ordering (a
    /// two-sided t-test of the difference of the means at p >= 0.05).
    Unresolved,
    Disagrees,
}

impl Outcome {
    /// "held", "is unresolved", "did not hold", or "is not judged yet (N arms to train)".
    pub fn verdict(&self) -> String {
        if !self.pending.is_empty() {
            let n = self.pending.len();
            return format!("is not judged yet ({n} arm(s) to train: {})", self.pending.join(", "));
        }
        match self.judgement() {
            Judgement::Agrees => "held".into(),
            Judgement::Unresolved => "is unresolved".into(),
            Judgement::Disagrees => "did not hold".into(),
        }
    }

    /// The outcome with `held` set from [`Outcome::judgement`] (what `outcome.json` readers see).
    fn judged(self) -> Self {
        Self { held: self.judgement() == Judgement::Agrees, ..self }
    }

    /// The claim over the finished arms: it disagrees when an arm's verdict does or an ordering
    /// does (`order_judgement`), is unresolved when an ordering is, and agrees otherwise.
    pub fn judgement(&self) -> Judgement {
        if !self.arms.iter().all(|a| a.agrees) {
            return Judgement::Disagrees;
        }
        let orders = self.orders.iter().filter_map(|(o, held)| Some(order_judgement(&self.arms, o, (*held)?)));
        orders.max().unwrap_or(Judgement::Agrees)
    }
}

/// An ordering whose arms' kNN means are (`held`) or are not in its order. With one run per
/// arm there is no spread, so the order of the two figures decides. Over seeds a two-sided
/// t-test of the difference of the means ([`Gap`]) decides, and the two kinds of claim differ:
/// `a > b` claims a gain, so it agrees only when in order at p < 0.05; `a >= b` claims no loss,
/// so it agrees when in order (the left at most 0.5 points below). Either disagrees only when
/// out of order at p < 0.05; the rest is unresolved. (A symmetric rule: a claimed gain needs
/// the evidence a disagreement needs.)
fn order_judgement(arms: &[ArmResult], order: &str, held: bool) -> Judgement {
    let strict = parse_order(order).is_some_and(|(_, strict, _)| strict);
    let Some(p) = order_gap(arms, order).and_then(|g| g.p_value()) else {
        return if held { Judgement::Agrees } else { Judgement::Disagrees };
    };
    match (held, p < 0.05) {
        (true, true) => Judgement::Agrees,
        (true, false) if !strict => Judgement::Agrees,
        (false, true) => Judgement::Disagrees,
        _ => Judgement::Unresolved,
    }
}

/// Trains (or resumes, or skips when finished) every arm, or only the arms named in `only`
/// (the others wait for a later call), then writes the report. Returns the outcome.
pub fn run(exp: &Experiment, out: &Path, extra: &[String], control: &RunControl, only: &[String]) -> Result<Outcome> {
    if let Some(bad) = only.iter().find(|n| !exp.arms.iter().any(|a| &a.name == *n)) {
        let names: Vec<&str> = exp.arms.iter().map(|a| a.name.as_str()).collect();
        return Err(Error::config(format!(
            "--arms: experiment {} has no arm {bad:?} (its arms: {})",
            exp.name,
            names.join(", ")
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // Every run's config first, so that an override no arm can take (e.g. `--epochs` at or
    // below an arm's warm-up) fails before any training, not after the earlier arms.
    let mut planned: Vec<(&Arm, Option<u64>, PathBuf)> = Vec::new();
    for arm in &exp.arms {
        for seed in exp.runs() {
            planned.push((arm, seed, exp.arm_run_config(arm, out, extra, seed)?.run.out_dir.join("summary.json")));
        }
    }
    let mut arms = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    // The arms read the same images: decode them once.
    let stores = control.data.clone().unwrap_or_default();
    let total = planned.len();
    for (i, (arm, seed, summary_path)) in planned.into_iter().enumerate() {
        let label = run_label(&arm.name, seed);
        // "[stop-gradient] 2/4 no-stop-grad: training": where a long experiment's log stands.
        let at = format!("{}/{total} {label}", i + 1);
        if !summary_path.is_file() && !only.is_empty() && !only.contains(&arm.name) {
            if !pending.contains(&arm.name) {
                pending.push(arm.name.clone());
            }
            continue;
        }
        let mut extra = extra.to_vec();
        if let Some(prev) = &arm.start_from {
            let ckpt = checkpoint::latest(&run_dir(out, prev, seed))?.ok_or_else(|| {
                Error::config(format!(
                    "experiment {}: arm {label} starts from arm {prev}, which has no checkpoint (is it listed before?)",
                    exp.name
                ))
            })?;
            extra.push(format!(
                "model.init_checkpoint={}",
                toml::Value::String(ckpt.join("model.safetensors").display().to_string())
            ));
        }
        let cfg = exp.arm_run_config(arm, out, &extra, seed)?;
        let summary: Summary = if summary_path.is_file() {
            eprintln!("[{}] {at}: finished earlier, skipped", exp.name);
            let text = std::fs::read_to_string(&summary_path).map_err(|e| Error::io(&summary_path, e))?;
            serde_json::from_str(&text).map_err(|e| Error::data(&summary_path, format!("not a run summary: {e}")))?
        } else {
            let resume = checkpoint::latest(&cfg.run.out_dir)?.is_some();
            eprintln!("[{}] {at}: {}", exp.name, if resume { "resuming" } else { "training" });
            match train::train(&cfg, &RunControl { resume, data: Some(stores.clone()), ..control.clone() }) {
                // An arm whose loss overflows is a result, not the end of the experiment.
                Err(Error::NonFinite { epoch, step, value, .. }) => {
                    eprintln!(
                        "[{}] {at}: diverged (loss {value} at epoch {epoch}, step {step}); recorded as Diverged, \
                         the other arms go on",
                        exp.name
                    );
                    train::write_diverged_summary(&cfg)?
                }
                r => r?,
            }
        };
        let objective = crate::objective::Objective::new(&cfg.objective);
        // A summary written before `start` existed: the run's metrics still have its first step.
        let start_spread = match &summary.start {
            Some(t) => Some(arm.space.spread(t)),
            None => run_ends(&cfg.run.out_dir)?.0.map(|t| arm.space.spread(&t)),
        };
        let v = match summary.verdict {
            Some(CollapseVerdict::Diverged) => CollapseVerdict::Diverged,
            _ => objective.verdict(summary.tail.loss, arm.space.spread(&summary.tail), start_spread),
        };
        let linear = match &exp.linear {
            Some(pc) => Some(arm_probe(&exp.name, &label, &cfg, pc, &stores)?),
            None => None,
        };
        arms.push(ArmResult {
            name: arm.name.clone(),
            seed,
            expect: arm.expect,
            verdict: v,
            start_spread,
            agrees: arm.expect.admits(v),
            summary,
            linear,
        });
    }
    // With seeds, an ordering compares the arms' mean kNN.
    let knn_of = |n: &str| knn_stats(&arms, n).map(|(mean, ..)| mean);
    let orders: Vec<(String, Option<bool>)> = exp
        .order
        .iter()
        .map(|o| {
            let (a, strict, b) = parse_order(o).expect("validated");
            let held = match (knn_of(&a), knn_of(&b)) {
                (Some(x), Some(y)) => Some(if strict { x > y } else { x >= y - 0.5 }),
                _ => None,
            };
            (o.clone(), held)
        })
        .collect();
    let outcome = Outcome {
        name: exp.name.clone(),
        claim: exp.claim.clone(),
        source: exp.source.clone(),
        paper: exp.paper.clone(),
        arms,
        orders,
        held: false,
        pending,
        command: control.command.clone(),
    }
    .judged();
    write_report(exp, out, &outcome)?;
    Ok(outcome)
}

/// The linear probe of a finished arm's backbone (`<arm>/linear_probe.json`, as `simsiam eval
/// linear` writes it): read back when it was made with this recipe, else made now on the arm's
/// training and test data.
fn arm_probe(exp: &str, arm: &str, cfg: &Config, pc: &ProbeConfig, data: &train::SharedStores) -> Result<ProbeResult> {
    let run = &cfg.run.out_dir;
    let path = run.join("linear_probe.json");
    let pc = ProbeConfig { seed: cfg.run.seed, ..pc.clone() };
    if let Some(done) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<ProbeResult>(&t).ok())
        .filter(|r| r.config == pc)
    {
        eprintln!("[{exp}] {arm}: linear probe finished earlier ({:.2}%)", done.top1);
        return Ok(done);
    }
    let (train_store, test_store) = data.load(cfg)?;
    let test_store = test_store
        .filter(|t| t.labelled() && train_store.labelled())
        .ok_or_else(|| Error::config(format!(
            "experiment {exp}, arm {arm}: --linear / [linear]: the linear probe needs class folders in both the training data and the test data (data.test, --test-data)"
        )))?;
    let (_, device, net) = train::load_run(run, None)?;
    let (train, test) = (train_store.place(device, cfg.data.store)?, test_store.place(device, cfg.data.store)?);
    let aug = crate::augment::Augmenter::new(&cfg.augment, cfg.data.image_size, device);
    eprintln!("[{exp}] {arm}: linear probe ({} epochs)", pc.epochs);
    let r = linear::probe(&net.model, &train, &test, &aug, &pc);
    checkpoint::write_atomic(&path, format!("{}\n", serde_json::to_string(&r).expect("json")).as_bytes())?;
    Ok(r)
}

/// An arm's final kNN over its runs (seeds): mean, sample sd, count.
fn knn_stats(arms: &[ArmResult], name: &str) -> Option<(f64, f64, usize)> {
    mean_sd(&arms.iter().filter(|a| a.name == name).map(|a| a.summary.knn_final).collect::<Vec<_>>())
}

/// Over seeds, an ordering's `left - right`: the difference of the arms' kNN means, its
/// standard errors, and a two-sided t-test of it.
struct Gap {
    diff: f64,
    /// Paired by seed, where every seed ran in both arms: (sd of the per-seed differences /
    /// sqrt(seeds), seeds - 1 degrees of freedom).
    paired: Option<(f64, f64)>,
    /// sqrt(s_a²/n_a + s_b²/n_b) with Welch's degrees of freedom ([`difference`]).
    unpaired: Option<(f64, f64)>,
}

impl Gap {
    /// The standard error and degrees of freedom that say whether the gap is resolved: paired
    /// by seed where it can be, else the unpaired ones. An experiment's arms of one seed draw
    /// their initial weights and their views from that seed (the arms of `method-comparison`
    /// start from one sqrt(d)·collapse_std per seed), so what varies from seed to seed largely
    /// cancels in each seed's difference; pairs from different seeds stay independent, which is
    /// all the paired test needs.
    fn test(&self) -> Option<(f64, f64)> {
        self.paired.or(self.unpaired)
    }

    /// The two-sided p-value of `diff = 0` under Student's t with [`Gap::test`]'s se and
    /// degrees of freedom.
    fn p_value(&self) -> Option<f64> {
        let (se, df) = self.test()?;
        t_test_p(self.diff, se, df)
    }

    fn cell(&self) -> String {
        let p = self.p_value().map_or(String::new(), |p| format!(", p {}", p_text(p)));
        match (self.paired, self.unpaired) {
            (Some((se, _)), Some((u, _))) => {
                format!("{:+.2} (se {se:.2} paired by seed{p}, unpaired se {u:.2})", self.diff)
            }
            (None, Some((u, _))) => format!("{:+.2} (se {u:.2}{p})", self.diff),
            _ => format!("{:+.2}", self.diff),
        }
    }
}

/// An ordering's [`Gap`]; `None` without a kNN figure on either side.
fn order_gap(arms: &[ArmResult], order: &str) -> Option<Gap> {
    let (a, _, b) = parse_order(order)?;
    let (diff, unpaired) = difference(knn_stats(arms, &a), knn_stats(arms, &b))?;
    let knn = |name: &str| -> Vec<(Option<u64>, f64)> {
        let runs = arms.iter().filter(|r| r.name == name);
        runs.filter_map(|r| Some((r.seed, r.summary.knn_final.filter(|x| x.is_finite())?))).collect()
    };
    let (ka, kb) = (knn(&a), knn(&b));
    let diffs: Vec<Option<f64>> = ka
        .iter()
        .filter_map(|(seed, x)| {
            let (_, y) = kb.iter().find(|(s, _)| s.is_some() && s == seed)?;
            Some(Some(x - y))
        })
        .collect();
    let matched = diffs.len() > 1 && diffs.len() == ka.len() && diffs.len() == kb.len();
    let paired = mean_sd(&diffs).filter(|_| matched).map(|(_, sd, n)| (sd / (n as f64).sqrt(), (n - 1) as f64));
    Some(Gap { diff, paired, unpaired })
}

/// Over seeds, an ordering's [`Gap`] as a table cell; `None` for unseeded outcomes (one run per
/// arm: no spread).
fn order_difference(arms: &[ArmResult], order: &str) -> Option<String> {
    if !arms.iter().any(|a| a.seed.is_some()) {
        return None;
    }
    Some(order_gap(arms, order).map_or_else(|| "–".into(), |g| g.cell()))
}

/// Each arm's runs, in the order the arms first appear: one run per arm without seeds, one per
/// seed with them.
fn runs_by_arm(arms: &[ArmResult]) -> Vec<(&str, Vec<&ArmResult>)> {
    let mut groups: Vec<(&str, Vec<&ArmResult>)> = Vec::new();
    for a in arms {
        match groups.iter_mut().find(|(name, _)| *name == a.name) {
            Some((_, runs)) => runs.push(a),
            None => groups.push((&a.name, vec![a])),
        }
    }
    groups
}

/// One arm in the summary table: `name: verdict, kNN` for one run; over seeds the verdicts
/// (`Healthy ×3` when they agree) and kNN as mean ± sd.
fn summary_cell(name: &str, runs: &[&ArmResult]) -> String {
    let disagree = runs.iter().filter(|a| !a.agrees).count();
    let expected = match (disagree, runs.len()) {
        (0, _) => String::new(),
        (_, 1) => " (expected otherwise)".into(),
        (k, n) => format!(" (expected otherwise in {k} of {n})"),
    };
    if let [one] = runs {
        return format!("{}: {:?}{expected}, {}", label(one), one.verdict, fmt_opt(one.summary.knn_final));
    }
    let verdicts = if runs.iter().all(|a| a.verdict == runs[0].verdict) {
        format!("{:?} ×{}", runs[0].verdict, runs.len())
    } else {
        runs.iter().map(|a| format!("{:?}", a.verdict)).collect::<Vec<_>>().join(", ")
    };
    let knn = mean_sd(&runs.iter().map(|a| a.summary.knn_final).collect::<Vec<_>>());
    format!("{name}: {verdicts}{expected}, {}", mean_sd_cell(knn, 2))
}

/// A run's label in messages, tables and plots: the arm's name, with the seed when there are
/// several.
fn run_label(arm: &str, seed: Option<u64>) -> String {
    match seed {
        Some(s) => format!("{arm} (seed {s})"),
        None => arm.to_string(),
    }
}

fn label(a: &ArmResult) -> String {
    run_label(&a.name, a.seed)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "–".into())
}

/// `report.md`, `report.html`, `plots/*.png|svg`, `outcome.json`.
pub fn write_report(exp: &Experiment, out: &Path, outcome: &Outcome) -> Result<PathBuf> {
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| Error::io(&plots, e))?;
    // With seeds, an arm's runs share one name, so one colour and one legend entry.
    let mut per_arm = Vec::new();
    for a in &outcome.arms {
        let seeds = outcome.arms.iter().filter(|b| b.name == a.name).count();
        let name = if a.seed.is_some() { format!("{} ({seeds} seeds)", a.name) } else { a.name.clone() };
        per_arm.push((name, read_lines(&run_dir(out, &a.name, a.seed).join("metrics.jsonl"))?));
    }
    let (svgs, md_plots) = render_all(&plots, &overlays(&per_arm))?;
    let mut md = String::new();
    let noise = if outcome.pending.is_empty() && outcome.judgement() == Judgement::Unresolved {
        " (every arm's verdict as expected; the seeds do not resolve a kNN ordering: a t-test of the difference of the means gives p >= 0.05)"
    } else {
        ""
    };
    let verdict_line = format!("**{}**{noise}", outcome.verdict());
    let _ = writeln!(
        md,
        "# {}\n\n**Claim.** {}\n\n**Source.** {}\n\n**Paper.** {}\n\n**Here:** the claim {verdict_line}.\n",
        exp.name, exp.claim, exp.source, exp.paper
    );
    if let Some(c) = &outcome.command {
        let _ = writeln!(md, "**Command** (each arm's resolved config is its `config.toml`):\n\n```\n{c}\n```\n");
    }
    let probed = outcome.arms.iter().any(|a| a.linear.is_some());
    let (probe_head, probe_rule) = if probed { (" linear top-1 |", "---|") } else { ("", "") };
    let _ = writeln!(md, "| arm | expected | verdict | agrees | loss | sqrt(d)·collapse_std | at step 0 | m_o (Z) | m_r (Z) | m_o (P) | kNN top-1 |{probe_head}\n|---|---|---|---|---|---|---|---|---|---|---|{probe_rule}");
    for a in &outcome.arms {
        let t = &a.summary.tail;
        let _ = writeln!(
            md,
            "| {} | {:?} | {:?} | {} | {:+.4} | {:.3} | {} | {:.3} | {:.3} | {:.3} | {} |{}",
            label(a),
            a.expect,
            a.verdict,
            if a.agrees { "yes" } else { "**no**" },
            t.loss,
            t.collapse_std_scaled,
            a.start_spread.map_or("–".into(), |s| format!("{s:.3}")),
            t.m_o_z,
            t.m_r_z,
            t.m_o_p,
            fmt_opt(a.summary.knn_final),
            if probed { format!(" {} |", fmt_opt(a.linear.as_ref().map(|r| r.top1))) } else { String::new() }
        );
    }
    if let (true, Some(pc)) = (probed, &exp.linear) {
        let _ = writeln!(
            md,
            "\nLinear top-1: a linear classifier on the frozen backbone (eval-mode BN), {} epochs, batch {}, lr {}, {}.",
            pc.epochs,
            pc.batch_size,
            pc.lr,
            if pc.augment { "crop + flip" } else { "features computed once" }
        );
    }
    let seeded = outcome.arms.iter().any(|a| a.seed.is_some());
    if seeded {
        let _ = writeln!(md, "\n**Over seeds** (mean ± sd, the number of runs in brackets; the arm agrees when every seed does):\n\n| arm | seeds | verdicts | agrees | loss | sqrt(d)·collapse_std | kNN top-1 |{probe_head}\n|---|---|---|---|---|---|---|{probe_rule}");
        for (name, runs) in runs_by_arm(&outcome.arms) {
            let stat = |f: &dyn Fn(&ArmResult) -> Option<f64>, digits| {
                mean_sd_cell(mean_sd(&runs.iter().map(|a| f(a)).collect::<Vec<_>>()), digits)
            };
            let seeds: Vec<String> = runs.iter().filter_map(|a| a.seed.map(|s| s.to_string())).collect();
            let verdicts: Vec<String> = runs.iter().map(|a| format!("{:?}", a.verdict)).collect();
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {} | {} |{}",
                seeds.join(", "),
                verdicts.join(", "),
                if runs.iter().all(|a| a.agrees) { "yes" } else { "**no**" },
                stat(&|a| Some(a.summary.tail.loss), 4),
                stat(&|a| Some(a.summary.tail.collapse_std_scaled), 3),
                stat(&|a| a.summary.knn_final, 2),
                if probed { format!(" {} |", stat(&|a| a.linear.as_ref().map(|r| r.top1), 2)) } else { String::new() }
            );
        }
    }
    let _ = writeln!(md, "\nLoss, sqrt(d)·collapse_std, m_o and m_r are means over each arm's last 10% of steps; \"at step 0\" is sqrt(d)·collapse_std at the first step, in the space the arm is judged in (Z, or P from its m_o). Collapsed = loss within 0.1 of its minimum (per unit loss: twice that where a head's own loss is added, the inverse predictor's or the predictor's) and sqrt(d)·collapse_std below 0.5 (m_o > 0.87) and below half its value at step 0 (heads with output BN start near 1; heads without BN start in a narrow cone); not converged = loss more than 0.7 above its minimum (SimSiam's footnote 4: chance accuracy alone is not collapse); narrow = otherwise, the spread below 0.5 (not halved since step 0, or the loss not yet at its minimum); healthy = the spread at 0.5 or above; diverged = the loss became NaN or infinite and the arm stopped there (its figures are those of the steps before).");
    if !outcome.orders.is_empty() {
        let (head, rule) =
            if seeded { (" difference of the means (standard error) | judged |", "---|---|") } else { ("", "") };
        let _ = writeln!(md, "\n| kNN ordering | in order |{head}\n|---|---|{rule}");
        for (o, h) in &outcome.orders {
            let in_order = match h {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "– (no kNN)",
            };
            let judged = |held| match order_judgement(&outcome.arms, o, held) {
                Judgement::Agrees => "agrees",
                Judgement::Unresolved => "unresolved",
                Judgement::Disagrees => "**disagrees**",
            };
            let diff = match (seeded, order_difference(&outcome.arms, o)) {
                (true, d) => format!(" {} | {} |", d.unwrap_or_else(|| "–".into()), h.map_or("–", judged)),
                (false, _) => String::new(),
            };
            let _ = writeln!(md, "| {o} | {in_order} |{diff}");
        }
        let _ = writeln!(
            md,
            "\nAn ordering is in order when the arms' kNN means are (`>=` allows the left 0.5 points below the right).{}",
            if seeded {
                " Over seeds it is judged by a two-sided t-test of the difference of the means, paired by seed where every seed ran in both arms (seeds - 1 degrees of freedom), else Welch's: `a > b` claims a gain and agrees only when in order at p < 0.05; `a >= b` claims no loss and agrees when in order; either disagrees only when out of order at p < 0.05, and is unresolved otherwise. A claim whose arms' verdicts are all as expected is unresolved when an ordering is."
            } else {
                " Without seeds there is no spread: the order of the figures decides."
            }
        );
    }
    let _ = writeln!(md, "\n{md_plots}");
    let md_path = out.join("report.md");
    std::fs::write(&md_path, &md).map_err(|e| Error::io(&md_path, e))?;
    let html = markdown_page(&exp.name, &md, &svgs);
    let html_path = out.join("report.html");
    std::fs::write(&html_path, html).map_err(|e| Error::io(&html_path, e))?;
    let o_path = out.join("outcome.json");
    std::fs::write(&o_path, serde_json::to_string_pretty(outcome).expect("json")).map_err(|e| Error::io(&o_path, e))?;
    Ok(md_path)
}

/// The summary table over many experiments' `outcome.json` (one folder each under `root`):
/// claim, source, the paper's outcome, ours (each arm's verdict and kNN; over seeds, each arm
/// once with its verdicts and kNN mean ± sd, and each ordering's difference of the means with
/// its standard error), agree or not. Markdown.
pub fn summarise(root: &Path) -> Result<String> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("outcome.json").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(Error::data(root, "no experiment folders with outcome.json"));
    }
    let mut md = String::from(
        "| experiment | claim | source | paper | ours (arm: verdict, kNN) | agrees |\n|---|---|---|---|---|---|\n",
    );
    for d in dirs {
        let p = d.join("outcome.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let o: Outcome =
            serde_json::from_str(&text).map_err(|e| Error::data(&p, format!("not an experiment outcome: {e}")))?;
        let ours: Vec<String> = runs_by_arm(&o.arms)
            .iter()
            .map(|(name, runs)| summary_cell(name, runs))
            .chain(o.orders.iter().map(|(ord, h)| {
                let held = match h {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "–",
                };
                match order_difference(&o.arms, ord) {
                    Some(d) => format!("kNN {ord}: {held}, {d}"),
                    None => format!("kNN {ord}: {held}"),
                }
            }))
            .collect();
        let link = d.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let _ = writeln!(
            md,
            "| [{}]({link}/report.md) | {} | {} | {} | {} | {} |",
            o.name,
            o.claim.replace('|', "/"),
            o.source.replace('|', "/"),
            o.paper.replace('|', "/"),
            ours.join("; "),
            match (o.pending.is_empty(), o.judgement()) {
                (false, _) => "pending",
                (true, Judgement::Agrees) => "**agree**",
                (true, Judgement::Unresolved) => "**agree** on every verdict; kNN ordering unresolved (p >= 0.05)",
                (true, Judgement::Disagrees) => "**disagree**",
            }
        );
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::{ArmResult, Expect, Judgement, Outcome};
    use crate::monitor::CollapseVerdict;
    use crate::train::Summary;

    /// Two healthy arms over three seeds with these kNN figures, and the ordering `a > b`.
    fn outcome(a: [f64; 3], b: [f64; 3], agrees: bool) -> Outcome {
        let run = |name: &str, seed: u64, knn: f64| ArmResult {
            name: name.into(),
            seed: Some(seed),
            expect: Expect::Healthy,
            verdict: CollapseVerdict::Healthy,
            start_spread: None,
            agrees,
            summary: Summary { knn_final: Some(knn), ..Summary::new(1, String::new()) },
            linear: None,
        };
        let arms = (0..3).map(|s| run("a", s, a[s as usize])).chain((0..3).map(|s| run("b", s, b[s as usize])));
        let arms: Vec<ArmResult> = arms.collect();
        let ordered = a.iter().sum::<f64>() > b.iter().sum::<f64>();
        Outcome {
            name: "x".into(),
            claim: String::new(),
            source: String::new(),
            paper: String::new(),
            arms,
            orders: vec![("a > b".into(), Some(ordered))],
            held: false,
            pending: vec![],
            command: None,
        }
        .judged()
    }

    /// An ordering out of order is unresolved when a two-sided t-test of the difference of the
    /// means gives p >= 0.05 over the seeds, and only when every arm's verdict agrees. The test
    /// is paired by seed: on the spread of the per-seed differences, not of each arm's figures.
    #[test]
    fn a_failed_ordering_the_seeds_do_not_resolve_is_unresolved() {
        // Per-seed differences -1, +1, -2: mean -0.67, sd 1.53, paired se 0.88, t 0.76 on 2
        // degrees of freedom: p 0.53.
        let close = outcome([24.0, 27.0, 25.0], [25.0, 26.0, 27.0], true);
        assert!(!close.held && close.judgement() == Judgement::Unresolved);
        let gap = super::order_gap(&close.arms, "a > b").unwrap();
        let (se, df) = gap.paired.unwrap();
        assert!((se - (7.0f64 / 9.0).sqrt()).abs() < 1e-12 && df == 2.0, "{se} {df}");
        // Student's t on 2 df: P(|T| > t) = 1 - t / sqrt(2 + t²).
        let t = (2.0 / 3.0) / se;
        assert!((gap.p_value().unwrap() - (1.0 - t / (2.0 + t * t).sqrt())).abs() < 1e-9);
        assert_eq!(gap.cell(), "-0.67 (se 0.88 paired by seed, p 0.53, unpaired se 1.05)");
        // a - b = -5 with the same spread: resolved, a real disagreement.
        let far = outcome([20.0, 21.0, 22.0], [25.0, 26.0, 27.0], true);
        assert_eq!(far.judgement(), Judgement::Disagrees);
        // A difference of -1 in every seed: the arms' own spread (unpaired se 0.82) would call
        // it noise, but it is the same in each seed, so resolved.
        let steady = outcome([24.0, 25.0, 26.0], [25.0, 26.0, 27.0], true);
        assert_eq!(steady.judgement(), Judgement::Disagrees);
        let gap = super::order_gap(&steady.arms, "a > b").unwrap();
        assert!((gap.diff + 1.0).abs() < 1e-12 && gap.paired == Some((0.0, 2.0)) && gap.p_value() == Some(0.0));
        // Unpaired, equal spreads and counts: se sqrt(2/3), Welch's df 4.
        let (u, df) = gap.unpaired.unwrap();
        assert!((u - (2.0f64 / 3.0).sqrt()).abs() < 1e-12 && (df - 4.0).abs() < 1e-12, "{u} {df}");
        // Seeds that ran in one arm only: no pairing, the unpaired test.
        let mut partial = close.clone();
        partial.arms.retain(|r| !(r.name == "b" && r.seed == Some(2)));
        let gap = super::order_gap(&partial.arms, "a > b").unwrap();
        assert!(gap.paired.is_none() && gap.test() == gap.unpaired);
        // An arm that disagrees makes the claim disagree, whatever the orderings.
        assert_eq!(outcome([24.0, 27.0, 25.0], [25.0, 26.0, 27.0], false).judgement(), Judgement::Disagrees);
    }

    /// `a > b` claims a gain: in order on the means it agrees only when the seeds resolve it
    /// (p < 0.05), as a disagreement must be resolved. `a >= b` claims no loss: in order, it
    /// agrees at any p.
    #[test]
    fn a_claimed_gain_agrees_only_when_resolved() {
        // +1 in every seed: p 0.
        let steady = outcome([26.0, 27.0, 28.0], [25.0, 26.0, 27.0], true);
        assert!(steady.held && steady.judgement() == Judgement::Agrees);
        // Per-seed differences 0, +2, -1: mean +0.33, paired se 0.88, p 0.74.
        let close = outcome([25.0, 28.0, 26.0], [25.0, 26.0, 27.0], true);
        assert!(!close.held && close.judgement() == Judgement::Unresolved);
        let no_loss = Outcome { orders: vec![("a >= b".into(), Some(true))], ..close.clone() };
        assert_eq!(no_loss.judgement(), Judgement::Agrees);
        // One run per arm has no spread: the order of the two figures decides.
        let mut single = close.clone();
        single.arms.retain(|r| r.seed == Some(1));
        assert_eq!(single.judgement(), Judgement::Agrees);
        single.orders = vec![("b > a".into(), Some(false))];
        assert_eq!(single.judgement(), Judgement::Disagrees);
        // A claim with a pending arm is not judged yet; without kNN an ordering is not judged.
        let pending = Outcome { pending: vec!["c".into()], ..close.clone() };
        assert!(pending.verdict().starts_with("is not judged yet (1 arm(s) to train: c)"));
        assert_eq!(close.verdict(), "is unresolved");
        let no_knn = Outcome { orders: vec![("a > b".into(), None)], ..close };
        assert_eq!(no_knn.judgement(), Judgement::Agrees);
    }
}
