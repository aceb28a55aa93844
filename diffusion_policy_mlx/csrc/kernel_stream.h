// The stream an operation of the package's CPU kernels runs on, and its command encoder.
#pragma once

#include <vector>

#include "mlx/backend/cpu/encoder.h"
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

// The preamble of every eval_cpu here: `outputs` allocated, and they and `inputs` registered
// with the command encoder of `stream`, which is returned for the dispatch.
inline mlx::core::cpu::CommandEncoder& kernel_encoder(
    mlx::core::Stream stream, const std::vector<mlx::core::array>& inputs,
    std::vector<mlx::core::array>& outputs) {
  auto& encoder = mlx::core::cpu::get_command_encoder(stream);
  for (const auto& in : inputs) encoder.set_input_array(in);
  for (auto& out : outputs) {
    out.set_data(mlx::core::allocator::malloc(out.nbytes()));
    encoder.set_output_array(out);
  }
  return encoder;
}

// The same for a primitive of one output.
inline mlx::core::cpu::CommandEncoder& kernel_encoder(
    mlx::core::Stream stream, const std::vector<mlx::core::array>& inputs,
    mlx::core::array& out) {
  std::vector<mlx::core::array> outputs = {out};  // a handle: out shares what it allocates
  return kernel_encoder(stream, inputs, outputs);
}

}  // namespace dp_mlx
