// Shared definitions for maths compiled by both the host compiler and nvcc.
#pragma once

#if defined(__CUDACC__)
#define JR2_HD __host__ __device__ __forceinline__
#else
#define JR2_HD inline
#endif
