//! `simsiam experiment`: a named experiment's arms trained, reported and judged; `--list`, `--summary`.
use super::{command_line, interruptible, Overrides};
use anyhow::Result;
use clap::Args;
use simsiam::train::RunControl;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct ExperimentArgs {
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
    /// An override of one arm alone, after every other (repeatable): e.g. `--arm-set
    /// moco:objective.infonce_queue=512`.
    #[arg(long, value_name = "ARM:KEY=VALUE")]
    arm_set: Vec<String>,
    #[command(flatten)]
    over: Overrides,
}

pub(crate) fn run(a: ExperimentArgs) -> Result<()> {
    if let Some(root) = &a.summary {
        print!("{}", simsiam::experiment::summarise(root)?);
        return Ok(());
    }
    if a.list {
        for (name, text) in simsiam::experiment::SHIPPED {
            let e = simsiam::experiment::Experiment::parse(text, name)?;
            println!("{name:<24} {} arms  {}\n{:<24} ({})", e.arms.len(), e.claim, "", e.source);
        }
        return Ok(());
    }
    let ExperimentArgs { name, out, arms, linear, linear_epochs, seeds, arm_set, over, .. } = a;
    let mut exp = simsiam::experiment::Experiment::find(name.as_deref().expect("clap requires it"))?;
    exp.set_arms(&arm_set)?;
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
