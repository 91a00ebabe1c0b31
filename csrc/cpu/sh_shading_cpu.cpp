// CPU kernels of sh_shading: parallel over pixels; dL/dsh reduced through per-chunk partial sums
// (fixed chunking, so the result does not depend on the thread count).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cstdlib>
#include <vector>

#include "sh_shading_dispatch.h"
#include "cpu/cpu_features.h"

namespace jr2net::shading {
namespace {

constexpr int64_t kShChunk = 8192;  // pixels per partial sum of dL/dsh
constexpr int64_t kShGrain = 4;     // chunks per thread at least (small images stay on one)

// The pixel loops below are `omp simd` with loop-invariant plane pointers held in scalars (not
// arrays), so the compiler vectorises them across pixels.
template <typename T, bool kMask>
JR2_ALWAYS_INLINE inline void fwd_range(const ShShadingParams<T>& P, int64_t b, int64_t p0, int64_t p1) {
  const int64_t HW = P.HW, o = b * 3 * HW;
  const T *nx = P.normals + o, *ny = nx + HW, *nz = ny + HW;
  const T *a0 = P.albedo + o, *a1 = a0 + HW, *a2 = a1 + HW;
  const T* mk = kMask ? P.mask + b * HW : nullptr;
  T *i0 = P.image + o, *i1 = i0 + HW, *i2 = i1 + HW;
  T *r0 = P.irradiance + o, *r1 = r0 + HW, *r2 = r1 + HW;
  T sh[27];
  for (int k = 0; k < 27; ++k) sh[k] = P.sh[b * 27 + k];
#pragma omp simd
  for (int64_t p = p0; p < p1; ++p) {
    const T m = kMask ? mk[p] : T(1);
    T e0, e1, e2;
    sh_irradiance_rgb(sh, nx[p], ny[p], nz[p], e0, e1, e2);
    e0 *= m;
    e1 *= m;
    e2 *= m;
    r0[p] = e0;
    r1[p] = e1;
    r2[p] = e2;
    i0[p] = a0[p] * e0;
    i1[p] = a1[p] * e1;
    i2[p] = a2[p] * e2;
  }
}

// Forward and backward are dispatched alike (see bwd_range_isa), so their ratio compares like
// with like.
template <typename T, bool kMask>
void fwd_range_base(const ShShadingParams<T>& P, int64_t b, int64_t p0, int64_t p1) {
  fwd_range<T, kMask>(P, b, p0, p1);
}
#if JR2_X86_DISPATCH
template <typename T, bool kMask>
JR2_TARGET_AVX512 void fwd_range_avx512(const ShShadingParams<T>& P, int64_t b, int64_t p0,
                                        int64_t p1) {
  fwd_range<T, kMask>(P, b, p0, p1);
}
template <typename T, bool kMask>
JR2_TARGET_AVX2 void fwd_range_avx2(const ShShadingParams<T>& P, int64_t b, int64_t p0,
                                    int64_t p1) {
  fwd_range<T, kMask>(P, b, p0, p1);
}
#endif
template <typename T, bool kMask>
void fwd_range_isa(const ShShadingParams<T>& P, int64_t b, int64_t p0, int64_t p1) {
#if JR2_X86_DISPATCH
  const SimdLevel level = simd_level();
  if (level == SimdLevel::kAvx512) return fwd_range_avx512<T, kMask>(P, b, p0, p1);
  if (level == SimdLevel::kAvx2) return fwd_range_avx2<T, kMask>(P, b, p0, p1);
#endif
  fwd_range_base<T, kMask>(P, b, p0, p1);
}

template <typename T>
void fwd_impl(const ShShadingParams<T>& P) {
  const int64_t nchunk = (P.HW + kShChunk - 1) / kShChunk;
  at::parallel_for(0, P.B * nchunk, kShGrain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nchunk, p0 = (t % nchunk) * kShChunk;
      const int64_t p1 = p0 + kShChunk < P.HW ? p0 + kShChunk : P.HW;
      if (P.mask) {
        fwd_range_isa<T, true>(P, b, p0, p1);
      } else {
        fwd_range_isa<T, false>(P, b, p0, p1);
      }
    }
  });
}

// Backward over pixels [p0, p1) of batch b; returns dL/dsh of the range in out (27 values).
// kGi/kGr: grad_image/grad_irradiance given; kMask: a mask is given. All per-pixel grads are
// written (branch-free, so the loop vectorises); the caller drops the ones not requested.
template <typename T, bool kGi, bool kGr, bool kMask, bool kGm, int kL>
JR2_ALWAYS_INLINE inline void bwd_range(const ShShadingBackwardParams<T>& P, int64_t b, int64_t p0, int64_t p1,
               double* out) {
  const int64_t HW = P.HW, o = b * 3 * HW;
  const T *nx = P.normals + o, *ny = nx + HW, *nz = ny + HW;
  const T *a0 = P.albedo + o, *a1 = a0 + HW, *a2 = a1 + HW;
  const T* mk = kMask ? P.mask + b * HW : nullptr;
  const T *gi0 = kGi ? P.grad_image + o : nullptr, *gi1 = gi0 + HW, *gi2 = gi1 + HW;
  const T *gr0 = kGr ? P.grad_irr + o : nullptr, *gr1 = gr0 + HW, *gr2 = gr1 + HW;
  T *ga0 = P.grad_albedo + o, *ga1 = ga0 + HW, *ga2 = ga1 + HW;
  T *gn0 = P.grad_normals + o, *gn1 = gn0 + HW, *gn2 = gn1 + HW;
  T* gmk = kGm ? P.grad_mask + b * HW : nullptr;
  T sh[27];
  for (int k = 0; k < 27; ++k) sh[k] = P.sh[b * 27 + k];
  // Lanes: kL pixels per step with per-lane dL/dsh accumulators, so the pixel math and the
  // reduction both vectorise without reassociating a single sum (kL: 8 for SSE, 16 for AVX-512).
  T acc[27][kL] = {};
  int64_t p = p0;
  for (; p + kL <= p1; p += kL) {
    T H[9][kL], u[3][kL];
#pragma omp simd
    for (int l = 0; l < kL; ++l) {
      const int64_t q = p + l;
      const T x = nx[q], y = ny[q], z = nz[q];
      const T m = kMask ? mk[q] : T(1);
      sh_basis(x, y, z, &H[0][l], kL);
      const T e0 = sh_irradiance(sh + 0, &H[0][l], kL), e1 = sh_irradiance(sh + 1, &H[0][l], kL);
      const T e2 = sh_irradiance(sh + 2, &H[0][l], kL);
      const T g_img0 = kGi ? gi0[q] : T(0), g_img1 = kGi ? gi1[q] : T(0);
      const T g_img2 = kGi ? gi2[q] : T(0);
      // dL/d(masked irradiance) per channel
      const T q0 = g_img0 * a0[q] + (kGr ? gr0[q] : T(0));
      const T q1 = g_img1 * a1[q] + (kGr ? gr1[q] : T(0));
      const T q2 = g_img2 * a2[q] + (kGr ? gr2[q] : T(0));
      ga0[q] = g_img0 * e0 * m;
      ga1[q] = g_img1 * e1 * m;
      ga2[q] = g_img2 * e2 * m;
      if (kGm) gmk[q] = q0 * e0 + q1 * e1 + q2 * e2;
      const T u0 = q0 * m, u1 = q1 * m, u2 = q2 * m;  // dL/d(unmasked irradiance)
      u[0][l] = u0;
      u[1][l] = u1;
      u[2][l] = u2;
      T dx0, dy0, dz0, dx1, dy1, dz1, dx2, dy2, dz2;
      sh_irradiance_dn(sh + 0, x, y, z, dx0, dy0, dz0);
      sh_irradiance_dn(sh + 1, x, y, z, dx1, dy1, dz1);
      sh_irradiance_dn(sh + 2, x, y, z, dx2, dy2, dz2);
      gn0[q] = u0 * dx0 + u1 * dx1 + u2 * dx2;
      gn1[q] = u0 * dy0 + u1 * dy1 + u2 * dy2;
      gn2[q] = u0 * dz0 + u1 * dz1 + u2 * dz2;
    }
    for (int k = 0; k < 9; ++k) {
      for (int c = 0; c < 3; ++c) {
        for (int l = 0; l < kL; ++l) acc[k * 3 + c][l] += u[c][l] * H[k][l];
      }
    }
  }
  double tail[27] = {};
  for (; p < p1; ++p) {  // the last < kL pixels, through the shared per-pixel function
    sh_shading_pixel_backward(P, sh, b, p, tail);
  }
  for (int k = 0; k < 27; ++k) {
    double s = tail[k];
    for (int l = 0; l < kL; ++l) s += static_cast<double>(acc[k][l]);
    out[k] = s;
  }
}

// The backward keeps 27 dL/dsh accumulators per SIMD lane; with SSE's 16 registers they spill,
// with AVX-512's 32 they fit, so the AVX-512 copy keeps 16 lanes and the baseline and AVX2 copies
// 8 (run-time dispatch, simd_level(); same arithmetic up to FMA contraction).
template <typename T, bool kGi, bool kGr, bool kMask, bool kGm>
void bwd_range_base(const ShShadingBackwardParams<T>& P, int64_t b, int64_t p0, int64_t p1,
                    double* out) {
  bwd_range<T, kGi, kGr, kMask, kGm, 8>(P, b, p0, p1, out);
}
#if JR2_X86_DISPATCH
template <typename T, bool kGi, bool kGr, bool kMask, bool kGm>
JR2_TARGET_AVX512 void bwd_range_avx512(const ShShadingBackwardParams<T>& P, int64_t b,
                                        int64_t p0, int64_t p1, double* out) {
  bwd_range<T, kGi, kGr, kMask, kGm, 16>(P, b, p0, p1, out);
}
template <typename T, bool kGi, bool kGr, bool kMask, bool kGm>
JR2_TARGET_AVX2 void bwd_range_avx2(const ShShadingBackwardParams<T>& P, int64_t b, int64_t p0,
                                    int64_t p1, double* out) {
  bwd_range<T, kGi, kGr, kMask, kGm, 8>(P, b, p0, p1, out);
}
#endif

template <typename T, bool kGi, bool kGr, bool kMask, bool kGm>
void bwd_range_isa(const ShShadingBackwardParams<T>& P, int64_t b, int64_t p0, int64_t p1,
                   double* out) {
#if JR2_X86_DISPATCH
  const SimdLevel level = simd_level();
  if (level == SimdLevel::kAvx512) return bwd_range_avx512<T, kGi, kGr, kMask, kGm>(P, b, p0, p1, out);
  if (level == SimdLevel::kAvx2) return bwd_range_avx2<T, kGi, kGr, kMask, kGm>(P, b, p0, p1, out);
#endif
  bwd_range_base<T, kGi, kGr, kMask, kGm>(P, b, p0, p1, out);
}

template <typename T, bool kGi, bool kGr>
void bwd_range_m(const ShShadingBackwardParams<T>& P, int64_t b, int64_t p0, int64_t p1,
                 double* out) {
  if (P.mask && P.grad_mask) {
    bwd_range_isa<T, kGi, kGr, true, true>(P, b, p0, p1, out);
  } else if (P.mask) {
    bwd_range_isa<T, kGi, kGr, true, false>(P, b, p0, p1, out);
  } else {
    bwd_range_isa<T, kGi, kGr, false, false>(P, b, p0, p1, out);
  }
}

template <typename T>
void bwd_impl(const ShShadingBackwardParams<T>& P) {
  // Fixed chunking (not per thread), so dL/dsh does not depend on the thread count.
  const int64_t nchunk = (P.HW + kShChunk - 1) / kShChunk;
  std::vector<double> partial(static_cast<size_t>(P.B * nchunk * 27), 0.0);
  at::parallel_for(0, P.B * nchunk, kShGrain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nchunk, p0 = (t % nchunk) * kShChunk;
      const int64_t p1 = p0 + kShChunk < P.HW ? p0 + kShChunk : P.HW;
      double* out = partial.data() + t * 27;
      if (P.grad_image && P.grad_irr) {
        bwd_range_m<T, true, true>(P, b, p0, p1, out);
      } else if (P.grad_image) {
        bwd_range_m<T, true, false>(P, b, p0, p1, out);
      } else {
        bwd_range_m<T, false, true>(P, b, p0, p1, out);
      }
    }
  });
  if (P.grad_sh) {
    for (int64_t b = 0; b < P.B; ++b) {
      for (int k = 0; k < 27; ++k) {
        double s = 0;
        for (int64_t c = 0; c < nchunk; ++c) s += partial[(b * nchunk + c) * 27 + k];
        P.grad_sh[b * 27 + k] = static_cast<T>(s);
      }
    }
  }
}

}  // namespace
}  // namespace jr2net::shading

namespace jr2net {

std::tuple<at::Tensor, at::Tensor> sh_shading_fwd_cpu(const at::Tensor& normals,
                                                      const at::Tensor& albedo,
                                                      const at::Tensor& sh,
                                                      const std::optional<at::Tensor>& mask) {
  at::Tensor image = at::empty_like(albedo);
  at::Tensor irr = at::empty_like(albedo);
  AT_DISPATCH_FLOATING_TYPES(normals.scalar_type(), "sh_shading_fwd_cpu", [&] {
    auto P = sh_shading_fwd_params<scalar_t>(normals, albedo, sh, mask, image, irr);
    shading::fwd_impl(P);
  });
  return {image, irr};
}

ShGrads sh_shading_bwd_cpu(const std::optional<at::Tensor>& grad_image,
                           const std::optional<at::Tensor>& grad_irradiance,
                           const at::Tensor& normals, const at::Tensor& albedo,
                           const at::Tensor& sh, const std::optional<at::Tensor>& mask,
                           std::array<bool, 4> needs) {
  // The kernel writes every per-pixel grad (branch-free loop); unrequested ones are dropped.
  at::Tensor gn = at::empty_like(normals), ga = at::empty_like(albedo), gs = at::empty_like(sh);
  at::Tensor gm = mask && needs[3] ? at::empty_like(*mask) : at::Tensor();
  auto keep = [&]() -> ShGrads {
    return {needs[0] ? gn : at::Tensor(), needs[1] ? ga : at::Tensor(),
            needs[2] ? gs : at::Tensor(), needs[3] ? gm : at::Tensor()};
  };
  if (!grad_image && !grad_irradiance) {  // nothing flows back: all grads are zero
    for (at::Tensor* t : {&gn, &ga, &gs, &gm}) {
      if (t->defined()) t->zero_();
    }
    return keep();
  }
  AT_DISPATCH_FLOATING_TYPES(normals.scalar_type(), "sh_shading_bwd_cpu", [&] {
    auto P = sh_shading_bwd_params<scalar_t>(grad_image, grad_irradiance, normals, albedo, sh,
                                             mask, {gn, ga, gs, gm});
    shading::bwd_impl(P);
  });
  return keep();
}

}  // namespace jr2net
