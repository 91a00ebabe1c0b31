// Tensor-level API of depth_warp and correspondence_warp: CPU/CUDA declarations plus the
// validating dispatchers that csrc/bindings.cpp exposes. Semantics in csrc/ops/warp.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "ops/warp.h"

namespace jr2net {

// The inputs of either warp. depth_warp fills dst_depth/K_dst/src_T_dst, correspondence_warp
// fills points/valid; the unused ones stay undefined.
struct WarpInputs {
  at::Tensor src, K_src, dst_depth, K_dst, src_T_dst, points, valid;
  std::optional<at::Tensor> src_depth;
  double rel_eps = 0.02;
  bool depth = true;  // depth_warp (true) or correspondence_warp (false)
};

// (warped, covisible)
std::tuple<at::Tensor, at::Tensor> warp_fwd_cpu(const WarpInputs& in);
// (grad_src, grad_geometry): grad_geometry is dL/d dst_depth (depth) or dL/d points_src; either
// is undefined when not requested.
std::tuple<at::Tensor, at::Tensor> warp_bwd_cpu(const WarpInputs& in, const at::Tensor& grad_warped,
                                                bool need_src, bool need_geometry);
#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> warp_fwd_cuda(const WarpInputs& in);
std::tuple<at::Tensor, at::Tensor> warp_bwd_cuda(const WarpInputs& in,
                                                 const at::Tensor& grad_warped, bool need_src,
                                                 bool need_geometry);
#endif

namespace warp_detail {

inline void check(const char* op, const at::Tensor& t, const char* name, const at::Tensor& like,
                  std::initializer_list<int64_t> sizes) {
  TORCH_CHECK_TYPE(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have dtype ",
                   like.scalar_type(), " (like src), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " must be on ", like.device(),
                    " (like src), got ", t.device());
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

inline void validate(const WarpInputs& in) {
  const char* op = in.depth ? "depth_warp" : "correspondence_warp";
  const at::Tensor& src = in.src;
  TORCH_CHECK_TYPE(src.scalar_type() == at::kFloat || src.scalar_type() == at::kDouble, op,
                   ": src must be float32 or float64, got ", src.scalar_type());
  TORCH_CHECK_VALUE(src.dim() == 4, op, ": src must have shape [B,C,Hs,Ws], got ", src.sizes());
  const int64_t B = src.size(0), C = src.size(1), Hs = src.size(2), Ws = src.size(3);
  TORCH_CHECK_VALUE(Hs > 0 && Ws > 0, op, ": src must have a non-empty image, got ", src.sizes());
  check(op, src, "src", src, {B, C, Hs, Ws});
  check(op, in.K_src, "K_src", src, {B, 3, 3});
  if (in.src_depth) check(op, *in.src_depth, "src_depth", src, {B, 1, Hs, Ws});
  if (in.depth) {
    TORCH_CHECK_VALUE(in.dst_depth.dim() == 4, op, ": dst_depth must have shape [B,1,Ht,Wt], got ",
                      in.dst_depth.sizes());
    check(op, in.dst_depth, "dst_depth", src, {B, 1, -1, -1});
    check(op, in.K_dst, "K_dst", src, {B, 3, 3});
    check(op, in.src_T_dst, "src_T_dst", src, {B, 4, 4});
  } else {
    TORCH_CHECK_VALUE(in.points.dim() == 4, op, ": points_src must have shape [B,Ht,Wt,3], got ",
                      in.points.sizes());
    check(op, in.points, "points_src", src, {B, -1, -1, 3});
    check(op, in.valid, "valid", src, {B, 1, in.points.size(1), in.points.size(2)});
  }
  TORCH_CHECK_VALUE(std::isfinite(in.rel_eps) && in.rel_eps >= 0, op,
                    ": rel_eps must be finite and >= 0, got ", in.rel_eps);
}

inline bool on_cuda(const WarpInputs& in) {
  if (!in.src.is_cuda()) {
    TORCH_CHECK_VALUE(in.src.is_cpu(), "warp: unsupported device ", in.src.device());
    return false;
  }
#ifndef WITH_CUDA
  TORCH_CHECK_VALUE(false, in.depth ? "depth_warp" : "correspondence_warp",
                    ": jr2net was not compiled with CUDA; got CUDA tensors");
#endif
  return true;
}

inline std::tuple<at::Tensor, at::Tensor> forward(const WarpInputs& in) {
  validate(in);
#ifdef WITH_CUDA
  if (on_cuda(in)) return warp_fwd_cuda(in);
#else
  on_cuda(in);
#endif
  return warp_fwd_cpu(in);
}

inline std::tuple<at::Tensor, at::Tensor> backward(const WarpInputs& in,
                                                   const at::Tensor& grad_warped, bool need_src,
                                                   bool need_geometry) {
  validate(in);
  const at::Tensor& s = in.src;
  const int64_t Ht = in.depth ? in.dst_depth.size(2) : in.points.size(1);
  const int64_t Wt = in.depth ? in.dst_depth.size(3) : in.points.size(2);
  check(in.depth ? "depth_warp" : "correspondence_warp", grad_warped, "grad_warped", s,
        {s.size(0), s.size(1), Ht, Wt});
#ifdef WITH_CUDA
  if (on_cuda(in)) return warp_bwd_cuda(in, grad_warped, need_src, need_geometry);
#else
  on_cuda(in);
#endif
  return warp_bwd_cpu(in, grad_warped, need_src, need_geometry);
}

}  // namespace warp_detail

namespace warp_detail {
inline WarpInputs depth_inputs(const at::Tensor& src, const at::Tensor& dst_depth,
                               const at::Tensor& K_src, const at::Tensor& K_dst,
                               const at::Tensor& src_T_dst,
                               const std::optional<at::Tensor>& src_depth, double rel_eps) {
  WarpInputs in;
  in.src = src;
  in.dst_depth = dst_depth;
  in.K_src = K_src;
  in.K_dst = K_dst;
  in.src_T_dst = src_T_dst;
  in.src_depth = src_depth;
  in.rel_eps = rel_eps;
  in.depth = true;
  return in;
}

inline WarpInputs correspondence_inputs(const at::Tensor& src, const at::Tensor& points_src,
                                        const at::Tensor& valid, const at::Tensor& K_src,
                                        const std::optional<at::Tensor>& src_depth,
                                        double rel_eps) {
  WarpInputs in;
  in.src = src;
  in.points = points_src;
  in.valid = valid;
  in.K_src = K_src;
  in.src_depth = src_depth;
  in.rel_eps = rel_eps;
  in.depth = false;
  return in;
}
}  // namespace warp_detail

// depth_warp (seed Eq. 2): warp src into the target view given the target depth. -> (warped, covisible)
inline std::tuple<at::Tensor, at::Tensor> depth_warp_fwd(const at::Tensor& src,
                                                         const at::Tensor& dst_depth,
                                                         const at::Tensor& K_src,
                                                         const at::Tensor& K_dst,
                                                         const at::Tensor& src_T_dst,
                                                         const std::optional<at::Tensor>& src_depth,
                                                         double rel_eps) {
  return warp_detail::forward(
      warp_detail::depth_inputs(src, dst_depth, K_src, K_dst, src_T_dst, src_depth, rel_eps));
}

// -> (grad_src, grad_dst_depth), undefined where not requested.
inline std::tuple<at::Tensor, at::Tensor> depth_warp_bwd(
    const at::Tensor& grad_warped, const at::Tensor& src, const at::Tensor& dst_depth,
    const at::Tensor& K_src, const at::Tensor& K_dst, const at::Tensor& src_T_dst,
    const std::optional<at::Tensor>& src_depth, double rel_eps, bool need_src, bool need_depth) {
  return warp_detail::backward(
      warp_detail::depth_inputs(src, dst_depth, K_src, K_dst, src_T_dst, src_depth, rel_eps),
      grad_warped, need_src, need_depth);
}

// correspondence_warp: warp src to target pixels whose source-frame 3D points are known.
inline std::tuple<at::Tensor, at::Tensor> correspondence_warp_fwd(
    const at::Tensor& src, const at::Tensor& points_src, const at::Tensor& valid,
    const at::Tensor& K_src, const std::optional<at::Tensor>& src_depth, double rel_eps) {
  return warp_detail::forward(
      warp_detail::correspondence_inputs(src, points_src, valid, K_src, src_depth, rel_eps));
}

// -> (grad_src, grad_points_src), undefined where not requested.
inline std::tuple<at::Tensor, at::Tensor> correspondence_warp_bwd(
    const at::Tensor& grad_warped, const at::Tensor& src, const at::Tensor& points_src,
    const at::Tensor& valid, const at::Tensor& K_src, const std::optional<at::Tensor>& src_depth,
    double rel_eps, bool need_src, bool need_points) {
  return warp_detail::backward(
      warp_detail::correspondence_inputs(src, points_src, valid, K_src, src_depth, rel_eps),
      grad_warped, need_src, need_points);
}

// Kernel parameters from (validated) inputs, shared by the CPU and CUDA glue; the caller sets the
// output / gradient pointers.
template <typename T>
WarpParams<T> warp_params(const WarpInputs& in) {
  WarpParams<T> P;
  P.src = in.src.data_ptr<T>();
  P.src_depth = in.src_depth ? in.src_depth->data_ptr<T>() : nullptr;
  P.K_src = in.K_src.data_ptr<T>();
  if (in.depth) {
    P.dst_depth = in.dst_depth.data_ptr<T>();
    P.K_dst = in.K_dst.data_ptr<T>();
    P.src_T_dst = in.src_T_dst.data_ptr<T>();
    P.Ht = in.dst_depth.size(2);
    P.Wt = in.dst_depth.size(3);
  } else {
    P.points = in.points.data_ptr<T>();
    P.valid = in.valid.data_ptr<T>();
    P.Ht = in.points.size(1);
    P.Wt = in.points.size(2);
  }
  P.B = in.src.size(0);
  P.C = in.src.size(1);
  P.Hs = in.src.size(2);
  P.Ws = in.src.size(3);
  P.rel_eps = static_cast<T>(in.rel_eps);
  return P;
}

}  // namespace jr2net
