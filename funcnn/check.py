"""Check a layer's hand-written backward against ``jax.vjp`` and finite differences.

This is the tool to use on a layer you wrote yourself::

    report = check_layer(my_layer(), (4, 3))   # raises AssertionError on a mismatch
    print(report)                               # per-leaf errors

Everything runs in float64, at **random params** by default: every floating leaf of
``params`` is replaced by random values of its shape (see :func:`random_params`), so a
backward that is only right because a scale starts at 1 or an offset at 0 is caught.
``at=("random", "init")`` checks at ``init``'s own params as well.

For each leaf of ``x`` and ``params`` the report gives two relative errors, both defined as

    rel = max |ours - ref| / max(max |ref|, floor)

* **vjp**: ``ours`` is your gradient, ``ref`` the one ``jax.vjp`` derives from your
  *forward* (elementwise), so it checks backward against forward;
* **fd**: ``ref`` is a central finite difference of ``L(theta) = <forward(theta), dy>``
  along a random direction ``v``, ``(L(theta + eps v) - L(theta - eps v)) / (2 eps)``, and
  ``ours`` is ``<grad, v>``. This one needs no autodiff at all, so it also catches a
  forward that ``jax.vjp`` differentiates "correctly" but that is not the function you
  meant.

The absolute ``floor`` (default ``1e-3``) keeps a leaf whose true gradient is zero from
showing an alarming relative error made of rounding noise.

The check also reports, in words, a gradient of the wrong structure, shape or dtype, a
``forward``/``backward`` that returns the wrong number of values, a forward that
hard-codes float32, and a backward that calls JAX's autodiff (``jax.grad``, ``jax.vjp``,
``custom_vjp``...) instead of being written by hand (a warning, or an error with
``autodiff="error"``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.core import Ctx, Layer, Static

_FLOAT64 = jnp.float64


class AutodiffInBackwardWarning(UserWarning):
    """A layer's backward calls JAX's autodiff instead of being written by hand."""


@dataclasses.dataclass(frozen=True)
class LeafError:
    """Errors for one gradient leaf, e.g. ``x`` or ``params[0]['w']``.

    Both relative errors are ``max |ours - ref| / max(max |ref|, floor)``.
    """

    path: str
    shape: tuple[int, ...]
    vjp_abs: float  # max |ours - jax.vjp|
    vjp_rel: float  # vjp_abs / max(max |jax.vjp|, floor)
    fd_rel: float  # max |<grad, v> - fd| / max(max |fd|, floor) over the directions
    ok: bool
    scale: float = 0.0  # max |jax.vjp|, the size of the true gradient
    fd_abs: float = 0.0  # max |<grad, v> - fd|


@dataclasses.dataclass(frozen=True)
class GradReport:
    """The result of :func:`check_grads`: one :class:`LeafError` per gradient leaf.

    ``at`` says which params were checked ("random params", "init params", "the given
    params"); ``also`` holds the reports of further points (``at=("random", "init")``).
    """

    layer: str
    leaves: tuple[LeafError, ...]
    output_abs: float  # max |forward - jit(forward)|, or 0.0 when jit was not checked
    problems: tuple[str, ...]  # structural problems (wrong tree, shape, dtype, arity)
    at: str = "the given params"
    notes: tuple[str, ...] = ()  # e.g. a backward that uses autodiff (when only warned)
    floor: tuple[float, float] = (1e-3, 1e-3)  # (vjp, fd)
    tolerance: tuple[float, float] = (1e-7, 1e-5)  # (vjp, fd)
    also: tuple[GradReport, ...] = ()

    @property
    def ok(self) -> bool:
        here = not self.problems and all(leaf.ok for leaf in self.leaves)
        return here and all(r.ok for r in self.also)

    def _section(self) -> list[str]:
        ok = not self.problems and all(leaf.ok for leaf in self.leaves)
        (f_vjp, f_fd), (t_vjp, t_fd) = self.floor, self.tolerance
        floor = f"{f_vjp:.0e}" if f_vjp == f_fd else f"{f_vjp:.0e} (vjp), {f_fd:.0e} (fd)"
        lines = [f"gradient check of {self.layer}: {'OK' if ok else 'FAILED'} at {self.at}"]
        if self.leaves:
            width = max([len(leaf.path) for leaf in self.leaves] + [4])
            lines += [
                f"  rel = max|ours - ref| / max(max|ref|, {floor}); "
                f"tolerance {t_vjp:.0e} (vjp), {t_fd:.0e} (fd)",
                f"  {'leaf':<{width}}  {'shape':<16} {'max|ref|':>10} {'vjp rel':>10} "
                f"{'fd rel':>10}",
            ]
        for leaf in self.leaves:
            mark = "" if leaf.ok else "   <-- mismatch"
            lines.append(
                f"  {leaf.path:<{width}}  {leaf.shape!s:<16} {leaf.scale:10.2e} "
                f"{leaf.vjp_rel:10.2e} {leaf.fd_rel:10.2e}{mark}"
            )
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return lines

    def __str__(self) -> str:
        sections = [self, *self.also]
        return "\n".join(line for r in sections for line in r._section())


# --- random params ------------------------------------------------------------------------


def _is_float(a) -> bool:
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)


def _rng(key, salt: int) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key (raw or typed) and a salt.

    The check draws its random numbers with NumPy: eager ``jax.random`` calls compile a
    kernel for every new shape, which costs more than the check itself on small layers.
    """
    if jnp.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng([*np.asarray(key, np.uint32).ravel().tolist(), salt])


def _device(values: np.ndarray, dtype) -> jax.Array:
    """A host array onto the device as ``dtype``, converted by NumPy and copied by
    ``jax.device_put`` (``jnp.asarray`` would compile a copy for every new shape)."""
    return jax.device_put(np.asarray(values).astype(np.dtype(dtype)))


def _param_scale(shape) -> float:
    """The size of a random param: 1 for scalars and vectors (biases, scales, offsets),
    ``sqrt(2 / (fan_in + fan_out))`` for matrices and kernels, with ``fan_out`` the last
    axis and ``fan_in`` the product of the others (the scale of Glorot's initializer)."""
    if len(shape) < 2:
        return 1.0
    fan_in, fan_out = math.prod(shape[:-1]), shape[-1]
    return math.sqrt(2.0 / max(fan_in + fan_out, 1))


def _random_params_tree(rng: np.random.Generator, tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = [
        _device(_param_scale(np.shape(a)) * rng.standard_normal(np.shape(a)), a.dtype)
        if _is_float(a) and np.size(a)
        else a
        for a in leaves
    ]
    return treedef.unflatten(out)


def _random_state_tree(rng: np.random.Generator, tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = []
    for a in leaves:
        if not _is_float(a) or not np.size(a):
            out.append(a)
            continue
        values = np.asarray(a).astype(np.float64)
        rms = float(np.sqrt(np.mean(values**2)))
        scale = rms if rms > 0 and math.isfinite(rms) else 1.0
        z = rng.standard_normal(np.shape(a))
        positive = bool(np.all(values > 0))
        out.append(_device(scale * (np.exp(z / 2) if positive else z), a.dtype))
    return treedef.unflatten(out)


def random_params(key, params, state=()):
    """Random values in place of every floating leaf of ``params`` and ``state``.

    The default point of :func:`check_layer` and :func:`check_grads`, so that a backward
    that is right only because a scale starts at 1 or an offset at 0 is caught.

    * ``params``: each floating leaf becomes normal noise of its shape and dtype, with
      standard deviation 1 for scalars and vectors (biases, scales, offsets: both signs,
      far from 0 and 1) and ``sqrt(2 / (fan_in + fan_out))`` for matrices and kernels
      (``fan_out`` the last axis, ``fan_in`` the product of the others), so activations
      keep the size they have at a usual init. Only shapes and dtypes are read: the
      leaves may be ``jax.ShapeDtypeStruct`` (what :func:`init_shapes` gives).
    * ``state`` (wide layers): values are read. A leaf that is strictly positive
      everywhere (a running variance) stays positive, ``rms * exp(z / 2)``; any other
      floating leaf becomes ``rms * z`` (``rms`` that of the leaf, or 1 for zeros).

    Integer leaves (ids, counters) and PRNG keys are kept. A layer whose params must
    satisfy a constraint (a positive parameter, a normalized table) gets a hook:
    ``check_layer(layer, shape, randomize=fn)`` with ``fn(key, params, state) -> (params,
    state)``, which can call this function and then repair what it must.

    Returns:
      ``(params, state)`` of the same structure, shapes and dtypes, as arrays.
    """
    return _random_params_tree(_rng(key, 0), params), _random_state_tree(_rng(key, 1), state)


def init_shapes(layer: Layer, key, input_shape):
    """What ``init`` makes, without compiling its random initializers.

    Returns ``(params, state, output_shape)`` in the wide form, where ``params`` holds
    ``jax.ShapeDtypeStruct`` leaves (from ``jax.eval_shape``) and ``state`` real values
    (computed under ``jax.jit`` alone, so the params' random numbers are never compiled;
    ``()`` for a pure layer). That is all :func:`random_params` needs: random
    initializers cost a compilation per shape, more than the rest of a check. An
    ``init`` that cannot be traced (it reads concrete values) runs eagerly instead.
    """
    out = {}

    def params_and_state(k):
        params, state, out["shape"] = _init(layer, k, input_shape)
        return params, state

    try:
        params, state = jax.eval_shape(params_and_state, key)
        if jax.tree_util.tree_leaves(state):
            state = jax.jit(lambda k: params_and_state(k)[1])(key)
    except _ContractError:
        raise
    except Exception:
        return _init(layer, key, input_shape)
    return params, state, out["shape"]


# --- describing trees in words ------------------------------------------------------------


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _describe(t) -> str:
    """A tree's top level in words: 'a dict with keys ['b', 'w']', 'a tuple of 3 items'."""
    if t is None:
        return "None"
    if isinstance(t, Static):
        return f"Static({t.value!r})"
    if _is_array(t):
        return f"an array of shape {tuple(t.shape)} and dtype {t.dtype}"
    if isinstance(t, dict):
        return f"a dict with keys {sorted(t, key=str)}"
    if isinstance(t, tuple) and hasattr(t, "_fields"):
        return f"a {type(t).__name__} with fields {list(t._fields)}"
    if isinstance(t, (tuple, list)):
        kind = type(t).__name__
        if not t:
            return "an empty tuple ()" if kind == "tuple" else "an empty list []"
        return f"a {kind} of {len(t)} item{'s' if len(t) != 1 else ''}"
    if isinstance(t, (bool, int, float, complex)):
        return f"the Python {type(t).__name__} {t!r}"
    return f"a {type(t).__name__}"


def _difference(expected, got, where: str) -> str | None:
    """The first place where ``got``'s structure differs from ``expected``'s, in words."""
    if _is_array(expected) and _is_array(got):
        return None  # shapes and dtypes are compared leaf by leaf afterwards
    if expected is None and got is None:
        return None
    if isinstance(expected, dict) and isinstance(got, dict):
        if set(expected) != set(got):
            missing = sorted(set(expected) - set(got), key=str)
            extra = sorted(set(got) - set(expected), key=str)
            detail = "; ".join(
                s
                for s in (
                    f"missing {missing}" if missing else "",
                    f"extra {extra}" if extra else "",
                )
                if s
            )
            return (
                f"{where} should be a dict with keys {sorted(expected, key=str)}, "
                f"got keys {sorted(got, key=str)} ({detail})"
            )
        for k in expected:
            d = _difference(expected[k], got[k], f"{where}[{k!r}]")
            if d:
                return d
        return None
    if (
        isinstance(expected, (tuple, list))
        and type(expected) is type(got)
        and not hasattr(expected, "_fields")
    ):
        if len(expected) != len(got):
            return f"{where} should be {_describe(expected)}, got {_describe(got)}"
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            d = _difference(e, g, f"{where}[{i}]")
            if d:
                return d
        return None
    s_exp, s_got = jax.tree_util.tree_structure(expected), jax.tree_util.tree_structure(got)
    if type(expected) is not type(got) or s_exp != s_got:
        n_exp, n_got = s_exp.num_leaves, s_got.num_leaves
        return (
            f"{where} should be {_describe(expected)} ({n_exp} array{'s' * (n_exp != 1)} "
            f"in all), got {_describe(got)} ({n_got} array{'s' * (n_got != 1)} in all)"
        )
    return None


def _structure_problems(what: str, ours, ref) -> list[str]:
    """Compare structure, shapes and dtypes of a gradient with its reference, in words."""
    d = _difference(ref, ours, what)
    if d:
        return [d]
    problems = []
    paths = jax.tree_util.tree_flatten_with_path(ref)[0]
    for (path, r), o in zip(paths, jax.tree_util.tree_leaves(ours), strict=True):
        name = what + jax.tree_util.keystr(path)
        if not _is_array(o):
            problems.append(f"{name} should be {_describe(r)}, got {_describe(o)}")
        elif jnp.shape(o) != jnp.shape(r):
            problems.append(f"{name} has shape {jnp.shape(o)}, expected {jnp.shape(r)}")
        elif jnp.result_type(o) != jnp.result_type(r):
            hint = ""
            if _is_low_float(o.dtype) and jnp.result_type(r) == _FLOAT64:
                hint = (
                    " (the check runs in float64: does the code hard-code float32? "
                    "Take dtypes from x, dy or params instead)"
                )
            problems.append(
                f"{name} has dtype {jnp.result_type(o)}, expected {jnp.result_type(r)}{hint}"
            )
    return problems


def _is_low_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 64


# --- calling the layer, with readable errors for a wrong contract -------------------------


class _ContractError(Exception):
    """A layer function returned something the contract does not allow."""


def _forward(layer: Layer, params, x, state, ctx):
    """``layer.forward`` in the wide form, with the number of results checked."""
    if layer.wide:
        out, want = layer.forward(params, x, state, ctx), "(y, cache, new_state)"
    else:
        out, want = layer.forward(params, x), "(y, cache)"
    n = 3 if layer.wide else 2
    if not isinstance(out, tuple) or len(out) != n:
        raise _ContractError(
            f"{layer.name}: forward must return a tuple {want} of {n} items "
            f"({'wide' if layer.wide else 'pure'} layer), it returned {_describe(out)}"
        )
    return out if layer.wide else (*out, state)


def _backward(layer: Layer, params, cache, dy):
    out = layer.backward(params, cache, dy)
    if not isinstance(out, tuple) or len(out) != 2:
        raise _ContractError(
            f"{layer.name}: backward must return a pair (dx, dparams), it returned {_describe(out)}"
        )
    return out


def _init(layer: Layer, key, input_shape):
    out = layer.init(key, input_shape)
    n, want = (3, "(params, state, output_shape)") if layer.wide else (2, "(params, output_shape)")
    if not isinstance(out, tuple) or len(out) != n:
        raise _ContractError(
            f"{layer.name}: init must return a tuple {want} of {n} items "
            f"({'wide' if layer.wide else 'pure'} layer), it returned {_describe(out)}"
        )
    return out if layer.wide else (out[0], (), out[1])


# --- detecting autodiff and float32 inside the layer's functions --------------------------

# Every JAX autodiff entry point (grad, value_and_grad, vjp and its pullback, jvp, jacfwd,
# jacrev, linearize, linear_transpose) goes through one of these functions of JAX's
# autodiff interpreter; they are wrapped while the backward is traced.
_AD_ENTRY_POINTS = {
    "jvp": "forward-mode autodiff (jax.jvp, jax.jacfwd)",
    "linearize": "reverse-mode autodiff (jax.grad, jax.vjp, jax.linearize)",
    "backward_pass": "a transpose (jax.linear_transpose)",
    "backward_pass3": "a vjp pullback (the function jax.vjp returns)",
}


@contextlib.contextmanager
def _recording_autodiff(found: list[str]):
    try:
        from jax._src.interpreters import ad
    except ImportError:  # pragma: no cover - another jax layout: only custom_vjp is seen
        yield
        return
    saved = {}

    def wrap(original, what):
        def recorded(*args, **kwargs):
            if what not in found:
                found.append(what)
            return original(*args, **kwargs)

        return recorded

    for name, what in _AD_ENTRY_POINTS.items():
        original = getattr(ad, name, None)
        if callable(original):
            saved[name] = original
            setattr(ad, name, wrap(original, what))
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(ad, name, original)


def _subjaxprs(value):
    for v in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(v, "jaxpr", v)
        if hasattr(inner, "eqns"):
            yield inner


def _eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in _subjaxprs(value):
                yield from _eqns(sub)


def _trace_backward(layer: Layer, params, cache, dy):
    """Trace ``layer.backward`` for ``jax.jit``, recording the autodiff it uses.

    Returns ``(autodiff used, the jax.stages.Traced or None, an error message or None)``.
    """
    found: list[str] = []
    try:
        with _recording_autodiff(found):
            traced = jax.jit(lambda p, c, d: _backward(layer, p, c, d)).trace(params, cache, dy)
    except _ContractError:
        raise
    except Exception as e:
        return (
            found,
            None,
            (
                f"{layer.name}: backward cannot be traced (it must work under jax.jit, as in "
                f"a training step): {type(e).__name__}: {e}"
            ),
        )
    if any("custom_vjp" in eqn.primitive.name for eqn in _eqns(traced.jaxpr.jaxpr)):
        found.append("a jax.custom_vjp function")
    return found, traced, None


def _low_float_ops(closed) -> list[str]:
    """Primitives of a jaxpr that produce a float below 64 bits."""
    ops = []
    for eqn in _eqns(getattr(closed, "jaxpr", closed)):
        for v in eqn.outvars:
            dtype = getattr(getattr(v, "aval", None), "dtype", None)
            entry = f"{eqn.primitive.name} -> {dtype}"
            if dtype is not None and _is_low_float(dtype) and entry not in ops:
                ops.append(entry)
    return ops


def _is_from_jax(layer: Layer) -> bool:
    """``funcnn.interop.from_jax`` prototypes are built on ``jax.vjp`` on purpose."""
    b = layer.backward
    return getattr(b, "__module__", "") == "funcnn.interop" and "from_jax" in getattr(
        b, "__qualname__", ""
    )


# --- the check ----------------------------------------------------------------------------


def _to_float64(tree):
    return jax.tree_util.tree_map(
        lambda a: a if not _is_float(a) or a.dtype == _FLOAT64 else _device(a, _FLOAT64), tree
    )


def _random_like(rng: np.random.Generator, tree):
    """Standard-normal float64 arrays shaped like ``tree``'s leaves."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef.unflatten([_device(rng.standard_normal(np.shape(a)), _FLOAT64) for a in leaves])


def _vdot(a, b) -> jax.Array:
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return sum((jnp.vdot(u, v) for u, v in pairs), jnp.zeros((), _FLOAT64))


def _max_abs(tree) -> float:
    return max(
        (
            float(np.max(np.abs(np.asarray(a))))
            for a in jax.tree_util.tree_leaves(tree)
            if np.size(a)
        ),
        default=0.0,
    )


_LABELS = {"random": "random params", "init": "init params", "given": "the given params"}


def _points(at) -> tuple[str, ...]:
    points = (at,) if isinstance(at, str) else tuple(at)
    bad = [p for p in points if p not in _LABELS]
    if not points or bad:
        raise ValueError(
            f"check: at must be 'random', 'init' (or 'given') or a tuple of them, got {at!r}"
        )
    return points


def check_grads(
    layer: Layer,
    params,
    x,
    *,
    state=(),
    ctx: Ctx | None = None,
    key=None,
    at: str | Sequence[str] = "random",
    randomize: Callable | None = None,
    rtol: float = 1e-7,
    atol: float | None = None,
    fd_eps: float = 1e-6,
    fd_rtol: float = 1e-5,
    fd_atol: float | None = None,
    floor: float = 1e-3,
    fd_directions: int = 2,
    jit: bool = True,
    autodiff: str = "warn",
    raise_on_error: bool = True,
    _expected_shape: Any = None,
    _given_label: str = "given",
) -> GradReport:
    """Compare ``layer.backward`` with ``jax.vjp`` of ``layer.forward`` and finite differences.

    Args:
      layer: the layer to check (pure or wide).
      params, x: parameters and input. Float leaves are cast to float64; integer leaves
        (e.g. token ids) are kept and must get ``None`` as their ``dx``.
      state, ctx: for wide layers. ``ctx`` defaults to train mode with a fixed key, so
        random layers draw the same mask in every evaluation.
      key: PRNG key for random params, the cotangent and the directions (default
        ``PRNGKey(0)``).
      at: where to check: ``"random"`` (default) replaces params and state by
        :func:`random_params` (``params`` only gives their structure and shapes),
        ``"given"`` (or ``"init"``) checks at ``params`` as passed; a tuple checks at each
        and the report has one section per point.
      randomize: ``(key, params, state) -> (params, state)`` in place of
        :func:`random_params`, for layers whose params must satisfy a constraint.
      rtol, fd_rtol: the largest relative error passed, for the vjp and the fd column.
      floor: the absolute floor of the relative error's denominator (see the module).
      atol, fd_atol: absolute tolerances; giving one sets that column's floor to
        ``atol / rtol`` (so an error passes when below ``max(atol, rtol * max|ref|)``).
      fd_eps: the finite-difference step. fd_directions: random directions per leaf.
      jit: run the forward and then the backward (on that cache) under ``jax.jit``, in
        one compiled program with the references, and check the jitted forward equals
        the eager one; with ``jit=False`` forward and backward run eagerly.
      autodiff: what to do when ``backward`` calls JAX's autodiff: ``"warn"`` (an
        :class:`AutodiffInBackwardWarning` and a note), ``"error"`` (a problem, so the
        check fails; built-in layers are tested this way) or ``"ignore"``.
      raise_on_error: raise ``AssertionError`` with the report when a check fails.

    Returns:
      A :class:`GradReport`; ``print`` it for a per-leaf table.
    """
    if autodiff not in ("warn", "error", "ignore"):
        raise ValueError(f"check: autodiff must be 'warn', 'error' or 'ignore', got {autodiff!r}")
    points = _points(at)
    ctx = Ctx(jax.random.PRNGKey(1), True) if ctx is None else ctx
    key = jax.random.PRNGKey(0) if key is None else key
    floors = (
        floor if atol is None else atol / rtol,
        floor if fd_atol is None else fd_atol / fd_rtol,
    )
    tolerances = (rtol, fd_rtol)
    reports = []
    with jax.enable_x64(True):
        x = _to_float64(x)
        for point in points:
            p, s = params, state
            if point == "random":
                p, s = (randomize or random_params)(jax.random.fold_in(key, 1), params, state)
            p, s = _to_float64(p), _to_float64(s)
            label = _LABELS["random" if point == "random" else _given_label]
            reports.append(
                _check(
                    layer,
                    p,
                    x,
                    s,
                    ctx,
                    key,
                    label,
                    fd_eps,
                    fd_directions,
                    jit,
                    floors,
                    tolerances,
                    autodiff,
                    _expected_shape,
                )
            )
    report = dataclasses.replace(reports[0], also=tuple(reports[1:]))
    if raise_on_error and not report.ok:
        raise AssertionError(str(report))
    return report


def _check(
    layer,
    params,
    x,
    state,
    ctx,
    key,
    label,
    fd_eps,
    fd_directions,
    jit,
    floors,
    tolerances,
    autodiff,
    expected_shape,
) -> GradReport:
    (f_vjp, f_fd), (t_vjp, t_fd) = floors, tolerances

    def report(leaves=(), problems=(), notes=(), output_abs=0.0):
        return GradReport(
            layer.name,
            tuple(leaves),
            output_abs,
            tuple(problems),
            label,
            tuple(notes),
            floors,
            tolerances,
        )

    try:
        return _compare(
            layer=layer,
            params=params,
            x=x,
            state=state,
            ctx=ctx,
            key=key,
            fd_eps=fd_eps,
            fd_directions=fd_directions,
            jit=jit,
            f_vjp=f_vjp,
            f_fd=f_fd,
            t_vjp=t_vjp,
            t_fd=t_fd,
            autodiff=autodiff,
            expected_shape=expected_shape,
            report=report,
        )
    except _ContractError as e:
        return report(problems=[str(e)])


def _compare(
    *,
    layer,
    params,
    x,
    state,
    ctx,
    key,
    fd_eps,
    fd_directions,
    jit,
    f_vjp,
    f_fd,
    t_vjp,
    t_fd,
    autodiff,
    expected_shape,
    report,
) -> GradReport:
    # Integer leaves of x (ids, labels) are not differentiated: close over them.
    x_float = jax.tree_util.tree_map(lambda a: a if _is_float(a) else None, x)
    has_float_x = bool(jax.tree_util.tree_leaves(x_float))

    # 1. The code under test: forward (eager, then jitted) and the hand-written backward.
    problems, notes = [], []
    y, cache, _ = _forward(layer, params, x, state, ctx)
    if expected_shape is not None:
        actual = jax.tree_util.tree_map(lambda a: tuple(a.shape), y)
        if _as_tuples(actual) != _as_tuples(expected_shape):
            return report(
                problems=[
                    f"{layer.name}: init says the output shape is {expected_shape}, "
                    f"forward produced {actual}"
                ]
            )
    low = [
        f"{what}{jax.tree_util.keystr(path)} ({a.dtype})"
        for what, tree in (("y", y), ("cache", cache))
        for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]
        if _is_array(a) and _is_low_float(a.dtype)
    ]
    if low:
        return report(
            problems=[
                f"{layer.name}: forward returned float32 (or lower) values for float64 params "
                f"and input: {', '.join(low[:4])}. The layer hard-codes a dtype somewhere "
                f"(jnp.float32 in a cast, an array constructor or a constant); take dtypes "
                f"from x or params, so the layer runs in float64 (as this check does) and "
                f"in bfloat16."
            ]
        )
    low_ops = _low_float_ops(jax.make_jaxpr(lambda p: _forward(layer, p, x, state, ctx))(params))
    if low_ops:
        problems.append(
            f"{layer.name}: forward computes in float32 (or lower) although params and "
            f"input are float64: {', '.join(low_ops[:4])}. Take dtypes from x or params "
            f"instead of writing jnp.float32."
        )
    dy = _random_like(_rng(key, 2), y)

    used, traced_backward, trace_error = _trace_backward(layer, params, cache, dy)
    if trace_error:
        problems.append(trace_error)
    low_ops = [] if traced_backward is None else _low_float_ops(traced_backward.jaxpr)
    if low_ops:
        problems.append(
            f"{layer.name}: backward computes in float32 (or lower) although params, cache "
            f"and dy are float64: {', '.join(low_ops[:4])}. Take dtypes from dy or params "
            f"instead of writing jnp.float32."
        )
    if used and autodiff != "ignore" and not _is_from_jax(layer):
        message = (
            f"{layer.name}: backward uses JAX autodiff ({'; '.join(used)}); the contract "
            f"asks for a hand-written backward"
        )
        if autodiff == "error":
            problems.append(message)
        else:
            notes.append(message)
            warnings.warn(message, AutodiffInBackwardWarning, stacklevel=4)
    elif used and _is_from_jax(layer):
        notes.append(f"{layer.name}: a from_jax prototype, its backward is jax.vjp's pullback")

    # 2. The references: jax.vjp of the forward, and the central differences of
    #    L(theta) = <forward(theta), dy> along random directions per leaf, evaluated at
    #    every shifted point (2 per direction per leaf).
    #
    #    Compilation is what a check costs, so it compiles ONE program: with jit, the
    #    code under test (forward, then backward on its cache) together with jax.vjp of
    #    the forward and L; without jit, the references alone. The same program gives L
    #    at the shifted points. The check's own arithmetic is NumPy, so the only eager JAX
    #    code is the layer's forward (which the jitted one is compared with).
    point = {"x": x_float, "params": params}
    flat_point, point_def = jax.tree_util.tree_flatten(point)
    rng = _rng(key, 3)
    directions = [rng.standard_normal((fd_directions, *np.shape(a))) for a in flat_point]
    flat_host = [np.asarray(a) for a in flat_point]  # shifts are made by NumPy
    under_jit = jit and traced_backward is not None

    def merged_x(xf):
        return jax.tree_util.tree_map(
            lambda orig, f: orig if f is None else f, x, xf, is_leaf=lambda a: a is None
        )

    @jax.jit
    def program(flat, dy):
        tree = point_def.unflatten(flat)
        p, xf = tree["params"], tree["x"]
        y_ref, vjp_fn = jax.vjp(
            lambda p, xf: _forward(layer, p, merged_x(xf), state, ctx)[0], p, xf
        )
        ref_dparams, ref_dx = vjp_fn(dy)
        refs = (y_ref, ref_dparams, ref_dx, _vdot(y_ref, dy))
        if not under_jit:
            return refs
        y, cache, _ = _forward(layer, p, merged_x(xf), state, ctx)
        return refs, (y, cache, _backward(layer, p, cache, dy))

    def loss_at(flat):
        out = program(flat, dy)
        return float((out[0] if under_jit else out)[3])

    def shifted(i, delta):
        return [a + delta if j == i else a for j, a in enumerate(flat_host)]

    output_abs = 0.0
    if under_jit:
        (y_ref, ref_dparams, ref_dx, _), (y_jit, _, (dx, dparams)) = program(flat_point, dy)
        diff = jax.tree_util.tree_map(lambda a, b: np.asarray(a) - np.asarray(b), y_jit, y)
        output_abs = _max_abs(diff)
        if output_abs > t_vjp * max(_max_abs(y), f_vjp):
            problems.append(f"jit(forward) differs from forward by {output_abs:.3e}")
        y = y_jit
    else:
        y_ref, ref_dparams, ref_dx, _ = program(flat_point, dy)
        dx, dparams = _backward(layer, params, cache, dy)
    fd_values = [
        np.array(
            [
                (loss_at(shifted(i, fd_eps * v)) - loss_at(shifted(i, -fd_eps * v))) / (2 * fd_eps)
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
        problems.append(f"dx must be None for an integer input, got {_describe(dx)}")
    if problems:
        return report(problems=problems, notes=notes, output_abs=output_abs)

    # 3. Compare leaf by leaf over {"x": dx, "params": dparams}.
    refs = {"x": ref_dx if has_float_x else None, "params": ref_dparams}
    flat_ref, _ = jax.tree_util.tree_flatten_with_path(refs)
    flat_ours = jax.tree_util.tree_leaves({"x": dx if has_float_x else None, "params": dparams})
    leaves = []
    for (path, ref), mine, dirs, fd in zip(flat_ref, flat_ours, directions, fd_values, strict=True):
        mine, ref = np.asarray(mine), np.asarray(ref)
        vjp_abs = float(np.max(np.abs(mine - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        vjp_rel = vjp_abs / max(scale, f_vjp)
        analytic = np.tensordot(np.asarray(dirs), mine, axes=mine.ndim)
        fd_abs = float(np.max(np.abs(fd - analytic))) if fd.size else 0.0
        fd_rel = fd_abs / max(float(np.max(np.abs(fd))) if fd.size else 0.0, f_fd)
        ok = vjp_rel <= t_vjp and fd_rel <= t_fd  # NaN compares False: not ok
        name = path[0].key + jax.tree_util.keystr(path[1:])
        leaves.append(LeafError(name, ref.shape, vjp_abs, vjp_rel, fd_rel, ok, scale, fd_abs))
    return report(leaves, problems, notes, output_abs)


def check_layer(
    layer: Layer,
    input_shape,
    *,
    key=None,
    x=None,
    train: bool = True,
    at: str | Sequence[str] = "random",
    **kwargs,
) -> GradReport:
    """Initialize ``layer`` for ``input_shape`` and run :func:`check_grads` on random data.

    Args:
      layer: the layer to check.
      input_shape: the shape passed to ``init`` (a tuple of shapes for multi-input layers).
      key: PRNG key for params, input, cotangent and directions (default ``PRNGKey(0)``).
      x: an explicit input (e.g. integer ids); by default standard-normal float64 data.
      train: the mode for wide layers.
      at: ``"random"`` (default: random params of init's shapes, see
        :func:`random_params`), ``"init"`` (the params init made), or
        ``("random", "init")`` for both; the report says which.
      **kwargs: passed on to :func:`check_grads` (``randomize``, tolerances, ``jit``,
        ``autodiff``, ...).

    Also checks that ``init``'s output shape equals the shape of the real output.

    >>> import funcnn as fn
    >>> print(fn.check.check_layer(fn.dense(3), (4, 2)))  # doctest: +ELLIPSIS
    gradient check of dense: OK at random params
    ...
    """
    key = jax.random.PRNGKey(0) if key is None else key
    k_init, k_x, k_ctx, k_check = jax.random.split(key, 4)
    raise_on_error = kwargs.pop("raise_on_error", True)
    with jax.enable_x64(True):
        try:
            if "init" in _points(at) or "given" in _points(at):
                params, state, out_shape = _init(layer, k_init, input_shape)
            else:  # random params need init's shapes only
                params, state, out_shape = init_shapes(layer, k_init, input_shape)
        except _ContractError as e:
            report = GradReport(layer.name, (), 0.0, (str(e),), "init")
            if raise_on_error:
                raise AssertionError(str(report)) from None
            return report
        if x is None:
            x = _random_like(_rng(k_x, 4), _shape_tree(input_shape))
        ctx = Ctx(k_ctx, train)
        return check_grads(
            layer,
            params,
            x,
            state=state,
            ctx=ctx,
            key=k_check,
            at=at,
            raise_on_error=raise_on_error,
            _expected_shape=out_shape,
            _given_label="init",
            **kwargs,
        )


def _shape_tree(input_shape):
    """Turn a shape or nested tuple of shapes into a tree of shape structs (for random_like)."""
    if all(isinstance(d, int) for d in input_shape):
        return jax.ShapeDtypeStruct(tuple(input_shape), _FLOAT64)
    return tuple(_shape_tree(s) for s in input_shape)


def _as_tuples(shapes):
    if isinstance(shapes, (tuple, list)) and all(isinstance(d, int) for d in shapes):
        return tuple(shapes)
    return tuple(_as_tuples(s) for s in shapes)


__all__ = [
    "AutodiffInBackwardWarning",
    "GradReport",
    "LeafError",
    "check_grads",
    "check_layer",
    "init_shapes",
    "random_params",
]
