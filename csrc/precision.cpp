// Mixed precision and memory format, which tch does not bind: autocast with a chosen dtype
// (tch's `autocast` only switches CUDA autocast on with libtorch's default, fp16) and the
// channels-last layout (tch's generated API drops `MemoryFormat` arguments).
#include <ATen/autocast_mode.h>
#include <ATen/ATen.h>

namespace {
at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
}  // namespace

extern "C" {

/// Enters an autocast region on CUDA (`cuda` = 1) or CPU in bf16 (`bf16` = 1) or fp16.
/// Returns whether autocast was already on (pass it to `ss_autocast_exit`).
int ss_autocast_enter(int cuda, int bf16) {
  auto dt = device_type(cuda);
  bool was = at::autocast::is_autocast_enabled(dt);
  at::autocast::set_autocast_dtype(dt, bf16 ? at::kBFloat16 : at::kHalf);
  at::autocast::set_autocast_enabled(dt, true);
  at::autocast::increment_nesting();
  return was ? 1 : 0;
}

/// Leaves the region: the weight-cast cache is cleared when the outermost region ends.
void ss_autocast_exit(int cuda, int was) {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(device_type(cuda), was != 0);
}

/// A channels-last (NHWC-strided) copy of a 4-d tensor; the tensor itself if it is one.
at::Tensor* ss_channels_last(at::Tensor* t) { return new at::Tensor(t->contiguous(at::MemoryFormat::ChannelsLast)); }

/// Re-lays a parameter out channels-last in place (same tensor, same autograd identity).
void ss_set_channels_last(at::Tensor* t) { t->set_data(t->contiguous(at::MemoryFormat::ChannelsLast)); }

int ss_is_channels_last(at::Tensor* t) { return t->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0; }

/// cuDNN in TF32 on Ampere and newer (`torch.backends.cudnn.allow_tf32`; on by default in
/// libtorch as in PyTorch). A process-wide setting. This setter gives convolutions and RNNs the
/// same flag: libtorch's operator-less getter refuses a mix of the two.
void ss_set_cudnn_tf32(int on) { at::globalContext().setAllowTF32CuDNN(on != 0); }

/// Whether cuDNN convolutions may use TF32: the convolutions' own flag
/// (`torch.backends.cudnn.conv.fp32_precision == "tf32"`).
int ss_cudnn_tf32() {
  return at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV) ==
                 at::Float32Precision::TF32
             ? 1
             : 0;
}

}  // extern "C"
