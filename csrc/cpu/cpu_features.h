// CPU feature dispatch shared by the CPU kernels: x86 AVX2 and AVX-512 copies of the hot loops
// are picked at run time (the extension itself is compiled for baseline x86-64).
#pragma once

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define JR2_X86_DISPATCH 1
#define JR2_ALWAYS_INLINE __attribute__((always_inline))
// Target attributes of the copies. AVX2 copies use 256-bit vectors, AVX-512 ones 512-bit.
#define JR2_TARGET_AVX2 __attribute__((target("avx2,fma,prefer-vector-width=256")))
#define JR2_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx2,fma,prefer-vector-width=512")))
#else
#define JR2_X86_DISPATCH 0
#define JR2_ALWAYS_INLINE
#endif

namespace jr2net {

// The instruction-set level of the CPU kernels' vectorised copies, lowest first.
enum class SimdLevel : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::kAvx512:
      return "avx512";
    case SimdLevel::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

// The best level this CPU runs: AVX-512 needs F+VL, AVX2 needs AVX2+FMA.
inline SimdLevel cpu_simd_level() {
#if JR2_X86_DISPATCH
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) {
    return SimdLevel::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdLevel::kAvx2;
#endif
  return SimdLevel::kBaseline;
}

// The level the kernels run: the CPU's best, or lower when the environment variable JR2NET_SIMD
// asks for it (baseline | avx2 | avx512; tests and benchmarks use it to cover every copy on one
// machine). A level above the CPU's is lowered to the CPU's; an unknown value is a ValueError
// (pybind11 maps std::invalid_argument) from the first kernel call.
inline SimdLevel simd_level() {
  static const SimdLevel level = [] {
    const SimdLevel cpu = cpu_simd_level();
    const char* want = std::getenv("JR2NET_SIMD");
    if (want == nullptr || want[0] == '\0') return cpu;
    SimdLevel asked;
    if (std::strcmp(want, "avx512") == 0) {
      asked = SimdLevel::kAvx512;
    } else if (std::strcmp(want, "avx2") == 0) {
      asked = SimdLevel::kAvx2;
    } else if (std::strcmp(want, "baseline") == 0) {
      asked = SimdLevel::kBaseline;
    } else {
      throw std::invalid_argument(std::string("JR2NET_SIMD must be baseline, avx2 or avx512, got '") +
                                  want + "'");
    }
    return static_cast<int>(asked) < static_cast<int>(cpu) ? asked : cpu;
  }();
  return level;
}

}  // namespace jr2net
