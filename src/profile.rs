//! Where the time of a step goes: PyTorch's profiler (Kineto, `csrc/profiler.cpp`) around a few
//! iterations, summarised per kernel and per kind of work. On a GPU every kernel, copy and
//! memset is recorded with its device time, so the device's busy and idle time per step add up
//! to the wall clock; on the CPU the operators' self times say the same of the host.
use crate::error::{Error, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;

/// One recorded event: a CPU operator or range, or a piece of GPU work.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    /// GPU work (kernel, copy, memset) rather than a CPU operator.
    pub on_device: bool,
    pub start_ns: u64,
    pub dur_ns: u64,
    /// The CUDA stream of GPU work, the thread of a CPU event.
    pub lane: i64,
}

type OnEvent = unsafe extern "C" fn(*mut c_void, *const c_char, c_int, u64, u64, i64);

extern "C" {
    fn ss_profiler_start(cuda: c_int, err: *mut *mut c_char);
    fn ss_profiler_stop(trace: *const c_char, on_event: OnEvent, ctx: *mut c_void, err: *mut *mut c_char);
    fn ss_range_push(name: *const c_char) -> *mut c_void;
    fn ss_range_pop(range: *mut c_void);
}

unsafe extern "C" fn collect(ctx: *mut c_void, name: *const c_char, dev: c_int, start: u64, dur: u64, lane: i64) {
    // SAFETY: `ctx` is the `Vec<Event>` that `record` passes, alive for the call; `name` is a
    // NUL-terminated string owned by the C side for the duration of this callback.
    let events = unsafe { &mut *(ctx as *mut Vec<Event>) };
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
    events.push(Event { name, on_device: dev != 0, start_ns: start, dur_ns: dur, lane });
}

/// Runs `f` under the profiler (CUDA activity too when `cuda`), writes the Chrome trace to
/// `trace` (open it in Perfetto) and returns `f`'s value with every recorded event.
pub fn record<T>(cuda: bool, trace: Option<&Path>, f: impl FnOnce() -> Result<T>) -> Result<(T, Vec<Event>)> {
    let fail = |what: &str, msg: String| Error::Profiler(format!("could not {what}: {msg}"));
    crate::ffi::call(|err| unsafe { ss_profiler_start(cuda as c_int, err) }).map_err(|m| fail("start", m))?;
    let out = f();
    let path = trace
        .map(|p| CString::new(p.to_string_lossy().into_owned()))
        .transpose()
        .map_err(|_| fail("write its trace", "the path holds a NUL byte".into()))?;
    let mut events: Vec<Event> = Vec::new();
    let ctx = &mut events as *mut Vec<Event> as *mut c_void;
    let p = path.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // Stop even when `f` failed, so the profiler is not left running.
    crate::ffi::call(|err| unsafe { ss_profiler_stop(p, collect, ctx, err) }).map_err(|m| fail("stop", m))?;
    Ok((out?, events))
}

/// A named range in the profile (`torch.profiler.record_function`), closed when dropped.
/// Without a profiler running it costs one small allocation (libtorch's `RecordFunction`).
pub struct Range(*mut c_void);

pub fn range(name: &'static CStr) -> Range {
    // SAFETY: a NUL-terminated name; the C side copies it.
    Range(unsafe { ss_range_push(name.as_ptr()) })
}

impl Drop for Range {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `ss_range_push` and is popped once.
        unsafe { ss_range_pop(self.0) }
    }
}

/// ATen operators that allocate or re-view memory without touching its values (host-side
/// bookkeeping: on a GPU they launch no kernel).
const NO_ARITHMETIC: &[&str] = &[
    "empty",
    "empty_strided",
    "empty_like",
    "as_strided",
    "view",
    "reshape",
    "_reshape_alias",
    "_unsafe_view",
    "resize",
    "t",
    "transpose",
    "permute",
    "expand",
    "slice",
    "select",
    "narrow",
    "unsqueeze",
    "squeeze",
    "detach",
    "alias",
    "set",
];

/// The kind of work a kernel or operator does, from its name (cuDNN, cuBLAS and ATen names).
pub fn category(name: &str) -> &'static str {
    let n = name.to_lowercase();
    let has = |subs: &[&str]| subs.iter().any(|s| n.contains(s));
    if has(&["batch_norm", "batchnorm", "bn_fw", "bn_bw", "welford"]) {
        "batch norm"
    } else if (n.contains("conv") && !n.contains("convert")) || has(&["fprop", "dgrad", "wgrad"]) {
        "convolution"
    } else if has(&["gemm", "cublas", "cutlass", "addmm", "bmm", "matmul", "linear"]) || n.ends_with("::mm") {
        "matrix multiply"
    } else if has(&["sgd", "multi_tensor", "foreach"]) {
        "optimizer"
    } else if has(&["memcpy", "memset", "copy", "cast", "convert", "contiguous", "nchwtonhwc", "nhwctonchw", "clone"]) {
        "copy / layout / cast"
    } else if n.strip_prefix("aten::").is_some_and(|op| NO_ARITHMETIC.contains(&op.trim_end_matches('_'))) {
        "allocation / views (no arithmetic)"
    } else if n.starts_with("cuda") {
        "CUDA runtime calls (host)"
    } else if has(&["reduce", "sum", "mean", "argmax", "sort", "::any", "norm"])
        || n.ends_with("::max")
        || n.ends_with("::min")
    {
        "reduction / sort"
    } else if n.starts_with("aten::") || has(&["elementwise", "kernel"]) {
        "elementwise (ReLU, adds, colour ops, ...)"
    } else {
        "other (named ranges, autograd engine)"
    }
}

/// One kernel or operator, over the profiled iterations.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub category: &'static str,
    pub calls_per_step: f64,
    /// Device time (GPU) or self time (CPU) per step.
    pub ms_per_step: f64,
    /// Of the summed device time (GPU) or self time (CPU).
    pub share: f64,
}

/// Time per step by kind of work.
#[derive(Debug, Clone, Serialize)]
pub struct Share {
    pub category: &'static str,
    pub ms_per_step: f64,
    pub share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// GPU: kernels, copies and memsets per step; CPU: operator calls per step.
    pub events_per_step: f64,
    /// GPU: time with some work running (the union of the intervals); CPU: summed self time.
    pub busy_ms_per_step: f64,
    pub categories: Vec<Share>,
    /// The costliest first, at most [`TOP`].
    pub top: Vec<Row>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub steps: usize,
    pub wall_ms_per_step: f64,
    /// The GPU's side (absent on a CPU run).
    pub device: Option<Side>,
    /// The host's side: operators by self time (nested calls excluded), all threads.
    pub host: Side,
}

/// Rows kept in each `top` list.
pub const TOP: usize = 25;

/// Self time of each CPU event: its duration less its direct children's on the same thread.
fn self_times(events: &[&Event]) -> Vec<u64> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    // By thread, then start, the enclosing (longer) event first.
    order.sort_by_key(|&i| (events[i].lane, events[i].start_ns, std::cmp::Reverse(events[i].dur_ns)));
    let mut own: Vec<u64> = events.iter().map(|e| e.dur_ns).collect();
    let mut stack: Vec<usize> = Vec::new();
    for &i in &order {
        let e = events[i];
        while let Some(&top) = stack.last() {
            let t = events[top];
            if t.lane != e.lane || t.start_ns + t.dur_ns <= e.start_ns {
                stack.pop();
            } else {
                break;
            }
        }
        if let Some(&parent) = stack.last() {
            own[parent] = own[parent].saturating_sub(e.dur_ns);
        }
        stack.push(i);
    }
    own
}

/// Length of the union of `[start, start + dur)` intervals.
fn union_ns(events: &[&Event]) -> u64 {
    let mut iv: Vec<(u64, u64)> = events.iter().map(|e| (e.start_ns, e.start_ns + e.dur_ns)).collect();
    iv.sort_unstable();
    let (mut total, mut cur): (u64, Option<(u64, u64)>) = (0, None);
    for (s, e) in iv {
        cur = match cur {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    total + cur.map_or(0, |(s, e)| e - s)
}

/// Per-name and per-category totals of `time[i]` for `events[i]`, per step.
fn side(events: &[&Event], time: &[u64], busy_ns: u64, steps: usize) -> Side {
    let per_step = |ns: u64| ns as f64 / 1e6 / steps as f64;
    let total: u64 = time.iter().sum::<u64>().max(1);
    let mut by_name: HashMap<&str, (usize, u64)> = HashMap::new();
    let mut by_cat: HashMap<&'static str, u64> = HashMap::new();
    for (e, &t) in events.iter().zip(time) {
        let r = by_name.entry(e.name.as_str()).or_default();
        r.0 += 1;
        r.1 += t;
        *by_cat.entry(category(&e.name)).or_default() += t;
    }
    let mut top: Vec<Row> = by_name
        .into_iter()
        .map(|(name, (calls, ns))| Row {
            name: name.to_string(),
            category: category(name),
            calls_per_step: calls as f64 / steps as f64,
            ms_per_step: per_step(ns),
            share: ns as f64 / total as f64,
        })
        .collect();
    top.sort_by(|a, b| b.ms_per_step.total_cmp(&a.ms_per_step).then_with(|| a.name.cmp(&b.name)));
    top.truncate(TOP);
    let mut categories: Vec<Share> = by_cat
        .into_iter()
        .map(|(category, ns)| Share { category, ms_per_step: per_step(ns), share: ns as f64 / total as f64 })
        .collect();
    categories.sort_by(|a, b| b.ms_per_step.total_cmp(&a.ms_per_step).then_with(|| a.category.cmp(b.category)));
    Side { events_per_step: events.len() as f64 / steps as f64, busy_ms_per_step: per_step(busy_ns), categories, top }
}

/// Summarises `steps` iterations that took `wall_ns`.
pub fn summarise(events: &[Event], steps: usize, wall_ns: u64) -> Profile {
    let steps = steps.max(1);
    let (dev, host): (Vec<&Event>, Vec<&Event>) = events.iter().partition(|e| e.on_device);
    let device = (!dev.is_empty()).then(|| {
        let t: Vec<u64> = dev.iter().map(|e| e.dur_ns).collect();
        side(&dev, &t, union_ns(&dev), steps)
    });
    let own = self_times(&host);
    let busy = own.iter().sum();
    Profile {
        steps,
        wall_ms_per_step: wall_ns as f64 / 1e6 / steps as f64,
        device,
        host: side(&host, &own, busy, steps),
    }
}

impl Profile {
    /// The summary as markdown: where each millisecond of a step goes.
    pub fn markdown(&self, title: &str) -> String {
        let mut s =
            format!("### {title}: {:.2} ms per step (wall), {} steps profiled\n\n", self.wall_ms_per_step, self.steps);
        let mut part = |label: &str, side: &Side, what: &str| {
            s += &format!(
                "{label}: {:.2} ms per step {what}, {:.0} events per step\n\n| kind of work | ms / step | share |\n|---|---|---|\n",
                side.busy_ms_per_step, side.events_per_step
            );
            for c in &side.categories {
                s += &format!("| {} | {:.3} | {:.1}% |\n", c.category, c.ms_per_step, 100.0 * c.share);
            }
            s +=
                &format!("\n| {label}: costliest | kind | calls / step | ms / step | share |\n|---|---|---|---|---|\n");
            for r in &side.top {
                let name: String = r.name.chars().take(90).collect();
                s += &format!(
                    "| `{}` | {} | {:.1} | {:.3} | {:.1}% |\n",
                    name.replace('|', "\\|"),
                    r.category,
                    r.calls_per_step,
                    r.ms_per_step,
                    100.0 * r.share
                );
            }
            s += "\n";
        };
        if let Some(d) = &self.device {
            let idle = (self.wall_ms_per_step - d.busy_ms_per_step).max(0.0);
            part("GPU", d, &format!("busy (idle {idle:.2} ms)"));
        }
        part("CPU", &self.host, "of operator self time (all threads)");
        s
    }
}
