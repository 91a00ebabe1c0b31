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

template <typename T>
void fwd_impl(const ShShadingParams<T>& P) {
  at::parallel_for(0, P.B * P.HW, 4096, [&](int64_t begin, int64_t end) {
    int64_t b = begin / P.HW, p = begin % P.HW;
    for (int64_t n = begin; n < end; ++n) {
      sh_shading_pixel(P, P.sh + b * 27, b, p);
      if (++p == P.HW) {
        p = 0;
        ++b;
      }
    }
  });
}

template <typename T>
void bwd_impl(const ShShadingBackwardParams<T>& P) {
  const int64_t nchunk = (P.HW + kShChunk - 1) / kShChunk;
  std::vector<double> partial(static_cast<size_t>(P.B * nchunk * 27), 0.0);
  at::parallel_for(0, P.B * nchunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nchunk, p0 = (t % nchunk) * kShChunk;
      const int64_t p1 = p0 + kShChunk < P.HW ? p0 + kShChunk : P.HW;
      double acc[27] = {0};
      for (int64_t p = p0; p < p1; ++p) sh_shading_pixel_backward(P, P.sh + b * 27, b, p, acc);
      for (int k = 0; k < 27; ++k) partial[t * 27 + k] = acc[k];
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
