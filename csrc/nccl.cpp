// Constructs c10d's ProcessGroupNCCL, for csrc/c10d.cpp. Built as its own shared library
// (linked against libtorch_cuda.so, which the simsiam binary does not link so that it runs on
// CPU-only machines) and loaded at run time on GPU machines: see src/dist.rs `load_nccl`.
#define USE_C10D_NCCL 1
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

}  // extern "C"
