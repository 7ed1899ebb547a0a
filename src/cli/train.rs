//! `simsiam train`: pre-training, resuming, `--print-config`, and the `--nproc` launcher.
use super::{command_line, interruptible, ConfigArgs};
use anyhow::{Context, Result};
use clap::Args;
use simsiam::config::Config;
use simsiam::train::{self, RunControl};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

#[derive(Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Continue the run in this folder from its latest checkpoint, with its saved config
    /// (`--data`/`--test-data` may say where the same data is now; `--device` where to run).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["preset", "method", "config", "sets", "epochs", "batch_size", "out", "seed"])]
    resume: Option<PathBuf>,
    /// Start from weights trained elsewhere (= model.init_from): safetensors, or a PyTorch
    /// checkpoint (the official code's `.pth.tar`, solo-learn's `.ckpt`, lightly's or
    /// torchvision's `state_dict`); with `--until-epoch 0`, a run of them for `eval`/`embed`.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Data-parallel: start N local ranks (c10d; --batch-size is the global batch). Under
    /// torchrun or srun, leave it out: each rank reads RANK, WORLD_SIZE, MASTER_ADDR, ...
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    nproc: Option<u32>,
    /// Stop once N epochs are done, with a checkpoint, and exit 0: a first look at a long
    /// schedule (the lr still follows run.epochs); `--resume` continues it where it stopped.
    /// 0 stops before the first step: a run folder of the initial weights (with
    /// `model.init_from`, weights trained elsewhere) for `eval`, `embed` and `analyse`.
    #[arg(long, value_name = "N")]
    until_epoch: Option<u64>,
    /// Print the config this command would train with (preset, --config, flags and --set
    /// resolved and checked; with --resume, the run's) as TOML, and exit without training.
    #[arg(long)]
    print_config: bool,
    /// With --print-config: each section and field with its meaning above it, as `#` comments.
    #[arg(long, requires = "print_config")]
    explain: bool,
}

/// `simsiam train`: a new run, a resumed one, or the launcher of local data-parallel ranks.
pub(crate) fn run(a: TrainArgs) -> Result<()> {
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
            cfg.absolute_paths();
            (cfg, true)
        }
        None => {
            let init =
                a.init_from.iter().map(|p| format!("model.init_from={}", toml::Value::String(p.display().to_string())));
            (a.cfg.resolve_with(&init.collect::<Vec<_>>())?, false)
        }
    };
    if a.print_config {
        let o = &cfg.optim;
        println!(
            "# lr = optim.base_lr x optim.batch_size / 256 = {} x {} / 256 = {}",
            o.base_lr,
            o.batch_size,
            o.init_lr()
        );
        print!("{}", if a.explain { cfg.to_toml_explained() } else { cfg.to_toml() });
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
    if let (Some(skipped), Some(scale)) = (s.skipped_steps, s.loss_scale) {
        println!(
            "fp16 loss scaling: {skipped} of {} steps skipped (gradients overflowed); final scale {scale}",
            s.steps
        );
    }
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
