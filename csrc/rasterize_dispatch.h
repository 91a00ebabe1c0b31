// Tensor-level rasterize API: backend entry points plus the validating dispatcher that
// jr2net._C exposes. Light ATen headers only (this file is included by bindings.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

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
// Raises ValueError unless every id in the CUDA tensor faces is in [0, V).
void check_faces_range_cuda(const at::Tensor& faces, int64_t V);
#endif

namespace raster_detail {

inline void check_float_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.defined(), name, " must be a tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

// faces: int32 [F,3], contiguous, ids in [0, V). The range check reads CPU data directly;
// CUDA faces are range-checked by the CUDA glue.
inline void check_faces(const at::Tensor& faces, int64_t V, const at::Device& device) {
  TORCH_CHECK_TYPE(faces.defined(), "faces must be a tensor");
  TORCH_CHECK_TYPE(faces.scalar_type() == at::kInt, "faces must be int32, got ",
                   faces.scalar_type());
  TORCH_CHECK_VALUE(faces.dim() == 2 && faces.size(1) == 3, "faces must have shape [F,3], got ",
                    faces.sizes());
  TORCH_CHECK_VALUE(faces.is_contiguous(), "faces must be contiguous");
  TORCH_CHECK_VALUE(faces.device() == device, "faces must be on ", device, ", got ",
                    faces.device());
  // Ids are stored as float32 (id+1) and packed into 32 bits of the depth key.
  TORCH_CHECK_VALUE(faces.size(0) < (int64_t(1) << 24), "faces: at most 2^24-1 faces supported");
  if (faces.is_cpu()) {
    const int32_t* f = faces.data_ptr<int32_t>();
    const int64_t n = faces.numel();
    int32_t lo = 0, hi = 0;
    for (int64_t k = 0; k < n; ++k) {
      lo = f[k] < lo ? f[k] : lo;
      hi = f[k] > hi ? f[k] : hi;
    }
    TORCH_CHECK_VALUE(n == 0 || (lo >= 0 && hi < V), "faces: vertex ids must be in [0, ", V,
                      "), got range [", lo, ", ", hi, "]");
  }
}

inline void check_rasterize_inputs(const at::Tensor& verts, const at::Tensor& faces,
                                   const at::Tensor& K, int64_t H, int64_t W) {
  check_float_tensor(verts, "verts_cam");
  TORCH_CHECK_VALUE(verts.dim() == 3 && verts.size(2) == 3,
                    "verts_cam must have shape [B,V,3], got ", verts.sizes());
  TORCH_CHECK_VALUE(verts.size(0) > 0, "verts_cam: batch size must be > 0");
  check_faces(faces, verts.size(1), verts.device());
  check_float_tensor(K, "K");
  TORCH_CHECK_TYPE(K.scalar_type() == verts.scalar_type(), "K must have the dtype of verts_cam (",
                   verts.scalar_type(), "), got ", K.scalar_type());
  TORCH_CHECK_VALUE(K.dim() == 3 && K.size(0) == verts.size(0) && K.size(1) == 3 &&
                        K.size(2) == 3,
                    "K must have shape [B,3,3] with B = ", verts.size(0), ", got ", K.sizes());
  TORCH_CHECK_VALUE(K.device() == verts.device(), "K must be on ", verts.device(), ", got ",
                    K.device());
  TORCH_CHECK_VALUE(H > 0 && W > 0 && H < (1 << 15) && W < (1 << 15),
                    "size must be (H, W) with 0 < H, W < 32768, got (", H, ", ", W, ")");
  TORCH_CHECK_VALUE(verts.size(1) < (int64_t(1) << 31) / 3, "verts_cam: too many vertices");
}

inline void check_rast(const at::Tensor& rast, const at::Tensor& like, const char* name) {
  check_float_tensor(rast, name);
  TORCH_CHECK_TYPE(rast.scalar_type() == like.scalar_type(), name, " must have dtype ",
                   like.scalar_type(), ", got ", rast.scalar_type());
  TORCH_CHECK_VALUE(rast.dim() == 4 && rast.size(3) == 4, name,
                    " must have shape [B,H,W,4], got ", rast.sizes());
  TORCH_CHECK_VALUE(rast.device() == like.device(), name, " must be on ", like.device(),
                    ", got ", rast.device());
}

}  // namespace raster_detail

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
  raster_detail::check_rasterize_inputs(verts, faces, K, H, W);
  TORCH_CHECK_VALUE(near_z >= 0.0, "near_z must be >= 0, got ", near_z);
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
  raster_detail::check_float_tensor(verts, "verts_cam");
  raster_detail::check_rast(rast, verts, "rast");
  raster_detail::check_rast(grad_rast, verts, "grad_rast");
  raster_detail::check_rasterize_inputs(verts, faces, K, rast.size(1), rast.size(2));
  TORCH_CHECK_VALUE(rast.sizes() == grad_rast.sizes() && rast.size(0) == verts.size(0),
                    "grad_rast and rast must have shape [B,H,W,4] matching verts_cam");
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
