//! `simsiam eval` (or `evaluate`): the kNN monitor's measure and the linear probe on a run's
//! frozen backbone.
use anyhow::Result;
use clap::{Args, Subcommand};
use simsiam::config::Config;
use simsiam::train;
use std::path::PathBuf;

/// Which run, and optionally which data, an evaluation reads.
#[derive(Args)]
pub(crate) struct EvalSource {
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
pub(crate) enum EvalCmd {
    /// Linear probe on the frozen backbone of a run's checkpoint (`--checkpoint`, the latest by default): top-1 and top-5.
    Linear(LinearArgs),
    /// Weighted kNN top-1 of a run's checkpoint (`--checkpoint`, the latest by default; backbone features).
    Knn(KnnArgs),
}

#[derive(Args)]
pub(crate) struct LinearArgs {
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
}

#[derive(Args)]
pub(crate) struct KnnArgs {
    #[command(flatten)]
    src: EvalSource,
    /// Neighbour counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "200")]
    k: Vec<usize>,
    /// Temperature.
    #[arg(long, default_value_t = 0.1)]
    t: f64,
}

pub(crate) fn run(c: EvalCmd) -> Result<()> {
    match c {
        EvalCmd::Knn(a) => knn(a),
        EvalCmd::Linear(a) => linear(a),
    }
}

/// `eval linear`: the probe's top-1 and top-5, printed and kept beside the checkpoint.
fn linear(a: LinearArgs) -> Result<()> {
    let LinearArgs { src, epochs, batch_size, lr, weight_decay, no_augment, bn, lars } = a;
    anyhow::ensure!(epochs > 0, "--epochs: expected at least 1, got 0");
    anyhow::ensure!(batch_size > 0, "--batch-size: expected at least 1, got 0");
    anyhow::ensure!(lr.is_finite() && lr > 0.0, "--lr: expected a positive learning rate, got {lr}");
    anyhow::ensure!(
        weight_decay.is_finite() && weight_decay >= 0.0,
        "--weight-decay: expected a non-negative number, got {weight_decay}"
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

/// `eval knn`: weighted kNN top-1 for each k, one JSON line each.
fn knn(a: KnnArgs) -> Result<()> {
    let KnnArgs { src, k: ks, t } = a;
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
    let accs = simsiam::eval::knn::knn_accuracy(&e.net.model, &e.train, &e.test, &e.aug, &ks, t);
    for (k, acc) in ks.iter().zip(accs) {
        let run = run.display().to_string();
        println!("{}", serde_json::json!({"run": run, "checkpoint": ckpt, "k": k, "t": t, "knn_top1": acc}));
    }
    Ok(())
}
