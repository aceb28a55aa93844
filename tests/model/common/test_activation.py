import mlx.core as mx
import mlx.nn as nn
import numpy as np

from diffusion_policy_mlx.model.common.activation import Mish, mish


def _reference(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x * np.tanh(np.logaddexp(0.0, x))


def test_mish_matches_float64_reference_over_the_float32_range():
    x = np.concatenate([np.linspace(-100, 100, 20001), [-1e4, -88.0, 19.99, 20.0, 20.01, 1e4]])
    x = x.astype(np.float32)
    y = np.array(mish(mx.array(x)))
    ref = _reference(x)
    np.testing.assert_allclose(y, ref, rtol=5e-6, atol=1e-30)
    assert np.isfinite(y).all()


def test_mish_gradient_equals_mlx_mish_gradient():
    x = mx.array(np.linspace(-30, 30, 6001, dtype=np.float32))
    ours = mx.grad(lambda v: mish(v).sum())(x)
    theirs = mx.grad(lambda v: nn.mish(v).sum())(x)
    np.testing.assert_allclose(np.array(ours), np.array(theirs), atol=2e-5)
    assert np.isfinite(np.array(ours)).all()


def test_module_has_no_parameters_and_applies_mish():
    m = Mish()
    assert m.parameters() == {}
    x = mx.array([-1.0, 0.0, 1.0])
    np.testing.assert_allclose(np.array(m(x)), [-0.30340147, 0.0, 0.86509839], rtol=1e-6)
