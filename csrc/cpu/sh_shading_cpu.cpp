// CPU kernels of sh_shading: parallel over pixels; dL/dsh reduced through per-chunk partial sums
// (fixed chunking, so the result does not depend on the thread count).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <vector>

#include "sh_shading.h"

namespace jr2net {

namespace {

constexpr int64_t kShChunk = 8192;  // pixels per partial sum of dL/dsh

// Planar views of one batch element; the pixel loops below are `omp simd` (no loop-carried
// dependencies except the dL/dsh reduction) so the compiler vectorises them across pixels.
template <typename T>
struct Planes {
  const T* n[3];
  const T* a[3];
  const T* m;
};

template <typename T>
Planes<T> planes(const T* normals, const T* albedo, const T* mask, int64_t b, int64_t HW) {
  Planes<T> v;
  for (int c = 0; c < 3; ++c) {
    v.n[c] = normals + (b * 3 + c) * HW;
    v.a[c] = albedo + (b * 3 + c) * HW;
  }
  v.m = mask ? mask + b * HW : nullptr;
  return v;
}

template <typename T, bool kMask>
void fwd_range(const ShShadingParams<T>& P, int64_t b, int64_t p0, int64_t p1) {
  const Planes<T> v = planes(P.normals, P.albedo, P.mask, b, P.HW);
  T sh[27];
  for (int k = 0; k < 27; ++k) sh[k] = P.sh[b * 27 + k];
  T* img[3];
  T* irr[3];
  for (int c = 0; c < 3; ++c) {
    img[c] = P.image + (b * 3 + c) * P.HW;
    irr[c] = P.irradiance + (b * 3 + c) * P.HW;
  }
#pragma omp simd
  for (int64_t p = p0; p < p1; ++p) {
    T H[9];
    sh_basis(v.n[0][p], v.n[1][p], v.n[2][p], H);
    const T m = kMask ? v.m[p] : T(1);
    for (int c = 0; c < 3; ++c) {
      const T r = sh_irradiance(sh + c, H) * m;
      irr[c][p] = r;
      img[c][p] = v.a[c][p] * r;
    }
  }
}

template <typename T>
void fwd_impl(const ShShadingParams<T>& P) {
  const int64_t nchunk = (P.HW + kShChunk - 1) / kShChunk;
  at::parallel_for(0, P.B * nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nchunk, p0 = (t % nchunk) * kShChunk;
      const int64_t p1 = p0 + kShChunk < P.HW ? p0 + kShChunk : P.HW;
      if (P.mask) {
        fwd_range<T, true>(P, b, p0, p1);
      } else {
        fwd_range<T, false>(P, b, p0, p1);
      }
    }
  });
}

// Backward over pixels [p0, p1) of batch b; returns dL/dsh of the range in acc (27 values).
// kGi/kGr: grad_image/grad_irradiance given; kMask: a mask is given.
template <typename T, bool kGi, bool kGr, bool kMask>
void bwd_range(const ShShadingBackwardParams<T>& P, int64_t b, int64_t p0, int64_t p1,
               double* out) {
  const Planes<T> v = planes(P.normals, P.albedo, P.mask, b, P.HW);
  T sh[27];
  for (int k = 0; k < 27; ++k) sh[k] = P.sh[b * 27 + k];
  const T* gi[3];
  const T* gr[3];
  T* ga[3];
  T* gn[3];
  for (int c = 0; c < 3; ++c) {
    const int64_t off = (b * 3 + c) * P.HW;
    gi[c] = kGi ? P.grad_image + off : nullptr;
    gr[c] = kGr ? P.grad_irr + off : nullptr;
    ga[c] = P.grad_albedo ? P.grad_albedo + off : nullptr;
    gn[c] = P.grad_normals ? P.grad_normals + off : nullptr;
  }
  T* gm_out = P.grad_mask ? P.grad_mask + b * P.HW : nullptr;
  const bool want_a = ga[0] != nullptr, want_n = gn[0] != nullptr, want_m = gm_out != nullptr;
  T acc[27];
  for (int k = 0; k < 27; ++k) acc[k] = T(0);
#pragma omp simd reduction(+ : acc[:27])
  for (int64_t p = p0; p < p1; ++p) {
    const T x = v.n[0][p], y = v.n[1][p], z = v.n[2][p];
    const T m = kMask ? v.m[p] : T(1);
    T H[9];
    sh_basis(x, y, z, H);
    T gx = T(0), gy = T(0), gz = T(0), gm = T(0);
    for (int c = 0; c < 3; ++c) {
      const T raw = sh_irradiance(sh + c, H);
      const T g_img = kGi ? gi[c][p] : T(0);
      const T g_irr = g_img * v.a[c][p] + (kGr ? gr[c][p] : T(0));
      if (want_a) ga[c][p] = g_img * raw * m;
      gm += g_irr * raw;
      const T g_raw = g_irr * m;
      for (int k = 0; k < 9; ++k) acc[k * 3 + c] += g_raw * H[k];
      T dx, dy, dz;
      sh_irradiance_dn(sh + c, x, y, z, dx, dy, dz);
      gx += g_raw * dx;
      gy += g_raw * dy;
      gz += g_raw * dz;
    }
    if (want_n) {
      gn[0][p] = gx;
      gn[1][p] = gy;
      gn[2][p] = gz;
    }
    if (want_m) gm_out[p] = gm;
  }
  for (int k = 0; k < 27; ++k) out[k] = static_cast<double>(acc[k]);
}

template <typename T, bool kGi, bool kGr>
void bwd_range_m(const ShShadingBackwardParams<T>& P, int64_t b, int64_t p0, int64_t p1,
                 double* out) {
  if (P.mask) {
    bwd_range<T, kGi, kGr, true>(P, b, p0, p1, out);
  } else {
    bwd_range<T, kGi, kGr, false>(P, b, p0, p1, out);
  }
}

template <typename T>
void bwd_impl(const ShShadingBackwardParams<T>& P) {
  // Fixed chunking (not per thread), so dL/dsh does not depend on the thread count.
  const int64_t nchunk = (P.HW + kShChunk - 1) / kShChunk;
  std::vector<double> partial(static_cast<size_t>(P.B * nchunk * 27), 0.0);
  at::parallel_for(0, P.B * nchunk, 1, [&](int64_t begin, int64_t end) {
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

std::tuple<at::Tensor, at::Tensor> sh_shading_fwd_cpu(const at::Tensor& normals,
                                                      const at::Tensor& albedo,
                                                      const at::Tensor& sh,
                                                      const std::optional<at::Tensor>& mask) {
  at::Tensor image = at::empty_like(albedo);
  at::Tensor irr = at::empty_like(albedo);
  AT_DISPATCH_FLOATING_TYPES(normals.scalar_type(), "sh_shading_fwd_cpu", [&] {
    ShShadingParams<scalar_t> P;
    P.normals = normals.data_ptr<scalar_t>();
    P.albedo = albedo.data_ptr<scalar_t>();
    P.sh = sh.data_ptr<scalar_t>();
    P.mask = mask ? mask->data_ptr<scalar_t>() : nullptr;
    P.image = image.data_ptr<scalar_t>();
    P.irradiance = irr.data_ptr<scalar_t>();
    P.B = normals.size(0);
    P.HW = normals.size(2) * normals.size(3);
    fwd_impl(P);
  });
  return {image, irr};
}

ShGrads sh_shading_bwd_cpu(const std::optional<at::Tensor>& grad_image,
                           const std::optional<at::Tensor>& grad_irradiance,
                           const at::Tensor& normals, const at::Tensor& albedo,
                           const at::Tensor& sh, const std::optional<at::Tensor>& mask,
                           std::array<bool, 4> needs) {
  at::Tensor gn, ga, gs, gm;
  if (needs[0]) gn = at::empty_like(normals);
  if (needs[1]) ga = at::empty_like(albedo);
  if (needs[2]) gs = at::empty_like(sh);
  if (needs[3] && mask) gm = at::empty_like(*mask);
  if (!grad_image && !grad_irradiance) {  // nothing flows back: all grads are zero
    for (at::Tensor* t : {&gn, &ga, &gs, &gm}) {
      if (t->defined()) t->zero_();
    }
    return {gn, ga, gs, gm};
  }
  AT_DISPATCH_FLOATING_TYPES(normals.scalar_type(), "sh_shading_bwd_cpu", [&] {
    ShShadingBackwardParams<scalar_t> P;
    P.normals = normals.data_ptr<scalar_t>();
    P.albedo = albedo.data_ptr<scalar_t>();
    P.sh = sh.data_ptr<scalar_t>();
    P.mask = mask ? mask->data_ptr<scalar_t>() : nullptr;
    P.grad_image = grad_image ? grad_image->data_ptr<scalar_t>() : nullptr;
    P.grad_irr = grad_irradiance ? grad_irradiance->data_ptr<scalar_t>() : nullptr;
    P.grad_normals = gn.defined() ? gn.data_ptr<scalar_t>() : nullptr;
    P.grad_albedo = ga.defined() ? ga.data_ptr<scalar_t>() : nullptr;
    P.grad_sh = gs.defined() ? gs.data_ptr<scalar_t>() : nullptr;
    P.grad_mask = gm.defined() ? gm.data_ptr<scalar_t>() : nullptr;
    P.B = normals.size(0);
    P.HW = normals.size(2) * normals.size(3);
    bwd_impl(P);
  });
  return {gn, ga, gs, gm};
}

}  // namespace jr2net
