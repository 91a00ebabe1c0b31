// Tensor-level API of sh_shading: CPU/CUDA declarations plus the validating dispatchers that
// csrc/bindings.cpp exposes. Semantics in csrc/ops/sh_shading.h and DESIGN §3-§4.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

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

namespace sh_detail {

// A floating tensor of `like`'s dtype and device, contiguous, with the given sizes (-1: any).
inline void check(const at::Tensor& t, const char* name, const at::Tensor& like,
                  std::initializer_list<int64_t> sizes) {
  TORCH_CHECK_TYPE(t.defined(), "sh_shading: ", name, " is undefined");
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), "sh_shading: ", name, " must have dtype ",
                   like.scalar_type(), " (like normals), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), "sh_shading: ", name, " must be on ",
                    like.device(), " (like normals), got ", t.device());
  TORCH_CHECK_VALUE(t.dim() == static_cast<int64_t>(sizes.size()), "sh_shading: ", name,
                    " must have ", sizes.size(), " dims, got shape ", t.sizes());
  int64_t d = 0;
  for (int64_t s : sizes) {
    TORCH_CHECK_VALUE(s < 0 || t.size(d) == s, "sh_shading: ", name, " has shape ", t.sizes(),
                      ", expected size ", s, " in dim ", d);
    ++d;
  }
  TORCH_CHECK_VALUE(t.is_contiguous(), "sh_shading: ", name, " must be contiguous");
}

inline void validate(const at::Tensor& normals, const at::Tensor& albedo, const at::Tensor& sh,
                     const std::optional<at::Tensor>& mask) {
  TORCH_CHECK_TYPE(normals.scalar_type() == at::kFloat || normals.scalar_type() == at::kDouble,
                   "sh_shading: normals must be float32 or float64, got ", normals.scalar_type());
  TORCH_CHECK_VALUE(normals.dim() == 4 && normals.size(1) == 3,
                    "sh_shading: normals must have shape [B,3,H,W], got ", normals.sizes());
  const int64_t B = normals.size(0), H = normals.size(2), W = normals.size(3);
  check(normals, "normals", normals, {B, 3, H, W});
  check(albedo, "albedo", normals, {B, 3, H, W});
  check(sh, "sh", normals, {B, 9, 3});
  if (mask) check(*mask, "mask", normals, {B, 1, H, W});
}

}  // namespace sh_detail

// image = albedo ⊙ irradiance, irradiance = mask · Σ_b sh_b H_b(normals); see ops/sh_shading.h.
inline std::tuple<at::Tensor, at::Tensor> sh_shading_fwd(const at::Tensor& normals,
                                                         const at::Tensor& albedo,
                                                         const at::Tensor& sh,
                                                         const std::optional<at::Tensor>& mask) {
  sh_detail::validate(normals, albedo, sh, mask);
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
  sh_detail::validate(normals, albedo, sh, mask);
  const int64_t B = normals.size(0), H = normals.size(2), W = normals.size(3);
  if (grad_image) sh_detail::check(*grad_image, "grad_image", normals, {B, 3, H, W});
  if (grad_irradiance) sh_detail::check(*grad_irradiance, "grad_irradiance", normals, {B, 3, H, W});
  TORCH_CHECK_VALUE(!needs[3] || mask, "sh_shading: grad of mask requested without a mask");
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
ShShadingParams<T> sh_shading_fwd_params(const at::Tensor& normals, const at::Tensor& albedo,
                                         const at::Tensor& sh,
                                         const std::optional<at::Tensor>& mask,
                                         at::Tensor& image, at::Tensor& irradiance) {
  ShShadingParams<T> P;
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
ShShadingBackwardParams<T> sh_shading_bwd_params(const std::optional<at::Tensor>& grad_image,
                                                 const std::optional<at::Tensor>& grad_irradiance,
                                                 const at::Tensor& normals,
                                                 const at::Tensor& albedo, const at::Tensor& sh,
                                                 const std::optional<at::Tensor>& mask,
                                                 const std::array<at::Tensor, 4>& grads) {
  ShShadingBackwardParams<T> P;
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
