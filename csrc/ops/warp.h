// View-synthesis warps shared by the CPU and CUDA kernels (DESIGN §4, seed Eq. 2).
//
// Both warps reduce to one per-pixel helper, warp_sample(): a 3D point P in the source camera frame
// is projected with K_src and bilinearly sampled from the source image. depth_warp obtains P by
// back-projecting the target depth (P = src_T_dst · D_t(p_t) · K_dst⁻¹ · p_t), correspondence_warp
// reads it from points_src; everything after that is the same code, so the two cannot drift apart.
//
// Rules (the Python reference jr2net.ops.reference.depth_warp_ref mirrors them):
//  * projection q = K_src · P, (x, y) = (q0/q2, q1/q2); requires q2 > 0 (in front of the camera).
//  * pixel (row i, col j) has its centre at (x=j, y=i); the point is inside the source image when
//    its bilinear footprint is: 0 <= x <= Ws-1 and 0 <= y <= Hs-1, up to kWarpEdgeTol pixels of
//    slack so rounding cannot drop border pixels (the identity warp keeps its last column). Taps
//    x0 = clamp(floor(x), 0, Ws-2), x1 = x0+1 (x0 = x1 = 0 when Ws == 1), likewise for y;
//    fx = x - x0, so fx = 1 at the last column (the weights extrapolate by <= kWarpEdgeTol).
//  * with src_depth: all 4 taps must have depth > 0 (no mixing with the background) and the
//    bilinear source depth D_s must satisfy |z - D_s| <= rel_eps·z, z = P.z (camera-frame depth).
//  * the target pixel must be valid (dst_depth > 0, or valid > 0.5).
//  * covisible = all of the above; warped = 0 where covisible is 0.
#pragma once

#include <cstdint>

#include "ops/common.h"

namespace jr2net::warp {

// Slack (pixels) of the "inside the source image" test; see the rules above.
constexpr double kWarpEdgeTol = 1e-3;

// Parameters of both warps. Planar [B,C,H,W] images; K [B,3,3]; src_T_dst [B,4,4]; points [B,Ht,Wt,3].
template <typename T>
struct WarpParams {
  const T* src = nullptr;        // [B,C,Hs,Ws]
  const T* src_depth = nullptr;  // [B,1,Hs,Ws] or nullptr
  const T* K_src = nullptr;      // [B,3,3]
  // depth_warp only
  const T* dst_depth = nullptr;  // [B,1,Ht,Wt]
  const T* K_dst = nullptr;      // [B,3,3]
  const T* src_T_dst = nullptr;  // [B,4,4]
  // correspondence_warp only
  const T* points = nullptr;  // [B,Ht,Wt,3]
  const T* valid = nullptr;   // [B,1,Ht,Wt]
  // outputs (forward)
  T* warped = nullptr;     // [B,C,Ht,Wt]
  T* covisible = nullptr;  // [B,1,Ht,Wt]
  // backward
  const T* grad_warped = nullptr;  // [B,C,Ht,Wt]
  T* grad_src = nullptr;           // [B,C,Hs,Ws] (zeroed by the caller) or nullptr
  T* grad_dst_depth = nullptr;     // [B,1,Ht,Wt] or nullptr (depth_warp)
  T* grad_points = nullptr;        // [B,Ht,Wt,3] or nullptr (correspondence_warp)
  int64_t B = 0, C = 0, Hs = 0, Ws = 0, Ht = 0, Wt = 0;
  T rel_eps = T(0.02);
};

// Bilinear footprint of one target pixel in the source image.
template <typename T>
struct WarpSample {
  int64_t i00 = 0;  // flat index y0*Ws + x0 of the top-left tap in a source plane
  int64_t dx = 0;   // offset to the right tap (0 or 1)
  int64_t dy = 0;   // offset to the lower tap (0 or Ws)
  T fx = T(0), fy = T(0);
  T x = T(0), y = T(0), q2 = T(1);  // projection, kept for the backward
};

// Per-batch constants of depth_warp: P = d · (M · [j, i, 1]) + t with M = R · K_dst⁻¹.
template <typename T>
struct DepthWarpFrame {
  T M[9];
  T t[3];
};

template <typename T>
JR2_HD DepthWarpFrame<T> depth_warp_frame(const T* K_dst, const T* T_sd) {
  // Inverse of the 3x3 intrinsics by cofactors (works for any invertible K, skew included).
  const T a = K_dst[0], b = K_dst[1], c = K_dst[2];
  const T d = K_dst[3], e = K_dst[4], f = K_dst[5];
  const T g = K_dst[6], h = K_dst[7], k = K_dst[8];
  const T A = e * k - f * h, Bc = -(d * k - f * g), Cc = d * h - e * g;
  const T inv_det = T(1) / (a * A + b * Bc + c * Cc);
  T Ki[9];
  Ki[0] = A * inv_det;
  Ki[1] = -(b * k - c * h) * inv_det;
  Ki[2] = (b * f - c * e) * inv_det;
  Ki[3] = Bc * inv_det;
  Ki[4] = (a * k - c * g) * inv_det;
  Ki[5] = -(a * f - c * d) * inv_det;
  Ki[6] = Cc * inv_det;
  Ki[7] = -(a * h - b * g) * inv_det;
  Ki[8] = (a * e - b * d) * inv_det;
  DepthWarpFrame<T> F;
  for (int r = 0; r < 3; ++r) {
    for (int col = 0; col < 3; ++col) {
      F.M[r * 3 + col] = T_sd[r * 4 + 0] * Ki[0 * 3 + col] + T_sd[r * 4 + 1] * Ki[1 * 3 + col] +
                         T_sd[r * 4 + 2] * Ki[2 * 3 + col];
    }
    F.t[r] = T_sd[r * 4 + 3];
  }
  return F;
}

// Ray direction (scaled by depth 1) of target pixel (i, j) in the source frame: M · [j, i, 1].
template <typename T>
JR2_HD void depth_warp_ray(const DepthWarpFrame<T>& F, int64_t i, int64_t j, T* r) {
  const T u = T(j), v = T(i);
  for (int k = 0; k < 3; ++k) r[k] = F.M[k * 3 + 0] * u + F.M[k * 3 + 1] * v + F.M[k * 3 + 2];
}

// The shared per-pixel helper: project P (source camera frame) with K and find its bilinear
// footprint; returns false when the point is not covisible (behind the camera, outside the image,
// on a depth hole or occluded in the source). src_depth is this batch's depth plane or nullptr.
template <typename T>
JR2_HD bool warp_sample(const T* K, const T* P, int64_t Hs, int64_t Ws, const T* src_depth,
                        T rel_eps, WarpSample<T>& s) {
  const T q0 = K[0] * P[0] + K[1] * P[1] + K[2] * P[2];
  const T q1 = K[3] * P[0] + K[4] * P[1] + K[5] * P[2];
  const T q2 = K[6] * P[0] + K[7] * P[1] + K[8] * P[2];
  if (!(q2 > T(0))) return false;
  const T x = q0 / q2, y = q1 / q2;
  // Bounds rounded once from double, like the Python reference's scalar comparisons.
  const T lo = T(-kWarpEdgeTol), xhi = T(double(Ws - 1) + kWarpEdgeTol);
  const T yhi = T(double(Hs - 1) + kWarpEdgeTol);
  if (!(x >= lo && x <= xhi && y >= lo && y <= yhi)) return false;
  // Truncation is floor for x >= 0 and gives 0 (the clamped floor) for -tol <= x < 0.
  int64_t x0 = static_cast<int64_t>(x);
  int64_t y0 = static_cast<int64_t>(y);
  const int64_t xmax = Ws > 1 ? Ws - 2 : 0, ymax = Hs > 1 ? Hs - 2 : 0;
  x0 = x0 < xmax ? x0 : xmax;
  y0 = y0 < ymax ? y0 : ymax;
  s.i00 = y0 * Ws + x0;
  s.dx = Ws > 1 ? 1 : 0;
  s.dy = Hs > 1 ? Ws : 0;
  s.fx = x - T(x0);
  s.fy = y - T(y0);
  s.x = x;
  s.y = y;
  s.q2 = q2;
  if (src_depth) {
    const T d00 = src_depth[s.i00], d01 = src_depth[s.i00 + s.dx];
    const T d10 = src_depth[s.i00 + s.dy], d11 = src_depth[s.i00 + s.dy + s.dx];
    if (!(d00 > T(0) && d01 > T(0) && d10 > T(0) && d11 > T(0))) return false;
    const T top = d00 + s.fx * (d01 - d00);
    const T bot = d10 + s.fx * (d11 - d10);
    const T ds = top + s.fy * (bot - top);
    const T z = P[2];
    const T diff = z > ds ? z - ds : ds - z;
    if (!(diff <= rel_eps * z)) return false;
  }
  return true;
}

// Bilinear weights of the four taps (00, 01, 10, 11).
template <typename T>
JR2_HD void warp_weights(const WarpSample<T>& s, T* w) {
  w[0] = (T(1) - s.fx) * (T(1) - s.fy);
  w[1] = s.fx * (T(1) - s.fy);
  w[2] = (T(1) - s.fx) * s.fy;
  w[3] = s.fx * s.fy;
}

// The 3D point of target pixel (b, p = i*Wt + j) in the source frame; false when the target pixel
// itself is invalid (dst_depth <= 0, or valid <= 0.5). ray receives dP/d(depth) for depth_warp.
// The caller passes (i, j) with p so that loops can step them without dividing.
template <typename T, bool kDepth>
JR2_HD bool warp_point(const WarpParams<T>& Pm, const DepthWarpFrame<T>& F, int64_t b, int64_t p,
                       int64_t i, int64_t j, T* P, T* ray) {
  const int64_t HWt = Pm.Ht * Pm.Wt;
  if (kDepth) {
    const T d = Pm.dst_depth[b * HWt + p];
    if (!(d > T(0))) return false;
    depth_warp_ray(F, i, j, ray);
    for (int k = 0; k < 3; ++k) P[k] = d * ray[k] + F.t[k];
  } else {
    if (!(Pm.valid[b * HWt + p] > T(0.5))) return false;
    const T* q = Pm.points + (b * HWt + p) * 3;
    P[0] = q[0];
    P[1] = q[1];
    P[2] = q[2];
  }
  return true;
}

// Chain rule from (dL/dx, dL/dy) of the projected position to dL/dP.
template <typename T>
JR2_HD void warp_project_backward(const T* K, const WarpSample<T>& s, T gx, T gy, T* gP) {
  const T inv = T(1) / s.q2;
  for (int k = 0; k < 3; ++k) {
    gP[k] = (gx * (K[0 + k] - s.x * K[6 + k]) + gy * (K[3 + k] - s.y * K[6 + k])) * inv;
  }
}

}  // namespace jr2net::warp

#if defined(__CUDACC__) || defined(WITH_CUDA)
#include <cuda_runtime_api.h>

namespace jr2net::warp {

// CUDA launchers (csrc/cuda/warp.cu); all pointers are device pointers. kDepth selects depth_warp
// (true) or correspondence_warp (false).
template <typename T>
void launch_warp_fwd(const WarpParams<T>& P, bool depth, cudaStream_t stream);
template <typename T>
void launch_warp_bwd(const WarpParams<T>& P, bool depth, cudaStream_t stream);

}  // namespace jr2net::warp
#endif
