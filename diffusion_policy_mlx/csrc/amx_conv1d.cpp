// A 1-D convolution in bfloat16 on AMX tiles, for batched sampling on the CPU.
//
// Past a few rows a convolution (as an im2col product) is bound by arithmetic, and float32 GEMM
// is as fast as this CPU goes: about 125 GFLOP/s per core for OpenBLAS on a Sapphire Rapids
// Xeon. Its AMX units multiply bfloat16 tiles into float32 at several times that. The columns
// are rounded to bfloat16 as they are built; the weights come packed into tiles once (see
// pack_weight in model/common/amx_conv1d.py); products accumulate in float32.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"

#include "amx_kernels.h"
#include "cpu_kernels.h"
#include "isa.h"
#include "kernel_stream.h"
#include "workers.h"

namespace mx = mlx::core;

namespace dp_mlx {

namespace {

// The columns' tiles, reused from call to call on each stream thread: a fresh buffer of a few
// MB per convolution would be page faults on every call.
uint16_t* column_buffer(int64_t entries) {
  struct Aligned {
    void operator()(uint16_t* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  thread_local std::unique_ptr<uint16_t[], Aligned> buffer;
  thread_local int64_t capacity = 0;
  if (entries > capacity) {
    buffer.reset(static_cast<uint16_t*>(
        ::operator new[](entries * sizeof(uint16_t), std::align_val_t(64))));
    capacity = entries;
  }
  return buffer.get();
}

void conv1d(
    const float* x, const uint16_t* w, const float* bias, float* y, const AmxConvShape& s,
    int threads) {
  const int64_t KT = amx_k_tiles(s.K, s.C);
  const int64_t padded = amx_padded_rows(s.B * s.T_out);
  uint16_t* a = column_buffer(padded * KT * 32);
  const int64_t row_tiles = padded / 16, panels = amx_panels(s.N);
  const int pack_parts = static_cast<int>(std::min<int64_t>(threads, row_tiles));
  Workers::get().run(pack_parts, [&](int part) {
    std::vector<float> scratch(KT * 32);
    const int64_t r0 = row_tiles * part / pack_parts * 16;
    const int64_t r1 = row_tiles * (part + 1) / pack_parts * 16;
    amx_pack_columns(x, a, scratch.data(), s, r0, r1);
  });
  const int parts = static_cast<int>(std::min<int64_t>(threads, panels));
  Workers::get().run(parts, [&](int part) {
    amx_tiles_begin();
    amx_multiply(a, w, bias, y, s, panels * part / parts, panels * (part + 1) / parts);
    amx_tiles_end();
  });
}

class AmxConv1d : public mx::UnaryPrimitive {
 public:
  AmxConv1d(mx::Stream stream, int kernel, int stride, int padding, int threads)
      : mx::UnaryPrimitive(stream),
        kernel_(kernel),
        stride_(stride),
        padding_(padding),
        threads_(threads) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const mx::array& x = inputs[0];
    const mx::array& w = inputs[1];
    const mx::array& bias = inputs[2];
    auto& encoder = kernel_encoder(stream(), inputs, out);
    const AmxConvShape shape{x.shape(0), x.shape(1), x.shape(2), out.shape(1),
                             kernel_,    stride_,    padding_,   out.shape(2)};
    encoder.dispatch([x_ptr = x.data<float>(), w_ptr = w.data<uint16_t>(),
                      b_ptr = bias.data<float>(), y_ptr = out.data<float>(), shape,
                      threads = threads_]() {
      conv1d(x_ptr, w_ptr, b_ptr, y_ptr, shape, threads);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("amx_conv1d runs on the CPU only; call it with stream=mx.cpu");
  }

  const char* name() const override { return "AmxConv1d"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const AmxConv1d&>(other);
    return kernel_ == o.kernel_ && stride_ == o.stride_ && padding_ == o.padding_ &&
           threads_ == o.threads_;
  }

 private:
  int kernel_, stride_, padding_, threads_;
};

}  // namespace

mx::array amx_conv1d(
    const mx::array& x, const mx::array& w, const mx::array& bias, int kernel, int stride,
    int padding, int threads, mx::StreamOrDevice s) {
  auto fail = [&](const std::string& what) {
    std::ostringstream msg;
    msg << "amx_conv1d(x " << x.shape() << " " << x.dtype() << ", w " << w.shape() << " "
        << w.dtype() << ", bias " << bias.shape() << ", kernel=" << kernel
        << ", stride=" << stride << ", padding=" << padding << "): " << what;
    throw std::invalid_argument(msg.str());
  };
  if (!kAmx) fail("this CPU (or OS) has no AMX with bfloat16");
  if (x.ndim() != 3) fail("expects x (B, T, C_in)");
  if (x.dtype() != mx::float32 || bias.dtype() != mx::float32) fail("x and bias must be float32");
  if (bias.ndim() != 1) fail("bias must be (C_out,)");
  if (kernel < 1 || stride < 1 || padding < 0 || threads < 1)
    fail("kernel, stride and threads must be >= 1 and padding >= 0");
  const int64_t T_out = (x.shape(1) + 2 * padding - kernel) / stride + 1;
  if (x.shape(1) + 2 * padding < kernel) fail("the kernel is longer than the padded input");
  const int64_t N = bias.shape(0);
  const mx::Shape packed = {
      static_cast<int>(2 * amx_panels(N)), static_cast<int>(amx_k_tiles(kernel, x.shape(2))),
      16, 32};
  if (w.dtype() != mx::bfloat16 || w.shape() != packed) {
    std::ostringstream want;
    want << "w must be the packed bfloat16 weight of shape " << packed
         << " (model/common/amx_conv1d.py's pack_weight)";
    fail(want.str());
  }
  const auto stream = kernel_stream(s, fail);
  return mx::array(
      {x.shape(0), static_cast<int>(T_out), static_cast<int>(N)}, mx::float32,
      std::make_shared<AmxConv1d>(stream, kernel, stride, padding, threads),
      {mx::contiguous(x, false, stream), mx::contiguous(w, false, stream),
       mx::contiguous(bias, false, stream)});
}

}  // namespace dp_mlx
