//! Mixed precision (bf16 or fp16 autocast: half-precision matmuls and convolutions, fp32 master
//! weights, BN statistics and loss; for fp16 also dynamic loss scaling, [`LossScaler`]) and the
//! channels-last layout for convolutions. Both are speed options that must not change what is
//! learned; `run.precision` and `run.channels_last` choose them (fast by default on CUDA). tch
//! binds neither; `csrc/precision.cpp` and `csrc/optim.cpp` do.
use crate::config::Precision;
use std::ffi::{c_char, c_int, c_void};
use tch::{nn, Device, Kind, Tensor};

extern "C" {
    fn ss_autocast_enter(cuda: c_int, bf16: c_int) -> c_int;
    fn ss_autocast_exit(cuda: c_int, was: c_int);
    fn ss_channels_last(t: *mut c_void) -> *mut c_void;
    fn ss_set_channels_last(t: *mut c_void);
    fn ss_is_channels_last(t: *mut c_void) -> c_int;
    fn ss_set_cudnn_tf32(on: c_int);
    fn ss_cudnn_tf32() -> c_int;
    fn ss_amp_unscale(
        grads: *const *mut c_void,
        n: c_int,
        found_inf: *mut c_void,
        inv_scale: *mut c_void,
        err: *mut *mut c_char,
    );
}

/// The autocast dtype for `precision` on `device`: `None` is fp32. `auto` is
/// [`auto_for_capability`] of a CUDA device and fp32 on the CPU.
pub fn autocast_kind(precision: Precision, device: Device) -> Option<Kind> {
    match precision {
        Precision::Fp32 => None,
        Precision::Bf16 => Some(Kind::BFloat16),
        Precision::Fp16 => Some(Kind::Half),
        Precision::Auto => match device {
            Device::Cuda(i) => auto_for_capability(crate::device::cuda_helper().ok().and_then(|h| h.capability(i))),
            _ => None,
        },
    }
}

/// `run.precision = "auto"` on a GPU of compute capability `(major, minor)`: bf16 where tensor
/// cores run it (Ampere, 8.0, and later), fp16 on Volta and Turing (7.x: their tensor cores
/// take fp16, not bf16), fp32 before them (no tensor cores). A capability CUDA cannot report
/// keeps bf16, the choice for the GPUs this tool is tuned on.
pub fn auto_for_capability(capability: Option<(u32, u32)>) -> Option<Kind> {
    match capability {
        Some((major, _)) if major >= 8 => Some(Kind::BFloat16),
        Some((7, _)) => Some(Kind::Half),
        Some(_) => None,
        None => Some(Kind::BFloat16),
    }
}

/// `fp32`, `bf16` or `fp16`: the value of `run.precision` that means `kind`.
pub fn name(kind: Option<Kind>) -> &'static str {
    match kind {
        None => "fp32",
        Some(Kind::Half) => "fp16",
        Some(_) => "bf16",
    }
}

/// How a run's forward pass computes, for its log: `fp32`, `bf16 autocast` or `fp16 autocast
/// with loss scaling`.
pub fn describe(kind: Option<Kind>) -> &'static str {
    match kind {
        None => "fp32",
        Some(Kind::Half) => "fp16 autocast with loss scaling",
        Some(_) => "bf16 autocast",
    }
}

/// Dynamic loss scaling for fp16 autocast, as PyTorch's `torch.amp.GradScaler` with its
/// defaults. fp16 keeps about 3 decimal digits over 6e-8 .. 65504, so many of a network's
/// gradients would flush to zero: the loss is multiplied by `scale` (2^16 at first) before the
/// backward pass and the gradients divided by it before the update ([`crate::optim::Sgd::step`]
/// does both through this). A step whose gradients hold an inf or a NaN is skipped and the
/// scale halved; after 2,000 steps in a row without one it doubles. Everything stays on the
/// device (no host sync, so a captured CUDA graph can replay it); the state is saved with the
/// optimiser's, so a resumed run goes on with the same scale. bf16 has fp32's range and needs
/// none of this.
#[derive(Debug)]
pub struct LossScaler {
    /// `[1]` fp32: the factor the loss is multiplied by.
    pub scale: Tensor,
    /// `[1]` int32: steps in a row without an overflow.
    pub growth_tracker: Tensor,
    /// `[1]` fp32: 1 if the last step's gradients overflowed, else 0.
    found_inf: Tensor,
    /// `[1]` fp32: the steps skipped so far (exact to 2^24).
    skipped: Tensor,
}

impl LossScaler {
    pub const INIT_SCALE: f64 = 65536.0;
    pub const GROWTH_FACTOR: f64 = 2.0;
    pub const BACKOFF_FACTOR: f64 = 0.5;
    pub const GROWTH_INTERVAL: i64 = 2000;

    /// The scaler a forward pass under autocast in `kind` needs: one for fp16, none otherwise.
    pub fn for_autocast(kind: Option<Kind>, device: Device) -> Option<LossScaler> {
        (kind == Some(Kind::Half)).then(|| LossScaler::new(device))
    }

    pub fn new(device: Device) -> LossScaler {
        LossScaler {
            scale: Tensor::full([1], Self::INIT_SCALE, (Kind::Float, device)),
            growth_tracker: Tensor::zeros([1], (Kind::Int, device)),
            found_inf: Tensor::zeros([1], (Kind::Float, device)),
            skipped: Tensor::zeros([1], (Kind::Float, device)),
        }
    }

    /// The loss to differentiate: `loss * scale`.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * self.scale.view([])
    }

    /// Divides `grads` by the scale in place and records whether any holds an inf or a NaN
    /// (`GradScaler.unscale_`).
    pub fn unscale(&self, grads: &[Tensor]) -> std::result::Result<(), String> {
        let _ = self.found_inf.shallow_clone().zero_();
        if grads.is_empty() {
            return Ok(());
        }
        // As GradScaler: the reciprocal in double, then fp32.
        let inv = self.scale.to_kind(Kind::Double).reciprocal().to_kind(Kind::Float);
        let g: Vec<*mut c_void> = grads.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        // SAFETY: live `at::Tensor*`s (tch's `as_ptr`) borrowed for the call.
        crate::ffi::call(|err| unsafe {
            ss_amp_unscale(
                g.as_ptr(),
                g.len() as c_int,
                self.found_inf.as_ptr() as *mut c_void,
                inv.as_ptr() as *mut c_void,
                err,
            )
        })
    }

    /// 1 if the gradients [`LossScaler::unscale`] last saw overflowed, else 0: `[1]` fp32.
    pub fn found_inf(&self) -> &Tensor {
        &self.found_inf
    }

    /// After the step: halve the scale if it overflowed, double it after `GROWTH_INTERVAL`
    /// clean steps in a row (`GradScaler.update`).
    pub fn update(&mut self) {
        let _ = self.skipped.g_add_(&self.found_inf);
        let _ = self.scale.internal_amp_update_scale_(
            &self.growth_tracker,
            &self.found_inf,
            Self::GROWTH_FACTOR,
            Self::BACKOFF_FACTOR,
            Self::GROWTH_INTERVAL,
        );
    }

    /// How many steps were skipped for overflowed gradients so far (a host sync).
    pub fn skipped_steps(&self) -> u64 {
        self.skipped.double_value(&[0]) as u64
    }

    /// The state to save, by name.
    pub fn state(&self) -> [(&'static str, &Tensor); 3] {
        [
            ("loss_scaler.scale", &self.scale),
            ("loss_scaler.growth_tracker", &self.growth_tracker),
            ("loss_scaler.skipped_steps", &self.skipped),
        ]
    }

    /// Restores what [`LossScaler::state`] saved (a name missing from `saved` keeps its value).
    pub fn load(&mut self, saved: &std::collections::HashMap<String, Tensor>) {
        for (name, t) in self.state() {
            if let Some(v) = saved.get(name) {
                tch::no_grad(|| t.shallow_clone().copy_(v));
            }
        }
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

/// Lets cuDNN's fp32 convolutions run in TF32 on Ampere and newer GPUs (`run.tf32`; PyTorch's
/// `torch.backends.cudnn.allow_tf32`). Process-wide. Matrix products stay in full fp32, as
/// PyTorch's default `torch.backends.cuda.matmul.allow_tf32 = False` has them.
pub fn set_cudnn_tf32(on: bool) {
    unsafe { ss_set_cudnn_tf32(c_int::from(on)) }
}

/// Whether cuDNN's fp32 convolutions may run in TF32 (libtorch's default: yes).
pub fn cudnn_tf32() -> bool {
    unsafe { ss_cudnn_tf32() != 0 }
}

/// The run's cuDNN settings on CUDA: autotuning (`run.cudnn_benchmark`) and TF32 (`run.tf32`).
pub fn configure_cudnn(run: &crate::config::RunConfig) {
    tch::Cuda::cudnn_set_benchmark(run.cudnn_benchmark);
    set_cudnn_tf32(run.tf32);
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
