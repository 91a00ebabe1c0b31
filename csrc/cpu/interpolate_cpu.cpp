// CPU barycentric interpolation: per-pixel gather forward; backward scatters attribute
// gradients into per-chunk buffers (deterministic, no atomics) and writes d/du, d/dv.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "interpolate_dispatch.h"
#include "ops/interpolate.h"

namespace jr2net::interp {
namespace {

template <typename scalar_t>
void interpolate_fwd_impl(const InterpParams<scalar_t>& p, std::atomic<int>& bad) {
  const int64_t V = p.V, H = p.H, W = p.W, C = p.C;
  at::parallel_for(0, int64_t(p.B) * H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H;
      const scalar_t* ab = p.attr + (p.attr_batched ? b * V * C : 0);
      for (int64_t j = 0; j < W; ++j) {
        const int64_t pix = row * W + j;
        const scalar_t* r = p.rast + pix * 4;
        scalar_t* out = p.out + pix * C;
        const int f = face_index(r[3], p.F);
        if (f < 0) {
          if (f == -2) bad.store(1, std::memory_order_relaxed);
          std::fill(out, out + C, scalar_t(0));
          continue;
        }
        const int32_t* fv = p.faces + int64_t(f) * 3;
        interp_pixel(ab + fv[0] * C, ab + fv[1] * C, ab + fv[2] * C, r[0], r[1],
                     static_cast<int>(C), out);
      }
    }
  });
}

template <typename scalar_t>
void interpolate_bwd_impl(const InterpParams<scalar_t>& p, std::atomic<int>& bad) {
  const int64_t V = p.V, H = p.H, W = p.W, C = p.C;
  const int64_t rows = int64_t(p.B) * H;
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows / 8));
  const int64_t gsize = (p.attr_batched ? p.B : 1) * V * C;
  std::vector<scalar_t> extra(static_cast<size_t>((nchunks - 1) * gsize), scalar_t(0));
  at::parallel_for(0, nchunks, 1, [&](int64_t cbegin, int64_t cend) {
    for (int64_t c = cbegin; c < cend; ++c) {
      scalar_t* g = c == 0 ? p.grad_attr : extra.data() + (c - 1) * gsize;
      const int64_t r0 = rows * c / nchunks, r1 = rows * (c + 1) / nchunks;
      for (int64_t row = r0; row < r1; ++row) {
        const int64_t b = row / H;
        const int64_t boff = p.attr_batched ? b * V * C : 0;
        const scalar_t* ab = p.attr + boff;
        scalar_t* gb = g + boff;
        for (int64_t j = 0; j < W; ++j) {
          const int64_t pix = row * W + j;
          const scalar_t* r = p.rast + pix * 4;
          const scalar_t* go = p.grad_out + pix * C;
          scalar_t* gr = p.grad_rast + pix * 4;
          gr[0] = gr[1] = gr[2] = gr[3] = scalar_t(0);
          const int f = face_index(r[3], p.F);
          if (f < 0) {
            if (f == -2) bad.store(1, std::memory_order_relaxed);
            continue;
          }
          const int32_t* fv = p.faces + int64_t(f) * 3;
          const scalar_t u = r[0], v = r[1], w = scalar_t(1) - u - v;
          interp_pixel_grad_uv(ab + fv[0] * C, ab + fv[1] * C, ab + fv[2] * C, go,
                               static_cast<int>(C), gr[0], gr[1]);
          scalar_t* g0 = gb + fv[0] * C;
          scalar_t* g1 = gb + fv[1] * C;
          scalar_t* g2 = gb + fv[2] * C;
          for (int64_t k = 0; k < C; ++k) {
            g0[k] += u * go[k];
            g1[k] += v * go[k];
            g2[k] += w * go[k];
          }
        }
      }
    }
  });
  if (nchunks > 1) {
    at::parallel_for(0, gsize, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t c = 1; c < nchunks; ++c) {
        const scalar_t* src = extra.data() + (c - 1) * gsize;
        for (int64_t k = begin; k < end; ++k) p.grad_attr[k] += src[k];
      }
    });
  }
}

void raise_if_bad(const std::atomic<int>& bad, int64_t F) {
  TORCH_CHECK_VALUE(bad.load() == 0, "rast: channel 3 must hold face ids + 1 in [0, ", F,
                    "] (integers); got an invalid id");
}

}  // namespace
}  // namespace jr2net::interp

namespace jr2net {

at::Tensor interpolate_fwd_cpu(const at::Tensor& attr, const at::Tensor& rast,
                               const at::Tensor& faces) {
  at::Tensor out = at::empty({rast.size(0), rast.size(1), rast.size(2), attr.size(2)},
                             attr.options());
  std::atomic<int> bad{0};
  AT_DISPATCH_FLOATING_TYPES(attr.scalar_type(), "interpolate_fwd_cpu", [&] {
    auto p = interpolate_params<scalar_t>(attr, rast, faces);
    p.out = out.data_ptr<scalar_t>();
    interp::interpolate_fwd_impl(p, bad);
  });
  interp::raise_if_bad(bad, faces.size(0));
  return out;
}

std::vector<at::Tensor> interpolate_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& attr,
                                            const at::Tensor& rast, const at::Tensor& faces) {
  at::Tensor grad_attr = at::zeros_like(attr);
  at::Tensor grad_rast = at::empty_like(rast);
  std::atomic<int> bad{0};
  AT_DISPATCH_FLOATING_TYPES(attr.scalar_type(), "interpolate_bwd_cpu", [&] {
    auto p = interpolate_params<scalar_t>(attr, rast, faces);
    p.grad_out = grad_out.data_ptr<scalar_t>();
    p.grad_attr = grad_attr.data_ptr<scalar_t>();
    p.grad_rast = grad_rast.data_ptr<scalar_t>();
    interp::interpolate_bwd_impl(p, bad);
  });
  interp::raise_if_bad(bad, faces.size(0));
  return {grad_attr, grad_rast};
}

}  // namespace jr2net
