// Tensor-level API of rasterize: CPU/CUDA backend declarations, the dispatchers
// csrc/bindings.cpp exposes (inputs validated by csrc/checks.h) and the kernel-parameter
// builders shared by the CPU and CUDA glue. Maths: csrc/ops/rasterize.h. Light ATen headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "checks.h"
#include "ops/rasterize.h"

namespace jr2net {

// Vertices with camera z <= this (scene units) invalidate their triangles, which are dropped.
constexpr double kDefaultNearZ = 1e-3;

at::Tensor rasterize_fwd_cpu(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& K,
                             int64_t H, int64_t W, bool cull_backfaces, double near_z);
at::Tensor rasterize_bwd_cpu(const at::Tensor& grad_rast, const at::Tensor& verts,
                             const at::Tensor& faces, const at::Tensor& K, const at::Tensor& rast);
#ifdef WITH_CUDA
at::Tensor rasterize_fwd_cuda(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& K,
                              int64_t H, int64_t W, bool cull_backfaces, double near_z);
at::Tensor rasterize_bwd_cuda(const at::Tensor& grad_rast, const at::Tensor& verts,
                              const at::Tensor& faces, const at::Tensor& K, const at::Tensor& rast);
#endif

// Kernel parameters from (validated) tensors: one builder per pass, shared by the CPU and CUDA glue.
template <typename T>
raster::RasterFwdParams<T, double> rasterize_fwd_params(const at::Tensor& verts,
                                                        const at::Tensor& faces,
                                                        const at::Tensor& K, int64_t H, int64_t W,
                                                        bool cull_backfaces, double near_z,
                                                        at::Tensor& proj, at::Tensor& zbuf,
                                                        at::Tensor& rast) {
  raster::RasterFwdParams<T, double> p;
  p.verts = verts.data_ptr<T>();
  p.faces = faces.data_ptr<int32_t>();
  p.K = K.data_ptr<T>();
  p.B = static_cast<int>(verts.size(0));
  p.V = static_cast<int>(verts.size(1));
  p.F = static_cast<int>(faces.size(0));
  p.H = static_cast<int>(H);
  p.W = static_cast<int>(W);
  p.cull_backfaces = cull_backfaces;
  p.near_z = near_z;
  p.proj = proj.data_ptr<double>();
  p.zbuf = reinterpret_cast<unsigned long long*>(zbuf.data_ptr<int64_t>());
  p.rast = rast.data_ptr<T>();
  return p;
}

template <typename T>
raster::RasterBwdParams<T> rasterize_bwd_params(const at::Tensor& grad_rast,
                                                const at::Tensor& verts, const at::Tensor& faces,
                                                const at::Tensor& K, const at::Tensor& rast,
                                                at::Tensor& grad_verts) {
  raster::RasterBwdParams<T> p;
  p.verts = verts.data_ptr<T>();
  p.faces = faces.data_ptr<int32_t>();
  p.K = K.data_ptr<T>();
  p.rast = rast.data_ptr<T>();
  p.grad_rast = grad_rast.data_ptr<T>();
  p.B = static_cast<int>(verts.size(0));
  p.V = static_cast<int>(verts.size(1));
  p.F = static_cast<int>(faces.size(0));
  p.H = static_cast<int>(rast.size(1));
  p.W = static_cast<int>(rast.size(2));
  p.grad_verts = grad_verts.data_ptr<T>();
  return p;
}

// Validates and dispatches the forward pass (see DESIGN §4 and csrc/ops/rasterize.h).
inline at::Tensor rasterize_fwd(const at::Tensor& verts, const at::Tensor& faces,
                                const at::Tensor& K, int64_t H, int64_t W, bool cull_backfaces,
                                double near_z) {
  checks::rasterize_fwd(verts, faces, K, H, W, near_z);
  if (verts.is_cuda()) {
#ifdef WITH_CUDA
    return rasterize_fwd_cuda(verts, faces, K, H, W, cull_backfaces, near_z);
#else
    TORCH_CHECK(false, "jr2net was not compiled with CUDA: cannot rasterize a CUDA tensor");
#endif
  }
  TORCH_CHECK_VALUE(verts.is_cpu(), "verts_cam must be a CPU or CUDA tensor, got ",
                    verts.device());
  return rasterize_fwd_cpu(verts, faces, K, H, W, cull_backfaces, near_z);
}

// Gradient w.r.t. verts_cam from grad_rast[..., 0:3] (u, v and z are differentiable).
inline at::Tensor rasterize_bwd(const at::Tensor& grad_rast, const at::Tensor& verts,
                                const at::Tensor& faces, const at::Tensor& K,
                                const at::Tensor& rast) {
  checks::rasterize_bwd(grad_rast, verts, faces, K, rast);
  if (verts.is_cuda()) {
#ifdef WITH_CUDA
    return rasterize_bwd_cuda(grad_rast, verts, faces, K, rast);
#else
    TORCH_CHECK(false, "jr2net was not compiled with CUDA: cannot rasterize a CUDA tensor");
#endif
  }
  return rasterize_bwd_cpu(grad_rast, verts, faces, K, rast);
}

}  // namespace jr2net
