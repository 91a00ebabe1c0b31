// CUDA kernels of depth_warp / correspondence_warp: one thread per target pixel through the shared
// per-pixel helper warp_sample() in ops/warp.h (the same code as the CPU kernels), channels looped
// inside. The backward scatters dL/dsrc with atomics and sums dL/d(position) over channels in
// registers. No torch headers: the tensor glue is csrc/cuda/warp_cuda.cpp.
#include <cuda_runtime.h>

#include "ops/warp.h"

namespace jr2net::warp {
namespace {

constexpr int kWarpThreads = 256;

template <typename T, bool kDepth>
__global__ void warp_fwd_kernel(WarpParams<T> P) {
  const int64_t HWt = P.Ht * P.Wt, HWs = P.Hs * P.Ws;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= P.B * HWt) return;
  const int64_t b = n / HWt, p = n - b * HWt;
  DepthWarpFrame<T> F{};
  if (kDepth) F = depth_warp_frame(P.K_dst + b * 9, P.src_T_dst + b * 16);
  T X[3], ray[3] = {T(0), T(0), T(0)};
  WarpSample<T> s;
  const T* sd = P.src_depth ? P.src_depth + b * HWs : nullptr;
  const bool ok = warp_point<T, kDepth>(P, F, b, p, p / P.Wt, p % P.Wt, X, ray) &&
                  warp_sample(P.K_src + b * 9, X, P.Hs, P.Ws, sd, P.rel_eps, s);
  P.covisible[n] = ok ? T(1) : T(0);
  T* out = P.warped + b * P.C * HWt + p;
  if (!ok) {
    for (int64_t c = 0; c < P.C; ++c) out[c * HWt] = T(0);
    return;
  }
  T w[4];
  warp_weights(s, w);
  const T* src = P.src + b * P.C * HWs + s.i00;
  for (int64_t c = 0; c < P.C; ++c) {
    const T* q = src + c * HWs;
    out[c * HWt] = w[0] * q[0] + w[1] * q[s.dx] + w[2] * q[s.dy] + w[3] * q[s.dy + s.dx];
  }
}

template <typename T, bool kDepth, bool kSrc, bool kGeo>
__global__ void warp_bwd_kernel(WarpParams<T> P) {
  const int64_t HWt = P.Ht * P.Wt, HWs = P.Hs * P.Ws;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= P.B * HWt) return;
  const int64_t b = n / HWt, p = n - b * HWt;
  DepthWarpFrame<T> F{};
  if (kDepth) F = depth_warp_frame(P.K_dst + b * 9, P.src_T_dst + b * 16);
  T X[3], ray[3] = {T(0), T(0), T(0)};
  WarpSample<T> s;
  const T* K = P.K_src + b * 9;
  const T* sd = P.src_depth ? P.src_depth + b * HWs : nullptr;
  const bool ok = warp_point<T, kDepth>(P, F, b, p, p / P.Wt, p % P.Wt, X, ray) &&
                  warp_sample(K, X, P.Hs, P.Ws, sd, P.rel_eps, s);
  if (ok) {
    T w[4];
    warp_weights(s, w);
    const T* g = P.grad_warped + b * P.C * HWt + p;
    const T* src = P.src + b * P.C * HWs + s.i00;
    T* gs = kSrc ? P.grad_src + b * P.C * HWs + s.i00 : nullptr;
    T gx = T(0), gy = T(0);
    for (int64_t c = 0; c < P.C; ++c) {
      const T gk = g[c * HWt];
      if (kSrc) {
        T* q = gs + c * HWs;
        atomicAdd(q, w[0] * gk);
        atomicAdd(q + s.dx, w[1] * gk);
        atomicAdd(q + s.dy, w[2] * gk);
        atomicAdd(q + s.dy + s.dx, w[3] * gk);
      }
      if (kGeo) {
        const T* q = src + c * HWs;
        const T s00 = q[0], s01 = q[s.dx], s10 = q[s.dy], s11 = q[s.dy + s.dx];
        gx += gk * ((T(1) - s.fy) * (s01 - s00) + s.fy * (s11 - s10));
        gy += gk * ((T(1) - s.fx) * (s10 - s00) + s.fx * (s11 - s01));
      }
    }
    if (kGeo) {
      T gP[3];
      warp_project_backward(K, s, gx, gy, gP);
      if (kDepth) {
        P.grad_dst_depth[n] = gP[0] * ray[0] + gP[1] * ray[1] + gP[2] * ray[2];
      } else {
        P.grad_points[n * 3 + 0] = gP[0];
        P.grad_points[n * 3 + 1] = gP[1];
        P.grad_points[n * 3 + 2] = gP[2];
      }
    }
  } else if (kGeo) {
    if (kDepth) {
      P.grad_dst_depth[n] = T(0);
    } else {
      P.grad_points[n * 3 + 0] = T(0);
      P.grad_points[n * 3 + 1] = T(0);
      P.grad_points[n * 3 + 2] = T(0);
    }
  }
}

inline unsigned warp_blocks(int64_t n) {
  return static_cast<unsigned>((n + kWarpThreads - 1) / kWarpThreads);
}

template <typename T, bool kDepth>
void bwd_launch(const WarpParams<T>& P, unsigned blocks, cudaStream_t stream) {
  const bool src = P.grad_src != nullptr;
  const bool geo = kDepth ? P.grad_dst_depth != nullptr : P.grad_points != nullptr;
  if (src && geo) {
    warp_bwd_kernel<T, kDepth, true, true><<<blocks, kWarpThreads, 0, stream>>>(P);
  } else if (src) {
    warp_bwd_kernel<T, kDepth, true, false><<<blocks, kWarpThreads, 0, stream>>>(P);
  } else if (geo) {
    warp_bwd_kernel<T, kDepth, false, true><<<blocks, kWarpThreads, 0, stream>>>(P);
  }
}

}  // namespace

template <typename T>
void launch_warp_fwd(const WarpParams<T>& P, bool depth, cudaStream_t stream) {
  const int64_t n = P.B * P.Ht * P.Wt;
  if (n == 0) return;
  if (depth) {
    warp_fwd_kernel<T, true><<<warp_blocks(n), kWarpThreads, 0, stream>>>(P);
  } else {
    warp_fwd_kernel<T, false><<<warp_blocks(n), kWarpThreads, 0, stream>>>(P);
  }
}

// grad_src (when set) must be zeroed by the caller; grad_dst_depth / grad_points are written.
template <typename T>
void launch_warp_bwd(const WarpParams<T>& P, bool depth, cudaStream_t stream) {
  const int64_t n = P.B * P.Ht * P.Wt;
  if (n == 0) return;
  if (depth) {
    bwd_launch<T, true>(P, warp_blocks(n), stream);
  } else {
    bwd_launch<T, false>(P, warp_blocks(n), stream);
  }
}

template void launch_warp_fwd<float>(const WarpParams<float>&, bool, cudaStream_t);
template void launch_warp_fwd<double>(const WarpParams<double>&, bool, cudaStream_t);
template void launch_warp_bwd<float>(const WarpParams<float>&, bool, cudaStream_t);
template void launch_warp_bwd<double>(const WarpParams<double>&, bool, cudaStream_t);

}  // namespace jr2net::warp
