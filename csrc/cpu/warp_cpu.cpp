// CPU kernels of depth_warp / correspondence_warp.
//
// Target pixels are processed in tiles: the footprint (tap index + 4 weights) of every pixel of a
// tile is computed once into a small buffer, then each channel plane is gathered from it, so the
// [B,C,H,W] planes are walked contiguously. The backward w.r.t. src scatters per channel plane:
// threads own disjoint planes (no atomics, no partial buffers); each thread recomputes the
// footprints of its batch's tiles, which costs little next to the channel loop.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "warp.h"

namespace jr2net {

namespace {

constexpr int64_t kTile = 512;  // target pixels per tile

template <typename T>
WarpParams<T> make_params(const WarpInputs& in) {
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

// Footprints of one tile of target pixels [p0, p0+n) of batch b (SoA, reused per thread).
template <typename T>
struct TileTaps {
  std::vector<int64_t> idx;  // -1: not covisible
  std::vector<T> w0, w1, w2, w3;
  explicit TileTaps(int64_t n) : idx(n), w0(n), w1(n), w2(n), w3(n) {}
};

template <typename T, bool kDepth>
void tile_taps(const WarpParams<T>& P, const DepthWarpFrame<T>& F, int64_t b, int64_t p0,
               int64_t n, TileTaps<T>& tt, T* covisible) {
  const T* K = P.K_src + b * 9;
  const T* sd = P.src_depth ? P.src_depth + b * P.Hs * P.Ws : nullptr;
  for (int64_t k = 0; k < n; ++k) {
    T X[3], ray[3];
    WarpSample<T> s;
    const bool ok = warp_point<T, kDepth>(P, F, b, p0 + k, X, ray) &&
                    warp_sample(K, X, P.Hs, P.Ws, sd, P.rel_eps, s);
    if (covisible) covisible[k] = ok ? T(1) : T(0);
    if (!ok) {
      tt.idx[k] = -1;
      continue;
    }
    T w[4];
    warp_weights(s, w);
    tt.idx[k] = s.i00;
    tt.w0[k] = w[0];
    tt.w1[k] = w[1];
    tt.w2[k] = w[2];
    tt.w3[k] = w[3];
  }
}

template <typename T>
DepthWarpFrame<T> frame_of(const WarpParams<T>& P, bool depth, int64_t b) {
  if (depth) return depth_warp_frame(P.K_dst + b * 9, P.src_T_dst + b * 16);
  return DepthWarpFrame<T>{};
}

// Tap offsets of the right and lower neighbours (0 for a 1-pixel-wide/high source).
template <typename T>
inline int64_t tap_dx(const WarpParams<T>& P) {
  return P.Ws > 1 ? 1 : 0;
}
template <typename T>
inline int64_t tap_dy(const WarpParams<T>& P) {
  return P.Hs > 1 ? P.Ws : 0;
}

// warped[b, c, tile] from the tile footprints. One channel plane at a time: measured faster than
// blocking channels (one read stream and one write stream at a time).
template <typename T>
void gather_channel(const WarpParams<T>& P, const TileTaps<T>& tt, int64_t b, int64_t c,
                    int64_t p0, int64_t n) {
  const int64_t HWt = P.Ht * P.Wt, HWs = P.Hs * P.Ws, dx = tap_dx(P), dy = tap_dy(P);
  const T* __restrict s = P.src + (b * P.C + c) * HWs;
  T* __restrict o = P.warped + (b * P.C + c) * HWt + p0;
  const int64_t* __restrict idx = tt.idx.data();
  const T *__restrict w0 = tt.w0.data(), *__restrict w1 = tt.w1.data();
  const T *__restrict w2 = tt.w2.data(), *__restrict w3 = tt.w3.data();
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = idx[k];
    o[k] = i < 0 ? T(0)
                 : w0[k] * s[i] + w1[k] * s[i + dx] + w2[k] * s[i + dy] + w3[k] * s[i + dy + dx];
  }
}

// grad_src[b, c] += bilinear scatter of grad_warped[b, c] over the tile.
template <typename T>
void scatter_channel(const WarpParams<T>& P, const TileTaps<T>& tt, int64_t b, int64_t c,
                     int64_t p0, int64_t n) {
  const int64_t HWt = P.Ht * P.Wt, HWs = P.Hs * P.Ws, dx = tap_dx(P), dy = tap_dy(P);
  const T* __restrict g = P.grad_warped + (b * P.C + c) * HWt + p0;
  T* __restrict gs = P.grad_src + (b * P.C + c) * HWs;
  const int64_t* __restrict idx = tt.idx.data();
  const T *__restrict w0 = tt.w0.data(), *__restrict w1 = tt.w1.data();
  const T *__restrict w2 = tt.w2.data(), *__restrict w3 = tt.w3.data();
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = idx[k];
    if (i < 0) continue;
    const T gk = g[k];
    gs[i] += w0[k] * gk;
    gs[i + dx] += w1[k] * gk;
    gs[i + dy] += w2[k] * gk;
    gs[i + dy + dx] += w3[k] * gk;
  }
}

// Accumulate dL/dx, dL/dy of the projected positions of the tile over channel c.
template <typename T>
void position_grad_channel(const WarpParams<T>& P, const WarpSample<T>* samples, const char* ok,
                           int64_t b, int64_t c, int64_t p0, int64_t n, T* gxs, T* gys) {
  const int64_t HWt = P.Ht * P.Wt, HWs = P.Hs * P.Ws, dx = tap_dx(P), dy = tap_dy(P);
  const T* __restrict s = P.src + (b * P.C + c) * HWs;
  const T* __restrict g = P.grad_warped + (b * P.C + c) * HWt + p0;
  for (int64_t k = 0; k < n; ++k) {
    if (!ok[k]) continue;
    const WarpSample<T>& sm = samples[k];
    const int64_t i = sm.i00;
    const T s00 = s[i], s01 = s[i + dx], s10 = s[i + dy], s11 = s[i + dy + dx];
    gxs[k] += g[k] * ((T(1) - sm.fy) * (s01 - s00) + sm.fy * (s11 - s10));
    gys[k] += g[k] * ((T(1) - sm.fx) * (s10 - s00) + sm.fx * (s11 - s01));
  }
}

template <typename T, bool kDepth>
void fwd_impl(const WarpParams<T>& P) {
  const int64_t HWt = P.Ht * P.Wt;
  const int64_t ntiles = (HWt + kTile - 1) / kTile;
  at::parallel_for(0, P.B * ntiles, 1, [&](int64_t begin, int64_t end) {
    TileTaps<T> tt(kTile);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / ntiles, p0 = (t % ntiles) * kTile;
      const int64_t n = p0 + kTile < HWt ? kTile : HWt - p0;
      const DepthWarpFrame<T> F = frame_of(P, kDepth, b);
      tile_taps<T, kDepth>(P, F, b, p0, n, tt, P.covisible + b * HWt + p0);
      for (int64_t c = 0; c < P.C; ++c) gather_channel(P, tt, b, c, p0, n);
    }
  });
}

// dL/dsrc: threads own disjoint (b, c) planes, so the scatter needs no atomics.
template <typename T, bool kDepth>
void bwd_src_impl(const WarpParams<T>& P) {
  const int64_t HWt = P.Ht * P.Wt;
  at::parallel_for(0, P.B * P.C, 1, [&](int64_t begin, int64_t end) {
    TileTaps<T> tt(kTile);
    for (int64_t b = begin / P.C; b * P.C < end; ++b) {
      const int64_t c0 = begin > b * P.C ? begin - b * P.C : 0;
      const int64_t c1 = end < (b + 1) * P.C ? end - b * P.C : P.C;
      const DepthWarpFrame<T> F = frame_of(P, kDepth, b);
      for (int64_t p0 = 0; p0 < HWt; p0 += kTile) {
        const int64_t n = p0 + kTile < HWt ? kTile : HWt - p0;
        tile_taps<T, kDepth>(P, F, b, p0, n, tt, nullptr);
        for (int64_t c = c0; c < c1; ++c) scatter_channel(P, tt, b, c, p0, n);
      }
    }
  });
}

// dL/d(dst_depth) or dL/d(points_src): per target pixel, through the projected position.
template <typename T, bool kDepth>
void bwd_geometry_impl(const WarpParams<T>& P) {
  const int64_t HWt = P.Ht * P.Wt, HWs = P.Hs * P.Ws;
  const int64_t ntiles = (HWt + kTile - 1) / kTile;
  at::parallel_for(0, P.B * ntiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<WarpSample<T>> samples(kTile);
    std::vector<T> rays(3 * kTile), gxs(kTile), gys(kTile);
    std::vector<char> ok(kTile);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / ntiles, p0 = (t % ntiles) * kTile;
      const int64_t n = p0 + kTile < HWt ? kTile : HWt - p0;
      const DepthWarpFrame<T> F = frame_of(P, kDepth, b);
      const T* K = P.K_src + b * 9;
      const T* sd = P.src_depth ? P.src_depth + b * HWs : nullptr;
      for (int64_t k = 0; k < n; ++k) {
        T X[3];
        ok[k] = warp_point<T, kDepth>(P, F, b, p0 + k, X, &rays[3 * k]) &&
                warp_sample(K, X, P.Hs, P.Ws, sd, P.rel_eps, samples[k]);
        gxs[k] = T(0);
        gys[k] = T(0);
      }
      for (int64_t c = 0; c < P.C; ++c) {
        position_grad_channel(P, samples.data(), ok.data(), b, c, p0, n, gxs.data(), gys.data());
      }
      for (int64_t k = 0; k < n; ++k) {
        const int64_t p = p0 + k;
        T gP[3] = {T(0), T(0), T(0)};
        if (ok[k]) warp_project_backward(K, samples[k], gxs[k], gys[k], gP);
        if (kDepth) {
          const T* r = &rays[3 * k];
          P.grad_dst_depth[b * HWt + p] = ok[k] ? gP[0] * r[0] + gP[1] * r[1] + gP[2] * r[2] : T(0);
        } else {
          T* gp = P.grad_points + (b * HWt + p) * 3;
          gp[0] = gP[0];
          gp[1] = gP[1];
          gp[2] = gP[2];
        }
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> warp_fwd_cpu(const WarpInputs& in) {
  const at::Tensor& src = in.src;
  const int64_t Ht = in.depth ? in.dst_depth.size(2) : in.points.size(1);
  const int64_t Wt = in.depth ? in.dst_depth.size(3) : in.points.size(2);
  at::Tensor warped = at::empty({src.size(0), src.size(1), Ht, Wt}, src.options());
  at::Tensor covisible = at::empty({src.size(0), 1, Ht, Wt}, src.options());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "warp_fwd_cpu", [&] {
    WarpParams<scalar_t> P = make_params<scalar_t>(in);
    P.warped = warped.data_ptr<scalar_t>();
    P.covisible = covisible.data_ptr<scalar_t>();
    if (in.depth) {
      fwd_impl<scalar_t, true>(P);
    } else {
      fwd_impl<scalar_t, false>(P);
    }
  });
  return {warped, covisible};
}

std::tuple<at::Tensor, at::Tensor> warp_bwd_cpu(const WarpInputs& in, const at::Tensor& grad_warped,
                                                bool need_src, bool need_geometry) {
  at::Tensor grad_src, grad_geo;
  if (need_src) grad_src = at::zeros(in.src.sizes(), in.src.options());
  if (need_geometry) {
    const at::Tensor& geo = in.depth ? in.dst_depth : in.points;
    grad_geo = at::empty(geo.sizes(), geo.options());
  }
  AT_DISPATCH_FLOATING_TYPES(in.src.scalar_type(), "warp_bwd_cpu", [&] {
    WarpParams<scalar_t> P = make_params<scalar_t>(in);
    P.grad_warped = grad_warped.data_ptr<scalar_t>();
    if (need_src) {
      P.grad_src = grad_src.data_ptr<scalar_t>();
      if (in.depth) {
        bwd_src_impl<scalar_t, true>(P);
      } else {
        bwd_src_impl<scalar_t, false>(P);
      }
    }
    if (need_geometry) {
      if (in.depth) {
        P.grad_dst_depth = grad_geo.data_ptr<scalar_t>();
        bwd_geometry_impl<scalar_t, true>(P);
      } else {
        P.grad_points = grad_geo.data_ptr<scalar_t>();
        bwd_geometry_impl<scalar_t, false>(P);
      }
    }
  });
  return {grad_src, grad_geo};
}

}  // namespace jr2net
