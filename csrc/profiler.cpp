// PyTorch's profiler (Kineto: CPU operators, and with CUPTI every CUDA kernel, copy and
// memset with its device time), which tch does not bind. `simsiam bench --profile` uses it to
// say where the milliseconds of a step go. Kineto and CUPTI live in libtorch_cpu.so, so this
// builds into the main binary and runs on CPU-only machines too.
#include <ATen/record_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

namespace prof = torch::autograd::profiler;
namespace impl = torch::profiler::impl;

namespace {
impl::ProfilerConfig config() {
  return impl::ProfilerConfig(impl::ProfilerState::KINETO, /*report_input_shapes=*/false, /*profile_memory=*/false,
                              /*with_stack=*/false, /*with_flops=*/false, /*with_modules=*/false);
}

std::set<impl::ActivityType> activities(int cuda) {
  std::set<impl::ActivityType> a{impl::ActivityType::CPU};
  if (cuda) a.insert(impl::ActivityType::CUDA);
  return a;
}

void fail(char** err, const char* what) { *err = strdup(what); }
}  // namespace

extern "C" {

/// One recorded event: `on_device` 1 for GPU work (kernels, copies, memsets), `lane` its
/// stream, else the CPU thread that ran it.
typedef void (*ss_profile_event)(void* ctx, const char* name, int on_device, uint64_t start_ns, uint64_t dur_ns,
                                 int64_t lane);

/// Starts recording CPU operators, and CUDA activity when `cuda` is 1.
void ss_profiler_start(int cuda, char** err) {
  // Without a GPU, Kineto logs a failed device count as an ERROR; only errors that matter here
  // reach the caller, as exceptions. An explicit KINETO_LOG_LEVEL is kept.
  if (!cuda) setenv("KINETO_LOG_LEVEL", "5", /*overwrite=*/0);
  try {
    prof::prepareProfiler(config(), activities(cuda));
    prof::enableProfiler(config(), activities(cuda));
  } catch (const std::exception& e) {
    fail(err, e.what());
  } catch (...) {
    fail(err, "unknown C++ exception starting the profiler");
  }
}

/// Stops recording, hands every event to `on_event`, and writes the Chrome trace to
/// `trace_path` (Perfetto / chrome://tracing) when it is not null.
void ss_profiler_stop(const char* trace_path, ss_profile_event on_event, void* ctx, char** err) {
  try {
    auto result = prof::disableProfiler();
    for (const auto& e : result->events()) {
      bool dev = e.deviceType() != c10::DeviceType::CPU;
      int64_t lane = dev ? e.deviceResourceId() : static_cast<int64_t>(e.startThreadId());
      on_event(ctx, e.name().c_str(), dev ? 1 : 0, e.startNs(), e.durationNs(), lane);
    }
    if (trace_path != nullptr) result->save(trace_path);
  } catch (const std::exception& e) {
    fail(err, e.what());
  } catch (...) {
    fail(err, "unknown C++ exception stopping the profiler");
  }
}

/// Opens a named range (`torch.profiler.record_function`); close it with `ss_range_pop`.
void* ss_range_push(const char* name) {
  auto* rf = new at::RecordFunction(at::RecordScope::USER_SCOPE);
  if (rf->isActive()) rf->before(std::string(name));
  return rf;
}

void ss_range_pop(void* range) {
  auto* rf = static_cast<at::RecordFunction*>(range);
  rf->end();
  delete rf;
}

}  // extern "C"
