// The few c10d calls simsiam needs, as a C API for Rust (tch binds none of c10d).
//
// Everything here is PyTorch's own distributed engine, as `torch.distributed` and
// `DistributedDataParallel` use it: a `TCPStore` for the rendezvous, `ProcessGroupGloo` (CPU)
// or `ProcessGroupNCCL` (CUDA, from a helper library loaded at run time) for the collectives,
// and DDP's `c10d::Reducer`, which buckets the gradients and all-reduces each bucket from
// autograd hooks while the backward pass goes on. Two autograd functions make the collectives
// synchronised BatchNorm needs differentiable.
//
// Tensors cross the boundary as `at::Tensor*`, as tch's `Tensor::as_ptr` / `from_ptr` pass
// them. Every C++ exception becomes a `malloc`ed message in `*err` (the caller frees it).
#define USE_C10D_GLOO 1
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  std::chrono::milliseconds timeout;
};

void set_error(char** err, const char* msg) {
  if (err) *err = strdup(msg);
}

#define GUARDED(err, ...)                                  \
  try {                                                    \
    __VA_ARGS__                                            \
  } catch (const std::exception& e) {                      \
    set_error(err, e.what());                              \
  } catch (...) {                                          \
    set_error(err, "unknown C++ exception in c10d");       \
  }

void wait(Group* g, const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait(g->timeout);
}

void all_reduce_sum(Group* g, at::Tensor& t) {
  std::vector<at::Tensor> ts{t};
  wait(g, g->pg->allreduce(ts, c10d::AllreduceOptions()));
}

/// `x [k] -> [world, k]`: every rank's `x`, in rank order. Backward: the rank's row of the
/// gradient summed over ranks (each rank's copy of the output feeds its own loss).
struct AllGather : public torch::autograd::Function<AllGather> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, int64_t group) {
    auto* g = reinterpret_cast<Group*>(group);
    ctx->saved_data["group"] = group;
    auto in = x.contiguous();
    std::vector<at::Tensor> outs;
    for (int r = 0; r < g->pg->getSize(); ++r) outs.push_back(at::empty_like(in));
    std::vector<std::vector<at::Tensor>> out_lists{outs};
    std::vector<at::Tensor> ins{in};
    wait(g, g->pg->allgather(out_lists, ins, c10d::AllgatherOptions()));
    return at::stack(out_lists[0], 0);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    auto grad = grads[0].contiguous().clone();
    all_reduce_sum(g, grad);
    return {grad.select(0, g->pg->getRank()), at::Tensor()};
  }
};

}  // namespace

extern "C" {

/// NCCL lives in libtorch_cuda.so, which this binary does not link: the helper library that
/// constructs `ProcessGroupNCCL` registers its factory here after it is loaded.
typedef void* (*ss_nccl_factory)(void* store, int rank, int world, int64_t timeout_ms, char** err);
static ss_nccl_factory g_nccl_factory = nullptr;
void ss_c10d_register_nccl(ss_nccl_factory f) { g_nccl_factory = f; }

/// Rendezvous at `host:port` (rank 0 serves the store) and a process group of `world` ranks.
/// `backend`: "gloo" or "nccl". `iface`: the network interface for Gloo, or empty for the
/// address `host` resolves to when it is a loopback address, else this machine's hostname.
/// `agent_store`: under torchrun, whose agent already serves the store, every rank is a client.
/// Keys live under "default_pg/", as `torch.distributed.init_process_group` puts them.
void* ss_c10d_group_new(const char* backend, const char* host, int port, int rank, int world, int64_t timeout_ms,
                        const char* iface, int agent_store, char** err) {
  GUARDED(err, {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = rank == 0 && !agent_store;
    opts.numWorkers = static_cast<std::size_t>(world);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    opts.useLibUV = false;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::PrefixStore>(
        "default_pg", c10::make_intrusive<c10d::TCPStore>(std::string(host), opts));
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
    std::string b(backend);
    if (b == "gloo") {
      auto o = c10d::ProcessGroupGloo::Options::create(timeout);
      std::string h(host), i(iface);
      if (!i.empty()) {
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(i));
      } else if (h == "localhost" || h.rfind("127.", 0) == 0) {
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      o->threads = 2;
      auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, o);
      pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::GLOO, gloo);
      pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::GLOO, gloo);
      pg->setDefaultBackend(c10d::ProcessGroup::GLOO);
    } else if (b == "nccl") {
      if (!g_nccl_factory) throw std::runtime_error("the NCCL backend is not loaded (needs libtorch_cuda.so)");
      char* ferr = nullptr;
      void* raw = g_nccl_factory(&store, rank, world, timeout_ms, &ferr);
      if (!raw) {
        std::string m = ferr ? ferr : "unknown error";
        free(ferr);
        throw std::runtime_error("cannot create the NCCL process group: " + m);
      }
      auto nccl = c10::intrusive_ptr<c10d::Backend>::reclaim(static_cast<c10d::Backend*>(raw));
      pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::NCCL, nccl);
      pg->setDefaultBackend(c10d::ProcessGroup::NCCL);
    } else {
      throw std::runtime_error("unknown backend `" + b + "` (expected gloo or nccl)");
    }
    return new Group{store, pg, timeout};
  })
  return nullptr;
}

void ss_c10d_group_free(void* g) { delete static_cast<Group*>(g); }

/// In-place sum over ranks, blocking.
void ss_c10d_all_reduce_sum(void* g, at::Tensor* t, char** err) {
  GUARDED(err, { all_reduce_sum(static_cast<Group*>(g), *t); })
}

/// In-place copy of `root`'s tensor to every rank, blocking.
void ss_c10d_broadcast(void* g, at::Tensor* t, int root, char** err) {
  GUARDED(err, {
    auto* grp = static_cast<Group*>(g);
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    wait(grp, grp->pg->broadcast(ts, o));
  })
}

/// The differentiable all-gather `[k] -> [world, k]`, for synchronised BatchNorm.
at::Tensor* ss_c10d_all_gather_autograd(void* g, at::Tensor* x, char** err) {
  GUARDED(err, { return new at::Tensor(AllGather::apply(*x, reinterpret_cast<int64_t>(g))); })
  return nullptr;
}

/// DDP's gradient reducer over `params` (in the order their gradients are expected to become
/// ready): buckets of at most `bucket_bytes` (the first of at most `first_bucket_bytes`),
/// averaged over ranks into each parameter's `.grad` by the end of every backward pass.
void* ss_c10d_reducer_new(void* g, at::Tensor** params, int n, int64_t first_bucket_bytes, int64_t bucket_bytes,
                          int find_unused, char** err) {
  GUARDED(err, {
    auto* grp = static_cast<Group*>(g);
    std::vector<at::Tensor> ps;
    for (int i = 0; i < n; ++i) ps.push_back(*params[i]);
    std::vector<size_t> limits{static_cast<size_t>(first_bucket_bytes), static_cast<size_t>(bucket_bytes)};
    std::vector<bool> sparse(ps.size(), false);
    auto [buckets, caps] = c10d::compute_bucket_assignment_by_size(ps, limits, sparse);
    std::vector<int64_t> cap_list(caps.begin(), caps.end());
    auto* r = new c10d::Reducer(ps, buckets, grp->pg, sparse, bucket_bytes, find_unused != 0,
                                /*gradient_as_bucket_view=*/false, {}, first_bucket_bytes,
                                /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false, cap_list);
    return static_cast<void*>(r);
  })
  return nullptr;
}

/// Before each backward pass: the outputs it starts from (with `find_unused`, to find the
/// parameters it will not reach).
void ss_c10d_reducer_prepare(void* r, at::Tensor* output, char** err) {
  GUARDED(err, { static_cast<c10d::Reducer*>(r)->prepare_for_backward({*output}); })
}

void ss_c10d_reducer_free(void* r) {
  try {
    delete static_cast<c10d::Reducer*>(r);
  } catch (...) {
  }
}

}  // extern "C"
