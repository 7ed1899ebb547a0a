//! Progress bars for long work (decoding a dataset, training, a linear probe). They draw on
//! stderr and only when it is a terminal (indicatif hides them otherwise), so logs and tests
//! stay clean.
use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` `unit`s with elapsed time, an estimate of the time left, and a message.
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let template = format!("{{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}");
    pb.set_style(ProgressStyle::with_template(&template).expect("a valid template"));
    pb
}
