// The instruction set this CPU runs the package's kernels with. Each ISA's kernels are compiled
// in their own file with that ISA's flags, so nothing outside those files may assume one.
#pragma once

namespace dp_mlx {

enum class Isa { none, avx2, avx512 };

inline Isa detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return Isa::avx2;
  return Isa::none;
}

inline const Isa kIsa = detect_isa();

}  // namespace dp_mlx
