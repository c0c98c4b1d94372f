"""Mixed precision: a policy for the training step, dynamic loss scaling, and the
accumulation rule the built-in layers follow.

A :class:`Policy` says which dtype each part of a step uses:

* **params are stored** in their own dtype (float32) and so is the optimizer state; the
  optimizer sees float32 gradients and updates float32 params;
* **the model computes** in ``policy.compute`` (bfloat16 or float16): the step casts the
  floating params and inputs to it, runs the forward and the hand-written backward in it,
  and casts the parameter gradients back to the params' dtype;
* **the loss is computed** in ``policy.output`` (float32): the model's output is cast to
  it before the loss, and the loss's gradient is cast to the compute dtype on its way
  into the backward.

Inside a layer, low precision is for storage and elementwise arithmetic; sums are not
done in it. Every built-in layer accumulates in :func:`accumulation_dtype` (float32 for
bfloat16 and float16 inputs, the input's own dtype otherwise, so float32 and float64
numbers are unchanged): matrix products and convolutions with
``preferred_element_type``, and batch and layer normalization statistics and softmax's
log-sum-exp on float32 copies of their inputs, rounding only the results.

float16 has 5 exponent bits: small gradients underflow to zero. :func:`loss_scaled` wraps
an optimizer so that the step multiplies the loss by a scale ``S`` before the backward
(``policy.loss_scale``, on by default for float16), divides the gradients by ``S``, and
skips the step (params, optimizer state and model state unchanged) when a gradient is not
finite, halving ``S``; after ``growth_interval`` finite steps in a row ``S`` doubles.
bfloat16 has float32's exponent range and needs no scaling.

>>> import jax.numpy as jnp, funcnn as fn
>>> policy = fn.train.mixed_precision(compute=jnp.bfloat16)
>>> policy.compute, policy.output, policy.loss_scale is None
(dtype(bfloat16), dtype('float32'), True)
>>> fn.train.mixed_precision(compute=jnp.float16).loss_scale.initial
32768.0
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.optim import GradientTransformation

PyTree = Any

__all__ = [
    "DynamicLossScale",
    "LossScaleState",
    "Policy",
    "accumulation_dtype",
    "all_finite",
    "loss_scaled",
    "mixed_precision",
]

_LOW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def accumulation_dtype(dtype) -> np.dtype:
    """The dtype sums are carried out in: float32 for bfloat16/float16, else ``dtype``.

    >>> import jax.numpy as jnp
    >>> from funcnn.precision import accumulation_dtype
    >>> accumulation_dtype(jnp.bfloat16), accumulation_dtype(jnp.float32)
    (dtype('float32'), dtype('float32'))
    """
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype in _LOW else dtype


def matmul(a, b):
    """``a @ b`` accumulated in :func:`accumulation_dtype`, rounded to the operands' dtype.

    For float32 and float64 operands this is exactly ``a @ b``.
    """
    dtype = jnp.result_type(a, b)
    out = jnp.matmul(a, b, preferred_element_type=accumulation_dtype(dtype))
    return out.astype(dtype)


def widen(x):
    """``x`` in its accumulation dtype (a no-op for float32 and float64)."""
    return x.astype(accumulation_dtype(x.dtype))


def _check_float_dtype(name: str, what: str, dtype) -> np.dtype:
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{name}: {what} must be a floating dtype, got {dtype!r}") from err
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name}: {what} must be a floating dtype, got {dtype}")
    return dtype


class DynamicLossScale(NamedTuple):
    """Settings of dynamic loss scaling: start at ``initial``; on a step with a non-finite
    gradient divide the scale by ``factor`` (not below ``minimum``) and skip the step;
    after ``growth_interval`` finite steps in a row multiply it by ``factor``."""

    initial: float = 2.0**15
    growth_interval: int = 2000
    factor: float = 2.0
    minimum: float = 1.0


class LossScaleState(NamedTuple):
    """Optimizer state of :func:`loss_scaled`: the wrapped optimizer's state, the scale."""

    inner: PyTree  # the wrapped optimizer's state
    scale: jax.Array  # () float32: the factor the loss is multiplied by
    good_steps: jax.Array  # () int32: finite steps since the scale last changed
    skipped: jax.Array  # () int32: steps skipped so far (non-finite gradients)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Dtypes of a training step; see :func:`mixed_precision` and the module docstring.

    Attributes:
      compute: dtype of the forward and backward (params and floating inputs are cast).
      output: dtype the model's output is cast to before the loss (and the loss itself).
      loss_scale: :class:`DynamicLossScale` settings, or ``None`` (no scaling).
    """

    compute: np.dtype
    output: np.dtype = np.dtype(np.float32)  # noqa: RUF009  (an immutable value)
    loss_scale: DynamicLossScale | None = None

    def cast_to_compute(self, tree: PyTree) -> PyTree:
        """Floating leaves of ``tree`` cast to ``compute`` (integer leaves, e.g. ids, kept)."""
        return _cast_floating(tree, self.compute)

    def cast_to_output(self, tree: PyTree) -> PyTree:
        """Floating leaves of ``tree`` cast to ``output``."""
        return _cast_floating(tree, self.output)

    def wrap(self, optimizer: GradientTransformation) -> GradientTransformation:
        """The optimizer the step needs: :func:`loss_scaled` when the policy scales the loss,
        else ``optimizer`` itself (already wrapped optimizers are returned unchanged)."""
        if self.loss_scale is None or is_loss_scaled(optimizer):
            return optimizer
        return loss_scaled(optimizer, self.loss_scale)

    def __repr__(self) -> str:
        scale = "" if self.loss_scale is None else f", loss_scale={self.loss_scale}"
        return f"mixed_precision(compute={self.compute}, output={self.output}{scale})"


def _cast_floating(tree: PyTree, dtype) -> PyTree:
    def cast(a):
        if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating) and a.dtype != dtype:
            return a.astype(dtype)
        return a

    return jax.tree_util.tree_map(cast, tree)


def mixed_precision(
    compute=jnp.bfloat16,
    *,
    output=jnp.float32,
    loss_scale: str | DynamicLossScale | None = "auto",
) -> Policy:
    """A mixed-precision :class:`Policy` for :func:`funcnn.train.train_step` and ``fit``.

    Args:
      compute: dtype of the model's forward and backward (``jnp.bfloat16`` or
        ``jnp.float16``; ``jnp.float32`` gives a policy that changes nothing for float32
        params, useful as a switch).
      output: dtype of the model's output as the loss sees it, and of the loss.
      loss_scale: ``"auto"`` (dynamic scaling for float16, none otherwise), ``"dynamic"``,
        a :class:`DynamicLossScale` with your settings, or ``None``.

    The params stay in their own dtype (store them in float32); the step casts them.
    With loss scaling the optimizer must carry the scale: pass ``policy.wrap(optimizer)``
    to :func:`funcnn.train.init_train_state` and to ``train_step`` (``fit`` wraps it).
    """
    compute = _check_float_dtype("mixed_precision", "compute", compute)
    output = _check_float_dtype("mixed_precision", "output", output)
    if isinstance(loss_scale, str):
        if loss_scale not in ("auto", "dynamic"):
            raise ValueError(
                f"mixed_precision: loss_scale must be 'auto', 'dynamic', a DynamicLossScale "
                f"or None, got {loss_scale!r}"
            )
        wanted = loss_scale == "dynamic" or compute == jnp.dtype(jnp.float16)
        loss_scale = DynamicLossScale() if wanted else None
    elif loss_scale is not None and not isinstance(loss_scale, DynamicLossScale):
        raise TypeError(
            f"mixed_precision: loss_scale must be 'auto', 'dynamic', a DynamicLossScale or "
            f"None, got {type(loss_scale).__name__}"
        )
    if loss_scale is not None:
        _check_loss_scale(loss_scale)
    return Policy(compute, output, loss_scale)


def _check_loss_scale(s: DynamicLossScale):
    def number(what, value, ok, rule):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(value):
            raise ValueError(f"DynamicLossScale: {what} must be {rule}, got {value!r}")

    number("initial", s.initial, lambda v: math.isfinite(v) and v > 0, "a positive number")
    number("factor", s.factor, lambda v: math.isfinite(v) and v > 1, "a number above 1")
    number("minimum", s.minimum, lambda v: 0 < v <= s.initial, "in (0, initial]")
    if isinstance(s.growth_interval, bool) or not isinstance(s.growth_interval, int):
        raise ValueError(f"DynamicLossScale: growth_interval must be an int, got {s!r}")
    if s.growth_interval <= 0:
        raise ValueError(
            f"DynamicLossScale: growth_interval must be positive, got {s.growth_interval}"
        )


def all_finite(tree: PyTree) -> jax.Array:
    """A () bool: every element of every floating leaf is finite."""
    leaves = [
        jnp.all(jnp.isfinite(a))
        for a in jax.tree_util.tree_leaves(tree)
        if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def select(pred, on_true: PyTree, on_false: PyTree) -> PyTree:
    """Leafwise ``where(pred, on_true, on_false)`` for two trees of the same structure."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def is_loss_scaled(optimizer) -> bool:
    """Whether ``optimizer`` was made by :func:`loss_scaled`."""
    return isinstance(optimizer, _LossScaled)


class _LossScaled(GradientTransformation):
    """The :class:`GradientTransformation` :func:`loss_scaled` returns (a marked subclass)."""

    __slots__ = ()


def loss_scaled(
    optimizer: GradientTransformation, settings: DynamicLossScale = DynamicLossScale()
) -> GradientTransformation:
    """``optimizer`` behind dynamic loss scaling; its state is a :class:`LossScaleState`.

    ``update(grads, state, params)`` takes the gradients **of the scaled loss**
    ``state.scale * loss`` (what :func:`funcnn.train.train_step` computes with a policy
    that scales), divides them by the scale, and

    * if every gradient is finite: runs ``optimizer.update`` on them, and doubles the
      scale (by ``settings.factor``) after ``settings.growth_interval`` such steps in a row;
    * otherwise: returns zero updates and the wrapped state unchanged (the step is
      skipped) and divides the scale by ``settings.factor`` (not below ``settings.minimum``).

    >>> import jax.numpy as jnp, funcnn as fn
    >>> opt = fn.train.loss_scaled(fn.optim.sgd(0.1))
    >>> params = {"w": jnp.ones(2)}
    >>> state = opt.init(params)
    >>> bad = {"w": jnp.array([jnp.inf, 1.0])}
    >>> updates, state = opt.update(bad, state, params)
    >>> updates["w"].tolist(), float(state.scale), int(state.skipped)
    ([0.0, 0.0], 16384.0, 1)
    """
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            f"loss_scaled: optimizer must be a GradientTransformation (init, update), got "
            f"{type(optimizer).__name__}"
        )
    if not isinstance(settings, DynamicLossScale):
        raise TypeError(
            f"loss_scaled: settings must be a DynamicLossScale, got {type(settings).__name__}"
        )
    _check_loss_scale(settings)

    def init(params):
        return LossScaleState(
            optimizer.init(params),
            jnp.asarray(settings.initial, jnp.float32),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
        )

    def update(grads, state, params=None):
        if not isinstance(state, LossScaleState):
            raise TypeError(
                f"loss_scaled: the optimizer state must be a LossScaleState (made by this "
                f"optimizer's init), got {type(state).__name__}"
            )
        inv = 1.0 / state.scale
        grads = jax.tree_util.tree_map(lambda g: g * inv.astype(g.dtype), grads)
        finite = all_finite(grads)
        updates, inner = optimizer.update(grads, state.inner, params)
        updates = select(finite, updates, jax.tree_util.tree_map(jnp.zeros_like, updates))
        inner = select(finite, inner, state.inner)
        grow = finite & (state.good_steps + 1 >= settings.growth_interval)
        scale = jnp.where(
            finite,
            jnp.where(grow, state.scale * settings.factor, state.scale),
            jnp.maximum(state.scale / settings.factor, settings.minimum),
        ).astype(jnp.float32)
        scale = jnp.where(jnp.isfinite(scale), scale, state.scale)  # never grow to inf
        good = jnp.where(finite & ~grow, state.good_steps + 1, 0).astype(jnp.int32)
        skipped = (state.skipped + jnp.where(finite, 0, 1)).astype(jnp.int32)
        return updates, LossScaleState(inner, scale, good, skipped)

    return _LossScaled(init, update)
