//! `simsiam`: SimSiam (Chen & He, CVPR 2021) and the analyses of why it does not collapse, on
//! tch / libtorch. The modules follow the pipeline:
//!
//! - **the method**: [`data`] (images into a uint8 store) -> [`augment`] (two views on the
//!   device) -> [`model`] (backbone, projector, predictor) -> [`objective`] (every loss and
//!   target variant, `stop_grad`) -> [`train`] (the loop, with [`optim`], [`checkpoint`]);
//! - **watching it**: [`monitor`] (`collapse_std` and the collapse verdict), [`analysis`]
//!   (Zhang et al.'s `m_o`/`m_r`, spectra), [`report`] (plots, HTML), [`compare`] (runs side by
//!   side), [`progress`];
//! - **judging it**: [`eval`] (kNN, linear probe), [`experiment`] (the seeds' claims, one
//!   command each), [`instances`] and [`analyse`] (the blog's estimators, B1-B5), [`hypotheses`]
//!   (C1-C6 from those measurements);
//! - **running it fast and wide**: [`precision`] (bf16 / fp16 autocast, channels-last),
//!   [`prefetch`] and [`graph`] (overlap, CUDA graphs), [`dist`] (data-parallel), [`device`],
//!   [`bench`](mod@bench) and [`profile`] (where the time goes);
//! - **handing it over**: [`export`] (safetensors in torchvision's layout, `.npy` embeddings),
//!   [`import`] (starting from weights trained elsewhere, PyTorch checkpoints included),
//!   [`torch_save`] (PyTorch's file format, read and written without Python);
//!   [`config`] (typed, the paper's recipe by default) and [`error`] throughout.
/// This build: the crate's version, the commit it was built from and the libtorch it was built
/// against (`--version`, and `build` in each run's `summary.json`: a run repeats step for step
/// with the same build).
pub const BUILD: &str = concat!(
    "simsiam ",
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SIMSIAM_COMMIT"),
    "), libtorch ",
    env!("SIMSIAM_LIBTORCH_VERSION")
);

pub mod analyse;
pub mod analysis;
pub mod augment;
pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod export;
mod ffi;
pub mod graph;
pub mod hypotheses;
pub mod import;
pub mod instances;
pub mod model;
pub mod monitor;
pub mod objective;
pub mod optim;
pub mod precision;
pub mod prefetch;
pub mod profile;
pub mod progress;
pub mod report;
pub mod status;
pub mod torch_save;
pub mod train;

pub use config::Config;
pub use error::{Error, Result};
