// The single pybind11 module, jr2net._C: registers every op's tensor-level entry points.
// This is the only translation unit that includes <torch/extension.h> (it is slow to compile);
// each op's tensor API lives in csrc/<op>.h with light ATen includes.
#include <torch/extension.h>

// --- rasterize + interpolate ---------------------------------------------------------------
#if __has_include("rasterize.h")
#include "rasterize.h"
#define JR2_HAVE_RASTERIZE 1
#endif
#if __has_include("interpolate.h")
#include "interpolate.h"
#define JR2_HAVE_INTERPOLATE 1
#endif
// --- sh_shading + warps --------------------------------------------------------------------
#if __has_include("sh_shading.h")
#include "sh_shading.h"
#define JR2_HAVE_SH_SHADING 1
#endif
#if __has_include("warp.h")
#include "warp.h"
#define JR2_HAVE_WARP 1
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "JR2Net C++/CUDA kernels: rasterize, interpolate, sh_shading, depth/correspondence warp";
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  // --- rasterize + interpolate -------------------------------------------------------------
#ifdef JR2_HAVE_RASTERIZE
#endif
#ifdef JR2_HAVE_INTERPOLATE
#endif
  // --- sh_shading + warps ------------------------------------------------------------------
#ifdef JR2_HAVE_SH_SHADING
#endif
#ifdef JR2_HAVE_WARP
#endif
}
