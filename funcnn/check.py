"""Check a layer's hand-written backward against ``jax.vjp`` and finite differences.

This is the tool to use on a layer you wrote yourself::

    report = check_layer(my_layer(), (4, 3))   # raises AssertionError on a mismatch
    print(report)                               # per-leaf errors

Everything runs in float64. For each leaf of ``x`` and ``params`` the report gives:

* the largest absolute and relative difference between your gradient and the one
  ``jax.vjp`` derives from your *forward* (so it checks backward against forward), and
* a central finite difference of ``L(theta) = <forward(theta), dy>`` along a random
  direction ``v``: ``(L(theta + eps v) - L(theta - eps v)) / (2 eps)``, which must equal
  ``<grad, v>``. This one needs no autodiff at all, so it also catches a forward that
  ``jax.vjp`` differentiates "correctly" but that is not the function you meant.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.core import Ctx, Layer, apply_layer, init_layer

_FLOAT64 = jnp.float64


@dataclasses.dataclass(frozen=True)
class LeafError:
    """Errors for one gradient leaf, e.g. ``x`` or ``params[0]['w']``."""

    path: str
    shape: tuple[int, ...]
    vjp_abs: float  # max |ours - jax.vjp|
    vjp_rel: float  # vjp_abs / max |jax.vjp|
    fd_rel: float  # worst |fd - <grad, v>| / max(|fd|, |<grad, v>|) over the directions
    ok: bool


@dataclasses.dataclass(frozen=True)
class GradReport:
    """The result of :func:`check_grads`: one :class:`LeafError` per gradient leaf."""

    layer: str
    leaves: tuple[LeafError, ...]
    output_abs: float  # max |forward - jit(forward)|, or 0.0 when jit was not checked
    problems: tuple[str, ...]  # structural problems (wrong tree, shape or dtype)

    @property
    def ok(self) -> bool:
        return not self.problems and all(leaf.ok for leaf in self.leaves)

    def __str__(self) -> str:
        width = max([len(leaf.path) for leaf in self.leaves] + [4])
        lines = [
            f"gradient check of {self.layer}: {'OK' if self.ok else 'FAILED'}",
            f"  {'leaf':<{width}}  {'shape':<16} {'vjp abs':>10} {'vjp rel':>10} {'fd rel':>10}",
        ]
        for leaf in self.leaves:
            mark = "" if leaf.ok else "   <-- mismatch"
            lines.append(
                f"  {leaf.path:<{width}}  {leaf.shape!s:<16} {leaf.vjp_abs:10.2e} "
                f"{leaf.vjp_rel:10.2e} {leaf.fd_rel:10.2e}{mark}"
            )
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def _is_float(a) -> bool:
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)


def _to_float64(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, _FLOAT64) if _is_float(a) else a, tree)


def _random_like(key, tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return treedef.unflatten(
        [jax.random.normal(k, jnp.shape(a), _FLOAT64) for k, a in zip(keys, leaves, strict=False)]
    )


def _vdot(a, b) -> jax.Array:
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return sum((jnp.vdot(u, v) for u, v in pairs), jnp.zeros((), _FLOAT64))


def _structure_problems(what: str, ours, ref) -> list[str]:
    """Compare tree structure, shapes and dtypes of a gradient with its reference."""
    s_ours, s_ref = jax.tree_util.tree_structure(ours), jax.tree_util.tree_structure(ref)
    if s_ours != s_ref:
        return [f"{what} has tree structure {s_ours}, expected {s_ref}"]
    problems = []
    paths = jax.tree_util.tree_flatten_with_path(ref)[0]
    for (path, r), o in zip(paths, jax.tree_util.tree_leaves(ours), strict=True):
        name = what + jax.tree_util.keystr(path)
        if jnp.shape(o) != jnp.shape(r):
            problems.append(f"{name} has shape {jnp.shape(o)}, expected {jnp.shape(r)}")
        elif jnp.result_type(o) != jnp.result_type(r):
            problems.append(f"{name} has dtype {jnp.result_type(o)}, expected {jnp.result_type(r)}")
    return problems


def check_grads(
    layer: Layer,
    params,
    x,
    *,
    state=(),
    ctx: Ctx | None = None,
    key=None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    fd_eps: float = 1e-6,
    fd_rtol: float = 1e-5,
    fd_atol: float = 1e-8,
    fd_directions: int = 2,
    jit: bool = True,
    raise_on_error: bool = True,
) -> GradReport:
    """Compare ``layer.backward`` with ``jax.vjp`` of ``layer.forward`` and finite differences.

    Args:
      layer: the layer to check (pure or wide).
      params, x: explicit parameters and input. Float leaves are cast to float64;
        integer leaves (e.g. token ids) are kept and must get ``None`` as their ``dx``.
      state, ctx: for wide layers. ``ctx`` defaults to train mode with a fixed key, so
        random layers draw the same mask in every evaluation.
      key: PRNG key for the random cotangent and directions (default ``PRNGKey(0)``).
      rtol, atol: tolerance against ``jax.vjp``, as in ``numpy.allclose``.
      fd_eps, fd_rtol, fd_atol: step and tolerance of the finite-difference check.
      fd_directions: random directions tried per leaf.
      jit: run the layer's forward under ``jax.jit`` (and check it equals the eager one)
        and feed that cache to ``backward``.
      raise_on_error: raise ``AssertionError`` with the report when a check fails.

    Returns:
      A :class:`GradReport`; ``print`` it for a per-leaf table.
    """
    ctx = Ctx(jax.random.PRNGKey(1), True) if ctx is None else ctx
    key = jax.random.PRNGKey(0) if key is None else key
    with jax.enable_x64(True):
        params, x, state = _to_float64(params), _to_float64(x), _to_float64(state)
        report = _check(
            layer,
            params,
            x,
            state,
            ctx,
            key,
            fd_eps,
            fd_directions,
            jit,
            lambda mine, ref: bool(np.allclose(mine, ref, rtol=rtol, atol=atol)),
            lambda err, scale: err <= fd_atol + fd_rtol * scale,
        )
    if raise_on_error and not report.ok:
        raise AssertionError(str(report))
    return report


def _max_abs(tree) -> float:
    return max(
        (float(jnp.max(jnp.abs(a))) for a in jax.tree_util.tree_leaves(tree) if jnp.size(a)),
        default=0.0,
    )


def _check(
    layer, params, x, state, ctx, key, fd_eps, fd_directions, jit, vjp_close, fd_close
) -> GradReport:
    # Integer leaves of x (ids, labels) are not differentiated: close over them.
    x_float = jax.tree_util.tree_map(lambda a: a if _is_float(a) else None, x)
    has_float_x = bool(jax.tree_util.tree_leaves(x_float))

    def output(p, xf):
        merged = jax.tree_util.tree_map(
            lambda orig, f: orig if f is None else f, x, xf, is_leaf=lambda a: a is None
        )
        return apply_layer(layer, p, merged, state, ctx)[0]

    # 1. The code under test: forward (eager or jitted) and the hand-written backward.
    problems = []
    y, cache, _ = apply_layer(layer, params, x, state, ctx)
    output_abs = 0.0
    if jit:
        y_eager = y
        y, cache, _ = jax.jit(apply_layer, static_argnums=0)(layer, params, x, state, ctx)
        diff = jax.tree_util.tree_map(jnp.subtract, y, y_eager)
        output_abs = _max_abs(diff)
        if not vjp_close(output_abs, 0.0 * output_abs) and output_abs > 1e-12 * _max_abs(y):
            problems.append(f"jit(forward) differs from forward by {output_abs:.3e}")
    key_dy, key_fd = jax.random.split(key)
    dy = _random_like(key_dy, y)

    dx, dparams = layer.backward(params, cache, dy)

    # 2. The references: jax.vjp of the forward, and the central differences of
    #    L(theta) = <forward(theta), dy> along random directions per leaf. L is compiled
    #    once and evaluated at every shifted point (2 per direction per leaf).
    point = {"x": x_float, "params": params}
    flat_point, point_def = jax.tree_util.tree_flatten(point)
    keys = jax.random.split(key_fd, max(len(flat_point), 1))
    directions = [
        jax.random.normal(keys[i], (fd_directions, *jnp.shape(a)), _FLOAT64)
        for i, a in enumerate(flat_point)
    ]

    @jax.jit
    def vjp_reference(flat, dy):
        tree = point_def.unflatten(flat)
        y_ref, vjp_fn = jax.vjp(output, tree["params"], tree["x"])
        return (y_ref, *vjp_fn(dy))

    @jax.jit
    def loss_at(flat):
        tree = point_def.unflatten(flat)
        return _vdot(output(tree["params"], tree["x"]), dy)

    def shifted(i, delta):
        return [a + delta if j == i else a for j, a in enumerate(flat_point)]

    y_ref, ref_dparams, ref_dx = vjp_reference(flat_point, dy)
    fd_values = [
        np.array(
            [
                float(loss_at(shifted(i, fd_eps * v)) - loss_at(shifted(i, -fd_eps * v)))
                / (2 * fd_eps)
                for v in directions[i]
            ]
        )
        for i in range(len(flat_point))
    ]
    problems += _structure_problems("y", y, y_ref)
    problems += _structure_problems("dparams", dparams, params)
    if has_float_x:
        problems += _structure_problems("dx", dx, ref_dx)
    elif dx is not None:
        problems.append(f"dx must be None for an integer input, got {type(dx).__name__}")
    if problems:
        return GradReport(layer.name, (), output_abs, tuple(problems))

    # 3. Compare leaf by leaf over {"x": dx, "params": dparams}.
    refs = {"x": ref_dx if has_float_x else None, "params": ref_dparams}
    flat_ref, _ = jax.tree_util.tree_flatten_with_path(refs)
    flat_ours = jax.tree_util.tree_leaves({"x": dx if has_float_x else None, "params": dparams})
    leaves = []
    for (path, ref), mine, dirs, fd in zip(flat_ref, flat_ours, directions, fd_values, strict=True):
        mine, ref = np.asarray(mine), np.asarray(ref)
        vjp_abs = float(np.max(np.abs(mine - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        vjp_rel = vjp_abs / scale if scale > 0 else vjp_abs
        analytic = np.tensordot(np.asarray(dirs), mine, axes=mine.ndim)
        err = np.abs(np.asarray(fd) - analytic)
        scales = np.maximum(np.abs(np.asarray(fd)), np.abs(analytic))
        fd_rel = float(np.max(err / np.maximum(scales, 1e-300)))
        fd_ok = all(fd_close(e, s) for e, s in zip(err, scales, strict=True))
        ok = vjp_close(mine, ref) and fd_ok and math.isfinite(vjp_abs)
        name = path[0].key + jax.tree_util.keystr(path[1:])
        leaves.append(LeafError(name, ref.shape, vjp_abs, vjp_rel, fd_rel, ok))
    return GradReport(layer.name, tuple(leaves), output_abs, tuple(problems))


def check_layer(
    layer: Layer,
    input_shape,
    *,
    key=None,
    x=None,
    train: bool = True,
    **kwargs,
) -> GradReport:
    """Initialize ``layer`` for ``input_shape`` and run :func:`check_grads` on random data.

    Args:
      layer: the layer to check.
      input_shape: the shape passed to ``init`` (a tuple of shapes for multi-input layers).
      key: PRNG key for params, input, cotangent and directions (default ``PRNGKey(0)``).
      x: an explicit input (e.g. integer ids); by default standard-normal float64 data.
      train: the mode for wide layers.
      **kwargs: passed on to :func:`check_grads` (tolerances, ``jit``, ...).

    Also checks that ``init``'s output shape equals the shape of the real output.

    >>> import funcnn as fn
    >>> print(fn.check.check_layer(fn.dense(3), (4, 2)))  # doctest: +ELLIPSIS
    gradient check of dense: OK
    ...
    """
    key = jax.random.PRNGKey(0) if key is None else key
    k_init, k_x, k_ctx, k_check = jax.random.split(key, 4)
    with jax.enable_x64(True):
        params, state, out_shape = init_layer(layer, k_init, input_shape)
        if x is None:
            x = _random_like(k_x, _shape_tree(input_shape))
        ctx = Ctx(k_ctx, train)
        y = apply_layer(layer, _to_float64(params), _to_float64(x), _to_float64(state), ctx)[0]
    actual = jax.tree_util.tree_map(lambda a: tuple(a.shape), y)
    if _as_tuples(actual) != _as_tuples(out_shape):
        raise AssertionError(
            f"{layer.name}: init says the output shape is {out_shape}, forward produced {actual}"
        )
    return check_grads(layer, params, x, state=state, ctx=ctx, key=k_check, **kwargs)


def _shape_tree(input_shape):
    """Turn a shape or nested tuple of shapes into a tree of zero arrays (for random_like)."""
    if all(isinstance(d, int) for d in input_shape):
        return jnp.zeros(input_shape, _FLOAT64)
    return tuple(_shape_tree(s) for s in input_shape)


def _as_tuples(shapes):
    if isinstance(shapes, (tuple, list)) and all(isinstance(d, int) for d in shapes):
        return tuple(shapes)
    return tuple(_as_tuples(s) for s in shapes)
