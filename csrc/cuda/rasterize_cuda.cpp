// Tensor glue of the CUDA rasteriser (built only WITH_CUDA): allocates outputs and workspaces,
// fills the param structs and calls the launchers in rasterize.cu on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>

#include "checks.h"
#include "ops/rasterize.h"
#include "rasterize_dispatch.h"

namespace jr2net::checks {

// Face ids must index existing vertices (one device->host copy of two ints).
void faces_range_cuda(const at::Tensor& faces, int64_t V) {
  if (faces.numel() == 0) return;
  auto [lo, hi] = at::aminmax(faces);
  const at::Tensor range = at::stack({lo, hi}).cpu();
  const int32_t* r = range.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(r[0] >= 0 && r[1] < V, "faces: vertex ids must be in [0, ", V,
                    "), got range [", r[0], ", ", r[1], "]");
}

}  // namespace jr2net::checks

namespace jr2net {

at::Tensor rasterize_fwd_cuda(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& K,
                              int64_t H, int64_t W, bool cull_backfaces, double near_z) {
  const c10::cuda::CUDAGuard guard(verts.device());
  const int64_t B = verts.size(0), V = verts.size(1);
  checks::faces_range_cuda(faces, V);
  at::Tensor rast = at::empty({B, H, W, 4}, verts.options());
  at::Tensor proj = at::empty({B, V, 3}, verts.options().dtype(at::kDouble));
  at::Tensor zbuf = at::empty({B, H, W}, verts.options().dtype(at::kLong));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "rasterize_fwd_cuda", [&] {
    auto p = rasterize_fwd_params<scalar_t>(verts, faces, K, H, W, cull_backfaces, near_z, proj,
                                            zbuf, rast);
    raster::launch_rasterize_fwd(p, stream);
  });
  C10_CUDA_CHECK(cudaGetLastError());
  return rast;
}

at::Tensor rasterize_bwd_cuda(const at::Tensor& grad_rast, const at::Tensor& verts,
                              const at::Tensor& faces, const at::Tensor& K, const at::Tensor& rast) {
  const c10::cuda::CUDAGuard guard(verts.device());
  at::Tensor grad_verts = at::zeros_like(verts);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "rasterize_bwd_cuda", [&] {
    auto p = rasterize_bwd_params<scalar_t>(grad_rast, verts, faces, K, rast, grad_verts);
    raster::launch_rasterize_bwd(p, stream);
  });
  C10_CUDA_CHECK(cudaGetLastError());
  return grad_verts;
}

}  // namespace jr2net
