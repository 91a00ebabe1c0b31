// Spherical-harmonics shading maths shared by the CPU and CUDA kernels (DESIGN §3).
//
// Per pixel: irradiance_c = m · Σ_b sh[b,c] · H_b(n), image_c = albedo_c · irradiance_c, with m the
// mask value (1 without a mask). The normal n is used as given (callers normalise it). Planar
// layout: normals/albedo/image/irradiance are [B,3,H,W], sh is [B,9,3], mask is [B,1,H,W].
#pragma once

#include <cstdint>

#include "ops/common.h"

namespace jr2net::shading {

// Irradiance constants of the 9 real SH bands (Ramamoorthi & Hanrahan), in the DESIGN order.
constexpr double kShC0 = 0.886227;
constexpr double kShC1 = 1.023328;
constexpr double kShC2 = 0.858086;
constexpr double kShC3 = 0.247708;
constexpr double kShC4 = 0.429043;

template <typename T>
struct ShShadingParams {
  const T* normals = nullptr;  // [B,3,H,W]
  const T* albedo = nullptr;   // [B,3,H,W]
  const T* sh = nullptr;       // [B,9,3]
  const T* mask = nullptr;     // [B,1,H,W] or nullptr
  T* image = nullptr;          // [B,3,H,W]
  T* irradiance = nullptr;     // [B,3,H,W]
  int64_t B = 0, HW = 0;
};

template <typename T>
struct ShShadingBackwardParams {
  const T* normals = nullptr;
  const T* albedo = nullptr;
  const T* sh = nullptr;
  const T* mask = nullptr;        // or nullptr
  const T* grad_image = nullptr;  // [B,3,H,W] or nullptr (treated as zeros)
  const T* grad_irr = nullptr;    // [B,3,H,W] or nullptr (treated as zeros)
  T* grad_normals = nullptr;      // each output may be nullptr when not needed
  T* grad_albedo = nullptr;
  T* grad_sh = nullptr;           // [B,9,3]; CPU writes it, CUDA accumulates (caller zeroes)
  T* grad_mask = nullptr;
  int64_t B = 0, HW = 0;
};

// The 9 basis values H_b(n), written to H[b * stride].
template <typename T>
JR2_HD void sh_basis(T x, T y, T z, T* H, int stride = 1) {
  H[0 * stride] = T(kShC0);
  H[1 * stride] = T(kShC1) * y;
  H[2 * stride] = T(kShC1) * z;
  H[3 * stride] = T(kShC1) * x;
  H[4 * stride] = T(kShC2) * x * y;
  H[5 * stride] = T(kShC2) * y * z;
  H[6 * stride] = T(kShC3) * (T(3) * z * z - T(1));
  H[7 * stride] = T(kShC2) * x * z;
  H[8 * stride] = T(kShC4) * (x * x - y * y);
}

// Σ_k sh[k,c] · H_k(n) for one colour channel (shc points at sh[0,c], stride 3; H[k * stride]).
template <typename T>
JR2_HD T sh_irradiance(const T* shc, const T* H, int stride = 1) {
  T irr = T(0);
  for (int k = 0; k < 9; ++k) irr += shc[k * 3] * H[k * stride];
  return irr;
}

// The three (unmasked) irradiances at normal n; sh is one batch's [9,3] block.
template <typename T>
JR2_HD void sh_irradiance_rgb(const T* sh, T x, T y, T z, T& e0, T& e1, T& e2) {
  T H[9];
  sh_basis(x, y, z, H);
  e0 = sh_irradiance(sh + 0, H);
  e1 = sh_irradiance(sh + 1, H);
  e2 = sh_irradiance(sh + 2, H);
}

// Gradient of Σ_k sh[k,c] · H_k(n) w.r.t. n = (x, y, z), for one colour channel.
template <typename T>
JR2_HD void sh_irradiance_dn(const T* shc, T x, T y, T z, T& dx, T& dy, T& dz) {
  const T s1 = shc[1 * 3], s2 = shc[2 * 3], s3 = shc[3 * 3], s4 = shc[4 * 3];
  const T s5 = shc[5 * 3], s6 = shc[6 * 3], s7 = shc[7 * 3], s8 = shc[8 * 3];
  dx = T(kShC1) * s3 + T(kShC2) * (s4 * y + s7 * z) + T(2 * kShC4) * s8 * x;
  dy = T(kShC1) * s1 + T(kShC2) * (s4 * x + s5 * z) - T(2 * kShC4) * s8 * y;
  dz = T(kShC1) * s2 + T(kShC2) * (s5 * y + s7 * x) + T(6 * kShC3) * s6 * z;
}

// Forward of one pixel p of batch b (sh points at this batch's [9,3] block).
template <typename T>
JR2_HD void sh_shading_pixel(const ShShadingParams<T>& P, const T* sh, int64_t b, int64_t p) {
  const int64_t base = b * 3 * P.HW + p;
  const T x = P.normals[base], y = P.normals[base + P.HW], z = P.normals[base + 2 * P.HW];
  const T m = P.mask ? P.mask[b * P.HW + p] : T(1);
  T H[9];
  sh_basis(x, y, z, H);
  for (int c = 0; c < 3; ++c) {
    const T irr = sh_irradiance(sh + c, H) * m;
    P.irradiance[base + c * P.HW] = irr;
    P.image[base + c * P.HW] = P.albedo[base + c * P.HW] * irr;
  }
}

// Backward of one pixel: writes the per-pixel grads and adds dL/dsh (27 values) into gsh.
template <typename T, typename Acc>
JR2_HD void sh_shading_pixel_backward(const ShShadingBackwardParams<T>& P, const T* sh, int64_t b,
                                      int64_t p, Acc* gsh) {
  const int64_t base = b * 3 * P.HW + p;
  const T x = P.normals[base], y = P.normals[base + P.HW], z = P.normals[base + 2 * P.HW];
  const T m = P.mask ? P.mask[b * P.HW + p] : T(1);
  T H[9];
  sh_basis(x, y, z, H);
  T gx = T(0), gy = T(0), gz = T(0), gm = T(0);
  for (int c = 0; c < 3; ++c) {
    const int64_t i = base + c * P.HW;
    const T raw = sh_irradiance(sh + c, H);  // unmasked irradiance
    const T gi = P.grad_image ? P.grad_image[i] : T(0);
    const T gr = P.grad_irr ? P.grad_irr[i] : T(0);
    const T g_irr = gi * P.albedo[i] + gr;  // dL/d(masked irradiance)
    if (P.grad_albedo) P.grad_albedo[i] = gi * raw * m;
    gm += g_irr * raw;
    const T g_raw = g_irr * m;  // dL/d(unmasked irradiance)
    for (int k = 0; k < 9; ++k) gsh[k * 3 + c] += Acc(g_raw * H[k]);
    T dx, dy, dz;
    sh_irradiance_dn(sh + c, x, y, z, dx, dy, dz);
    gx += g_raw * dx;
    gy += g_raw * dy;
    gz += g_raw * dz;
  }
  if (P.grad_normals) {
    P.grad_normals[base] = gx;
    P.grad_normals[base + P.HW] = gy;
    P.grad_normals[base + 2 * P.HW] = gz;
  }
  if (P.grad_mask) P.grad_mask[b * P.HW + p] = gm;
}

}  // namespace jr2net::shading

#if defined(__CUDACC__) || defined(WITH_CUDA)
#include <cuda_runtime_api.h>

namespace jr2net::shading {

// CUDA launchers (csrc/cuda/sh_shading.cu); all pointers are device pointers.
template <typename T>
void launch_sh_shading_fwd(const ShShadingParams<T>& P, cudaStream_t stream);
template <typename T>
void launch_sh_shading_bwd(const ShShadingBackwardParams<T>& P, cudaStream_t stream);

}  // namespace jr2net::shading
#endif
