// The few-row kernels for AVX-512 (compiled with -mavx512f -mfma -mf16c).
#include <immintrin.h>

#include "few_row_tiles.h"

namespace {

struct Avx512 {
  static constexpr int width = 16;
  using vec = __m512;
  static vec zero() { return _mm512_setzero_ps(); }
  static vec load(const float* p) { return _mm512_loadu_ps(p); }
  static vec load(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(vec a) { return _mm512_reduce_add_ps(a); }
  static float scalar(float v) { return v; }
  static float scalar(uint16_t v) { return _cvtsh_ss(v); }
};

}  // namespace

DP_MLX_DEFINE_FEW_ROWS(few_rows_avx512, Avx512)
