//! Data-parallel training on PyTorch's c10d (the engine `DistributedDataParallel` uses):
//! `TCPStore` rendezvous, `ProcessGroupGloo` on CPUs, `ProcessGroupNCCL` on GPUs, and DDP's
//! `Reducer`, which buckets the gradients and all-reduces them from autograd hooks while the
//! backward pass goes on. tch binds none of it; `csrc/c10d.cpp` is the small C API used here.
//!
//! A job is N ranks, each a process with the torchrun environment (`RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`): `simsiam train --nproc N` starts N local ones
//! ([`launch_local`]), and torchrun or Slurm can start them as they start PyTorch jobs.
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tch::Tensor;

type CTensor = *mut c_void;

extern "C" {
    fn ss_c10d_group_new(
        backend: *const c_char,
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        iface: *const c_char,
        agent_store: c_int,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn ss_c10d_group_free(g: *mut c_void);
    fn ss_c10d_all_reduce_sum(g: *mut c_void, t: CTensor, err: *mut *mut c_char);
    fn ss_c10d_broadcast(g: *mut c_void, t: CTensor, root: c_int, err: *mut *mut c_char);
    fn ss_c10d_all_gather_autograd(g: *mut c_void, x: CTensor, err: *mut *mut c_char) -> CTensor;
    fn ss_c10d_reducer_new(
        g: *mut c_void,
        params: *const CTensor,
        n: c_int,
        first_bucket_bytes: i64,
        bucket_bytes: i64,
        find_unused: c_int,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn ss_c10d_reducer_prepare(r: *mut c_void, output: CTensor, err: *mut *mut c_char);
    fn ss_c10d_reducer_free(r: *mut c_void);
    fn ss_c10d_register_nccl(factory: NcclFactory);
}

/// `csrc/cuda.cpp`'s `ss_c10d_nccl_new`.
pub type NcclFactory = unsafe extern "C" fn(
    store: *mut c_void,
    rank: c_int,
    world: c_int,
    timeout_ms: i64,
    err: *mut *mut c_char,
) -> *mut c_void;

/// Makes the `nccl` backend available (from the CUDA helper library, see
/// [`crate::device::cuda_helper`]). Idempotent.
pub fn load_nccl() -> std::result::Result<(), String> {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let helper = crate::device::cuda_helper()?;
    // SAFETY: registers a function with the C signature `NcclFactory`.
    REGISTERED.call_once(|| unsafe { ss_c10d_register_nccl(helper.nccl_new) });
    Ok(())
}

/// What a failed collective most often means, for its error message.
pub const PEER_FAILURE: &str = "another rank died, hung or is unreachable";

/// Runs a C call that reports failure through `char** err`, turning it into a `Result`.
fn checked<T>(what: &str, rank: usize, f: impl FnOnce(*mut *mut c_char) -> T) -> Result<T> {
    crate::ffi::call(f)
        .map_err(|msg| Error::Distributed { rank: Some(rank), msg: format!("{what} failed: {}", first_lines(&msg)) })
}

/// c10d messages carry C++ stack traces after the first lines; keep the message.
fn first_lines(msg: &str) -> String {
    msg.lines().take_while(|l| !l.starts_with("Exception raised from")).take(4).collect::<Vec<_>>().join(" ")
}

fn tensor_ptr(t: &Tensor) -> CTensor {
    t.as_ptr() as CTensor
}

/// Where this process stands in a job: the torchrun environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Under torchrun (`TORCHELASTIC_USE_AGENT_STORE=True`) its agent serves the store at
    /// `MASTER_ADDR:MASTER_PORT`; otherwise rank 0 does.
    pub agent_store: bool,
}

impl Launch {
    /// Reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; `None` when
    /// `WORLD_SIZE` is unset (not a distributed job). Each bad value is an error naming it.
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`Launch::from_env`], from any variable lookup (tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let Some(world) = get("WORLD_SIZE") else { return Ok(None) };
        let num = |k: &str, v: Option<String>| -> Result<usize> {
            let v = v.ok_or_else(|| Error::config(format!("environment: WORLD_SIZE is set but {k} is not")))?;
            v.trim().parse().map_err(|_| Error::config(format!("environment: {k}={v:?} is not a non-negative integer")))
        };
        let world = num("WORLD_SIZE", Some(world))?;
        let rank = num("RANK", get("RANK"))?;
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        if world == 0 || rank >= world {
            return Err(Error::config(format!("environment: RANK={rank} must be below WORLD_SIZE={world} (>= 1)")));
        }
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = get("MASTER_PORT").unwrap_or_else(|| "29500".into());
        let master_port = port
            .trim()
            .parse()
            .map_err(|_| Error::config(format!("environment: MASTER_PORT={port:?} is not a port number")))?;
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True");
        Ok(Some(Launch { rank, world, local_rank, master_addr, master_port, agent_store }))
    }
}

/// A process group: every rank of the job, joined through the store at `MASTER_ADDR`.
pub struct Group {
    ptr: NonNull<c_void>,
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub backend: String,
}

// SAFETY: c10d process groups are thread-safe (PyTorch shares them across threads).
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

impl Group {
    /// Joins the job: blocks until every rank reaches the store (or `timeout` passes).
    /// `backend` is `gloo` or `nccl`.
    pub fn join(launch: &Launch, backend: &str, timeout: Duration) -> Result<Group> {
        let iface = std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default();
        let c = |s: &str| CString::new(s).map_err(|_| Error::config(format!("`{s}` contains a NUL byte")));
        let (b, host, iface) = (c(backend)?, c(&launch.master_addr)?, c(&iface)?);
        let ptr = checked(
            &format!(
                "joining the {backend} process group at {}:{} ({} ranks, timeout {}s)",
                launch.master_addr,
                launch.master_port,
                launch.world,
                timeout.as_secs()
            ),
            launch.rank,
            |err| unsafe {
                ss_c10d_group_new(
                    b.as_ptr(),
                    host.as_ptr(),
                    launch.master_port as c_int,
                    launch.rank as c_int,
                    launch.world as c_int,
                    timeout.as_millis() as i64,
                    iface.as_ptr(),
                    launch.agent_store as c_int,
                    err,
                )
            },
        )?;
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::Distributed {
            rank: Some(launch.rank),
            msg: "the process group was not created".into(),
        })?;
        Ok(Group {
            ptr,
            rank: launch.rank,
            world: launch.world,
            local_rank: launch.local_rank,
            backend: backend.into(),
        })
    }

    /// `t <- sum over ranks of t`, in place.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        checked(&format!("all-reduce ({PEER_FAILURE})"), self.rank, |err| unsafe {
            ss_c10d_all_reduce_sum(self.ptr.as_ptr(), tensor_ptr(t), err)
        })
    }

    /// `t <- root's t`, in place.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        checked(&format!("broadcast ({PEER_FAILURE})"), self.rank, |err| unsafe {
            ss_c10d_broadcast(self.ptr.as_ptr(), tensor_ptr(t), root as c_int, err)
        })
    }

    /// Every rank's `x` `[k]` stacked in rank order, `[world, k]`, differentiably: the gradient
    /// of a rank's input is the sum over ranks of the gradient of its row.
    pub fn all_gather_autograd(&self, x: &Tensor) -> Result<Tensor> {
        let p = checked(&format!("all-gather ({PEER_FAILURE})"), self.rank, |err| unsafe {
            ss_c10d_all_gather_autograd(self.ptr.as_ptr(), tensor_ptr(x), err)
        })?;
        // SAFETY: the C side returns a fresh heap `at::Tensor*`, owned from here on.
        Ok(unsafe { Tensor::from_ptr(p as *mut _) })
    }

    /// Any rank's flag set: a logical OR over ranks (one small all-reduce).
    pub fn any(&self, flags: &[bool]) -> Result<Vec<bool>> {
        let t = Tensor::from_slice(&flags.iter().map(|&f| f as i32 as f32).collect::<Vec<_>>());
        let t = if self.backend == "nccl" { t.to_device(tch::Device::Cuda(self.local_rank)) } else { t };
        self.all_reduce_sum(&t)?;
        Ok(Vec::<f32>::try_from(t.to_device(tch::Device::Cpu)).expect("f32").iter().map(|&v| v > 0.0).collect())
    }

    /// Copies rank 0's value of every tensor to the others (DDP's start-up weight sync).
    pub fn broadcast_all<'a>(&self, tensors: impl IntoIterator<Item = &'a Tensor>) -> Result<()> {
        tch::no_grad(|| tensors.into_iter().try_for_each(|t| self.broadcast(t, 0)))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        unsafe { ss_c10d_group_free(self.ptr.as_ptr()) }
    }
}

/// DDP's gradient reducer over a model's trainable parameters: after every backward pass
/// (started after [`Reducer::prepare`]), each parameter's `.grad` holds the mean over ranks.
pub struct Reducer {
    ptr: NonNull<c_void>,
    // The group must outlive the reducer.
    group: Arc<Group>,
}

impl Reducer {
    /// `params` in the order gradients become ready (the reverse of the forward order, as DDP
    /// assumes), bucketed as DDP does: a first bucket of 1 MiB, then `bucket_mb` MiB each.
    /// `find_unused`: DDP's `find_unused_parameters`.
    pub fn new(group: Arc<Group>, params: &[Tensor], bucket_mb: f64, find_unused: bool) -> Result<Reducer> {
        let ptrs: Vec<CTensor> = params.iter().map(tensor_ptr).collect();
        let bucket = (bucket_mb * 1024.0 * 1024.0) as i64;
        let ptr = checked("creating the gradient reducer", group.rank, |err| unsafe {
            ss_c10d_reducer_new(
                group.ptr.as_ptr(),
                ptrs.as_ptr(),
                ptrs.len() as c_int,
                1 << 20,
                bucket,
                find_unused as c_int,
                err,
            )
        })?;
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::Distributed {
            rank: Some(group.rank),
            msg: "the gradient reducer was not created".into(),
        })?;
        Ok(Reducer { ptr, group })
    }

    /// The rank this reducer runs on.
    pub fn rank(&self) -> usize {
        self.group.rank
    }

    /// Arms the reducer for the backward pass that starts from `output` (parameters that pass
    /// does not reach count as ready with a zero gradient, as DDP's `find_unused_parameters`).
    pub fn prepare(&self, output: &Tensor) -> Result<()> {
        // c10d's message for a parameter without a gradient is long; say what to do first.
        let hint = "; if a trainable parameter gets no gradient, set dist.find_unused = true";
        checked("preparing the gradient all-reduce", self.group.rank, |err| unsafe {
            ss_c10d_reducer_prepare(self.ptr.as_ptr(), tensor_ptr(output), err)
        })
        .map_err(|e| match e {
            Error::Distributed { rank, msg } => Error::Distributed { rank, msg: format!("{msg}{hint}") },
            e => e,
        })
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        unsafe { ss_c10d_reducer_free(self.ptr.as_ptr()) }
    }
}

/// The group synchronised BatchNorm uses while training (set for a job with `dist.sync_bn`).
static SYNC_BN: RwLock<Option<Arc<Group>>> = RwLock::new(None);
/// The first collective error raised inside a forward pass (which cannot return one).
static FORWARD_ERROR: Mutex<Option<Error>> = Mutex::new(None);

/// Makes every BatchNorm layer in train mode use batch statistics over all ranks of `group`
/// (`None`: per-rank statistics again).
pub fn set_sync_bn(group: Option<Arc<Group>>) {
    *SYNC_BN.write().expect("sync-bn lock") = group;
}

pub fn sync_bn_group() -> Option<Arc<Group>> {
    SYNC_BN.read().expect("sync-bn lock").clone()
}

/// Records an error raised inside a forward pass; [`take_forward_error`] returns it.
pub fn record_forward_error(e: Error) {
    let mut slot = FORWARD_ERROR.lock().expect("error slot");
    if slot.is_none() {
        *slot = Some(e);
    }
}

pub fn take_forward_error() -> Option<Error> {
    FORWARD_ERROR.lock().expect("error slot").take()
}

/// A free TCP port on this machine (for a local job's store).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("127.0.0.1:0", e))?;
    Ok(l.local_addr().map_err(|e| Error::io("127.0.0.1:0", e))?.port())
}

/// Starts `nproc` local ranks of this executable with `args` and the torchrun environment,
/// and waits for them. When one fails, the others get `grace` to stop on their own (their
/// next collective fails or times out) before they are killed; the error names the rank.
/// The ranks run in their own process group: Ctrl-C reaches the launcher, which sets
/// `interrupt` and passes one SIGINT on to every rank (they checkpoint and stop together).
pub fn launch_local(
    nproc: usize,
    args: &[String],
    grace: Duration,
    interrupt: Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::sync::atomic::Ordering;
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let port = free_port()?;
    // As torchrun: N ranks on one machine share its cores (unless OMP_NUM_THREADS says otherwise).
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| (cores / nproc).max(1).to_string());
    let mut children = Vec::new();
    for rank in 0..nproc {
        let mut child = Command::new(&exe);
        child
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", &threads)
            .stdin(Stdio::null())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; a rank dies with its launcher.
        unsafe {
            child.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = child.spawn().map_err(|e| Error::io(&exe, e))?;
        eprintln!("launched rank {rank} (pid {})", child.id());
        children.push(Some(child));
    }
    // The failure the job's error names, when it began, and whether a signal ended that rank.
    // A rank killed by a signal is the cause of the others' failing collectives, so it is named
    // even when the launcher sees a survivor's error exit first (both can end within one poll).
    let mut failure: Option<(String, std::time::Instant, bool)> = None;
    let mut forwarded = false;
    loop {
        if !forwarded && interrupt.load(Ordering::SeqCst) {
            forwarded = true;
            for child in children.iter().flatten() {
                // SAFETY: signalling our own child process.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            }
        }
        let mut running = 0;
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait() {
                Ok(Some(status)) => {
                    let pid = child.id();
                    *slot = None;
                    if !status.success() {
                        use std::os::unix::process::ExitStatusExt;
                        let how = match status.signal() {
                            Some(sig) => format!("was killed by signal {sig}"),
                            None => format!("exited with status {}", status.code().unwrap_or(-1)),
                        };
                        let msg = format!("rank {rank} (pid {pid}) {how}");
                        let by_signal = status.signal().is_some();
                        match &mut failure {
                            None => {
                                eprintln!("{msg}; waiting up to {}s for the other ranks to stop", grace.as_secs());
                                failure = Some((msg, std::time::Instant::now(), by_signal));
                            }
                            Some((first, _, first_by_signal)) => {
                                eprintln!("{msg}");
                                if by_signal && !*first_by_signal {
                                    (*first, *first_by_signal) = (msg, true);
                                }
                            }
                        }
                    }
                }
                Ok(None) => running += 1,
                Err(e) => return Err(Error::io(&exe, e)),
            }
        }
        if running == 0 {
            break;
        }
        if let Some((_, since, _)) = &failure {
            if since.elapsed() > grace {
                for (rank, slot) in children.iter_mut().enumerate() {
                    if let Some(child) = slot {
                        eprintln!(
                            "killing rank {rank} (pid {}): it did not stop within {}s",
                            child.id(),
                            grace.as_secs()
                        );
                        let _ = child.kill();
                        let _ = child.wait();
                        *slot = None;
                    }
                }
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match failure {
        Some((msg, ..)) => Err(Error::Distributed { rank: None, msg: format!("the job stopped: {msg}") }),
        None => Ok(()),
    }
}
