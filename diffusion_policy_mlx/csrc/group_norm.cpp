// GroupNorm, optionally followed by Mish or ReLU, as MLX primitives for the CPU, with their
// gradient.
//
// MLX's CPU GroupNorm is a transpose, a layer norm of composed reductions and a transpose back,
// each on one thread with scalar code, and its gradient is several times that: in the U-Net's
// training step the norms and their Mish took longer than the convolutions at the shallow
// levels. Here the forward is three vectorised sweeps over each sample (two for the statistics,
// one for the output) and the backward four, each over data that stays in cache.

#include <sstream>
#include <stdexcept>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"

#include "cpu_kernels.h"
#include "group_norm_kernels.h"
#include "isa.h"
#include "kernel_stream.h"

namespace mx = mlx::core;

namespace dp_mlx {

namespace {

struct Params {
  int groups;
  float eps;
  int act;
  bool operator==(const Params& o) const {
    return groups == o.groups && eps == o.eps && act == o.act;
  }
};

// Outputs and scratch of the (B, S, C) input inputs[0].
struct Dims {
  explicit Dims(const mx::array& x) : B(x.shape(0)), S(x.shape(1)), C(x.shape(2)) {}
  int64_t B, S, C;
};

class GroupNormVjp : public mx::Primitive {
 public:
  GroupNormVjp(mx::Stream stream, Params p) : mx::Primitive(stream), p_(p) {}

  // inputs x, w, b, dy -> outputs dx, dw, db
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = kernel_encoder(stream(), inputs, outputs);
    const Dims d(inputs[0]);
    encoder.dispatch([x = inputs[0].data<float>(), w = inputs[1].data<float>(),
                      b = inputs[2].data<float>(), dy = inputs[3].data<float>(),
                      dx = outputs[0].data<float>(), dw = outputs[1].data<float>(),
                      db = outputs[2].data<float>(), d, p = p_]() {
      auto bwd = kIsa == Isa::avx512 ? group_norm_bwd_avx512 : group_norm_bwd_avx2;
      bwd(x, w, b, dy, dx, dw, db, d.B, d.S, d.C, p.groups, p.eps, p.act);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("group_norm runs on the CPU only");
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape(), inputs[1].shape(), inputs[2].shape()};
  }

  const char* name() const override { return "GroupNormVjp"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return p_ == static_cast<const GroupNormVjp&>(other).p_;
  }

 private:
  Params p_;
};

class GroupNorm : public mx::UnaryPrimitive {
 public:
  GroupNorm(mx::Stream stream, Params p) : mx::UnaryPrimitive(stream), p_(p) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    auto& encoder = kernel_encoder(stream(), inputs, out);
    const Dims d(inputs[0]);
    encoder.dispatch([x = inputs[0].data<float>(), w = inputs[1].data<float>(),
                      b = inputs[2].data<float>(), y = out.data<float>(), d, p = p_]() {
      auto fwd = kIsa == Isa::avx512 ? group_norm_fwd_avx512 : group_norm_fwd_avx2;
      fwd(x, w, b, y, d.B, d.S, d.C, p.groups, p.eps, p.act);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("group_norm runs on the CPU only");
  }

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums, const std::vector<mx::array>&) override {
    const auto& x = primals[0];
    auto grads = mx::array::make_arrays(
        {x.shape(), primals[1].shape(), primals[2].shape()},
        {mx::float32, mx::float32, mx::float32}, std::make_shared<GroupNormVjp>(stream(), p_),
        {x, primals[1], primals[2], mx::contiguous(cotangents[0], false, stream())});
    std::vector<mx::array> out;
    for (int arg : argnums) out.push_back(grads[arg]);
    return out;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

  const char* name() const override { return "GroupNorm"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return p_ == static_cast<const GroupNorm&>(other).p_;
  }

 private:
  Params p_;
};

}  // namespace

mx::array group_norm(
    const mx::array& x, const mx::array& weight, const mx::array& bias, int groups, float eps,
    const std::string& activation, mx::StreamOrDevice s) {
  auto fail = [&](const std::string& what) {
    std::ostringstream msg;
    msg << "group_norm(x " << x.shape() << " " << x.dtype() << ", weight " << weight.shape()
        << ", bias " << bias.shape() << ", groups " << groups << "): " << what;
    throw std::invalid_argument(msg.str());
  };
  if (x.ndim() != 3) fail("expects x (B, S, C)");
  const int64_t C = x.shape(2);
  if (weight.ndim() != 1 || bias.ndim() != 1 || weight.shape(0) != C || bias.shape(0) != C)
    fail("weight and bias must be (C,)");
  if (groups < 1 || C % groups != 0) fail("C must be a multiple of groups");
  if (x.dtype() != mx::float32 || weight.dtype() != mx::float32 || bias.dtype() != mx::float32)
    fail("x, weight and bias must be float32");
  int act;
  if (activation == "none")
    act = kActNone;
  else if (activation == "mish")
    act = kActMish;
  else if (activation == "relu")
    act = kActRelu;
  else
    fail("activation must be 'none', 'mish' or 'relu', got '" + activation + "'");
  const auto stream = kernel_stream(s, fail);
  return mx::array(
      x.shape(), mx::float32, std::make_shared<GroupNorm>(stream, Params{groups, eps, act}),
      {mx::contiguous(x, false, stream), mx::contiguous(weight, false, stream),
       mx::contiguous(bias, false, stream)});
}

}  // namespace dp_mlx
