// CPU rasteriser: project vertices, scatter every triangle's covered pixels into a packed
// (depth, face id) z-buffer (each thread owns whole images or a band of rows: no atomics), then
// resolve (u, v, z) per pixel. Coverage and depth run in double so ids match the reference bit
// for bit; the per-triangle work is ordered so that the common tiny or empty triangle costs no
// division (edges and bbox first, row spans only for wide triangles, depth coefficients only
// once a pixel is covered). Where the CPU has AVX2 or AVX-512 (simd_level()), copies of the
// projection, the triangle draw and the resolve compiled for it run instead
// (cpu/rasterize_simd.inc: triangles set up and culled 4 or 8 at a time, a triangle's bbox
// pixels tested 4 or 8 at a time); the file is compiled with FMA contraction off, so every copy
// gives the same bits.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <vector>

#include "cpu/cpu_features.h"
#include "rasterize_dispatch.h"

#if JR2_X86_DISPATCH
#include <immintrin.h>
#endif

// No FMA contraction in this file: the vectorised copies (compiled for FMA-capable targets) must
// round every product and sum like the baseline copy and the reference do.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace jr2net::raster {
namespace {

// Triangles at most this many columns wide test every pixel of their bbox rows; wider ones
// narrow each row to a conservative span first (row_span), which costs three divisions.
constexpr int kSpanMinWidth = 6;

// Scatters triangle f of one image into the rows [r0, r1] of its z-buffer zb (the caller owns
// those rows: plain loads and stores). Ties go to the lower id through the packed key, so the
// order triangles are drawn in does not matter.
inline void draw_triangle(const double* pb, const int32_t* fv, int f, int H, int W, bool cull,
                          int r0, int r1, unsigned long long* zb) {
  const double *p0 = pb + int64_t(fv[0]) * 3, *p1 = pb + int64_t(fv[1]) * 3,
               *p2 = pb + int64_t(fv[2]) * 3;
  TriSetup<double> ts;
  if (!setup_coverage(p0, p1, p2, H, W, cull, ts)) return;
  const int i0 = ts.i0 > r0 ? ts.i0 : r0, i1 = ts.i1 < r1 ? ts.i1 : r1;
  if (i0 > i1) return;
  const bool spans = ts.j1 - ts.j0 >= kSpanMinWidth;
  if (spans) prepare_spans(ts);
  bool depth_ready = false;
  for (int i = i0; i <= i1; ++i) {
    const RowTerms<double> rt = row_terms(ts, static_cast<double>(i));
    int ja = ts.j0, jb = ts.j1;
    if (spans && !row_span(ts, rt, ja, jb)) continue;
    unsigned long long* zrow = zb + int64_t(i) * W;
    for (int j = ja; j <= jb; ++j) {
      double E[3];
      if (!pixel_edges(ts, rt, static_cast<double>(j), E)) continue;
      if (!depth_ready) {
        setup_depth(p0, p1, p2, ts);
        depth_ready = true;
      }
      const unsigned long long key = depth_key(ts, E, f);
      if (key < zrow[j]) zrow[j] = key;
    }
  }
}

// Rows [r0, r1) of pixels of image b: (u, v, z, id + 1) from the z-buffer keys.
template <typename scalar_t>
JR2_ALWAYS_INLINE inline void resolve_rows(const RasterFwdParams<scalar_t, double>& p, int64_t r0,
                                           int64_t r1) {
  const int64_t H = p.H, W = p.W, V = p.V;
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t b = row / H;
    const double py = static_cast<double>(row - b * H);
    const double* pb = p.proj + b * V * 3;
    for (int64_t j = 0; j < W; ++j) {
      const int64_t pix = row * W + j;
      const unsigned long long key = p.zbuf[pix];
      scalar_t* out = p.rast + pix * 4;
      if (key == kEmptyKey) {
        out[0] = out[1] = out[2] = out[3] = scalar_t(0);
        continue;
      }
      const int f = static_cast<int>(key & 0xffffffffull);
      const int32_t* fv = p.faces + int64_t(f) * 3;
      double u, v, z;
      resolve_uvz_proj(pb + int64_t(fv[0]) * 3, pb + int64_t(fv[1]) * 3, pb + int64_t(fv[2]) * 3,
                       static_cast<double>(j), py, u, v, z);
      out[0] = static_cast<scalar_t>(u);
      out[1] = static_cast<scalar_t>(v);
      out[2] = static_cast<scalar_t>(z);
      out[3] = static_cast<scalar_t>(f + 1);
    }
  }
}

// Triangles [f0, f1) of one image, clipped to rows [r0, r1]; with `rows` (draw_image_banded's
// packed row ranges, -1: draws nothing) only those reaching [r0, r1] are drawn.
struct DrawJob {
  const double* pb;
  const int32_t* faces;
  int f0, f1, H, W;
  bool cull;
  int r0, r1;
  const int32_t* rows;
  unsigned long long* zb;
};

}  // namespace

#if JR2_X86_DISPATCH
// The AVX2 and AVX-512 copies (cpu/rasterize_simd.inc, compiled once per instruction set).
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
namespace avx2 {
struct Vec {
  static constexpr int N = 4;
  using D = __m256d;
  static D set1(double x) { return _mm256_set1_pd(x); }
  static D load(const double* p) { return _mm256_loadu_pd(p); }
  static D add(D a, D b) { return _mm256_add_pd(a, b); }
  static D sub(D a, D b) { return _mm256_sub_pd(a, b); }
  static D mul(D a, D b) { return _mm256_mul_pd(a, b); }
  static D div(D a, D b) { return _mm256_div_pd(a, b); }
  static unsigned gt(D a, D b) {
    return static_cast<unsigned>(_mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_GT_OQ)));
  }
  static unsigned eq(D a, D b) {
    return static_cast<unsigned>(_mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_EQ_OQ)));
  }
  static void store_float(float* p, D a) { _mm_storeu_ps(p, _mm256_cvtpd_ps(a)); }
  static void store(double* p, D a) { _mm256_store_pd(p, a); }
  static D min(D a, D b) { return _mm256_min_pd(a, b); }
  static D max(D a, D b) { return _mm256_max_pd(a, b); }
  static D ceil(D a) { return _mm256_round_pd(a, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC); }
  static D floor(D a) { return _mm256_round_pd(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  using I = __m128i;  // N int32 indices
  static I load_idx(const int32_t* p) { return _mm_load_si128(reinterpret_cast<const __m128i*>(p)); }
  static D gather(const double* base, I idx) {
    const __m256d all = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
    return _mm256_mask_i32gather_pd(_mm256_setzero_pd(), base, idx, all, 8);
  }
  using M = __m256d;  // lane mask
  template <int kPred>
  static M cmp(D a, D b) { return _mm256_cmp_pd(a, b, kPred); }
  static M mand(M a, M b) { return _mm256_and_pd(a, b); }
  static M mor(M a, M b) { return _mm256_or_pd(a, b); }
  static D blend(M m, D a, D b) { return _mm256_blendv_pd(b, a, m); }  // m ? a : b
  static unsigned bits(M m) { return static_cast<unsigned>(_mm256_movemask_pd(m)); }
};
namespace {
#include "cpu/rasterize_simd.inc"
}  // namespace
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx2,fma"))), \
                             apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
#endif
namespace avx512 {
struct Vec {
  static constexpr int N = 8;
  using D = __m512d;
  static D set1(double x) { return _mm512_set1_pd(x); }
  static D load(const double* p) { return _mm512_loadu_pd(p); }
  static D add(D a, D b) { return _mm512_add_pd(a, b); }
  static D sub(D a, D b) { return _mm512_sub_pd(a, b); }
  static D mul(D a, D b) { return _mm512_mul_pd(a, b); }
  static D div(D a, D b) { return _mm512_div_pd(a, b); }
  static unsigned gt(D a, D b) { return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ); }
  static unsigned eq(D a, D b) { return _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ); }
  static void store_float(float* p, D a) { _mm256_storeu_ps(p, _mm512_maskz_cvtpd_ps(0xff, a)); }
  static void store(double* p, D a) { _mm512_store_pd(p, a); }
  // Full-mask forms of min / max / roundscale: GCC 12's unmasked ones warn (undefined source).
  static D min(D a, D b) { return _mm512_mask_min_pd(a, 0xff, a, b); }
  static D max(D a, D b) { return _mm512_mask_max_pd(a, 0xff, a, b); }
  static D ceil(D a) {
    return _mm512_mask_roundscale_pd(a, 0xff, a, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
  }
  static D floor(D a) {
    return _mm512_mask_roundscale_pd(a, 0xff, a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  }
  using I = __m256i;  // N int32 indices
  static I load_idx(const int32_t* p) {
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
  }
  static D gather(const double* base, I idx) {  // masked form: no undefined source operand
    return _mm512_mask_i32gather_pd(_mm512_setzero_pd(), 0xff, idx, base, 8);
  }
  using M = __mmask8;  // lane mask
  template <int kPred>
  static M cmp(D a, D b) { return _mm512_cmp_pd_mask(a, b, kPred); }
  static M mand(M a, M b) { return static_cast<M>(a & b); }
  static M mor(M a, M b) { return static_cast<M>(a | b); }
  static D blend(M m, D a, D b) { return _mm512_mask_blend_pd(m, b, a); }  // m ? a : b
  static unsigned bits(M m) { return m; }
};
namespace {
#include "cpu/rasterize_simd.inc"
}  // namespace
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // JR2_X86_DISPATCH

namespace {

// The copy for simd_level(): projection of vertices [k0, k1) of the flattened [B*V].
template <typename scalar_t>
void project_isa(const RasterFwdParams<scalar_t, double>& p, int64_t k0, int64_t k1) {
#if JR2_X86_DISPATCH
  const SimdLevel level = simd_level();
  if (level == SimdLevel::kAvx512) {
    return avx512::project_range(p.verts, p.K, p.V, k0, k1, p.near_z, p.proj);
  }
  if (level == SimdLevel::kAvx2) {
    return avx2::project_range(p.verts, p.K, p.V, k0, k1, p.near_z, p.proj);
  }
#endif
  for (int64_t k = k0; k < k1; ++k) {
    project_vertex<double>(p.verts + k * 3, p.K + (k / p.V) * 9, p.near_z, p.proj + k * 3);
  }
}

void draw_faces_isa(const DrawJob& job) {
#if JR2_X86_DISPATCH
  const SimdLevel level = simd_level();
  if (level == SimdLevel::kAvx512) return avx512::draw_faces(job);
  if (level == SimdLevel::kAvx2) return avx2::draw_faces(job);
#endif
  for (int f = job.f0; f < job.f1; ++f) {
    if (job.rows) {
      const int32_t rr = job.rows[f];
      if (rr < 0 || (rr & 0xffff) > job.r1 || (rr >> 16) < job.r0) continue;
    }
    draw_triangle(job.pb, job.faces + int64_t(f) * 3, f, job.H, job.W, job.cull, job.r0, job.r1,
                  job.zb);
  }
}

template <typename scalar_t>
void resolve_isa(const RasterFwdParams<scalar_t, double>& p, int64_t r0, int64_t r1) {
#if JR2_X86_DISPATCH
  const SimdLevel level = simd_level();
  if (level == SimdLevel::kAvx512) return avx512::resolve_range(p, r0, r1);
  if (level == SimdLevel::kAvx2) return avx2::resolve_range(p, r0, r1);
#endif
  resolve_rows(p, r0, r1);
}

// Least triangles per thread: smaller meshes are drawn by one thread.
constexpr int64_t kTrianglesPerThread = 4096;

// Draws image b with `parts` threads, each owning a band of rows (no atomics; deterministic).
// A first pass finds every triangle's clipped row range and the number of triangles per row; the
// bands are cut so that each gets about as many triangle rows, and each thread then draws the
// triangles that reach its band.
template <typename scalar_t>
void draw_image_banded(const RasterFwdParams<scalar_t, double>& p, int64_t b, int64_t parts) {
  const int H = p.H, W = p.W, F = p.F;
  const double* pb = p.proj + b * int64_t(p.V) * 3;
  unsigned long long* zb = p.zbuf + b * int64_t(H) * W;
  std::vector<int32_t> rows(static_cast<size_t>(F));  // i0 | i1 << 16 of a drawn triangle, else -1
  std::vector<int32_t> hist(static_cast<size_t>(parts * (H + 1)), 0);
  at::parallel_for(0, parts, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      int32_t* h = hist.data() + c * (H + 1);
      for (int64_t f = F * c / parts; f < F * (c + 1) / parts; ++f) {
        const int32_t* fv = p.faces + f * 3;
        TriSetup<double> ts;
        if (!setup_coverage(pb + int64_t(fv[0]) * 3, pb + int64_t(fv[1]) * 3,
                            pb + int64_t(fv[2]) * 3, H, W, p.cull_backfaces, ts)) {
          rows[f] = -1;
          continue;
        }
        rows[f] = ts.i0 | (ts.i1 << 16);
        h[ts.i0] += 1;
        h[ts.i1 + 1] -= 1;
      }
    }
  });
  // Triangles per row (a difference array summed over the parts), then equal-load bands.
  std::vector<int64_t> load(static_cast<size_t>(H));
  int64_t run = 0, total = 0;
  for (int i = 0; i < H; ++i) {
    for (int64_t c = 0; c < parts; ++c) run += hist[c * (H + 1) + i];
    load[i] = run;
    total += run;
  }
  std::vector<int> cut(static_cast<size_t>(parts + 1), H);
  cut[0] = 0;
  int64_t acc = 0;
  for (int i = 0, c = 1; i < H && c < parts; ++i) {
    acc += load[i];
    while (c < parts && acc * parts >= total * c) cut[c++] = i + 1;
  }
  at::parallel_for(0, parts, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int r0 = cut[c], r1 = cut[c + 1] - 1;
      if (r0 > r1) continue;
      draw_faces_isa({pb, p.faces, 0, F, H, W, p.cull_backfaces, r0, r1, rows.data(), zb});
    }
  });
}

template <typename scalar_t>
void rasterize_fwd_impl(const RasterFwdParams<scalar_t, double>& p) {
  const int64_t B = p.B, V = p.V, F = p.F, H = p.H, W = p.W;
  const int64_t HW = H * W;

  // Projection and z-buffer clear share one parallel region (fewer thread wake-ups).
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                 (B * V + B * HW) / 16384));
  at::parallel_for(0, nchunks, 1, [&](int64_t cbegin, int64_t cend) {
    for (int64_t c = cbegin; c < cend; ++c) {
      project_isa(p, B * V * c / nchunks, B * V * (c + 1) / nchunks);
      std::fill(p.zbuf + B * HW * c / nchunks, p.zbuf + B * HW * (c + 1) / nchunks, kEmptyKey);
    }
  });

  // Threads own whole images when there are enough of them, else bands of one image's rows.
  const int64_t threads = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), B * F / kTrianglesPerThread));
  const int64_t parts = std::min<int64_t>(threads / B, H / 8);
  if (parts >= 2 && H < (1 << 15)) {  // row ranges are packed in 16 bits
    for (int64_t b = 0; b < B; ++b) draw_image_banded(p, b, parts);
  } else {
    at::parallel_for(0, B, B >= threads ? 1 : B, [&](int64_t bb, int64_t be) {
      for (int64_t b = bb; b < be; ++b) {
        draw_faces_isa({p.proj + b * V * 3, p.faces, 0, p.F, p.H, p.W, p.cull_backfaces, 0,
                        p.H - 1, nullptr, p.zbuf + b * HW});
      }
    });
  }

  at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
    resolve_isa(p, begin, end);
  });
}

template <typename scalar_t>
void rasterize_bwd_impl(const RasterBwdParams<scalar_t>& p) {
  const int64_t B = p.B, V = p.V, H = p.H, W = p.W;
  const int64_t rows = B * H;
  // Each chunk scatters into its own double-precision buffer (deterministic, no atomics, and
  // no float32 cancellation error when many pixels' gradients of opposite sign meet).
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows / 8));
  const int64_t gsize = B * V * 3;
  std::vector<double> acc(static_cast<size_t>(nchunks * gsize), 0.0);
  at::parallel_for(0, nchunks, 1, [&](int64_t cbegin, int64_t cend) {
    for (int64_t c = cbegin; c < cend; ++c) {
      double* g = acc.data() + c * gsize;
      const int64_t r0 = rows * c / nchunks, r1 = rows * (c + 1) / nchunks;
      for (int64_t row = r0; row < r1; ++row) {
        const int64_t b = row / H;
        const scalar_t* vb = p.verts + b * V * 3;
        double* gb = g + b * V * 3;
        const scalar_t* Kb = p.K + b * 9;
        for (int64_t j = 0; j < W; ++j) {
          const int64_t pix = row * W + j;
          const scalar_t* r = p.rast + pix * 4;
          const scalar_t* gr = p.grad_rast + pix * 4;
          if (!(r[3] >= scalar_t(1) && r[3] <= scalar_t(p.F))) continue;  // background / bad id
          if (gr[0] == scalar_t(0) && gr[1] == scalar_t(0) && gr[2] == scalar_t(0)) continue;
          const int f = static_cast<int>(r[3]) - 1;
          const int32_t* fv = p.faces + int64_t(f) * 3;
          double gv[3][3] = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}};
          pixel_backward(vb, fv, Kb, static_cast<int>(row - b * H), static_cast<int>(j), gr,
                         gv);
          for (int k = 0; k < 3; ++k) {
            double* d = gb + int64_t(fv[k]) * 3;
            d[0] += gv[k][0];
            d[1] += gv[k][1];
            d[2] += gv[k][2];
          }
        }
      }
    }
  });
  at::parallel_for(0, gsize, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      double sum = acc[k];
      for (int64_t c = 1; c < nchunks; ++c) sum += acc[c * gsize + k];
      p.grad_verts[k] = static_cast<scalar_t>(sum);
    }
  });
}

}  // namespace
}  // namespace jr2net::raster

namespace jr2net {

at::Tensor rasterize_fwd_cpu(const at::Tensor& verts, const at::Tensor& faces, const at::Tensor& K,
                             int64_t H, int64_t W, bool cull_backfaces, double near_z) {
  const int64_t B = verts.size(0), V = verts.size(1);
  at::Tensor rast = at::empty({B, H, W, 4}, verts.options());
  at::Tensor proj = at::empty({B, V, 3}, verts.options().dtype(at::kDouble));
  at::Tensor zbuf = at::empty({B, H, W}, verts.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "rasterize_fwd_cpu", [&] {
    auto p = rasterize_fwd_params<scalar_t>(verts, faces, K, H, W, cull_backfaces, near_z, proj,
                                            zbuf, rast);
    raster::rasterize_fwd_impl(p);
  });
  return rast;
}

at::Tensor rasterize_bwd_cpu(const at::Tensor& grad_rast, const at::Tensor& verts,
                             const at::Tensor& faces, const at::Tensor& K, const at::Tensor& rast) {
  at::Tensor grad_verts = at::empty_like(verts);
  const at::Tensor g = grad_rast.contiguous();
  const at::Tensor r = rast.contiguous();
  AT_DISPATCH_FLOATING_TYPES(verts.scalar_type(), "rasterize_bwd_cpu", [&] {
    auto p = rasterize_bwd_params<scalar_t>(g, verts, faces, K, r, grad_verts);
    raster::rasterize_bwd_impl(p);
  });
  return grad_verts;
}

}  // namespace jr2net
