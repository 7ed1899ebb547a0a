// The optimiser's update as PyTorch's fused multi-tensor kernel, which tch does not bind:
// `_fused_sgd_` (the kernel behind `torch.optim.SGD(fused=True)`); fp16 loss scaling's unscale
// and overflow check (`GradScaler.unscale_`'s `_amp_foreach_non_finite_check_and_unscale_`);
// and gradients set to none (what tch's `zero_grad` cannot do: it zeroes them). On a GPU
// the per-parameter form costs about six kernel launches per parameter tensor and step (ResNet-18
// with its heads has some 75 tensors); these cost a handful.
#include <ATen/ATen.h>

#include <cstring>
#include <optional>
#include <vector>

namespace {
std::vector<at::Tensor> list(at::Tensor** ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) v.push_back(*ts[i]);
  return v;
}
}  // namespace

extern "C" {

/// `d = g + wd w; buf = m buf + d (buf = d when `first`); w -= lr buf` over `n` parameters, in
/// place. The lr is `lr`, or, when `lr_tensor` is not null, read from that 0-dim fp32 tensor (on
/// the parameters' device) when the kernel runs: a CUDA graph that captured the update then
/// replays it with the lr the tensor holds at replay time. On failure `*err` is a `malloc`ed
/// message. When `found_inf` (a 1-element fp32 tensor on the parameters' device) is not null,
/// the kernel leaves everything as it is where it holds a non-zero value: a step whose fp16
/// gradients overflowed is skipped without the host reading the flag.
void ss_fused_sgd(at::Tensor** params, at::Tensor** grads, at::Tensor** bufs, int n, double wd, double momentum,
                 double lr, at::Tensor* lr_tensor, int first, at::Tensor* found_inf, char** err) {
  try {
    auto w = list(params, n), g = list(grads, n), b = list(bufs, n);
    std::optional<at::Tensor> inf;
    if (found_inf != nullptr) inf = *found_inf;
    if (lr_tensor != nullptr) {
      at::_fused_sgd_(w, g, b, wd, momentum, *lr_tensor, /*dampening=*/0.0, /*nesterov=*/false, /*maximize=*/false,
                      first != 0, /*grad_scale=*/std::nullopt, inf);
    } else {
      at::_fused_sgd_(w, g, b, wd, momentum, lr, /*dampening=*/0.0, /*nesterov=*/false, /*maximize=*/false,
                      first != 0, /*grad_scale=*/std::nullopt, inf);
    }
  } catch (const std::exception& e) {
    *err = strdup(e.what());
  } catch (...) {
    *err = strdup("unknown C++ exception in _fused_sgd_");
  }
}

/// Multiplies each of `n` gradients by `inv_scale` (a 1-element fp32 tensor) in place and sets
/// `found_inf` (the same) to 1 if any of them holds an inf or a NaN (`GradScaler.unscale_`).
void ss_amp_unscale(at::Tensor** grads, int n, at::Tensor* found_inf, at::Tensor* inv_scale, char** err) {
  try {
    at::_amp_foreach_non_finite_check_and_unscale_(list(grads, n), *found_inf, *inv_scale);
  } catch (const std::exception& e) {
    *err = strdup(e.what());
  } catch (...) {
    *err = strdup("unknown C++ exception in _amp_foreach_non_finite_check_and_unscale_");
  }
}

/// Makes the `.grad` of each of `n` tensors undefined (`zero_grad(set_to_none=True)`).
void ss_grads_to_none(at::Tensor** ts, int n) {
  for (int i = 0; i < n; ++i) ts[i]->mutable_grad().reset();
}

}  // extern "C"
