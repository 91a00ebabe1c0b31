// Tensor glue of the CUDA sh_shading kernels (built only WITH_CUDA): allocates outputs, fills the
// param structs and calls the launchers in sh_shading.cu on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ops/sh_shading.h"
#include "sh_shading_dispatch.h"

namespace jr2net {

std::tuple<at::Tensor, at::Tensor> sh_shading_fwd_cuda(const at::Tensor& normals,
                                                       const at::Tensor& albedo,
                                                       const at::Tensor& sh,
                                                       const std::optional<at::Tensor>& mask) {
  const c10::cuda::CUDAGuard guard(normals.device());
  at::Tensor image = at::empty_like(albedo);
  at::Tensor irr = at::empty_like(albedo);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(normals.scalar_type(), "sh_shading_fwd_cuda", [&] {
    auto P = sh_shading_fwd_params<scalar_t>(normals, albedo, sh, mask, image, irr);
    shading::launch_sh_shading_fwd(P, stream);
  });
  C10_CUDA_CHECK(cudaGetLastError());
  return {image, irr};
}

ShGrads sh_shading_bwd_cuda(const std::optional<at::Tensor>& grad_image,
                            const std::optional<at::Tensor>& grad_irradiance,
                            const at::Tensor& normals, const at::Tensor& albedo,
                            const at::Tensor& sh, const std::optional<at::Tensor>& mask,
                            std::array<bool, 4> needs) {
  const c10::cuda::CUDAGuard guard(normals.device());
  at::Tensor gn, ga, gm;
  at::Tensor gs = at::zeros_like(sh);  // accumulated with atomics
  if (needs[0]) gn = at::empty_like(normals);
  if (needs[1]) ga = at::empty_like(albedo);
  if (needs[3] && mask) gm = at::empty_like(*mask);
  if (!grad_image && !grad_irradiance) {  // nothing flows back: all grads are zero
    for (at::Tensor* t : {&gn, &ga, &gm}) {
      if (t->defined()) t->zero_();
    }
    return {gn, ga, needs[2] ? gs : at::Tensor(), gm};
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(normals.scalar_type(), "sh_shading_bwd_cuda", [&] {
    auto P = sh_shading_bwd_params<scalar_t>(grad_image, grad_irradiance, normals, albedo, sh,
                                             mask, {gn, ga, needs[2] ? gs : at::Tensor(), gm});
    shading::launch_sh_shading_bwd(P, stream);
  });
  C10_CUDA_CHECK(cudaGetLastError());
  return {gn, ga, needs[2] ? gs : at::Tensor(), gm};
}

}  // namespace jr2net
