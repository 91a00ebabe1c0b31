// The single pybind11 module, jr2net._C: registers every op's tensor-level entry points.
// This is the only translation unit that includes <torch/extension.h> (it is slow to compile);
// each op's tensor API lives in csrc/<op>_dispatch.h with light ATen includes.
#include <torch/extension.h>

// Every op's dispatcher; a missing one is a build error, never a module without that op.
#include "interpolate_dispatch.h"
#include "rasterize_dispatch.h"
#include "sh_shading_dispatch.h"
#include "warp_dispatch.h"
#include "cpu/cpu_features.h"

// The kernels only touch tensors, so they run without the GIL: server threads (and any Python
// thread) keep working while a kernel runs.
static const auto kNoGil = py::call_guard<py::gil_scoped_release>();

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "JR2Net C++/CUDA kernels: rasterize, interpolate, sh_shading, depth/correspondence warp";
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def(
      "simd_level", [] { return std::string(jr2net::simd_level_name(jr2net::simd_level())); },
      "instruction-set level of the CPU kernels' vectorised copies: baseline, avx2 or avx512 "
      "(the CPU's best, lowered by the JR2NET_SIMD environment variable)");
  m.def(
      "cpu_simd_level", [] { return std::string(jr2net::simd_level_name(jr2net::cpu_simd_level())); },
      "the best instruction-set level this CPU supports (ignores JR2NET_SIMD)");
  // --- rasterize + interpolate -------------------------------------------------------------
  m.attr("rasterize_default_near_z") = jr2net::kDefaultNearZ;
  m.def("rasterize_fwd", &jr2net::rasterize_fwd, kNoGil,
        "rasterize forward -> rast [B,H,W,4] = (u, v, z, face_id+1)", py::arg("verts_cam"),
        py::arg("faces"), py::arg("K"), py::arg("H"), py::arg("W"), py::arg("cull_backfaces"),
        py::arg("near_z"));
  m.def("rasterize_bwd", &jr2net::rasterize_bwd, kNoGil,
        "rasterize backward -> grad_verts [B,V,3] from grad of rast channels u, v, z",
        py::arg("grad_rast"), py::arg("verts_cam"), py::arg("faces"), py::arg("K"),
        py::arg("rast"));
  m.def("interpolate_fwd", &jr2net::interpolate_fwd, kNoGil,
        "interpolate forward -> [B,H,W,C]; attr is [B,V,C] or [1,V,C]", py::arg("attr"),
        py::arg("rast"), py::arg("faces"));
  m.def("interpolate_bwd", &jr2net::interpolate_bwd, kNoGil,
        "interpolate backward -> (grad_attr, grad_rast)", py::arg("grad_out"), py::arg("attr"),
        py::arg("rast"), py::arg("faces"));
  // --- sh_shading + warps ------------------------------------------------------------------
  m.def("sh_shading_fwd", &jr2net::sh_shading_fwd, kNoGil, "sh_shading forward -> (image, irradiance)",
        py::arg("normals"), py::arg("albedo"), py::arg("sh"), py::arg("mask"));
  m.def("sh_shading_bwd", &jr2net::sh_shading_bwd, kNoGil,
        "sh_shading backward -> (grad_normals, grad_albedo, grad_sh, grad_mask), None where not needed",
        py::arg("grad_image"), py::arg("grad_irradiance"), py::arg("normals"), py::arg("albedo"),
        py::arg("sh"), py::arg("mask"), py::arg("needs"));
  m.def("depth_warp_fwd", &jr2net::depth_warp_fwd, kNoGil, "depth_warp forward -> (warped, covisible)",
        py::arg("src"), py::arg("dst_depth"), py::arg("K_src"), py::arg("K_dst"),
        py::arg("src_T_dst"), py::arg("src_depth"), py::arg("rel_eps"));
  m.def("depth_warp_bwd", &jr2net::depth_warp_bwd, kNoGil,
        "depth_warp backward -> (grad_src, grad_dst_depth), None where not needed",
        py::arg("grad_warped"), py::arg("src"), py::arg("dst_depth"), py::arg("K_src"),
        py::arg("K_dst"), py::arg("src_T_dst"), py::arg("src_depth"), py::arg("rel_eps"),
        py::arg("need_src"), py::arg("need_depth"));
  m.def("correspondence_warp_fwd", &jr2net::correspondence_warp_fwd, kNoGil,
        "correspondence_warp forward -> (warped, covisible)", py::arg("src"),
        py::arg("points_src"), py::arg("valid"), py::arg("K_src"), py::arg("src_depth"),
        py::arg("rel_eps"));
  m.def("correspondence_warp_bwd", &jr2net::correspondence_warp_bwd, kNoGil,
        "correspondence_warp backward -> (grad_src, grad_points_src), None where not needed",
        py::arg("grad_warped"), py::arg("src"), py::arg("points_src"), py::arg("valid"),
        py::arg("K_src"), py::arg("src_depth"), py::arg("rel_eps"), py::arg("need_src"),
        py::arg("need_points"));
}
