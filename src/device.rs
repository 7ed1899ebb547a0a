//! Choosing the compute device, and the `libtorch_cuda.so` trap.
//!
//! The linker drops `libtorch_cuda.so` (linked "as needed", nothing references it), so CUDA
//! looks absent even on a GPU machine. Loading it with `RTLD_GLOBAL` before the first tensor
//! op registers the CUDA backend; on a CPU-only machine the file is absent and nothing happens.
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void};
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

/// What a `run.device` string asks for, before asking the machine what it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Auto,
    Cuda(usize),
}

impl DeviceSpec {
    /// Parses `cpu`, `cuda`, `cuda:N` or `auto`; the syntax only, so that a config written for
    /// a GPU machine can be checked (`--print-config`) on any machine.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = || Error::config(format!("run.device: expected cpu, cuda, cuda:N or auto, got {spec:?}"));
        match spec {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" => Ok(Self::Cuda(0)),
            s => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Self::Cuda).ok_or_else(bad),
        }
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available, else CPU) into a device this
/// machine has.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = DeviceSpec::parse(spec)?;
    load_cuda_backend();
    let cuda_count = tch::Cuda::device_count() as usize;
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => Ok(if cuda_count > 0 { Device::Cuda(0) } else { Device::Cpu }),
        DeviceSpec::Cuda(n) => cuda_device(n, cuda_count),
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
        Device::Cuda(i) => match cuda_helper().ok().and_then(|h| h.capability(i)) {
            Some((major, minor)) => format!("cuda:{i} (compute capability {major}.{minor})"),
            None => format!("cuda:{i}"),
        },
        other => format!("{other:?}"),
    }
}

/// The CUDA helper library (`csrc/cuda.cpp`): built against libtorch_cuda.so, which this
/// binary does not link (so that it runs on CPU-only machines), embedded in the binary and
/// loaded from a temporary file on first use.
pub struct CudaHelper {
    pub nccl_new: crate::dist::NcclFactory,
    peak_allocated: unsafe extern "C" fn(device: c_int) -> i64,
    reset_peak: unsafe extern "C" fn(device: c_int),
    total_memory: unsafe extern "C" fn(device: c_int) -> i64,
    capability: unsafe extern "C" fn(device: c_int) -> c_int,
    graph_begin: unsafe extern "C" fn(err: *mut *mut c_char) -> *mut c_void,
    graph_end: unsafe extern "C" fn(graph: *mut c_void, err: *mut *mut c_char),
    graph_replay: unsafe extern "C" fn(graph: *mut c_void, err: *mut *mut c_char),
    graph_free: unsafe extern "C" fn(graph: *mut c_void),
    stream_new: unsafe extern "C" fn(device: c_int, err: *mut *mut c_char) -> *mut c_void,
    stream_free: unsafe extern "C" fn(stream: *mut c_void),
    stream_push: unsafe extern "C" fn(stream: *mut c_void, err: *mut *mut c_char) -> *mut c_void,
    stream_pop: unsafe extern "C" fn(guard: *mut c_void),
    event_record: unsafe extern "C" fn(device: c_int, err: *mut *mut c_char) -> *mut c_void,
    event_wait: unsafe extern "C" fn(event: *mut c_void, device: c_int, err: *mut *mut c_char),
    event_free: unsafe extern "C" fn(event: *mut c_void),
    record_stream: unsafe extern "C" fn(tensor: *mut c_void, err: *mut *mut c_char),
}

impl CudaHelper {
    /// Peak bytes held by libtorch's CUDA caching allocator on `device` since the last reset.
    pub fn peak_allocated(&self, device: usize) -> i64 {
        unsafe { (self.peak_allocated)(device as c_int) }
    }

    pub fn reset_peak(&self, device: usize) {
        unsafe { (self.reset_peak)(device as c_int) }
    }

    /// The GPU's total memory in bytes, if CUDA can say.
    pub fn total_memory(&self, device: usize) -> Option<u64> {
        let bytes = unsafe { (self.total_memory)(device as c_int) };
        (bytes > 0).then_some(bytes as u64)
    }

    /// The GPU's compute capability `(major, minor)` ((8, 0) for an A100, (9, 0) for an H100),
    /// if CUDA can say.
    pub fn capability(&self, device: usize) -> Option<(u32, u32)> {
        let c = unsafe { (self.capability)(device as c_int) };
        (c >= 0).then_some((c as u32 / 10, c as u32 % 10))
    }

    /// Starts capturing the current (non-default) stream's work into a new CUDA graph.
    pub(crate) fn graph_begin(&self) -> std::result::Result<RawGraph, String> {
        crate::ffi::call(|err| unsafe { (self.graph_begin)(err) }).map(RawGraph)
    }

    /// Ends the capture begun by [`CudaHelper::graph_begin`] and instantiates the graph.
    pub(crate) fn graph_end(&self, graph: &RawGraph) -> std::result::Result<(), String> {
        crate::ffi::call(|err| unsafe { (self.graph_end)(graph.0, err) })
    }

    /// Replays a captured graph on the current stream.
    pub(crate) fn graph_replay(&self, graph: &RawGraph) -> std::result::Result<(), String> {
        crate::ffi::call(|err| unsafe { (self.graph_replay)(graph.0, err) })
    }

    pub(crate) fn graph_free(&self, graph: RawGraph) {
        unsafe { (self.graph_free)(graph.0) }
    }

    /// A stream of `device`'s pool, not made current (for work that overlaps the current one's).
    pub(crate) fn stream_new(&self, device: usize) -> std::result::Result<PoolStream, String> {
        crate::ffi::call(|err| unsafe { (self.stream_new)(device as c_int, err) }).map(PoolStream)
    }

    pub(crate) fn stream_free(&self, stream: PoolStream) {
        unsafe { (self.stream_free)(stream.0) }
    }

    /// Makes `stream` current until [`CudaHelper::stream_pop`], ordered after the work queued
    /// so far on the stream that was current (a device-side wait: the host does not block).
    pub(crate) fn stream_push(&self, stream: &PoolStream) -> std::result::Result<StreamGuard, String> {
        crate::ffi::call(|err| unsafe { (self.stream_push)(stream.0, err) }).map(StreamGuard)
    }

    pub(crate) fn stream_pop(&self, guard: StreamGuard) {
        unsafe { (self.stream_pop)(guard.0) }
    }

    /// An event marking the work queued so far on `device`'s current stream.
    pub(crate) fn event_record(&self, device: usize) -> std::result::Result<RawEvent, String> {
        crate::ffi::call(|err| unsafe { (self.event_record)(device as c_int, err) }).map(RawEvent)
    }

    /// Orders `device`'s current stream after `event` (a device-side wait).
    pub(crate) fn event_wait(&self, event: &RawEvent, device: usize) -> std::result::Result<(), String> {
        crate::ffi::call(|err| unsafe { (self.event_wait)(event.0, device as c_int, err) })
    }

    pub(crate) fn event_free(&self, event: RawEvent) {
        unsafe { (self.event_free)(event.0) }
    }

    /// Marks `t`'s memory as read by the current stream too, so the caching allocator does not
    /// reuse it before that stream's queued work is done (`Tensor.record_stream`).
    pub(crate) fn record_stream(&self, t: &tch::Tensor) -> std::result::Result<(), String> {
        // SAFETY: tch tensors are `at::Tensor*`; the C side only reads it.
        crate::ffi::call(|err| unsafe { (self.record_stream)(t.as_ptr() as *mut c_void, err) })
    }
}

/// A handle the CUDA helper made, released on drop by the helper call that undoes it
/// (`graph_free`, `stream_free`, `stream_pop`, `event_free`).
pub(crate) struct Owned<R> {
    raw: Option<R>,
    release: fn(&CudaHelper, R),
    pub(crate) helper: &'static CudaHelper,
}

impl<R> Owned<R> {
    pub(crate) fn new(raw: R, helper: &'static CudaHelper, release: fn(&CudaHelper, R)) -> Owned<R> {
        Owned { raw: Some(raw), release, helper }
    }

    pub(crate) fn get(&self) -> &R {
        self.raw.as_ref().expect("released only on drop")
    }
}

impl<R> Drop for Owned<R> {
    fn drop(&mut self) {
        if let Some(r) = self.raw.take() {
            (self.release)(self.helper, r);
        }
    }
}

/// A CUDA graph the helper made (`csrc/cuda.cpp`), freed with [`CudaHelper::graph_free`].
pub(crate) struct RawGraph(*mut c_void);

/// A pool stream made by [`CudaHelper::stream_new`], freed with [`CudaHelper::stream_free`].
pub(crate) struct PoolStream(*mut c_void);

/// A pool stream made current by [`CudaHelper::stream_push`], left with [`CudaHelper::stream_pop`].
pub(crate) struct StreamGuard(*mut c_void);

/// An event made by [`CudaHelper::event_record`], freed with [`CudaHelper::event_free`].
pub(crate) struct RawEvent(*mut c_void);

/// Loads the CUDA helper once (CUDA must be available); the error says why it cannot be.
pub fn cuda_helper() -> std::result::Result<&'static CudaHelper, String> {
    static HELPER: std::sync::OnceLock<std::result::Result<CudaHelper, String>> = std::sync::OnceLock::new();
    HELPER.get_or_init(load_helper).as_ref().map_err(|e| e.clone())
}

#[cfg(not(simsiam_cuda_helper))]
fn load_helper() -> std::result::Result<CudaHelper, String> {
    Err("this binary was built without its CUDA helper (NCCL's headers were missing at build time; \
         scripts/env.sh installs them)"
        .into())
}

#[cfg(simsiam_cuda_helper)]
fn load_helper() -> std::result::Result<CudaHelper, String> {
    use std::ffi::{CStr, CString};
    use std::os::unix::ffi::OsStrExt;
    const HELPER: &[u8] = include_bytes!(env!("SIMSIAM_CUDA_SO"));
    load_cuda_backend();
    if !tch::Cuda::is_available() {
        return Err("no CUDA device is visible".into());
    }
    let path = std::env::temp_dir().join(format!("simsiam-cuda-{}.so", std::process::id()));
    std::fs::write(&path, HELPER).map_err(|e| format!("{}: {e}", path.display()))?;
    let name = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: dlopen/dlsym with NUL-terminated names; the library stays loaded for the process
    // lifetime, and each symbol has the C signature of the field it is stored in.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        let _ = std::fs::remove_file(&path);
        if handle.is_null() {
            return Err(format!("cannot load the CUDA helper: {}", CStr::from_ptr(libc::dlerror()).to_string_lossy()));
        }
        let sym = |s: &CStr| {
            let p = libc::dlsym(handle, s.as_ptr());
            if p.is_null() {
                Err(format!("the CUDA helper lacks {}", s.to_string_lossy()))
            } else {
                Ok(p)
            }
        };
        // Each symbol has the C signature of the field it is stored in (`csrc/cuda.cpp`).
        unsafe fn cast<F: Copy>(p: *mut libc::c_void) -> F {
            assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut libc::c_void>());
            // SAFETY: the caller names the symbol's function-pointer type.
            unsafe { std::mem::transmute_copy(&p) }
        }
        Ok(CudaHelper {
            nccl_new: cast(sym(c"ss_c10d_nccl_new")?),
            peak_allocated: cast(sym(c"ss_cuda_peak_allocated")?),
            reset_peak: cast(sym(c"ss_cuda_reset_peak")?),
            total_memory: cast(sym(c"ss_cuda_total_memory")?),
            capability: cast(sym(c"ss_cuda_capability")?),
            graph_begin: cast(sym(c"ss_cuda_graph_begin")?),
            graph_end: cast(sym(c"ss_cuda_graph_end")?),
            graph_replay: cast(sym(c"ss_cuda_graph_replay")?),
            graph_free: cast(sym(c"ss_cuda_graph_free")?),
            stream_new: cast(sym(c"ss_cuda_stream_new")?),
            stream_free: cast(sym(c"ss_cuda_stream_free")?),
            stream_push: cast(sym(c"ss_cuda_stream_push")?),
            stream_pop: cast(sym(c"ss_cuda_stream_pop")?),
            event_record: cast(sym(c"ss_cuda_event_record")?),
            event_wait: cast(sym(c"ss_cuda_event_wait")?),
            event_free: cast(sym(c"ss_cuda_event_free")?),
            record_stream: cast(sym(c"ss_cuda_record_stream")?),
        })
    }
}
