//! `simsiam report A B ... --out DIR`: several runs side by side. One table of what each run
//! reached (the tail means, the collapse verdict, kNN at initialisation, last and best), the
//! config fields in which the runs differ, and the curves overlaid (the experiment report's
//! figures). A run is a run folder, or any file of metrics lines in its format: the PyTorch
//! reference script's output (`scripts/reference/simsiam_torch.py`) compares as it is.
use crate::config::Config;
use crate::error::{Error, Result};
use crate::report::{difference_cell, markdown_page, mean_sd, mean_sd_cell, overlays, read_lines, render_all};
use crate::train::{start_of, tail_of, Summary};
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
    /// The repeats this run is one of (`LABEL=A,B,...`, e.g. seeds): their common label.
    pub group: Option<String>,
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
            return Ok(Compared { label, source: path, rows, config: None, summary: None, group: None });
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
        Ok(Compared { label, source: path, rows, config, summary, group: None })
    }

    /// One argument of `simsiam report`: as [`Compared::load`], or `LABEL=PATH,PATH,...`,
    /// repeats of one setting (seeds), labelled `LABEL#1`, `LABEL#2`, ... and summarised
    /// together (mean ± sd) besides.
    pub fn load_arg(arg: &str) -> Result<Vec<Compared>> {
        match arg.split_once('=') {
            Some((label, paths)) if !Path::new(arg).exists() && !label.is_empty() && paths.contains(',') => paths
                .split(',')
                .filter(|p| !p.is_empty())
                .enumerate()
                .map(|(i, p)| {
                    let mut c = Compared::load(&format!("{label}#{}={p}", i + 1))?;
                    c.group = Some(label.to_string());
                    Ok(c)
                })
                .collect(),
            _ => Ok(vec![Compared::load(arg)?]),
        }
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

/// What one run reached: its tail means (over the last 10% of logged steps), verdict and kNN.
struct Reached {
    steps: usize,
    loss: Option<f64>,
    spread: Option<f64>,
    /// `sqrt(d)·collapse_std` at the first logged step, which the verdict compares with.
    start: Option<f64>,
    m_o_z: Option<f64>,
    verdict: Option<crate::monitor::CollapseVerdict>,
    /// (epoch, top-1) of each kNN event.
    knn: Vec<(f64, f64)>,
}

impl Reached {
    fn of(r: &Compared) -> Reached {
        let steps: Vec<&Value> =
            r.rows.iter().filter(|v| v.get("event").is_none() && v.get("loss").is_some()).collect();
        let tail = tail_of(&steps);
        let logs = |k: &str| !steps.is_empty() && steps.iter().any(|v| v.get(k).is_some());
        let spread = Some(tail.collapse_std_scaled).filter(|_| logs("collapse_std_scaled"));
        let start = start_of(&steps).map(|t| t.collapse_std_scaled).filter(|_| spread.is_some());
        let verdict = match (&r.config, spread) {
            (Some(cfg), Some(s)) => Some(crate::objective::Objective::new(&cfg.objective).verdict(tail.loss, s, start)),
            _ => None,
        };
        Reached {
            steps: steps.len(),
            loss: Some(tail.loss).filter(|_| !steps.is_empty()),
            spread,
            start,
            m_o_z: Some(tail.m_o_z).filter(|_| logs("m_o_z")),
            verdict,
            knn: r.knn(),
        }
    }
}

/// The groups of repeats (`LABEL=A,B,...`) summarised, each other run as a group of one (a
/// reference, say): their tail means and verdicts, then kNN by epoch as mean ± sd (runs), and
/// each group's difference from the first group with its standard error
/// (sqrt(s1²/n1 + s2²/n2), where both have repeats) and Welch's two-sided p (runs of two
/// groups are not paired: a group's runs need not share seeds with another's). `None` without
/// groups.
fn repeats(runs: &[Compared], reached: &[Reached]) -> Option<String> {
    if runs.iter().all(|r| r.group.is_none()) {
        return None;
    }
    let mut groups: Vec<(&str, Vec<&Reached>)> = Vec::new();
    for (r, got) in runs.iter().zip(reached) {
        let g = r.group.as_deref().unwrap_or(&r.label);
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, members)) => members.push(got),
            None => groups.push((g, vec![got])),
        }
    }
    let mut md = String::from("\n## Repeats (mean ± sd over each group's runs; the count in brackets)\n\n| group | runs | loss | sqrt(d)·collapse_std | m_o (Z) | verdicts |\n|---|---|---|---|---|---|\n");
    for (name, members) in &groups {
        let col = |f: fn(&Reached) -> Option<f64>, digits| {
            mean_sd_cell(mean_sd(&members.iter().map(|m| f(m)).collect::<Vec<_>>()), digits)
        };
        let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
        for v in members.iter().filter_map(|m| m.verdict) {
            *verdicts.entry(format!("{v:?}")).or_default() += 1;
        }
        let verdicts: Vec<String> = verdicts.iter().map(|(v, n)| format!("{n} {v}")).collect();
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            members.len(),
            col(|m| m.loss, 4),
            col(|m| m.spread, 3),
            col(|m| m.m_o_z, 3),
            if verdicts.is_empty() { "–".into() } else { verdicts.join(", ") }
        );
    }
    let epochs: std::collections::BTreeSet<u64> =
        groups.iter().flat_map(|(_, ms)| ms.iter().flat_map(|m| m.knn.iter().map(|(e, _)| e.to_bits()))).collect();
    if epochs.is_empty() {
        return Some(md);
    }
    let (first, rest) = (&groups[0], &groups[1..]);
    let _ = writeln!(
        md,
        "\nkNN top-1 (%) by epoch:\n\n| epoch | {} |{}\n|---|{}{}",
        groups.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" | "),
        rest.iter().map(|(n, _)| format!(" {n} − {} (se, Welch's p) |", first.0)).collect::<String>(),
        "---|".repeat(groups.len()),
        "---|".repeat(rest.len())
    );
    let mut by_epoch: Vec<f64> = epochs.into_iter().map(f64::from_bits).collect();
    by_epoch.sort_by(f64::total_cmp);
    for e in by_epoch {
        let at = |ms: &[&Reached]| {
            mean_sd(&ms.iter().map(|m| m.knn.iter().find(|(x, _)| *x == e).map(|&(_, a)| a)).collect::<Vec<_>>())
        };
        let stats: Vec<Option<(f64, f64, usize)>> = groups.iter().map(|(_, ms)| at(ms)).collect();
        let cells: Vec<String> = stats.iter().map(|&m| mean_sd_cell(m, 2)).collect();
        let diffs: String = stats[1..].iter().map(|&m| format!(" {} |", difference_cell(m, stats[0]))).collect();
        let _ = writeln!(md, "| {e} | {} |{diffs}", cells.join(" | "));
    }
    Some(md)
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

    let reached: Vec<Reached> = runs.iter().map(Reached::of).collect();
    let mut md = String::from("# Runs compared\n\n| run | source | steps | loss | sqrt(d)·collapse_std | at step 0 | m_o (Z) | verdict | kNN at init | last kNN (epoch) | best kNN (epoch) | images/s | training s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (r, got) in runs.iter().zip(&reached) {
        let init = got.knn.iter().find(|(e, _)| *e == 0.0).map(|&(_, a)| a);
        let at = |k: Option<&(f64, f64)>| k.map(|&(e, a)| format!("{a:.2} ({e})")).unwrap_or_else(|| "–".into());
        let best = got.knn.iter().max_by(|a, b| a.1.total_cmp(&b.1));
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.source.display(),
            got.steps,
            cell(got.loss, 4),
            cell(got.spread, 3),
            cell(got.start, 3),
            cell(got.m_o_z, 3),
            got.verdict.map(|v| format!("{v:?}")).unwrap_or_else(|| "–".into()),
            cell(init, 2),
            at(got.knn.last()),
            at(best),
            cell(r.summary.as_ref().map(|s| s.images_per_s), 0),
            cell(r.summary.as_ref().map(|s| s.train_seconds), 0),
        );
    }
    let _ = writeln!(md, "\nLoss, sqrt(d)·collapse_std and m_o are means over each run's last 10% of logged steps; the verdict applies `monitor::verdict` to them (collapsed: loss within 0.1 of its minimum, per unit loss, and sqrt(d)·collapse_std below 0.5 and below half its value at the first step, \"at step 0\"; narrow: below 0.5 otherwise); images/s and training time are from `summary.json` (finished runs).");
    if let Some(table) = repeats(runs, &reached) {
        md.push_str(&table);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A bare metrics-file run in group `g` with kNN `knn` at epochs 0 and 2, and steps of loss `loss`.
    fn run(g: &str, i: usize, loss: f64, knn: [f64; 2]) -> Compared {
        let mut rows: Vec<Value> =
            (0..10).map(|s| serde_json::json!({"step": s, "loss": loss, "collapse_std_scaled": 0.9})).collect();
        for (e, a) in [0.0, 2.0].into_iter().zip(knn) {
            rows.push(serde_json::json!({"event": "knn", "epoch": e, "knn_top1": a}));
        }
        let label = format!("{g}#{i}");
        Compared { label, source: PathBuf::from("x"), rows, config: None, summary: None, group: Some(g.into()) }
    }

    #[test]
    fn repeats_are_summarised_as_mean_sd_and_differences_with_their_se() {
        let runs = [
            run("a", 1, -0.5, [30.0, 30.0]),
            run("a", 2, -0.7, [30.0, 32.0]),
            run("b", 1, -0.6, [29.0, 33.0]),
            run("b", 2, -0.6, [29.0, 37.0]),
        ];
        let reached: Vec<Reached> = runs.iter().map(Reached::of).collect();
        let md = repeats(&runs, &reached).unwrap();
        // a: loss -0.6 ± sqrt(0.02) = 0.1414; kNN at 2: 31 ± sqrt(2); b: 35 ± sqrt(8);
        // b − a = +4 with se sqrt(2/2 + 8/2) = sqrt(5) = 2.236.
        assert!(md.contains("| a | 2 | -0.6000 ± 0.1414 (2) | 0.900 ± 0.000 (2) | – | – |"), "{md}");
        // Welch's degrees of freedom: (1 + 4)² / (1² + 4²) = 25/17; t = 4/sqrt(5).
        let (d, test) = crate::report::difference(Some((35.0, 8f64.sqrt(), 2)), Some((31.0, 2f64.sqrt(), 2))).unwrap();
        let (se, df) = test.unwrap();
        assert!(d == 4.0 && (se - 5f64.sqrt()).abs() < 1e-12 && (df - 25.0 / 17.0).abs() < 1e-12, "{se} {df}");
        let p = crate::report::t_test_p(d, se, df).unwrap();
        assert!(p > 0.2 && p < 0.35, "{p}");
        assert!(md.contains("| epoch | a | b | b − a (se, Welch's p) |"), "{md}");
        let cell = format!("+4.00 (se 2.24, p {})", crate::report::p_text(p));
        assert!(md.contains(&format!("| 2 | 31.00 ± 1.41 (2) | 35.00 ± 2.83 (2) | {cell} |")), "{md}");
        // No spread on either side: a difference is certain (p 0), by the pooled 2 df.
        assert!(md.contains("| 0 | 30.00 ± 0.00 (2) | 29.00 ± 0.00 (2) | -1.00 (se 0.00, p < 0.001) |"), "{md}");
        let single = [run("a", 1, -0.5, [30.0, 30.0])];
        let md = repeats(&single, &[Reached::of(&single[0])]).unwrap();
        assert!(md.contains("| 2 | 30.00 (1) |"), "one run: no sd: {md}");
        let mut lone = run("a", 1, -0.5, [30.0, 30.0]);
        lone.group = None;
        assert!(repeats(std::slice::from_ref(&lone), &[Reached::of(&lone)]).is_none());
        // Beside a group, an ungrouped run (a reference) is a group of one, under its label.
        let mixed = [run("a", 1, -0.5, [30.0, 30.0]), run("a", 2, -0.7, [30.0, 32.0]), lone];
        let reached: Vec<Reached> = mixed.iter().map(Reached::of).collect();
        let md = repeats(&mixed, &reached).unwrap();
        assert!(md.contains("| epoch | a | a#1 | a#1 − a (se, Welch's p) |"), "{md}");
        assert!(md.contains("| 2 | 31.00 ± 1.41 (2) | 30.00 (1) | -1.00 |"), "{md}");
    }
}
