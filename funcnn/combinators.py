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
import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from funcnn.core import Ctx, Layer, Static, as_wide, make_combinator
from funcnn.validation import (
    check_children,
    check_cotangent_tree,
    check_input_shape,
    check_int,
    check_no_params,
    check_positive_int,
    describe,
    like,
)


@contextlib.contextmanager
def _inside(combinator: str, where: str, layer: Layer):
    """Prefix errors raised by a child with where it sits, e.g. ``sequential[2] (dense): ...``.

    Used around every child call, ``init``, ``forward`` and ``backward`` alike, so a bad
    ``dy`` deep in a model names its path: ``sequential[1] (parallel): parallel[0]
    (dense): dense: dy must have the shape ...``.
    """
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


def _add(a, b, where: str = ""):
    """Sum two cotangent trees; ``None`` (no gradient, e.g. an integer input) is the unit.

    Both must have the same structure and shapes: a sum must never broadcast one into the
    other (``where`` names the value they belong to, for the error).
    """
    if a is None:
        return b
    if b is None:
        return a
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    shapes_a = [tuple(getattr(t, "shape", ())) for t in leaves_a]
    shapes_b = [tuple(getattr(t, "shape", ())) for t in leaves_b]
    if tree_a != tree_b or shapes_a != shapes_b:
        raise ValueError(
            f"{where}the cotangents to add up (one per consumer of a value) must have the "
            f"same shapes, got {describe(a)} and {describe(b)}"
        )
    return jax.tree_util.tree_map(jnp.add, a, b)


def _check_nodes(what: str, value, names, maker: str = "init"):
    """graph's params, state and cache are dicts keyed by node name."""
    if not isinstance(value, dict) or set(value) != set(names):
        error = ValueError if what == "cache" else TypeError
        raise error(
            f"graph: {what} must be a dict with one entry per node, keys {sorted(names)}, "
            f"got {describe(value)}. Use the {what} made by this graph's {maker}."
        )


def _check_tuple(name: str, what: str, value, n: int):
    # The structure of params/state/cache handed to a combinator must match its children:
    # params and state are what init made (TypeError, as for any layer's params), the
    # cache is what forward made (a wrong one is a wrong value: ValueError).
    if not isinstance(value, tuple) or len(value) != n:
        got = f"tuple of length {len(value)}" if isinstance(value, tuple) else type(value).__name__
        maker = "forward" if what == "cache" else "init"
        error = ValueError if what == "cache" else TypeError
        raise error(
            f"{name}: {what} must be a tuple with one entry per child ({n}), got {got}. "
            f"Use the {what} made by this layer's {maker}."
        )


def _check_layers(name: str, layers) -> tuple[Layer, ...]:
    layers = tuple(layers)
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{name}: argument {i} must be a Layer, got {type(layer).__name__}")
    return layers


# --- sequential -----------------------------------------------------------------------


def sequential(*layers: Layer, **named: Layer) -> Layer:
    """Run the children one after another: ``y = f_n(... f_2(f_1(x)))``.

    Children are given either by position, ``sequential(f, g)``, whose params, state and
    cache are tuples with one entry per child, or by name, ``sequential(encoder=f,
    head=g)``, whose params, state and cache are dicts keyed by those names: parameter
    paths then read ``params["encoder"]["w"]`` rather than ``params[0]["w"]``, and errors
    name the child (``sequential[encoder] (dense): ...``). Named children run in the order
    given, and ``init`` returns the dicts in that order (JAX's tree functions rebuild dicts
    with sorted keys; the order of execution never depends on that). The ``i``-th child
    gets the key ``fold_in(ctx.key, i)`` and the ``i``-th split of the init key in both
    forms, so naming the children does not change the numbers.

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
    >>> named = fn.sequential(encoder=fn.dense(8), act=fn.relu(), head=fn.dense(2))
    >>> params, _ = named.init(jax.random.PRNGKey(0), (4, 3))
    >>> list(params), params["head"]["w"].shape
    (['encoder', 'act', 'head'], (8, 2))
    """
    if layers and named:
        raise TypeError(
            "sequential: give the children either by position or by name, not both "
            f"(got {len(layers)} positional and {sorted(named)} named)"
        )
    if named:
        return _chain("sequential", tuple(named.values()), names=tuple(named))
    return _chain("sequential", layers)


def _chain(name: str, layers: Sequence[Layer], names: tuple[str, ...] | None = None) -> Layer:
    layers = _check_layers(name, layers) if names is None else _check_named(name, names, layers)
    n = len(layers)
    lifted = tuple(as_wide(layer) for layer in layers)
    labels = tuple(range(n)) if names is None else names

    def pack(values):  # a tuple by position, a dict by name
        return tuple(values) if names is None else dict(zip(names, values, strict=True))

    def check(what, value):
        if names is None:
            _check_tuple(name, what, value, n)
        elif not isinstance(value, dict) or list(value) != list(names):
            if isinstance(value, dict) and set(value) == set(names):
                return  # the same children, keys reordered (e.g. by a JAX tree function)
            got = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise TypeError(
                f"{name}: {what} must be a dict with one entry per named child "
                f"{list(names)}, got {got}. Use the {what} made by this layer's "
                f"{'forward' if what == 'cache' else 'init'}."
            )

    def init(key, input_shape):
        keys = jax.random.split(key, n) if n else ()
        params, states, shape = [], [], input_shape
        for i, layer in enumerate(lifted):
            p, s, shape = _call_child(name, labels[i], layer, layer.init, keys[i], shape)
            params.append(p)
            states.append(s)
        return pack(params), pack(states), shape

    def forward(params, x, state, ctx):
        check("params", params)
        check("state", state)
        if n == 0:  # the identity: its cache remembers what dy must look like
            return x, (Static(like(x)),), ()
        caches, new_states = [], []
        for i, layer in enumerate(lifted):
            at = labels[i]
            x, cache, s = _call_child(
                name, at, layer, layer.forward, params[at], x, state[at], ctx.child(i)
            )
            caches.append(cache)
            new_states.append(s)
        return x, pack(caches), pack(new_states)

    def backward(params, cache, dy):
        check("params", params)
        if n == 0:
            _check_tuple(name, "cache", cache, 1)
            check_cotangent_tree(name, dy, cache[0].value)
            return dy, ()
        check("cache", cache)
        grads = [None] * n
        for i in reversed(range(n)):
            at = labels[i]
            with _inside(name, str(at), layers[i]):
                dy, grads[i] = layers[i].backward(params[at], cache[at], dy)
        return dy, pack(grads)

    empty = None if names is None else {k: () for k in names}
    return make_combinator(name, layers, init, forward, backward, empty_state=empty)


def _check_named(name: str, names: tuple[str, ...], layers) -> tuple[Layer, ...]:
    layers = tuple(layers)
    for key, layer in zip(names, layers, strict=True):
        if not isinstance(layer, Layer):
            raise TypeError(f"{name}: child {key!r} must be a Layer, got {type(layer).__name__}")
    return layers


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
        _check_tuple("parallel", "params", params, n)
        _check_tuple("parallel", "cache", cache, n)
        check_children("parallel", "cotangents (one per branch)", dy, n)
        grads = []
        for i, layer in enumerate(layers):
            with _inside("parallel", str(i), layer):
                grads.append(layer.backward(params[i], cache[i], dy[i]))
        return tuple(g[0] for g in grads), tuple(g[1] for g in grads)

    return make_combinator("parallel", layers, init, forward, backward)


# --- fan-out and fan-in ---------------------------------------------------------------


def fan_out(n: int) -> Layer:
    """Copy the input to ``n`` outputs: ``x -> (x, ..., x)``.

    Backward: one value feeds ``n`` consumers, so their cotangents add up::

        dx = dy[0] + dy[1] + ... + dy[n-1]

    Cache: the input's shape (static, no array), which every ``dy[i]`` must have.
    """
    n = check_positive_int("fan_out", "n", n)

    def init(key, input_shape):
        return (), (input_shape,) * n

    def forward(params, x):
        check_no_params("fan_out", params)
        return (x,) * n, Static(like(x))

    def backward(params, cache, dy):
        check_no_params("fan_out", params)
        check_cotangent_tree("fan_out", dy, (cache.value,) * n)
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

    Shapes must agree exactly (no silent broadcasting). Cache: the number of inputs and
    the output shape (static, no array).
    """
    n = None if n is None else check_positive_int("fan_in_sum", "n (or None)", n)

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
        return y, Static((len(x), like(y)))

    def backward(params, cache, dy):
        check_no_params("fan_in_sum", params)
        count, expected = cache.value
        check_cotangent_tree("fan_in_sum", dy, expected)
        return (dy,) * count, ()

    return Layer(init, forward, backward, name="fan_in_sum")


def fan_in_concat(axis: int = -1, n: int | None = None) -> Layer:
    """Concatenate a tuple of inputs along ``axis``.

    Args:
      axis: the axis to join along (not the batch axis 0).
      n: the expected number of inputs; ``None`` accepts any number (at least one).

    Backward: each input occupies its own slice of ``y``, so ``dy`` is split at the same
    offsets: ``dx_i = dy[..., o_i : o_i + d_i, ...]``. Cache: the sizes ``d_i`` and the
    output shape (static).
    """
    axis = check_int("fan_in_concat", "axis", axis)
    if axis == 0:
        raise ValueError(
            "fan_in_concat: axis must not be the batch axis 0 (use a positive axis, or a "
            "negative one counted from the end), got 0"
        )
    n = None if n is None else check_positive_int("fan_in_concat", "n (or None)", n)

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
        y = jnp.concatenate(x, axis=ax)
        return y, Static((ax, tuple(s[ax] for s in shapes), like(y)))

    def backward(params, cache, dy):
        check_no_params("fan_in_concat", params)
        ax, sizes, expected = cache.value
        check_cotangent_tree("fan_in_concat", dy, expected)
        offsets = [sum(sizes[:i]) for i in range(1, len(sizes))]
        return tuple(jnp.split(dy, offsets, axis=ax)), ()

    return Layer(init, forward, backward, name="fan_in_concat")


# --- residual -------------------------------------------------------------------------


def residual(layer: Layer) -> Layer:
    """Skip connection ``y = x + f(x)``.

    ``residual(f)``'s params, state and cache are ``f``'s own (no extra nesting), so a
    checkpoint or a summary of it shows ``f``. ``f`` must preserve the shape (checked in
    ``init`` and ``forward``).

    Backward: ``x`` feeds both the sum and ``f`` (a fan-out), and the sum copies ``dy`` to
    both of its inputs (a fan-in), so::

        dx = dy + df^T(dy),   dparams = dparams_f(dy)

    The same as ``sequential(fan_out(2), parallel(f, identity()), fan_in_sum(2))``, with the
    params of ``f`` alone. Cache: ``f``'s.

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> block = fn.residual(fn.dense(3))
    >>> params, shape = block.init(jax.random.PRNGKey(0), (2, 3))
    >>> sorted(params), shape
    (['b', 'w'], (2, 3))
    """
    (layer,) = _check_layers("residual", (layer,))
    wide = as_wide(layer)

    def check(x_shape, y_shape):
        if tuple(y_shape) != tuple(x_shape):
            raise ValueError(
                f"residual: the wrapped layer ({layer.name}) must preserve the shape, got input "
                f"{tuple(x_shape)} -> output {tuple(y_shape)}"
            )

    def init(key, input_shape):
        params, state, out_shape = _call_child("residual", 0, layer, wide.init, key, input_shape)
        check(input_shape, out_shape)
        return params, state, out_shape

    def forward(params, x, state, ctx):
        fx, cache, new_state = _call_child(
            "residual", 0, layer, wide.forward, params, x, state, ctx
        )
        check(getattr(x, "shape", ()), getattr(fx, "shape", ()))
        return x + fx, cache, new_state

    def backward(params, cache, dy):
        with _inside("residual", "0", layer):
            dx, grads = layer.backward(params, cache, dy)
        return _add(dy, dx), grads

    return make_combinator("residual", (layer,), init, forward, backward, empty_state=())


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
        with _inside("remat", "0", layer):
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
        _check_nodes("params", params, names)
        _check_nodes("state", state, names)
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
        _check_nodes("params", params, names)
        _check_nodes("cache", cache, names, maker="forward")
        if isinstance(output, str):
            cotangents = {output: dy}
        else:
            what = f"cotangents (one per output {list(outputs)})"
            check_children("graph", what, dy, len(outputs))
            cotangents = dict(zip(outputs, dy, strict=True))
        grads = {}
        for name in reversed(names):
            with _inside("graph", name, layers[name]):
                dx, grads[name] = layers[name].backward(params[name], cache[name], cotangents[name])
                if multi[name]:
                    check_children(name, "input cotangents from backward", dx, len(sources[name]))
            for src, d in zip(sources[name], dx if multi[name] else (dx,), strict=True):
                where = f"graph: {src!r}: " if src != GRAPH_INPUT else "graph: the input: "
                cotangents[src] = _add(cotangents.get(src), d, where)
        return cotangents.get(GRAPH_INPUT), grads

    return make_combinator(
        "graph",
        tuple(layers.values()),
        init,
        forward,
        backward,
        empty_state={name: () for name in names},
    )


# --- weight tying ---------------------------------------------------------------------


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Tied:
    """The placeholder :func:`tied` puts where a shared parameter is used a second time.

    It is a pytree node without leaves (like :class:`~funcnn.core.Static`), so optimizers,
    ``funcnn.io`` and ``tree_map`` see the shared array once, at ``source``, and carry the
    placeholder along unchanged; the gradients hold one in the same place.
    """

    source: tuple


def _path_str(path) -> str:
    return "params" + "".join(f"[{p!r}]" for p in path)


def _check_path(what: str, path) -> tuple:
    if isinstance(path, (str, int)):
        path = (path,)
    if (
        not isinstance(path, (tuple, list))
        or not path
        or any(isinstance(p, bool) or not isinstance(p, (str, int)) for p in path)
        or any(isinstance(p, int) and p < 0 for p in path)
    ):
        raise TypeError(
            f"tied: a {what} path must be a non-empty tuple of dict keys and non-negative "
            f"tuple indices, e.g. ('tok', 'table') or (0, 'w'), got {path!r}"
        )
    return tuple(path)


def _get(tree, path, full_path=None):
    full_path = path if full_path is None else full_path
    node = tree
    for i, p in enumerate(path):
        ok = (isinstance(node, Mapping) and p in node) or (
            isinstance(node, (tuple, list)) and isinstance(p, int) and p < len(node)
        )
        if not ok:
            where = _path_str(full_path[:i])
            kind = (
                f"keys {sorted(node)}"
                if isinstance(node, Mapping)
                else f"{len(node)} entries"
                if isinstance(node, (tuple, list))
                else f"a {type(node).__name__}"
            )
            raise ValueError(
                f"tied: {_path_str(full_path)} does not exist: {where} has {kind}, no {p!r}"
            )
        node = node[p]
    return node


def _set(tree, path, value):
    """``tree`` with the subtree at ``path`` replaced (dicts and tuples are copied, never
    mutated)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, Mapping):
        return {**tree, head: _set(tree[head], rest, value)}
    items = list(tree)
    items[head] = _set(items[head], rest, value)
    return type(tree)(items) if not hasattr(tree, "_fields") else type(tree)(*items)


def _leaf_specs(tree):
    return jax.tree_util.tree_structure(tree), [
        (tuple(jnp.shape(a)), jnp.result_type(a)) for a in jax.tree_util.tree_leaves(tree)
    ]


def tied(layer: Layer, *ties) -> Layer:
    """Share one parameter between several places of ``layer``: weight tying.

    Args:
      layer: any layer or combinator.
      *ties: ``(source, target)`` pairs of paths into ``layer``'s params, each a tuple of
        dict keys and tuple indices (``("tok", "table")``, ``(0, "w")``). The parameter at
        ``source`` is also used at ``target``. A path may name a single array or a whole
        subtree (e.g. the params of a layer), and one source may have several targets.

    ``init`` runs ``layer.init`` and keeps the source's initial value: each target's entry
    becomes the placeholder ``Tied(source)``, a pytree node without leaves. The params
    are ``layer``'s (no extra nesting) with those placeholders, so an optimizer updates
    the shared array once and ``funcnn.io`` saves it once. The source and each target
    must have the same structure, shapes and dtypes.

    Forward: the source's value is put at every target and ``layer`` runs unchanged.

    Backward: the fan-out rule applied to a parameter. One array feeds several places, so
    its gradient is the **sum** of the gradients of its uses::

        dparams[source] = dsource + sum over targets of dtarget
        dparams[target] = Tied(source)

    Cache: ``layer``'s. The state (if ``layer`` is wide) is ``layer``'s too.

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> net = fn.sequential(fn.dense(3, b_init=fn.initializers.ones()), fn.dense(3))
    >>> model = fn.tied(net, ((0,), (1,)))  # both dense layers share w and b
    >>> params, _ = model.init(jax.random.PRNGKey(0), (2, 3))
    >>> params[1]
    Tied(source=(0,))
    >>> y, cache = model.forward(params, jnp.ones((2, 3)))
    >>> dx, grads = model.backward(params, cache, jnp.ones_like(y))
    >>> grads[1], grads[0]["b"].shape
    (Tied(source=(0,)), (3,))
    """
    name = "tied"
    if not isinstance(layer, Layer):
        raise TypeError(f"{name}: the first argument must be a Layer, got {type(layer).__name__}")
    if not ties:
        raise ValueError(f"{name}: give at least one (source, target) pair of param paths")
    pairs = []
    for tie in ties:
        if not isinstance(tie, (tuple, list)) or len(tie) != 2:
            raise TypeError(
                f"{name}: each tie must be a (source, target) pair of paths, got {tie!r}"
            )
        pairs.append((_check_path("source", tie[0]), _check_path("target", tie[1])))
    sources = {s for s, _ in pairs}
    targets = [t for _, t in pairs]
    for s, t in pairs:
        if s[: len(t)] == t or t[: len(s)] == s:
            raise ValueError(
                f"{name}: {_path_str(s)} and {_path_str(t)} overlap (one contains the other); "
                f"a parameter cannot be tied to a part of itself"
            )
    for i, t in enumerate(targets):
        for other in [*targets[:i], *sources]:
            if other[: len(t)] == t or t[: len(other)] == other:
                raise ValueError(
                    f"{name}: target {_path_str(t)} overlaps {_path_str(other)}, another "
                    f"source or target; tie every use to one source"
                )
    lifted = as_wide(layer)

    def fill(params):
        """The child's full params: each placeholder replaced by its source's value."""
        for s, t in pairs:
            found = _get(params, t)
            if not (isinstance(found, Tied) and found.source == s):
                raise TypeError(
                    f"{name}: {_path_str(t)} must hold the placeholder Tied({s!r}) made by "
                    f"this layer's init, got {found!r}"
                )
            params = _set(params, t, _get(params, s))
        return params

    def init(key, input_shape):
        params, state, out_shape = lifted.init(key, input_shape)
        for s, t in pairs:
            spec_s, spec_t = _leaf_specs(_get(params, s)), _leaf_specs(_get(params, t))
            if spec_s != spec_t:
                raise ValueError(
                    f"{name}: {_path_str(s)} and {_path_str(t)} must have the same structure, "
                    f"shapes and dtypes to be tied, got {spec_s[1]} and {spec_t[1]}"
                )
        for s, t in pairs:
            params = _set(params, t, Tied(s))
        return params, state, out_shape

    def forward(params, x, state, ctx):
        full = fill(params)
        with _inside(name, "0", layer):
            return lifted.forward(full, x, state, ctx)

    def backward(params, cache, dy):
        full = fill(params)
        with _inside(name, "0", layer):
            dx, grads = layer.backward(full, cache, dy)
        for s, t in pairs:
            total = jax.tree_util.tree_map(jnp.add, _get(grads, s), _get(grads, t))
            grads = _set(_set(grads, s, total), t, Tied(s))
        return dx, grads

    return make_combinator(name, (layer,), init, forward, backward, empty_state=())


__all__ = [
    "Tied",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "graph",
    "parallel",
    "remat",
    "residual",
    "sequential",
    "tied",
]
