//! `simsiam embed` and `simsiam export`: what a user takes away, embeddings as `.npy` and the
//! backbone in torchvision's layout (safetensors or `torch.save`'s format).
use super::SplitArg;
use anyhow::Result;
use clap::Args;
use simsiam::export::ExportFormat;
use simsiam::train;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct EmbedArgs {
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
}

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// The run folder.
    run: PathBuf,
    /// Output file: `.safetensors`, or `.pth` (and `.pt`, `.pth.tar`: `torch.save`'s format,
    /// for `torch.load`).
    #[arg(long)]
    out: PathBuf,
    /// Write the checkpoint layout of facebookresearch/simsiam (`{"epoch", "arch",
    /// "state_dict"}`, the backbone under `module.encoder.`), which its `main_lincls.py
    /// --pretrained` reads; needs a `.pth` / `.pth.tar` output.
    #[arg(long)]
    official: bool,
    /// Which checkpoint: `latest` or a `step-*` folder of the run's checkpoints/.
    #[arg(long, default_value = "latest")]
    checkpoint: String,
}

/// `simsiam embed`: backbone and projector embeddings of a dataset as `.npy`.
pub(crate) fn embed(a: EmbedArgs) -> Result<()> {
    let EmbedArgs { run, data, out, device, split, checkpoint } = a;
    let (cfg, device, net) = train::load_run_at(&run, &checkpoint, device)?;
    let store = simsiam::data::open(&data, split.into(), &cfg.data)?;
    let aug = simsiam::augment::Augmenter::new(&cfg.augment, cfg.data.image_size, device);
    let (sy, sz) =
        simsiam::export::write_embeddings(&out, &net.model, &store.place(device, cfg.data.store)?, &aug, 512)?;
    println!(
        "wrote {} embeddings to {}: backbone.npy {sy:?}, projector.npy {sz:?}, labels.npy, names.txt, classes.txt",
        store.len(),
        out.display(),
    );
    Ok(())
}

/// `simsiam export`: the backbone with torchvision's names, and how to build the model it fits.
pub(crate) fn export(a: ExportArgs) -> Result<()> {
    let ExportArgs { run, out, checkpoint, official } = a;
    let (cfg, _, net) = train::load_run_at(&run, &checkpoint, Some("cpu".into()))?;
    let epoch = simsiam::checkpoint::load_position(&simsiam::checkpoint::named(&run, &checkpoint)?)?.epoch;
    let arch = serde_json::to_value(cfg.model.arch)?.as_str().unwrap_or_default().to_string();
    let format = ExportFormat::for_path(&out, official.then_some((arch, epoch)))?;
    let n = simsiam::export::export_backbone(&net.vs, &out, &format)?;
    let what = match format {
        ExportFormat::Safetensors => "safetensors",
        ExportFormat::TorchSave => "torch.save's format",
        ExportFormat::Official { .. } => "facebookresearch/simsiam's checkpoint layout, under module.encoder.",
    };
    println!("wrote {} ({n} tensors, torchvision resnet names; {what})", out.display());
    if cfg.model.width != 64 {
        eprintln!("note: model.width = {} (torchvision's resnets use 64): build the matching torchvision model with width_per_group/inplanes changed", cfg.model.width);
    }
    if cfg.model.cifar_stem {
        eprintln!("note: CIFAR stem: in torchvision set conv1 = Conv2d(3, {}, 3, 1, 1, bias=False), maxpool = Identity(), fc = Identity()", cfg.model.width);
    }
    Ok(())
}
