// CPU kernels of depth_warp / correspondence_warp.
//
// Target pixels are processed in tiles: the footprint (tap index, 4 weights) of every pixel of a
// tile is computed once into a small buffer, then each channel plane is gathered from it, so the
// [B,C,H,W] planes are walked contiguously. The backward is one fused pass per channel plane that
// scatters dL/dsrc and accumulates dL/d(position); threads own disjoint channel ranges, so the
// scatter needs no atomics, and the per-pixel position grads are summed over the ranges after.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "warp.h"

namespace jr2net {

namespace {

constexpr int64_t kTile = 512;  // target pixels per tile
// Least work (output values) per thread: smaller problems run on fewer threads, where waking the
// pool would cost more than it saves.
constexpr int64_t kGrain = 1 << 16;

inline int64_t tile_grain(int64_t channels) {
  return std::max<int64_t>(1, kGrain / (kTile * (channels + 4)));  // +4: footprint per pixel
}

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
  std::vector<T> w0, w1, w2, w3, fx, fy;
  explicit TileTaps(int64_t n) : idx(n), w0(n), w1(n), w2(n), w3(n), fx(n), fy(n) {}
};

template <typename T>
DepthWarpFrame<T> frame_of(const WarpParams<T>& P, bool depth, int64_t b) {
  if (depth) return depth_warp_frame(P.K_dst + b * 9, P.src_T_dst + b * 16);
  return DepthWarpFrame<T>{};
}

// Values per target pixel of the position Jacobian kept by the backward: d(depth)->(x, y) for
// depth_warp (2), dP->(x, y) for correspondence_warp (2 x 3).
template <bool kDepth>
constexpr int64_t kJac = kDepth ? 2 : 6;

// Footprints of a tile; optionally covisible[k] (0/1) and jac[k * kJac] (zeros where not
// covisible), the Jacobian of the projected position w.r.t. the pixel's differentiable input.
template <typename T, bool kDepth>
void tile_taps(const WarpParams<T>& P, const DepthWarpFrame<T>& F, int64_t b, int64_t p0,
               int64_t n, TileTaps<T>& tt, T* covisible, T* jac = nullptr) {
  const T* K = P.K_src + b * 9;
  const T* sd = P.src_depth ? P.src_depth + b * P.Hs * P.Ws : nullptr;
  int64_t i = p0 / P.Wt, j = p0 - i * P.Wt;  // row and column, stepped below
  for (int64_t k = 0; k < n; ++k, ++j) {
    if (j == P.Wt) {
      j = 0;
      ++i;
    }
    T X[3], ray[3] = {T(0), T(0), T(0)};
    WarpSample<T> s;
    const bool ok = warp_point<T, kDepth>(P, F, b, p0 + k, i, j, X, ray) &&
                    warp_sample(K, X, P.Hs, P.Ws, sd, P.rel_eps, s);
    if (covisible) covisible[k] = ok ? T(1) : T(0);
    if (jac) {
      T* J = jac + k * kJac<kDepth>;
      T jx[3] = {T(0), T(0), T(0)}, jy[3] = {T(0), T(0), T(0)};
      if (ok) {
        warp_project_backward(K, s, T(1), T(0), jx);
        warp_project_backward(K, s, T(0), T(1), jy);
      }
      if (kDepth) {
        J[0] = jx[0] * ray[0] + jx[1] * ray[1] + jx[2] * ray[2];
        J[1] = jy[0] * ray[0] + jy[1] * ray[1] + jy[2] * ray[2];
      } else {
        for (int d = 0; d < 3; ++d) {
          J[d] = jx[d];
          J[3 + d] = jy[d];
        }
      }
    }
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
    tt.fx[k] = s.fx;
    tt.fy[k] = s.fy;
  }
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
  const T *__restrict fx = tt.fx.data(), *__restrict fy = tt.fy.data();
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = idx[k];
    if (i < 0) {
      o[k] = T(0);
      continue;
    }
    const T s00 = s[i], s01 = s[i + dx], s10 = s[i + dy], s11 = s[i + dy + dx];
    const T top = s00 + fx[k] * (s01 - s00), bot = s10 + fx[k] * (s11 - s10);
    o[k] = top + fy[k] * (bot - top);  // fewer loads than the 4-weight form
  }
}

// Backward of one channel plane over a tile: grad_src[b, c] += bilinear scatter of the incoming
// grad (kSrc), and gx/gy += dL/dx, dL/dy of the projected positions (kGeo).
// The scatter keeps the two tap columns of the previous pixel in registers and flushes a column
// only when the footprint moves past it: consecutive target pixels usually share a column, and
// read-modify-writing it through memory would serialise on store-to-load forwarding.
template <typename T, bool kSrc, bool kGeo>
void backward_channel(const WarpParams<T>& P, const TileTaps<T>& tt, int64_t b, int64_t c,
                      int64_t p0, int64_t n, T* __restrict gx, T* __restrict gy) {
  const int64_t HWt = P.Ht * P.Wt, HWs = P.Hs * P.Ws, dx = tap_dx(P), dy = tap_dy(P);
  const T* __restrict g = P.grad_warped + (b * P.C + c) * HWt + p0;
  const T* __restrict s = P.src + (b * P.C + c) * HWs;
  T* __restrict gs = kSrc ? P.grad_src + (b * P.C + c) * HWs : nullptr;
  const int64_t* __restrict idx = tt.idx.data();
  const T *__restrict w0 = tt.w0.data(), *__restrict w1 = tt.w1.data();
  const T *__restrict w2 = tt.w2.data(), *__restrict w3 = tt.w3.data();
  const T *__restrict fx = tt.fx.data(), *__restrict fy = tt.fy.data();
  int64_t ip = -1;                               // top-left tap of the pending footprint
  T a00 = T(0), a01 = T(0), a10 = T(0), a11 = T(0);  // its pending contributions
  for (int64_t k = 0; k < n; ++k) {
    const int64_t i = idx[k];
    if (i < 0) continue;
    const T gk = g[k];
    if (kSrc) {
      const T b00 = w0[k] * gk, b01 = w1[k] * gk, b10 = w2[k] * gk, b11 = w3[k] * gk;
      if (i == ip) {
        a00 += b00;
        a01 += b01;
        a10 += b10;
        a11 += b11;
      } else if (i == ip + 1 && dx == 1) {  // moved one column right: flush the left column
        gs[ip] += a00;
        gs[ip + dy] += a10;
        a00 = a01 + b00;
        a10 = a11 + b10;
        a01 = b01;
        a11 = b11;
        ip = i;
      } else {
        if (ip >= 0) {
          gs[ip] += a00;
          gs[ip + dx] += a01;
          gs[ip + dy] += a10;
          gs[ip + dy + dx] += a11;
        }
        ip = i;
        a00 = b00;
        a01 = b01;
        a10 = b10;
        a11 = b11;
      }
    }
    if (kGeo) {
      const T s00 = s[i], s01 = s[i + dx], s10 = s[i + dy], s11 = s[i + dy + dx];
      gx[k] += gk * ((T(1) - fy[k]) * (s01 - s00) + fy[k] * (s11 - s10));
      gy[k] += gk * ((T(1) - fx[k]) * (s10 - s00) + fx[k] * (s11 - s01));
    }
  }
  if (kSrc && ip >= 0) {
    gs[ip] += a00;
    gs[ip + dx] += a01;
    gs[ip + dy] += a10;
    gs[ip + dy + dx] += a11;
  }
}

template <typename T, bool kDepth>
void fwd_impl(const WarpParams<T>& P) {
  const int64_t HWt = P.Ht * P.Wt;
  const int64_t ntiles = (HWt + kTile - 1) / kTile;
  at::parallel_for(0, P.B * ntiles, tile_grain(P.C), [&](int64_t begin, int64_t end) {
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

template <typename T, bool kDepth, bool kSrc, bool kGeo>
void bwd_impl(const WarpParams<T>& P) {
  const int64_t HWt = P.Ht * P.Wt;
  const int64_t ntiles = (HWt + kTile - 1) / kTile;
  constexpr int64_t nj = kJac<kDepth>;
  // Channels of a batch are split into nchunk ranges, one work unit each; position grads are
  // accumulated per unit in partial[b][chunk][2][HWt] and summed below. The first chunk of each
  // batch also keeps the per-pixel position Jacobian, so the final pass needs no re-projection.
  const int64_t threads = P.B * HWt * P.C >= kGrain ? at::get_num_threads() : 1;
  const int64_t nchunk = std::max<int64_t>(1, std::min<int64_t>(P.C, threads));
  std::vector<T> partial(kGeo ? static_cast<size_t>(P.B * nchunk * 2 * HWt) : 0);
  std::vector<T> jac(kGeo ? static_cast<size_t>(P.B * HWt * nj) : 0);
  at::parallel_for(0, P.B * nchunk, 1, [&](int64_t begin, int64_t end) {
    TileTaps<T> tt(kTile);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u / nchunk, chunk = u % nchunk;
      const int64_t c0 = chunk * P.C / nchunk, c1 = (chunk + 1) * P.C / nchunk;
      const DepthWarpFrame<T> F = frame_of(P, kDepth, b);
      T* gx_all = kGeo ? partial.data() + u * 2 * HWt : nullptr;
      for (int64_t p0 = 0; p0 < HWt; p0 += kTile) {
        const int64_t n = p0 + kTile < HWt ? kTile : HWt - p0;
        T* J = kGeo && chunk == 0 ? jac.data() + (b * HWt + p0) * nj : nullptr;
        tile_taps<T, kDepth>(P, F, b, p0, n, tt, nullptr, J);
        T* gx = kGeo ? gx_all + p0 : nullptr;
        T* gy = kGeo ? gx_all + HWt + p0 : nullptr;
        if (kGeo) {
          std::fill(gx, gx + n, T(0));
          std::fill(gy, gy + n, T(0));
        }
        for (int64_t c = c0; c < c1; ++c) {
          backward_channel<T, kSrc, kGeo>(P, tt, b, c, p0, n, gx, gy);
        }
      }
    }
  });
  if (!kGeo) return;
  // dL/d(dst_depth) or dL/d(points_src) = Jacobianᵀ · (summed dL/dx, dL/dy).
  at::parallel_for(0, P.B * ntiles, tile_grain(2 * nchunk), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / ntiles, p0 = (t % ntiles) * kTile;
      const int64_t p1 = p0 + kTile < HWt ? p0 + kTile : HWt;
      const T* part = partial.data() + b * nchunk * 2 * HWt;
      for (int64_t p = p0; p < p1; ++p) {
        T gx = T(0), gy = T(0);
        for (int64_t ch = 0; ch < nchunk; ++ch) {
          gx += part[ch * 2 * HWt + p];
          gy += part[ch * 2 * HWt + HWt + p];
        }
        const T* J = jac.data() + (b * HWt + p) * nj;
        if (kDepth) {
          P.grad_dst_depth[b * HWt + p] = gx * J[0] + gy * J[1];
        } else {
          T* gp = P.grad_points + (b * HWt + p) * 3;
          for (int d = 0; d < 3; ++d) gp[d] = gx * J[d] + gy * J[3 + d];
        }
      }
    }
  });
}

template <typename T, bool kDepth>
void bwd_dispatch(const WarpParams<T>& P, bool need_src, bool need_geo) {
  if (need_src && need_geo) {
    bwd_impl<T, kDepth, true, true>(P);
  } else if (need_src) {
    bwd_impl<T, kDepth, true, false>(P);
  } else if (need_geo) {
    bwd_impl<T, kDepth, false, true>(P);
  }
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
    if (need_src) P.grad_src = grad_src.data_ptr<scalar_t>();
    if (need_geometry && in.depth) P.grad_dst_depth = grad_geo.data_ptr<scalar_t>();
    if (need_geometry && !in.depth) P.grad_points = grad_geo.data_ptr<scalar_t>();
    if (in.depth) {
      bwd_dispatch<scalar_t, true>(P, need_src, need_geometry);
    } else {
      bwd_dispatch<scalar_t, false>(P, need_src, need_geometry);
    }
  });
  return {grad_src, grad_geo};
}

}  // namespace jr2net
