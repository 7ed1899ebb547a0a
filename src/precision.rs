//! Mixed precision (bf16 autocast: bf16 matmuls and convolutions, fp32 master weights, BN
//! statistics and loss) and the channels-last layout for convolutions. Both are speed options
//! that must not change what is learned; `run.precision` and `run.channels_last` choose them
//! (fast by default on CUDA). tch binds neither; `csrc/precision.cpp` does.
use crate::config::Precision;
use std::ffi::{c_int, c_void};
use tch::{nn, Device, Kind, Tensor};

extern "C" {
    fn ss_autocast_enter(cuda: c_int, bf16: c_int) -> c_int;
    fn ss_autocast_exit(cuda: c_int, was: c_int);
    fn ss_channels_last(t: *mut c_void) -> *mut c_void;
    fn ss_set_channels_last(t: *mut c_void);
    fn ss_is_channels_last(t: *mut c_void) -> c_int;
}

/// The autocast dtype for `precision` on `device`: `None` is fp32. `auto` is bf16 on CUDA
/// (tensor cores) and fp32 on CPU.
pub fn autocast_kind(precision: Precision, device: Device) -> Option<Kind> {
    match precision {
        Precision::Fp32 => None,
        Precision::Bf16 => Some(Kind::BFloat16),
        Precision::Auto => device.is_cuda().then_some(Kind::BFloat16),
    }
}

/// An autocast region, left when dropped.
pub struct Autocast {
    cuda: c_int,
    was: c_int,
}

impl Autocast {
    /// Ops on `device` run in `kind` where autocast's policy allows (bf16 or f16).
    pub fn enter(device: Device, kind: Kind) -> Autocast {
        let cuda = device.is_cuda() as c_int;
        // SAFETY: plain calls into libtorch's thread-local autocast state.
        let was = unsafe { ss_autocast_enter(cuda, (kind == Kind::BFloat16) as c_int) };
        Autocast { cuda, was }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        unsafe { ss_autocast_exit(self.cuda, self.was) }
    }
}

/// `f` under autocast in `kind` (or as is when `None`).
pub fn autocast<T>(kind: Option<Kind>, device: Device, f: impl FnOnce() -> T) -> T {
    let _guard = kind.map(|k| Autocast::enter(device, k));
    f()
}

/// A channels-last copy of a 4-d tensor `[N, C, H, W]` (same shape, NHWC strides).
pub fn channels_last(t: &Tensor) -> Tensor {
    // SAFETY: tch tensors are `at::Tensor*`; the C side returns a new heap tensor we own.
    unsafe { Tensor::from_ptr(ss_channels_last(t.as_ptr() as *mut c_void) as *mut _) }
}

pub fn is_channels_last(t: &Tensor) -> bool {
    unsafe { ss_is_channels_last(t.as_ptr() as *mut c_void) != 0 }
}

/// Re-lays every 4-d variable (the convolution weights) of `vs` out channels-last, in place.
pub fn vars_to_channels_last(vs: &nn::VarStore) {
    for (_, t) in vs.variables() {
        if t.dim() == 4 {
            unsafe { ss_set_channels_last(t.as_ptr() as *mut c_void) }
        }
    }
}
