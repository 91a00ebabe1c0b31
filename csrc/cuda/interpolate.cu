// CUDA barycentric interpolation: one thread per pixel, same maths as the CPU kernel
// (csrc/ops/interpolate.h); the backward scatters attribute gradients with atomicAdd.
// No torch headers: raw pointers and param structs.
#include <cuda_runtime.h>

#include "ops/interpolate.h"

namespace jr2net::interp {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void interpolate_fwd_kernel(InterpParams<scalar_t> p) {
  const long long pix = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const long long HW = static_cast<long long>(p.H) * p.W;
  if (pix >= p.B * HW) return;
  const scalar_t* r = p.rast + pix * 4;
  scalar_t* out = p.out + pix * p.C;
  const int f = face_index(r[3], p.F);
  if (f < 0) {
    if (f == -2 && p.bad_face != nullptr) *p.bad_face = 1;
    for (int c = 0; c < p.C; ++c) out[c] = scalar_t(0);
    return;
  }
  const long long b = pix / HW;
  const scalar_t* ab = p.attr + (p.attr_batched ? b * p.V * p.C : 0);
  const int32_t* fv = p.faces + static_cast<long long>(f) * 3;
  interp_pixel(ab + static_cast<long long>(fv[0]) * p.C, ab + static_cast<long long>(fv[1]) * p.C,
               ab + static_cast<long long>(fv[2]) * p.C, r[0], r[1], p.C, out);
}

template <typename scalar_t>
__global__ void interpolate_bwd_kernel(InterpParams<scalar_t> p) {
  const long long pix = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const long long HW = static_cast<long long>(p.H) * p.W;
  if (pix >= p.B * HW) return;
  const scalar_t* r = p.rast + pix * 4;
  scalar_t* gr = p.grad_rast + pix * 4;
  gr[0] = gr[1] = gr[2] = gr[3] = scalar_t(0);
  const int f = face_index(r[3], p.F);
  if (f < 0) {
    if (f == -2 && p.bad_face != nullptr) *p.bad_face = 1;
    return;
  }
  const long long b = pix / HW;
  const long long boff = p.attr_batched ? b * p.V * p.C : 0;
  const int32_t* fv = p.faces + static_cast<long long>(f) * 3;
  const scalar_t* go = p.grad_out + pix * p.C;
  const scalar_t* a0 = p.attr + boff + static_cast<long long>(fv[0]) * p.C;
  const scalar_t* a1 = p.attr + boff + static_cast<long long>(fv[1]) * p.C;
  const scalar_t* a2 = p.attr + boff + static_cast<long long>(fv[2]) * p.C;
  interp_pixel_grad_uv(a0, a1, a2, go, p.C, gr[0], gr[1]);
  const scalar_t u = r[0], v = r[1], w = scalar_t(1) - u - v;
  scalar_t* g0 = p.grad_attr + boff + static_cast<long long>(fv[0]) * p.C;
  scalar_t* g1 = p.grad_attr + boff + static_cast<long long>(fv[1]) * p.C;
  scalar_t* g2 = p.grad_attr + boff + static_cast<long long>(fv[2]) * p.C;
  for (int c = 0; c < p.C; ++c) {
    atomicAdd(g0 + c, u * go[c]);
    atomicAdd(g1 + c, v * go[c]);
    atomicAdd(g2 + c, w * go[c]);
  }
}

inline unsigned int blocks_for(long long n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

}  // namespace

template <typename scalar_t>
void launch_interpolate_fwd(const InterpParams<scalar_t>& p, cudaStream_t stream) {
  const long long np = static_cast<long long>(p.B) * p.H * p.W;
  if (np > 0) interpolate_fwd_kernel<scalar_t><<<blocks_for(np), kThreads, 0, stream>>>(p);
}

template <typename scalar_t>
void launch_interpolate_bwd(const InterpParams<scalar_t>& p, cudaStream_t stream) {
  const long long np = static_cast<long long>(p.B) * p.H * p.W;
  if (np > 0) interpolate_bwd_kernel<scalar_t><<<blocks_for(np), kThreads, 0, stream>>>(p);
}

template void launch_interpolate_fwd<float>(const InterpParams<float>&, cudaStream_t);
template void launch_interpolate_fwd<double>(const InterpParams<double>&, cudaStream_t);
template void launch_interpolate_bwd<float>(const InterpParams<float>&, cudaStream_t);
template void launch_interpolate_bwd<double>(const InterpParams<double>&, cudaStream_t);

}  // namespace jr2net::interp
