// SPDX-License-Identifier: MIT
// Stand-in for a header Debian 12's libtorch-dev 1.13 omits although c10d/reducer.hpp includes it. The Reducer
// only names the two types below (in a static_assert and as a pointer member), so their declarations are all it
// needs; the CMake target torchfit::distributed puts this directory on the include path only when the real
// header is missing.
#pragma once

#include <functional>
#include <memory>

#include <ATen/core/Tensor.h>

namespace torch::distributed::autograd {

class DistAutogradContext {
 public:
  using GradCallback = std::function<bool(at::Tensor&)>;
};
using ContextPtr = std::shared_ptr<DistAutogradContext>;

}  // namespace torch::distributed::autograd
