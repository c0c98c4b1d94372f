"""Grade a student's backward: ``funcnn.check`` at random params, then a diagnosis per leaf.

The grader evaluates everything in float64 at one random point (random params, a random
input, a random cotangent ``dy``), so a mistake hidden by init values (a scale of 1, an
offset of 0, ``dloss = 1``) still shows. For every gradient leaf it reports whether it is
right and by how much it is off, and for a wrong leaf it looks for the cause:

1. a known wrong variant of the exercise (:class:`funcnn.exercises.catalog.Mistake`)
   that reproduces the student's values, whose hint names the mistake;
2. otherwise the error pattern: a wrong shape (transposed? batch axes not summed?),
   all zeros, or a constant multiple of the right answer (a sign, a missing 1/N).

The verdict also needs :func:`funcnn.check.check_grads` to pass: the student's backward
against ``jax.vjp`` and finite differences of the student's own forward.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import importlib.util
import itertools
import math
import os
import re
import sys
import textwrap
import traceback
import types

import jax
import jax.numpy as jnp
import numpy as np

from funcnn import check
from funcnn.core import Layer
from funcnn.exercises.catalog import EXERCISES, Exercise, Point

_BLOCK = re.compile(r"^( *)# BEGIN SOLUTION\n.*?^ *# END SOLUTION\n", re.MULTILINE | re.DOTALL)
_RTOL, _ATOL = 1e-6, 1e-9  # float64 solutions agree to ~1e-15; mistakes differ by O(1)


@dataclasses.dataclass(frozen=True)
class LeafResult:
    """The verdict on one gradient leaf, e.g. ``x``, ``x[0]`` or ``params['w']``."""

    path: str
    expected_shape: tuple[int, ...] | None  # None: this leaf should not exist
    shape: tuple[int, ...] | None  # None: missing from the student's gradient
    ok: bool
    max_abs: float = math.nan  # max |mine - correct| (when the shapes agree)
    rel: float = math.nan  # max_abs / max |correct|
    mistake: str | None = None  # the name of the diagnosed Mistake, if one matched
    hint: str | None = None


@dataclasses.dataclass(frozen=True)
class Grade:
    """The result of :func:`grade`; ``str(grade)`` is what the command line prints."""

    exercise: str
    ok: bool
    leaves: tuple[LeafResult, ...]
    problems: tuple[str, ...]  # forward changed, backward raised, wrong structure...
    report: check.GradReport | None  # funcnn.check's verdict, None if it could not run
    text: str

    @property
    def mistakes(self) -> set[str]:
        """The names of the diagnosed mistakes."""
        return {leaf.mistake for leaf in self.leaves if leaf.mistake}

    @property
    def hints(self) -> list[str]:
        """The hints printed, one per distinct hint."""
        return list(dict.fromkeys(leaf.hint for leaf in self.leaves if leaf.hint))

    def __str__(self) -> str:
        return self.text


# --- files -------------------------------------------------------------------------------


def get(name: str) -> Exercise:
    """The exercise called ``name``; a ``ValueError`` lists the names if there is none."""
    if name not in EXERCISES:
        raise ValueError(f"no exercise {name!r}; the exercises are: {', '.join(EXERCISES)}")
    return EXERCISES[name]


def solution_source(name: str) -> str:
    """The reference solution of exercise ``name``, as source text."""
    get(name)
    return (importlib.resources.files("funcnn.exercises.solutions") / f"{name}.py").read_text()


def skeleton(name: str) -> str:
    """The exercise as a student gets it: the solution blocks replaced by a ``raise``."""

    def stub(match):
        indent = match.group(1)
        return f'{indent}raise NotImplementedError("{name}: backward is not written yet")\n'

    text, count = _BLOCK.subn(stub, solution_source(name))
    assert count, f"the solution of {name} has no '# BEGIN SOLUTION' block"
    return text


def start(name: str, path: str | os.PathLike | None = None) -> str:
    """Write the skeleton of ``name`` to ``path`` (default ``./<name>.py``); never overwrites."""
    path = os.fspath(path if path is not None else f"{name}.py")
    text = skeleton(name)
    with open(path, "x", encoding="utf-8") as f:  # "x": refuse to replace a student's work
        f.write(text)
    return path


_counter = itertools.count()


def load(source) -> types.ModuleType:
    """A module from a file path, from source text, or a module passed as it is."""
    if isinstance(source, types.ModuleType):
        return source
    name = f"_funcnn_exercise_{next(_counter)}"
    if isinstance(source, os.PathLike) or (isinstance(source, str) and "\n" not in source):
        spec = importlib.util.spec_from_file_location(name, os.fspath(source))
        if spec is None:
            raise ValueError(f"cannot load {source!r}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    module = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def reference(name: str) -> types.ModuleType:
    """The reference solution module of exercise ``name``."""
    get(name)
    return importlib.import_module(f"funcnn.exercises.solutions.{name}")


# --- trees -------------------------------------------------------------------------------


def _is_float(a) -> bool:
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)


def _leaves(grads) -> dict[str, object]:
    """``(dx, dparams)`` as ``{"x...": leaf, "params...": leaf}`` (None entries dropped)."""
    dx, dparams = grads
    flat, _ = jax.tree_util.tree_flatten_with_path({"x": dx, "params": dparams})
    return {path[0].key + jax.tree_util.keystr(path[1:]): leaf for path, leaf in flat}


def _close(mine, ref) -> bool:
    if np.shape(mine) != np.shape(ref):
        return False
    mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    if not np.all(np.isfinite(mine)):
        return False
    scale = np.max(np.abs(ref), initial=0.0)
    return bool(np.max(np.abs(mine - ref), initial=0.0) <= _ATOL + _RTOL * scale)


def _normal(rng, tree):
    """Standard-normal float64 arrays shaped like ``tree``'s leaves (NumPy's generator:
    drawing with it compiles nothing, which keeps grading fast)."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(rng.standard_normal(np.shape(a))), tree)


@functools.lru_cache(maxsize=32)
def _point(ex: Exercise, seed: int):
    """Random params, input and cotangent; the correct gradient, the intermediates and
    every variant mistake's gradient, all from one compiled function (a compile per
    operation in eager mode would cost more than the whole grading)."""
    rng = np.random.default_rng(seed)
    shapes = ex.param_shapes(ex.input_shape)
    params = {k: jnp.asarray(rng.standard_normal(s)) for k, s in sorted(shapes.items())}
    params = params or ()
    make_x = ex.make_x or (lambda rng: _normal(rng, check._shape_tree(ex.input_shape)))
    x = make_x(rng)
    x = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64) if _is_float(a) else a, x)
    x_float = jax.tree_util.tree_map(lambda a: a if _is_float(a) else None, x)

    def merge(xf):
        return jax.tree_util.tree_map(
            lambda orig, f: orig if f is None else f, x, xf, is_leaf=lambda a: a is None
        )

    ref_forward = reference(ex.name).forward
    y_shape = jax.eval_shape(lambda p, xf: ref_forward(p, merge(xf))[0], params, x_float)
    dy = _normal(rng, y_shape)

    @jax.jit
    def evaluate(params, x_float, dy):
        y, vjp_fn = jax.vjp(lambda p, xf: ref_forward(p, merge(xf))[0], params, x_float)
        dparams, dx = vjp_fn(dy)
        x = merge(x_float)
        point = Point(params, x, dy, ex.intermediates(params, x), (dx, dparams))
        wrongs = [m.wrong(point) if m.wrong is not None else None for m in ex.mistakes]
        return y, point.v, point.ref, wrongs

    y, v, ref, wrongs = evaluate(params, x_float, dy)
    return Point(params, x, dy, v, ref), y, wrongs


# --- diagnosis ---------------------------------------------------------------------------


def _variants(ex: Exercise, wrongs, ref: dict) -> list[tuple[object, dict]]:
    """For each value-variant mistake, the leaves where it differs from the correct one."""
    out = []
    for mistake, wrong in zip(ex.mistakes, wrongs, strict=True):
        if wrong is not None:
            leaves = _leaves(wrong)
            out.append((mistake, {k: a for k, a in leaves.items() if not _close(a, ref.get(k))}))
    return out


def _pattern(path: str, mine, ref, ex: Exercise) -> str:
    """A hint from the shape or the shape of the error, when no known variant matched."""
    shape, want = tuple(np.shape(mine)), tuple(np.shape(ref))
    if shape != want:
        base = f"{path} has shape {shape}, but every gradient has the shape of its value: {want}."
        if len(shape) == len(want) == 2 and shape == want[::-1]:
            return base + " It looks transposed."
        if len(shape) > len(want) and shape[len(shape) - len(want) :] == want:
            return base + (
                " It still has leading (batch or position) axes: the value is used at every "
                "one of them, so its gradient sums over them."
            )
        return base
    mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    if not np.all(np.isfinite(mine)):
        return f"{path} has NaN or infinite values."
    if not np.any(mine):
        return f"{path} is all zeros: is it a placeholder?"
    denom = float(np.vdot(ref, ref))
    if denom > 0:
        c = float(np.vdot(mine, ref)) / denom
        if np.max(np.abs(mine - c * ref)) <= 1e-6 * np.max(np.abs(mine)):
            if abs(c + 1) < 1e-6:
                return f"{path} has the wrong sign (it is -1 times the right gradient)."
            return (
                f"{path} is {c:.6g} times the right gradient: a constant factor is missing "
                f"or extra (a 1/N of a mean, a scale, a 2 from a square?)."
            )
    return (
        f"{path} matches none of the usual mistakes. Compare your derivation with "
        f"docs/course/{ex.page}, one step of the forward at a time, in reverse."
    )


def _diagnose(ex: Exercise, point: Point, wrongs, mine_leaves: dict) -> list[LeafResult]:
    ref = _leaves(point.ref)
    variants = _variants(ex, wrongs, ref)
    results = []
    for path, r in ref.items():
        expected = tuple(np.shape(r))
        if path not in mine_leaves:
            hint = (
                f"{path} is missing from your gradient: backward must return (dx, dparams) "
                f"with dx shaped like the input and dparams like the params."
            )
            results.append(LeafResult(path, expected, None, False, hint=hint))
            continue
        mine = mine_leaves[path]
        shape = tuple(np.shape(mine))
        max_abs = rel = math.nan
        if shape == expected:
            diff = np.abs(np.asarray(mine, np.float64) - np.asarray(r, np.float64))
            max_abs = float(np.max(diff, initial=0.0))
            scale = float(np.max(np.abs(np.asarray(r)), initial=0.0))
            rel = max_abs / scale if scale > 0 else max_abs
        if _close(mine, r):
            results.append(LeafResult(path, expected, shape, True, max_abs, rel))
            continue
        found = None
        for mistake, wrong in variants:
            if path in wrong and _close(mine, wrong[path]):
                found = mistake
                break
        if found is None:
            for mistake in ex.mistakes:
                if (
                    mistake.matches is not None
                    and path in mistake.leaves
                    and shape == expected
                    and mistake.matches(point, path, mine)
                ):
                    found = mistake
                    break
        if found is not None:
            leaf = LeafResult(path, expected, shape, False, max_abs, rel, found.name, found.hint)
        else:
            leaf = LeafResult(
                path, expected, shape, False, max_abs, rel, hint=_pattern(path, mine, r, ex)
            )
        results.append(leaf)
    for path, mine in mine_leaves.items():
        if path not in ref:
            if path.startswith("x"):
                hint = (
                    f"{path} should be None: integer inputs (labels, ids) get no gradient, "
                    f"so their place in dx is None."
                )
            else:
                hint = f"{path} is not a parameter of this layer: dparams mirrors params."
            results.append(LeafResult(path, None, tuple(np.shape(mine)), False, hint=hint))
    return results


# --- grading -----------------------------------------------------------------------------


def _where(exc: BaseException) -> str:
    """The last frame of a traceback that is not inside funcnn or jax."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "/funcnn/" not in f.filename.replace(os.sep, "/") or "exercise" in f.filename
    ]
    frames = [f for f in frames if "/jax/" not in f.filename.replace(os.sep, "/")] or frames
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {os.path.basename(f.filename)}, line {f.lineno}: {f.line})"


def _max_abs(tree) -> float:
    return max(
        (
            float(np.max(np.abs(np.asarray(a)), initial=0.0))
            for a in jax.tree_util.tree_leaves(tree)
        ),
        default=0.0,
    )


def _same_outputs(a, b) -> float | None:
    """max |a - b| over two output trees, or None when their structures differ."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return None
    if any(np.shape(u) != np.shape(v) for u, v in zip(la, lb, strict=True)):
        return None
    return max(
        (
            float(np.max(np.abs(np.asarray(u) - np.asarray(v)), initial=0.0))
            for u, v in zip(la, lb, strict=True)
        ),
        default=0.0,
    )


def grade(name: str, source, *, seed: int = 0, run_check: bool = True) -> Grade:
    """Grade a solution of exercise ``name``.

    Args:
      name: the exercise (see ``python -m funcnn.exercises list``).
      source: a path to the student's file, its source text, or a module; it must define
        ``forward(params, x)`` and ``backward(params, cache, dy)``.
      seed: the random point (params, input, cotangent).
      run_check: also run :func:`funcnn.check.check_grads` (the verdict needs it).

    Returns:
      A :class:`Grade`; ``print`` it for the report.
    """
    ex = get(name)
    with jax.enable_x64(True), jax.numpy_rank_promotion("allow"):
        return _grade(ex, source, seed, run_check)


def _grade(ex: Exercise, source, seed: int, run_check: bool) -> Grade:
    label = source if isinstance(source, (str, os.PathLike)) and "\n" not in str(source) else None
    head = f"{ex.name}: {ex.title}"
    if label is not None:
        head += f"  ({os.fspath(label)})"
    lines = [head]

    def done(ok, leaves=(), problems=(), report=None):
        if problems:
            lines.extend(f"  problem: {p}" for p in problems)
        if report is not None:
            lines.append(
                "funcnn.check: your backward against jax.vjp and finite differences of "
                "your forward (same params and input, its own random dy):"
            )
            lines.extend("  " + line for line in str(report).splitlines())
        wrong = [leaf for leaf in leaves if not leaf.ok]
        if ok:
            lines.append(f"PASSED: all {len(leaves)} gradients are right.")
        elif leaves and not problems:
            lines.append(f"FAILED: {len(wrong)} of {len(leaves)} gradients are wrong.")
        else:
            lines.append("FAILED.")
        return Grade(ex.name, ok, tuple(leaves), tuple(problems), report, "\n".join(lines))

    try:
        student = load(source)
    except Exception as exc:
        return done(False, problems=[f"could not load your file: {type(exc).__name__}: {exc}"])
    missing = [f for f in ("forward", "backward") if not callable(getattr(student, f, None))]
    if missing:
        return done(False, problems=[f"your file must define {' and '.join(missing)}"])

    point, y_ref, wrongs = _point(ex, seed)
    shapes = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), point.x)
    lines.append(f"  at random params and a random input {shapes}, in float64 (seed {seed})")

    # Compiled first (two compiles instead of one per operation); code that jax.jit cannot
    # trace, or that raises, runs again as written, for its own error message.
    try:
        y, cache = jax.jit(student.forward)(point.params, point.x)
    except Exception:
        try:
            y, cache = student.forward(point.params, point.x)
        except Exception as exc:
            return done(
                False, problems=[f"your forward raised {type(exc).__name__}: {exc}{_where(exc)}"]
            )
    gap = _same_outputs(y, y_ref)
    if gap is None or gap > _ATOL + _RTOL * _max_abs(y_ref):
        what = "has a different structure or shape" if gap is None else f"differs by {gap:.3g}"
        return done(
            False,
            problems=[
                f"your forward {what} from the given one: the exercise is the backward of "
                f"the given forward; restore it (python -m funcnn.exercises start "
                f"{ex.name} NEW_FILE gives a fresh copy)"
            ],
        )
    lines.append("  forward: the given one")
    not_written = ["backward is not written yet: write it, then grade again"]
    try:
        out = jax.jit(student.backward)(point.params, cache, point.dy)
    except NotImplementedError:
        return done(False, problems=not_written)
    except Exception:
        try:
            _, cache = student.forward(point.params, point.x)
            out = student.backward(point.params, cache, point.dy)
        except NotImplementedError:
            return done(False, problems=not_written)
        except Exception as exc:
            return done(
                False, problems=[f"your backward raised {type(exc).__name__}: {exc}{_where(exc)}"]
            )
    if not (isinstance(out, tuple) and len(out) == 2):
        return done(
            False,
            problems=[
                f"backward must return a pair (dx, dparams), got {type(out).__name__}"
                + (f" of length {len(out)}" if isinstance(out, tuple) else "")
            ],
        )

    leaves = _diagnose(ex, point, wrongs, _leaves(out))
    width = max(len(leaf.path) for leaf in leaves)
    for leaf in leaves:
        shape = "missing" if leaf.shape is None else str(leaf.shape)
        if leaf.ok:
            status = "ok"
        elif leaf.expected_shape is None:
            status = "WRONG: should be None"
        elif leaf.shape != leaf.expected_shape:
            status = f"WRONG shape, expected {leaf.expected_shape}"
        else:
            status = f"WRONG by up to {leaf.max_abs:.3g} ({leaf.rel:.1%} of its largest entry)"
        lines.append(f"  {leaf.path:<{width}}  {shape:<12} {status}")
    hints: dict[str, list[str]] = {}
    for leaf in leaves:
        if leaf.hint:
            hints.setdefault(leaf.hint, []).append(leaf.path)
    for hint, paths in hints.items():
        lead = f"hint ({', '.join(paths)}): "
        lines.append(textwrap.fill(hint, 92, initial_indent=lead, subsequent_indent="  "))

    report = None
    problems = []
    if run_check:
        layer = Layer(_init(ex), student.forward, student.backward, name=ex.name)
        try:
            report = check.check_grads(
                layer,
                point.params,
                point.x,
                key=jax.random.PRNGKey(seed),
                # The grader's random params (drawn with NumPy, so the diagnosis above and
                # this check see the same point) stand in for check's own random draw.
                randomize=lambda key, params, state: (params, state),
                jit=False,
                fd_directions=1,
                autodiff="error",  # the exercise is a hand-written backward
                raise_on_error=False,
            )
        except Exception as exc:
            problems.append(f"funcnn.check could not run: {type(exc).__name__}: {exc}")
    ok = all(leaf.ok for leaf in leaves) and not problems and (report is None or report.ok)
    if report is not None and not report.ok and all(leaf.ok for leaf in leaves):
        problems.append("funcnn.check found a mismatch that the diagnosis did not (see below)")
    return done(ok, leaves, problems, report)


def _init(ex: Exercise):
    def init(key, input_shape):  # not called by check_grads; here for a complete Layer
        params = _point(ex, 0)[0].params
        return params, None

    return init


def main_grade(name: str, path: str, seed: int = 0) -> int:
    """The ``grade`` command: print the report, return the exit status (0 when passed)."""
    result = grade(name, path, seed=seed)
    print(result)
    sys.stdout.flush()
    return 0 if result.ok else 1
