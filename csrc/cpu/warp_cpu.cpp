// CPU kernels of depth_warp / correspondence_warp.
//
// The footprint (tap index, fractional position) of every target pixel is computed once into a
// 12-byte-per-pixel buffer; then channel planes are the outer loop and pixels the inner one, so
// one source plane stays in L2 while its output plane streams. (Looping channels inside a pixel
// tile instead touches 64 planes 256 KiB apart, which share cache sets: 3x slower at 64 ch.)
// The AVX2 / AVX-512 copies assemble each output row in a stack buffer and write it with
// non-temporal stores (no read-for-ownership of the output lines: ~0.7x the time at 64ch 256²).
// The backward is one fused pass per channel plane that zeroes and scatters dL/dsrc and
// accumulates dL/d(position); threads own disjoint channel ranges, so the scatter needs no
// atomics, and the per-pixel position grads are summed over the ranges after. The footprints
// (Taps, row_taps, the forward's vectorised two-pass row_taps_fast, all_taps) are in
// cpu/warp_taps.inc.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

#include "warp_dispatch.h"
#include "cpu/cpu_features.h"

#if JR2_X86_DISPATCH
#include <immintrin.h>
#endif

namespace jr2net::warp {
namespace {

constexpr int64_t kBlock = 16384;  // target pixels per work unit of a plane
// Least work (output values) per thread: smaller problems run on fewer threads, where waking the
// pool would cost more than it saves.
constexpr int64_t kGrain = 1 << 16;

template <typename T>
WarpParams<T> make_params(const WarpInputs& in) {
  TORCH_CHECK_VALUE(in.src.size(2) * in.src.size(3) < (int64_t{1} << 31),
                    "warp: src planes of 2^31 pixels or more are not supported on CPU");
  return warp_params<T>(in);
}

#include "cpu/warp_taps.inc"

#if JR2_X86_DISPATCH
// One run of n float32 footprints (float planes with dx == 1), 4 at a time: each footprint's
// two tap pairs (s00, s01) and (s10, s11) are adjacent, so two 64-bit loads fetch them, where
// the gather form (what the compiler makes of the loop in gather_plane) loads 4 values one by
// one; the x lerp then runs on top and bottom pairs together. Returns how many it did (n & ~3).
JR2_TARGET_AVX2 int64_t run_pairs_f32(const float* __restrict s, int64_t dy,
                                      const int32_t* __restrict id, const float* __restrict ux,
                                      const float* __restrict uy, float* __restrict os,
                                      int64_t n) {
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    const float *a0 = s + id[k], *a1 = s + id[k + 1], *a2 = s + id[k + 2], *a3 = s + id[k + 3];
    const auto pair = [](const float* lo, const float* hi) {
      return _mm_loadh_pd(_mm_load_sd(reinterpret_cast<const double*>(lo)),
                          reinterpret_cast<const double*>(hi));
    };
    // top = [s00 s01] of footprints 0..3, bottom = [s10 s11]
    const __m256 top = _mm256_castpd_ps(_mm256_set_m128d(pair(a2, a3), pair(a0, a1)));
    const __m256 bot =
        _mm256_castpd_ps(_mm256_set_m128d(pair(a2 + dy, a3 + dy), pair(a0 + dy, a1 + dy)));
    // left = [s00_0 s00_1 s10_0 s10_1 | s00_2 s00_3 s10_2 s10_3], right likewise with s01, s11
    const __m256 left = _mm256_shuffle_ps(top, bot, 0x88);
    const __m256 right = _mm256_shuffle_ps(top, bot, 0xDD);
    const __m128 u = _mm_loadu_ps(ux + k);
    const __m256 uu = _mm256_set_m128(_mm_shuffle_ps(u, u, 0xEE), _mm_shuffle_ps(u, u, 0x44));
    // x lerp: [top0 top1 bot0 bot1 | top2 top3 bot2 bot3] -> [top0..3 | bot0..3]
    const __m256 x = _mm256_permutevar8x32_ps(
        _mm256_add_ps(left, _mm256_mul_ps(uu, _mm256_sub_ps(right, left))), order);
    const __m128 t = _mm256_castps256_ps128(x), bm = _mm256_extractf128_ps(x, 1);
    _mm_storeu_ps(os + k, _mm_add_ps(t, _mm_mul_ps(_mm_loadu_ps(uy + k), _mm_sub_ps(bm, t))));
  }
  return k;
}
#endif

// Rows of at most this many values are assembled in a stack buffer and written out with
// non-temporal stores (kStream = vector bytes, 32 or 64): the output planes are written once and
// not read back here, so skipping the read-for-ownership of every output line saves memory
// traffic (64ch 256²: 16 MiB of output per call, 70% of it zeros).
constexpr int64_t kStreamMaxRow = 2048;
// Outputs smaller than this (about a core's L2) are written with plain stores: the caller's next
// op finds them in cache.
constexpr int64_t kStreamMinBytes = int64_t{2} << 20;

template <typename T, int kStream>
inline bool streamable(const WarpParams<T>& P, int64_t b, int64_t c) {
  const int64_t bytes = P.Wt * int64_t(sizeof(T));
  const auto base = reinterpret_cast<uintptr_t>(P.warped + (b * P.C + c) * P.Ht * P.Wt);
  const int64_t total = P.B * P.C * P.Ht * bytes;
  return P.Wt <= kStreamMaxRow && total >= kStreamMinBytes && bytes % kStream == 0 &&
         base % kStream == 0;
}

#if JR2_X86_DISPATCH
JR2_TARGET_AVX2 inline void stream_row_avx2(void* dst, const void* src, int64_t bytes) {
  for (int64_t k = 0; k < bytes; k += 32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(static_cast<char*>(dst) + k),
                        _mm256_load_si256(reinterpret_cast<const __m256i*>(
                            static_cast<const char*>(src) + k)));
  }
}
JR2_TARGET_AVX512 inline void stream_row_avx512(void* dst, const void* src, int64_t bytes) {
  for (int64_t k = 0; k < bytes; k += 64) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(static_cast<char*>(dst) + k),
                        _mm512_load_si512(static_cast<const char*>(src) + k));
  }
}
#endif

// Copies one assembled row to the output with non-temporal stores (kStream: 32 AVX2, 64 AVX-512).
template <int kStream>
inline void stream_row(void* dst, const void* src, int64_t bytes) {
#if JR2_X86_DISPATCH
  if constexpr (kStream == 64) {
    stream_row_avx512(dst, src, bytes);
  } else if constexpr (kStream == 32) {
    stream_row_avx2(dst, src, bytes);
  }
#else
  (void)dst, (void)src, (void)bytes;
#endif
}

// warped[b, c, rows r0:r1] from the taps. Channel planes are the outer loop (callers), so one
// source plane stays in L2 while its output streams. The run loop is branch-free loads + FMAs;
// gather_plane_isa runs a copy compiled for AVX-512 or AVX2 where the CPU has it (simd_level();
// wider arithmetic, float32 runs through run_pairs_f32 (kPairs); same maths up to FMA
// contraction).
template <typename T, bool kPairs = false, int kStream = 0>
JR2_ALWAYS_INLINE inline void gather_plane(const WarpParams<T>& P, const Taps<T>& tt, int64_t b,
                                           int64_t c, int64_t r0, int64_t r1) {
  const int64_t HWt = P.Ht * P.Wt, HWs = P.Hs * P.Ws, dx = tap_dx(P), dy = tap_dy(P);
  alignas(64) T rowbuf[kStream ? kStreamMaxRow : 1];
  const bool stream = kStream && streamable<T, kStream>(P, b, c);
  const T* __restrict s = P.src + (b * P.C + c) * HWs;
  // The next plane of this batch is read at the same taps: prefetch them now (into L2), since
  // the hardware prefetchers do not follow the footprint's path through the plane.
  const int64_t ahead = c + 1 < P.C ? HWs : 0;
  for (int64_t i = r0; i < r1; ++i) {
    const int64_t r = b * P.Ht + i;
    T* const orow = P.warped + (b * P.C + c) * HWt + i * P.Wt;
    T* __restrict o = stream ? rowbuf : orow;
    const int32_t* __restrict idx = tt.idx.data() + r * P.Wt;
    const T *__restrict fx = tt.fx.data() + r * P.Wt, *__restrict fy = tt.fy.data() + r * P.Wt;
    const int32_t* sp = tt.spans.data() + r * (P.Wt + 1);
    int64_t j = 0, m = 0;
    for (int32_t q = 0; q < tt.nspan.data()[r]; ++q) {
      const int64_t ja = sp[2 * q], je = sp[2 * q + 1];
      std::fill(o + j, o + ja, T(0));
      // Every 4th footprint: measured faster than every 8th or 16th (64ch 256², AVX2 and
      // AVX-512; the footprints of a row wander across source rows and lines).
      if (ahead) {
        for (int64_t k = m; k < m + (je - ja); k += 4) {
          __builtin_prefetch(s + idx[k] + ahead, 0, 2);
          __builtin_prefetch(s + idx[k] + dy + ahead, 0, 2);
        }
      }
      const int64_t n = je - ja;
      const int32_t* __restrict id = idx + m;
      const T *__restrict ux = fx + m, *__restrict uy = fy + m;
      T* __restrict os = o + ja;
      int64_t k0 = 0;
#if JR2_X86_DISPATCH
      if constexpr (kPairs && sizeof(T) == 4) {
        if (dx == 1) k0 = run_pairs_f32(s, dy, id, ux, uy, os, n);
      }
#endif
#pragma omp simd
      for (int64_t k = k0; k < n; ++k) {
        const int64_t t = id[k];
        const T s00 = s[t], s01 = s[t + dx], s10 = s[t + dy], s11 = s[t + dy + dx];
        const T top = s00 + ux[k] * (s01 - s00), bot = s10 + ux[k] * (s11 - s10);
        os[k] = top + uy[k] * (bot - top);  // fewer loads than the 4-weight form
      }
      j = je;
      m += n;
    }
    std::fill(o + j, o + P.Wt, T(0));
    if (stream) stream_row<kStream>(orow, rowbuf, P.Wt * int64_t(sizeof(T)));
  }
}

template <typename T>
void gather_plane_base(const WarpParams<T>& P, const Taps<T>& tt, int64_t b, int64_t c,
                       int64_t r0, int64_t r1) {
  gather_plane(P, tt, b, c, r0, r1);
}
#if JR2_X86_DISPATCH
template <typename T>
JR2_TARGET_AVX512 void gather_plane_avx512(const WarpParams<T>& P, const Taps<T>& tt, int64_t b,
                                           int64_t c, int64_t r0, int64_t r1) {
  gather_plane<T, true, 64>(P, tt, b, c, r0, r1);
}
template <typename T>
JR2_TARGET_AVX2 void gather_plane_avx2(const WarpParams<T>& P, const Taps<T>& tt, int64_t b,
                                       int64_t c, int64_t r0, int64_t r1) {
  gather_plane<T, true, 32>(P, tt, b, c, r0, r1);
}
#endif
template <typename T>
void gather_plane_isa(const WarpParams<T>& P, const Taps<T>& tt, int64_t b, int64_t c,
                      int64_t r0, int64_t r1) {
#if JR2_X86_DISPATCH
  const SimdLevel level = simd_level();
  if (level == SimdLevel::kAvx512) return gather_plane_avx512(P, tt, b, c, r0, r1);
  if (level == SimdLevel::kAvx2) return gather_plane_avx2(P, tt, b, c, r0, r1);
#endif
  gather_plane_base(P, tt, b, c, r0, r1);
}

// Backward of one channel plane over target pixels [p0, p1) of batch b: grad_src[b, c] +=
// bilinear scatter of the incoming grad (kSrc), and gx/gy += dL/dx, dL/dy of the projected
// positions (kGeo; indexed by target pixel).
// The scatter keeps the two tap columns of the previous pixel in registers and flushes a column
// only when the footprint moves past it: consecutive target pixels usually share a column, and
// read-modify-writing it through memory would serialise on store-to-load forwarding.
template <typename T, bool kSrc, bool kGeo>
JR2_ALWAYS_INLINE inline void backward_plane(const WarpParams<T>& P, const Taps<T>& tt,
                                             int64_t b, int64_t c, T* __restrict gx,
                                             T* __restrict gy) {
  const int64_t HWt = P.Ht * P.Wt, HWs = P.Hs * P.Ws, dx = tap_dx(P), dy = tap_dy(P);
  const T* __restrict s = P.src + (b * P.C + c) * HWs;
  T* __restrict gs = kSrc ? P.grad_src + (b * P.C + c) * HWs : nullptr;
  const int64_t ahead = c + 1 < P.C ? HWs : 0;
  int64_t ip = -1;                                   // top-left tap of the pending footprint
  T a00 = T(0), a01 = T(0), a10 = T(0), a11 = T(0);  // its pending contributions
  for (int64_t i = 0; i < P.Ht; ++i) {
    const int64_t r = b * P.Ht + i;
    const T* __restrict g = P.grad_warped + (b * P.C + c) * HWt + i * P.Wt;
    const int32_t* __restrict idx = tt.idx.data() + r * P.Wt;
    const T *__restrict fx = tt.fx.data() + r * P.Wt, *__restrict fy = tt.fy.data() + r * P.Wt;
    const int32_t* sp = tt.spans.data() + r * (P.Wt + 1);
    int64_t m = 0;
    for (int32_t q = 0; q < tt.nspan.data()[r]; ++q) {
      const int64_t ja = sp[2 * q], n = sp[2 * q + 1] - ja;
      const int32_t* __restrict id = idx + m;
      const T *__restrict ux = fx + m, *__restrict uy = fy + m, *__restrict gk = g + ja;
      if (ahead && kGeo) {  // the next plane's source values at the same taps
        for (int64_t k = 0; k < n; k += 8) {
          __builtin_prefetch(s + id[k] + ahead, 0, 2);
          __builtin_prefetch(s + id[k] + dy + ahead, 0, 2);
        }
      }
      if (kGeo) {  // dL/dx, dL/dy of the projected positions: branch-free, vectorises
        T* __restrict ox = gx + i * P.Wt + ja;
        T* __restrict oy = gy + i * P.Wt + ja;
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) {
          const int64_t t = id[k];
          const T s00 = s[t], s01 = s[t + dx], s10 = s[t + dy], s11 = s[t + dy + dx];
          ox[k] += gk[k] * ((T(1) - uy[k]) * (s01 - s00) + uy[k] * (s11 - s10));
          oy[k] += gk[k] * ((T(1) - ux[k]) * (s10 - s00) + ux[k] * (s11 - s01));
        }
      }
      if (kSrc) {
        for (int64_t k = 0; k < n; ++k) {
          const int64_t t = id[k];
          const T gb = gk[k] * uy[k], gt = gk[k] - gb;  // bottom and top row shares
          const T b01 = gt * ux[k], b00 = gt - b01, b11 = gb * ux[k], b10 = gb - b11;
          if (t == ip) {
            a00 += b00;
            a01 += b01;
            a10 += b10;
            a11 += b11;
          } else if (t == ip + 1 && dx == 1) {  // moved one column right: flush the left column
            gs[ip] += a00;
            gs[ip + dy] += a10;
            a00 = a01 + b00;
            a10 = a11 + b10;
            a01 = b01;
            a11 = b11;
            ip = t;
          } else {
            if (ip >= 0) {
              gs[ip] += a00;
              gs[ip + dx] += a01;
              gs[ip + dy] += a10;
              gs[ip + dy + dx] += a11;
            }
            ip = t;
            a00 = b00;
            a01 = b01;
            a10 = b10;
            a11 = b11;
          }
        }
      }
      m += n;
    }
  }
  if (kSrc && ip >= 0) {
    gs[ip] += a00;
    gs[ip + dx] += a01;
    gs[ip + dy] += a10;
    gs[ip + dy + dx] += a11;
  }
}

// Zeroes grad_src[b, c] (kSrc) and runs backward_plane on it; dispatched like gather_plane.
template <typename T, bool kSrc, bool kGeo>
JR2_ALWAYS_INLINE inline void backward_plane_z(const WarpParams<T>& P, const Taps<T>& tt,
                                               int64_t b, int64_t c, T* gx, T* gy) {
  if (kSrc) {
    T* gs = P.grad_src + (b * P.C + c) * P.Hs * P.Ws;
    std::fill(gs, gs + P.Hs * P.Ws, T(0));
  }
  backward_plane<T, kSrc, kGeo>(P, tt, b, c, gx, gy);
}
template <typename T, bool kSrc, bool kGeo>
void backward_plane_base(const WarpParams<T>& P, const Taps<T>& tt, int64_t b, int64_t c, T* gx,
                         T* gy) {
  backward_plane_z<T, kSrc, kGeo>(P, tt, b, c, gx, gy);
}
#if JR2_X86_DISPATCH
template <typename T, bool kSrc, bool kGeo>
JR2_TARGET_AVX512 void backward_plane_avx512(const WarpParams<T>& P, const Taps<T>& tt, int64_t b,
                                             int64_t c, T* gx, T* gy) {
  backward_plane_z<T, kSrc, kGeo>(P, tt, b, c, gx, gy);
}
template <typename T, bool kSrc, bool kGeo>
JR2_TARGET_AVX2 void backward_plane_avx2(const WarpParams<T>& P, const Taps<T>& tt, int64_t b,
                                         int64_t c, T* gx, T* gy) {
  backward_plane_z<T, kSrc, kGeo>(P, tt, b, c, gx, gy);
}
#endif
template <typename T, bool kSrc, bool kGeo>
void backward_plane_isa(const WarpParams<T>& P, const Taps<T>& tt, int64_t b, int64_t c, T* gx,
                        T* gy) {
#if JR2_X86_DISPATCH
  const SimdLevel level = simd_level();
  if (level == SimdLevel::kAvx512) return backward_plane_avx512<T, kSrc, kGeo>(P, tt, b, c, gx, gy);
  if (level == SimdLevel::kAvx2) return backward_plane_avx2<T, kSrc, kGeo>(P, tt, b, c, gx, gy);
#endif
  backward_plane_base<T, kSrc, kGeo>(P, tt, b, c, gx, gy);
}

// Work units of the forward: (b, c, block of target rows), planes outermost, so a thread's
// contiguous range of units walks whole channel planes and both threads stream.
template <typename T, bool kDepth>
void fwd_impl(const WarpParams<T>& P) {
  Taps<T> tt(P.B * P.Ht, P.Wt);
  all_taps<T, kDepth>(P, tt, P.covisible, nullptr);
  const int64_t rows = std::max<int64_t>(1, kBlock / std::max<int64_t>(1, P.Wt));
  const int64_t nblk = (P.Ht + rows - 1) / rows;
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, rows * P.Wt));
  at::parallel_for(0, P.B * P.C * nblk, grain, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t plane = u / nblk, r0 = (u % nblk) * rows;
      const int64_t r1 = r0 + rows < P.Ht ? r0 + rows : P.Ht;
      gather_plane_isa(P, tt, plane / P.C, plane % P.C, r0, r1);
    }
#if JR2_X86_DISPATCH
    _mm_sfence();  // order the non-temporal stores before the pool's barrier
#endif
  });
}

template <typename T, bool kDepth, bool kSrc, bool kGeo>
void bwd_impl(const WarpParams<T>& P) {
  const int64_t HWt = P.Ht * P.Wt;
  const int64_t ntiles = (HWt + kBlock - 1) / kBlock;
  constexpr int64_t nj = kJac<kDepth>;
  std::vector<T> jac(kGeo ? static_cast<size_t>(P.B * HWt * nj) : 0);
  Taps<T> tt(P.B * P.Ht, P.Wt);
  all_taps<T, kDepth>(P, tt, nullptr, kGeo ? jac.data() : nullptr);
  // Channels of a batch are split into nchunk ranges, one work unit each (planes outer, pixels
  // inner; each grad_src plane is zeroed and scattered by one thread, so no atomics). Position
  // grads are accumulated per unit in partial[b][chunk][2][HWt] and summed below.
  const int64_t threads = P.B * HWt * P.C >= kGrain ? at::get_num_threads() : 1;
  const int64_t nchunk = std::max<int64_t>(1, std::min<int64_t>(P.C, threads));
  std::vector<T> partial(kGeo ? static_cast<size_t>(P.B * nchunk * 2 * HWt) : 0);
  at::parallel_for(0, P.B * nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u / nchunk, chunk = u % nchunk;
      const int64_t c0 = chunk * P.C / nchunk, c1 = (chunk + 1) * P.C / nchunk;
      T* gx = kGeo ? partial.data() + u * 2 * HWt : nullptr;
      T* gy = kGeo ? gx + HWt : nullptr;
      if (kGeo) std::fill(gx, gx + 2 * HWt, T(0));
      for (int64_t c = c0; c < c1; ++c) backward_plane_isa<T, kSrc, kGeo>(P, tt, b, c, gx, gy);
    }
  });
  if (!kGeo) return;
  // dL/d(dst_depth) or dL/d(points_src) = Jacobianᵀ · (summed dL/dx, dL/dy).
  at::parallel_for(0, P.B * ntiles, std::max<int64_t>(1, kGrain / (kBlock * 2 * nchunk)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / ntiles, p0 = (t % ntiles) * kBlock;
      const int64_t p1 = p0 + kBlock < HWt ? p0 + kBlock : HWt;
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
}  // namespace jr2net::warp

namespace jr2net {

std::tuple<at::Tensor, at::Tensor> warp_fwd_cpu(const WarpInputs& in) {
  const at::Tensor& src = in.src;
  const int64_t Ht = in.depth ? in.dst_depth.size(2) : in.points.size(1);
  const int64_t Wt = in.depth ? in.dst_depth.size(3) : in.points.size(2);
  at::Tensor warped = at::empty({src.size(0), src.size(1), Ht, Wt}, src.options());
  at::Tensor covisible = at::empty({src.size(0), 1, Ht, Wt}, src.options());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "warp_fwd_cpu", [&] {
    warp::WarpParams<scalar_t> P = warp::make_params<scalar_t>(in);
    P.warped = warped.data_ptr<scalar_t>();
    P.covisible = covisible.data_ptr<scalar_t>();
    if (in.depth) {
      warp::fwd_impl<scalar_t, true>(P);
    } else {
      warp::fwd_impl<scalar_t, false>(P);
    }
  });
  return {warped, covisible};
}

std::tuple<at::Tensor, at::Tensor> warp_bwd_cpu(const WarpInputs& in, const at::Tensor& grad_warped,
                                                bool need_src, bool need_geometry) {
  at::Tensor grad_src, grad_geo;
  if (need_src) grad_src = at::empty(in.src.sizes(), in.src.options());  // zeroed per plane
  if (need_geometry) {
    const at::Tensor& geo = in.depth ? in.dst_depth : in.points;
    grad_geo = at::empty(geo.sizes(), geo.options());
  }
  AT_DISPATCH_FLOATING_TYPES(in.src.scalar_type(), "warp_bwd_cpu", [&] {
    warp::WarpParams<scalar_t> P = warp::make_params<scalar_t>(in);
    P.grad_warped = grad_warped.data_ptr<scalar_t>();
    if (need_src) P.grad_src = grad_src.data_ptr<scalar_t>();
    if (need_geometry && in.depth) P.grad_dst_depth = grad_geo.data_ptr<scalar_t>();
    if (need_geometry && !in.depth) P.grad_points = grad_geo.data_ptr<scalar_t>();
    if (in.depth) {
      warp::bwd_dispatch<scalar_t, true>(P, need_src, need_geometry);
    } else {
      warp::bwd_dispatch<scalar_t, false>(P, need_src, need_geometry);
    }
  });
  return {grad_src, grad_geo};
}

}  // namespace jr2net
