"""Affine layers: ``linear`` (matmul only), ``bias`` and ``dense`` (the two fused).

All three act on the last axis and accept any number of leading batch axes; the
parameter gradients sum over those axes, which we do by folding them into one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnn.core import (
    Layer,
    along_last_axis,
    check_array,
    check_input_shape,
    check_params,
    check_positive_int,
    fold_leading_axes,
)
from funcnn.initializers import Initializer, glorot_normal, zeros


def _check_features(name: str, x, features_in: int):
    shape = check_array(name, "x", x, min_ndim=1)
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
        _check_features("linear", x, _in_features("linear", params))
        check_params("linear", params, {"w": (x.shape[-1], features)})
        return x @ params["w"], x

    def backward(params, x, dy):
        # y = x W  =>  dx = dy W^T,  dW = x^T dy (summed over the batch axes).
        return dy @ params["w"].T, {"w": fold_leading_axes(x).T @ fold_leading_axes(dy)}

    return Layer(init, forward, backward, name="linear")


def bias(*, b_init: Initializer = zeros(), dtype=jnp.float32) -> Layer:
    """Add a learned vector ``b`` to the last axis: ``y = x + b``, broadcast over leading axes.

    Shapes: ``x (..., d) -> y (..., d)``; params ``{"b": (d,)}``.

    Backward::

        dx = dy
        db = sum of dy over every leading axis

    Cache: nothing (``()``); the gradient does not depend on ``x``.
    """

    def init(key, input_shape):
        input_shape = check_input_shape("bias", input_shape)
        return {"b": b_init(key, (input_shape[-1],), dtype)}, input_shape

    def forward(params, x):
        _check_features("bias", x, _in_features("bias", params, key="b", axis=0))
        check_params("bias", params, {"b": (x.shape[-1],)})
        return x + along_last_axis(params["b"], x.ndim), ()

    def backward(params, cache, dy):
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
        _check_features("dense", x, _in_features("dense", params))
        check_params("dense", params, {"w": (x.shape[-1], features), "b": (features,)})
        return x @ params["w"] + along_last_axis(params["b"], x.ndim), x

    def backward(params, x, dy):
        # Walk the forward in reverse: y = z + b, z = x W.
        dy2 = fold_leading_axes(dy)
        db = dy2.sum(0)
        dw = fold_leading_axes(x).T @ dy2
        dx = dy @ params["w"].T
        return dx, {"w": dw, "b": db}

    return Layer(init, forward, backward, name="dense")


def _in_features(name: str, params, key: str = "w", axis: int = 0) -> int:
    """The input size the params were made for, with a clear error for foreign params."""
    if not isinstance(params, dict) or key not in params or not hasattr(params[key], "shape"):
        raise TypeError(
            f"{name}: params must be a dict holding {key!r} (as returned by init), got "
            f"{type(params).__name__}"
            + (f" with keys {sorted(params)}" if isinstance(params, dict) else "")
        )
    return params[key].shape[axis]
