// Input validators of every op's tensor API (csrc/<op>_dispatch.h calls them before dispatching to
// a backend). Failures raise TypeError (wrong kind of tensor) or ValueError (wrong shape, device,
// layout or value) in Python, naming the argument. Light ATen headers only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <optional>

namespace jr2net::checks {

// ---- building blocks ------------------------------------------------------------------------

// A defined, contiguous float32/float64 tensor (messages name only the argument).
inline void float_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.defined(), name, " must be a tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

// The leading tensor of an op is float32 or float64 (messages are prefixed "op: ").
inline void floating(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ",
                   name, " must be float32 or float64, got ", t.scalar_type());
}

// A contiguous tensor with the dtype and device of `like` (named like_name in messages) and the
// given sizes (-1: any); messages are prefixed "op: ".
inline void like(const char* op, const at::Tensor& t, const char* name, const at::Tensor& like,
                 const char* like_name, std::initializer_list<int64_t> sizes) {
  TORCH_CHECK_TYPE(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have dtype ",
                   like.scalar_type(), " (like ", like_name, "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " must be on ", like.device(),
                    " (like ", like_name, "), got ", t.device());
  TORCH_CHECK_VALUE(t.dim() == static_cast<int64_t>(sizes.size()), op, ": ", name, " must have ",
                    sizes.size(), " dims, got shape ", t.sizes());
  int64_t d = 0;
  for (int64_t s : sizes) {
    TORCH_CHECK_VALUE(s < 0 || t.size(d) == s, op, ": ", name, " has shape ", t.sizes(),
                      ", expected size ", s, " in dim ", d);
    ++d;
  }
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// faces: int32 [F,3], contiguous, ids in [0, V). The range check reads CPU data directly; CUDA
// faces are range-checked by faces_range_cuda in the CUDA glue.
inline void faces(const at::Tensor& faces, int64_t V, const at::Device& device) {
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

#ifdef WITH_CUDA
// Raises ValueError unless every id in the CUDA tensor faces is in [0, V) (one device->host copy;
// defined in csrc/cuda/rasterize_cuda.cpp).
void faces_range_cuda(const at::Tensor& faces, int64_t V);
#endif

// A rasterisation [B,H,W,4] with the dtype and device of `like`.
inline void rast(const at::Tensor& rast, const at::Tensor& like, const char* name) {
  float_tensor(rast, name);
  TORCH_CHECK_TYPE(rast.scalar_type() == like.scalar_type(), name, " must have dtype ",
                   like.scalar_type(), ", got ", rast.scalar_type());
  TORCH_CHECK_VALUE(rast.dim() == 4 && rast.size(3) == 4, name,
                    " must have shape [B,H,W,4], got ", rast.sizes());
  TORCH_CHECK_VALUE(rast.device() == like.device(), name, " must be on ", like.device(),
                    ", got ", rast.device());
}

// ---- rasterize ------------------------------------------------------------------------------

inline void rasterize_inputs(const at::Tensor& verts, const at::Tensor& faces_t,
                             const at::Tensor& K, int64_t H, int64_t W) {
  float_tensor(verts, "verts_cam");
  TORCH_CHECK_VALUE(verts.dim() == 3 && verts.size(2) == 3,
                    "verts_cam must have shape [B,V,3], got ", verts.sizes());
  TORCH_CHECK_VALUE(verts.size(0) > 0, "verts_cam: batch size must be > 0");
  faces(faces_t, verts.size(1), verts.device());
  float_tensor(K, "K");
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

inline void rasterize_fwd(const at::Tensor& verts, const at::Tensor& faces_t, const at::Tensor& K,
                          int64_t H, int64_t W, double near_z) {
  rasterize_inputs(verts, faces_t, K, H, W);
  TORCH_CHECK_VALUE(near_z >= 0.0, "near_z must be >= 0, got ", near_z);
}

inline void rasterize_bwd(const at::Tensor& grad_rast, const at::Tensor& verts,
                          const at::Tensor& faces_t, const at::Tensor& K,
                          const at::Tensor& rast_t) {
  float_tensor(verts, "verts_cam");
  rast(rast_t, verts, "rast");
  rast(grad_rast, verts, "grad_rast");
  rasterize_inputs(verts, faces_t, K, rast_t.size(1), rast_t.size(2));
  TORCH_CHECK_VALUE(rast_t.sizes() == grad_rast.sizes() && rast_t.size(0) == verts.size(0),
                    "grad_rast and rast must have shape [B,H,W,4] matching verts_cam");
}

// ---- interpolate ----------------------------------------------------------------------------

inline void interpolate_inputs(const at::Tensor& attr, const at::Tensor& rast_t,
                               const at::Tensor& faces_t) {
  float_tensor(attr, "attr");
  TORCH_CHECK_VALUE(attr.dim() == 3, "attr must have shape [B,V,C] or [1,V,C], got ",
                    attr.sizes());
  TORCH_CHECK_VALUE(attr.size(2) > 0, "attr must have at least one channel");
  rast(rast_t, attr, "rast");
  TORCH_CHECK_VALUE(rast_t.is_contiguous(), "rast must be contiguous");
  TORCH_CHECK_VALUE(attr.size(0) == 1 || attr.size(0) == rast_t.size(0),
                    "attr batch size must be 1 or match rast (", rast_t.size(0), "), got ",
                    attr.size(0));
  faces(faces_t, attr.size(1), attr.device());
}

inline void interpolate_bwd(const at::Tensor& grad_out, const at::Tensor& attr,
                            const at::Tensor& rast_t, const at::Tensor& faces_t) {
  interpolate_inputs(attr, rast_t, faces_t);
  float_tensor(grad_out, "grad_out");
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == rast_t.size(0) &&
                        grad_out.size(1) == rast_t.size(1) && grad_out.size(2) == rast_t.size(2) &&
                        grad_out.size(3) == attr.size(2),
                    "grad_out must have shape [B,H,W,C], got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == attr.scalar_type(), "grad_out must have dtype ",
                   attr.scalar_type());
}

// ---- sh_shading -----------------------------------------------------------------------------

inline void sh_shading_inputs(const at::Tensor& normals, const at::Tensor& albedo,
                              const at::Tensor& sh, const std::optional<at::Tensor>& mask) {
  constexpr const char* op = "sh_shading";
  floating(op, normals, "normals");
  TORCH_CHECK_VALUE(normals.dim() == 4 && normals.size(1) == 3,
                    "sh_shading: normals must have shape [B,3,H,W], got ", normals.sizes());
  const int64_t B = normals.size(0), H = normals.size(2), W = normals.size(3);
  like(op, normals, "normals", normals, "normals", {B, 3, H, W});
  like(op, albedo, "albedo", normals, "normals", {B, 3, H, W});
  like(op, sh, "sh", normals, "normals", {B, 9, 3});
  if (mask) like(op, *mask, "mask", normals, "normals", {B, 1, H, W});
}

inline void sh_shading_bwd(const std::optional<at::Tensor>& grad_image,
                           const std::optional<at::Tensor>& grad_irradiance,
                           const at::Tensor& normals, const at::Tensor& albedo,
                           const at::Tensor& sh, const std::optional<at::Tensor>& mask,
                           bool need_mask) {
  constexpr const char* op = "sh_shading";
  sh_shading_inputs(normals, albedo, sh, mask);
  const int64_t B = normals.size(0), H = normals.size(2), W = normals.size(3);
  if (grad_image) like(op, *grad_image, "grad_image", normals, "normals", {B, 3, H, W});
  if (grad_irradiance) {
    like(op, *grad_irradiance, "grad_irradiance", normals, "normals", {B, 3, H, W});
  }
  TORCH_CHECK_VALUE(!need_mask || mask, "sh_shading: grad of mask requested without a mask");
}

// ---- depth_warp / correspondence_warp -------------------------------------------------------

// depth: depth_warp (dst_depth, K_dst, src_T_dst are used) or correspondence_warp (points, valid).
inline void warp_inputs(bool depth, const at::Tensor& src, const at::Tensor& K_src,
                        const std::optional<at::Tensor>& src_depth, const at::Tensor& dst_depth,
                        const at::Tensor& K_dst, const at::Tensor& src_T_dst,
                        const at::Tensor& points, const at::Tensor& valid, double rel_eps) {
  const char* op = depth ? "depth_warp" : "correspondence_warp";
  floating(op, src, "src");
  TORCH_CHECK_VALUE(src.dim() == 4, op, ": src must have shape [B,C,Hs,Ws], got ", src.sizes());
  const int64_t B = src.size(0), C = src.size(1), Hs = src.size(2), Ws = src.size(3);
  TORCH_CHECK_VALUE(Hs > 0 && Ws > 0, op, ": src must have a non-empty image, got ", src.sizes());
  like(op, src, "src", src, "src", {B, C, Hs, Ws});
  like(op, K_src, "K_src", src, "src", {B, 3, 3});
  if (src_depth) like(op, *src_depth, "src_depth", src, "src", {B, 1, Hs, Ws});
  if (depth) {
    TORCH_CHECK_VALUE(dst_depth.dim() == 4, op, ": dst_depth must have shape [B,1,Ht,Wt], got ",
                      dst_depth.sizes());
    like(op, dst_depth, "dst_depth", src, "src", {B, 1, -1, -1});
    like(op, K_dst, "K_dst", src, "src", {B, 3, 3});
    like(op, src_T_dst, "src_T_dst", src, "src", {B, 4, 4});
  } else {
    TORCH_CHECK_VALUE(points.dim() == 4, op, ": points_src must have shape [B,Ht,Wt,3], got ",
                      points.sizes());
    like(op, points, "points_src", src, "src", {B, -1, -1, 3});
    like(op, valid, "valid", src, "src", {B, 1, points.size(1), points.size(2)});
  }
  TORCH_CHECK_VALUE(std::isfinite(rel_eps) && rel_eps >= 0, op,
                    ": rel_eps must be finite and >= 0, got ", rel_eps);
}

// grad_warped [B,C,Ht,Wt] of a validated warp.
inline void warp_grad(bool depth, const at::Tensor& grad_warped, const at::Tensor& src, int64_t Ht,
                      int64_t Wt) {
  like(depth ? "depth_warp" : "correspondence_warp", grad_warped, "grad_warped", src, "src",
       {src.size(0), src.size(1), Ht, Wt});
}

}  // namespace jr2net::checks
