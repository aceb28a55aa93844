// The GroupNorm kernels for AVX-512 (compiled with -mavx512f -mfma).
#include "group_norm_impl.h"

DP_MLX_DEFINE_GROUP_NORM(group_norm_fwd_avx512, group_norm_bwd_avx512)
