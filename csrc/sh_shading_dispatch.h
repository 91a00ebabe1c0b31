// Tensor-level API of sh_shading: CPU/CUDA backend declarations, the dispatchers
// csrc/bindings.cpp exposes (inputs validated by csrc/checks.h) and the kernel-parameter
// builders shared by the CPU and CUDA glue. Maths: csrc/ops/sh_shading.h. Light ATen headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "checks.h"
#include "ops/sh_shading.h"

namespace jr2net {

using ShGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

std::tuple<at::Tensor, at::Tensor> sh_shading_fwd_cpu(const at::Tensor& normals,
                                                      const at::Tensor& albedo,
                                                      const at::Tensor& sh,
                                                      const std::optional<at::Tensor>& mask);
// Returns (grad_normals, grad_albedo, grad_sh, grad_mask); undefined where needs[i] is false.
ShGrads sh_shading_bwd_cpu(const std::optional<at::Tensor>& grad_image,
                           const std::optional<at::Tensor>& grad_irradiance,
                           const at::Tensor& normals, const at::Tensor& albedo,
                           const at::Tensor& sh, const std::optional<at::Tensor>& mask,
                           std::array<bool, 4> needs);
#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> sh_shading_fwd_cuda(const at::Tensor& normals,
                                                       const at::Tensor& albedo,
                                                       const at::Tensor& sh,
                                                       const std::optional<at::Tensor>& mask);
ShGrads sh_shading_bwd_cuda(const std::optional<at::Tensor>& grad_image,
                            const std::optional<at::Tensor>& grad_irradiance,
                            const at::Tensor& normals, const at::Tensor& albedo,
                            const at::Tensor& sh, const std::optional<at::Tensor>& mask,
                            std::array<bool, 4> needs);
#endif

// image = albedo ⊙ irradiance, irradiance = mask · Σ_b sh_b H_b(normals); see ops/sh_shading.h.
inline std::tuple<at::Tensor, at::Tensor> sh_shading_fwd(const at::Tensor& normals,
                                                         const at::Tensor& albedo,
                                                         const at::Tensor& sh,
                                                         const std::optional<at::Tensor>& mask) {
  checks::sh_shading_inputs(normals, albedo, sh, mask);
  if (normals.is_cuda()) {
#ifdef WITH_CUDA
    return sh_shading_fwd_cuda(normals, albedo, sh, mask);
#else
    TORCH_CHECK_VALUE(false, "sh_shading: jr2net was not compiled with CUDA; got CUDA tensors");
#endif
  }
  TORCH_CHECK_VALUE(normals.is_cpu(), "sh_shading: unsupported device ", normals.device());
  return sh_shading_fwd_cpu(normals, albedo, sh, mask);
}

inline ShGrads sh_shading_bwd(const std::optional<at::Tensor>& grad_image,
                              const std::optional<at::Tensor>& grad_irradiance,
                              const at::Tensor& normals, const at::Tensor& albedo,
                              const at::Tensor& sh, const std::optional<at::Tensor>& mask,
                              std::array<bool, 4> needs) {
  checks::sh_shading_bwd(grad_image, grad_irradiance, normals, albedo, sh, mask, needs[3]);
  if (normals.is_cuda()) {
#ifdef WITH_CUDA
    return sh_shading_bwd_cuda(grad_image, grad_irradiance, normals, albedo, sh, mask, needs);
#else
    TORCH_CHECK_VALUE(false, "sh_shading: jr2net was not compiled with CUDA; got CUDA tensors");
#endif
  }
  TORCH_CHECK_VALUE(normals.is_cpu(), "sh_shading: unsupported device ", normals.device());
  return sh_shading_bwd_cpu(grad_image, grad_irradiance, normals, albedo, sh, mask, needs);
}

// Kernel parameters from (validated) tensors, shared by the CPU and CUDA glue. Undefined tensors
// (absent mask or incoming grads, unrequested outgoing grads) become null pointers.
template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
shading::ShShadingParams<T> sh_shading_fwd_params(const at::Tensor& normals,
                                                  const at::Tensor& albedo, const at::Tensor& sh,
                                                  const std::optional<at::Tensor>& mask,
                                                  at::Tensor& image, at::Tensor& irradiance) {
  shading::ShShadingParams<T> P;
  P.normals = normals.data_ptr<T>();
  P.albedo = albedo.data_ptr<T>();
  P.sh = sh.data_ptr<T>();
  P.mask = mask ? mask->data_ptr<T>() : nullptr;
  P.image = image.data_ptr<T>();
  P.irradiance = irradiance.data_ptr<T>();
  P.B = normals.size(0);
  P.HW = normals.size(2) * normals.size(3);
  return P;
}

// grads: (normals, albedo, sh, mask) outputs, each undefined when not written.
template <typename T>
shading::ShShadingBackwardParams<T> sh_shading_bwd_params(
    const std::optional<at::Tensor>& grad_image, const std::optional<at::Tensor>& grad_irradiance,
    const at::Tensor& normals, const at::Tensor& albedo, const at::Tensor& sh,
    const std::optional<at::Tensor>& mask, const std::array<at::Tensor, 4>& grads) {
  shading::ShShadingBackwardParams<T> P;
  P.normals = normals.data_ptr<T>();
  P.albedo = albedo.data_ptr<T>();
  P.sh = sh.data_ptr<T>();
  P.mask = mask ? mask->data_ptr<T>() : nullptr;
  P.grad_image = grad_image ? grad_image->data_ptr<T>() : nullptr;
  P.grad_irr = grad_irradiance ? grad_irradiance->data_ptr<T>() : nullptr;
  P.grad_normals = data_or_null<T>(grads[0]);
  P.grad_albedo = data_or_null<T>(grads[1]);
  P.grad_sh = data_or_null<T>(grads[2]);
  P.grad_mask = data_or_null<T>(grads[3]);
  P.B = normals.size(0);
  P.HW = normals.size(2) * normals.size(3);
  return P;
}

}  // namespace jr2net
