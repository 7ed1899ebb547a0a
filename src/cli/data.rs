//! `simsiam data`: what a dataset holds, read as training would read it, and a sample of its views.
use super::{ConfigArgs, SplitArg};
use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub(crate) struct DataArgs {
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
}

pub(crate) fn run(a: DataArgs) -> Result<()> {
    let (cfg, split, views) = (a.cfg.resolve()?, a.split, a.views);
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
            "source_short_side": store.source_sides,
            "store_mib": store.bytes() as f64 / (1u64 << 20) as f64,
            "labelled": store.labelled(),
            "classes": store.num_classes(),
            "per_class": per_class,
            // What a resume compares: the same images, in the same order, wherever they are.
            "digest": format!("{:016x}", store.digest()),
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
