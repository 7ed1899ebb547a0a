//! `simsiam analyse` (B1-B5 on a checkpoint) and `simsiam hypotheses` (the blog's claims judged
//! from those analyses).
use super::command_line;
use anyhow::{Context, Result};
use clap::Args;
use simsiam::train;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct AnalyseArgs {
    #[arg(value_enum)]
    what: AnalyseWhat,
    /// The run folder.
    run: PathBuf,
    /// Images to analyse (default: the run's test data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Use the first N images.
    #[arg(long, default_value_t = 2000)]
    n: usize,
    /// Augmented views per image for the instance centres.
    #[arg(long, default_value_t = 16)]
    k: usize,
    /// Train-mode BN (SimSiam's targets are computed in train mode); default eval mode.
    #[arg(long)]
    train_bn: bool,
    /// Instance counts for `instances`.
    #[arg(long, value_delimiter = ',', default_value = "100,500,1000,2000")]
    sizes: Vec<usize>,
    /// Which weights: `latest` (results in RUN/analysis), `init` (the run's random
    /// initialisation, rebuilt from its config and seed), `all` (every kept checkpoint; keep
    /// them with `--set run.keep_checkpoints=0`), or a checkpoint folder name
    /// (`step-000001560`). `latest` writes to RUN/analysis, the others to RUN/analysis/NAME
    /// (`-train-bn` appended with --train-bn, and `latest` then to RUN/analysis/latest-train-bn).
    #[arg(long, default_value = "latest")]
    checkpoint: String,
    /// cpu, cuda, cuda:N or auto (default: the run's own `run.device`).
    #[arg(long)]
    device: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AnalyseWhat {
    /// B4: effective rank, RankMe, participation ratio, PCA dims, TwoNN of z, y and centres.
    Dimension,
    /// B2: instance identification (top-1/top-5, posterior entropy) against N instances.
    Instances,
    /// B1: cos(h, h*) and baselines, achieved similarity vs its floor.
    Predictor,
    /// B3: shard radius, nearest-centre similarity, margin, overlap ratio, uniformity.
    Shards,
    /// B5: mean resultant length, variance ratio, alignment, per-augmentation invariance.
    Invariance,
    /// All of the above.
    All,
}

/// `analyse instances`' instance counts that `n` images can serve: each at least 2, those
/// above `n` left out with a note, an error when none is left.
fn instance_sizes(sizes: &[usize], n: usize) -> Result<Vec<usize>> {
    if let Some(s) = sizes.iter().find(|&&s| s < 2) {
        anyhow::bail!("--sizes: expected instance counts of at least 2, got {s}");
    }
    let (kept, over): (Vec<usize>, Vec<usize>) = sizes.iter().copied().partition(|&s| s <= n);
    anyhow::ensure!(!kept.is_empty(), "--sizes: every count ({sizes:?}) is above the {n} images analysed (--n)");
    if !over.is_empty() {
        eprintln!("note: --sizes {over:?}: above the {n} images analysed, left out");
    }
    Ok(kept)
}

/// `simsiam analyse`: each requested analysis of each requested checkpoint, as JSON and plots.
pub(crate) fn run(a: AnalyseArgs) -> Result<()> {
    let AnalyseArgs { what, run, data, n, k, train_bn, sizes, checkpoint, device } = a;
    anyhow::ensure!(k >= 2, "--k: expected at least 2 views per image (a centre and its spread), got {k}");
    anyhow::ensure!(n >= 10, "--n: expected at least 10 images, got {n}");
    let (cfg, device) = train::run_config(&run, device)?;
    let path = match data {
        Some(p) => p,
        None => {
            let p = cfg
                .data
                .test
                .clone()
                .context("no data: the run has no held-out data (data.test) to analyse; pass --data PATH")?;
            simsiam::data::missing(&p, &format!("data.test of {} (other images: --data)", run.display()))?;
            p
        }
    };
    let store = simsiam::data::open(&path, simsiam::data::Split::Test, &cfg.data)?;
    anyhow::ensure!(store.len() >= 10, "{}: at least 10 images needed", path.display());
    if n > store.len() {
        eprintln!("note: --n {n}: {} holds {} images; analysing all of them", path.display(), store.len());
    }
    let n = n.min(store.len());
    let images = store.images.narrow(0, 0, n as i64).to_device(device);
    let sizes =
        if matches!(what, AnalyseWhat::Instances | AnalyseWhat::All) { instance_sizes(&sizes, n)? } else { sizes };
    let aug = simsiam::augment::Augmenter::new(&cfg.augment, cfg.data.image_size, device);
    // (weights, output folder) for each requested checkpoint; None = initialisation.
    // Train-mode results go beside the eval-mode ones, never over them.
    let mode = if train_bn { "-train-bn" } else { "" };
    let sub = |name: &str| run.join("analysis").join(format!("{name}{mode}"));
    let targets: Vec<(Option<PathBuf>, PathBuf)> = match checkpoint.as_str() {
        "latest" => {
            let c = simsiam::checkpoint::named(&run, "latest")?;
            vec![(Some(c), if train_bn { sub("latest") } else { run.join("analysis") })]
        }
        "init" => vec![(None, sub("init"))],
        "all" => {
            let all = simsiam::checkpoint::all(&run)?;
            anyhow::ensure!(!all.is_empty(), "{}: no checkpoint yet", run.display());
            all.into_iter().map(|c| (Some(c.clone()), sub(&c.file_name().expect("name").to_string_lossy()))).collect()
        }
        name => vec![(Some(simsiam::checkpoint::named(&run, name)?), sub(name))],
    };
    for (ckpt, dir) in targets {
        // The same seed as training: `init` rebuilds the run's own initial weights.
        tch::manual_seed(cfg.run.seed as i64);
        let mut net = train::Network::new(&cfg, device);
        let position = match &ckpt {
            Some(c) => {
                simsiam::checkpoint::load_model(&mut net.vs, c)?;
                simsiam::checkpoint::load_position(c)?
            }
            None => Default::default(),
        };
        let probe = simsiam::analyse::Probe::new(
            &net.model,
            images.shallow_clone(),
            &aug,
            &cfg.augment,
            cfg.data.image_size,
            k,
            train_bn,
        );
        tch::manual_seed(cfg.run.seed as i64);
        let all = what == AnalyseWhat::All;
        let mut out = serde_json::Map::new();
        let mut put = |name: &str, f: &dyn Fn() -> serde_json::Value| {
            eprintln!("analyse {name} ({}) ...", dir.display());
            let mut v = f();
            v["checkpoint"] = serde_json::json!({
                "epoch": position.epoch, "global_step": position.global_step,
                "weights": ckpt.as_ref().map_or("init".into(), |c| c.display().to_string()),
                "n": images.size()[0], "k": k, "train_bn": train_bn,
            });
            out.insert(name.to_string(), v);
        };
        if all || what == AnalyseWhat::Dimension {
            put("dimension", &|| probe.dimension());
        }
        if all || what == AnalyseWhat::Instances {
            put("instances", &|| probe.instances(&sizes, true));
        }
        if all || what == AnalyseWhat::Predictor {
            put("predictor", &|| probe.predictor());
        }
        if all || what == AnalyseWhat::Shards {
            put("shards", &|| probe.shards());
        }
        if all || what == AnalyseWhat::Invariance {
            put("invariance", &|| probe.invariance());
        }
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        for (name, v) in &out {
            let f = dir.join(format!("{name}.json"));
            simsiam::checkpoint::write_atomic(&f, serde_json::to_string_pretty(v)?.as_bytes())?;
        }
        for p in simsiam::analyse::plots(&dir, &out)? {
            eprintln!("plot: {} (and .svg)", p.display());
        }
        println!("{}", serde_json::to_string(&out)?);
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct HypothesesArgs {
    /// A trained model: `simsiam=RUN_DIR` and `simclr=RUN_DIR` are needed (the verdicts compare
    /// them); `byol=RUN_DIR` and any other `NAME=RUN_DIR` (e.g. a SimSiam arm) add columns.
    #[arg(long = "run", value_name = "METHOD=RUN_DIR", required = true)]
    runs: Vec<String>,
    /// A folder of experiment outputs (`simsiam experiment NAME --out ROOT/NAME`): the
    /// oracle-predictor, augmentation-removal and dim-sweep outcomes found there are used.
    #[arg(long, value_name = "ROOT")]
    experiments: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

/// `simsiam hypotheses`: the verdicts C1-C6 from the runs' analyses.
pub(crate) fn hypotheses(a: HypothesesArgs) -> Result<()> {
    let HypothesesArgs { runs, experiments, out } = a;
    let runs = runs
        .iter()
        .map(|r| {
            let (m, dir) = r.split_once('=').with_context(|| format!("--run {r}: expected METHOD=RUN_DIR"))?;
            anyhow::ensure!(
                !m.is_empty() && m.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "--run {r}: the name {m:?} must be lowercase letters, digits and '-' (simsiam, simclr, byol, ...)"
            );
            Ok((m.to_string(), PathBuf::from(dir)))
        })
        .collect::<Result<Vec<_>>>()?;
    let inputs = simsiam::hypotheses::Inputs::load(&runs, experiments.as_deref())?;
    println!("wrote {}", simsiam::hypotheses::write(&inputs, &out, &command_line())?.display());
    Ok(())
}
