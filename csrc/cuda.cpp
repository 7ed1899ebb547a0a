// What only a GPU machine needs: c10d's ProcessGroupNCCL (for csrc/c10d.cpp) and the CUDA
// caching allocator's statistics. Built as its own shared library, linked against
// libtorch_cuda.so and libc10_cuda.so, which the simsiam binary does not link so that it runs
// on CPU-only machines; embedded in the binary and loaded at run time (src/device.rs).
#define USE_C10D_NCCL 1
#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <cstring>

extern "C" {

/// `store`: a `c10::intrusive_ptr<c10d::Store>*`. Returns a `c10d::Backend*` holding one
/// reference (the caller reclaims it), or null with a `malloc`ed message in `*err`.
void* ss_c10d_nccl_new(void* store, int rank, int world, int64_t timeout_ms, char** err) {
  try {
    auto& s = *static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(s, rank, world, opts);
    return static_cast<c10d::Backend*>(pg.release());
  } catch (const std::exception& e) {
    *err = strdup(e.what());
  } catch (...) {
    *err = strdup("unknown C++ exception creating ProcessGroupNCCL");
  }
  return nullptr;
}

/// Peak bytes allocated by the caching allocator on `device` since the last reset.
int64_t ss_cuda_peak_allocated(int device) {
  auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
  return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
}

void ss_cuda_reset_peak(int device) {
  c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
}

}  // extern "C"
