//! `simsiam report`: one run's HTML report, or several runs side by side.
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct ReportArgs {
    /// The run folder; to compare, several, each `PATH` or `LABEL=PATH` (a run folder, or a
    /// .jsonl file of metrics lines such as the PyTorch reference script's), or
    /// `LABEL=PATH,PATH,...`: repeats of one setting (seeds), also summarised as mean ± sd.
    #[arg(required = true)]
    runs: Vec<String>,
    /// Where the comparison goes (report.md, report.html, plots/); needed with several runs.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) fn run(a: ReportArgs) -> Result<()> {
    let ReportArgs { runs, out } = a;
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
