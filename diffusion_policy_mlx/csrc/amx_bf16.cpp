// The bfloat16 AMX convolution kernel (compiled with -mamx-tile -mamx-bf16 -mavx512f
// -mavx512bf16). Nothing compiled here may be shared with other files (no inline functions
// with external linkage, so no STL), so that no AMX or AVX-512 code reaches a CPU without them
// through the linker's choice of one copy.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "amx_kernels.h"

namespace dp_mlx {

namespace {

constexpr int64_t kTile = 512;  // bfloat16 entries of one 16 x 32 tile (1 KB)

struct TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

}  // namespace

void amx_tiles_begin() {
  // Eight tiles of 16 rows x 64 bytes: four float32 accumulators (a 32 x 32 block of the
  // output), two of the columns (32 rows) and two of the weights (32 channels).
  TileConfig config{};
  config.palette_id = 1;
  for (int i = 0; i < 8; ++i) {
    config.rows[i] = 16;
    config.colsb[i] = 64;
  }
  // GCC 12 does not see _tile_loadconfig read its operand and drops the stores above as dead.
  __asm__ volatile("" : : "r"(&config) : "memory");
  _tile_loadconfig(&config);
}

void amx_tiles_end() { _tile_release(); }

void amx_pack_columns(
    const float* x, uint16_t* a, float* scratch, const AmxConvShape& s, int64_t r0, int64_t r1) {
  const int64_t KT = amx_k_tiles(s.K, s.C), rows = s.B * s.T_out;
  for (int64_t r = r0; r < r1; ++r) {
    std::memset(scratch, 0, KT * 32 * sizeof(float));
    if (r < rows) {
      const int64_t b = r / s.T_out, t = r % s.T_out;
      for (int64_t k = 0; k < s.K; ++k) {
        const int64_t step = s.stride * t + k - s.pad;
        if (step >= 0 && step < s.T)
          std::memcpy(scratch + k * s.C, x + (b * s.T + step) * s.C, s.C * sizeof(float));
      }
    }
    uint16_t* row = a + (r / 16) * KT * kTile + (r % 16) * 32;
    for (int64_t kt = 0; kt < KT; ++kt) {
      // rounds to nearest even, like MLX's and torch's float32 -> bfloat16
      const __m512bh pair = _mm512_cvtne2ps_pbh(
          _mm512_loadu_ps(scratch + kt * 32 + 16), _mm512_loadu_ps(scratch + kt * 32));
      _mm512_storeu_si512(row + kt * kTile, reinterpret_cast<const __m512i&>(pair));
    }
  }
}

void amx_multiply(
    const uint16_t* a, const uint16_t* w, const float* bias, float* y, const AmxConvShape& s,
    int64_t p0, int64_t p1) {
  const int64_t KT = amx_k_tiles(s.K, s.C), rows = s.B * s.T_out;
  const int64_t blocks = amx_padded_rows(rows) / 32;
  // Rows in chunks of about 1 MB of columns, which stay in L2 while every panel of the range
  // (32 channels' weights, also in L2) passes over them: with all rows at once the columns
  // of a batch-56 layer (4.6 MB) came from L3 for every panel. 631 -> 707 GFLOP/s for a
  // (448, 5120) x (5120, 1024) product on one core.
  const int64_t block_bytes = 32 * KT * 32 * sizeof(uint16_t);
  const int64_t chunk = block_bytes < (1 << 20) ? (1 << 20) / block_bytes : 1;
  alignas(64) float out[32 * 32];
  for (int64_t c0 = 0; c0 < blocks; c0 += chunk) {
    const int64_t c1 = c0 + chunk < blocks ? c0 + chunk : blocks;
    for (int64_t p = p0; p < p1; ++p) {
      const uint16_t* w0 = w + 2 * p * KT * kTile;
      const uint16_t* w1 = w0 + KT * kTile;
      for (int64_t mb = c0; mb < c1; ++mb) {
        const uint16_t* a0 = a + 2 * mb * KT * kTile;
        const uint16_t* a1 = a0 + KT * kTile;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        // Each load right before the first product that needs it: grouping the four loads
        // ahead of the four products ran at 450 instead of 631 GFLOP/s.
        for (int64_t kt = 0; kt < KT; ++kt) {
          _tile_loadd(4, a0 + kt * kTile, 64);
          _tile_loadd(6, w0 + kt * kTile, 64);
          _tile_dpbf16ps(0, 4, 6);
          _tile_loadd(7, w1 + kt * kTile, 64);
          _tile_dpbf16ps(1, 4, 7);
          _tile_loadd(5, a1 + kt * kTile, 64);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, out, 128);
        _tile_stored(1, out + 16, 128);
        _tile_stored(2, out + 16 * 32, 128);
        _tile_stored(3, out + 16 * 32 + 16, 128);
        const int64_t n0 = p * 32, width = s.N - n0 < 32 ? s.N - n0 : 32;
        const int64_t height = rows - mb * 32 < 32 ? rows - mb * 32 : 32;
        for (int64_t i = 0; i < height; ++i) {
          float* dst = y + (mb * 32 + i) * s.N + n0;
          for (int64_t j = 0; j < width; ++j) dst[j] = out[i * 32 + j] + bias[n0 + j];
        }
      }
    }
  }
}

}  // namespace dp_mlx
