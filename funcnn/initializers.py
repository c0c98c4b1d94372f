"""Weight initializers: ``(key, shape, dtype) -> Array``.

Fan-in and fan-out follow the layouts used in funcnn: a dense weight is ``(in, out)`` and
a convolution kernel is ``(spatial..., in/groups, out)``, so the receptive field is the
product of all axes but the last two.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2:
        n = shape[0] if shape else 1
        return n, n
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def zeros() -> Initializer:
    """All zeros."""
    return lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype)


def ones() -> Initializer:
    """All ones."""
    return lambda key, shape, dtype=jnp.float32: jnp.ones(shape, dtype)


def normal(stddev: float = 1e-2) -> Initializer:
    """Normal with mean 0 and the given standard deviation."""
    return lambda key, shape, dtype=jnp.float32: stddev * jax.random.normal(key, shape, dtype)


def uniform(scale: float = 1e-2) -> Initializer:
    """Uniform on ``[-scale, scale)``."""
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -scale, scale
    )


def glorot_normal() -> Initializer:
    """Glorot/Xavier normal: std = sqrt(2 / (fan_in + fan_out))."""

    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = _fans(shape)
        return math.sqrt(2.0 / (fan_in + fan_out)) * jax.random.normal(key, shape, dtype)

    return init


def glorot_uniform() -> Initializer:
    """Glorot/Xavier uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""

    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = _fans(shape)
        a = math.sqrt(6.0 / (fan_in + fan_out))
        return jax.random.uniform(key, shape, dtype, -a, a)

    return init


def he_normal() -> Initializer:
    """He/Kaiming normal for ReLU networks: std = sqrt(2 / fan_in)."""

    def init(key, shape, dtype=jnp.float32):
        fan_in, _ = _fans(shape)
        return math.sqrt(2.0 / fan_in) * jax.random.normal(key, shape, dtype)

    return init


def lecun_normal() -> Initializer:
    """LeCun normal (the SELU initializer): std = sqrt(1 / fan_in)."""

    def init(key, shape, dtype=jnp.float32):
        fan_in, _ = _fans(shape)
        return math.sqrt(1.0 / fan_in) * jax.random.normal(key, shape, dtype)

    return init
