"""Elementwise activations and the softmax family, each with a hand-written backward.

Every activation here has no parameters (``params == ()``) and keeps the smallest cache
its derivative needs: ReLU keeps a boolean mask, sigmoid and tanh keep their output
(their derivatives are functions of it), GELU/softplus/SiLU keep the input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
from jax.scipy.special import erf

from funcnn.core import Layer, Static, pack_uints, unpack_uints
from funcnn.precision import widen
from funcnn.validation import (
    check_bool,
    check_cotangent,
    check_float,
    check_input_shape,
    check_int,
    check_no_params,
    check_number,
)


def _activation(
    name: str,
    forward_fn: Callable[[jnp.ndarray], tuple[jnp.ndarray, object]],
    backward_fn: Callable[[object, jnp.ndarray], jnp.ndarray],
) -> Layer:
    """A parameter-free, shape-preserving layer.

    ``forward_fn: x -> (y, cache)`` and ``backward_fn: (cache, dy) -> dx``. Every cache
    here knows the output's shape (an array of it, a packed mask, or ``Static(shape)``),
    so ``backward`` refuses a ``dy`` of another shape before it can be broadcast.
    """

    def init(key, input_shape):
        return (), check_input_shape(name, input_shape, min_ndim=0)

    def forward(params, x):
        check_no_params(name, params)
        check_float(name, "x", x)
        return forward_fn(x)

    def backward(params, cache, dy):
        check_cotangent(name, dy, _shape_of(cache))
        return backward_fn(cache, dy), ()

    return Layer(init, forward, backward, name=name)


def _shape_of(cache) -> tuple[int, ...]:
    """The output shape an activation's cache implies (the shape of ``x`` and ``y``)."""
    if isinstance(cache, Static):  # identity: the shape itself
        return cache.value
    if isinstance(cache, tuple):  # a packed mask: (bytes, Static((shape, bits)))
        return cache[1].value[0]
    return tuple(cache.shape)  # x or y


def identity() -> Layer:
    """``y = x``. Backward: ``dx = dy``. Cache: the input shape (static, no array)."""
    return _activation("identity", lambda x: (x, Static(tuple(x.shape))), lambda cache, dy: dy)


def relu() -> Layer:
    """Rectified linear unit ``y = max(x, 0)``.

    Backward: ``dx = dy * [x > 0]`` (the derivative at 0 is taken as 0, as PyTorch does).

    NaN propagates: ``relu(nan)`` is ``nan`` and its ``dx`` is ``dy`` (PyTorch's rule: the
    mask is ``not x <= 0``), so a NaN is never hidden behind a 0.

    Cache: the mask ``not x <= 0`` packed eight elements per byte, 1/32 of a float32 input's
    bytes (autodiff keeps a float array here).

    >>> import jax.numpy as jnp, funcnn as fn
    >>> layer = fn.relu()
    >>> y, mask = layer.forward((), jnp.array([-1.0, 0.0, 2.0]))
    >>> print(layer.backward((), mask, jnp.ones(3))[0])
    [0. 0. 1.]
    """

    def forward(x):
        mask = ~(x <= 0)  # True for x > 0 and for NaN, which passes through
        return jnp.where(mask, x, 0), pack_mask(mask)

    return _activation("relu", forward, lambda packed, dy: jnp.where(unpack_mask(packed), dy, 0))


def leaky_relu(negative_slope: float = 0.01) -> Layer:
    """``y = x`` for ``x > 0``, else ``negative_slope * x``.

    Backward: ``dx = dy * (1 if x > 0 else negative_slope)``. NaN propagates, as in
    :func:`relu`.

    Cache: the mask ``not x <= 0``, packed eight elements per byte.
    """
    negative_slope = check_number("leaky_relu", "negative_slope", negative_slope)

    def forward(x):
        mask = ~(x <= 0)
        return jnp.where(mask, x, negative_slope * x), pack_mask(mask)

    def backward(packed, dy):
        return jnp.where(unpack_mask(packed), dy, negative_slope * dy)

    return _activation("leaky_relu", forward, backward)


def pack_mask(mask) -> tuple[jnp.ndarray, Static]:
    """Store a boolean array in 1 bit per element (see :func:`funcnn.core.pack_uints`)."""
    return pack_uints(mask, 1)


def unpack_mask(packed) -> jnp.ndarray:
    """The inverse of :func:`pack_mask`."""
    return unpack_uints(packed).astype(bool)


def elu(alpha: float = 1.0) -> Layer:
    """Exponential linear unit: ``y = x`` for ``x > 0``, else ``alpha * (exp(x) - 1)``.

    Backward: for ``x <= 0``, ``dy/dx = alpha * exp(x) = y + alpha``, so the output
    alone suffices (``y > 0`` exactly when ``x > 0`` because ``alpha > 0``)::

        dx = dy * (1 if y > 0 else y + alpha)

    Cache: ``y``.
    """
    alpha = check_number("elu", "alpha", alpha, low=0.0, low_open=True)
    return _scaled_elu("elu", 1.0, alpha)


# The fixed point constants of self-normalizing networks (Klambauer et al., 2017).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def selu() -> Layer:
    """Scaled ELU: ``y = scale * elu(x, alpha)`` with the self-normalizing constants.

    Backward: ``dx = dy * scale`` for ``x > 0``, else ``dy * (y + scale * alpha)``. Cache: ``y``.
    """
    return _scaled_elu("selu", _SELU_SCALE, _SELU_ALPHA)


def _scaled_elu(name: str, scale: float, alpha: float) -> Layer:
    def forward(x):
        positive = x > 0
        # expm1 of the clipped input: exact near 0 and no overflow on the unused branch.
        negative = alpha * jnp.expm1(jnp.minimum(x, 0))
        y = scale * jnp.where(positive, x, negative)
        return y, y

    def backward(y, dy):
        return dy * jnp.where(y > 0, scale, y + scale * alpha)

    return _activation(name, forward, backward)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu(approximate: bool = False) -> Layer:
    """Gaussian error linear unit ``y = x * Phi(x)``.

    With ``approximate=False`` (the default, as PyTorch) ``Phi`` is the exact normal CDF
    ``0.5 * (1 + erf(x / sqrt 2))`` and the backward is ``dx = dy * (Phi(x) + x * phi(x))``
    with ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)``.

    With ``approximate=True``: ``y = 0.5 x (1 + tanh u)``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``
    and the backward multiplies ``dy`` by
    ``0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)``.

    float16 and bfloat16 inputs are computed in float32 and rounded back (as PyTorch
    does): in float16 ``x^3`` and ``x^2`` overflow from ``|x| = 256`` on, and the tanh
    form's derivative would be ``0 * inf = nan``.

    Cache: ``x``.
    """
    approximate = check_bool("gelu", "approximate", approximate)
    if approximate:

        def forward(x):
            xf = _wide(x)
            u = _SQRT_2_OVER_PI * (xf + 0.044715 * xf**3)
            return (0.5 * xf * (1 + jnp.tanh(u))).astype(x.dtype), x

        def backward(x, dy):
            xf = _wide(x)
            t = jnp.tanh(_SQRT_2_OVER_PI * (xf + 0.044715 * xf**3))
            du_dx = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * xf**2)
            slope = 0.5 * (1 + t) + 0.5 * xf * (1 - t**2) * du_dx
            return dy * slope.astype(x.dtype)

    else:

        def forward(x):
            xf = _wide(x)
            return (0.5 * xf * (1 + erf(xf * _INV_SQRT_2))).astype(x.dtype), x

        def backward(x, dy):
            xf = _wide(x)
            cdf = 0.5 * (1 + erf(xf * _INV_SQRT_2))
            pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * xf**2)
            return dy * (cdf + xf * pdf).astype(x.dtype)

    return _activation("gelu", forward, backward)


def _wide(x):
    """``x`` in at least float32: half-precision math overflows in polynomial terms."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _sigmoid(x):
    # Stable on both tails: exp never sees a large positive argument.
    e = jnp.exp(-jnp.abs(x))
    return jnp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid() -> Layer:
    """Logistic function ``y = 1 / (1 + exp(-x))``.

    Backward: ``dx = dy * y * (1 - y)``. Cache: ``y``.
    """

    def forward(x):
        y = _sigmoid(x)
        return y, y

    return _activation("sigmoid", forward, lambda y, dy: dy * y * (1 - y))


def tanh() -> Layer:
    """Hyperbolic tangent. Backward: ``dx = dy * (1 - y^2)``. Cache: ``y``."""

    def forward(x):
        y = jnp.tanh(x)
        return y, y

    return _activation("tanh", forward, lambda y, dy: dy * (1 - y * y))


def softplus() -> Layer:
    """``y = log(1 + exp(x))``, computed stably as ``logaddexp(x, 0)``.

    Backward: ``dx = dy * sigmoid(x)``. Cache: ``x``.
    """
    return _activation(
        "softplus", lambda x: (jnp.logaddexp(x, 0.0), x), lambda x, dy: dy * _sigmoid(x)
    )


def silu() -> Layer:
    """Sigmoid linear unit (swish) ``y = x * sigmoid(x)``.

    Backward: ``dx = dy * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``. Cache: ``x``.
    """

    def backward(x, dy):
        s = _sigmoid(x)
        return dy * s * (1 + x * (1 - s))

    return _activation("silu", lambda x: (x * _sigmoid(x), x), backward)


def softmax(axis: int = -1) -> Layer:
    """``y_i = exp(x_i) / sum_j exp(x_j)`` along ``axis`` (max-shifted for stability).

    Backward (the Jacobian ``diag(y) - y y^T`` applied to ``dy`` without forming it)::

        dx = y * (dy - sum(dy * y, axis))

    Cache: ``y``.
    """
    axis = check_int("softmax", "axis", axis)

    def forward(x):
        _check_axis("softmax", x, axis)
        xf = widen(x)  # the sums in float32 for bfloat16/float16 inputs
        e = jnp.exp(xf - jnp.max(xf, axis=axis, keepdims=True))
        y = (e / jnp.sum(e, axis=axis, keepdims=True)).astype(x.dtype)
        return y, y

    def backward(y, dy):
        yf, dyf = widen(y), widen(dy)
        dx = yf * (dyf - jnp.sum(dyf * yf, axis=axis, keepdims=True))
        return dx.astype(jnp.result_type(y, dy))

    return _activation("softmax", forward, backward)


def log_softmax(axis: int = -1) -> Layer:
    """``y = x - logsumexp(x)`` along ``axis``.

    Backward: ``dx = dy - exp(y) * sum(dy, axis)`` (``exp(y)`` is the softmax). Cache: ``y``.
    """
    axis = check_int("log_softmax", "axis", axis)

    def forward(x):
        _check_axis("log_softmax", x, axis)
        xf = widen(x)  # the log-sum-exp in float32 for bfloat16/float16 inputs
        shifted = xf - jnp.max(xf, axis=axis, keepdims=True)
        y = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))
        return y.astype(x.dtype), y.astype(x.dtype)

    def backward(y, dy):
        dyf = widen(dy)
        dx = dyf - jnp.exp(widen(y)) * jnp.sum(dyf, axis=axis, keepdims=True)
        return dx.astype(jnp.result_type(y, dy))

    return _activation("log_softmax", forward, backward)


def _check_axis(name: str, x, axis: int):
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{name}: axis {axis} is out of range for input of shape {tuple(x.shape)}")
