"""Shape layers: ``flatten`` and ``reshape``. Both keep the leading batch axis.

A reshape moves no numbers, so its backward is the inverse reshape of ``dy``. The only
thing to remember is the input shape, which is static: the cache holds it as
:class:`~funcnn.core.Static` metadata rather than as an array.
"""

from __future__ import annotations

import math

from funcnn.core import Layer, Static
from funcnn.validation import (
    check_array,
    check_cotangent,
    check_input_shape,
    check_no_params,
    is_int,
    like,
)


def _resolve(name: str, input_shape: tuple[int, ...], target: tuple[int, ...]):
    """The output shape for reshaping the non-batch axes of ``input_shape`` to ``target``."""
    size = math.prod(input_shape[1:])
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if known == 0 or size % known:
            raise ValueError(
                f"{name}: cannot reshape input of shape {input_shape} to "
                f"(batch, *{target}): {size} elements per example do not divide by {known}"
            )
        target = tuple(size // known if d == -1 else d for d in target)
    elif known != size:
        raise ValueError(
            f"{name}: cannot reshape input of shape {input_shape} to (batch, *{target}): "
            f"{size} elements per example, the target holds {known}"
        )
    return (input_shape[0], *target)


def _reshape_layer(name: str, target_of) -> Layer:
    """A layer reshaping ``(N, ...)`` to ``(N, *target_of(input_shape))``."""

    def init(key, input_shape):
        input_shape = check_input_shape(name, input_shape)
        return (), _resolve(name, input_shape, target_of(input_shape))

    def forward(params, x):
        check_no_params(name, params)
        shape = check_array(name, "x", x, min_ndim=1)
        out_shape = _resolve(name, shape, target_of(shape))
        return x.reshape(out_shape), Static(like(x))

    def backward(params, cache, dy):
        shape, floating = cache.value
        check_cotangent(name, dy, _resolve(name, shape, target_of(shape)), floating=floating)
        if dy is None:  # integer ids reshaped: no gradient
            return None, ()
        return dy.reshape(shape), ()

    return Layer(init, forward, backward, name=name)


def flatten() -> Layer:
    """Flatten every axis but the batch axis: ``(N, d1, d2, ...) -> (N, d1 * d2 * ...)``.

    Backward: ``dx = dy.reshape(x.shape)`` (``None`` for integer inputs). Cache: the input
    shape and whether it is floating point (static, no array).
    """
    return _reshape_layer("flatten", lambda shape: (math.prod(shape[1:]),))


def reshape(shape) -> Layer:
    """Reshape the non-batch axes to ``shape`` (which excludes the batch axis; one ``-1`` allowed).

    Shapes: ``x (N, ...) -> y (N, *shape)``.

    Backward: ``dx = dy.reshape(x.shape)`` (``None`` for integer inputs). Cache: the input
    shape and whether it is floating point (static).
    """
    target = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if not all(map(is_int, target)):
        raise TypeError(f"reshape: shape must hold positive ints and at most one -1, got {shape!r}")
    target = tuple(int(d) for d in target)
    if not all(d > 0 or d == -1 for d in target):
        raise ValueError(
            f"reshape: shape must hold positive ints and at most one -1, got {shape!r}"
        )
    if target.count(-1) > 1:
        raise ValueError(f"reshape: at most one -1 is allowed in shape, got {shape!r}")
    return _reshape_layer("reshape", lambda _: target)
