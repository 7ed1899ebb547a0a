//! Progress for long work (decoding a dataset, training, kNN features, embedding, a linear
//! probe, the analyses' instance centres). Bars draw on stderr and only when it is a terminal
//! (indicatif hides them otherwise), so logs and tests stay clean; where a bar cannot draw (a
//! job's log file), [`Progress`] prints a plain line every few minutes instead, so a long job's
//! log still says how far it is.
use indicatif::{HumanDuration, ProgressBar, ProgressStyle};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bar of `len` `unit`s with elapsed time, an estimate of the time left, and a message.
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let template = format!("{{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}");
    pb.set_style(ProgressStyle::with_template(&template).expect("a valid template"));
    pb
}

/// Between two log lines of a [`Progress`] that cannot draw its bar.
pub const LOG_EVERY: Duration = Duration::from_secs(300);

/// A [`bar`] that, where it cannot draw, logs a line at most every `every` (shareable between
/// threads: decoding advances it from rayon's).
pub struct Progress {
    pb: ProgressBar,
    unit: String,
    every: Duration,
    start: Instant,
    last: Mutex<Instant>,
}

impl Progress {
    /// [`bar`] of `len` `unit`s, a log line every [`LOG_EVERY`] where it cannot draw.
    pub fn new(len: u64, unit: &str) -> Progress {
        Progress::with(bar(len, unit), unit, LOG_EVERY)
    }

    /// No bar, only a line every [`LOG_EVERY`]: for work that may run while another bar is
    /// drawn (the kNN monitor's features, inside training's bar).
    pub fn log_only(len: u64, unit: &str) -> Progress {
        let pb = ProgressBar::hidden();
        pb.set_length(len);
        Progress::with(pb, unit, LOG_EVERY)
    }

    /// `pb` (its length set), logging every `every` when hidden.
    pub fn with(pb: ProgressBar, unit: &str, every: Duration) -> Progress {
        let now = Instant::now();
        Progress { pb, unit: unit.to_string(), every, start: now, last: Mutex::new(now) }
    }

    /// Advances by `n`, and prints the line [`Progress::due_line`] gives, if any.
    pub fn inc(&self, n: u64) {
        self.pb.inc(n);
        if let Some(line) = self.due_line() {
            eprintln!("{line}");
        }
    }

    /// `unit: pos/len (p%), T elapsed, about T' left` when the bar is hidden and `every` has
    /// passed since the last line (the clock then restarts); else `None`.
    pub fn due_line(&self) -> Option<String> {
        if !self.pb.is_hidden() {
            return None;
        }
        let mut last = self.last.lock().expect("progress clock");
        if last.elapsed() < self.every {
            return None;
        }
        *last = Instant::now();
        let (pos, len) = (self.pb.position(), self.pb.length().unwrap_or(0).max(1));
        let elapsed = self.start.elapsed();
        let left = elapsed.mul_f64(len.saturating_sub(pos) as f64 / pos.max(1) as f64);
        Some(format!(
            "{}: {pos}/{len} ({:.0}%), {} elapsed, about {} left",
            self.unit,
            100.0 * pos as f64 / len as f64,
            HumanDuration(elapsed),
            HumanDuration(left)
        ))
    }

    pub fn finish_and_clear(&self) {
        self.pb.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hidden, it logs where it stands once `every` has passed, then waits again.
    #[test]
    fn a_hidden_bar_logs_a_line_when_due() {
        let p = Progress::with(ProgressBar::hidden(), "probe epochs", Duration::ZERO);
        p.pb.set_length(4);
        p.pb.inc(1);
        let line = p.due_line().unwrap();
        assert!(line.starts_with("probe epochs: 1/4 (25%), ") && line.contains(" elapsed, about "), "{line}");
        let p = Progress::with(ProgressBar::hidden(), "images decoded", Duration::from_secs(3600));
        p.pb.set_length(10);
        p.inc(3);
        assert_eq!(p.due_line(), None, "not before `every`");
        // Log-only: never drawn, so it logs (when due) even on a terminal.
        let p = Progress::log_only(7, "kNN features");
        assert!(p.pb.is_hidden() && p.pb.length() == Some(7) && p.every == LOG_EVERY);
    }
}
