// CPU rasteriser: project vertices, scatter every triangle's covered pixels into a packed
// (depth, face id) z-buffer with an atomic min, then resolve (u, v, z) per pixel.
// Coverage and depth run in double so ids match the reference bit for bit.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <vector>

#include "ops/rasterize.h"
#include "rasterize_dispatch.h"

namespace jr2net::raster {
namespace {

inline void atomic_min_u64(unsigned long long* addr, unsigned long long v) {
  unsigned long long cur = __atomic_load_n(addr, __ATOMIC_RELAXED);
  while (v < cur &&
         !__atomic_compare_exchange_n(addr, &cur, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
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
      for (int64_t k = B * V * c / nchunks; k < B * V * (c + 1) / nchunks; ++k) {
        project_vertex<double>(p.verts + k * 3, p.K + (k / V) * 9, p.near_z,
                               p.proj + k * 3);
      }
      std::fill(p.zbuf + B * HW * c / nchunks, p.zbuf + B * HW * (c + 1) / nchunks, kEmptyKey);
    }
  });

  at::parallel_for(0, B * F, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / F;
      const int f = static_cast<int>(t - b * F);
      const int32_t* fv = p.faces + int64_t(f) * 3;
      const double* pb = p.proj + b * V * 3;
      TriSetup<double> ts;
      if (!setup_triangle(pb + int64_t(fv[0]) * 3, pb + int64_t(fv[1]) * 3,
                          pb + int64_t(fv[2]) * 3, p.H, p.W, p.cull_backfaces, ts)) {
        continue;
      }
      unsigned long long* zb = p.zbuf + b * HW;
      for (int i = ts.i0; i <= ts.i1; ++i) {
        const RowTerms<double> rt = row_terms(ts, static_cast<double>(i));
        unsigned long long* zrow = zb + int64_t(i) * W;
        int ja, jb;
        if (!row_span(ts, rt, ja, jb)) continue;
        for (int j = ja; j <= jb; ++j) {
          const unsigned long long key = pixel_key(ts, rt, static_cast<double>(j), f);
          if (key != kEmptyKey) atomic_min_u64(zrow + j, key);
        }
      }
    }
  });

  at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
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
        resolve_uvz_proj(pb + int64_t(fv[0]) * 3, pb + int64_t(fv[1]) * 3,
                         pb + int64_t(fv[2]) * 3, static_cast<double>(j), py, u, v, z);
        out[0] = static_cast<scalar_t>(u);
        out[1] = static_cast<scalar_t>(v);
        out[2] = static_cast<scalar_t>(z);
        out[3] = static_cast<scalar_t>(f + 1);
      }
    }
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
