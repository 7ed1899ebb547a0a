//! Choosing the compute device, and the `libtorch_cuda.so` trap.
//!
//! The linker drops `libtorch_cuda.so` (linked "as needed", nothing references it), so CUDA
//! looks absent even on a GPU machine. Loading it with `RTLD_GLOBAL` before the first tensor
//! op registers the CUDA backend; on a CPU-only machine the file is absent and nothing happens.
use crate::error::{Error, Result};
use std::sync::Once;
use tch::Device;

static LOAD_CUDA: Once = Once::new();

/// Loads libtorch's CUDA backend if the library can be found; idempotent.
pub fn load_cuda_backend() {
    LOAD_CUDA.call_once(|| {
        for name in [c"libtorch_cuda.so"] {
            // SAFETY: dlopen with a valid NUL-terminated name; the handle is kept for the
            // process lifetime on purpose (the backend registers itself on load).
            unsafe {
                libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
            }
        }
    });
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available, else CPU).
pub fn parse_device(spec: &str) -> Result<Device> {
    load_cuda_backend();
    let cuda_count = tch::Cuda::device_count() as usize;
    let bad = || Error::config(format!("run.device: expected cpu, cuda, cuda:N or auto, got {spec:?}"));
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if cuda_count > 0 { Device::Cuda(0) } else { Device::Cpu }),
        "cuda" => cuda_device(0, cuda_count),
        s if s.starts_with("cuda:") => {
            let n: usize = s[5..].parse().map_err(|_| bad())?;
            cuda_device(n, cuda_count)
        }
        _ => Err(bad()),
    }
}

fn cuda_device(n: usize, count: usize) -> Result<Device> {
    if n < count {
        Ok(Device::Cuda(n))
    } else if count == 0 {
        Err(Error::config(
            "run.device: CUDA was asked for but no CUDA device is visible (is libtorch_cuda.so on LD_LIBRARY_PATH?)",
        ))
    } else {
        Err(Error::config(format!("run.device: cuda:{n} asked for but only {count} CUDA device(s) are visible")))
    }
}

/// Human-readable device name for logs and benchmark records.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
