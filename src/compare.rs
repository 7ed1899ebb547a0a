//! `simsiam report A B ... --out DIR`: several runs side by side. One table of what each run
//! reached (the tail means, the collapse verdict, kNN at initialisation, last and best), the
//! config fields in which the runs differ, and the curves overlaid (the experiment report's
//! figures). A run is a run folder, or any file of metrics lines in its format: the PyTorch
//! reference script's output (`scripts/reference/simsiam_torch.py`) compares as it is.
use crate::config::Config;
use crate::error::{Error, Result};
use crate::monitor::verdict;
use crate::report::{markdown_page, overlays, read_lines, render_all};
use crate::train::{tail_of, Summary};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One run as compared: what its folder (or metrics file) holds.
pub struct Compared {
    pub label: String,
    pub source: PathBuf,
    pub rows: Vec<Value>,
    /// The run's resolved config; `None` for a bare metrics file.
    pub config: Option<Config>,
    /// `summary.json`, once the run has finished.
    pub summary: Option<Summary>,
}

impl Compared {
    /// `LABEL=PATH` or `PATH` (labelled by its file name). PATH is a run folder holding
    /// `metrics.jsonl` (with `config.toml` and, when finished, `summary.json`), or a `.jsonl`
    /// file of such lines.
    pub fn load(arg: &str) -> Result<Compared> {
        let (label, path) = match arg.split_once('=') {
            Some((l, p)) if !Path::new(arg).exists() && !l.is_empty() => (Some(l.to_string()), PathBuf::from(p)),
            _ => (None, PathBuf::from(arg)),
        };
        let label = label.unwrap_or_else(|| {
            path.file_name().map(|n| n.to_string_lossy().trim_end_matches(".jsonl").to_string()).unwrap_or_default()
        });
        if path.is_file() {
            let rows = read_lines(&path)?;
            return Ok(Compared { label, source: path, rows, config: None, summary: None });
        }
        let metrics = path.join("metrics.jsonl");
        if !metrics.is_file() {
            return Err(Error::data(
                &path,
                "not a run: expected a run folder holding metrics.jsonl, or a .jsonl file of metrics lines",
            ));
        }
        let rows = read_lines(&metrics)?;
        let cfg_path = path.join("config.toml");
        let config = if cfg_path.is_file() { Some(Config::load(&cfg_path)?) } else { None };
        let s_path = path.join("summary.json");
        let summary = if s_path.is_file() {
            let text = std::fs::read_to_string(&s_path).map_err(|e| Error::io(&s_path, e))?;
            Some(serde_json::from_str(&text).map_err(|e| Error::data(&s_path, format!("not a run summary: {e}")))?)
        } else {
            None
        };
        Ok(Compared { label, source: path, rows, config, summary })
    }

    /// The kNN events: (epoch, top-1).
    fn knn(&self) -> Vec<(f64, f64)> {
        self.rows
            .iter()
            .filter(|r| r["event"] == "knn")
            .filter_map(|r| Some((r["epoch"].as_f64()?, r["knn_top1"].as_f64()?)))
            .collect()
    }
}

/// Every leaf of a config as `section.field` -> its TOML text.
fn flatten(cfg: &Config) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", &toml::Value::try_from(cfg).expect("a config serialises"), &mut out);
    out
}

/// The config fields whose values differ between the runs that have a config (`run.out_dir`
/// left out: it always does): field -> one value per run ("–" for a run without a config).
pub fn differing_fields(runs: &[Compared]) -> Vec<(String, Vec<String>)> {
    let flat: Vec<Option<BTreeMap<String, String>>> = runs.iter().map(|r| r.config.as_ref().map(flatten)).collect();
    let keys: std::collections::BTreeSet<&String> = flat.iter().flatten().flat_map(|m| m.keys()).collect();
    keys.into_iter()
        .filter(|k| k.as_str() != "run.out_dir")
        .filter_map(|k| {
            let vals: Vec<Option<&String>> = flat.iter().flatten().map(|m| m.get(k)).collect();
            let differ = vals.windows(2).any(|w| w[0] != w[1]);
            differ.then(|| {
                let shown = flat
                    .iter()
                    .map(|m| match m {
                        Some(m) => m.get(k).cloned().unwrap_or_else(|| "–".into()),
                        None => "–".into(),
                    })
                    .collect();
                (k.clone(), shown)
            })
        })
        .collect()
}

fn cell(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

/// Writes `out/report.md`, `out/report.html` and `out/plots/*.png|svg`; returns the markdown's
/// path.
pub fn write(runs: &[Compared], out: &Path) -> Result<PathBuf> {
    if runs.len() < 2 {
        return Err(Error::config("report: comparing needs at least two runs"));
    }
    for (i, r) in runs.iter().enumerate() {
        if let Some(other) = runs[..i].iter().find(|o| o.label == r.label) {
            return Err(Error::config(format!(
                "report: {} and {} are both labelled {:?}; name them apart with LABEL=PATH",
                other.source.display(),
                r.source.display(),
                r.label
            )));
        }
    }
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).map_err(|e| Error::io(&plots, e))?;
    let per_run: Vec<(String, Vec<Value>)> = runs.iter().map(|r| (r.label.clone(), r.rows.clone())).collect();
    let (svgs, md_plots) = render_all(&plots, &overlays(&per_run))?;

    let mut md = String::from("# Runs compared\n\n| run | source | steps | loss | sqrt(d)·collapse_std | m_o (Z) | verdict | kNN at init | last kNN (epoch) | best kNN (epoch) | images/s | training s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in runs {
        let steps: Vec<&Value> =
            r.rows.iter().filter(|v| v.get("event").is_none() && v.get("loss").is_some()).collect();
        let tail = tail_of(&steps);
        let spread =
            Some(tail.collapse_std_scaled).filter(|_| steps.iter().any(|v| v.get("collapse_std_scaled").is_some()));
        let judged = match (&r.config, spread) {
            (Some(cfg), Some(s)) if !steps.is_empty() => {
                let min = crate::objective::Objective::new(&cfg.objective).minimum();
                format!("{:?}", verdict(tail.loss, min, s))
            }
            _ => "–".into(),
        };
        let knn = r.knn();
        let init = knn.iter().find(|(e, _)| *e == 0.0).map(|&(_, a)| a);
        let last = knn.last().map(|&(e, a)| format!("{a:.2} ({e})")).unwrap_or_else(|| "–".into());
        let best = knn
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|&(e, a)| format!("{a:.2} ({e})"))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {} | {} | {} | {judged} | {} | {last} | {best} | {} | {} |",
            r.label,
            r.source.display(),
            steps.len(),
            cell(Some(tail.loss).filter(|_| !steps.is_empty()), 4),
            cell(spread, 3),
            cell(Some(tail.m_o_z).filter(|_| steps.iter().any(|v| v.get("m_o_z").is_some())), 3),
            cell(init, 2),
            cell(r.summary.as_ref().map(|s| s.images_per_s), 0),
            cell(r.summary.as_ref().map(|s| s.train_seconds), 0),
        );
    }
    let _ = writeln!(md, "\nLoss, sqrt(d)·collapse_std and m_o are means over each run's last 10% of logged steps; the verdict applies `monitor::verdict` to them (collapsed: loss within 0.1 of its minimum and sqrt(d)·collapse_std < 0.5); images/s and training time are from `summary.json` (finished runs).");
    let diff = differing_fields(runs);
    let with_config = runs.iter().filter(|r| r.config.is_some()).count();
    if with_config >= 2 {
        if diff.is_empty() {
            let _ = writeln!(md, "\nThe runs' configs are the same in every field but `run.out_dir`.");
        } else {
            let head: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
            let _ = writeln!(
                md,
                "\n## Where the configs differ\n\n| field | {} |\n|---|{}",
                head.join(" | "),
                "---|".repeat(runs.len())
            );
            for (k, vals) in &diff {
                let vals: Vec<String> = vals.iter().map(|v| format!("`{}`", v.replace('|', "\\|"))).collect();
                let _ = writeln!(md, "| `{k}` | {} |", vals.join(" | "));
            }
        }
    }
    let _ = writeln!(md, "\n{md_plots}");
    let md_path = out.join("report.md");
    std::fs::write(&md_path, &md).map_err(|e| Error::io(&md_path, e))?;
    let html = markdown_page("runs compared", &md, &svgs);
    let html_path = out.join("report.html");
    std::fs::write(&html_path, html).map_err(|e| Error::io(&html_path, e))?;
    Ok(md_path)
}
