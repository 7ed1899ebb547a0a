//! The next step's views, made while this step trains (`run.prefetch`).
//!
//! On a GPU the augmentation (a few hundred small kernels: 3-4 ms for the two views of 512
//! images on an H100) and the step are queued on one stream, so the GPU runs them one after
//! the other. With `run.prefetch` the views of step s + 1 are queued on a second stream before
//! step s is, so the two can run at once. Three rules keep that exact:
//! - the second stream starts after the work queued so far on the current one (which made the
//!   epoch's order it reads): a device-side wait on an event, the host does not block;
//! - the step that takes the views waits for them, again by an event;
//! - the views' memory is marked as read by the step's stream (`record_stream`), so the caching
//!   allocator does not hand it out again while that stream may still read it.
//!
//! The train loop seeds every step's augmentation from (seed, step), so the views do not depend
//! on when they are made. On the CPU (no streams) they are made one step early, in the order a
//! GPU makes them, which lets the CPU tests check that ordering.
use crate::device::{CudaHelper, Owned, PoolStream, RawEvent};
use crate::error::{Error, Result};
use tch::{Device, Tensor};

fn prefetch_error(msg: impl std::fmt::Display) -> Error {
    Error::Prefetch(msg.to_string())
}

/// A second stream of one device, for the views made ahead.
struct Side {
    stream: Owned<PoolStream>,
    device: usize,
}

impl Side {
    fn new(device: usize) -> std::result::Result<Side, String> {
        let helper = crate::device::cuda_helper()?;
        Ok(Side { stream: Owned::new(helper.stream_new(device)?, helper, CudaHelper::stream_free), device })
    }

    /// Runs `f` with this stream current, after the work queued so far on the current one;
    /// returns `f`'s result and an event that marks its work done.
    fn run<T>(&self, f: impl FnOnce() -> T) -> Result<(T, Owned<RawEvent>)> {
        let h = self.stream.helper;
        // Popped when dropped, also on a panic in `f`: the previous stream is current again.
        let current = Owned::new(h.stream_push(self.stream.get()).map_err(prefetch_error)?, h, CudaHelper::stream_pop);
        let out = f();
        let done = h.event_record(self.device).map_err(prefetch_error)?;
        drop(current);
        Ok((out, Owned::new(done, h, CudaHelper::event_free)))
    }
}

/// Views made ahead for one step.
struct Ahead {
    key: usize,
    views: Vec<Tensor>,
    /// Their work's end on the second stream (GPU only).
    done: Option<Owned<RawEvent>>,
}

/// Makes each step's views one step ahead (`run.prefetch`), or, when off, when they are taken.
pub struct Prefetcher {
    on: bool,
    /// Declared before `side`, so its event is freed before the stream.
    ahead: Option<Ahead>,
    side: Option<Side>,
}

impl Prefetcher {
    /// `wanted`: `run.prefetch`. On a GPU without a second stream the views are still made one
    /// step ahead, on the current stream, with a warning.
    pub fn new(wanted: bool, device: Device) -> Prefetcher {
        let side = match (wanted, device) {
            (true, Device::Cuda(i)) => {
                match Side::new(i) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        eprintln!("warning: run.prefetch: no second CUDA stream ({e}); the views are made on the step's stream");
                        None
                    }
                }
            }
            _ => None,
        };
        Prefetcher { on: wanted, ahead: None, side }
    }

    /// Whether views are made ahead.
    pub fn on(&self) -> bool {
        self.on
    }

    /// The views of step `key`: those made ahead for it (the current stream then waits for
    /// them), or else `make()`'s, made now. Views made ahead for another step are dropped.
    pub fn take(&mut self, key: usize, make: impl FnOnce() -> Vec<Tensor>) -> Result<Vec<Tensor>> {
        match self.ahead.take() {
            Some(a) if a.key == key => {
                if let (Some(side), Some(done)) = (&self.side, &a.done) {
                    let h = done.helper;
                    h.event_wait(done.get(), side.device).map_err(prefetch_error)?;
                    for v in &a.views {
                        h.record_stream(v).map_err(prefetch_error)?;
                    }
                }
                Ok(a.views)
            }
            _ => Ok(make()),
        }
    }

    /// With `run.prefetch`, makes step `key`'s views now (`make`): on a GPU queued on the
    /// second stream, after the work queued so far. Without it, nothing.
    pub fn ahead(&mut self, key: usize, make: impl FnOnce() -> Vec<Tensor>) -> Result<()> {
        if !self.on {
            return Ok(());
        }
        let (views, done) = match &self.side {
            Some(side) => {
                let (views, done) = side.run(make)?;
                (views, Some(done))
            }
            None => (make(), None),
        };
        self.ahead = Some(Ahead { key, views, done });
        Ok(())
    }
}
