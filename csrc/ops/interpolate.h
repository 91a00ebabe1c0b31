// Barycentric attribute interpolation maths shared by the CPU and CUDA kernels.
//
// out[b,i,j,:] = u*a0 + v*a1 + (1-u-v)*a2 for the face stored in rast[b,i,j,3] (= id+1),
// zero where rast[...,3] == 0. `attr` is [B,V,C] or shared across the batch ([1,V,C]).
#pragma once

#include <cstdint>

#include "ops/common.h"

namespace jr2net::interp {

template <typename scalar_t>
struct InterpParams {
  const scalar_t* attr;      // [B or 1, V, C]
  const scalar_t* rast;      // [B,H,W,4]
  const int32_t* faces;      // [F,3]
  const scalar_t* grad_out;  // [B,H,W,C] (backward only)
  int B, V, F, H, W, C;
  bool attr_batched;         // false: attr is shared by every batch item
  scalar_t* out;             // [B,H,W,C] (forward)
  scalar_t* grad_attr;       // [B or 1, V, C] (backward, accumulated into)
  scalar_t* grad_rast;       // [B,H,W,4] (backward)
  int* bad_face;             // set to 1 when a face id in rast is out of range
};

// Face index stored in a rast pixel: -1 for background, -2 for an invalid (non-integer or
// out-of-range) id, else the 0-based face index.
template <typename scalar_t>
JR2_HD int face_index(scalar_t id_plus_one, int F) {
  if (id_plus_one == scalar_t(0)) return -1;
  if (!(id_plus_one >= scalar_t(1) && id_plus_one <= scalar_t(F))) return -2;
  const int k = static_cast<int>(id_plus_one);
  return static_cast<scalar_t>(k) == id_plus_one ? k - 1 : -2;
}

// Interpolates C channels of one pixel; a0/a1/a2 point at the three vertices' attributes.
template <typename scalar_t>
JR2_HD void interp_pixel(const scalar_t* a0, const scalar_t* a1, const scalar_t* a2, scalar_t u,
                         scalar_t v, int C, scalar_t* out) {
  const scalar_t w = scalar_t(1) - u - v;
  for (int c = 0; c < C; ++c) out[c] = u * a0[c] + v * a1[c] + w * a2[c];
}

// Gradients of one pixel: returns (d/du, d/dv); the attribute grads are u*g, v*g, w*g.
template <typename scalar_t>
JR2_HD void interp_pixel_grad_uv(const scalar_t* a0, const scalar_t* a1, const scalar_t* a2,
                                 const scalar_t* g, int C, scalar_t& gu, scalar_t& gv) {
  scalar_t su = scalar_t(0), sv = scalar_t(0);  // locals: gu/gv may alias the inputs
  for (int c = 0; c < C; ++c) {
    su += g[c] * (a0[c] - a2[c]);
    sv += g[c] * (a1[c] - a2[c]);
  }
  gu = su;
  gv = sv;
}

}  // namespace jr2net::interp

#if defined(__CUDACC__) || defined(WITH_CUDA)
#include <cuda_runtime_api.h>

namespace jr2net::interp {

// CUDA launchers (csrc/cuda/interpolate.cu), instantiated for float and double. The backward
// accumulates into a zeroed grad_attr and writes every element of grad_rast.
template <typename scalar_t>
void launch_interpolate_fwd(const InterpParams<scalar_t>& p, cudaStream_t stream);
template <typename scalar_t>
void launch_interpolate_bwd(const InterpParams<scalar_t>& p, cudaStream_t stream);

}  // namespace jr2net::interp
#endif
