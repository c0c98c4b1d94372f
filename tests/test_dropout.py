"""Dropout: train vs eval, mask statistics, determinism, keys, and error messages."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn.core import Ctx, Static
from funcnn.layers.dropout import dropout


def _run(layer, x, ctx):
    params, state, _ = layer.init(jax.random.PRNGKey(0), x.shape)
    return layer.forward(params, x, state, ctx)


def test_dropout_is_a_wide_layer_without_params_or_state():
    layer = dropout(0.5)
    assert layer.wide
    params, state, shape = layer.init(jax.random.PRNGKey(0), (3, 4))
    assert params == () and state == () and shape == (3, 4)


def test_eval_mode_is_the_identity_and_needs_no_key():
    layer = dropout(0.7)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
    y, cache, state = _run(layer, x, Ctx(train=False))
    assert y is x
    assert isinstance(cache, Static) and state == ()
    dy = jnp.arange(20.0).reshape(4, 5)
    dx, dparams = layer.backward((), cache, dy)
    np.testing.assert_array_equal(dx, dy)
    assert dparams == ()


def test_train_mode_drops_about_rate_and_scales_the_rest():
    rate = 0.3
    x = jnp.full((400, 250), 2.0)
    y, mask, _ = _run(dropout(rate), x, Ctx(jax.random.PRNGKey(5), True))
    assert mask.dtype == jnp.bool_ and mask.shape == x.shape
    dropped = float(jnp.mean(y == 0))
    # 100_000 Bernoulli draws: the standard deviation of the fraction is about 0.0015.
    assert abs(dropped - rate) < 0.01
    np.testing.assert_allclose(y[mask], 2.0 / (1 - rate), rtol=1e-6)
    np.testing.assert_array_equal(y[~mask], 0.0)
    # Inverted dropout preserves the mean in expectation.
    assert abs(float(jnp.mean(y)) - 2.0) < 0.03


def test_train_backward_uses_the_same_mask_and_scale():
    rate = 0.4
    layer = dropout(rate)
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 7))
    y, mask, _ = _run(layer, x, Ctx(jax.random.PRNGKey(2), True))
    dy = jax.random.normal(jax.random.PRNGKey(3), x.shape)
    dx, dparams = layer.backward((), mask, dy)
    np.testing.assert_allclose(dx, np.where(mask, dy / (1 - rate), 0.0), rtol=1e-12)
    np.testing.assert_allclose(y, np.where(mask, x / (1 - rate), 0.0), rtol=1e-12)
    assert dparams == ()


def test_same_key_same_mask_different_key_different_mask():
    layer = dropout(0.5)
    x = jnp.ones((8, 16))
    _, m1, _ = _run(layer, x, Ctx(jax.random.PRNGKey(1), True))
    _, m2, _ = _run(layer, x, Ctx(jax.random.PRNGKey(1), True))
    _, m3, _ = _run(layer, x, Ctx(jax.random.PRNGKey(2), True))
    np.testing.assert_array_equal(m1, m2)
    assert bool(jnp.any(m1 != m3))


def test_mask_comes_from_bernoulli_of_the_key():
    key = jax.random.PRNGKey(11)
    _, mask, _ = _run(dropout(0.25), jnp.ones((5, 6)), Ctx(key, True))
    np.testing.assert_array_equal(mask, jax.random.bernoulli(key, 0.75, (5, 6)))


@pytest.mark.parametrize("make_key", [jax.random.PRNGKey, jax.random.key], ids=["raw", "typed"])
def test_raw_and_typed_keys_eager_and_jit(make_key):
    layer = dropout(0.5)
    x = jnp.ones((4, 9))
    ctx = Ctx(make_key(3), True)
    y, mask, _ = _run(layer, x, ctx)
    y_jit, mask_jit, _ = jax.jit(layer.forward)((), x, (), ctx)
    np.testing.assert_array_equal(mask, mask_jit)
    np.testing.assert_array_equal(y, y_jit)
    dx, _ = jax.jit(layer.backward)((), mask_jit, jnp.ones_like(y))
    np.testing.assert_array_equal(dx, y)  # x and dy are both ones


def test_train_mode_without_a_key_raises():
    layer = dropout(0.5)
    with pytest.raises(ValueError, match=r"dropout: train mode needs a PRNG key: pass Ctx\(key="):
        layer.forward((), jnp.ones((2, 3)), (), Ctx(train=True))
    with pytest.raises(ValueError, match="dropout: train mode needs a PRNG key"):
        jax.jit(layer.forward)((), jnp.ones((2, 3)), (), Ctx(train=True))


def test_missing_key_error_inside_a_combinator_names_the_position():
    model = fn.sequential(fn.dense(3), dropout(0.5))
    params, state, _ = model.init(jax.random.PRNGKey(0), (2, 4))
    with pytest.raises(ValueError, match=r"sequential\[1\] \(dropout\): dropout: train mode"):
        model.forward(params, jnp.ones((2, 4)), state, Ctx(train=True))


def test_rate_zero_is_the_identity_even_in_train_mode():
    x = jnp.arange(6.0).reshape(2, 3)
    y, cache, _ = _run(dropout(0.0), x, Ctx(train=True))
    np.testing.assert_array_equal(y, x)
    assert isinstance(cache, Static)


def test_float64_in_float64_out():
    x = jnp.ones((3, 4), jnp.float64)
    y, mask, _ = _run(dropout(0.5), x, Ctx(jax.random.PRNGKey(0), True))
    dx, _ = dropout(0.5).backward((), mask, jnp.ones_like(y))
    assert y.dtype == dx.dtype == jnp.float64


def test_sibling_dropouts_get_different_keys():
    model = fn.parallel(dropout(0.5), dropout(0.5))
    x = jnp.ones((16, 16))
    params, state, _ = model.init(jax.random.PRNGKey(0), (x.shape, x.shape))
    key = jax.random.PRNGKey(4)
    _, (m0, m1), _ = model.forward(params, (x, x), state, Ctx(key, True))
    assert bool(jnp.any(m0 != m1))
    # Child i draws from fold_in(key, i).
    np.testing.assert_array_equal(
        m0, jax.random.bernoulli(jax.random.fold_in(key, 0), 0.5, x.shape)
    )
    np.testing.assert_array_equal(
        m1, jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, x.shape)
    )


@pytest.mark.parametrize(
    "rate, error",
    [
        *[(-0.1, ValueError), (1.0, ValueError), (1.5, ValueError), (math.nan, ValueError)],
        *[(True, TypeError), ("0.5", TypeError), (None, TypeError)],
    ],
)
def test_bad_rate_is_rejected_at_once(rate, error):
    with pytest.raises(error, match=r"dropout: rate \(the probability of dropping\).*got"):
        dropout(rate)


def test_bad_inputs_params_and_state():
    layer = dropout(0.5)
    ctx = Ctx(jax.random.PRNGKey(0), True)
    with pytest.raises(TypeError, match="dropout: x must be a floating-point array, got dtype int"):
        layer.forward((), jnp.ones((2, 3), jnp.int32), (), ctx)
    with pytest.raises(TypeError, match="dropout: this layer has no parameters"):
        layer.forward({"w": jnp.ones(3)}, jnp.ones((2, 3)), (), ctx)
    with pytest.raises(TypeError, match=r"dropout: this layer has no state; state must be \(\)"):
        layer.forward((), jnp.ones((2, 3)), {"mean": jnp.zeros(3)}, ctx)
