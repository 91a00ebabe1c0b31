// Tensor glue of the CUDA interpolation (built only WITH_CUDA). Invalid face ids in rast are
// treated as background on CUDA (the CPU raises): checking them would need a second
// device->host sync per call. Out-of-range vertex ids in faces raise, as on the CPU.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

#include "checks.h"
#include "interpolate_dispatch.h"
#include "ops/interpolate.h"

namespace jr2net {

at::Tensor interpolate_fwd_cuda(const at::Tensor& attr, const at::Tensor& rast,
                                const at::Tensor& faces) {
  const c10::cuda::CUDAGuard guard(attr.device());
  checks::faces_range_cuda(faces, attr.size(1));
  at::Tensor out =
      at::empty({rast.size(0), rast.size(1), rast.size(2), attr.size(2)}, attr.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(attr.scalar_type(), "interpolate_fwd_cuda", [&] {
    auto p = interpolate_params<scalar_t>(attr, rast, faces);
    p.out = out.data_ptr<scalar_t>();
    interp::launch_interpolate_fwd(p, stream);
  });
  C10_CUDA_CHECK(cudaGetLastError());
  return out;
}

std::vector<at::Tensor> interpolate_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& attr,
                                             const at::Tensor& rast, const at::Tensor& faces) {
  const c10::cuda::CUDAGuard guard(attr.device());
  checks::faces_range_cuda(faces, attr.size(1));
  at::Tensor grad_attr = at::zeros_like(attr);
  at::Tensor grad_rast = at::empty_like(rast);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(attr.scalar_type(), "interpolate_bwd_cuda", [&] {
    auto p = interpolate_params<scalar_t>(attr, rast, faces);
    p.grad_out = grad_out.data_ptr<scalar_t>();
    p.grad_attr = grad_attr.data_ptr<scalar_t>();
    p.grad_rast = grad_rast.data_ptr<scalar_t>();
    interp::launch_interpolate_bwd(p, stream);
  });
  C10_CUDA_CHECK(cudaGetLastError());
  return {grad_attr, grad_rast};
}

}  // namespace jr2net
