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
// atomics, and the per-pixel position grads are summed over the ranges after.
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

// Footprints of the covisible target pixels, row by row: row r (of B*Ht) owns the slots
// [r*Wt, r*Wt + Wt) of idx/fx/fy (top-left tap index, fractional position; filled from the
// slot start, covisible pixels only) and spans[r*(Wt+1) ...] holds its nspan[r] runs of covisible
// columns as [begin, end) pairs. Only covisible pixels are stored and read (12 bytes each), so a
// batch's taps stay in L2 while the channel planes stream past them, and the per-plane loops are
// branch-free runs plus zero fills.
template <typename T>
struct Taps {
  // Uninitialised storage (every slot read is written first): no memset per call.
  template <typename U>
  struct Buf {
    std::unique_ptr<U[]> p;
    explicit Buf(int64_t n) : p(new U[static_cast<size_t>(n)]) {}
    U* data() { return p.get(); }
    const U* data() const { return p.get(); }
  };
  Buf<int32_t> idx, spans, nspan;
  Buf<T> fx, fy;
  Taps(int64_t rows, int64_t Wt)
      : idx(rows * Wt), spans(rows * (Wt + 1)), nspan(rows), fx(rows * Wt), fy(rows * Wt) {}
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

// Footprints of target row i of batch b; optionally covisible (0/1) and jac (kJac per pixel,
// zeros where not covisible), the Jacobian of the projected position w.r.t. the pixel's
// differentiable input. Pointers are at the row's first pixel.
template <typename T, bool kDepth>
void row_taps(const WarpParams<T>& P, const DepthWarpFrame<T>& F, int64_t b, int64_t i,
              Taps<T>& tt, T* covisible, T* jac) {
  const T* K = P.K_src + b * 9;
  const T* sd = P.src_depth ? P.src_depth + b * P.Hs * P.Ws : nullptr;
  const int64_t p0 = i * P.Wt, r = b * P.Ht + i;
  int32_t* idx = tt.idx.data() + r * P.Wt;
  T* fxs = tt.fx.data() + r * P.Wt;
  T* fys = tt.fy.data() + r * P.Wt;
  int32_t* spans = tt.spans.data() + r * (P.Wt + 1);
  int32_t m = 0, ns = 0;  // covisible pixels and spans so far
  bool open = false;
  for (int64_t j = 0; j < P.Wt; ++j) {
    T X[3], ray[3] = {T(0), T(0), T(0)};
    WarpSample<T> s;
    const bool ok = warp_point<T, kDepth>(P, F, b, p0 + j, i, j, X, ray) &&
                    warp_sample(K, X, P.Hs, P.Ws, sd, P.rel_eps, s);
    if (covisible) covisible[j] = ok ? T(1) : T(0);
    if (jac) {
      T* J = jac + j * kJac<kDepth>;
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
    if (ok != open) {  // a span begins or ends at column j
      spans[ns++] = static_cast<int32_t>(j);
      open = ok;
    }
    if (!ok) continue;
    idx[m] = static_cast<int32_t>(s.i00);
    fxs[m] = s.fx;
    fys[m] = s.fy;
    ++m;
  }
  if (open) spans[ns++] = static_cast<int32_t>(P.Wt);
  tt.nspan.data()[r] = ns / 2;
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

// The forward's footprints of a row in two passes: row_project (branch-free, so it vectorises;
// AVX2 / AVX-512 copies) projects every pixel and finds its tap and fractions, then
// row_taps_fast runs the source-depth test on the pixels inside the image and packs the
// covisible ones. Both compute warp_point + warp_sample's operations in the same order with no
// FMA contraction (hence the pragma: the AVX-512 target implies FMA), so the covisible masks and
// taps are the scalar path's bit for bit.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
template <typename T>
struct RowProj {
  std::unique_ptr<int32_t[]> ok, tap;
  std::unique_ptr<T[]> fx, fy, z;
  explicit RowProj(int64_t n)
      : ok(new int32_t[n]), tap(new int32_t[n]), fx(new T[n]), fy(new T[n]), z(new T[n]) {}
};

template <typename T, bool kDepth>
JR2_ALWAYS_INLINE inline void row_project(const WarpParams<T>& P, const DepthWarpFrame<T>& F,
                                          int64_t b, int64_t i, RowProj<T>& rp) {
  const T* K = P.K_src + b * 9;
  const T k0 = K[0], k1 = K[1], k2 = K[2], k3 = K[3], k4 = K[4], k5 = K[5], k6 = K[6],
          k7 = K[7], k8 = K[8];
  const int64_t p0 = b * P.Ht * P.Wt + i * P.Wt;
  const T lo = T(-kWarpEdgeTol), xhi = T(double(P.Ws - 1) + kWarpEdgeTol);
  const T yhi = T(double(P.Hs - 1) + kWarpEdgeTol);
  const int32_t xmax = P.Ws > 1 ? int32_t(P.Ws - 2) : 0, ymax = P.Hs > 1 ? int32_t(P.Hs - 2) : 0;
  const int32_t ws = static_cast<int32_t>(P.Ws);
  int32_t* __restrict ok = rp.ok.get();
  int32_t* __restrict tap = rp.tap.get();
  T *__restrict fxs = rp.fx.get(), *__restrict fys = rp.fy.get(), *__restrict zs = rp.z.get();
  const T* __restrict dd = kDepth ? P.dst_depth + p0 : nullptr;
  const T* __restrict vd = kDepth ? nullptr : P.valid + p0;
  const T* __restrict pts = kDepth ? nullptr : P.points + p0 * 3;
  const T v = T(i);
  // M [j, i, 1] = (M0 j + M1 i + M2, ...): the row's M1 i + M2 is not hoisted (same order)
  const T m0 = F.M[0], m1 = F.M[1], m2 = F.M[2], m3 = F.M[3], m4 = F.M[4], m5 = F.M[5],
          m6 = F.M[6], m7 = F.M[7], m8 = F.M[8], t0 = F.t[0], t1 = F.t[1], t2 = F.t[2];
#pragma omp simd
  for (int64_t j = 0; j < P.Wt; ++j) {
    T X0, X1, X2;
    bool valid;
    if constexpr (kDepth) {  // warp_point: P = d * (M [j, i, 1]) + t
      const T d = dd[j], u = T(static_cast<int32_t>(j));  // int32: vectorises without DQ
      valid = d > T(0);
      X0 = d * (m0 * u + m1 * v + m2) + t0;
      X1 = d * (m3 * u + m4 * v + m5) + t1;
      X2 = d * (m6 * u + m7 * v + m8) + t2;
    } else {
      valid = vd[j] > T(0.5);
      X0 = pts[j * 3];
      X1 = pts[j * 3 + 1];
      X2 = pts[j * 3 + 2];
    }
    // warp_sample without the source-depth test
    const T q0 = k0 * X0 + k1 * X1 + k2 * X2;
    const T q1 = k3 * X0 + k4 * X1 + k5 * X2;
    const T q2 = k6 * X0 + k7 * X1 + k8 * X2;
    const T x = q0 / q2, y = q1 / q2;
    const bool good = valid & (q2 > T(0)) & (x >= lo) & (x <= xhi) & (y >= lo) & (y <= yhi);
    const T xs = good ? x : T(0), ys = good ? y : T(0);
    int32_t x0 = static_cast<int32_t>(xs), y0 = static_cast<int32_t>(ys);
    x0 = x0 < xmax ? x0 : xmax;
    y0 = y0 < ymax ? y0 : ymax;
    ok[j] = good ? 1 : 0;
    tap[j] = y0 * ws + x0;
    fxs[j] = xs - T(x0);
    fys[j] = ys - T(y0);
    zs[j] = X2;
  }
}

template <typename T, bool kDepth>
void row_project_base(const WarpParams<T>& P, const DepthWarpFrame<T>& F, int64_t b, int64_t i,
                      RowProj<T>& rp) {
  row_project<T, kDepth>(P, F, b, i, rp);
}
#if JR2_X86_DISPATCH
template <typename T, bool kDepth>
JR2_TARGET_AVX512 void row_project_avx512(const WarpParams<T>& P, const DepthWarpFrame<T>& F,
                                          int64_t b, int64_t i, RowProj<T>& rp) {
  row_project<T, kDepth>(P, F, b, i, rp);
}
template <typename T, bool kDepth>
JR2_TARGET_AVX2 void row_project_avx2(const WarpParams<T>& P, const DepthWarpFrame<T>& F,
                                      int64_t b, int64_t i, RowProj<T>& rp) {
  row_project<T, kDepth>(P, F, b, i, rp);
}
#endif

// Footprints of target row i of batch b for the forward (tt and covisible, as row_taps).
template <typename T, bool kDepth>
void row_taps_fast(const WarpParams<T>& P, const DepthWarpFrame<T>& F, int64_t b, int64_t i,
                   Taps<T>& tt, T* covisible, RowProj<T>& rp) {
#if JR2_X86_DISPATCH
  const SimdLevel level = simd_level();
  if (level == SimdLevel::kAvx512) {
    row_project_avx512<T, kDepth>(P, F, b, i, rp);
  } else if (level == SimdLevel::kAvx2) {
    row_project_avx2<T, kDepth>(P, F, b, i, rp);
  } else {
    row_project_base<T, kDepth>(P, F, b, i, rp);
  }
#else
  row_project_base<T, kDepth>(P, F, b, i, rp);
#endif
  const T* sd = P.src_depth ? P.src_depth + b * P.Hs * P.Ws : nullptr;
  const int64_t dx = tap_dx(P), dy = tap_dy(P), r = b * P.Ht + i;
  int32_t* idx = tt.idx.data() + r * P.Wt;
  T* fxs = tt.fx.data() + r * P.Wt;
  T* fys = tt.fy.data() + r * P.Wt;
  int32_t* spans = tt.spans.data() + r * (P.Wt + 1);
  int32_t m = 0, ns = 0;
  bool open = false;
  for (int64_t j = 0; j < P.Wt; ++j) {
    bool ok = rp.ok[j] != 0;
    const int32_t t = rp.tap[j];
    const T fx = rp.fx[j], fy = rp.fy[j];
    if (ok && sd) {  // warp_sample's source-depth test
      const T d00 = sd[t], d01 = sd[t + dx], d10 = sd[t + dy], d11 = sd[t + dy + dx];
      if (!(d00 > T(0) && d01 > T(0) && d10 > T(0) && d11 > T(0))) {
        ok = false;
      } else {
        const T top = d00 + fx * (d01 - d00);
        const T bot = d10 + fx * (d11 - d10);
        const T ds = top + fy * (bot - top);
        const T z = rp.z[j];
        const T diff = z > ds ? z - ds : ds - z;
        ok = diff <= P.rel_eps * z;
      }
    }
    covisible[j] = ok ? T(1) : T(0);
    if (ok != open) {
      spans[ns++] = static_cast<int32_t>(j);
      open = ok;
    }
    if (!ok) continue;
    idx[m] = t;
    fxs[m] = fx;
    fys[m] = fy;
    ++m;
  }
  if (open) spans[ns++] = static_cast<int32_t>(P.Wt);
  tt.nspan.data()[r] = ns / 2;
}
#pragma GCC pop_options

// Taps of all target pixels (parallel over B*Ht rows), plus covisible / jac when given.
template <typename T, bool kDepth>
void all_taps(const WarpParams<T>& P, Taps<T>& tt, T* covisible, T* jac) {
  const int64_t HWt = P.Ht * P.Wt;
  const int64_t grain = std::max<int64_t>(1, (kGrain / 8) / std::max<int64_t>(1, P.Wt));
  // Source planes of 2^31 values or more have taps past int32 (make_params refuses them).
  const bool fast = covisible && !jac;
  at::parallel_for(0, P.B * P.Ht, grain, [&](int64_t begin, int64_t end) {
    int64_t b = begin / P.Ht;
    DepthWarpFrame<T> F = frame_of(P, kDepth, b);
    std::unique_ptr<RowProj<T>> rp(fast ? new RowProj<T>(P.Wt) : nullptr);
    for (int64_t r = begin; r < end; ++r) {
      if (r / P.Ht != b) {
        b = r / P.Ht;
        F = frame_of(P, kDepth, b);
      }
      const int64_t i = r - b * P.Ht, p = b * HWt + i * P.Wt;
      if (fast) {
        row_taps_fast<T, kDepth>(P, F, b, i, tt, covisible + p, *rp);
      } else {
        row_taps<T, kDepth>(P, F, b, i, tt, covisible ? covisible + p : nullptr,
                            jac ? jac + p * kJac<kDepth> : nullptr);
      }
    }
  });
}

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

template <typename T, int kStream>
inline bool streamable(const WarpParams<T>& P, int64_t b, int64_t c) {
  const int64_t bytes = P.Wt * int64_t(sizeof(T));
  const auto base = reinterpret_cast<uintptr_t>(P.warped + (b * P.C + c) * P.Ht * P.Wt);
  return P.Wt <= kStreamMaxRow && bytes % kStream == 0 && base % kStream == 0;
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
