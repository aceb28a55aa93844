// The GroupNorm kernels for AVX2 (compiled with -mavx2 -mfma).
#include "group_norm_impl.h"

DP_MLX_DEFINE_GROUP_NORM(group_norm_fwd_avx2, group_norm_bwd_avx2)
