"""Normalization layers: ``batchnorm`` (wide: running statistics in ``state``) and ``layernorm``.

Both normalize ``xhat = (x - mean) / sqrt(var + eps)`` (biased variance) over some axes and
then apply a learned per-feature affine map ``y = scale * xhat + offset``. They differ in the
axes: batch norm averages over every axis but the features (so examples interact and the
statistics must be replaced by running averages at evaluation time), layer norm over the
features of each example (so it is a pure layer).

Both backward passes use the closed form of the normalization's Jacobian. With ``m`` the
number of values averaged together and sums taken over those same values::

    dxhat = scale * dy
    dx    = inv_std / m * (m * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))

The derivation is in ``docs/layers/normalization.md``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from funcnn.core import Layer, Static, along_last_axis, fold_leading_axes
from funcnn.precision import accumulation_dtype, widen
from funcnn.validation import (
    check_cotangent,
    check_ctx,
    check_float,
    check_input_shape,
    check_number,
    check_param_tree,
    check_params,
    is_int,
)


def _centered(x, axes):
    """``(mean, x - mean)`` over ``axes`` (kept as size-1 axes), computed shifted.

    The values are first shifted by one of them (the first along ``axes``): mean and
    variance do not change, but the sum no longer carries the rows' common magnitude.
    A constant row then centres to exactly 0 (a plain mean of 12345.678 in float32 is
    off by a rounding error that the normalization would blow up), and rows far from 0
    lose far fewer digits. The variance is then the mean square of the centred values
    (two-pass), never ``E[x^2] - E[x]^2``.
    """
    pivot = x[tuple(slice(0, 1) if i in axes else slice(None) for i in range(x.ndim))]
    shifted = x - pivot
    mean_shifted = jnp.mean(shifted, axis=axes, keepdims=True)
    return pivot + mean_shifted, shifted - mean_shifted


# --- batchnorm ------------------------------------------------------------------------


def batchnorm(momentum: float = 0.1, eps: float = 1e-5, *, dtype=jnp.float32) -> Layer:
    """Batch normalization over every axis but the last (the features), with running statistics.

    A **wide** layer (``layer.wide is True``): ``init`` returns ``(params, state,
    output_shape)`` and ``forward(params, x, state, ctx)`` returns ``(y, cache, new_state)``.
    ``ctx.train`` picks the mode; no PRNG key is needed.

    Args:
      momentum: weight of the new batch statistic in the running average, in ``[0, 1]``
        (PyTorch's convention: ``running = (1 - momentum) * running + momentum * batch``).
      eps: added to the variance before the square root; must be positive.
      dtype: dtype of params and state.

    Shapes: ``x (N, ..., C) -> y (N, ..., C)`` (e.g. ``(N, C)`` or NHWC ``(N, H, W, C)``);
    params ``{"scale": (C,), "offset": (C,)}`` (ones, zeros); state ``{"mean": (C,),
    "var": (C,)}`` (zeros, ones). Statistics are taken over all ``m = N * ...`` values of
    each feature.

    Forward, train mode (``ctx.train`` true), with ``mu`` and ``var`` the batch mean and
    biased batch variance per feature::

        xhat = (x - mu) * inv_std,   inv_std = 1 / sqrt(var + eps)
        y    = scale * xhat + offset
        new_state.mean = (1 - momentum) * state.mean + momentum * mu
        new_state.var  = (1 - momentum) * state.var  + momentum * var * m / (m - 1)

    (the running variance uses the unbiased estimate, as PyTorch does). Eval mode uses
    ``state.mean`` and ``state.var`` in place of ``mu`` and ``var`` and returns ``state``
    unchanged.

    Backward, train mode (``mu`` and ``var`` depend on ``x``; sums over the ``m`` values)::

        dx      = scale * inv_std / m * (m * dy - sum(dy) - xhat * sum(dy * xhat))
        dscale  = sum(dy * xhat)
        doffset = sum(dy)

    Backward, eval mode (the statistics are constants, so the layer is affine in ``x``)::

        dx = scale * inv_std * dy,  with dscale and doffset as above.

    Cache: ``{"xhat": (N, ..., C), "inv_std": (C,), "mode": Static("train" | "eval")}``.
    ``dx`` has the dtype of ``x`` and ``dparams`` that of ``params``; the new state keeps
    the state's dtype.

    >>> import jax, jax.numpy as jnp
    >>> from funcnn.core import Ctx
    >>> from funcnn.layers.normalization import batchnorm
    >>> layer = batchnorm(momentum=0.5)
    >>> params, state, out_shape = layer.init(jax.random.PRNGKey(0), (4, 2))
    >>> x = jnp.array([[0.0, 1.0], [2.0, 1.0], [4.0, 3.0], [6.0, 3.0]])
    >>> y, cache, new_state = layer.forward(params, x, state, Ctx(train=True))
    >>> new_state["mean"]
    Array([1.5, 1. ], dtype=float32)
    >>> y_eval, _, same = layer.forward(params, x, new_state, Ctx(train=False))
    >>> bool(jnp.all(same["mean"] == new_state["mean"]))
    True
    """
    momentum = check_number("batchnorm", "momentum", momentum, low=0, high=1)
    eps = check_number("batchnorm", "eps", eps, low=0, low_open=True)

    def init(key, input_shape):
        input_shape = check_input_shape("batchnorm", input_shape, min_ndim=2)
        c = input_shape[-1]
        params = {"scale": jnp.ones((c,), dtype), "offset": jnp.zeros((c,), dtype)}
        state = {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}
        return params, state, input_shape

    def forward(params, x, state, ctx):
        check_ctx("batchnorm", ctx)
        c = check_param_tree("batchnorm", params, {"scale": 1, "offset": 1})["scale"][0]
        shape = check_float("batchnorm", "x", x, min_ndim=2)
        if shape[-1] != c:
            raise ValueError(
                f"batchnorm: expected input with {c} features (last axis; the params were "
                f"made for that), got input of shape {shape}"
            )
        check_params("batchnorm", params, {"scale": (c,), "offset": (c,)})
        check_params("batchnorm", state, {"mean": (c,), "var": (c,)}, what="state")
        ndim = x.ndim
        scale = along_last_axis(params["scale"], ndim)
        offset = along_last_axis(params["offset"], ndim)

        # Statistics and normalization in float32 for bfloat16/float16 inputs (a no-op
        # otherwise); only y and the cached xhat are rounded to x's dtype.
        acc, xf = accumulation_dtype(x.dtype), widen(x)
        if not ctx.train:
            mean, var = state["mean"].astype(acc), state["var"].astype(acc)
            inv_std = lax.rsqrt(var + eps)
            xhat = (xf - along_last_axis(mean, ndim)) * along_last_axis(inv_std, ndim)
            cache = {"xhat": xhat.astype(x.dtype), "inv_std": inv_std, "mode": Static("eval")}
            return (scale * xhat + offset).astype(x.dtype), cache, state

        m = math.prod(shape[:-1])
        if m < 2:
            raise ValueError(
                f"batchnorm: train mode needs more than one value per feature to estimate the "
                f"variance, got input of shape {shape}; use eval mode (Ctx(train=False)) or a "
                f"larger batch"
            )
        axes = tuple(range(ndim - 1))
        mean, centered = _centered(xf, axes)
        mean = mean.reshape(c)
        var = jnp.mean(centered * centered, axis=axes)  # biased: divides by m
        inv_std = lax.rsqrt(var + eps)
        xhat = centered * along_last_axis(inv_std, ndim)
        y = (scale * xhat + offset).astype(x.dtype)

        def update(running, batch):
            new = (1 - momentum) * running + momentum * batch
            return new.astype(running.dtype)

        new_state = {
            "mean": update(state["mean"], mean),
            "var": update(state["var"], var * (m / (m - 1))),  # unbiased, as PyTorch
        }
        cache = {"xhat": xhat.astype(x.dtype), "inv_std": inv_std, "mode": Static("train")}
        return y, cache, new_state

    def backward(params, cache, dy):
        check_cotangent("batchnorm", dy, cache["xhat"].shape)
        dtype = cache["xhat"].dtype  # sums below in float32 for bfloat16/float16
        xhat, inv_std, dy = widen(cache["xhat"]), cache["inv_std"], widen(dy)
        ndim = xhat.ndim
        # y = scale * xhat + offset: the affine part, summed over every value of a feature.
        dy2, xhat2 = fold_leading_axes(dy), fold_leading_axes(xhat)
        doffset = dy2.sum(0)
        dscale = (dy2 * xhat2).sum(0)
        g = along_last_axis(params["scale"] * inv_std, ndim)  # d y / d x with stats fixed
        if cache["mode"].value == "eval":
            dx = g * dy
        else:
            # xhat = (x - mu) * inv_std with mu and var functions of x: the two extra terms
            # remove the components of dy along the constant direction and along xhat.
            m = dy2.shape[0]
            dx = (g / m) * (
                m * dy - along_last_axis(doffset, ndim) - xhat * along_last_axis(dscale, ndim)
            )
        dparams = {
            "scale": dscale.astype(params["scale"].dtype),
            "offset": doffset.astype(params["offset"].dtype),
        }
        return dx.astype(dtype), dparams

    return Layer(init, forward, backward, name="batchnorm", wide=True)


# --- layernorm ------------------------------------------------------------------------


def layernorm(eps: float = 1e-5, axis: int | tuple[int, ...] = -1, *, dtype=jnp.float32) -> Layer:
    """Layer normalization: normalize each example over ``axis``, then a learned affine map.

    Args:
      eps: added to the variance before the square root; must be positive.
      axis: the axis, or tuple of axes, normalized together (default the last). The batch
        axis 0 cannot be one of them. ``axis=(-2, -1)`` is PyTorch's
        ``LayerNorm(normalized_shape=x.shape[-2:])``.
      dtype: parameter dtype.

    Shapes: ``x -> y`` of the same shape; params ``{"scale": S, "offset": S}`` (ones,
    zeros) where ``S`` is the shape of the normalized axes (e.g. ``(C,)`` for ``axis=-1``).

    Forward (``mean`` and biased ``var`` over the ``n`` values of the normalized axes,
    separately for every position of the other axes)::

        xhat = (x - mean) * inv_std,   inv_std = 1 / sqrt(var + eps)
        y    = scale * xhat + offset

    Backward (sums over the normalized axes, as in the forward; ``dscale`` and ``doffset``
    sum over the other axes)::

        dxhat   = scale * dy
        dx      = inv_std / n * (n * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))
        dscale  = sum(dy * xhat),   doffset = sum(dy)

    Cache: ``xhat`` (the shape of ``x``) and ``inv_std`` (``x``'s shape with the normalized
    axes reduced to 1).

    >>> import jax, jax.numpy as jnp
    >>> from funcnn.layers.normalization import layernorm
    >>> layer = layernorm()
    >>> params, out_shape = layer.init(jax.random.PRNGKey(0), (2, 3))
    >>> x = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]], jnp.float32)
    >>> y, cache = layer.forward(params, x)
    >>> y.mean(axis=-1)
    Array([0., 0.], dtype=float32)
    """
    eps = check_number("layernorm", "eps", eps, low=0, low_open=True)
    axes_arg = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    if not all(map(is_int, axes_arg)):
        raise TypeError(
            f"layernorm: axis must be an int or a non-empty tuple of ints, got {axis!r}"
        )
    if not axes_arg:
        raise ValueError(
            f"layernorm: axis must be an int or a non-empty tuple of ints, got {axis!r}"
        )
    axes_arg = tuple(int(a) for a in axes_arg)
    if len(set(axes_arg)) != len(axes_arg):
        raise ValueError(f"layernorm: axis must not repeat an axis, got {axis!r}")

    def resolve(shape) -> tuple[int, ...]:
        """The normalized axes as sorted non-negative ints for an input of this shape."""
        ndim = len(shape)
        if any(not -ndim <= a < ndim for a in axes_arg):
            raise ValueError(
                f"layernorm: axis {axis!r} is out of range for input of shape {tuple(shape)}"
            )
        axes = tuple(sorted(a % ndim for a in axes_arg))
        if len(set(axes)) != len(axes):
            raise ValueError(
                f"layernorm: axis {axis!r} names the same axis twice for input of shape "
                f"{tuple(shape)}"
            )
        if 0 in axes:
            raise ValueError(
                f"layernorm: axis {axis!r} includes the batch axis 0 for input of shape "
                f"{tuple(shape)}; normalize over non-batch axes (use batchnorm to mix examples)"
            )
        return axes

    def param_view(p, ndim, axes):
        """Place a param of the normalized axes' shape so it broadcasts against ``x``."""
        return p.reshape(tuple(p.shape[axes.index(i)] if i in axes else 1 for i in range(ndim)))

    def init(key, input_shape):
        input_shape = check_input_shape("layernorm", input_shape, min_ndim=2)
        axes = resolve(input_shape)
        shape = tuple(input_shape[a] for a in axes)
        params = {"scale": jnp.ones(shape, dtype), "offset": jnp.zeros(shape, dtype)}
        return params, input_shape

    def forward(params, x):
        expected = check_param_tree("layernorm", params, {"scale": None, "offset": None})["scale"]
        shape = check_float("layernorm", "x", x, min_ndim=2)
        axes = resolve(shape)
        normalized = tuple(shape[a] for a in axes)
        if normalized != expected:
            raise ValueError(
                f"layernorm: expected input whose normalized axes {axes} have sizes {expected} "
                f"(the params were made for that), got input of shape {shape}"
            )
        check_params("layernorm", params, {"scale": expected, "offset": expected})
        xf = widen(x)  # statistics in float32 for bfloat16/float16 inputs
        _, centered = _centered(xf, axes)
        var = jnp.mean(centered * centered, axis=axes, keepdims=True)  # biased, two-pass
        inv_std = lax.rsqrt(var + eps)
        xhat = centered * inv_std
        ndim = x.ndim
        y = param_view(params["scale"], ndim, axes) * xhat + param_view(
            params["offset"], ndim, axes
        )
        return y.astype(x.dtype), (xhat.astype(x.dtype), inv_std)

    def backward(params, cache, dy):
        check_cotangent("layernorm", dy, cache[0].shape)
        dtype = cache[0].dtype  # sums below in float32 for bfloat16/float16
        xhat, inv_std, dy = widen(cache[0]), cache[1], widen(dy)
        ndim = xhat.ndim
        axes = resolve(xhat.shape)
        others = tuple(i for i in range(ndim) if i not in axes)
        n = math.prod(xhat.shape[a] for a in axes)
        # y = scale * xhat + offset: the affine part sums over the un-normalized axes.
        doffset = jnp.sum(dy, axis=others)
        dscale = jnp.sum(dy * xhat, axis=others)
        # xhat = (x - mean) * inv_std, mean and var taken over `axes` of the same example.
        dxhat = param_view(params["scale"], ndim, axes) * dy
        dx = (inv_std / n) * (
            n * dxhat
            - jnp.sum(dxhat, axis=axes, keepdims=True)
            - xhat * jnp.sum(dxhat * xhat, axis=axes, keepdims=True)
        )
        dparams = {
            "scale": dscale.astype(params["scale"].dtype),
            "offset": doffset.astype(params["offset"].dtype),
        }
        return dx.astype(dtype), dparams

    return Layer(init, forward, backward, name="layernorm")


__all__ = ["batchnorm", "layernorm"]
