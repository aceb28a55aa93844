// The few-row kernels for AVX2 (compiled with -mavx2 -mfma -mf16c).
#include <immintrin.h>

#include "few_row_tiles.h"

namespace {

struct Avx2 {
  static constexpr int width = 8;
  using vec = __m256;
  static vec zero() { return _mm256_setzero_ps(); }
  static vec load(const float* p) { return _mm256_loadu_ps(p); }
  static vec load(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(vec a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float scalar(float v) { return v; }
  static float scalar(uint16_t v) { return _cvtsh_ss(v); }
};

}  // namespace

DP_MLX_DEFINE_FEW_ROWS(few_rows_avx2, Avx2)
