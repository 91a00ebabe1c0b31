// CUDA kernels of sh_shading: one thread per pixel through the shared maths in ops/sh_shading.h.
// dL/dsh is reduced per block (warp shuffles, then shared memory) and added with 27 atomics.
// No torch headers: the tensor glue is csrc/cuda/sh_shading_cuda.cpp.
#include <cuda_runtime.h>

#include "ops/sh_shading.h"

namespace jr2net::shading {
namespace {

constexpr int kShThreads = 256;

template <typename T>
__global__ void sh_shading_fwd_kernel(ShShadingParams<T> P) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= P.B * P.HW) return;
  const int64_t b = n / P.HW, p = n - b * P.HW;
  sh_shading_pixel(P, P.sh + b * 27, b, p);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// grid: (pixel blocks, B); each block belongs to one batch element, so dL/dsh reduces per block.
template <typename T>
__global__ void sh_shading_bwd_kernel(ShShadingBackwardParams<T> P) {
  const int64_t b = blockIdx.y;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  T acc[27];
#pragma unroll
  for (int k = 0; k < 27; ++k) acc[k] = T(0);
  if (p < P.HW) sh_shading_pixel_backward<T, T>(P, P.sh + b * 27, b, p, acc);
  if (!P.grad_sh) return;  // uniform across the grid
  __shared__ T partial[27][kShThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < 27; ++k) {
    const T v = warp_sum(acc[k]);
    if (lane == 0) partial[k][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < 27) {
    T s = T(0);
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) s += partial[threadIdx.x][w];
    atomicAdd(P.grad_sh + b * 27 + threadIdx.x, s);
  }
}

}  // namespace

template <typename T>
void launch_sh_shading_fwd(const ShShadingParams<T>& P, cudaStream_t stream) {
  const int64_t n = P.B * P.HW;
  if (n == 0) return;
  const int64_t blocks = (n + kShThreads - 1) / kShThreads;
  sh_shading_fwd_kernel<T><<<static_cast<unsigned>(blocks), kShThreads, 0, stream>>>(P);
}

template <typename T>
void launch_sh_shading_bwd(const ShShadingBackwardParams<T>& P, cudaStream_t stream) {
  if (P.B == 0 || P.HW == 0) return;
  // blockDim must be a multiple of 32 (full warps for the shuffles) and == kShThreads.
  const dim3 grid(static_cast<unsigned>((P.HW + kShThreads - 1) / kShThreads),
                  static_cast<unsigned>(P.B));
  sh_shading_bwd_kernel<T><<<grid, kShThreads, 0, stream>>>(P);
}

template void launch_sh_shading_fwd<float>(const ShShadingParams<float>&, cudaStream_t);
template void launch_sh_shading_fwd<double>(const ShShadingParams<double>&, cudaStream_t);
template void launch_sh_shading_bwd<float>(const ShShadingBackwardParams<float>&, cudaStream_t);
template void launch_sh_shading_bwd<double>(const ShShadingBackwardParams<double>&,
                                                 cudaStream_t);

}  // namespace jr2net::shading
