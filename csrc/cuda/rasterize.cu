// CUDA rasteriser: same algorithm and maths as csrc/cpu/rasterize_cpu.cpp (shared through
// csrc/ops/rasterize.h): project, one thread per triangle scattering packed (depth, id) keys
// with atomicMin, one thread per pixel resolving (u, v, z). Backward: one thread per pixel,
// atomicAdd into the vertex gradients. No torch headers: raw pointers and param structs.
#include <cuda_runtime.h>

#include "ops/rasterize.h"

namespace jr2net::raster {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(long long n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

template <typename scalar_t>
__global__ void project_kernel(RasterFwdParams<scalar_t, double> p) {
  const long long k = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (k >= static_cast<long long>(p.B) * p.V) return;
  project_vertex<double>(p.verts + k * 3, p.K + (k / p.V) * 9, p.near_z, p.proj + k * 3);
}

template <typename scalar_t>
__global__ void triangle_kernel(RasterFwdParams<scalar_t, double> p) {
  const long long t = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (t >= static_cast<long long>(p.B) * p.F) return;
  const long long b = t / p.F;
  const int f = static_cast<int>(t - b * p.F);
  const int32_t* fv = p.faces + static_cast<long long>(f) * 3;
  const double* pb = p.proj + b * p.V * 3;
  TriSetup<double> ts;
  if (!setup_triangle(pb + static_cast<long long>(fv[0]) * 3, pb + static_cast<long long>(fv[1]) * 3,
                      pb + static_cast<long long>(fv[2]) * 3, p.H, p.W, p.cull_backfaces, ts)) {
    return;
  }
  unsigned long long* zb = p.zbuf + b * p.H * p.W;
  for (int i = ts.i0; i <= ts.i1; ++i) {
    const RowTerms<double> rt = row_terms(ts, static_cast<double>(i));
    unsigned long long* zrow = zb + static_cast<long long>(i) * p.W;
    int ja, jb;
    if (!row_span(ts, rt, ja, jb)) continue;
    for (int j = ja; j <= jb; ++j) {
      const unsigned long long key = pixel_key(ts, rt, static_cast<double>(j), f);
      if (key != kEmptyKey && key < zrow[j]) atomicMin(zrow + j, key);
    }
  }
}

template <typename scalar_t>
__global__ void resolve_kernel(RasterFwdParams<scalar_t, double> p) {
  const long long pix = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const long long HW = static_cast<long long>(p.H) * p.W;
  if (pix >= p.B * HW) return;
  const long long b = pix / HW;
  const int i = static_cast<int>((pix - b * HW) / p.W);
  const int j = static_cast<int>(pix - b * HW - static_cast<long long>(i) * p.W);
  const unsigned long long key = p.zbuf[pix];
  scalar_t* out = p.rast + pix * 4;
  if (key == kEmptyKey) {
    out[0] = out[1] = out[2] = out[3] = scalar_t(0);
    return;
  }
  const int f = static_cast<int>(key & 0xffffffffull);
  const int32_t* fv = p.faces + static_cast<long long>(f) * 3;
  const double* pb = p.proj + b * p.V * 3;
  double u, v, z;
  resolve_uvz_proj(pb + static_cast<long long>(fv[0]) * 3, pb + static_cast<long long>(fv[1]) * 3,
                   pb + static_cast<long long>(fv[2]) * 3, static_cast<double>(j),
                   static_cast<double>(i), u, v, z);
  out[0] = static_cast<scalar_t>(u);
  out[1] = static_cast<scalar_t>(v);
  out[2] = static_cast<scalar_t>(z);
  out[3] = static_cast<scalar_t>(f + 1);
}

template <typename scalar_t>
__global__ void backward_kernel(RasterBwdParams<scalar_t> p) {
  const long long pix = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const long long HW = static_cast<long long>(p.H) * p.W;
  if (pix >= p.B * HW) return;
  const scalar_t* r = p.rast + pix * 4;
  const scalar_t* gr = p.grad_rast + pix * 4;
  if (!(r[3] >= scalar_t(1) && r[3] <= scalar_t(p.F))) return;  // background / bad id
  if (gr[0] == scalar_t(0) && gr[1] == scalar_t(0) && gr[2] == scalar_t(0)) return;
  const int f = static_cast<int>(r[3]) - 1;
  const long long b = pix / HW;
  const int i = static_cast<int>((pix - b * HW) / p.W);
  const int j = static_cast<int>(pix - b * HW - static_cast<long long>(i) * p.W);
  const int32_t* fv = p.faces + static_cast<long long>(f) * 3;
  const scalar_t* vb = p.verts + b * p.V * 3;
  double g[3][3] = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}};
  pixel_backward(vb, fv, p.K + b * 9, i, j, gr, g);
  scalar_t* gb = p.grad_verts + b * p.V * 3;
  for (int k = 0; k < 3; ++k) {
    scalar_t* d = gb + static_cast<long long>(fv[k]) * 3;
    atomicAdd(d + 0, static_cast<scalar_t>(g[k][0]));
    atomicAdd(d + 1, static_cast<scalar_t>(g[k][1]));
    atomicAdd(d + 2, static_cast<scalar_t>(g[k][2]));
  }
}

}  // namespace

template <typename scalar_t>
void launch_rasterize_fwd(const RasterFwdParams<scalar_t, double>& p, cudaStream_t stream) {
  const long long nv = static_cast<long long>(p.B) * p.V;
  const long long nt = static_cast<long long>(p.B) * p.F;
  const long long np = static_cast<long long>(p.B) * p.H * p.W;
  // All-ones bytes == kEmptyKey.
  cudaMemsetAsync(p.zbuf, 0xff, static_cast<size_t>(np) * sizeof(unsigned long long), stream);
  if (nv > 0) project_kernel<scalar_t><<<blocks_for(nv), kThreads, 0, stream>>>(p);
  if (nt > 0) triangle_kernel<scalar_t><<<blocks_for(nt), kThreads, 0, stream>>>(p);
  if (np > 0) resolve_kernel<scalar_t><<<blocks_for(np), kThreads, 0, stream>>>(p);
}

template <typename scalar_t>
void launch_rasterize_bwd(const RasterBwdParams<scalar_t>& p, cudaStream_t stream) {
  const long long np = static_cast<long long>(p.B) * p.H * p.W;
  if (np > 0) backward_kernel<scalar_t><<<blocks_for(np), kThreads, 0, stream>>>(p);
}

template void launch_rasterize_fwd<float>(const RasterFwdParams<float, double>&, cudaStream_t);
template void launch_rasterize_fwd<double>(const RasterFwdParams<double, double>&, cudaStream_t);
template void launch_rasterize_bwd<float>(const RasterBwdParams<float>&, cudaStream_t);
template void launch_rasterize_bwd<double>(const RasterBwdParams<double>&, cudaStream_t);

}  // namespace jr2net::raster
