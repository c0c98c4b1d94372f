"""Weight initializers: ``(key, shape, dtype) -> Array``.

Fan-in and fan-out follow the layouts used in funcnn: a dense weight is ``(in, out)`` and
a convolution kernel is ``(spatial..., in/groups, out)``, so the receptive field is the
product of all axes but the last two (see the docs page "Initializers").

Each factory checks its own arguments when called (``TypeError`` for a wrong type,
``ValueError`` for a wrong value, the message naming the initializer); the initializer it
returns checks ``shape`` and ``dtype`` when ``init`` calls it. Both checks are static, so
they raise at trace time under ``jax.jit`` or ``jax.eval_shape``.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_scale(name: str, what: str, value) -> float:
    """A finite real number >= 0 (a Python or NumPy scalar, or a 0-d array)."""
    if isinstance(value, bool) or not (
        isinstance(value, numbers.Real) or (hasattr(value, "dtype") and np.ndim(value) == 0)
    ):
        raise TypeError(f"{name}: {what} must be a real number >= 0, got {_describe(value)}")
    if hasattr(value, "dtype") and not jnp.issubdtype(value.dtype, jnp.number):
        raise TypeError(f"{name}: {what} must be a real number >= 0, got {_describe(value)}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name}: {what} must be a finite number >= 0, got {number!r}")
    return number


def _check_shape(name: str, shape) -> tuple[int, ...]:
    """A tuple (or list) of non-negative integers."""
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(
            f"{name}: shape must be a tuple of non-negative ints, got {_describe(shape)}"
        ) from None
    if any(isinstance(d, bool) for d in shape) or any(d < 0 for d in dims):
        raise ValueError(f"{name}: shape must be a tuple of non-negative ints, got {shape!r}")
    return dims


def _check_float_dtype(name: str, dtype):
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name}: dtype must be a floating dtype (float32, float64, bfloat16, ...), "
            f"got {jnp.dtype(dtype).name}; integer params cannot be trained"
        )
    return dtype


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)``: ``(in, out)`` times the receptive field ``prod(shape[:-2])``;
    a vector ``(n,)`` has ``n`` for both, a scalar 1."""
    if len(shape) < 2:
        n = shape[0] if shape else 1
        return n, n
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _variance_scaling(name: str, shape, dtype, scale: Callable[[int, int], float], draw):
    """``draw(shape, std_or_bound)``, the std or bound computed from the fans of ``shape``.

    An empty shape (a zero axis) has no values, so its zero fan divides nothing."""
    shape = _check_shape(name, shape)
    _check_float_dtype(name, dtype)
    fan_in, fan_out = _fans(shape)
    if math.prod(shape) == 0:
        return jnp.zeros(shape, dtype)
    return draw(shape, scale(fan_in, fan_out))


def zeros() -> Initializer:
    """All zeros (any dtype)."""

    def init(key, shape, dtype=jnp.float32):
        return jnp.zeros(_check_shape("zeros", shape), dtype)

    return init


def ones() -> Initializer:
    """All ones (any dtype)."""

    def init(key, shape, dtype=jnp.float32):
        return jnp.ones(_check_shape("ones", shape), dtype)

    return init


def normal(stddev: float = 1e-2) -> Initializer:
    """Normal with mean 0 and standard deviation ``stddev`` (a finite number >= 0)."""
    stddev = _check_scale("normal", "stddev", stddev)

    def init(key, shape, dtype=jnp.float32):
        shape = _check_shape("normal", shape)
        _check_float_dtype("normal", dtype)
        return stddev * jax.random.normal(key, shape, dtype)

    return init


def uniform(scale: float = 1e-2) -> Initializer:
    """Uniform on ``[-scale, scale)`` (``scale`` a finite number >= 0)."""
    scale = _check_scale("uniform", "scale", scale)

    def init(key, shape, dtype=jnp.float32):
        shape = _check_shape("uniform", shape)
        _check_float_dtype("uniform", dtype)
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def glorot_normal() -> Initializer:
    """Glorot/Xavier normal: std = sqrt(2 / (fan_in + fan_out))."""

    def init(key, shape, dtype=jnp.float32):
        return _variance_scaling(
            "glorot_normal",
            shape,
            dtype,
            lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out)),
            lambda shape, std: std * jax.random.normal(key, shape, dtype),
        )

    return init


def glorot_uniform() -> Initializer:
    """Glorot/Xavier uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""

    def init(key, shape, dtype=jnp.float32):
        return _variance_scaling(
            "glorot_uniform",
            shape,
            dtype,
            lambda fan_in, fan_out: math.sqrt(6.0 / (fan_in + fan_out)),
            lambda shape, a: jax.random.uniform(key, shape, dtype, -a, a),
        )

    return init


def he_normal() -> Initializer:
    """He/Kaiming normal for ReLU networks: std = sqrt(2 / fan_in)."""

    def init(key, shape, dtype=jnp.float32):
        return _variance_scaling(
            "he_normal",
            shape,
            dtype,
            lambda fan_in, _: math.sqrt(2.0 / fan_in),
            lambda shape, std: std * jax.random.normal(key, shape, dtype),
        )

    return init


def lecun_normal() -> Initializer:
    """LeCun normal (the SELU initializer): std = sqrt(1 / fan_in)."""

    def init(key, shape, dtype=jnp.float32):
        return _variance_scaling(
            "lecun_normal",
            shape,
            dtype,
            lambda fan_in, _: math.sqrt(1.0 / fan_in),
            lambda shape, std: std * jax.random.normal(key, shape, dtype),
        )

    return init
