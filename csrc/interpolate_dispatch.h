// Tensor-level API of interpolate: CPU/CUDA backend declarations, the dispatchers
// csrc/bindings.cpp exposes (inputs validated by csrc/checks.h) and the kernel-parameter
// builders shared by the CPU and CUDA glue. Maths: csrc/ops/interpolate.h. Light ATen headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <vector>

#include "checks.h"
#include "ops/interpolate.h"

namespace jr2net {

// attr is [A,V,C] with A == 1 (shared by the batch) or A == B.
at::Tensor interpolate_fwd_cpu(const at::Tensor& attr, const at::Tensor& rast,
                               const at::Tensor& faces);
// Returns {grad_attr [A,V,C], grad_rast [B,H,W,4]} (channels 2, 3 of grad_rast are zero).
std::vector<at::Tensor> interpolate_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& attr,
                                            const at::Tensor& rast, const at::Tensor& faces);
#ifdef WITH_CUDA
at::Tensor interpolate_fwd_cuda(const at::Tensor& attr, const at::Tensor& rast,
                                const at::Tensor& faces);
std::vector<at::Tensor> interpolate_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& attr,
                                             const at::Tensor& rast, const at::Tensor& faces);
#endif

// Validates and dispatches interpolate's forward pass.
inline at::Tensor interpolate_fwd(const at::Tensor& attr, const at::Tensor& rast,
                                  const at::Tensor& faces) {
  checks::interpolate_inputs(attr, rast, faces);
  if (attr.is_cuda()) {
#ifdef WITH_CUDA
    return interpolate_fwd_cuda(attr, rast, faces);
#else
    TORCH_CHECK(false, "jr2net was not compiled with CUDA: cannot interpolate a CUDA tensor");
#endif
  }
  TORCH_CHECK_VALUE(attr.is_cpu(), "attr must be a CPU or CUDA tensor, got ", attr.device());
  return interpolate_fwd_cpu(attr, rast, faces);
}

// Validates and dispatches interpolate's backward pass.
inline std::vector<at::Tensor> interpolate_bwd(const at::Tensor& grad_out, const at::Tensor& attr,
                                               const at::Tensor& rast, const at::Tensor& faces) {
  checks::interpolate_bwd(grad_out, attr, rast, faces);
  if (attr.is_cuda()) {
#ifdef WITH_CUDA
    return interpolate_bwd_cuda(grad_out, attr, rast, faces);
#else
    TORCH_CHECK(false, "jr2net was not compiled with CUDA: cannot interpolate a CUDA tensor");
#endif
  }
  return interpolate_bwd_cpu(grad_out, attr, rast, faces);
}

// Kernel parameters from (validated) tensors, shared by the CPU and CUDA glue; the caller sets the
// output / gradient pointers.
template <typename T>
interp::InterpParams<T> interpolate_params(const at::Tensor& attr, const at::Tensor& rast,
                                           const at::Tensor& faces) {
  interp::InterpParams<T> p{};
  p.attr = attr.data_ptr<T>();
  p.rast = rast.data_ptr<T>();
  p.faces = faces.data_ptr<int32_t>();
  p.B = static_cast<int>(rast.size(0));
  p.V = static_cast<int>(attr.size(1));
  p.F = static_cast<int>(faces.size(0));
  p.H = static_cast<int>(rast.size(1));
  p.W = static_cast<int>(rast.size(2));
  p.C = static_cast<int>(attr.size(2));
  p.attr_batched = attr.size(0) != 1 || rast.size(0) == 1;
  return p;
}

}  // namespace jr2net
