"""The layer contract: `Layer`, `Ctx`, `Static`, and lifting pure layers to the wide form.

A layer is an immutable value holding pure functions. There are two forms:

* **pure** (``layer.wide is False``)::

      init(key, input_shape)        -> (params, output_shape)
      forward(params, x)            -> (y, cache)
      backward(params, cache, dy)   -> (dx, dparams)

* **wide** (``layer.wide is True``), for layers with randomness or running state::

      init(key, input_shape)        -> (params, state, output_shape)
      forward(params, x, state, ctx) -> (y, cache, new_state)
      backward(params, cache, dy)   -> (dx, dparams)

``backward`` has the same signature in both forms: everything it needs (a dropout
mask, batch statistics, the mode) travels in ``cache``. A pure layer lifted to the
wide form (:func:`as_wide`) has ``state == ()`` and ignores ``ctx``.

Caches hold arrays only, plus static metadata wrapped in :class:`Static`, so
``jax.jit(forward)`` can return a cache that ``backward`` consumes later.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The argument checks live in funcnn.validation (one module, one exception policy); they
# stay importable from here, where layers have always found them.
from funcnn.validation import (  # noqa: F401
    check_array,
    check_children,
    check_ctx,
    check_float,
    check_input_shape,
    check_no_params,
    check_param_tree,
    check_params,
    check_positive_int,
    describe,
    is_shape,
)

Array = jax.Array
PyTree = Any
Shape = tuple[int, ...]
# A shape, or a (possibly nested) tuple of shapes for layers with several inputs or outputs.
ShapeTree = Any


@dataclasses.dataclass(frozen=True)
class Ctx:
    """Per-call context of wide layers: a PRNG key and the train/eval mode.

    ``key`` is a pytree leaf (a raw ``jax.random.PRNGKey`` array, a typed
    ``jax.random.key``, or ``None``); ``train`` is static metadata, so switching
    it recompiles instead of becoming a traced boolean.

    Write both by name, ``Ctx(key=key, train=True)``: a bool where the key belongs
    (``Ctx(True)``, which would read as "key True, eval mode") and a ``train`` that is
    not a bool raise a ``TypeError``.
    """

    key: Array | None = None
    train: bool = False

    def __post_init__(self):
        # JAX rebuilds a Ctx from its leaves (arrays, tracers, placeholders) when it
        # traces; a Python bool is never one of them, so refusing it is safe.
        if isinstance(self.key, (bool, np.bool_)):
            raise TypeError(
                f"Ctx: key must be a PRNG key or None, got {self.key!r}: pass the mode by "
                f"name, Ctx(train={self.key!r}) or Ctx(key=key, train={self.key!r})"
            )
        if not isinstance(self.train, (bool, np.bool_)):
            raise TypeError(
                f"Ctx: train must be a bool (a static mode: True to train, False to "
                f"evaluate), got {describe(self.train)}"
            )

    def child(self, i: int) -> Ctx:
        """The context handed to the ``i``-th child of a combinator (key folded with ``i``)."""
        key = None if self.key is None else jax.random.fold_in(self.key, i)
        return Ctx(key=key, train=self.train)


jax.tree_util.register_dataclass(Ctx, data_fields=["key"], meta_fields=["train"])


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Static:
    """Static (hashable, non-array) metadata carried inside a cache, e.g. an input shape.

    It is a pytree node with no leaves, so it passes through ``jax.jit`` outputs unchanged.
    """

    value: Any


def pack_uints(values, bits: int) -> tuple[jnp.ndarray, Static]:
    """Store an array of small non-negative integers (or booleans) in ``bits`` bits each.

    ``bits`` is 1, 2, 4 or 8 and every value must be below ``2 ** bits``; ``8 // bits``
    values share a byte. Returns ``(packed, Static((shape, bits)))``, a cache entry that
    :func:`unpack_uints` reads back.

    Besides the bytes saved, packing is a reduction, so a jit-compiled step writes the
    packed bytes out once: elementwise code that computed the values cannot be fused
    into (and recomputed by) every consumer in the backward pass.
    """
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"pack_uints: bits must be 1, 2, 4 or 8, got {bits!r}")
    per_byte = 8 // bits
    flat = jnp.ravel(values).astype(jnp.uint8)
    flat = jnp.pad(flat, (0, -flat.size % per_byte)).reshape(-1, per_byte)
    shifts = np.arange(per_byte, dtype=np.uint8) * np.uint8(bits)
    packed = jnp.sum(flat << shifts[None, :], axis=1, dtype=jnp.uint8)  # disjoint bits: sum == or
    return packed, Static((tuple(values.shape), bits))


def unpack_uints(packed, dtype=jnp.uint8) -> jnp.ndarray:
    """The inverse of :func:`pack_uints`: an array of the original shape, as ``dtype``.

    Value ``i`` of a byte holds its bit ``j`` at position ``i * bits + j``. Each value is
    reassembled as a sum over its bits, a reduction, so XLA writes the unpacked array out
    once rather than redoing the shifts inside every loop that reads it (for example each
    of the shifted reads of an overlapping max-pool backward). One-bit values need no
    reassembly and stay fused into their consumer.
    """
    data, meta = packed
    shape, bits = meta.value
    per_byte = 8 // bits
    positions = np.arange(8, dtype=np.int32).reshape(1, per_byte, bits)
    bit_values = (data.astype(jnp.int32)[:, None, None] >> positions) & 1
    weights = (np.int32(1) << np.arange(bits, dtype=np.int32)).reshape(1, 1, bits)
    values = jnp.sum(bit_values * weights, axis=2)
    return values.reshape(-1)[: math.prod(shape)].reshape(shape).astype(dtype)


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer: ``init``, ``forward`` and ``backward`` pure functions plus a name.

    Attributes:
      init: ``(key, input_shape) -> (params, output_shape)``, or
        ``(params, state, output_shape)`` when ``wide``.
      forward: ``(params, x) -> (y, cache)``, or
        ``(params, x, state, ctx) -> (y, cache, new_state)`` when ``wide``.
      backward: ``(params, cache, dy) -> (dx, dparams)``; ``dparams`` mirrors ``params``.
      name: a short name used in error messages and summaries.
      wide: whether ``init``/``forward`` use the wide (state, ctx) form.
      children: the child layers of a combinator, for :func:`funcnn.summary`.
    """

    init: Callable[..., Any]
    forward: Callable[..., Any]
    backward: Callable[..., Any]
    name: str
    wide: bool = False
    children: tuple[Layer, ...] = ()

    def __repr__(self) -> str:
        form = "wide" if self.wide else "pure"
        inner = f" [{', '.join(c.name for c in self.children)}]" if self.children else ""
        return f"Layer({self.name!r}, {form}{inner})"


@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss: a pair of pure functions and a name.

    Attributes:
      forward: ``(pred, target) -> (loss, cache)``; ``loss`` is a scalar.
      backward: ``(cache, dloss=1.0) -> dpred``. Targets get no gradient.
      name: used in error messages.
    """

    forward: Callable[..., Any]
    backward: Callable[..., Any]
    name: str

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


def as_wide(layer: Layer) -> Layer:
    """Lift a pure layer to the wide form: empty state ``()``, ``ctx`` ignored.

    A wide layer is returned unchanged. ``backward`` is shared as it is.
    """
    if layer.wide:
        return layer

    def init(key, input_shape):
        params, output_shape = layer.init(key, input_shape)
        return params, (), output_shape

    def forward(params, x, state, ctx):
        y, cache = layer.forward(params, x)
        return y, cache, state

    return dataclasses.replace(layer, init=init, forward=forward, wide=True)


def init_layer(layer: Layer, key: Array, input_shape: ShapeTree):
    """Initialize any layer in the wide form: returns ``(params, state, output_shape)``.

    For a pure layer ``state`` is ``()``. Useful for code that handles both forms.
    """
    return as_wide(layer).init(key, input_shape)


def apply_layer(layer: Layer, params, x, state=(), ctx: Ctx | None = None):
    """Run any layer's forward in the wide form: returns ``(y, cache, new_state)``."""
    return as_wide(layer).forward(params, x, state, Ctx() if ctx is None else ctx)


def wide_reason(layer: Layer) -> str:
    """Which child makes ``layer`` wide, as a path, e.g. ``"sequential[1] (dropout)"``.

    Walks the children of combinators to the first wide layer that is not made wide by a
    child of its own (dropout, batchnorm, a user's wide layer). Used in error messages
    that tell a user which form a model has and why.
    """
    if not layer.wide:
        return f"{layer.name} is pure"
    path, node = [], layer
    while True:
        wide = [(i, c) for i, c in enumerate(node.children) if c.wide]
        if not wide:
            break
        i, child = wide[0]
        path.append(f"{node.name}[{i}]")
        node = child
    where = " > ".join(path)
    return f"{where} is {node.name}" if path else f"{node.name} is a wide layer"


_MISSING = object()


def wide_call_help(model: Layer) -> str:
    """The error message for a wide model called in the pure form: why, and what to call."""
    return (
        f"{model.name}: this model is wide ({wide_reason(model)}, which takes a state and a "
        f"Ctx): call forward(params, x, state, ctx) -> (y, cache, new_state), e.g. "
        f"fn.apply_layer(model, params, x, state, fn.Ctx(key=key, train=True)); "
        f"fn.predict(model, params, x, state) gives the output alone (eval mode). Its init "
        f"returns (params, state, output_shape); fn.init_layer(model, key, shape) has that "
        f"form for every model, and fn.train.init_train_state(model, optimizer, key, shape) "
        f"gives a TrainState whose train step is the same for pure and wide models."
    )


def make_combinator(
    name: str,
    children: Sequence[Layer],
    init: Callable[..., Any],
    forward: Callable[..., Any],
    backward: Callable[..., Any],
    empty_state: PyTree = None,
) -> Layer:
    """Build a combinator from its wide-form functions, narrowing it when all children are pure.

    ``init`` and ``forward`` are written once, in the wide form, against children that
    have been lifted with :func:`as_wide` (the caller lifts them). If no child is wide the
    combinator is exposed in the pure form: its state is a tuple of ``()``, which is
    supplied here and dropped again, so pure models keep the two-argument forward.
    ``empty_state`` is that all-``()`` state (default: a tuple with one ``()`` per child).
    """
    children = tuple(children)
    if any(child.wide for child in children):

        def wide_forward(params, x, state=_MISSING, ctx=_MISSING):
            if state is _MISSING or ctx is _MISSING:
                model = Layer(init, forward, backward, name, True, children)
                raise TypeError(wide_call_help(model))
            check_ctx(name, ctx)
            return forward(params, x, state, ctx)

        return Layer(init, wide_forward, backward, name=name, wide=True, children=children)

    if empty_state is None:
        empty_state = tuple(() for _ in children)

    def pure_init(key, input_shape):
        params, _, output_shape = init(key, input_shape)
        return params, output_shape

    def pure_forward(params, x, *extra):
        if extra:
            raise TypeError(
                f"{name}: this model is pure (no child is wide): call forward(params, x) -> "
                f"(y, cache), got {2 + len(extra)} arguments. For code that handles both "
                f"forms, fn.apply_layer(model, params, x, state, ctx) runs any model in the "
                f"wide form (state () for a pure model)."
            )
        y, cache, _ = forward(params, x, empty_state, Ctx())
        return y, cache

    return Layer(pure_init, pure_forward, backward, name=name, wide=False, children=children)


def along_last_axis(v: Array, ndim: int) -> Array:
    """View a ``(d,)`` vector as ``(1, ..., 1, d)`` with ``ndim`` axes.

    Library code broadcasts explicitly (the tests run with rank promotion raising), so a
    bias or a per-feature statistic is reshaped to the input's rank before it is added.
    """
    return v.reshape((1,) * (ndim - 1) + v.shape)


def fold_leading_axes(a: Array) -> Array:
    """Fold every axis but the last into one: ``(..., d) -> (m, d)``, so that a sum over
    batch (and sequence, spatial) positions is one matrix product or one column sum."""
    return a.reshape(-1, a.shape[-1])
