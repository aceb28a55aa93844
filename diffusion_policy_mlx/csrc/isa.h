// The instruction set this CPU runs the package's kernels with. Each ISA's kernels are compiled
// in their own file with that ISA's flags, so nothing outside those files may assume one.
#pragma once

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

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

// Whether the bfloat16 AMX kernel can run: the CPU has AMX-TILE, AMX-BF16 and AVX-512 BF16
// (Sapphire Rapids and later), the OS saves tile state (XCR0 bits 17 and 18), and Linux grants
// this process the tile data (arch_prctl ARCH_REQ_XCOMP_PERM, which Linux requires first).
inline bool detect_amx() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tiles = (d >> 24 & 1) && (d >> 22 & 1), avx512f = b >> 16 & 1;
  __get_cpuid_count(7, 1, &a, &b, &c, &d);
  const bool avx512_bf16 = a >> 5 & 1;
  if (!(tiles && avx512f && avx512_bf16)) return false;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return false;
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}

inline const bool kAmx = detect_amx();

}  // namespace dp_mlx
