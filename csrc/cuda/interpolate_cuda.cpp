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

#include "interpolate.h"
#include "ops/interpolate.h"

namespace jr2net {

namespace {

template <typename scalar_t>
interp::InterpParams<scalar_t> make_params(const at::Tensor& attr, const at::Tensor& rast,
                                           const at::Tensor& faces) {
  interp::InterpParams<scalar_t> p{};
  p.attr = attr.data_ptr<scalar_t>();
  p.rast = rast.data_ptr<scalar_t>();
  p.faces = faces.data_ptr<int32_t>();
  p.B = static_cast<int>(rast.size(0));
  p.V = static_cast<int>(attr.size(1));
  p.F = static_cast<int>(faces.size(0));
  p.H = static_cast<int>(rast.size(1));
  p.W = static_cast<int>(rast.size(2));
  p.C = static_cast<int>(attr.size(2));
  p.attr_batched = attr.size(0) != 1 || rast.size(0) == 1;
  p.bad_face = nullptr;
  return p;
}

}  // namespace

at::Tensor interpolate_fwd_cuda(const at::Tensor& attr, const at::Tensor& rast,
                                const at::Tensor& faces) {
  const c10::cuda::CUDAGuard guard(attr.device());
  check_faces_range_cuda(faces, attr.size(1));
  at::Tensor out =
      at::empty({rast.size(0), rast.size(1), rast.size(2), attr.size(2)}, attr.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(attr.scalar_type(), "interpolate_fwd_cuda", [&] {
    auto p = make_params<scalar_t>(attr, rast, faces);
    p.out = out.data_ptr<scalar_t>();
    interp::launch_interpolate_fwd(p, stream);
  });
  C10_CUDA_CHECK(cudaGetLastError());
  return out;
}

std::vector<at::Tensor> interpolate_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& attr,
                                             const at::Tensor& rast, const at::Tensor& faces) {
  const c10::cuda::CUDAGuard guard(attr.device());
  check_faces_range_cuda(faces, attr.size(1));
  at::Tensor grad_attr = at::zeros_like(attr);
  at::Tensor grad_rast = at::empty_like(rast);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(attr.scalar_type(), "interpolate_bwd_cuda", [&] {
    auto p = make_params<scalar_t>(attr, rast, faces);
    p.grad_out = grad_out.data_ptr<scalar_t>();
    p.grad_attr = grad_attr.data_ptr<scalar_t>();
    p.grad_rast = grad_rast.data_ptr<scalar_t>();
    interp::launch_interpolate_bwd(p, stream);
  });
  C10_CUDA_CHECK(cudaGetLastError());
  return {grad_attr, grad_rast};
}

}  // namespace jr2net
