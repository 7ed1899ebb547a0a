//! Where every run under a folder stands (`simsiam status`): training now (and by which
//! process), finished, or stopped with a checkpoint to resume from; how far it got and what it
//! reached. For the researcher with dozens of runs and experiment arms: which are still going,
//! which died, which to resume.
use crate::checkpoint;
use crate::config::Config;
use crate::error::{Error, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What a run is doing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum State {
    /// A process holds the run folder's lock ([`checkpoint::lock_run`]).
    Training { pid: Option<u32> },
    /// `summary.json` written.
    Finished,
    /// Neither: a checkpoint to resume from (Ctrl-C, `--until-epoch`, a crash or a kill).
    Stopped,
    /// No checkpoint and no process: nothing to resume.
    NotStarted,
}

/// One run folder's standing.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    pub run: PathBuf,
    #[serde(flatten)]
    pub state: State,
    /// Epochs begun (from the last logged step), and the schedule's.
    pub epoch: usize,
    pub epochs: usize,
    /// Steps logged.
    pub steps: u64,
    /// Means over the last 10% of logged steps.
    pub loss: Option<f64>,
    pub collapse_std_scaled: Option<f64>,
    /// The last kNN measurement.
    pub knn: Option<f64>,
    /// `summary.json`'s collapse verdict, once finished.
    pub verdict: Option<crate::monitor::CollapseVerdict>,
    /// The epoch (from 1) in which training reported a collapse (`"event": "collapse"`), if it
    /// did: shown while no verdict is in.
    pub collapsed_in_epoch: Option<u64>,
    /// Seconds since `metrics.jsonl` last changed.
    pub idle_seconds: Option<f64>,
}

/// Every run folder (one holding `config.toml`) at or below each of `roots`, sorted by path.
pub fn scan(roots: &[PathBuf]) -> Result<Vec<RunStatus>> {
    let mut out = Vec::new();
    for root in roots {
        if !root.exists() {
            return Err(Error::data(root, "no such folder"));
        }
        let mut walk = walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name().into_iter();
        while let Some(entry) = walk.next() {
            let entry = entry.map_err(|e| Error::data(e.path().unwrap_or(root), format!("cannot list: {e}")))?;
            if entry.file_type().is_dir() && entry.path().join("config.toml").is_file() {
                out.push(status(entry.path())?);
                // A run's own folders (checkpoints, report, analysis) hold no runs.
                walk.skip_current_dir();
            }
        }
    }
    Ok(out)
}

/// One run folder's standing.
pub fn status(run: &Path) -> Result<RunStatus> {
    let cfg = Config::load(&run.join("config.toml"))?;
    let metrics = run.join("metrics.jsonl");
    // A run folder may not have logged a step yet.
    let rows = if metrics.is_file() { crate::report::read_lines(&metrics)? } else { Vec::new() };
    let steps: Vec<&Value> = rows.iter().filter(|r| r.get("loss").is_some()).collect();
    let knn = rows.iter().rev().find(|r| r["event"] == "knn").and_then(|r| r["knn_top1"].as_f64());
    let summary: Option<crate::train::Summary> =
        std::fs::read_to_string(run.join("summary.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    let state = match (checkpoint::lock_holder(run), &summary) {
        (Some(pid), _) => State::Training { pid },
        (None, Some(_)) => State::Finished,
        (None, None) if checkpoint::latest(run)?.is_some() => State::Stopped,
        (None, None) => State::NotStarted,
    };
    let tail = (!steps.is_empty()).then(|| crate::train::tail_of(&steps));
    let last = steps.last();
    let idle_seconds = std::fs::metadata(&metrics)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs_f64());
    Ok(RunStatus {
        run: run.to_path_buf(),
        state,
        epoch: match &summary {
            Some(s) => s.epochs,
            None => last.and_then(|r| r["epoch"].as_u64()).map_or(0, |e| e as usize + 1),
        },
        epochs: cfg.run.epochs,
        steps: last.and_then(|r| r["step"].as_u64()).map_or(0, |s| s + 1),
        loss: tail.as_ref().map(|t| t.loss),
        collapse_std_scaled: tail.as_ref().map(|t| t.collapse_std_scaled),
        knn,
        verdict: summary.and_then(|s| s.verdict),
        collapsed_in_epoch: rows
            .iter()
            .find(|r| r["event"] == "collapse")
            .and_then(|r| r["epoch"].as_u64())
            .map(|e| e + 1),
        idle_seconds,
    })
}

/// The table `simsiam status` prints: a row per run, its resume command where one is due.
pub fn table(runs: &[RunStatus]) -> String {
    let fmt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_string(), f);
    let mut rows = vec![[
        "run".to_string(),
        "state".into(),
        "epoch".into(),
        "loss".into(),
        "√d·std".into(),
        "kNN".into(),
        "verdict".into(),
        "last write".into(),
    ]];
    for r in runs {
        let state = match &r.state {
            State::Training { pid: Some(p) } => format!("training (pid {p})"),
            State::Training { pid: None } => "training".into(),
            State::Finished => "finished".into(),
            State::Stopped => "stopped".into(),
            State::NotStarted => "not started".into(),
        };
        rows.push([
            r.run.display().to_string(),
            state,
            format!("{}/{}", r.epoch, r.epochs),
            fmt(r.loss, &|v| format!("{v:+.4}")),
            fmt(r.collapse_std_scaled, &|v| format!("{v:.3}")),
            fmt(r.knn, &|v| format!("{v:.2}%")),
            match (r.verdict, r.collapsed_in_epoch) {
                (Some(v), _) => format!("{v:?}"),
                (None, Some(e)) => format!("collapsed in epoch {e}"),
                (None, None) => "-".into(),
            },
            fmt(r.idle_seconds, &|s| {
                format!("{} ago", indicatif::HumanDuration(std::time::Duration::from_secs_f64(s)))
            }),
        ]);
    }
    let widths: Vec<usize> = (0..8).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let stopped: Vec<&RunStatus> = runs.iter().filter(|r| r.state == State::Stopped).collect();
    if !stopped.is_empty() {
        out.push_str("\nto go on: ");
        let cmds: Vec<String> = stopped.iter().map(|r| format!("simsiam train --resume {}", r.run.display())).collect();
        out.push_str(&cmds.join("\n           "));
        out.push('\n');
    }
    out
}
