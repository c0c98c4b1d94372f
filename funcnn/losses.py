"""Losses as ``(forward, backward)`` pairs with hand-written gradients.

Every loss is a :class:`funcnn.core.Loss`::

    forward(pred, target)       -> (loss, cache)     # loss is a scalar (or see "none")
    backward(cache, dloss=1.0)  -> dpred             # targets get no gradient

Each factory takes ``reduction="mean"``, ``"sum"`` or ``"none"``. The numbers are
PyTorch's: "mean" averages over every element for the elementwise losses (:func:`mse`,
:func:`l1`, :func:`huber`, :func:`binary_cross_entropy_with_logits`) and over the batch
(every axis but the class axis) for the classification losses
(:func:`softmax_cross_entropy`, :func:`hinge`). "none" returns the unreduced losses: one
per element (the prediction's shape) for the elementwise losses, one per row (the shape
without the class axis) for the classification losses; its ``dloss`` is then the
cotangent of that array (its shape), or a scalar that weighs every entry alike.

Conventions shared by all of them:

* ``pred`` (or ``logits``) must be floating point. ``loss`` and ``dpred`` have its dtype.
  float16 and bfloat16 inputs are computed, summed and divided in float32 and rounded
  back at the end (as PyTorch does), so a mean over more elements than float16 can count
  (65,504) or of squares that overflow it still comes out right.
* Integer labels of any width work: labels narrower than 32 bits are widened before they
  are compared with the class count (an int8 label could not hold 200 classes).
* Elementwise losses never broadcast: ``pred`` and ``target`` must have the same shape.
* The class axis is the last one (channels-last, unlike PyTorch's axis 1), and
  class indices are an integer array with the logits' shape minus that axis.
* Class indices outside ``[0, C)`` cannot be detected while tracing (the values are not
  known then), so they are not an error: they make the loss and that sample's gradient
  row NaN, which no training run can miss.
* ``dloss`` is the cotangent of the loss (a Python number or a 0-d array; for "none" an
  array of the loss's shape also works), so ``backward(cache, dloss)`` is the gradient of
  ``sum(dloss * loss)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcnn.core import Array, Loss, Static, check_array, check_float
from funcnn.validation import check_choice, check_number

__all__ = [
    "binary_cross_entropy_with_logits",
    "hinge",
    "huber",
    "l1",
    "mse",
    "multi",
    "softmax_cross_entropy",
]

_REDUCTIONS = ("mean", "sum", "none")


# --- shared helpers --------------------------------------------------------------------


def _check_reduction(name: str, reduction) -> str:
    return check_choice(name, "reduction", reduction, _REDUCTIONS)


def _wide_dtype(dtype):
    """The dtype the arithmetic runs in: at least float32 (half precision overflows)."""
    return jnp.promote_types(dtype, jnp.float32)


def _wide(x: Array) -> Array:
    return x.astype(_wide_dtype(x.dtype))


def _reduce(values: Array, reduction: str, count: int, dtype) -> Array:
    """The loss from per-entry ``values`` (wide dtype), in ``dtype``: the values themselves
    ("none"), their sum, or the sum divided by ``count`` ("mean")."""
    if reduction == "none":
        return values.astype(dtype)
    total = jnp.sum(values)
    return (total / count if reduction == "mean" else total).astype(dtype)


def _scale(name: str, dloss, reduction: str, count: int, shape, dtype) -> Array:
    """The factor every gradient entry gets, in the wide dtype: ``dloss`` (divided by
    ``count`` for "mean"). For "none" ``dloss`` is a scalar or has the loss's ``shape``."""
    wide = _wide_dtype(dtype)
    if reduction == "none":
        if jnp.ndim(dloss) != 0 and tuple(jnp.shape(dloss)) != tuple(shape):
            raise ValueError(
                f"{name}: with reduction='none', dloss must be a scalar or have the loss's "
                f"shape {tuple(shape)}, got shape {tuple(jnp.shape(dloss))}"
            )
        return jnp.asarray(dloss).astype(wide)
    if jnp.ndim(dloss) != 0:
        raise ValueError(
            f"{name}: dloss must be a scalar (the cotangent of the scalar loss), "
            f"got shape {tuple(jnp.shape(dloss))}"
        )
    dloss = jnp.asarray(dloss).astype(wide)
    # max(count, 1): an empty input has an empty gradient; avoid a Python ZeroDivisionError.
    return dloss / max(count, 1) if reduction == "mean" else dloss


def _per_row(scale: Array) -> Array:
    """A per-row factor ("none") broadcast over the class axis; a scalar stays one."""
    return scale[..., None] if scale.ndim else scale


def _check_pair(name: str, pred, target) -> Array:
    """Validate an elementwise loss's inputs; return ``target`` in the wide dtype."""
    check_float(name, "pred", pred)
    check_array(name, "target", target)
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"{name}: pred and target must have the same shape (no broadcasting), "
            f"got pred of shape {tuple(pred.shape)} and target of shape {tuple(target.shape)}"
        )
    if not (
        jnp.issubdtype(target.dtype, jnp.floating)
        or jnp.issubdtype(target.dtype, jnp.integer)
        or jnp.issubdtype(target.dtype, jnp.bool_)
    ):
        raise TypeError(f"{name}: target must be a real array, got dtype {target.dtype}")
    return jnp.asarray(target).astype(_wide_dtype(pred.dtype))


def _check_logits(name: str, logits) -> int:
    """Validate class scores of shape ``(..., C)``; return ``C``."""
    check_float(name, "logits", logits)
    shape = check_array(name, "logits", logits, min_ndim=1)
    if shape[-1] == 0:
        raise ValueError(f"{name}: logits need at least one class (last axis), got shape {shape}")
    return shape[-1]


def _check_labels(name: str, logits, labels) -> None:
    """Integer class indices must have the logits' shape without the class axis."""
    expected = tuple(logits.shape[:-1])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"{name}: integer labels must have shape {expected} (the logits' shape "
            f"{tuple(logits.shape)} without the class axis), got labels of shape "
            f"{tuple(labels.shape)}"
        )


def _is_integer(a) -> bool:
    return jnp.issubdtype(a.dtype, jnp.integer)


def _wide_labels(labels: Array) -> Array:
    """Labels of fewer than 32 bits as int32, so ``labels < C`` never wraps ``C``."""
    return labels.astype(jnp.int32) if labels.dtype.itemsize < 4 else labels


def _one_hot(labels: Array, num_classes: int) -> Array:
    """Boolean one-hot ``(..., C)`` of integer ``labels (...)``; all False out of range."""
    classes = jnp.arange(num_classes).reshape((1,) * labels.ndim + (num_classes,))
    return labels[..., None] == classes


def _valid(labels: Array, num_classes: int) -> Array:
    return (labels >= 0) & (labels < num_classes)


# --- regression ------------------------------------------------------------------------


def mse(reduction: str = "mean") -> Loss:
    """Mean squared error ``sum_i (pred_i - target_i)^2``, divided by the element count for "mean".

    There is no 1/2 factor (as PyTorch's ``MSELoss``).

    Args:
      reduction: ``"mean"`` (over all elements), ``"sum"``, or ``"none"`` (one loss per
        element, the prediction's shape).

    Shapes: ``pred (...)`` and ``target`` of the same shape -> a scalar.

    Forward, with ``d = pred - target`` and ``n`` elements::

        loss = s * sum_i d_i^2              s = 1/n ("mean") or 1 ("sum")

    Backward::

        dpred = dloss * s * 2 d

    Cache: ``d``.

    >>> import jax.numpy as jnp, funcnn as fn
    >>> loss = fn.losses.mse()
    >>> value, cache = loss.forward(jnp.array([1.0, 2.0], jnp.float32), jnp.zeros(2, jnp.float32))
    >>> value
    Array(2.5, dtype=float32)
    >>> loss.backward(cache)
    Array([1., 2.], dtype=float32)
    """
    name = "mse"
    reduction = _check_reduction(name, reduction)

    def forward(pred, target):
        target = _check_pair(name, pred, target)
        d = _wide(pred) - target
        return _reduce(d * d, reduction, d.size, pred.dtype), d.astype(pred.dtype)

    def backward(d, dloss=1.0):
        # loss = s * sum d^2  =>  dloss/dpred = s * 2 d.
        scale = _scale(name, dloss, reduction, d.size, d.shape, d.dtype)
        return (scale * 2 * _wide(d)).astype(d.dtype)

    return Loss(forward, backward, name)


def l1(reduction: str = "mean") -> Loss:
    """Absolute error ``sum_i |pred_i - target_i|``, divided by the element count for "mean".

    As PyTorch's ``L1Loss``, the (sub)gradient at ``pred == target`` is 0.

    Args:
      reduction: ``"mean"`` (over all elements), ``"sum"``, or ``"none"`` (one loss per
        element, the prediction's shape).

    Shapes: ``pred (...)`` and ``target`` of the same shape -> a scalar.

    Forward, with ``d = pred - target`` and ``n`` elements::

        loss = s * sum_i |d_i|              s = 1/n ("mean") or 1 ("sum")

    Backward::

        dpred = dloss * s * sign(d)         sign(0) = 0

    Cache: ``sign(d)``.

    >>> import jax.numpy as jnp, funcnn as fn
    >>> loss = fn.losses.l1(reduction="sum")
    >>> pred = jnp.array([1.0, -2.0, 0.0], jnp.float32)
    >>> value, cache = loss.forward(pred, jnp.zeros(3, jnp.float32))
    >>> value
    Array(3., dtype=float32)
    >>> loss.backward(cache)
    Array([ 1., -1.,  0.], dtype=float32)
    """
    name = "l1"
    reduction = _check_reduction(name, reduction)

    def forward(pred, target):
        target = _check_pair(name, pred, target)
        d = _wide(pred) - target
        return _reduce(jnp.abs(d), reduction, d.size, pred.dtype), jnp.sign(d).astype(pred.dtype)

    def backward(sign, dloss=1.0):
        # loss = s * sum |d|  =>  dloss/dpred = s * sign(d).
        scale = _scale(name, dloss, reduction, sign.size, sign.shape, sign.dtype)
        return (scale * _wide(sign)).astype(sign.dtype)

    return Loss(forward, backward, name)


def huber(delta: float = 1.0, reduction: str = "mean") -> Loss:
    """Huber loss: quadratic for ``|d| <= delta``, linear beyond (PyTorch's ``HuberLoss``).

    Args:
      delta: where the quadratic part meets the linear part; a positive number.
      reduction: ``"mean"`` (over all elements), ``"sum"``, or ``"none"`` (one loss per
        element, the prediction's shape).

    Shapes: ``pred (...)`` and ``target`` of the same shape -> a scalar.

    Forward, with ``d = pred - target`` and ``n`` elements::

        h(d) = 0.5 d^2                    if |d| <= delta
               delta (|d| - 0.5 delta)    otherwise
        loss = s * sum_i h(d_i)           s = 1/n ("mean") or 1 ("sum")

    Both branches are ``c (d - c / 2)`` with ``c = clip(d, -delta, delta)``, and ``h'(d) = c``
    (``d`` inside, ``delta * sign(d)`` outside; the two agree at ``|d| = delta``). Backward::

        dpred = dloss * s * clip(d, -delta, delta)

    Cache: ``clip(d, -delta, delta)``.

    >>> import jax.numpy as jnp, funcnn as fn
    >>> loss = fn.losses.huber(delta=1.0, reduction="sum")
    >>> value, cache = loss.forward(jnp.array([0.5, 3.0], jnp.float32), jnp.zeros(2, jnp.float32))
    >>> value  # 0.5 * 0.5^2 + 1 * (3 - 0.5)
    Array(2.625, dtype=float32)
    >>> loss.backward(cache)
    Array([0.5, 1. ], dtype=float32)
    """
    name = "huber"
    delta = check_number(name, "delta", delta, low=0, low_open=True)
    reduction = _check_reduction(name, reduction)

    def forward(pred, target):
        target = _check_pair(name, pred, target)
        d = _wide(pred) - target
        c = jnp.clip(d, -delta, delta)
        return _reduce(c * (d - 0.5 * c), reduction, d.size, pred.dtype), c.astype(pred.dtype)

    def backward(c, dloss=1.0):
        # h'(d) = clip(d, -delta, delta), which is what the forward cached.
        scale = _scale(name, dloss, reduction, c.size, c.shape, c.dtype)
        return (scale * _wide(c)).astype(c.dtype)

    return Loss(forward, backward, name)


# --- classification --------------------------------------------------------------------


def binary_cross_entropy_with_logits(reduction: str = "mean") -> Loss:
    """Binary cross-entropy of ``sigmoid(x)`` against targets ``t`` in [0, 1], from logits ``x``.

    As PyTorch's ``BCEWithLogitsLoss``; stable for logits of any magnitude.

    Args:
      reduction: ``"mean"`` (over all elements), ``"sum"``, or ``"none"`` (one loss per
        element, the prediction's shape).

    Shapes: ``logits (...)`` and ``target`` of the same shape -> a scalar. The target may
    be float (probabilities) or integer/bool (0/1); it is cast to the logits' dtype.

    Forward, elementwise ``-(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x)))``, computed as::

        l(x, t) = max(x, 0) - x t + log1p(exp(-|x|))
        loss = s * sum_i l(x_i, t_i)      s = 1/n ("mean") or 1 ("sum")

    (``log(1 + e^x) = max(x, 0) + log1p(e^-|x|)``, so ``exp`` never overflows.) With
    ``d/dx log(1 + e^x) = sigmoid(x)``, backward::

        dlogits = dloss * s * (sigmoid(x) - t)

    Cache: ``sigmoid(x) - t``.

    >>> import jax.numpy as jnp, funcnn as fn
    >>> loss = fn.losses.binary_cross_entropy_with_logits()
    >>> value, cache = loss.forward(jnp.zeros(2, jnp.float32), jnp.array([0.0, 1.0], jnp.float32))
    >>> value  # log 2
    Array(0.6931472, dtype=float32)
    >>> loss.backward(cache)
    Array([ 0.25, -0.25], dtype=float32)
    """
    name = "binary_cross_entropy_with_logits"
    reduction = _check_reduction(name, reduction)

    def forward(logits, target):
        t = _check_pair(name, logits, target)
        x = _wide(logits)
        per_element = jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))
        residual = (jax.nn.sigmoid(x) - t).astype(logits.dtype)
        return _reduce(per_element, reduction, x.size, logits.dtype), residual

    def backward(residual, dloss=1.0):
        # dl/dx = sigmoid(x) - t, which is what the forward cached.
        scale = _scale(name, dloss, reduction, residual.size, residual.shape, residual.dtype)
        return (scale * _wide(residual)).astype(residual.dtype)

    return Loss(forward, backward, name)


def softmax_cross_entropy(
    reduction: str = "mean", *, ignore_index: int | None = None, label_smoothing: float = 0.0
) -> Loss:
    """Cross-entropy of ``softmax(logits)`` against class indices or class probabilities.

    As PyTorch's ``CrossEntropyLoss``, with the class axis last.

    Args:
      reduction: ``"mean"`` (over the batch: every axis but the class axis), ``"sum"``, or
        ``"none"`` (one loss per row, the logits' shape without the class axis).
      ignore_index: a label value that counts for nothing (e.g. the padding of sequence
        targets): such rows add 0 to the loss, get a zero gradient row, and "mean" divides
        by the number of the other rows (PyTorch's rule; with no row counted the loss is
        NaN, 0/0, and the gradient is zero, as in PyTorch). It may lie outside ``[0, C)``
        (PyTorch's default is -100). Integer labels only.
      label_smoothing: ``eps`` in ``[0, 1]``, PyTorch's: the target becomes
        ``(1 - eps) * t + eps / C`` (``t`` the one-hot of the label, or the given
        probabilities), i.e. ``eps`` of the mass spread evenly over the ``C`` classes.

    Shapes: ``logits (..., C)`` and either integer ``labels (...)`` (class indices) or float
    ``target (..., C)`` (class probabilities, e.g. one-hot or smoothed) -> a scalar. With
    ``N`` the number of rows (the product of the leading axes; 1 for ``logits (C,)``).

    Forward, per row, with ``log p = x - logsumexp(x)`` (max-shifted, so logits of any
    magnitude give finite values)::

        l = -log p_y                       (labels)
        l = -sum_c t_c log p_c             (probabilities)
        loss = s * sum_rows l              s = 1/N ("mean") or 1 ("sum")

    Backward. ``d logsumexp(x) / dx = p``, so for probabilities
    ``dl/dx = p * sum_c t_c - t`` (``= p - t`` when ``t`` sums to 1), and for labels
    ``t = onehot(y)``::

        dlogits = dloss * s * (p - onehot(y))          (labels)
        dlogits = dloss * s * (p * sum_c t_c - t)      (probabilities)

    With label smoothing the target is ``t' = (1 - eps) t + eps / C`` in both formulas;
    for labels ``l = -(1 - eps) log p_y - eps * mean_c log p_c`` and
    ``dlogits = dloss * s * (p - (1 - eps) onehot(y) - eps / C)``.

    With ``ignore_index``, ``N`` is the number of counted rows and ignored rows have
    ``l = 0`` and ``dlogits = 0``.

    Labels outside ``[0, C)`` cannot be checked at trace time; they give a NaN loss and a
    NaN gradient row for that sample.

    Cache: ``(p, labels)`` or ``(p, t)``.

    >>> import jax.numpy as jnp, funcnn as fn
    >>> padded = fn.losses.softmax_cross_entropy(ignore_index=-100)
    >>> value, cache = padded.forward(jnp.zeros((3, 2), jnp.float32), jnp.array([0, -100, 1]))
    >>> value, padded.backward(cache)[1]   # mean over the 2 counted rows: log 2
    (Array(0.6931472, dtype=float32), Array([0., 0.], dtype=float32))
    >>> loss = fn.losses.softmax_cross_entropy()
    >>> logits = jnp.array([[0.0, 0.0], [1e4, -1e4]], jnp.float32)
    >>> value, cache = loss.forward(logits, jnp.array([0, 1]))
    >>> value  # (log 2 + 2e4) / 2
    Array(10000.347, dtype=float32)
    >>> loss.backward(cache)
    Array([[-0.25,  0.25],
           [ 0.5 , -0.5 ]], dtype=float32)
    """
    name = "softmax_cross_entropy"
    reduction = _check_reduction(name, reduction)
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        raise TypeError(f"{name}: ignore_index must be an int or None, got {ignore_index!r}")
    eps = check_number(name, "label_smoothing", label_smoothing, low=0, high=1)

    def counted(labels):
        """Which rows count (``None``: all of them)."""
        if ignore_index is None:
            return None
        info = jnp.iinfo(labels.dtype)
        if not info.min <= ignore_index <= info.max:  # no label of this dtype can equal it
            return jnp.ones(labels.shape, bool)
        return labels != ignore_index

    def smoothed(t):
        """Probability targets with ``eps`` of their mass spread evenly over the classes."""
        return t if eps == 0 else (1 - eps) * t + eps / t.shape[-1]

    def forward(logits, target):
        num_classes = _check_logits(name, logits)
        check_array(name, "target", target)
        x = _wide(logits)
        shifted = x - jnp.max(x, axis=-1, keepdims=True)
        log_p = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
        p = jnp.exp(log_p).astype(logits.dtype)
        if _is_integer(target):
            _check_labels(name, logits, target)
            target = _wide_labels(target)
            picked = jnp.sum(jnp.where(_one_hot(target, num_classes), log_p, 0), axis=-1)
            if eps:
                picked = (1 - eps) * picked + eps * jnp.mean(log_p, axis=-1)
            per_row = jnp.where(_valid(target, num_classes), -picked, jnp.nan)
            keep = counted(target)
            if keep is not None:
                # Ignored rows add nothing; "mean" divides by the rows that count.
                per_row = jnp.where(keep, per_row, 0)
                if reduction == "mean":
                    total = jnp.sum(per_row) / jnp.sum(keep).astype(per_row.dtype)
                    return total.astype(logits.dtype), (p, target)
        elif ignore_index is not None:
            raise ValueError(
                f"{name}: ignore_index applies to integer class labels, got a target of "
                f"dtype {target.dtype}; give ignored rows a zero probability row instead"
            )
        elif jnp.issubdtype(target.dtype, jnp.floating):
            if tuple(target.shape) != tuple(logits.shape):
                raise ValueError(
                    f"{name}: float targets are class probabilities and must have the "
                    f"logits' shape {tuple(logits.shape)}, got target of shape "
                    f"{tuple(target.shape)}. For class indices pass an integer array "
                    f"of shape {tuple(logits.shape[:-1])}."
                )
            target = jnp.asarray(target).astype(logits.dtype)
            per_row = -jnp.sum(smoothed(_wide(target)) * log_p, axis=-1)
        else:
            raise TypeError(
                f"{name}: target must be integer class indices or float class "
                f"probabilities, got dtype {target.dtype}"
            )
        return _reduce(per_row, reduction, per_row.size, logits.dtype), (p, target)

    def backward(cache, dloss=1.0):
        p, target = cache
        num_classes = p.shape[-1]
        rows = p.shape[:-1]
        scale = _scale(name, dloss, reduction, p.size // num_classes, rows, p.dtype)
        q = _wide(p)
        if _is_integer(target):
            # l = logsumexp(x) - sum_c t'_c x_c with t' = (1 - eps) onehot(y) + eps / C
            #   =>  dl/dx = p - t'.
            g = q - (1 - eps) * _one_hot(target, num_classes).astype(q.dtype) - eps / num_classes
            g = jnp.where(_valid(target, num_classes)[..., None], g, jnp.nan)
            keep = counted(target)
            if keep is not None:  # ignored rows: no gradient; "mean" over the counted rows
                g = jnp.where(keep[..., None], g, 0)
                if reduction == "mean":
                    # max(count, 1): with no row counted every row of g is 0 (PyTorch's 0).
                    scale = _scale(name, dloss, "sum", 1, rows, p.dtype)
                    scale = scale / jnp.maximum(jnp.sum(keep), 1).astype(q.dtype)
        else:
            # l = sum_c t'_c (logsumexp(x) - x_c)  =>  dl/dx = p * sum_c t'_c - t'.
            t = smoothed(_wide(target))
            g = q * jnp.sum(t, axis=-1, keepdims=True) - t
        return (_per_row(scale) * g).astype(p.dtype)

    return Loss(forward, backward, name)


def hinge(reduction: str = "mean", *, margin: float = 1.0) -> Loss:
    """Multi-class hinge loss, PyTorch's ``MultiMarginLoss`` (p=1), from scores and class indices.

    Args:
      reduction: ``"mean"`` (over the batch: every axis but the class axis), ``"sum"``, or
        ``"none"`` (one loss per row, the logits' shape without the class axis).
      margin: the margin the true class's score must beat the others by (default 1).

    Shapes: ``scores (..., C)`` and integer ``labels (...)`` -> a scalar; ``N`` rows as in
    :func:`softmax_cross_entropy`.

    Forward, per row with true class ``y`` (note the division by ``C``)::

        m_i = margin - x_y + x_i
        l = (1 / C) * sum_{i != y} max(0, m_i)
        loss = s * sum_rows l             s = 1/N ("mean") or 1 ("sum")

    Backward (a subgradient: a margin exactly at 0 counts as inactive, as PyTorch). Each
    active margin ``a_i = [i != y and m_i > 0]`` adds ``+1`` to ``x_i`` and ``-1`` to
    ``x_y``::

        dx_i = dloss * s / C * a_i                (i != y)
        dx_y = -dloss * s / C * sum_i a_i         (the count of active margins)

    Labels outside ``[0, C)`` cannot be checked at trace time; they give a NaN loss and a
    NaN gradient row for that sample.

    Cache: the boolean mask ``a``, the labels and the dtype (static).

    >>> import jax.numpy as jnp, funcnn as fn
    >>> loss = fn.losses.hinge(reduction="sum")
    >>> value, cache = loss.forward(jnp.array([[2.0, 1.5, 0.0]], jnp.float32), jnp.array([0]))
    >>> value  # (max(0, 1 - 2 + 1.5) + max(0, 1 - 2 + 0)) / 3
    Array(0.16666667, dtype=float32)
    >>> loss.backward(cache)
    Array([[-0.33333334,  0.33333334,  0.        ]], dtype=float32)
    """
    name = "hinge"
    reduction = _check_reduction(name, reduction)
    margin = check_number(name, "margin", margin)

    def forward(scores, labels):
        num_classes = _check_logits(name, scores)
        check_array(name, "labels", labels)
        if not _is_integer(labels):
            raise TypeError(
                f"{name}: labels must be integer class indices, got dtype {labels.dtype}"
            )
        _check_labels(name, scores, labels)
        labels = _wide_labels(labels)
        x = _wide(scores)
        onehot = _one_hot(labels, num_classes)
        true_score = jnp.sum(jnp.where(onehot, x, 0), axis=-1, keepdims=True)
        margins = margin - true_score + x
        active = (margins > 0) & ~onehot
        per_row = jnp.sum(jnp.where(active, margins, 0), axis=-1) / num_classes
        per_row = jnp.where(_valid(labels, num_classes), per_row, jnp.nan)
        loss = _reduce(per_row, reduction, per_row.size, scores.dtype)
        return loss, (active, labels, Static(scores.dtype))

    def backward(cache, dloss=1.0):
        active, labels, dtype = cache
        num_classes = active.shape[-1]
        rows = active.shape[:-1]
        scale = _scale(name, dloss, reduction, active.size // num_classes, rows, dtype.value)
        a = active.astype(scale.dtype)
        # Each active margin m_i = margin - x_y + x_i: +1 to x_i, -1 to x_y.
        count = jnp.sum(a, axis=-1, keepdims=True)
        g = a - _one_hot(labels, num_classes).astype(scale.dtype) * count
        g = jnp.where(_valid(labels, num_classes)[..., None], g, jnp.nan)
        return (_per_row(scale) / num_classes * g).astype(dtype.value)

    return Loss(forward, backward, name)


# --- several outputs -------------------------------------------------------------------


def multi(*terms) -> Loss:
    """A weighted sum of losses, one per output of a multi-output model.

    Args:
      terms: one per output, in the order of the model's outputs: a :class:`Loss`
        (weight 1), a pair ``(loss, weight)`` with a finite real ``weight``, or ``None``
        for an output that is not trained (its cotangent is zero). At least one term is
        a loss.

    ``forward(preds, targets)`` takes tuples (or lists) with one entry per term; the
    target of a ``None`` term is ignored (pass ``None``). With ``l_i`` the loss of term
    ``i`` on ``(preds[i], targets[i])``::

        L = sum_i w_i * l_i            dL/dpreds[i] = w_i * dl_i/dpreds[i]

    so ``backward(cache, dloss)`` returns a tuple: term ``i``'s own backward with
    ``dloss * w_i``, or zeros of the prediction's shape for a ``None`` term. Every term
    must reduce to a scalar ("mean" or "sum"). This trains a ``graph`` with several
    outputs through ``value_and_grad``, ``train_step`` and ``fit``, with the targets as
    a tuple.

    Cache: each term's cache, and the shapes of the untrained predictions (static).

    >>> import jax.numpy as jnp
    >>> from funcnn import losses
    >>> loss = losses.multi((losses.mse(), 1.0), (losses.softmax_cross_entropy(), 0.5))
    >>> preds = (jnp.zeros((2, 1)), jnp.zeros((2, 3)))
    >>> value, cache = loss.forward(preds, (jnp.ones((2, 1)), jnp.array([0, 2])))
    >>> round(float(value), 4)  # 1.0 * 1 + 0.5 * log(3)
    1.5493
    >>> [g.shape for g in loss.backward(cache)]
    [(2, 1), (2, 3)]
    """
    if not terms:
        raise ValueError("multi: give one loss per output of the model, got none")
    losses_, weights = [], []
    for i, term in enumerate(terms):
        if term is None or isinstance(term, Loss):
            loss, weight = term, 1.0
        elif isinstance(term, tuple) and len(term) == 2 and isinstance(term[0], Loss):
            loss, weight = term
        else:
            raise TypeError(
                f"multi: term {i} must be a Loss, a (Loss, weight) pair or None (an output "
                f"without a loss), got {term!r}"
            )
        finite = isinstance(weight, (int, float)) and math.isfinite(weight)
        if isinstance(weight, bool) or not finite:
            raise ValueError(
                f"multi: the weight of term {i} must be a finite number, got {weight!r}"
            )
        losses_.append(loss)
        weights.append(float(weight))
    if all(loss is None for loss in losses_):
        raise ValueError("multi: at least one term must be a loss, got only None")
    n = len(losses_)
    name = "multi(" + ", ".join("None" if l is None else l.name for l in losses_) + ")"

    def check_tuple(what, value):
        if isinstance(value, (tuple, list)) and len(value) == n:
            return
        if isinstance(value, (tuple, list)):
            got = f"{type(value).__name__} of length {len(value)}"
        elif hasattr(value, "shape"):
            got = f"an array of shape {tuple(value.shape)}"
        else:
            got = type(value).__name__
        raise ValueError(
            f"{name}: expected a tuple of {n} {what} (one per loss, in the order of the "
            f"model's outputs), got {got}"
        )

    def forward(preds, targets):
        check_tuple("predictions", preds)
        check_tuple("targets", targets)
        total, caches, untrained = None, [], []
        for i, (loss, weight) in enumerate(zip(losses_, weights, strict=True)):
            if loss is None:
                leaves, treedef = jax.tree_util.tree_flatten(preds[i])
                untrained.append((treedef, tuple((tuple(a.shape), a.dtype) for a in leaves)))
                caches.append(None)
                continue
            try:
                value, cache = loss.forward(preds[i], targets[i])
            except (ValueError, TypeError) as err:
                raise type(err)(f"{name}[{i}] ({loss.name}): {err}") from err
            if jnp.shape(value) != ():
                raise ValueError(
                    f"{name}[{i}] ({loss.name}): each loss must be a scalar, got shape "
                    f"{tuple(jnp.shape(value))}; use reduction='mean' or 'sum'"
                )
            untrained.append(None)
            caches.append(cache)
            total = weight * value if total is None else total + weight * value
        return total, (tuple(caches), Static((tuple(untrained), isinstance(preds, list))))

    def backward(cache, dloss=1.0):
        caches, meta = cache
        untrained, as_list = meta.value
        grads = []
        for i, (loss, weight) in enumerate(zip(losses_, weights, strict=True)):
            if loss is None:
                treedef, specs = untrained[i]
                grads.append(treedef.unflatten([jnp.zeros(s, d) for s, d in specs]))
            else:
                grads.append(loss.backward(caches[i], dloss * weight))
        return grads if as_list else tuple(grads)

    return Loss(forward, backward, name)
