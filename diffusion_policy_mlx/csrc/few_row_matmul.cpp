// y = x @ w^T for a few rows of x: the batch-1 convolutions and GEMMs of the U-Net on the CPU.
//
// With 1-16 rows a product is a pass over the weight matrix, so its speed is the rate at which
// the weights are read. OpenBLAS reads them at about half the machine's rate at 4 rows (it packs
// the wide operand first); this kernel reads each weight once, straight from memory, and
// accumulates every row against it in registers. Weights may be float32 or float16 (half the
// bytes: converted to float32 in registers, accumulated in float32).

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"
#include "mlx/transforms.h"
#include "mlx/utils.h"

#include "cpu_kernels.h"
#include "few_row_kernels.h"
#include "isa.h"
#include "kernel_stream.h"
#include "workers.h"

namespace mx = mlx::core;

namespace dp_mlx {

constexpr int kMaxRows = 16;

template <class Wt>
void few_rows_range(
    const float* x, const Wt* w, float* y, int64_t M, int64_t K, int64_t N, int64_t n0,
    int64_t n1) {
  if (kIsa == Isa::avx512)
    few_rows_avx512(x, w, y, M, K, N, n0, n1);
  else
    few_rows_avx2(x, w, y, M, K, N, n0, n1);
}

// y = x w^T (+ bias) for x (M, K), w (N, K) float32 or float16 (`half`), on up to `threads`
// threads, each taking a range of weight rows.
void product(
    const float* x, const void* w, bool half, const float* bias, float* y, int64_t M, int64_t K,
    int64_t N, int threads) {
  const int parts = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, N / 64)));
  Workers::get().run(parts, [&](int part) {
    // Split on multiples of 4 rows so every part keeps whole tiles.
    const int64_t quads = (N + 3) / 4;
    const int64_t n0 = std::min(N, quads * part / parts * 4);
    const int64_t n1 = std::min(N, quads * (part + 1) / parts * 4);
    if (half)
      few_rows_range(x, static_cast<const uint16_t*>(w), y, M, K, N, n0, n1);
    else
      few_rows_range(x, static_cast<const float*>(w), y, M, K, N, n0, n1);
    if (bias != nullptr)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = n0; n < n1; ++n) y[m * N + n] += bias[n];
  });
}

// ---------------------------------------------------------------------------------------------
// The MLX primitive.

class FewRowMatmul : public mx::UnaryPrimitive {
 public:
  FewRowMatmul(mx::Stream stream, int threads) : mx::UnaryPrimitive(stream), threads_(threads) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const mx::array& x = inputs[0];
    const mx::array& w = inputs[1];
    auto& encoder = kernel_encoder(stream(), inputs, out);
    const int64_t M = x.shape(0), K = x.shape(1), N = w.shape(0);
    encoder.dispatch([x_ptr = x.data<float>(), w_data = w.data<void>(), half = w.dtype() == mx::float16,
                      y_ptr = out.data<float>(), M, K, N, threads = threads_]() {
      product(x_ptr, w_data, half, nullptr, y_ptr, M, K, N, threads);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("few_row_matmul runs on the CPU only; call it with stream=mx.cpu");
  }

  // y = x w^T: dx = dy w, dw = dy^T x (in w's dtype). The package samples through the kernel
  // only (training keeps MLX's products); this is for anyone who differentiates a call.
  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums, const std::vector<mx::array>&) override {
    const mx::array& x = primals[0];
    const mx::array& w = primals[1];
    const mx::array& dy = cotangents[0];
    std::vector<mx::array> grads;
    for (int arg : argnums) {
      if (arg == 0)
        grads.push_back(mx::matmul(dy, mx::astype(w, mx::float32, stream()), stream()));
      else
        grads.push_back(
            mx::astype(mx::matmul(mx::transpose(dy, stream()), x, stream()), w.dtype(), stream()));
    }
    return grads;
  }

  const char* name() const override { return "FewRowMatmul"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return threads_ == static_cast<const FewRowMatmul&>(other).threads_;
  }

 private:
  int threads_;
};

// A stride-1 'same' convolution over a few rows (B * T <= 16): x (B, T, C_in), w (C_out, K, C_in),
// bias (C_out,) -> (B, T, C_out). The input's columns (each output step's K taps side by side,
// zeros where a tap reads padding) are built here, in one buffer, and multiplied as one
// product: at batch 1 the same in MLX operations is a pad, K slices, a concatenation and a bias
// add per convolution, each dispatched on its own.
class FewRowConv1d : public mx::UnaryPrimitive {
 public:
  FewRowConv1d(mx::Stream stream, int threads) : mx::UnaryPrimitive(stream), threads_(threads) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const mx::array& x = inputs[0];
    const mx::array& w = inputs[1];
    const mx::array& bias = inputs[2];
    auto& encoder = kernel_encoder(stream(), inputs, out);
    const int64_t B = x.shape(0), T = x.shape(1), C = x.shape(2);
    const int64_t N = w.shape(0), K = w.shape(1);
    encoder.dispatch([x_ptr = x.data<float>(), w_data = w.data<void>(),
                      half = w.dtype() == mx::float16, b_ptr = bias.data<float>(),
                      y_ptr = out.data<float>(), B, T, C, N, K, threads = threads_]() {
      const int64_t pad = K / 2;
      std::vector<float> cols(B * T * K * C, 0.0f);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
          for (int64_t k = 0; k < K; ++k) {
            const int64_t s = t + k - pad;
            if (s < 0 || s >= T) continue;
            std::copy_n(x_ptr + (b * T + s) * C, C, cols.data() + ((b * T + t) * K + k) * C);
          }
      product(cols.data(), w_data, half, b_ptr, y_ptr, B * T, K * C, N, threads);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("few_row_conv1d runs on the CPU only; call it with stream=mx.cpu");
  }

  // The gradients of MLX's own convolution (in float32; dw cast to w's dtype). The package
  // samples through the kernel only; this is for anyone who differentiates a call.
  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums, const std::vector<mx::array>&) override {
    const auto s = stream();
    const int pad = static_cast<int>(primals[1].shape(1) / 2);
    auto reference = [&](const std::vector<mx::array>& in) {
      return std::vector<mx::array>{
          mx::add(mx::conv1d(in[0], in[1], 1, pad, 1, 1, s), in[2], s)};
    };
    const std::vector<mx::array> primals32 = {
        primals[0], mx::astype(primals[1], mx::float32, s), primals[2]};
    auto grads = mx::vjp(reference, primals32, cotangents).second;
    grads[1] = mx::astype(grads[1], primals[1].dtype(), s);
    std::vector<mx::array> out;
    for (int arg : argnums) out.push_back(grads[arg]);
    return out;
  }

  const char* name() const override { return "FewRowConv1d"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return threads_ == static_cast<const FewRowConv1d&>(other).threads_;
  }

 private:
  int threads_;
};

mx::array few_row_matmul(const mx::array& x, const mx::array& w, int threads, mx::StreamOrDevice s) {
  auto fail = [&](const std::string& what) {
    std::ostringstream msg;
    msg << "few_row_matmul(x " << x.shape() << " " << x.dtype() << ", w " << w.shape() << " "
        << w.dtype() << "): " << what;
    throw std::invalid_argument(msg.str());
  };
  if (x.ndim() != 2 || w.ndim() != 2 || x.shape(1) != w.shape(1))
    fail("expects x (M, K) and w (N, K)");
  if (x.shape(0) > kMaxRows) fail("at most 16 rows of x");
  if (x.dtype() != mx::float32) fail("x must be float32");
  if (w.dtype() != mx::float32 && w.dtype() != mx::float16) fail("w must be float32 or float16");
  if (threads < 1) fail("threads must be >= 1");
  const auto stream = kernel_stream(s, fail);
  return mx::array(
      {x.shape(0), w.shape(0)}, mx::float32,
      std::make_shared<FewRowMatmul>(stream, threads),
      {mx::contiguous(x, false, stream), mx::contiguous(w, false, stream)});
}

mx::array few_row_conv1d(
    const mx::array& x, const mx::array& w, const mx::array& bias, int threads,
    mx::StreamOrDevice s) {
  auto fail = [&](const std::string& what) {
    std::ostringstream msg;
    msg << "few_row_conv1d(x " << x.shape() << " " << x.dtype() << ", w " << w.shape() << " "
        << w.dtype() << ", bias " << bias.shape() << "): " << what;
    throw std::invalid_argument(msg.str());
  };
  if (x.ndim() != 3 || w.ndim() != 3 || x.shape(2) != w.shape(2))
    fail("expects x (B, T, C_in) and w (C_out, K, C_in)");
  if (w.shape(1) % 2 == 0) fail("the kernel size must be odd ('same' padding)");
  if (bias.ndim() != 1 || bias.shape(0) != w.shape(0)) fail("bias must be (C_out,)");
  if (x.shape(0) * x.shape(1) > kMaxRows) fail("at most 16 rows (B * T) of x");
  if (x.dtype() != mx::float32 || bias.dtype() != mx::float32) fail("x and bias must be float32");
  if (w.dtype() != mx::float32 && w.dtype() != mx::float16) fail("w must be float32 or float16");
  if (threads < 1) fail("threads must be >= 1");
  const auto stream = kernel_stream(s, fail);
  return mx::array(
      {x.shape(0), x.shape(1), w.shape(0)}, mx::float32,
      std::make_shared<FewRowConv1d>(stream, threads),
      {mx::contiguous(x, false, stream), mx::contiguous(w, false, stream),
       mx::contiguous(bias, false, stream)});
}

}  // namespace dp_mlx
