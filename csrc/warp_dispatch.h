// Tensor-level API of depth_warp / correspondence_warp: CPU/CUDA backend declarations, the
// dispatchers csrc/bindings.cpp exposes (inputs validated by csrc/checks.h) and the kernel-parameter
// builders shared by the CPU and CUDA glue. Maths: csrc/ops/warp.h. Light ATen headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <tuple>

#include "checks.h"
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

// Validates the inputs (checks.h) of either warp.
inline void warp_validate(const WarpInputs& in) {
  checks::warp_inputs(in.depth, in.src, in.K_src, in.src_depth, in.dst_depth, in.K_dst,
                      in.src_T_dst, in.points, in.valid, in.rel_eps);
}

inline bool warp_on_cuda(const WarpInputs& in) {
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

inline std::tuple<at::Tensor, at::Tensor> warp_forward(const WarpInputs& in) {
  warp_validate(in);
#ifdef WITH_CUDA
  if (warp_on_cuda(in)) return warp_fwd_cuda(in);
#else
  warp_on_cuda(in);
#endif
  return warp_fwd_cpu(in);
}

inline std::tuple<at::Tensor, at::Tensor> warp_backward(const WarpInputs& in,
                                                        const at::Tensor& grad_warped,
                                                        bool need_src, bool need_geometry) {
  warp_validate(in);
  const int64_t Ht = in.depth ? in.dst_depth.size(2) : in.points.size(1);
  const int64_t Wt = in.depth ? in.dst_depth.size(3) : in.points.size(2);
  checks::warp_grad(in.depth, grad_warped, in.src, Ht, Wt);
#ifdef WITH_CUDA
  if (warp_on_cuda(in)) return warp_bwd_cuda(in, grad_warped, need_src, need_geometry);
#else
  warp_on_cuda(in);
#endif
  return warp_bwd_cpu(in, grad_warped, need_src, need_geometry);
}

inline WarpInputs depth_warp_inputs(const at::Tensor& src, const at::Tensor& dst_depth,
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

inline WarpInputs correspondence_warp_inputs(const at::Tensor& src,
                                             const at::Tensor& points_src,
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

// depth_warp (seed Eq. 2): warp src into the target view given the target depth. -> (warped, covisible)
inline std::tuple<at::Tensor, at::Tensor> depth_warp_fwd(const at::Tensor& src,
                                                         const at::Tensor& dst_depth,
                                                         const at::Tensor& K_src,
                                                         const at::Tensor& K_dst,
                                                         const at::Tensor& src_T_dst,
                                                         const std::optional<at::Tensor>& src_depth,
                                                         double rel_eps) {
  return warp_forward(
      depth_warp_inputs(src, dst_depth, K_src, K_dst, src_T_dst, src_depth, rel_eps));
}

// -> (grad_src, grad_dst_depth), undefined where not requested.
inline std::tuple<at::Tensor, at::Tensor> depth_warp_bwd(
    const at::Tensor& grad_warped, const at::Tensor& src, const at::Tensor& dst_depth,
    const at::Tensor& K_src, const at::Tensor& K_dst, const at::Tensor& src_T_dst,
    const std::optional<at::Tensor>& src_depth, double rel_eps, bool need_src, bool need_depth) {
  return warp_backward(
      depth_warp_inputs(src, dst_depth, K_src, K_dst, src_T_dst, src_depth, rel_eps),
      grad_warped, need_src, need_depth);
}

// correspondence_warp: warp src to target pixels whose source-frame 3D points are known.
inline std::tuple<at::Tensor, at::Tensor> correspondence_warp_fwd(
    const at::Tensor& src, const at::Tensor& points_src, const at::Tensor& valid,
    const at::Tensor& K_src, const std::optional<at::Tensor>& src_depth, double rel_eps) {
  return warp_forward(
      correspondence_warp_inputs(src, points_src, valid, K_src, src_depth, rel_eps));
}

// -> (grad_src, grad_points_src), undefined where not requested.
inline std::tuple<at::Tensor, at::Tensor> correspondence_warp_bwd(
    const at::Tensor& grad_warped, const at::Tensor& src, const at::Tensor& points_src,
    const at::Tensor& valid, const at::Tensor& K_src, const std::optional<at::Tensor>& src_depth,
    double rel_eps, bool need_src, bool need_points) {
  return warp_backward(
      correspondence_warp_inputs(src, points_src, valid, K_src, src_depth, rel_eps),
      grad_warped, need_src, need_points);
}

// Kernel parameters from (validated) inputs, shared by the CPU and CUDA glue; the caller sets the
// output / gradient pointers.
template <typename T>
warp::WarpParams<T> warp_params(const WarpInputs& in) {
  warp::WarpParams<T> P;
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
