// The stream an operation of the package's CPU kernels runs on.
#pragma once

#include "mlx/mlx.h"

#include "isa.h"

namespace dp_mlx {

// The CPU stream `s` names (the default CPU stream if none); `fail(message)` throws when the
// CPU has no kernel ISA or `s` is not a CPU stream.
template <class Fail>
mlx::core::Stream kernel_stream(mlx::core::StreamOrDevice s, Fail&& fail) {
  if (kIsa == Isa::none) fail("this CPU has neither AVX-512 nor AVX2 with FMA and F16C");
  auto stream = mlx::core::to_stream(s, mlx::core::Device::cpu);
  if (stream.device != mlx::core::Device::cpu) fail("runs on the CPU only");
  return stream;
}

}  // namespace dp_mlx
