// Entry points of the bfloat16 AMX convolution kernel (amx_bf16.cpp, compiled with the AMX and
// AVX-512 BF16 flags). Call them only where kAmx (isa.h) holds, and only from a thread that
// runs amx_tiles_begin() before and amx_tiles_end() after.
#pragma once

#include <cstdint>

namespace dp_mlx {

// Packed sizes: rows and output channels are padded to 32 (two 16-row tiles), the reduction
// K * C_in to 32 bfloat16 pairs' worth (one tile row). Static: each file keeps its own copy,
// so the one compiled with AMX flags is never called from code that runs without them.
static inline int64_t amx_padded_rows(int64_t M) { return (M + 31) / 32 * 32; }
static inline int64_t amx_k_tiles(int64_t K, int64_t C) { return (K * C + 31) / 32; }
static inline int64_t amx_panels(int64_t N) { return (N + 31) / 32; }

struct AmxConvShape {
  int64_t B, T, C;         // input (B, T, C) float32
  int64_t T_out, K, stride, pad;
  int64_t N;               // output channels
};

void amx_tiles_begin();
void amx_tiles_end();

// Rows [r0, r1) (multiples of 16) of the input's columns, rounded to bfloat16 into `a`, laid out
// as tiles: a[(r / 16) * KT + kt] is the 16 x 32 tile of rows r..r+15 and reduction entries
// 32 kt .. 32 kt + 31, where row r = b * T_out + t holds tap k of output step t at entries
// k * C .. k * C + C - 1 (input step stride * t + k - pad, zeros outside the input or past
// B * T_out rows). `scratch` holds 32 * KT floats.
void amx_pack_columns(
    const float* x, uint16_t* a, float* scratch, const AmxConvShape& s, int64_t r0, int64_t r1);

// y[r, n] = bias[n] + sum_k a[r, k] w[n, k] for the output channels of panels [p0, p1) (32 each),
// all rows; a from amx_pack_columns, w packed by the Python side (see amx_conv1d.cpp).
void amx_multiply(
    const uint16_t* a, const uint16_t* w, const float* bias, float* y, const AmxConvShape& s,
    int64_t p0, int64_t p1);

}  // namespace dp_mlx
