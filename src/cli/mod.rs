//! The `simsiam` binary's subcommands: clap's argument types and one handler per command, a
//! file per group (`train`, `eval`, `analyse`, `experiment`, `export`, `data`, `report`,
//! `bench`). The library does the work; here its typed errors become `anyhow` messages that
//! name the flag or file.
mod analyse;
mod bench;
mod data;
mod eval;
mod experiment;
mod export;
mod report;
mod train;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use simsiam::config::{Config, METHODS, PRESETS};
use simsiam::train::RunControl;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

#[derive(Parser)]
#[command(name = "simsiam", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SIMSIAM_COMMIT"), ", libtorch ", env!("SIMSIAM_LIBTORCH_VERSION"), ")"), about = "SimSiam self-supervised pre-training and analysis on libtorch")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pre-train an encoder without labels (the kNN monitor uses the test labels).
    Train(train::TrainArgs),
    /// Evaluate a trained run.
    #[command(subcommand, visible_alias = "evaluate")]
    Eval(eval::EvalCmd),
    /// Run a named experiment from the seeds: every arm, then a report with a verdict per claim.
    Experiment(experiment::ExperimentArgs),
    /// Measure the optimal-predictor and "shards" hypotheses on a run's checkpoint (B1-B5).
    Analyse(analyse::AnalyseArgs),
    /// Judge the blog's hypotheses C1-C6 from the analyses of a SimSiam, a SimCLR and
    /// (optionally) a BYOL run: `report.md`, `verdicts.json` and plots. Analyse each run first
    /// (`simsiam analyse all RUN`, and `analyse all RUN --checkpoint init --train-bn` for SimSiam).
    Hypotheses(analyse::HypothesesArgs),
    /// Write embeddings of a dataset (backbone and projector) as .npy, with labels and names.
    Embed(export::EmbedArgs),
    /// Check a dataset before a run: load `--data` as training would (through `data.cache_dir`
    /// when set, which this also fills) and print what it holds, one JSON line.
    Data(data::DataArgs),
    /// Write the backbone as safetensors in torchvision's resnet layout.
    Export(export::ExportArgs),
    /// Render a run's plots (PNG, SVG) and its HTML report; or, given several runs and `--out`,
    /// compare them: what each reached, the config fields in which they differ, the curves overlaid.
    Report(report::ReportArgs),
    /// Time the training step, the augmentation and the whole pipeline; one JSON line each.
    Bench(bench::BenchArgs),
    /// Where every run under the given folders stands: training (by which process), finished,
    /// or stopped with a checkpoint to resume; its epoch, loss, spread, kNN and last write.
    Status {
        /// Folders to search for run folders (those holding config.toml).
        #[arg(default_value = "runs")]
        roots: Vec<PathBuf>,
        /// One JSON line per run instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: `simsiam completions bash > ~/.local/share/bash-completion/completions/simsiam`
    /// (zsh, fish, elvish and powershell too).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// List the shipped presets and methods, or print one resolved preset as TOML.
    Presets {
        /// Print this preset's full resolved config.
        name: Option<String>,
        /// With NAME: each section and field with its meaning above it, as `#` comments.
        #[arg(long, requires = "name")]
        explain: bool,
    },
}

/// Parses the command line and runs the subcommand.
pub fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Train(a) => train::run(a),
        Cmd::Eval(c) => eval::run(c),
        Cmd::Experiment(a) => experiment::run(a),
        Cmd::Analyse(a) => analyse::run(a),
        Cmd::Hypotheses(a) => analyse::hypotheses(a),
        Cmd::Embed(a) => export::embed(a),
        Cmd::Data(a) => data::run(a),
        Cmd::Export(a) => export::export(a),
        Cmd::Report(a) => report::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Status { roots, json } => {
            let runs = simsiam::status::scan(&roots)?;
            if json {
                for r in &runs {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else if runs.is_empty() {
                println!(
                    "no run folders under {}",
                    roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
                );
            } else {
                print!("{}", simsiam::status::table(&runs));
            }
            Ok(())
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "simsiam",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Presets { name: None, .. } => {
            for (n, about, _) in PRESETS {
                println!("{n:<10} {about}");
            }
            println!("\nmethods (--method, over any preset):");
            for (n, about, _) in METHODS {
                println!("{n:<10} {about}");
            }
            Ok(())
        }
        Cmd::Presets { name: Some(n), explain } => {
            let cfg = Config::resolve(&n, None, &[])?;
            print!("{}", if explain { cfg.to_toml_explained() } else { cfg.to_toml() });
            Ok(())
        }
    }
}

/// Flags that override config fields; named flags first, then `--set` (later wins).
#[derive(Args, Clone)]
pub(crate) struct Overrides {
    /// Override any field: `--set optim.base_lr=0.05 --set model.arch=resnet34`.
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    pub(crate) sets: Vec<String>,
    /// Training data (= data.train): a .tar/.tar.gz of class folders or of per-class .tar files
    /// (or of loose images: unlabelled), a folder of class folders or of loose images, or CIFAR
    /// binary batches.
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// Held-out data for the kNN monitor (= data.test).
    #[arg(long)]
    pub(crate) test_data: Option<PathBuf>,
    /// = run.epochs
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// = optim.batch_size
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// cpu, cuda, cuda:N or auto (= run.device)
    #[arg(long)]
    pub(crate) device: Option<String>,
    /// = run.seed
    #[arg(long)]
    pub(crate) seed: Option<u64>,
}

impl Overrides {
    /// As `section.field=value` strings.
    pub(crate) fn to_sets(&self) -> Vec<String> {
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
pub(crate) struct ConfigArgs {
    /// Base preset (see `simsiam presets`).
    #[arg(long, default_value = "cifar10")]
    pub(crate) preset: String,
    /// Method overlay: simsiam, simclr, byol, swav or moco (same backbone, augmentation and schedule).
    #[arg(long, default_value = "simsiam")]
    pub(crate) method: String,
    /// A TOML file merged over the preset.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Run folder (= run.out_dir)
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) over: Overrides,
}

impl ConfigArgs {
    pub(crate) fn resolve(&self) -> Result<Config> {
        self.resolve_with(&[])
    }

    /// With a command's own named flags as `section.field=value` (before `--set`, which wins).
    pub(crate) fn resolve_with(&self, named: &[String]) -> Result<Config> {
        let mut sets = Vec::new();
        if let Some(p) = &self.out {
            sets.push(format!("run.out_dir={}", toml::Value::String(p.display().to_string())));
        }
        sets.extend_from_slice(named);
        sets.extend(self.over.to_sets());
        Ok(Config::resolve_method(&self.preset, &self.method, self.config.as_deref(), &sets)?)
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum SplitArg {
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

/// This invocation as `simsiam ARGS...`, each argument quoted where a shell would need it.
pub(crate) fn command_line() -> String {
    let quote = |a: String| {
        if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
            a
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    };
    std::iter::once("simsiam".to_string()).chain(std::env::args().skip(1).map(quote)).collect::<Vec<_>>().join(" ")
}

/// Installs the Ctrl-C handler, for SIGTERM and SIGHUP too (what Slurm, Kubernetes and
/// `timeout` send before they kill a job): the first signal asks the run to checkpoint and
/// stop, a second exits at once.
pub(crate) fn interruptible(control: RunControl) -> Result<RunControl> {
    let flag = control.interrupt.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "interrupt (Ctrl-C or SIGTERM): stopping after this step, or before the first if training has not \
             started, and saving a checkpoint (Ctrl-C again to abort)"
        );
    })
    .context("installing the Ctrl-C handler")?;
    Ok(control)
}
