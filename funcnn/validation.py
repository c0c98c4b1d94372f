"""Argument checks shared by every layer, loss and optimizer, with one exception policy.

Every check names the function it guards (``name``, e.g. ``"conv2d"``) and the argument
(``what``), says what was expected and what came, and raises at once: in the factory for
hyperparameters, at trace time for arrays (shapes and dtypes are static under ``jax.jit``,
so none of this costs anything when a compiled step runs).

The policy, everywhere in funcnn:

* :class:`TypeError` when an argument is **of the wrong kind**, judged from the argument
  alone: a hyperparameter of the wrong Python type (a float, a string or a bool where an
  int is expected; a non-number where a number is expected), something that is not an
  array where an array is required, an input array whose dtype kind is wrong (integers
  where floating point is needed), or params and state that are not the container the
  layer's ``init`` makes (not a dict, other keys).
* :class:`ValueError` when an argument of an accepted kind has **the wrong value**: a
  number out of range, NaN or infinite; an unknown option string; a shape, rank or
  length that breaks a rule; and anything that disagrees with another argument: an
  input whose shape does not fit the params, or a cotangent ``dy`` that does not match
  the output it belongs to (its tree structure, shape or dtype kind; see
  :func:`check_cotangent`).

Integers are Python ``int`` or NumPy integers (``np.int64(3)`` is an int everywhere);
``bool`` is never accepted as an int or a number, although Python makes it one, because
``True`` where a size or a rate is expected is almost always a slip.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

Shape = tuple[int, ...]

__all__ = [
    "Like",
    "check_array",
    "check_bool",
    "check_children",
    "check_choice",
    "check_cotangent",
    "check_cotangent_tree",
    "check_ctx",
    "check_float",
    "check_input_shape",
    "check_int",
    "check_int_tuple",
    "check_no_params",
    "check_number",
    "check_param_tree",
    "check_params",
    "check_positive_int",
    "describe",
    "is_int",
    "is_shape",
    "like",
    "parse_padding",
    "same_padding",
]


def describe(value) -> str:
    """A short description of ``value`` for error messages: an array's shape and dtype,
    a container's type and length, otherwise its type and ``repr``."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"array of shape {tuple(shape)} and dtype {value.dtype}"
    if isinstance(value, dict):
        return f"dict with keys {sorted(map(str, value))}"
    if isinstance(value, (tuple, list)) and value and all(hasattr(v, "shape") for v in value):
        shapes = ", ".join(str(tuple(v.shape)) for v in value)
        return f"{type(value).__name__} of {len(value)} arrays of shapes [{shapes}]"
    if isinstance(value, (tuple, list)) and len(value) > 4:
        return f"{type(value).__name__} of length {len(value)}"
    return f"{type(value).__name__} {value!r}"


# --- scalars: ints, numbers, bools, options ----------------------------------------------


def is_int(value) -> bool:
    """Whether ``value`` is an int (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, what: str, value, *, low: int | None = None) -> int:
    """An int (Python or NumPy, not bool), at least ``low`` when given; returned as ``int``.

    ``TypeError`` for a non-int, ``ValueError`` below ``low``.
    """
    if low == 1:
        rule = "a positive int"
    elif low == 0:
        rule = "an int >= 0"
    else:
        rule = "an int" if low is None else f"an int >= {low}"
    if not is_int(value):
        raise TypeError(f"{name}: {what} must be {rule}, got {describe(value)}")
    if low is not None and value < low:
        raise ValueError(f"{name}: {what} must be {rule}, got {value!r}")
    return int(value)


def check_positive_int(name: str, what: str, value) -> int:
    """A positive int (a size, a count); see :func:`check_int`."""
    return check_int(name, what, value, low=1)


def check_int_tuple(name: str, what: str, value, nd: int, *, low: int = 1) -> tuple[int, ...]:
    """An int or a sequence of ``nd`` ints, each ``>= low``, as a tuple of ``nd`` ints.

    For per-axis hyperparameters (kernel sizes, strides, windows): one int means the
    same value on every axis. ``TypeError`` when an entry is not an int, ``ValueError``
    for a wrong length or an entry below ``low``.
    """
    bound = "positive" if low == 1 else ("non-negative" if low == 0 else f">= {low}")
    rule = f"a {bound} int or a tuple of {nd} such ints (one per spatial axis), got {value!r}"
    values = (value,) * nd if is_int(value) else value
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise TypeError(f"{name}: {what} must be {rule}")
    if len(values) != nd:
        raise ValueError(f"{name}: {what} must be {rule}")
    if not all(is_int(v) for v in values):
        raise TypeError(f"{name}: {what} must be {rule}")
    if any(v < low for v in values):
        raise ValueError(f"{name}: {what} must be {rule}")
    return tuple(int(v) for v in values)


def _interval(low, high, low_open, high_open) -> str:
    """The rule a number must satisfy, in words: ``"a number in [0, 1)"``, ``"a positive
    finite number"``, ``"a finite number >= 0"``..."""
    lo, hi = (None if v is None else f"{v:g}" for v in (low, high))
    if lo is not None and hi is not None:
        return f"a number in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
    if lo is not None:
        if low == 0 and low_open:
            return "a positive finite number"
        return f"a finite number {'>' if low_open else '>='} {lo}"
    if hi is not None:
        return f"a finite number {'<' if high_open else '<='} {hi}"
    return "a finite number"


def check_number(
    name: str,
    what: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A real, finite number in the given interval; returned as ``float``.

    ``TypeError`` for a non-number (bools included); ``ValueError`` for NaN, an infinity
    or a value outside ``[low, high]`` (``low_open``/``high_open`` exclude the ends).
    """
    rule = _interval(low, high, low_open, high_open)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: {what} must be {rule}, got {describe(value)}")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or (v <= low if low_open else v < low)
    if high is not None:
        bad = bad or (v >= high if high_open else v > high)
    if bad:
        raise ValueError(f"{name}: {what} must be {rule}, got {value!r}")
    return v


def check_bool(name: str, what: str, value) -> bool:
    """A Python or NumPy bool (``TypeError`` otherwise: ``1`` is not accepted as ``True``)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: {what} must be a bool (True or False), got {describe(value)}")
    return bool(value)


def check_choice(name: str, what: str, value, choices: Sequence[Any]):
    """One of ``choices`` (``TypeError`` for another type, ``ValueError`` for another value)."""
    kinds = tuple({type(c) for c in choices})
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise TypeError(
            f"{name}: {what} must be one of {', '.join(map(repr, choices))}, got {describe(value)}"
        )
    if value not in choices:
        raise ValueError(
            f"{name}: {what} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return value


# --- padding -----------------------------------------------------------------------------


def parse_padding(name: str, padding, nd: int):
    """Normalize a padding argument to ``"SAME"`` or a tuple of ``nd`` ``(low, high)`` pairs.

    Accepted: ``"VALID"`` / ``"SAME"`` (any case); a non-negative int (every side); or a
    sequence of ``nd`` entries (one per spatial axis), each a non-negative int (both
    sides) or a ``(low, high)`` pair. With ``nd == 2`` that covers PyTorch's
    ``padding=(ph, pw)`` and lax's ``((top, bottom), (left, right))``; with ``nd == 1`` a
    bare ``(low, high)`` is refused, because it would read as two axes.
    ``"SAME"`` is resolved per input shape by :func:`same_padding`.
    """
    rule = (
        f"'VALID', 'SAME', a non-negative int, or a tuple of {nd} entries (one per "
        f"spatial axis), each a non-negative int or a (low, high) pair; got {padding!r}"
    )
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0),) * nd
        if padding.upper() == "SAME":
            return "SAME"
        raise ValueError(f"{name}: padding must be {rule}")
    if is_int(padding):
        entries = (padding,) * nd
    elif isinstance(padding, Sequence):
        if len(padding) != nd:
            raise ValueError(f"{name}: padding must be {rule}")
        entries = tuple(padding)
    else:
        raise TypeError(f"{name}: padding must be {rule}")
    pairs = []
    for entry in entries:
        pair = (entry, entry) if is_int(entry) else entry
        if not (isinstance(pair, Sequence) and len(pair) == 2 and all(map(is_int, pair))):
            if isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) != 2:
                raise ValueError(f"{name}: padding must be {rule}")
            raise TypeError(f"{name}: padding must be {rule}")
        pairs.append((int(pair[0]), int(pair[1])))
    if any(p < 0 for pair in pairs for p in pair):
        raise ValueError(f"{name}: padding must be non-negative: {rule}")
    return tuple(pairs)


def same_padding(sizes, extents, strides) -> tuple[tuple[int, int], ...]:
    """lax/TF ``"SAME"`` padding: the output has ``ceil(size / stride)`` entries per axis.

    ``extents`` are the windows' spans (``dilation * (kernel - 1) + 1`` for a
    convolution, the window size for pooling). The total padding per axis is
    ``max((out - 1) * stride + extent - size, 0)``; when it is odd, the extra entry goes
    on the high side.
    """
    pads = []
    for n, e, s in zip(sizes, extents, strides, strict=True):
        out = -(-n // s)
        total = max((out - 1) * s + e - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


# --- shapes ------------------------------------------------------------------------------


def is_shape(s) -> bool:
    """Whether ``s`` is a single shape (a tuple of ints) rather than a tuple of shapes."""
    return isinstance(s, (tuple, list)) and all(is_int(d) for d in s)


def check_input_shape(name: str, input_shape, *, min_ndim: int = 1) -> Shape:
    """Validate an ``init`` input shape: a tuple of non-negative ints, the batch axis included.

    ``TypeError`` when it is not a tuple of ints, ``ValueError`` for a negative size or
    fewer than ``min_ndim`` axes.
    """
    if not is_shape(input_shape):
        raise TypeError(f"{name}: input_shape must be a tuple of ints, got {input_shape!r}")
    shape = tuple(int(d) for d in input_shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"{name}: input_shape must not hold negative sizes, got {shape}")
    if len(shape) < min_ndim:
        raise ValueError(
            f"{name}: input_shape must have at least {min_ndim} axes "
            f"(including the batch axis), got {shape}"
        )
    return shape


# --- arrays ------------------------------------------------------------------------------


def check_array(name: str, what: str, x, *, min_ndim: int = 0, ndim: int | None = None) -> Shape:
    """Check that ``x`` is an array of the expected rank; return its shape.

    ``TypeError`` for a non-array, ``ValueError`` for a wrong rank.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: {what} must be an array, got {describe(x)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(
            f"{name}: {what} must have {ndim} axes, got shape {tuple(x.shape)} ({x.ndim} axes)"
        )
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name}: {what} must have at least {min_ndim} axes, "
            f"got shape {tuple(x.shape)} ({x.ndim} axes)"
        )
    return tuple(x.shape)


def _is_floating(dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))  # bfloat16 and float8 included


def check_float(name: str, what: str, x, *, min_ndim: int = 0) -> Shape:
    """Check that ``x`` is a floating-point array; return its shape.

    Integer inputs get no gradient (``dx`` is ``None`` for them), so a layer that
    differentiates its input refuses them with a ``TypeError`` naming the fix.
    """
    shape = check_array(name, what, x, min_ndim=min_ndim)
    if not _is_floating(x.dtype):
        raise TypeError(
            f"{name}: {what} must be a floating-point array, got dtype {x.dtype} "
            f"(shape {shape}); cast it with .astype(jnp.float32)"
        )
    return shape


def check_cotangent(name: str, dy, shape, *, what: str = "dy", floating: bool = True) -> None:
    """Check a cotangent against the output it belongs to: an array of exactly ``shape``,
    floating point. ``ValueError`` otherwise, naming both shapes.

    Called by every built-in ``backward`` before it touches ``dy``: without it a
    broadcastable ``dy`` (``(1, d)`` for an output ``(n, d)``) would be broadcast
    silently, and a wrong spatial size could give wrong parameter gradients with a
    right-looking ``dx``. ``shape`` is static (known from the cache at trace time), so
    the check costs nothing in a compiled step.

    With ``floating=False`` (an integer output, e.g. ids passed through a reshape) the
    cotangent may also be ``None``, the library's "no gradient" for integer values, or an
    array of any dtype.
    """
    shape = tuple(shape)
    if dy is None and not floating:
        return
    if not (hasattr(dy, "shape") and hasattr(dy, "dtype")):
        raise ValueError(
            f"{name}: {what} must be an array of shape {shape} (the shape of this layer's "
            f"output), got {describe(dy)}"
        )
    if tuple(dy.shape) != shape:
        raise ValueError(
            f"{name}: {what} must have the shape of this layer's output {shape}, got "
            f"{what} of shape {tuple(dy.shape)} (no broadcasting in backward)"
        )
    if floating and not _is_floating(dy.dtype):
        raise ValueError(
            f"{name}: {what} must be floating point (it is the cotangent of a float "
            f"output of shape {shape}), got dtype {dy.dtype}"
        )


class Like(NamedTuple):
    """What a cotangent must match, statically: the output's shape and whether it is
    floating point (an integer output's cotangent may be ``None``). Hashable, so a tree
    of them travels in a cache as :class:`funcnn.core.Static` metadata."""

    shape: Shape
    floating: bool


def like(tree):
    """The :class:`Like` tree of an array or a (nested) tuple or list of arrays."""
    if isinstance(tree, (tuple, list)):
        return tuple(like(t) for t in tree)
    return Like(tuple(tree.shape), _is_floating(tree.dtype))


def _describe_like(tree) -> str:
    if isinstance(tree, Like):
        return str(tree.shape)
    return "(" + ", ".join(_describe_like(t) for t in tree) + ("," if len(tree) == 1 else "") + ")"


def check_cotangent_tree(name: str, dy, expected, *, what: str = "dy") -> None:
    """:func:`check_cotangent` for an output that is a (nested) tuple of arrays.

    ``expected`` is the output's :func:`like` tree; ``dy`` must have its structure (a
    tuple of the same length at every level) and each leaf its shape. ``ValueError``
    otherwise, naming the position (``dy[1]``) and both shapes.
    """
    if isinstance(expected, Like):
        check_cotangent(name, dy, expected.shape, what=what, floating=expected.floating)
        return
    if not isinstance(dy, (tuple, list)) or len(dy) != len(expected):
        raise ValueError(
            f"{name}: {what} must be a tuple of {len(expected)} cotangents, one per output "
            f"(output shapes {_describe_like(expected)}), got {describe(dy)}"
        )
    for i, (d, e) in enumerate(zip(dy, expected, strict=True)):
        check_cotangent_tree(name, d, e, what=f"{what}[{i}]")


def check_children(name: str, what: str, values, n: int) -> None:
    """Check that a multi-input (or multi-output cotangent) value is a tuple/list of ``n``.

    ``ValueError`` otherwise: the number and nesting of values is structure, and a wrong
    structure is a wrong value (see the policy above).
    """
    if not isinstance(values, (tuple, list)) or len(values) != n:
        got = (
            f"{type(values).__name__} of length {len(values)}"
            if isinstance(values, (tuple, list))
            else describe(values)
        )
        raise ValueError(f"{name}: expected a tuple of {n} {what}, got {got}")


def check_ctx(name: str, ctx) -> None:
    """A wide layer's ``ctx`` must be a :class:`funcnn.core.Ctx` (``TypeError`` otherwise,
    e.g. for ``None``: eval mode is ``Ctx()``, train mode ``Ctx(key=key, train=True)``)."""
    from funcnn.core import Ctx  # funcnn.core imports this module

    if not isinstance(ctx, Ctx):
        raise TypeError(
            f"{name}: ctx must be a funcnn.Ctx: Ctx(key=key, train=True) to train, Ctx() "
            f"to evaluate; got {describe(ctx)}"
        )


# --- params and state --------------------------------------------------------------------


def check_no_params(name: str, params) -> None:
    """Parameter-free layers take ``params == ()`` (``TypeError`` otherwise)."""
    if not (isinstance(params, tuple) and params == ()):
        raise TypeError(
            f"{name}: this layer has no parameters; params must be (), got {describe(params)}"
        )


def check_param_tree(
    name: str, params, ranks: dict[str, int | None], *, what: str = "params"
) -> dict[str, Shape]:
    """Are these the params (or the state) this layer's ``init`` made? Return their shapes.

    ``params`` must be a dict with exactly the keys of ``ranks``, each an array with that
    many axes (``None``: any). ``TypeError`` for another container, other keys or a
    non-array leaf; ``ValueError`` for a wrong rank. Layers call this first, read the
    sizes the params were made for from the returned shapes, and then compare the input
    against them.
    """
    keys = sorted(ranks)
    if not isinstance(params, dict) or set(params) != set(ranks):
        raise TypeError(
            f"{name}: {what} must be a dict with keys {keys} (as made by this layer's "
            f"init), got {describe(params)}"
        )
    shapes = {}
    for key in keys:
        leaf = params[key]
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise TypeError(f"{name}: {what}[{key!r}] must be an array, got {describe(leaf)}")
        if ranks[key] is not None and leaf.ndim != ranks[key]:
            raise ValueError(
                f"{name}: {what}[{key!r}] must have {ranks[key]} axes (as made by this "
                f"layer's init), got shape {tuple(leaf.shape)}"
            )
        shapes[key] = tuple(leaf.shape)
    return shapes


def check_params(name: str, params, expected: dict[str, Shape], *, what: str = "params") -> None:
    """Check that ``params`` is a dict with exactly the expected keys and shapes.

    ``expected`` maps each key to its shape. ``TypeError`` for a wrong structure (see
    :func:`check_param_tree`), ``ValueError`` for a wrong shape, naming the key and both
    shapes.
    """
    check_param_tree(name, params, dict.fromkeys(expected), what=what)
    for key, shape in expected.items():
        got = tuple(params[key].shape)
        if got != tuple(shape):
            raise ValueError(
                f"{name}: {what}[{key!r}] must have shape {tuple(shape)} for this input, got {got}"
            )
