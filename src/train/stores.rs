//! The training and held-out image stores a run reads, and their reuse across the runs of one
//! process (an experiment's arms).
use crate::config::Config;
use crate::data::{self, ImageStore, Split};
use crate::error::{Error, Result};
use std::sync::atomic::Ordering;

/// Loads the train and (optional) test stores named by the config.
pub fn load_data(cfg: &Config) -> Result<(ImageStore, Option<ImageStore>)> {
    let d = &cfg.data;
    let train_path =
        d.train.as_ref().ok_or_else(|| Error::config("data.train: no training data given (pass --data PATH)"))?;
    data::missing(train_path, "data.train (--data)")?;
    if let Some(p) = &d.test {
        data::missing(p, "data.test (--test-data)")?;
    }
    let train = data::open(train_path, Split::Train, d)?.subset(d.train_limit, cfg.run.seed);
    let test = match &d.test {
        Some(p) => Some(data::open(p, Split::Test, d)?.subset(d.test_limit, cfg.run.seed.wrapping_add(1)).aligned_to(
            &train,
            &format!("data.test ({}) against data.train ({})", p.display(), train_path.display()),
        )?),
        None => None,
    };
    Ok((train, test))
}

/// The last decoded train and test stores of a process that trains several runs (an
/// experiment's arms): a run whose `[data]` fields and seed (which picks the `*_limit`
/// subsets) equal the last load's reuses its stores instead of decoding the images again.
#[derive(Default)]
pub struct SharedStores {
    last: std::sync::Mutex<Option<LastLoad>>,
    decodes: std::sync::atomic::AtomicUsize,
}

struct LastLoad {
    data: crate::config::DataConfig,
    seed: u64,
    train: ImageStore,
    test: Option<ImageStore>,
}

impl SharedStores {
    /// `load_data(cfg)`, or the stores of the last call if it had the same data fields and seed.
    pub fn load(&self, cfg: &Config) -> Result<(ImageStore, Option<ImageStore>)> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = last.as_ref().filter(|c| c.data == cfg.data && c.seed == cfg.run.seed) {
            return Ok((c.train.shallow_clone(), c.test.as_ref().map(ImageStore::shallow_clone)));
        }
        let (train, test) = load_data(cfg)?;
        self.decodes.fetch_add(1, Ordering::SeqCst);
        *last = Some(LastLoad {
            data: cfg.data.clone(),
            seed: cfg.run.seed,
            train: train.shallow_clone(),
            test: test.as_ref().map(ImageStore::shallow_clone),
        });
        Ok((train, test))
    }

    /// How many times the data was decoded (not reused).
    pub fn decodes(&self) -> usize {
        self.decodes.load(Ordering::SeqCst)
    }
}
