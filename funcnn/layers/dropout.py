"""Dropout: zero random elements in train mode, the identity in eval mode.

A **wide** layer: the randomness comes from ``ctx.key`` and the mode from ``ctx.train``
(see :class:`funcnn.core.Ctx`). It has no params and no state (both ``()``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnn.core import Layer, Static
from funcnn.validation import (
    check_cotangent,
    check_ctx,
    check_float,
    check_input_shape,
    check_no_params,
    check_number,
)


def dropout(rate: float) -> Layer:
    """Inverted dropout: drop each element with probability ``rate``, scale the rest up.

    Args:
      rate: the probability of **dropping** an element, ``0 <= rate < 1``.

    Shapes: ``x -> y`` of the same shape (any shape); params ``()``; state ``()``.

    Forward, train mode (``ctx.train`` true), with ``keep = 1 - rate`` and a fresh mask
    ``mask ~ Bernoulli(keep)`` drawn from ``ctx.key`` with the shape of ``x``::

        y = x * mask / keep

    so ``E[y] = x`` and nothing needs rescaling at evaluation time. Eval mode is the
    identity ``y = x`` and needs no key; so is ``rate == 0`` in either mode. Train mode with
    ``rate > 0`` and no key raises ``ValueError``.

    Backward (the same mask; ``y`` is linear in ``x``)::

        dx = dy * mask / keep        (train)
        dx = dy                      (eval)

    Cache: the boolean ``mask`` in train mode (one byte per element); in eval mode only
    the input shape, ``Static(shape)``, which tells ``backward`` to pass ``dy`` through.

    >>> import jax, jax.numpy as jnp
    >>> from funcnn.core import Ctx
    >>> from funcnn.layers.dropout import dropout
    >>> layer = dropout(0.5)
    >>> params, state, _ = layer.init(jax.random.PRNGKey(0), (2, 4))
    >>> x = jnp.ones((2, 4))
    >>> y, mask, _ = layer.forward(params, x, state, Ctx(key=jax.random.PRNGKey(1), train=True))
    >>> sorted(set(y.ravel().tolist()))  # dropped elements are 0, kept ones are 1 / 0.5
    [0.0, 2.0]
    >>> y_eval, _, _ = layer.forward(params, x, state, Ctx(train=False))
    >>> bool(jnp.all(y_eval == x))
    True
    """
    rate = check_number(
        "dropout", "rate (the probability of dropping)", rate, low=0, high=1, high_open=True
    )
    keep = 1.0 - rate

    def init(key, input_shape):
        return (), (), check_input_shape("dropout", input_shape, min_ndim=0)

    def forward(params, x, state, ctx):
        check_ctx("dropout", ctx)
        check_no_params("dropout", params)
        if not (isinstance(state, tuple) and state == ()):
            raise TypeError(
                f"dropout: this layer has no state; state must be (), got {type(state).__name__}"
            )
        shape = check_float("dropout", "x", x)
        if not ctx.train or rate == 0.0:
            return x, Static(shape), state
        if ctx.key is None:
            raise ValueError(
                "dropout: train mode needs a PRNG key: pass Ctx(key=..., train=True) "
                "(or Ctx(train=False) to evaluate without dropout)"
            )
        mask = jax.random.bernoulli(ctx.key, keep, x.shape)
        return jnp.where(mask, x / keep, 0), mask, state

    def backward(params, cache, dy):
        if isinstance(cache, Static):  # eval mode (or rate 0): the identity
            check_cotangent("dropout", dy, cache.value)
            return dy, ()
        check_cotangent("dropout", dy, cache.shape)
        # y = x * mask / keep is linear in x with the same (diagonal) factor.
        return jnp.where(cache, dy / keep, 0), ()

    return Layer(init, forward, backward, name="dropout", wide=True)


__all__ = ["dropout"]
