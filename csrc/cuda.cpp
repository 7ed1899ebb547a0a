// What only a GPU machine needs: c10d's ProcessGroupNCCL (for csrc/c10d.cpp), the CUDA
// caching allocator's statistics, CUDA graphs (a training step captured once, replayed), and
// the streams and events that let the next step's augmentation overlap this step.
// Built as its own shared library, linked against libtorch_cuda.so and libc10_cuda.so, which
// the simsiam binary does not link so that it runs on CPU-only machines; embedded in the binary
// and loaded at run time (src/device.rs).
#define USE_C10D_NCCL 1
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
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

/// The device's total memory in bytes (`cudaDeviceProp::totalGlobalMem`), or -1 on error.
int64_t ss_cuda_total_memory(int device) {
  try {
    return static_cast<int64_t>(at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device))->totalGlobalMem);
  } catch (...) {
    return -1;
  }
}

/// The device's compute capability as `10 * major + minor` (80 for an A100, 90 for an H100, 70
/// for a V100), or -1 on error.
int ss_cuda_capability(int device) {
  try {
    auto* p = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device));
    return 10 * p->major + p->minor;
  } catch (...) {
    return -1;
  }
}

/// Starts capturing the current stream's work (not the default stream: see
/// `ss_cuda_stream_push`) into a new graph: until `ss_cuda_graph_end`, kernels are recorded,
/// not run. Returns the graph, or null with `*err` set.
void* ss_cuda_graph_begin(char** err) {
  auto* g = new at::cuda::CUDAGraph();
  try {
    g->capture_begin();
    return g;
  } catch (const std::exception& e) {
    *err = strdup(e.what());
  } catch (...) {
    *err = strdup("unknown C++ exception beginning a CUDA graph capture");
  }
  delete g;
  return nullptr;
}

/// Ends the capture and instantiates the graph.
void ss_cuda_graph_end(void* graph, char** err) {
  try {
    static_cast<at::cuda::CUDAGraph*>(graph)->capture_end();
  } catch (const std::exception& e) {
    *err = strdup(e.what());
  } catch (...) {
    *err = strdup("unknown C++ exception ending a CUDA graph capture");
  }
}

/// Runs the captured work again, on the current stream, with whatever its input tensors hold.
void ss_cuda_graph_replay(void* graph, char** err) {
  try {
    static_cast<at::cuda::CUDAGraph*>(graph)->replay();
  } catch (const std::exception& e) {
    *err = strdup(e.what());
  } catch (...) {
    *err = strdup("unknown C++ exception replaying a CUDA graph");
  }
}

void ss_cuda_graph_free(void* graph) { delete static_cast<at::cuda::CUDAGraph*>(graph); }

// Streams other than the default one: the CUDA graph's (`src/graph.rs`, capture needs one) and
// the prefetched views' (`src/prefetch.rs`), ordered against each other with events; nothing
// here waits on the host.

/// A stream from the pool of `device`, not made current. Returns it, or null with `*err` set.
void* ss_cuda_stream_new(int device, char** err) {
  try {
    return new c10::cuda::CUDAStream(
        c10::cuda::getStreamFromPool(/*isHighPriority=*/false, static_cast<c10::DeviceIndex>(device)));
  } catch (const std::exception& e) {
    *err = strdup(e.what());
  } catch (...) {
    *err = strdup("unknown C++ exception choosing a CUDA stream");
  }
  return nullptr;
}

void ss_cuda_stream_free(void* stream) { delete static_cast<c10::cuda::CUDAStream*>(stream); }

/// Makes `stream` current (for this thread) until `ss_cuda_stream_pop`, after making it wait
/// (on the device, not the host) for the work queued so far on the stream that was current.
/// Returns the guard to pop, or null with `*err` set.
void* ss_cuda_stream_push(void* stream, char** err) {
  try {
    auto& s = *static_cast<c10::cuda::CUDAStream*>(stream);
    at::cuda::CUDAEvent before;
    before.record(c10::cuda::getCurrentCUDAStream(s.device_index()));
    before.block(s);
    return new c10::cuda::CUDAStreamGuard(s);
  } catch (const std::exception& e) {
    *err = strdup(e.what());
  } catch (...) {
    *err = strdup("unknown C++ exception switching CUDA streams");
  }
  return nullptr;
}

/// Makes the stream that was current before `ss_cuda_stream_push` current again.
void ss_cuda_stream_pop(void* guard) { delete static_cast<c10::cuda::CUDAStreamGuard*>(guard); }

/// An event recorded now on the current stream of `device`. Returns it, or null with `*err` set.
void* ss_cuda_event_record(int device, char** err) {
  auto* e = new at::cuda::CUDAEvent();
  try {
    e->record(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)));
    return e;
  } catch (const std::exception& ex) {
    *err = strdup(ex.what());
  } catch (...) {
    *err = strdup("unknown C++ exception recording a CUDA event");
  }
  delete e;
  return nullptr;
}

/// Makes the current stream of `device` wait (on the device) for `event`.
void ss_cuda_event_wait(void* event, int device, char** err) {
  try {
    static_cast<at::cuda::CUDAEvent*>(event)->block(
        c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)));
  } catch (const std::exception& e) {
    *err = strdup(e.what());
  } catch (...) {
    *err = strdup("unknown C++ exception waiting for a CUDA event");
  }
}

/// Frees an event; work that waits for it still does (CUDA releases it once it completes).
void ss_cuda_event_free(void* event) { delete static_cast<at::cuda::CUDAEvent*>(event); }

/// Tells the caching allocator that `t`'s memory, made on another stream, is read by the current
/// stream too, so that it is not handed out again before that stream's queued work is done.
void ss_cuda_record_stream(at::Tensor* t, char** err) {
  try {
    c10::cuda::CUDACachingAllocator::recordStream(t->storage().data_ptr(),
                                                  c10::cuda::getCurrentCUDAStream(t->device().index()));
  } catch (const std::exception& e) {
    *err = strdup(e.what());
  } catch (...) {
    *err = strdup("unknown C++ exception recording a tensor's stream");
  }
}

}  // extern "C"
