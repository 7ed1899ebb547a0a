//! `simsiam bench`: throughput of the step, the augmentation and the pipeline, one JSON line each.
use super::ConfigArgs;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// What to time (several allowed): `train` is `end-to-end` plus the per-step monitors and
    /// their flush, as `simsiam train` runs a step.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "step,augment,end-to-end,train")]
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
}

pub(crate) fn run(a: BenchArgs) -> Result<()> {
    let BenchArgs { cfg, mode, warmup, steps, profile, profile_steps } = a;
    let cfg = cfg.resolve()?;
    let profile = profile.map(|dir| simsiam::bench::ProfileOpts { dir, steps: profile_steps as usize });
    for m in mode {
        let r = simsiam::bench::measure(&cfg, m, warmup, steps, profile.as_ref())?;
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}
