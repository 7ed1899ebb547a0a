//! `simsiam`: SimSiam (Chen & He, CVPR 2021) and the analyses of why it does not collapse, on
//! tch / libtorch. The modules follow the pipeline: data -> augment -> model -> objective ->
//! train, with eval and monitors alongside.
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
pub mod train;

pub use config::Config;
pub use error::{Error, Result};
