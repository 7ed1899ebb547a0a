//! Reading a store mapped from the disk cache (`data.cache_dir`). Such a store may be larger
//! than memory: the kernel reads its pages from the file as they are touched and drops them
//! again under memory pressure. Two pieces of advice to the kernel keep that cheap:
//!
//! - **random order** (`MADV_RANDOM`): a page fault reads only what it needs. Left to itself the
//!   kernel reads around every fault (`read_ahead_kb`: 8 MiB on the development machine, some 40
//!   rows of a 256 px store), and when the store does not fit, those reads evict each other
//!   before they are used. One epoch over a 7.3 GiB store in a 1 GiB memory cgroup took 464 s,
//!   102 s without the limit (BENCHMARKS.md, "Stores larger than memory").
//! - **the next rows, read ahead** (`MADV_WILLNEED`): the training loop and the linear probe
//!   name the next batch's rows, and [`super::ImageStore::batches`] the next batch of a pass in
//!   order, so the reads are queued at once while the current batch is used, instead of one
//!   fault at a time in the next gather.
//!
//! Both are hints: they change when pages are read, never what the store holds.
use std::ops::Range;
use tch::{Device, Tensor};

/// Marks the whole store as read in random order.
pub(super) fn read_in_random_order(images: &Tensor) {
    advise(images, 0..images.size()[0], libc::MADV_RANDOM);
}

/// Asks the kernel to start reading rows `rows` now.
pub(super) fn will_need(images: &Tensor, rows: Range<i64>) {
    advise(images, rows, libc::MADV_WILLNEED);
}

/// How much one `MADV_WILLNEED` asks for. Linux cuts a longer range short: on the development
/// machine one call read 8 MiB, its disk's `read_ahead_kb`, and an 8.4 MiB batch advised whole
/// came in without its last five rows. 128 KiB is the default `read_ahead_kb`.
const WILLNEED_CHUNK: usize = 128 << 10;

/// `madvise` over the bytes of `rows` of `images` (`[N, ...]` uint8 on the CPU, rows laid out
/// `stride(0)` bytes apart), from the page that holds the first byte.
fn advise(images: &Tensor, rows: Range<i64>, advice: libc::c_int) {
    if images.device() != Device::Cpu || images.kind() != tch::Kind::Uint8 || rows.is_empty() {
        return;
    }
    let n = images.size()[0];
    let (first, end) = (rows.start.clamp(0, n), rows.end.clamp(0, n));
    if first >= end {
        return;
    }
    let row = images.stride()[0] as usize;
    let row_bytes = images.numel() / n.max(1) as usize;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    let start = images.data_ptr() as usize + first as usize * row;
    let stop = images.data_ptr() as usize + (end as usize - 1) * row + row_bytes;
    let aligned = start & !(page - 1);
    let chunk = if advice == libc::MADV_WILLNEED { WILLNEED_CHUNK } else { stop - aligned };
    for from in (aligned..stop).step_by(chunk) {
        // SAFETY: the range is inside the store's mapping (its start rounded down to the page
        // that holds it, which belongs to the same mapping); MADV_RANDOM and MADV_WILLNEED only
        // change when the kernel reads pages, never their contents. A failure leaves the reads
        // as they were, so it is not an error.
        unsafe { libc::madvise(from as *mut libc::c_void, chunk.min(stop - from), advice) };
    }
}
