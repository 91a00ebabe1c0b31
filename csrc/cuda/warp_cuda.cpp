// Tensor glue of the CUDA warp kernels (built only WITH_CUDA): allocates outputs, fills the param
// struct and calls the launchers in warp.cu on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ops/warp.h"
#include "warp_dispatch.h"

namespace jr2net {

std::tuple<at::Tensor, at::Tensor> warp_fwd_cuda(const WarpInputs& in) {
  const c10::cuda::CUDAGuard guard(in.src.device());
  const at::Tensor& src = in.src;
  const int64_t Ht = in.depth ? in.dst_depth.size(2) : in.points.size(1);
  const int64_t Wt = in.depth ? in.dst_depth.size(3) : in.points.size(2);
  at::Tensor warped = at::empty({src.size(0), src.size(1), Ht, Wt}, src.options());
  at::Tensor covisible = at::empty({src.size(0), 1, Ht, Wt}, src.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "warp_fwd_cuda", [&] {
    warp::WarpParams<scalar_t> P = warp_params<scalar_t>(in);
    P.warped = warped.data_ptr<scalar_t>();
    P.covisible = covisible.data_ptr<scalar_t>();
    warp::launch_warp_fwd(P, in.depth, stream);
  });
  C10_CUDA_CHECK(cudaGetLastError());
  return {warped, covisible};
}

std::tuple<at::Tensor, at::Tensor> warp_bwd_cuda(const WarpInputs& in,
                                                 const at::Tensor& grad_warped, bool need_src,
                                                 bool need_geometry) {
  const c10::cuda::CUDAGuard guard(in.src.device());
  at::Tensor grad_src, grad_geo;
  if (need_src) grad_src = at::zeros(in.src.sizes(), in.src.options());
  if (need_geometry) {
    const at::Tensor& geo = in.depth ? in.dst_depth : in.points;
    grad_geo = at::empty(geo.sizes(), geo.options());
  }
  if (!need_src && !need_geometry) return {grad_src, grad_geo};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(in.src.scalar_type(), "warp_bwd_cuda", [&] {
    warp::WarpParams<scalar_t> P = warp_params<scalar_t>(in);
    P.grad_warped = grad_warped.data_ptr<scalar_t>();
    if (need_src) P.grad_src = grad_src.data_ptr<scalar_t>();
    if (need_geometry && in.depth) P.grad_dst_depth = grad_geo.data_ptr<scalar_t>();
    if (need_geometry && !in.depth) P.grad_points = grad_geo.data_ptr<scalar_t>();
    warp::launch_warp_bwd(P, in.depth, stream);
  });
  C10_CUDA_CHECK(cudaGetLastError());
  return {grad_src, grad_geo};
}

}  // namespace jr2net
