"""Combinators: layers made of layers.

Every combinator is itself a :class:`~funcnn.core.Layer`. Its params, state and cache are
containers with one entry per child (a tuple, or a dict keyed by node name for
:func:`graph`). The chain rule decides each backward:

* ``sequential``: walk the children in reverse, feeding each one's ``dx`` to the previous.
* ``fan_out``: one value feeds ``n`` consumers, so the cotangents coming back are **summed**.
* ``fan_in_sum``: ``y = x_1 + ... + x_n``, so every input receives ``dy`` itself.
* ``fan_in_concat``: the inputs sit side by side in ``y``, so ``dy`` is split back.
* ``parallel``: independent branches; each branch's backward runs on its own slice.

Combinators are written once in the wide form (``state``, ``ctx``) and exposed in the
pure form when all their children are pure (see :func:`~funcnn.core.make_combinator`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from funcnn.core import (
    Ctx,
    Layer,
    Static,
    as_wide,
    check_children,
    check_input_shape,
    check_no_params,
    make_combinator,
)


@contextlib.contextmanager
def _inside(combinator: str, where: str, layer: Layer):
    """Prefix errors raised by a child with where it sits, e.g. ``sequential[2] (dense): ...``."""
    try:
        yield
    except (ValueError, TypeError) as err:
        raise type(err)(f"{combinator}[{where}] ({layer.name}): {err}") from err


# funcnn.summary sets this to a _CallTree while it traces a model, to see every child call.
_recorder: _CallTree | None = None


class _CallTree:
    """The child calls of one ``init`` or ``forward``, nested as the combinators nest them:
    each node is ``{"where", "layer", "out", "children"}``."""

    def __init__(self):
        self.root = {"children": []}
        self._stack = [self.root]

    def enter(self, where: str, layer: Layer) -> dict:
        node = {"where": where, "layer": layer, "children": []}
        self._stack[-1]["children"].append(node)
        self._stack.append(node)
        return node

    def leave(self):
        self._stack.pop()


@contextlib.contextmanager
def recording():
    """Record every child call made inside the block (for :func:`funcnn.summary`)."""
    global _recorder
    outer, _recorder = _recorder, _CallTree()
    try:
        yield _recorder
    finally:
        _recorder = outer


def _call_child(combinator: str, where, layer: Layer, method, *args):
    """``method(*args)`` for the child ``layer`` of ``combinator`` at position ``where``:
    its errors name that position, and an active :func:`recording` notes the call."""
    tree = _recorder
    node = None if tree is None else tree.enter(str(where), layer)
    try:
        with _inside(combinator, str(where), layer):
            out = method(*args)
    finally:
        if tree is not None:
            tree.leave()
    if node is not None:
        node["out"] = out
    return out


def _add(a, b):
    """Sum two cotangent trees; ``None`` (no gradient, e.g. an integer input) is the unit."""
    if a is None:
        return b
    if b is None:
        return a
    return jax.tree_util.tree_map(jnp.add, a, b)


def _check_tuple(name: str, what: str, value, n: int):
    # The structure of params/state/cache handed to a combinator must match its children.
    if not isinstance(value, tuple) or len(value) != n:
        got = f"tuple of length {len(value)}" if isinstance(value, tuple) else type(value).__name__
        raise TypeError(
            f"{name}: {what} must be a tuple with one entry per child ({n}), got {got}. "
            f"Use the {what} made by this layer's init."
        )


def _check_layers(name: str, layers) -> tuple[Layer, ...]:
    layers = tuple(layers)
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{name}: argument {i} must be a Layer, got {type(layer).__name__}")
    return layers


# --- sequential -----------------------------------------------------------------------


def sequential(*layers: Layer) -> Layer:
    """Run ``layers`` one after another: ``y = f_n(... f_2(f_1(x)))``.

    Params, state and cache are tuples with one entry per child. Each child gets the key
    ``fold_in(ctx.key, i)``.

    Backward (chain rule, children in reverse)::

        dy_n = dy;  dx_i, dparams_i = backward_i(params_i, cache_i, dy_i);  dy_{i-1} = dx_i

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> model = fn.sequential(fn.dense(8), fn.relu(), fn.dense(2))
    >>> params, out_shape = model.init(jax.random.PRNGKey(0), (4, 3))
    >>> out_shape
    (4, 2)
    >>> y, cache = model.forward(params, jnp.ones((4, 3)))
    >>> dx, grads = model.backward(params, cache, jnp.ones_like(y))
    >>> [sorted(g) for g in grads]
    [['b', 'w'], [], ['b', 'w']]
    """
    return _chain("sequential", layers)


def _chain(name: str, layers: Sequence[Layer]) -> Layer:
    layers = _check_layers(name, layers)
    n = len(layers)
    lifted = tuple(as_wide(layer) for layer in layers)

    def init(key, input_shape):
        keys = jax.random.split(key, n) if n else ()
        params, states, shape = [], [], input_shape
        for i, layer in enumerate(lifted):
            p, s, shape = _call_child(name, i, layer, layer.init, keys[i], shape)
            params.append(p)
            states.append(s)
        return tuple(params), tuple(states), shape

    def forward(params, x, state, ctx):
        _check_tuple(name, "params", params, n)
        _check_tuple(name, "state", state, n)
        caches, new_states = [], []
        for i, layer in enumerate(lifted):
            x, cache, s = _call_child(
                name, i, layer, layer.forward, params[i], x, state[i], ctx.child(i)
            )
            caches.append(cache)
            new_states.append(s)
        return x, tuple(caches), tuple(new_states)

    def backward(params, cache, dy):
        grads = [None] * n
        for i in reversed(range(n)):
            dy, grads[i] = layers[i].backward(params[i], cache[i], dy)
        return dy, tuple(grads)

    return make_combinator(name, layers, init, forward, backward)


# --- parallel branches ----------------------------------------------------------------


def parallel(*layers: Layer) -> Layer:
    """Apply ``layers[i]`` to ``x[i]``: a tuple of ``n`` inputs gives a tuple of ``n`` outputs.

    ``init`` takes a tuple of ``n`` input shapes and returns a tuple of output shapes.

    Backward: each branch independently, ``dx[i], dparams[i] = backward_i(..., dy[i])``.
    """
    layers = _check_layers("parallel", layers)
    n = len(layers)
    lifted = tuple(as_wide(layer) for layer in layers)

    def init(key, input_shape):
        check_children("parallel", "input shapes (one per branch)", input_shape, n)
        keys = jax.random.split(key, n)
        out = []
        for i, layer in enumerate(lifted):
            out.append(_call_child("parallel", i, layer, layer.init, keys[i], input_shape[i]))
        return tuple(o[0] for o in out), tuple(o[1] for o in out), tuple(o[2] for o in out)

    def forward(params, x, state, ctx):
        check_children("parallel", "inputs (one per branch)", x, n)
        _check_tuple("parallel", "params", params, n)
        _check_tuple("parallel", "state", state, n)
        out = []
        for i, layer in enumerate(lifted):
            out.append(
                _call_child(
                    "parallel", i, layer, layer.forward, params[i], x[i], state[i], ctx.child(i)
                )
            )
        return tuple(o[0] for o in out), tuple(o[1] for o in out), tuple(o[2] for o in out)

    def backward(params, cache, dy):
        grads = [layers[i].backward(params[i], cache[i], dy[i]) for i in range(n)]
        return tuple(g[0] for g in grads), tuple(g[1] for g in grads)

    return make_combinator("parallel", layers, init, forward, backward)


# --- fan-out and fan-in ---------------------------------------------------------------


def fan_out(n: int) -> Layer:
    """Copy the input to ``n`` outputs: ``x -> (x, ..., x)``.

    Backward: one value feeds ``n`` consumers, so their cotangents add up::

        dx = dy[0] + dy[1] + ... + dy[n-1]

    Cache: nothing.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"fan_out: n must be a positive int, got {n!r}")

    def init(key, input_shape):
        return (), (input_shape,) * n

    def forward(params, x):
        check_no_params("fan_out", params)
        return (x,) * n, ()

    def backward(params, cache, dy):
        check_children("fan_out", "cotangents", dy, n)
        dx = None
        for d in dy:
            dx = _add(dx, d)
        return dx, ()

    return Layer(init, forward, backward, name="fan_out")


def _check_fan_in(name: str, what: str, values, n: int | None):
    if n is not None:
        check_children(name, what, values, n)
    elif not isinstance(values, (tuple, list)) or len(values) < 1:
        raise ValueError(f"{name}: expected a non-empty tuple of {what}, got {values!r}")


def _shapes_of(name: str, x) -> tuple:
    return tuple(tuple(getattr(xi, "shape", ())) for xi in x)


def fan_in_sum(n: int | None = None) -> Layer:
    """Sum a tuple of same-shape inputs: ``y = x_1 + ... + x_n``.

    Args:
      n: the expected number of inputs; ``None`` accepts any number (at least one).

    Backward: ``dy/dx_i`` is the identity, so every input gets ``dy``: ``dx = (dy,) * n``.

    Shapes must agree exactly (no silent broadcasting). Cache: nothing.
    """

    def check(shapes):
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"fan_in_sum: all inputs must have the same shape, got {list(shapes)}")

    def init(key, input_shape):
        _check_fan_in("fan_in_sum", "input shapes", input_shape, n)
        shapes = tuple(check_input_shape("fan_in_sum", s, min_ndim=0) for s in input_shape)
        check(shapes)
        return (), shapes[0]

    def forward(params, x):
        check_no_params("fan_in_sum", params)
        _check_fan_in("fan_in_sum", "inputs", x, n)
        check(_shapes_of("fan_in_sum", x))
        y = x[0]
        for xi in x[1:]:
            y = y + xi
        return y, Static(len(x))

    def backward(params, cache, dy):
        return (dy,) * cache.value, ()

    return Layer(init, forward, backward, name="fan_in_sum")


def fan_in_concat(axis: int = -1, n: int | None = None) -> Layer:
    """Concatenate a tuple of inputs along ``axis``.

    Args:
      axis: the axis to join along (not the batch axis 0).
      n: the expected number of inputs; ``None`` accepts any number (at least one).

    Backward: each input occupies its own slice of ``y``, so ``dy`` is split at the same
    offsets: ``dx_i = dy[..., o_i : o_i + d_i, ...]``. Cache: the sizes ``d_i`` (static).
    """

    def check(shapes):
        ndim = len(shapes[0])
        if any(len(s) != ndim for s in shapes) or not -ndim <= axis < ndim or axis % ndim == 0:
            raise ValueError(
                f"fan_in_concat: inputs must share a rank with axis {axis} a non-batch axis, "
                f"got shapes {list(shapes)}"
            )
        ax = axis % ndim
        rest = [s[:ax] + s[ax + 1 :] for s in shapes]
        if any(r != rest[0] for r in rest):
            raise ValueError(
                f"fan_in_concat: inputs must agree on every axis but {axis}, got shapes "
                f"{list(shapes)}"
            )
        return ax

    def init(key, input_shape):
        _check_fan_in("fan_in_concat", "input shapes", input_shape, n)
        shapes = tuple(check_input_shape("fan_in_concat", s) for s in input_shape)
        ax = check(shapes)
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return (), tuple(out)

    def forward(params, x):
        check_no_params("fan_in_concat", params)
        _check_fan_in("fan_in_concat", "inputs", x, n)
        shapes = _shapes_of("fan_in_concat", x)
        ax = check(shapes)
        return jnp.concatenate(x, axis=ax), Static((ax, tuple(s[ax] for s in shapes)))

    def backward(params, cache, dy):
        ax, sizes = cache.value
        offsets = [sum(sizes[:i]) for i in range(1, len(sizes))]
        return tuple(jnp.split(dy, offsets, axis=ax)), ()

    return Layer(init, forward, backward, name="fan_in_concat")


# --- residual -------------------------------------------------------------------------


def residual(layer: Layer) -> Layer:
    """Skip connection ``y = x + f(x)``, built from the fan-out/fan-in pieces::

        sequential(fan_out(2), parallel(f, identity()), fan_in_sum(2))

    Backward follows from its parts: ``dx = dy + df^T(dy)`` (fan-in copies ``dy`` to both
    branches, fan-out sums what comes back). ``f`` must preserve the shape.
    """
    from funcnn.layers.activations import identity

    return _chain("residual", (fan_out(2), parallel(layer, identity()), fan_in_sum(2)))


# --- recompute ------------------------------------------------------------------------


def remat(layer: Layer) -> Layer:
    """Recompute instead of remembering: cache only the input, rerun ``layer`` in backward.

    ``y = f(x)`` as ``layer`` computes it, with the same params and state (no extra nesting:
    ``remat(f)``'s params *are* ``f``'s params). The forward throws the child's cache away
    and keeps ``(x, state, ctx)``; the backward first reruns the child's forward on them,
    which rebuilds exactly the cache the child would have kept (dropout draws the same mask
    from the same key, batchnorm the same batch statistics), then runs the child's
    backward::

        forward:  y, _ = f.forward(params, x)            cache: x (and the input state, ctx)
        backward: _, c = f.forward(params, x);  dx, dparams = f.backward(params, c, dy)

    The gradients are the child's, bit for bit; the cost is one more forward of ``f``. Use
    it on blocks whose cache is much larger than their input (deep MLPs, transformer
    blocks). Inside one compiled step the recomputation is tied to ``dy`` with
    ``lax.optimization_barrier``, so XLA cannot merge it with the first forward (which
    would keep the child's cache alive after all).

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> block = fn.sequential(fn.dense(64), fn.tanh(), fn.dense(8))
    >>> params, _ = fn.remat(block).init(jax.random.PRNGKey(0), (4, 8))
    >>> y, cache = fn.remat(block).forward(params, jnp.ones((4, 8)))
    >>> [leaf.shape for leaf in jax.tree_util.tree_leaves(cache)]  # only the input
    [(4, 8)]
    """
    (layer,) = _check_layers("remat", (layer,))
    wide = as_wide(layer)

    def init(key, input_shape):
        return _call_child("remat", 0, layer, wide.init, key, input_shape)

    def forward(params, x, state, ctx):
        y, _, new_state = _call_child("remat", 0, layer, wide.forward, params, x, state, ctx)
        return y, (x, state, ctx), new_state

    def backward(params, cache, dy):
        x, state, ctx = cache
        x, params, state, dy = jax.lax.optimization_barrier((x, params, state, dy))
        _, child_cache, _ = wide.forward(params, x, state, ctx)
        return layer.backward(params, child_cache, dy)

    if layer.wide:
        return Layer(init, forward, backward, name="remat", wide=True, children=(layer,))

    def pure_init(key, input_shape):
        params, _, output_shape = init(key, input_shape)
        return params, output_shape

    def pure_forward(params, x):
        y, cache, _ = forward(params, x, (), Ctx())
        return y, cache[0]

    def pure_backward(params, x, dy):
        return backward(params, (x, (), Ctx()), dy)

    return Layer(pure_init, pure_forward, pure_backward, name="remat", children=(layer,))


# --- general graphs -------------------------------------------------------------------

GRAPH_INPUT = "input"


def graph(nodes: Mapping[str, tuple], output: str | Sequence[str]) -> Layer:
    """A directed acyclic graph of layers in which any value may feed many nodes.

    Args:
      nodes: ``{name: (layer, inputs)}`` in an order where every node comes after its
        inputs. ``inputs`` is one name or a tuple of names; ``"input"`` is the graph's
        input. A tuple passes the layer a tuple of values (for ``fan_in_*``, ``parallel``).
      output: the name of the node whose value the graph returns, or a tuple of names.

    Params, state and cache are dicts keyed by node name.

    Backward: nodes in reverse order; each node's ``dy`` is the **sum** of the cotangents
    sent back by every consumer of its value (the fan-out rule), and the graph's ``dx`` is
    the sum over the consumers of ``"input"``.

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> g = fn.graph({
    ...     "h": (fn.dense(4), "input"),
    ...     "a": (fn.relu(), "h"),
    ...     "b": (fn.tanh(), "h"),
    ...     "out": (fn.fan_in_sum(), ("a", "b")),
    ... }, output="out")
    >>> params, shape = g.init(jax.random.PRNGKey(0), (2, 3))
    >>> shape
    (2, 4)
    """
    if not isinstance(nodes, Mapping) or not nodes:
        raise TypeError("graph: nodes must be a non-empty dict {name: (layer, inputs)}")
    names = list(nodes)
    if GRAPH_INPUT in nodes:
        raise ValueError(f"graph: {GRAPH_INPUT!r} is reserved for the graph input")
    sources: dict[str, tuple[str, ...]] = {}
    multi: dict[str, bool] = {}
    layers: dict[str, Layer] = {}
    defined = {GRAPH_INPUT}
    for name in names:
        spec = nodes[name]
        if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], Layer)):
            raise TypeError(f"graph: node {name!r} must be (layer, inputs), got {spec!r}")
        layer, inputs = spec
        multi[name] = not isinstance(inputs, str)
        srcs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        for src in srcs:
            if src not in defined:
                raise ValueError(
                    f"graph: node {name!r} reads {src!r}, which is not defined before it "
                    f"(defined so far: {sorted(defined)})"
                )
        sources[name], layers[name] = srcs, layer
        defined.add(name)
    outputs = (output,) if isinstance(output, str) else tuple(output)
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"graph: output names must be distinct, got {outputs}")
    for out in outputs:
        if out not in nodes:
            raise ValueError(f"graph: output {out!r} is not a node (nodes: {names})")
    used = set(outputs) | {src for srcs in sources.values() for src in srcs}
    unused = [name for name in names if name not in used]
    if unused:
        raise ValueError(f"graph: nodes {unused} feed nothing and are not outputs")
    lifted = {name: as_wide(layer) for name, layer in layers.items()}

    def gather(values, name):
        srcs = sources[name]
        return tuple(values[s] for s in srcs) if multi[name] else values[srcs[0]]

    def result(values):
        return values[output] if isinstance(output, str) else tuple(values[o] for o in outputs)

    def init(key, input_shape):
        shapes = {GRAPH_INPUT: input_shape}
        params, states = {}, {}
        for i, name in enumerate(names):
            params[name], states[name], shapes[name] = _call_child(
                "graph",
                name,
                layers[name],
                lifted[name].init,
                jax.random.fold_in(key, i),
                gather(shapes, name),
            )
        return params, states, result(shapes)

    def forward(params, x, state, ctx):
        values, caches, new_states = {GRAPH_INPUT: x}, {}, {}
        for i, name in enumerate(names):
            values[name], caches[name], new_states[name] = _call_child(
                "graph",
                name,
                layers[name],
                lifted[name].forward,
                params[name],
                gather(values, name),
                state[name],
                ctx.child(i),
            )
        return result(values), caches, new_states

    def backward(params, cache, dy):
        cotangents = dict(zip(outputs, (dy,) if isinstance(output, str) else dy, strict=True))
        grads = {}
        for name in reversed(names):
            dx, grads[name] = layers[name].backward(params[name], cache[name], cotangents[name])
            for src, d in zip(sources[name], dx if multi[name] else (dx,), strict=True):
                cotangents[src] = _add(cotangents.get(src), d)
        return cotangents.get(GRAPH_INPUT), grads

    return make_combinator(
        "graph",
        tuple(layers.values()),
        init,
        forward,
        backward,
        empty_state={name: () for name in names},
    )


__all__ = [
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "graph",
    "parallel",
    "remat",
    "residual",
    "sequential",
]
