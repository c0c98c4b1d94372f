"""Affine layers: ``linear`` (matmul only), ``bias`` and ``dense`` (the two fused).

All three act on the last axis and accept any number of leading batch axes; the
parameter gradients sum over those axes, which we do by folding them into one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnn.core import Layer, Static, along_last_axis, fold_leading_axes
from funcnn.initializers import Initializer, glorot_normal, zeros
from funcnn.precision import matmul
from funcnn.validation import (
    check_cotangent,
    check_float,
    check_input_shape,
    check_param_tree,
    check_params,
    check_positive_int,
)


def _check_features(name: str, x, features_in: int):
    """``x`` must be a float array whose last axis is the size the params were made for.

    Integer inputs are refused: these layers differentiate their input, and integer
    inputs get no gradient (``dx`` is ``None`` for them, the library's rule), so an
    integer ``x`` is almost surely ids or labels that need an :func:`embedding` or a cast.
    """
    shape = check_float(name, "x", x, min_ndim=1)
    if shape[-1] != features_in:
        raise ValueError(
            f"{name}: expected input with last axis {features_in} (the params were made "
            f"for that), got input of shape {shape}"
        )


def linear(features: int, *, w_init: Initializer = glorot_normal(), dtype=jnp.float32) -> Layer:
    """Matrix product ``y = x W`` (no bias).

    Args:
      features: size of the output's last axis.
      w_init: initializer for ``W``, called with ``(key, (d_in, features), dtype)``.
      dtype: parameter dtype.

    Shapes: ``x (..., d_in) -> y (..., features)``; params ``{"w": (d_in, features)}``.

    Backward (with the batch axes folded into ``N``)::

        dx = dy W^T            (..., d_in)
        dW = x^T dy            (d_in, features), summed over the batch

    Cache: ``x``.

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> layer = fn.linear(3)
    >>> params, out_shape = layer.init(jax.random.PRNGKey(0), (2, 4))
    >>> out_shape
    (2, 3)
    >>> y, cache = layer.forward(params, jnp.ones((2, 4)))
    >>> dx, dparams = layer.backward(params, cache, jnp.ones_like(y))
    >>> dx.shape, dparams["w"].shape
    ((2, 4), (4, 3))
    """
    check_positive_int("linear", "features", features)

    def init(key, input_shape):
        input_shape = check_input_shape("linear", input_shape)
        return {"w": w_init(key, (input_shape[-1], features), dtype)}, (*input_shape[:-1], features)

    def forward(params, x):
        _check_features("linear", x, check_param_tree("linear", params, {"w": 2})["w"][0])
        check_params("linear", params, {"w": (x.shape[-1], features)})
        return matmul(x, params["w"]), x

    def backward(params, x, dy):
        check_cotangent("linear", dy, (*x.shape[:-1], features))
        # y = x W  =>  dx = dy W^T,  dW = x^T dy (summed over the batch axes).
        # (matmul accumulates in float32 for bfloat16/float16 operands: funcnn.precision)
        dw = matmul(fold_leading_axes(x).T, fold_leading_axes(dy))
        return matmul(dy, params["w"].T), {"w": dw}

    return Layer(init, forward, backward, name="linear")


def bias(*, b_init: Initializer = zeros(), dtype=jnp.float32) -> Layer:
    """Add a learned vector ``b`` to the last axis: ``y = x + b``, broadcast over leading axes.

    Shapes: ``x (..., d) -> y (..., d)``; params ``{"b": (d,)}``.

    Backward::

        dx = dy
        db = sum of dy over every leading axis

    Cache: the input shape only (static, no array); the gradient does not depend on ``x``.
    """

    def init(key, input_shape):
        input_shape = check_input_shape("bias", input_shape)
        return {"b": b_init(key, (input_shape[-1],), dtype)}, input_shape

    def forward(params, x):
        _check_features("bias", x, check_param_tree("bias", params, {"b": 1})["b"][0])
        return x + along_last_axis(params["b"], x.ndim), Static(tuple(x.shape))

    def backward(params, shape, dy):
        check_cotangent("bias", dy, shape.value)
        return dy, {"b": fold_leading_axes(dy).sum(0)}

    return Layer(init, forward, backward, name="bias")


def dense(
    features: int,
    *,
    w_init: Initializer = glorot_normal(),
    b_init: Initializer = zeros(),
    dtype=jnp.float32,
) -> Layer:
    """Affine map ``y = x W + b``: :func:`linear` and :func:`bias` fused into one layer.

    Args:
      features: size of the output's last axis.
      w_init, b_init: initializers for ``W`` (``(d_in, features)``) and ``b`` (``(features,)``).
      dtype: parameter dtype.

    Shapes: ``x (..., d_in) -> y (..., features)``;
    params ``{"w": (d_in, features), "b": (features,)}``.

    Backward (batch axes folded into ``N``)::

        dx = dy W^T
        dW = x^T dy
        db = sum_n dy[n]

    Cache: ``x``.

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> layer = fn.dense(2)
    >>> params, out_shape = layer.init(jax.random.PRNGKey(0), (5, 3))
    >>> y, x_cached = layer.forward(params, jnp.ones((5, 3)))
    >>> dx, grads = layer.backward(params, x_cached, jnp.ones((5, 2)))
    >>> print(grads["b"])
    [5. 5.]
    """
    check_positive_int("dense", "features", features)

    def init(key, input_shape):
        input_shape = check_input_shape("dense", input_shape)
        key_w, key_b = jax.random.split(key)
        w = w_init(key_w, (input_shape[-1], features), dtype)
        return {"w": w, "b": b_init(key_b, (features,), dtype)}, (*input_shape[:-1], features)

    def forward(params, x):
        _check_features("dense", x, check_param_tree("dense", params, {"w": 2, "b": 1})["w"][0])
        check_params("dense", params, {"w": (x.shape[-1], features), "b": (features,)})
        return matmul(x, params["w"]) + along_last_axis(params["b"], x.ndim), x

    def backward(params, x, dy):
        check_cotangent("dense", dy, (*x.shape[:-1], features))
        # Walk the forward in reverse: y = z + b, z = x W.
        dy2 = fold_leading_axes(dy)
        db = dy2.sum(0)
        dw = matmul(fold_leading_axes(x).T, dy2)  # float32 accumulation for low precision
        dx = matmul(dy, params["w"].T)
        return dx, {"w": dw, "b": db}

    return Layer(init, forward, backward, name="dense")
