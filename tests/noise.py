"""Random test data, drawn with NumPy.

An eager ``jax.random`` call compiles a kernel for every new shape (0.2-0.4 s each, see
tests/README.md); NumPy draws the same noise at no compile cost, and ``jax.device_put``
moves it to the device without compiling anything either.
"""

import jax
import numpy as np


def normal(seed, shape, dtype=np.float64) -> np.ndarray:
    """Standard-normal host data. ``seed`` is an int, or a NumPy ``Generator`` that is
    drawn from (so successive calls with one generator give different data)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def device_normal(seed, shape, dtype=np.float64) -> jax.Array:
    """:func:`normal`, on the device."""
    return jax.device_put(normal(seed, shape, dtype))
