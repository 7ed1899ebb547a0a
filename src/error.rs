//! Library errors: every variant names the file, field or flag at fault and what was expected.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file or folder that cannot be used as it is.
    #[error("{path}: {msg}")]
    Data { path: PathBuf, msg: String },
    /// A configuration field, preset or flag with a bad value.
    #[error("config: {0}")]
    Config(String),
    /// A file or folder that cannot be read or written. The OS error is part of the message (and
    /// not a `source`), so that `{:#}` does not print it twice.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("tensor engine: {0}")]
    Torch(#[from] tch::TchError),
    /// The loss became NaN or infinite; the run stopped and the last good checkpoint is kept.
    #[error(
        "non-finite loss at epoch {epoch}, step {step}: {value}; the last good checkpoint is kept in {checkpoint}"
    )]
    NonFinite { epoch: usize, step: usize, value: f64, checkpoint: String },
    /// A distributed job failed: a rank could not join, a collective failed or timed out, or a
    /// rank died. Names the rank that reports it (none: the launcher).
    #[error("{}{msg}", rank.map(|r| format!("rank {r}: ")).unwrap_or_default())]
    Distributed { rank: Option<usize>, msg: String },
    /// `run.cuda_graph`: the training step could not be captured or replayed.
    #[error("run.cuda_graph: the training step as a CUDA graph: {0}")]
    CudaGraph(String),
    /// `run.prefetch`: the second stream's views could not be made or handed over.
    #[error("run.prefetch: {0}")]
    Prefetch(String),
    /// PyTorch's profiler could not start, stop or write its trace.
    #[error("profiler: {0}")]
    Profiler(String),
    /// The run was interrupted (Ctrl-C) after saving a checkpoint.
    #[error(
        "interrupted at epoch {epoch}, step {step}; checkpoint saved, continue with `simsiam train --resume {dir}`"
    )]
    Interrupted { epoch: usize, step: usize, dir: String },
    /// The stop a run was asked for (`--until-epoch`): not a failure.
    #[error("stopped after epoch {epoch} of {epochs} as asked; checkpoint saved, continue with `simsiam train --resume {dir}`")]
    Paused { epoch: usize, epochs: usize, dir: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data { path: path.into(), msg: msg.into() }
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause }
    }
}
