// CPU feature dispatch shared by the CPU kernels: x86 AVX-512 copies are picked at run time.
#pragma once

#include <cstdlib>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define JR2_X86_DISPATCH 1
#define JR2_ALWAYS_INLINE __attribute__((always_inline))
#else
#define JR2_X86_DISPATCH 0
#define JR2_ALWAYS_INLINE
#endif

namespace jr2net {

// True when the CPU has AVX-512 F+VL. JR2NET_NO_AVX512=1 forces the baseline copies (tests use it
// to cover them on AVX-512 CPUs).
inline bool has_avx512() {
#if JR2_X86_DISPATCH
  static const bool yes = [] {
    const char* off = std::getenv("JR2NET_NO_AVX512");
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           !(off != nullptr && off[0] == '1');
  }();
  return yes;
#else
  return false;
#endif
}

}  // namespace jr2net
