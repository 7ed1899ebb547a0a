//! `simsiam`: the command-line edge. Library errors are typed; here they become `anyhow`
//! messages with context.
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use simsiam::config::{Config, PRESETS};
use simsiam::train::{self, RunControl};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

#[derive(Parser)]
#[command(name = "simsiam", version, about = "SimSiam self-supervised pre-training and analysis on libtorch")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pre-train an encoder without labels (the kNN monitor uses the test labels).
    Train(TrainArgs),
    /// Evaluate a trained run.
    #[command(subcommand, visible_alias = "evaluate")]
    Eval(EvalCmd),
    /// Run a named experiment from the seeds: every arm, then a report with a verdict per claim.
    Experiment {
        /// A shipped experiment (see --list) or a TOML file.
        #[arg(required_unless_present_any = ["list", "summary"])]
        name: Option<String>,
        /// Print the summary table (markdown) of every experiment folder under this one.
        #[arg(long, value_name = "ROOT")]
        summary: Option<PathBuf>,
        /// List the shipped experiments and their claims.
        #[arg(long)]
        list: bool,
        /// Output folder (default runs/experiments/NAME); arms already finished there are skipped.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Train only these arms now (comma-separated); the report covers every finished arm
        /// and judges the claim once all have run.
        #[arg(long, value_delimiter = ',', value_name = "ARM,...")]
        arms: Vec<String>,
        /// Also a linear probe of every arm (the experiment's `[linear]` recipe, else `eval
        /// linear`'s defaults); kept in each arm's linear_probe.json, added to the report.
        #[arg(long)]
        linear: bool,
        /// The linear probe's epochs (implies --linear).
        #[arg(long, value_name = "N")]
        linear_epochs: Option<usize>,
        /// Train every arm once per seed (comma-separated; in ARM/seed-S): verdicts per seed,
        /// kNN and orderings on the means, with their spread (the experiment's `seeds`).
        #[arg(long, value_delimiter = ',', value_name = "S,...")]
        seeds: Vec<u64>,
        #[command(flatten)]
        over: Overrides,
    },
    /// Measure the optimal-predictor and "shards" hypotheses on a run's checkpoint (B1-B5).
    Analyse {
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
    },
    /// Judge the blog's hypotheses C1-C6 from the analyses of a SimSiam, a SimCLR and
    /// (optionally) a BYOL run: `report.md`, `verdicts.json` and plots. Analyse each run first
    /// (`simsiam analyse all RUN`, and `analyse all RUN --checkpoint init --train-bn` for SimSiam).
    Hypotheses {
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
    },
    /// Write embeddings of a dataset (backbone and projector) as .npy, with labels and names.
    Embed {
        /// The run folder.
        run: PathBuf,
        /// Images to embed (any supported format).
        #[arg(long)]
        data: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// cpu, cuda, cuda:N or auto (default: the run's own `run.device`).
        #[arg(long)]
        device: Option<String>,
        /// Which split of a CIFAR binary folder to read.
        #[arg(long, value_enum, default_value = "test")]
        split: SplitArg,
        /// Which checkpoint: `latest` or a `step-*` folder of the run's checkpoints/.
        #[arg(long, default_value = "latest")]
        checkpoint: String,
    },
    /// Check a dataset before a run: load `--data` as training would (through `data.cache_dir`
    /// when set, which this also fills) and print what it holds, one JSON line.
    Data {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Which split of a CIFAR binary folder to read.
        #[arg(long, value_enum, default_value = "train")]
        split: SplitArg,
        /// Also draw two augmented views of N images (a seeded sample: `run.seed`) with the
        /// config's augmentation, into `--out`: views.png (the first 32 rows: image, view 1,
        /// view 2), views.npy `[N,2,3,H,W]` as the network sees them, images.npy, labels.npy,
        /// names.txt
        #[arg(long, value_name = "N", requires = "out", value_parser = clap::value_parser!(u32).range(1..))]
        views: Option<u32>,
    },
    /// Write the backbone as safetensors in torchvision's resnet layout.
    Export {
        /// The run folder.
        run: PathBuf,
        /// Output file (.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Which checkpoint: `latest` or a `step-*` folder of the run's checkpoints/.
        #[arg(long, default_value = "latest")]
        checkpoint: String,
    },
    /// Render a run's plots (PNG, SVG) and its HTML report; or, given several runs and `--out`,
    /// compare them: what each reached, the config fields in which they differ, the curves overlaid.
    Report {
        /// The run folder; to compare, several, each `PATH` or `LABEL=PATH` (a run folder, or a
        /// .jsonl file of metrics lines such as the PyTorch reference script's), or
        /// `LABEL=PATH,PATH,...`: repeats of one setting (seeds), also summarised as mean ± sd.
        #[arg(required = true)]
        runs: Vec<String>,
        /// Where the comparison goes (report.md, report.html, plots/); needed with several runs.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Time the training step, the augmentation and the whole pipeline; one JSON line each.
    Bench {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// What to time (several allowed).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "step,augment,end-to-end")]
        mode: Vec<simsiam::bench::Mode>,
        /// Untimed iterations first (cuDNN autotuning, allocator warm-up).
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Timed iterations.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Then profile a few more iterations of each mode (PyTorch's profiler: every CUDA
        /// kernel on a GPU) and write DIR/MODE-profile.md (where each millisecond goes),
        /// DIR/MODE-profile.json and DIR/MODE-trace.json (open in Perfetto).
        #[arg(long, value_name = "DIR")]
        profile: Option<PathBuf>,
        /// Iterations recorded by --profile.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        profile_steps: u64,
    },
    /// List the shipped presets, or print one resolved config as TOML.
    Presets {
        /// Print this preset's full resolved config.
        name: Option<String>,
    },
}

/// Flags that override config fields; named flags first, then `--set` (later wins).
#[derive(Args, Clone)]
struct Overrides {
    /// Override any field: `--set optim.base_lr=0.05 --set model.arch=resnet34`.
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    sets: Vec<String>,
    /// Training data (= data.train): a .tar/.tar.gz of class folders or of per-class .tar files
    /// (or of loose images: unlabelled), a folder of class folders or of loose images, or CIFAR
    /// binary batches.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Held-out data for the kNN monitor (= data.test).
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// = run.epochs
    #[arg(long)]
    epochs: Option<usize>,
    /// = optim.batch_size
    #[arg(long)]
    batch_size: Option<usize>,
    /// cpu, cuda, cuda:N or auto (= run.device)
    #[arg(long)]
    device: Option<String>,
    /// = run.seed
    #[arg(long)]
    seed: Option<u64>,
}

impl Overrides {
    /// As `section.field=value` strings.
    fn to_sets(&self) -> Vec<String> {
        let quote = |p: &PathBuf| toml::Value::String(p.display().to_string()).to_string();
        let mut sets = Vec::new();
        if let Some(p) = &self.data {
            sets.push(format!("data.train={}", quote(p)));
        }
        if let Some(p) = &self.test_data {
            sets.push(format!("data.test={}", quote(p)));
        }
        if let Some(v) = self.epochs {
            sets.push(format!("run.epochs={v}"));
        }
        if let Some(v) = self.batch_size {
            sets.push(format!("optim.batch_size={v}"));
        }
        if let Some(v) = &self.device {
            sets.push(format!("run.device={}", toml::Value::String(v.clone())));
        }
        if let Some(v) = self.seed {
            sets.push(format!("run.seed={v}"));
        }
        sets.extend(self.sets.iter().cloned());
        sets
    }
}

/// Where the config comes from: preset, then file, then flags (later wins).
#[derive(Args, Clone)]
struct ConfigArgs {
    /// Base preset (see `simsiam presets`).
    #[arg(long, default_value = "cifar10")]
    preset: String,
    /// Method overlay: simsiam, simclr or byol (same backbone, augmentation and schedule).
    #[arg(long, default_value = "simsiam")]
    method: String,
    /// A TOML file merged over the preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run folder (= run.out_dir)
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    over: Overrides,
}

impl ConfigArgs {
    fn resolve(&self) -> Result<Config> {
        let mut sets = Vec::new();
        if let Some(p) = &self.out {
            sets.push(format!("run.out_dir={}", toml::Value::String(p.display().to_string())));
        }
        sets.extend(self.over.to_sets());
        Ok(Config::resolve_method(&self.preset, &self.method, self.config.as_deref(), &sets)?)
    }
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Continue the run in this folder from its latest checkpoint, with its saved config
    /// (`--data`/`--test-data` may say where the same data is now; `--device` where to run).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["preset", "method", "config", "sets", "epochs", "batch_size", "out", "seed"])]
    resume: Option<PathBuf>,
    /// Data-parallel: start N local ranks (c10d; --batch-size is the global batch). Under
    /// torchrun or srun, leave it out: each rank reads RANK, WORLD_SIZE, MASTER_ADDR, ...
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    nproc: Option<u32>,
    /// Stop once N epochs are done, with a checkpoint, and exit 0: a first look at a long
    /// schedule (the lr still follows run.epochs); `--resume` continues it where it stopped.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    until_epoch: Option<u64>,
    /// Print the config this command would train with (preset, --config, flags and --set
    /// resolved and checked; with --resume, the run's) as TOML, and exit without training.
    #[arg(long)]
    print_config: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AnalyseWhat {
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Train,
    Test,
}

impl From<SplitArg> for simsiam::data::Split {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Train => simsiam::data::Split::Train,
            SplitArg::Test => simsiam::data::Split::Test,
        }
    }
}

/// Which run, and optionally which data, an evaluation reads.
#[derive(Args)]
struct EvalSource {
    /// The run folder (holds config.toml and checkpoints/).
    run: PathBuf,
    /// cpu, cuda, cuda:N or auto (default: the run's own `run.device`).
    #[arg(long)]
    device: Option<String>,
    /// Use this training data instead of the run's.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Use this test data instead of the run's.
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// Which checkpoint: `latest` or a `step-*` folder of the run's checkpoints/.
    #[arg(long, default_value = "latest")]
    checkpoint: String,
}

#[derive(Subcommand)]
enum EvalCmd {
    /// Linear probe on the frozen backbone of a run's checkpoint (`--checkpoint`, the latest by default): top-1 and top-5.
    Linear {
        #[command(flatten)]
        src: EvalSource,
        #[arg(long, default_value_t = 100)]
        epochs: usize,
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        /// Learning rate (cosine-decayed per epoch).
        #[arg(long, default_value_t = 30.0)]
        lr: f64,
        #[arg(long, default_value_t = 0.0)]
        weight_decay: f64,
        /// No augmentation: compute the features once (much faster, usually a little lower).
        #[arg(long)]
        no_augment: bool,
        /// BatchNorm without affine before the classifier.
        #[arg(long)]
        bn: bool,
        /// LARS (trust 0.001), the ImageNet recipe: e.g. --lars --batch-size 4096 --epochs 90
        /// --lr 1.6 (SimSiam's code: base 0.1 x 4096/256; the paper: base 0.02).
        #[arg(long)]
        lars: bool,
    },
    /// Weighted kNN top-1 of a run's checkpoint (`--checkpoint`, the latest by default; backbone features).
    Knn {
        #[command(flatten)]
        src: EvalSource,
        /// Neighbour counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "200")]
        k: Vec<usize>,
        /// Temperature.
        #[arg(long, default_value_t = 0.1)]
        t: f64,
    },
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

fn main() {
    // Behave as a Unix filter: `simsiam ... | head` ends quietly instead of panicking.
    // SAFETY: resetting a signal disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(match e.downcast_ref::<simsiam::Error>() {
            Some(simsiam::Error::Interrupted { .. }) => 130,
            _ => 1,
        });
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Train(a) => cmd_train(a),
        Cmd::Eval(EvalCmd::Knn { src, k, t }) => cmd_knn(src, &k, t),
        Cmd::Eval(EvalCmd::Linear { src, epochs, batch_size, lr, weight_decay, no_augment, bn, lars }) => {
            anyhow::ensure!(
                epochs > 0 && batch_size > 0 && lr > 0.0,
                "--epochs, --batch-size and --lr must be positive"
            );
            let (run, ckpt) = (src.run.clone(), src.checkpoint.clone());
            let e = eval_setup(src)?;
            let pc = simsiam::eval::linear::ProbeConfig {
                epochs,
                batch_size,
                lr,
                weight_decay,
                augment: !no_augment,
                bn,
                lars,
                seed: e.cfg.run.seed,
                ..Default::default()
            };
            let r = simsiam::eval::linear::probe(&e.net.model, &e.train, &e.test, &e.aug, &pc);
            let mut line = serde_json::to_value(&r)?;
            line["checkpoint"] = ckpt.clone().into();
            // The latest weights' probe is the run's (an experiment reads it); others beside it.
            let file = if ckpt == "latest" { "linear_probe.json".into() } else { format!("linear_probe-{ckpt}.json") };
            simsiam::checkpoint::write_atomic(&run.join(&file), format!("{line}\n").as_bytes())?;
            println!("{line}");
            Ok(())
        }
        Cmd::Analyse { what, run, data, n, k, train_bn, sizes, checkpoint, device } => {
            anyhow::ensure!(k >= 2, "--k: expected at least 2 views per image (a centre and its spread), got {k}");
            anyhow::ensure!(n >= 10, "--n: expected at least 10 images, got {n}");
            let (cfg, device) = train::run_config(&run, device)?;
            let path = data
                .or_else(|| cfg.data.test.clone())
                .context("no data: the run has no held-out data (data.test) to analyse; pass --data PATH")?;
            let store = simsiam::data::open(&path, simsiam::data::Split::Test, &cfg.data)?;
            anyhow::ensure!(store.len() >= 10, "{}: at least 10 images needed", path.display());
            if n > store.len() {
                eprintln!("note: --n {n}: {} holds {} images; analysing all of them", path.display(), store.len());
            }
            let n = n.min(store.len());
            let images = store.images.narrow(0, 0, n as i64).to_device(device);
            let sizes = if matches!(what, AnalyseWhat::Instances | AnalyseWhat::All) {
                instance_sizes(&sizes, n)?
            } else {
                sizes
            };
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
                    all.into_iter()
                        .map(|c| (Some(c.clone()), sub(&c.file_name().expect("name").to_string_lossy())))
                        .collect()
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
                let probe = simsiam::analyse::Probe {
                    model: &net.model,
                    images: images.shallow_clone(),
                    aug: &aug,
                    aug_cfg: &cfg.augment,
                    image_size: cfg.data.image_size,
                    k,
                    train_bn,
                };
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
        Cmd::Embed { run, data, out, device, split, checkpoint } => {
            cmd_embed(run, data, out, device, split, &checkpoint)
        }
        Cmd::Data { cfg, split, views } => cmd_data(&cfg.resolve()?, split, views),
        Cmd::Export { run, out, checkpoint } => {
            let (cfg, _, net) = train::load_run_at(&run, &checkpoint, Some("cpu".into()))?;
            let n = simsiam::export::export_torchvision(&net.vs, &out)?;
            println!("wrote {} ({n} tensors, torchvision resnet layout)", out.display());
            if cfg.model.width != 64 {
                eprintln!("note: model.width = {} (torchvision's resnets use 64): build the matching torchvision model with width_per_group/inplanes changed", cfg.model.width);
            }
            if cfg.model.cifar_stem {
                eprintln!("note: CIFAR stem: in torchvision set conv1 = Conv2d(3, {}, 3, 1, 1, bias=False), maxpool = Identity(), fc = Identity()", cfg.model.width);
            }
            Ok(())
        }
        Cmd::Experiment { summary: Some(root), .. } => {
            print!("{}", simsiam::experiment::summarise(&root)?);
            Ok(())
        }
        Cmd::Experiment { list: true, .. } => {
            for (name, text) in simsiam::experiment::SHIPPED {
                let e = simsiam::experiment::Experiment::parse(text, name)?;
                println!("{name:<24} {} arms  {}\n{:<24} ({})", e.arms.len(), e.claim, "", e.source);
            }
            Ok(())
        }
        Cmd::Experiment { name, out, arms, linear, linear_epochs, seeds, over, .. } => {
            let mut exp = simsiam::experiment::Experiment::find(name.as_deref().expect("clap requires it"))?;
            if !seeds.is_empty() {
                exp.seeds = seeds;
                exp.check_seeds("--seeds")?;
            }
            if linear || linear_epochs.is_some() {
                let pc = exp.linear.get_or_insert_with(Default::default);
                if let Some(n) = linear_epochs {
                    anyhow::ensure!(n > 0, "--linear-epochs: expected a positive number of epochs, got 0");
                    pc.epochs = n;
                }
            }
            let out = out.unwrap_or_else(|| PathBuf::from("runs/experiments").join(&exp.name));
            let control = interruptible(RunControl {
                progress: std::io::stderr().is_terminal(),
                command: Some(command_line()),
                ..Default::default()
            })?;
            let o = simsiam::experiment::run(&exp, &out, &over.to_sets(), &control, &arms).map_err(|e| {
                let interrupted = matches!(e, simsiam::Error::Interrupted { .. });
                let e = anyhow::Error::from(e);
                // The arm's own hint (`train --resume`) would finish that arm but not the report.
                if interrupted {
                    e.context(format!(
                        "experiment {}: run the same command again to go on (finished arms are skipped, this arm resumes)",
                        exp.name
                    ))
                } else {
                    e
                }
            })?;
            println!("{}: the claim {}; report: {}", exp.name, o.verdict(), out.join("report.md").display());
            Ok(())
        }
        Cmd::Hypotheses { runs, experiments, out } => {
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
        Cmd::Report { runs, out } => {
            let written = match (runs.as_slice(), out) {
                ([run], None) => simsiam::report::write_report(std::path::Path::new(run))?,
                (_, Some(out)) => {
                    let mut loaded = Vec::new();
                    for r in &runs {
                        loaded.extend(simsiam::compare::Compared::load_arg(r)?);
                    }
                    simsiam::compare::write(&loaded, &out)?
                }
                (_, None) => anyhow::bail!("report: --out DIR is needed to compare several runs"),
            };
            println!("wrote {}", written.display());
            Ok(())
        }
        Cmd::Bench { cfg, mode, warmup, steps, profile, profile_steps } => {
            let cfg = cfg.resolve()?;
            let profile = profile.map(|dir| simsiam::bench::ProfileOpts { dir, steps: profile_steps as usize });
            for m in mode {
                let r = simsiam::bench::measure(&cfg, m, warmup, steps, profile.as_ref())?;
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
        Cmd::Presets { name: None } => {
            for (n, about, _) in PRESETS {
                println!("{n:<10} {about}");
            }
            Ok(())
        }
        Cmd::Presets { name: Some(n) } => {
            print!("{}", Config::resolve(&n, None, &[])?.to_toml());
            Ok(())
        }
    }
}

/// This invocation as `simsiam ARGS...`, each argument quoted where a shell would need it.
fn command_line() -> String {
    let quote = |a: String| {
        if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
            a
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    };
    std::iter::once("simsiam".to_string()).chain(std::env::args().skip(1).map(quote)).collect::<Vec<_>>().join(" ")
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let (cfg, resume) = match &a.resume {
        Some(dir) => {
            let mut cfg = Config::load(&dir.join("config.toml"))
                .with_context(|| format!("--resume {}: not a run folder", dir.display()))?;
            if let Some(d) = &a.cfg.over.device {
                cfg.run.device = d.clone();
            }
            cfg.run.out_dir = dir.clone();
            // The same data, moved (training checks it against the checkpoint, then saves the
            // new paths in the run's config).
            if let Some(p) = &a.cfg.over.data {
                cfg.data.train = Some(p.clone());
            }
            if let Some(p) = &a.cfg.over.test_data {
                cfg.data.test = Some(p.clone());
            }
            (cfg, true)
        }
        None => (a.cfg.resolve()?, false),
    };
    if a.print_config {
        let o = &cfg.optim;
        println!(
            "# lr = optim.base_lr x optim.batch_size / 256 = {} x {} / 256 = {}",
            o.base_lr,
            o.batch_size,
            o.init_lr()
        );
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    let control = interruptible(RunControl {
        resume,
        progress: std::io::stderr().is_terminal(),
        command: Some(command_line()),
        until_epoch: a.until_epoch.map(|n| n as usize),
        ..Default::default()
    })?;
    if let Some(n) = a.nproc.filter(|_| std::env::var_os("WORLD_SIZE").is_none()) {
        // The launcher: the same command line for every rank, without --nproc.
        let mut args: Vec<String> = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            if arg == "--nproc" {
                it.next();
            } else if !arg.starts_with("--nproc=") {
                args.push(arg);
            }
        }
        eprintln!("starting {n} ranks");
        // A failed rank's peers notice at their next collective, or after dist.timeout_s.
        let grace = std::time::Duration::from_secs_f64(cfg.dist.timeout_s + 10.0);
        let launched = simsiam::dist::launch_local(n as usize, &args, grace, control.interrupt.clone());
        if launched.is_err() && control.interrupt.load(Ordering::SeqCst) {
            eprintln!("interrupted; continue with `simsiam train --resume {} --nproc {n}`", cfg.run.out_dir.display());
            std::process::exit(130);
        }
        launched?;
        println!("outputs in {}", cfg.run.out_dir.display());
        return Ok(());
    }
    // Under a launcher, only rank 0 reports.
    if std::env::var("RANK").is_ok_and(|r| r != "0") {
        // `--until-epoch`: rank 0 says so.
        return match train::train(&cfg, &control) {
            Ok(_) | Err(simsiam::Error::Paused { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    eprintln!("run folder: {}", cfg.run.out_dir.display());
    let s = match train::train(&cfg, &control) {
        Err(e @ simsiam::Error::Paused { .. }) => {
            // The requested stop is a success (exit 0).
            eprintln!("{e}");
            return Ok(());
        }
        r => r?,
    };
    println!(
        "trained {} epochs ({} steps) in {:.1}s, {:.0} images/s on {}",
        s.epochs, s.steps, s.train_seconds, s.images_per_s, s.device
    );
    println!(
        "final loss {:+.4}, collapse_std {:.4} (x sqrt(d) = {:.3})",
        s.final_loss, s.collapse_std, s.collapse_std_scaled
    );
    match (s.knn_init, s.knn_final) {
        (Some(i), Some(f)) => println!(
            "kNN top-1 (k={}, t={}): at initialisation {i:.2}%, trained {f:.2}% ({:+.2} points)",
            cfg.monitor.knn_k,
            cfg.monitor.knn_t,
            f - i
        ),
        (None, Some(f)) => println!("kNN top-1 (k={}, t={}): trained {f:.2}%", cfg.monitor.knn_k, cfg.monitor.knn_t),
        _ if cfg.data.test.is_none() => println!("no test data given (--test-data): kNN monitor skipped"),
        _ => println!("kNN monitor off: it needs class folders in both the training and the test data"),
    }
    println!("outputs in {}", cfg.run.out_dir.display());
    Ok(())
}

/// Installs the Ctrl-C handler, for SIGTERM and SIGHUP too (what Slurm, Kubernetes and
/// `timeout` send before they kill a job): the first signal asks the run to checkpoint and
/// stop, a second exits at once.
fn interruptible(control: RunControl) -> Result<RunControl> {
    let flag = control.interrupt.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("interrupt (Ctrl-C or SIGTERM): finishing this step and saving a checkpoint (Ctrl-C again to abort)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(control)
}

/// What `eval` needs: a run's network, its train and test stores on the device (with optional
/// data overrides), and the evaluation transform.
struct EvalSetup {
    cfg: Config,
    net: train::Network,
    train: simsiam::data::ImageStore,
    test: simsiam::data::ImageStore,
    aug: simsiam::augment::Augmenter,
}

fn eval_setup(src: EvalSource) -> Result<EvalSetup> {
    let (mut cfg, device, net) = train::load_run_at(&src.run, &src.checkpoint, src.device)?;
    if src.data.is_some() {
        cfg.data.train = src.data;
    }
    if src.test_data.is_some() {
        cfg.data.test = src.test_data;
    }
    anyhow::ensure!(cfg.data.test.is_some(), "no test data: pass --test-data PATH");
    let (train_store, test_store) = train::load_data(&cfg)?;
    let test_store = test_store.expect("checked");
    for (what, store) in [("the training data (--data)", &train_store), ("the test data (--test-data)", &test_store)] {
        anyhow::ensure!(store.labelled(), "{what} has no class folders: evaluation needs labelled images");
    }
    let aug = simsiam::augment::Augmenter::new(&cfg.augment, cfg.data.image_size, device);
    let (train, test) = (train_store.place(device, cfg.data.store)?, test_store.place(device, cfg.data.store)?);
    Ok(EvalSetup { cfg, net, train, test, aug })
}

fn cmd_knn(src: EvalSource, ks: &[usize], t: f64) -> Result<()> {
    anyhow::ensure!(
        !ks.is_empty() && ks.iter().all(|&k| k >= 1),
        "--k: expected neighbour counts of at least 1, got {ks:?}"
    );
    anyhow::ensure!(t.is_finite() && t > 0.0, "--t: expected a positive temperature, got {t}");
    let (run, ckpt) = (src.run.clone(), src.checkpoint.clone());
    let e = eval_setup(src)?;
    let bank = e.train.len();
    if let Some(k) = ks.iter().find(|&&k| k > bank) {
        anyhow::bail!("--k: {k} neighbours, but the bank (the training data) holds only {bank} images");
    }
    let accs = simsiam::eval::knn::knn_accuracy(&e.net.model, &e.train, &e.test, &e.aug, ks, t);
    for (k, acc) in ks.iter().zip(accs) {
        let run = run.display().to_string();
        println!("{}", serde_json::json!({"run": run, "checkpoint": ckpt, "k": k, "t": t, "knn_top1": acc}));
    }
    Ok(())
}

fn cmd_data(cfg: &Config, split: SplitArg, views: Option<u32>) -> Result<()> {
    let path = cfg.data.train.as_ref().context("no data: pass --data PATH")?;
    let t = std::time::Instant::now();
    let store = simsiam::data::open(path, split.into(), &cfg.data)?;
    let seconds = t.elapsed().as_secs_f64();
    let counts = Vec::<i64>::try_from(store.labels.clamp_min(0).bincount(None::<tch::Tensor>, 0))?;
    let per_class: serde_json::Map<String, serde_json::Value> = store
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), counts.get(i).copied().unwrap_or(0).into()))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "data": path.display().to_string(),
            "images": store.len(),
            "skipped": store.skipped,
            "image_size": store.image_size(),
            "store_mib": store.bytes() as f64 / (1u64 << 20) as f64,
            "labelled": store.labelled(),
            "classes": store.num_classes(),
            "per_class": per_class,
            "cache_dir": cfg.data.cache_dir.as_ref().map(|d| d.display().to_string()),
            "seconds": seconds,
        })
    );
    if let Some(n) = views {
        let dir = &cfg.run.out_dir;
        let aug = simsiam::augment::Augmenter::new(&cfg.augment, cfg.data.image_size, tch::Device::Cpu);
        let n = simsiam::export::write_views(dir, &store, &aug, n as usize, cfg.run.seed)?;
        eprintln!("views of {n} images in {}", dir.display());
    }
    Ok(())
}

fn cmd_embed(
    run: PathBuf,
    data: PathBuf,
    out: PathBuf,
    device: Option<String>,
    split: SplitArg,
    checkpoint: &str,
) -> Result<()> {
    let (cfg, device, net) = train::load_run_at(&run, checkpoint, device)?;
    let store = simsiam::data::open(&data, split.into(), &cfg.data)?;
    let aug = simsiam::augment::Augmenter::new(&cfg.augment, cfg.data.image_size, device);
    let (y, z) = simsiam::export::embed(&net.model, &store.place(device, cfg.data.store)?, &aug, 512);
    simsiam::export::write_embeddings(&out, &y, &z, &store)?;
    println!(
        "wrote {} embeddings to {}: backbone.npy {:?}, projector.npy {:?}, labels.npy, names.txt, classes.txt",
        store.len(),
        out.display(),
        y.size(),
        z.size()
    );
    Ok(())
}
