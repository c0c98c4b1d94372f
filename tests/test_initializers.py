"""funcnn.initializers: shapes, dtypes, the spread each one promises, fans, errors.

The spreads are measured on samples of 32 768 values: the sample standard deviation of
a normal sample is within about 0.4% of the true one (one standard error), so a 3%
tolerance is loose for a correct initializer and tight for a wrong formula (the closest
wrong convention below is off by 15% or more).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import initializers as init
from funcnn.initializers import _fans

KEY = jax.random.PRNGKey(0)
DENSE = (128, 256)  # (in, out)
CONV = (3, 3, 32, 112)  # (kh, kw, in, out)
FANS = {DENSE: (128, 256), CONV: (9 * 32, 9 * 112)}  # written out, not computed by _fans

RANDOM = {
    "normal": lambda: init.normal(0.05),
    "uniform": lambda: init.uniform(0.05),
    "glorot_normal": init.glorot_normal,
    "glorot_uniform": init.glorot_uniform,
    "he_normal": init.he_normal,
    "lecun_normal": init.lecun_normal,
}
ALL = {**RANDOM, "zeros": init.zeros, "ones": init.ones}


def _std(name, fan_in, fan_out):
    """The standard deviation each initializer promises (its docstring's formula)."""
    return {
        "normal": 0.05,
        "uniform": 0.05 / math.sqrt(3),  # U(-a, a) has variance a^2 / 3
        "glorot_normal": math.sqrt(2 / (fan_in + fan_out)),
        "glorot_uniform": math.sqrt(6 / (fan_in + fan_out)) / math.sqrt(3),
        "he_normal": math.sqrt(2 / fan_in),
        "lecun_normal": math.sqrt(1 / fan_in),
    }[name]


@pytest.mark.parametrize(
    ("shape", "fans"),
    [
        ((), (1, 1)),
        ((7,), (7, 7)),
        ((5, 3), (5, 3)),  # dense (in, out)
        ((4, 5, 3), (20, 12)),  # conv1d (k, in, out)
        ((3, 3, 8, 16), (72, 144)),  # conv2d (kh, kw, in/groups, out)
        ((2, 3, 3, 4, 6), (72, 108)),  # conv3d
    ],
)
def test_fans_of_dense_and_conv_kernels(shape, fans):
    assert _fans(shape) == fans


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_shape_and_dtype(name, dtype):
    out = jax.eval_shape(lambda k: ALL[name]()(k, (3, 2, 4, 5), dtype), KEY)
    assert out.shape == (3, 2, 4, 5) and out.dtype == dtype


def test_default_dtype_is_float32_and_constants_are_exact():
    for name in ALL:
        assert ALL[name]()(KEY, (2, 3)).dtype == jnp.float32, name
    np.testing.assert_array_equal(init.zeros()(KEY, (2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(init.ones()(KEY, (4,), jnp.int32), np.ones(4, np.int32))


@pytest.mark.parametrize("name", RANDOM)
@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
def test_measured_spread_matches_the_formula(name, shape):
    w = np.asarray(RANDOM[name]()(KEY, shape, jnp.float64))
    std = _std(name, *FANS[shape])
    assert abs(w.mean()) < 4 * std / math.sqrt(w.size), name
    assert w.std() == pytest.approx(std, rel=0.03), name
    if "uniform" in name:  # inside [-a, a) and reaching close to both ends
        a = std * math.sqrt(3)
        assert -a <= w.min() < -0.99 * a and 0.99 * a < w.max() < a, name


def test_fan_conventions_tell_apart():
    """The tolerance above distinguishes fan_in from fan_out and the receptive field."""
    fan_in, fan_out = FANS[CONV]
    right = _std("he_normal", fan_in, fan_out)
    for wrong_fan in (fan_out, CONV[-2], CONV[-1]):
        assert abs(math.sqrt(2 / wrong_fan) / right - 1) > 0.15


def test_keys_matter_and_repeat():
    a, b = (np.asarray(init.glorot_normal()(k, (4, 4))) for k in jax.random.split(KEY))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(init.he_normal()(KEY, (4, 4)), init.he_normal()(KEY, (4, 4)))


def test_empty_shapes_give_empty_arrays():
    for name in ALL:
        assert ALL[name]()(KEY, (0, 5)).shape == (0, 5), name


@pytest.mark.parametrize("factory", [init.normal, init.uniform])
def test_bad_scales(factory):
    what = "stddev" if factory is init.normal else "scale"
    for bad in ("0.1", None, True, [0.1]):
        with pytest.raises(TypeError, match=rf"{factory.__name__}: {what} must be a real number"):
            factory(bad)
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match=rf"{factory.__name__}: {what} must be a finite"):
            factory(bad)
    assert factory(np.float32(0.5))(KEY, (3,)).shape == (3,)  # NumPy scalars are numbers


@pytest.mark.parametrize("name", ALL)
def test_bad_shapes(name):
    with pytest.raises(TypeError, match=rf"{name}: shape must be a tuple of non-negative ints"):
        ALL[name]()(KEY, (3, 2.0))
    with pytest.raises(TypeError, match=rf"{name}: shape must be a tuple"):
        ALL[name]()(KEY, 3)
    with pytest.raises(ValueError, match=rf"{name}: shape must be a tuple of non-negative ints"):
        ALL[name]()(KEY, (3, -1))


@pytest.mark.parametrize("name", RANDOM)
def test_random_initializers_need_a_float_dtype(name):
    with pytest.raises(TypeError, match=rf"{name}: dtype must be a floating dtype.*got int32"):
        RANDOM[name]()(KEY, (3, 2), jnp.int32)
