//! What a run writes about itself: `metrics.jsonl` (per-step values flushed in batches), and
//! the summary with the tail means the verdicts read.
use crate::error::{Error, Result};
use crate::model::BACKBONE;
use crate::optim::Sgd;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// What a finished run reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub epochs: usize,
    pub steps: usize,
    // JSON has no NaN: serde_json writes it as null, read back as NaN (a run with no finite step).
    #[serde(deserialize_with = "nan_if_null")]
    pub final_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub collapse_std: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub collapse_std_scaled: f64,
    pub knn_init: Option<f64>,
    pub knn_final: Option<f64>,
    /// Means over the last 10% of steps (at least one) of the per-step monitors: `loss`,
    /// `collapse_std_scaled`, `m_o_z`, `m_r_z`, `m_o_p`, `m_r_p`.
    pub tail: Tail,
    /// The same monitors at the first logged step (before any update): the verdict compares
    /// the end with it. `None` in summaries written before it existed.
    #[serde(default)]
    pub start: Option<Tail>,
    /// [`crate::monitor::verdict`] in Z, from `tail` and `start`. `None` in summaries written
    /// before it existed.
    #[serde(default)]
    pub verdict: Option<crate::monitor::CollapseVerdict>,
    pub train_seconds: f64,
    pub images_per_s: f64,
    pub device: String,
    /// How the forward pass computed: [`crate::precision::describe`] of `run.precision` on
    /// `device` (empty in older summaries).
    #[serde(default)]
    pub precision: String,
    /// fp16 only: the loss scale at the end and the steps skipped because their gradients
    /// overflowed (the whole run's, resumes included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
    /// [`crate::BUILD`] of the invocation that wrote it (empty in older summaries).
    #[serde(default)]
    pub build: String,
}

impl Summary {
    /// A summary before any step: NaN figures, no kNN, this build; filled in as the run goes.
    pub fn new(epochs: usize, device: String) -> Summary {
        Summary {
            epochs,
            steps: 0,
            final_loss: f64::NAN,
            collapse_std: f64::NAN,
            collapse_std_scaled: f64::NAN,
            knn_init: None,
            knn_final: None,
            tail: Tail::default(),
            start: None,
            verdict: None,
            train_seconds: 0.0,
            images_per_s: 0.0,
            device,
            precision: String::new(),
            loss_scale: None,
            skipped_steps: None,
            build: crate::BUILD.to_string(),
        }
    }
}

/// An f64 that serde_json wrote as null because it was NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Tail {
    pub loss: f64,
    pub collapse_std_scaled: f64,
    pub m_o_z: f64,
    pub m_r_z: f64,
    pub m_o_p: f64,
    pub m_r_p: f64,
}

/// The step monitors logged in `metrics.jsonl`: at the first step ([`start_of`]) and as means
/// over the last 10% ([`tail_of`]).
pub fn run_ends(run_dir: &Path) -> Result<(Option<Tail>, Tail)> {
    let rows = crate::report::read_lines(&run_dir.join("metrics.jsonl"))?;
    let steps: Vec<&serde_json::Value> = rows.iter().filter(|r| r.get("loss").is_some()).collect();
    Ok((start_of(&steps), tail_of(&steps)))
}

/// The summary of a run stopped by a non-finite loss, written as `summary.json` so that the run
/// reads as done (rerun, it would diverge again): verdict [`Diverged`](crate::monitor::CollapseVerdict::Diverged),
/// the monitors and kNN from the steps logged before the loss overflowed.
pub fn write_diverged_summary(cfg: &crate::config::Config) -> Result<Summary> {
    let run_dir = &cfg.run.out_dir;
    let mut summary = Summary {
        verdict: Some(crate::monitor::CollapseVerdict::Diverged),
        ..Summary::new(cfg.run.epochs, String::new())
    };
    summary.steps = complete_from_log(&mut summary, run_dir, (cfg.model.dim as f64).sqrt())?;
    let path = run_dir.join("summary.json");
    let text = serde_json::to_string_pretty(&summary).map_err(|e| Error::data(&path, e.to_string()))?;
    crate::checkpoint::write_atomic(&path, text.as_bytes())?;
    Ok(summary)
}

/// Fills the summary's whole-run values from `metrics.jsonl`, which holds every step and kNN
/// pass of the weights being trained (a resume trims it to the checkpoint): the final step's
/// loss and spread, the step monitors at the start and over the last 10%, and the kNN top-1
/// at initialisation (epoch 0) and at the last pass. Why from the file: a resumed run's own
/// process saw only its part of the run. Returns the number of step lines.
pub(super) fn complete_from_log(summary: &mut Summary, run_dir: &Path, sqrt_d: f64) -> Result<usize> {
    let rows = crate::report::read_lines(&run_dir.join("metrics.jsonl"))?;
    let steps: Vec<&serde_json::Value> = rows.iter().filter(|r| r.get("loss").is_some()).collect();
    (summary.start, summary.tail) = (start_of(&steps), tail_of(&steps));
    if let Some(last) = steps.last() {
        summary.final_loss = last["loss"].as_f64().unwrap_or(f64::NAN);
        summary.collapse_std = last["collapse_std"].as_f64().unwrap_or(f64::NAN);
        summary.collapse_std_scaled = summary.collapse_std * sqrt_d;
    }
    let knn: Vec<(u64, f64)> = rows
        .iter()
        .filter(|r| r["event"] == "knn")
        .filter_map(|r| Some((r["epoch"].as_u64()?, r["knn_top1"].as_f64()?)))
        .collect();
    summary.knn_init = knn.iter().find(|(e, _)| *e == 0).map(|&(_, a)| a);
    summary.knn_final = knn.last().filter(|(e, _)| *e > 0).map(|&(_, a)| a);
    Ok(steps.len())
}

/// The first of these step lines (the geometry at initialisation), as a [`Tail`] of one step.
pub fn start_of(steps: &[&serde_json::Value]) -> Option<Tail> {
    steps.first().map(|_| tail_of(&steps[..1]))
}

/// Means of the step monitors over the last 10% (at least one) of these step lines; a monitor
/// missing from them reads 0.
pub fn tail_of(steps: &[&serde_json::Value]) -> Tail {
    let n = (steps.len() / 10).max(1).min(steps.len());
    let tail = &steps[steps.len() - n..];
    let mean = |k: &str| tail.iter().filter_map(|r| r[k].as_f64()).sum::<f64>() / n.max(1) as f64;
    Tail {
        loss: mean("loss"),
        collapse_std_scaled: mean("collapse_std_scaled"),
        m_o_z: mean("m_o_z"),
        m_r_z: mean("m_r_z"),
        m_o_p: mean("m_o_p"),
        m_r_p: mean("m_r_p"),
    }
}

/// Per-step values kept on the device until the next flush (one host sync per flush).
pub(super) struct Pending {
    pub(super) epoch: usize,
    pub(super) step: usize,
    pub(super) lr: f64,
    /// See [`STEP_STATS`].
    pub(super) stats: Tensor,
}

pub(super) struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
    /// sqrt(d)·collapse_std at step 0, when the file holds it (a resume reads it back).
    start_spread: Option<f64>,
    /// Whether the run has already been reported as collapsing (a `"event": "collapse"` line).
    collapse_reported: bool,
}

impl MetricsLog {
    /// Opens `metrics.jsonl`; on resume drops lines past the checkpoint's step, so the file
    /// holds exactly one line per step taken by the weights being trained.
    pub(super) fn open(run_dir: &Path, keep_below_step: Option<usize>) -> Result<MetricsLog> {
        let path = run_dir.join("metrics.jsonl");
        let (mut start_spread, mut collapse_reported) = (None, false);
        if let Some(limit) = keep_below_step {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let mut kept = String::new();
            for (line, v) in text.lines().filter_map(|l| Some((l, serde_json::from_str::<serde_json::Value>(l).ok()?)))
            {
                if v["step"].as_u64().is_none_or(|s| (s as usize) >= limit) {
                    continue;
                }
                match v.get("event") {
                    None if v["step"] == 0 => start_spread = v["collapse_std_scaled"].as_f64(),
                    Some(e) if e == "collapse" => collapse_reported = true,
                    _ => {}
                }
                kept.push_str(line);
                kept.push('\n');
            }
            // Atomic: a crash here must not lose the run's history.
            crate::checkpoint::write_atomic(&path, kept.as_bytes())?;
        }
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { file, path, start_spread, collapse_reported })
    }
    pub(super) fn write(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| Error::io(&self.path, e))
    }
}

/// The per-step metrics between flushes and where they go: rank 0's `metrics.jsonl` (`file`);
/// the other ranks keep only their loss, to check it.
pub(super) struct StepLog {
    pub(super) file: Option<MetricsLog>,
    pending: Vec<Pending>,
    /// The global batch, for images/s.
    batch: usize,
    /// sqrt(d), for `collapse_std_scaled`.
    sqrt_d: f64,
    since: Instant,
    /// Sums of the loss and of sqrt(d)·collapse_std over the epoch's flushed steps, and their
    /// count, for [`StepLog::collapse_check`].
    epoch_sums: (f64, f64, usize),
}

impl StepLog {
    pub(super) fn new(file: Option<MetricsLog>, batch: usize, dim: i64) -> StepLog {
        StepLog {
            file,
            pending: Vec::new(),
            batch,
            sqrt_d: (dim as f64).sqrt(),
            since: Instant::now(),
            epoch_sums: (0.0, 0.0, 0),
        }
    }

    /// At an epoch's end (after its last flush), rank 0: the epoch's mean loss and
    /// sqrt(d)·collapse_std, judged as the run's summary will be ([`crate::objective::Objective::verdict`],
    /// against the spread at step 0). The first epoch judged `Collapsed` is reported once per run:
    /// a `"event": "collapse"` line, and the warning to print, returned: the owner of a long run
    /// wants to know at once, not from the summary at its end.
    pub(super) fn collapse_check(
        &mut self,
        epoch: usize,
        step: usize,
        objective: &crate::objective::Objective,
    ) -> Result<Option<String>> {
        let (loss_sum, spread_sum, n) = std::mem::replace(&mut self.epoch_sums, (0.0, 0.0, 0));
        let Some(file) = self.file.as_mut().filter(|f| n > 0 && !f.collapse_reported) else { return Ok(None) };
        let (loss, spread) = (loss_sum / n as f64, spread_sum / n as f64);
        let start = file.start_spread;
        if objective.verdict(loss, spread, start) != crate::monitor::CollapseVerdict::Collapsed {
            return Ok(None);
        }
        file.collapse_reported = true;
        file.write(json!({"event": "collapse", "epoch": epoch, "step": step, "loss": loss, "collapse_std_scaled": spread, "start_collapse_std_scaled": start}))?;
        let min = objective.minimum().map_or(String::new(), |m| format!(" (its minimum {m:+.0})"));
        let at_start = start.map_or(String::new(), |s| format!(" ({s:.3} at step 0)"));
        Ok(Some(format!(
            "warning: the representation has collapsed in epoch {}: mean loss {loss:+.4}{min}, sqrt(d)·collapse_std \
             {spread:.3}{at_start}. Training goes on (Ctrl-C stops it and keeps a checkpoint)",
            epoch + 1
        )))
    }

    pub(super) fn push(&mut self, p: Pending) {
        self.pending.push(p);
    }

    /// Steps waiting for the next flush.
    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// In a data-parallel job, replaces each pending step's loss by its mean over the ranks (one
    /// all-reduce per flush, on the device). Every rank's loss is over its equal share of the
    /// global batch, so the mean is the global batch's loss: the curve one process would log.
    /// The geometry monitors stay rank 0's own share's. Collective: every rank calls it at the
    /// same flush.
    pub(super) fn average_losses(&mut self, group: &crate::dist::Group) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // [n]: the loss of each pending step, this rank's.
        let losses = Tensor::stack(&self.pending.iter().map(|p| p.stats.get(0)).collect::<Vec<_>>(), 0);
        group.all_reduce_sum(&losses)?;
        let mean = losses / group.world as f64;
        for (i, p) in self.pending.iter_mut().enumerate() {
            let rest = p.stats.size()[0] - 1;
            p.stats = Tensor::cat(&[mean.get(i as i64).view([1]), p.stats.narrow(0, 1, rest)], 0);
        }
        Ok(())
    }

    /// Fetches the pending step metrics (one host sync for all of them), stops at a non-finite
    /// loss (naming the last good checkpoint), writes one line per step; the summary's final
    /// values follow the last one.
    pub(super) fn flush(&mut self, summary: &mut Summary, last_ckpt: &str) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let stats = Tensor::stack(&self.pending.iter().map(|p| p.stats.shallow_clone()).collect::<Vec<_>>(), 0);
        let rows = Vec::<Vec<f64>>::try_from(stats.to_kind(Kind::Double).to_device(Device::Cpu)).expect("f64 rows");
        let ips = (self.pending.len() * self.batch) as f64 / self.since.elapsed().as_secs_f64();
        self.since = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        for (p, row) in pending.iter().zip(&rows) {
            let loss = row[0];
            if !loss.is_finite() {
                return Err(Error::NonFinite {
                    epoch: p.epoch,
                    step: p.step,
                    value: loss,
                    checkpoint: last_ckpt.to_string(),
                });
            }
            // Only rank 0 logs; the other ranks' rows hold just the loss.
            let Some(file) = self.file.as_mut() else { continue };
            let spread = row[1] * self.sqrt_d;
            if p.step == 0 {
                file.start_spread = Some(spread);
            }
            let (l, s, n) = &mut self.epoch_sums;
            (*l, *s, *n) = (*l + loss, *s + spread, *n + 1);
            let mut line = json!({"epoch": p.epoch, "step": p.step, "lr": p.lr, "images_per_s": ips, "collapse_std_scaled": spread});
            for (name, v) in super::STEP_STATS.iter().zip(row) {
                line[*name] = json!(v);
            }
            file.write(line)?;
        }
        if self.file.is_some() {
            let last = rows.last().expect("non-empty");
            summary.final_loss = last[0];
            summary.collapse_std = last[1];
            summary.collapse_std_scaled = last[1] * self.sqrt_d;
        }
        Ok(())
    }
}

/// The part of the network a parameter belongs to, for the `weights` monitor: the backbone's
/// `stem` and `layer1`..`layer4`, else the head's name (`projector`, `predictor`, ...).
fn stage(name: &str) -> &str {
    let mut parts = name.split('.');
    match (parts.next(), parts.next()) {
        (Some(BACKBONE), Some(layer)) if layer.starts_with("layer") => layer,
        (Some(BACKBONE), _) => "stem",
        (Some(head), _) => head,
        (None, _) => name,
    }
}

/// The `weights` line (`monitor.weights`): per stage, and for the whole backbone, the weights'
/// norm `|w|` (root of the summed squares of its kernels and matrices) and the last step's
/// relative update `|Δw|/|w|` (see [`Sgd::update_norms`]); per backbone stage, the residual
/// branches' gain (see `branch_gains`). Why: under BatchNorm the relative
/// update, not the lr alone, is how fast a layer learns, and it depends on the initial scale
/// of the weights (`model.conv_init`, `model.zero_init_residual`) and on the width. `None`
/// before any update. Two host syncs.
pub fn weights_event(opt: &Sgd, epoch: usize, step: usize) -> Option<serde_json::Value> {
    let (names, norms) = opt.update_norms()?;
    let rows = Vec::<Vec<f64>>::try_from(norms.to_kind(Kind::Double).to_device(Device::Cpu)).expect("[n, 2] norms");
    // Per stage, in the parameters' order: (sum of |w|², sum of |Δw|²).
    fn add<'a>(sums: &mut Vec<(&'a str, f64, f64)>, key: &'a str, w: f64, dw: f64) {
        match sums.iter_mut().find(|(k, ..)| *k == key) {
            Some(s) => (s.1, s.2) = (s.1 + w * w, s.2 + dw * dw),
            None => sums.push((key, w * w, dw * dw)),
        }
    }
    let mut sums = Vec::new();
    for (&name, row) in names.iter().zip(&rows) {
        add(&mut sums, stage(name), row[0], row[1]);
        if name.starts_with(BACKBONE) {
            add(&mut sums, "backbone", row[0], row[1]);
        }
    }
    let mut norm = serde_json::Map::new();
    let mut update = serde_json::Map::new();
    for (key, w2, dw2) in sums {
        norm.insert(key.to_string(), json!(w2.sqrt()));
        update.insert(key.to_string(), json!(if w2 > 0.0 { (dw2 / w2).sqrt() } else { f64::NAN }));
    }
    let gain: serde_json::Map<String, serde_json::Value> =
        branch_gains(opt).into_iter().map(|(stage, g)| (stage.to_string(), json!(g))).collect();
    Some(json!({
        "event": "weights", "epoch": epoch, "step": step, "lr": opt.lrs[0], "norm": norm, "update": update,
        "branch_gain": gain,
    }))
}

/// Per backbone stage, and over the whole backbone, the mean |gamma| over the channels of each
/// residual branch's last BatchNorm (`bn2` of a basic block, `bn3` of a bottleneck): the
/// branches' gain. With `model.zero_init_residual` it starts at 0, every block is the identity
/// and its convolutions get no gradient until the gain has grown.
fn branch_gains(opt: &Sgd) -> Vec<(&str, f64)> {
    // `backbone.layerN.i.bnK.weight` -> (stage, block, K)
    fn parse(name: &str) -> Option<(&str, &str, u32)> {
        let p: Vec<&str> = name.split('.').collect();
        match p[..] {
            [BACKBONE, layer, block, bn, "weight"] if layer.starts_with("layer") => {
                Some((layer, block, bn.strip_prefix("bn")?.parse().ok()?))
            }
            _ => None,
        }
    }
    // The last BN of each block, in the parameters' order.
    let mut last: Vec<(&str, &str, u32, &Tensor)> = Vec::new();
    for p in &opt.params {
        let Some((stage, block, k)) = parse(&p.name) else { continue };
        match last.iter_mut().find(|(s, b, ..)| *s == stage && *b == block) {
            Some(e) if e.2 < k => (e.2, e.3) = (k, &p.tensor),
            Some(_) => {}
            None => last.push((stage, block, k, &p.tensor)),
        }
    }
    let mut stages: Vec<&str> = Vec::new();
    for (stage, ..) in &last {
        if !stages.contains(stage) {
            stages.push(stage);
        }
    }
    if stages.is_empty() {
        return Vec::new();
    }
    // Each stage's, then the whole backbone's.
    stages.push("backbone");
    let means: Vec<Tensor> = tch::no_grad(|| {
        stages
            .iter()
            .map(|st| {
                let gs: Vec<&Tensor> = last.iter().filter(|e| e.0 == *st || *st == "backbone").map(|e| e.3).collect();
                Tensor::cat(&gs, 0).abs().mean(Kind::Float)
            })
            .collect()
    });
    let values = Vec::<f64>::try_from(Tensor::stack(&means, 0).to_kind(Kind::Double).to_device(Device::Cpu))
        .expect("one gain per stage");
    stages.into_iter().zip(values).collect()
}

#[cfg(test)]
mod tests {
    /// A summary with no finite step (NaN figures) survives JSON, which has no NaN.
    #[test]
    fn nan_figures_round_trip_through_json() {
        let s = super::Summary {
            verdict: Some(crate::monitor::CollapseVerdict::Diverged),
            ..super::Summary::new(1, String::new())
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"final_loss\":null") && text.contains("\"verdict\":\"diverged\""), "{text}");
        let back: super::Summary = serde_json::from_str(&text).unwrap();
        assert!(back.final_loss.is_nan() && back.collapse_std_scaled.is_nan());
    }

    /// SimSiam's objective (loss minimum -1).
    fn simsiam_objective() -> crate::objective::Objective {
        crate::objective::Objective::new(&crate::config::ObjectiveConfig::default())
    }

    /// The collapse warning: judged on an epoch's means against the spread at step 0, written
    /// once per run, and a resume reads both back from the kept lines.
    #[test]
    fn collapse_is_reported_once_per_run_and_resumes_know_it() {
        use super::{MetricsLog, StepLog};
        let dir = tempfile::tempdir().unwrap();
        let mut log = StepLog::new(Some(MetricsLog::open(dir.path(), None).unwrap()), 8, 4);
        // One step at a time, as flushes: (loss, collapse_std), sqrt(d) = 2.
        let feed = |log: &mut StepLog, epoch: usize, step: usize, loss: f64, std: f64| {
            let mut stats = vec![0f32; super::super::STEP_STATS.len()];
            (stats[0], stats[1]) = (loss as f32, std as f32);
            let stats = tch::Tensor::from_slice(&stats);
            log.push(super::Pending { epoch, step, lr: 0.1, stats });
            log.flush(&mut super::Summary::new(3, String::new()), "none").unwrap();
        };
        // Epoch 0: spread 0.9 at step 0, then a healthy mean.
        feed(&mut log, 0, 0, -0.2, 0.45);
        feed(&mut log, 0, 1, -0.5, 0.45);
        assert_eq!(log.collapse_check(0, 1, &simsiam_objective()).unwrap(), None);
        // Epoch 1: mean loss -0.95, spread 0.2 (below half of 0.9): collapsed.
        feed(&mut log, 1, 2, -0.94, 0.1);
        feed(&mut log, 1, 3, -0.96, 0.1);
        let warning = log.collapse_check(1, 3, &simsiam_objective()).unwrap().expect("reported");
        assert!(
            warning.contains("epoch 2") && warning.contains("-0.9500") && warning.contains("0.900 at step 0"),
            "{warning}"
        );
        // Epoch 2: still collapsed, not reported again.
        feed(&mut log, 2, 4, -0.99, 0.05);
        assert_eq!(log.collapse_check(2, 4, &simsiam_objective()).unwrap(), None);
        drop(log);
        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v["event"] == "collapse")
            .collect();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0]["epoch"].as_u64(), events[0]["step"].as_u64()), (Some(1), Some(3)));
        // A resume past the event knows it was reported, and the start; one before it does not.
        let after = MetricsLog::open(dir.path(), Some(5)).unwrap();
        assert!(after.collapse_reported && (after.start_spread.unwrap() - 0.9).abs() < 1e-6);
        let before = MetricsLog::open(dir.path(), Some(3)).unwrap();
        assert!(!before.collapse_reported && (before.start_spread.unwrap() - 0.9).abs() < 1e-6);
    }
}
