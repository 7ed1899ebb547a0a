// Declarations only: see gloo_decl/gloo/README.md.
#pragma once
#include <chrono>
#include "gloo/transport/device.h"
namespace gloo {
class Context {
 public:
  // Named by an inline member of ProcessGroupGloo that simsiam never calls.
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
