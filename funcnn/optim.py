"""Optimizers as ``(init, update)`` pairs, schedules, clipping: optax's contract, PyTorch's numbers.

An optimizer is a :class:`GradientTransformation`, a pair of pure functions::

    init(params)                          -> state
    update(updates, state, params=None)   -> (updates, state)

``update`` turns gradients into the *updates* to add to the params (the learning rate
and the minus sign are already in them); :func:`apply_updates` adds them. This is the
contract of optax's ``GradientTransformation``, so the two libraries' transforms can be
mixed (``chain`` accepts anything with ``init`` and ``update``).

The optimizers reproduce PyTorch's ``torch.optim`` update rules, so a model ported from
PyTorch trains the same way: :func:`sgd` and :func:`adam` couple their weight decay to
the gradient (``g + wd * p``), :func:`adamw` decouples it.

``learning_rate`` is a float or a schedule ``step -> lr`` (see :func:`cosine_decay_schedule`
and friends); step ``t`` (counting from 0) uses ``schedule(t)``.

Optimizer state keeps its dtype: moments of float32 params stay float32 even when the
gradients arrive in float64, so a jitted step sees the same state types on every call
(no retrace, and buffer donation can reuse the state's memory).

>>> import jax.numpy as jnp, funcnn as fn
>>> params = {"w": jnp.array([1.0, -2.0], jnp.float32)}
>>> opt = fn.optim.sgd(0.1, momentum=0.9)
>>> state = opt.init(params)
>>> grads = {"w": jnp.array([0.5, 0.5], jnp.float32)}
>>> updates, state = opt.update(grads, state, params)
>>> fn.optim.apply_updates(params, updates)["w"]
Array([ 0.95, -2.05], dtype=float32)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcnn.validation import check_int, check_number, describe

Array = jax.Array
PyTree = Any
Schedule = Callable[[Any], Array]
ScalarOrSchedule = float | Schedule

__all__ = [
    "AdamState",
    "EmptyState",
    "GradientTransformation",
    "RmspropState",
    "SgdState",
    "adam",
    "adamw",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "global_norm",
    "rmsprop",
    "sgd",
    "warmup_cosine_decay_schedule",
]

_map = jax.tree_util.tree_map


class GradientTransformation(NamedTuple):
    """An optimizer or a gradient transform: a pair of pure functions.

    Attributes:
      init: ``params -> state``.
      update: ``(updates, state, params=None) -> (updates, state)``; ``params`` is needed
        by transforms that read the parameters (weight decay).
    """

    init: Callable[[PyTree], PyTree]
    update: Callable[..., tuple[PyTree, PyTree]]


# --- states (one NamedTuple per optimizer; "like params" = same tree, shapes, dtypes) ----


class EmptyState(NamedTuple):
    """The state of a stateless transform (no leaves)."""


class SgdState(NamedTuple):
    """State of :func:`sgd`."""

    count: Array  # () int32: number of updates taken so far
    momentum: PyTree  # like params: the momentum buffer b; () when momentum == 0


class RmspropState(NamedTuple):
    """State of :func:`rmsprop`."""

    count: Array  # () int32
    nu: PyTree  # like params: running mean of g**2
    mu: PyTree  # like params: running mean of g (centered=True); () otherwise
    momentum: PyTree  # like params: momentum buffer; () when momentum == 0


class AdamState(NamedTuple):
    """State of :func:`adam` and :func:`adamw`."""

    count: Array  # () int32
    mu: PyTree  # like params: first moment, running mean of g
    nu: PyTree  # like params: second moment, running mean of g**2


# --- validation ------------------------------------------------------------------------


def _check_lr(name: str, learning_rate) -> ScalarOrSchedule:
    if callable(learning_rate):
        return learning_rate
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real):
        raise TypeError(
            f"{name}: learning_rate must be a float or a schedule (step -> lr), "
            f"got {describe(learning_rate)}"
        )
    return check_number(name, "learning_rate", learning_rate, low=0)


def _lr_at(learning_rate: ScalarOrSchedule, count: Array):
    return learning_rate(count) if callable(learning_rate) else learning_rate


def _need_params(name: str, params):
    if params is None:
        raise ValueError(
            f"{name}: weight decay needs the params; call update(grads, state, params)"
        )


def _cast(x, like):
    """``x`` in the dtype of ``like`` (keeps state and update dtypes stable)."""
    return jnp.asarray(x).astype(like.dtype)


def _zeros_like(tree):
    return _map(jnp.zeros_like, tree)


def _count():
    return jnp.zeros((), jnp.int32)


_COUNT_MAX = int(jnp.iinfo(jnp.int32).max)


def _increment(count):
    """``count + 1``, saturating at the int32 maximum instead of wrapping to a negative
    step (where Adam's bias corrections ``1 - b^t`` would divide by zero or go NaN). Past
    2^31 - 1 steps every bias correction is 1 and every schedule has long reached its end,
    so holding the count there changes nothing."""
    return jnp.where(count < _COUNT_MAX, count + 1, count).astype(count.dtype)


def _leaf_shapes(tree) -> list[tuple[str, tuple[int, ...]]]:
    """``[(path, shape)]`` of the array leaves of ``tree``, for error messages."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(jax.tree_util.keystr(path), tuple(jnp.shape(leaf))) for path, leaf in leaves]


def _words(tree) -> str:
    items = _leaf_shapes(tree)
    if not items:
        return "no arrays"
    shown = ", ".join(f"{p or 'the array'} {s}" for p, s in items[:6])
    more = ", ..." if len(items) > 6 else ""
    return f"{len(items)} array{'s' * (len(items) != 1)} ({shown}{more})"


def _check_mirrors(name: str, what: str, tree, like, like_what: str = "the gradients"):
    """``tree`` must have the structure and the leaf shapes of ``like``: no pytree errors
    from deep inside a ``tree_map``, and no silent broadcasting of a ``(1, d)`` moment or
    update against ``(n, d)`` params."""
    same_tree = jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(like)
    if not same_tree or _leaf_shapes(tree) != _leaf_shapes(like):
        raise ValueError(
            f"{name}: {what} must mirror {like_what} (same structure and shapes): expected "
            f"{_words(like)}, got {_words(tree)}"
        )


def _check_state(name: str, state, kind, updates, fields):
    """The optimizer state must be this optimizer's (``kind``) with moments like ``updates``."""
    if not isinstance(state, kind):
        raise TypeError(
            f"{name}: state must be a {kind.__name__} (made by this optimizer's init), got "
            f"{describe(state)}"
        )
    for field in fields:
        _check_mirrors(name, f"state.{field}", getattr(state, field), updates)


def _check_params_like(name: str, params, updates):
    if params is not None:
        _check_mirrors(name, "params", params, updates)


# --- optimizers ------------------------------------------------------------------------


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD`` (dampening 0).

    Args:
      learning_rate: ``lr``, a float or a schedule ``step -> lr``.
      momentum: ``m``; 0 disables the momentum buffer.
      nesterov: use Nesterov momentum (needs ``momentum > 0``).
      weight_decay: ``wd``, coupled: added to the gradient (an L2 penalty ``wd/2 |p|^2``).

    Each step, for every leaf::

        g = g + wd * p                     (weight decay)
        b = m * b + g                      (momentum buffer, starts at 0)
        g = g + m * b   if nesterov  else  g = b
        update = -lr * g

    State: :class:`SgdState`.

    >>> import jax.numpy as jnp, funcnn as fn
    >>> opt = fn.optim.sgd(0.5, weight_decay=0.1)
    >>> p = jnp.array([2.0], jnp.float32)
    >>> opt.update(jnp.zeros(1, jnp.float32), opt.init(p), p)[0]   # -0.5 * 0.1 * 2
    Array([-0.1], dtype=float32)
    """
    learning_rate = _check_lr("sgd", learning_rate)
    momentum = check_number("sgd", "momentum", momentum, low=0.0)
    weight_decay = check_number("sgd", "weight_decay", weight_decay, low=0.0)
    if nesterov and momentum == 0:
        raise ValueError("sgd: nesterov=True needs momentum > 0, got momentum=0.0")

    def init(params):
        return SgdState(_count(), _zeros_like(params) if momentum else ())

    def update(updates, state, params=None):
        _check_state("sgd", state, SgdState, updates, ("momentum",) if momentum else ())
        _check_params_like("sgd", params, updates)
        if weight_decay:
            _need_params("sgd", params)
            updates = _map(lambda g, p: g + weight_decay * p, updates, params)
        buffer = state.momentum
        if momentum:
            buffer = _map(lambda b, g: _cast(momentum * b + g, b), buffer, updates)
            if nesterov:
                updates = _map(lambda g, b: g + momentum * b, updates, buffer)
            else:
                updates = _map(lambda g, b: _cast(b, g), updates, buffer)
        lr = _lr_at(learning_rate, state.count)
        updates = _map(lambda g: _cast(-lr * g, g), updates)
        return updates, SgdState(_increment(state.count), buffer)

    return GradientTransformation(init, update)


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.99,
    eps: float = 1e-8,
    momentum: float = 0.0,
    centered: bool = False,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """RMSprop, as ``torch.optim.RMSprop`` (``decay`` is PyTorch's ``alpha``).

    Args:
      learning_rate: ``lr``, a float or a schedule.
      decay: ``a``, the smoothing constant of the running averages, in ``[0, 1)``
        (``a = 1`` would never update ``v``).
      eps: added to the denominator (outside the square root, as PyTorch); positive (with
        ``eps = 0`` a parameter whose gradients have been 0 gets ``0 / 0``).
      momentum: ``m``; 0 disables the momentum buffer.
      centered: divide by an estimate of the variance instead of the raw second moment.
      weight_decay: ``wd``, coupled (added to the gradient).

    Each step, for every leaf::

        g = g + wd * p
        v = a * v + (1 - a) * g^2
        c = a * c + (1 - a) * g                            (centered only)
        d = sqrt(v - c^2) + eps   if centered  else  sqrt(v) + eps
        b = m * b + g / d;  update = -lr * b               (momentum > 0)
        update = -lr * g / d                               (momentum == 0)

    State: :class:`RmspropState`.
    """
    learning_rate = _check_lr("rmsprop", learning_rate)
    # decay == 1 would freeze v at 0 (every step divides by eps alone); eps == 0 divides
    # 0 by 0 for a parameter whose gradients have all been 0 so far.
    decay = check_number("rmsprop", "decay", decay, low=0, high=1, high_open=True)
    eps = check_number("rmsprop", "eps", eps, low=0, low_open=True)
    momentum = check_number("rmsprop", "momentum", momentum, low=0.0)
    weight_decay = check_number("rmsprop", "weight_decay", weight_decay, low=0.0)

    def init(params):
        return RmspropState(
            _count(),
            _zeros_like(params),
            _zeros_like(params) if centered else (),
            _zeros_like(params) if momentum else (),
        )

    def update(updates, state, params=None):
        fields = ("nu", *(("mu",) if centered else ()), *(("momentum",) if momentum else ()))
        _check_state("rmsprop", state, RmspropState, updates, fields)
        _check_params_like("rmsprop", params, updates)
        if weight_decay:
            _need_params("rmsprop", params)
            updates = _map(lambda g, p: g + weight_decay * p, updates, params)
        nu = _map(lambda v, g: _cast(decay * v + (1 - decay) * g * g, v), state.nu, updates)
        if centered:
            mu = _map(lambda c, g: _cast(decay * c + (1 - decay) * g, c), state.mu, updates)
            denom = _map(lambda v, c: jnp.sqrt(v - c * c) + eps, nu, mu)
        else:
            mu = ()
            denom = _map(lambda v: jnp.sqrt(v) + eps, nu)
        lr = _lr_at(learning_rate, state.count)
        buffer = state.momentum
        if momentum:
            buffer = _map(lambda b, g, d: _cast(momentum * b + g / d, b), buffer, updates, denom)
            updates = _map(lambda g, b: _cast(-lr * b, g), updates, buffer)
        else:
            updates = _map(lambda g, d: _cast(-lr * g / d, g), updates, denom)
        return updates, RmspropState(_increment(state.count), nu, mu, buffer)

    return GradientTransformation(init, update)


def _adam(name, learning_rate, b1, b2, eps, weight_decay, decoupled) -> GradientTransformation:
    learning_rate = _check_lr(name, learning_rate)
    b1 = check_number(name, "b1", b1, low=0.0, high=1.0, high_open=True)
    b2 = check_number(name, "b2", b2, low=0.0, high=1.0, high_open=True)
    eps = check_number(name, "eps", eps, low=0.0)
    weight_decay = check_number(name, "weight_decay", weight_decay, low=0.0)

    def init(params):
        return AdamState(_count(), _zeros_like(params), _zeros_like(params))

    def update(updates, state, params=None):
        _check_state(name, state, AdamState, updates, ("mu", "nu"))
        _check_params_like(name, params, updates)
        if weight_decay:
            _need_params(name, params)
        if weight_decay and not decoupled:
            updates = _map(lambda g, p: g + weight_decay * p, updates, params)
        mu = _map(lambda m, g: _cast(b1 * m + (1 - b1) * g, m), state.mu, updates)
        nu = _map(lambda v, g: _cast(b2 * v + (1 - b2) * g * g, v), state.nu, updates)
        t = _increment(state.count)
        lr = _lr_at(learning_rate, state.count)
        step_size = lr / (1 - b1**t)  # lr / bias correction of the first moment
        root_bc2 = jnp.sqrt(1 - b2**t)  # sqrt of the second moment's bias correction

        def leaf(g, m, v):
            s, r = _cast(step_size, m), _cast(root_bc2, v)
            return _cast(-s * m / (jnp.sqrt(v) / r + eps), g)

        new = _map(leaf, updates, mu, nu)
        if weight_decay and decoupled:
            new = _map(lambda u, p: u - _cast(lr * weight_decay * p, u), new, params)
        return new, AdamState(t, mu, nu)

    return GradientTransformation(init, update)


def adam(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """Adam, as ``torch.optim.Adam`` (weight decay, if any, coupled to the gradient).

    Args:
      learning_rate: ``lr``, a float or a schedule.
      b1, b2: decay rates of the first and second moment, in ``[0, 1)``.
      eps: added to the denominator, outside the square root.
      weight_decay: ``wd``, coupled: ``g = g + wd * p`` (use :func:`adamw` for decoupled).

    Step ``t = 1, 2, ...``, for every leaf::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g^2
        update = -lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    i.e. ``-lr * m_hat / (sqrt(v_hat) + eps)`` with the bias-corrected moments.

    State: :class:`AdamState`.

    >>> import jax.numpy as jnp, funcnn as fn
    >>> opt = fn.optim.adam(0.1)
    >>> p = jnp.array([1.0, 1.0], jnp.float32)
    >>> u, state = opt.update(jnp.array([3.0, -0.5], jnp.float32), opt.init(p))
    >>> [round(float(v), 6) for v in u]    # the first step is about -lr * sign(g)
    [-0.1, 0.1]
    """
    return _adam("adam", learning_rate, b1, b2, eps, weight_decay, decoupled=False)


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> GradientTransformation:
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    Same moments as :func:`adam`; the decay acts on the params directly, scaled by the
    learning rate but not by the adaptive denominator::

        update = adam_update - lr * wd * p

    (PyTorch writes it ``p = p * (1 - lr * wd)`` before the Adam step; it is the same sum.)
    ``update`` needs ``params``. State: :class:`AdamState`.
    """
    return _adam("adamw", learning_rate, b1, b2, eps, weight_decay, decoupled=True)


# --- composition and clipping ----------------------------------------------------------


def chain(*transforms) -> GradientTransformation:
    """Apply ``transforms`` one after another; the state is a tuple with one entry each.

    Any object with ``init`` and ``update`` works (ours or optax's).

    >>> import jax.numpy as jnp, funcnn as fn
    >>> opt = fn.optim.chain(fn.optim.clip_by_global_norm(5.0), fn.optim.sgd(0.5))
    >>> g = jnp.array([6.0, 8.0], jnp.float32)       # norm 10, clipped to norm 5
    >>> opt.update(g, opt.init(g))[0]
    Array([-1.5, -2. ], dtype=float32)
    """
    for i, t in enumerate(transforms):
        if not (callable(getattr(t, "init", None)) and callable(getattr(t, "update", None))):
            raise TypeError(
                f"chain: argument {i} must be a GradientTransformation (init, update), "
                f"got {type(t).__name__}"
            )

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(updates, state, params=None):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise TypeError(
                f"chain: state must be a tuple with one entry per transform "
                f"({len(transforms)}); use the state made by this chain's init"
            )
        new_state = []
        for t, s in zip(transforms, state, strict=True):
            updates, s = t.update(updates, s, params)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def global_norm(tree: PyTree) -> Array:
    """The Euclidean norm of all leaves together: ``sqrt(sum of every element squared)``.

    Accumulated in at least float32: in float16 the squares of a norm of 3,000 already
    overflow (float16 stops at 65,504), which would make every clipped update zero.
    """
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)

    def square_sum(x):
        x = jnp.asarray(x)
        return jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32))))

    return jnp.sqrt(sum(square_sum(x) for x in leaves))


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale the updates down so that their :func:`global_norm` is at most ``max_norm``.

    ``updates * max_norm / max(norm, max_norm)``: unchanged when the norm is within the
    bound, the direction kept when it is not. Stateless (:class:`EmptyState`).
    """
    max_norm = check_number("clip_by_global_norm", "max_norm", max_norm, low=0, low_open=True)

    def init(params):
        return EmptyState()

    def update(updates, state, params=None):
        norm = global_norm(updates)
        scale = max_norm / jnp.maximum(norm, max_norm)
        return _map(lambda u: _cast(u * _cast(scale, u), u), updates), state

    return GradientTransformation(init, update)


def apply_updates(params: PyTree, updates: PyTree) -> PyTree:
    """``params + updates``, leaf by leaf, each result in its param's dtype.

    ``updates`` must mirror ``params`` exactly (structure and shapes; ``ValueError``
    otherwise): a ``(1, d)`` update is not broadcast over ``(n, d)`` params.
    """
    _check_mirrors("apply_updates", "updates", updates, params, "the params")
    return _map(lambda p, u: _cast(p + u, p), params, updates)


# --- learning-rate schedules: step (int, counting from 0) -> lr --------------------------


def _step(step):
    return jnp.asarray(step, float)


def constant_schedule(value: float) -> Schedule:
    """``lr(step) = value``."""
    value = check_number("constant_schedule", "value", value, low=0.0)
    return lambda step: jnp.full_like(_step(step), value)


def exponential_decay(
    init_value: float, decay_rate: float, transition_steps: int = 1, staircase: bool = False
) -> Schedule:
    """``lr(step) = init_value * decay_rate ** (step / transition_steps)``.

    With ``staircase=True`` the exponent is rounded down, so the rate drops every
    ``transition_steps`` steps (PyTorch's ``StepLR`` with ``gamma=decay_rate``).

    >>> import funcnn as fn
    >>> sched = fn.optim.exponential_decay(1.0, 0.5, transition_steps=10, staircase=True)
    >>> [float(sched(s)) for s in (0, 9, 10, 25)]
    [1.0, 1.0, 0.5, 0.25]
    """
    init_value = check_number("exponential_decay", "init_value", init_value, low=0.0)
    decay_rate = check_number("exponential_decay", "decay_rate", decay_rate, low=0, low_open=True)
    _check_steps("exponential_decay", "transition_steps", transition_steps, positive=True)

    def schedule(step):
        exponent = _step(step) / transition_steps
        if staircase:
            exponent = jnp.floor(exponent)
        return init_value * decay_rate**exponent

    return schedule


def cosine_decay_schedule(init_value: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps`` steps.

    ``lr(step) = init_value * ((1 - alpha) * (1 + cos(pi * s / decay_steps)) / 2 + alpha)``
    with ``s = min(step, decay_steps)``: constant after ``decay_steps``.

    >>> import funcnn as fn
    >>> sched = fn.optim.cosine_decay_schedule(1.0, 100)
    >>> [round(float(sched(s)), 6) for s in (0, 50, 100, 150)]
    [1.0, 0.5, 0.0, 0.0]
    """
    init_value = check_number("cosine_decay_schedule", "init_value", init_value, low=0.0)
    _check_steps("cosine_decay_schedule", "decay_steps", decay_steps, positive=True)
    alpha = check_number("cosine_decay_schedule", "alpha", alpha, low=0.0, high=1.0)

    def schedule(step):
        s = jnp.minimum(_step(step), decay_steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * s / decay_steps))
        return init_value * ((1 - alpha) * cosine + alpha)

    return schedule


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``.

    ``decay_steps`` counts the whole schedule, warmup included: the cosine part lasts
    ``decay_steps - warmup_steps`` steps, and the rate stays at ``end_value`` afterwards.

    >>> import funcnn as fn
    >>> sched = fn.optim.warmup_cosine_decay_schedule(0.0, 1.0, 10, 110)
    >>> [round(float(sched(s)), 6) for s in (0, 5, 10, 60, 110, 200)]
    [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    """
    name = "warmup_cosine_decay_schedule"
    init_value = check_number(name, "init_value", init_value, low=0.0)
    peak_value = check_number(name, "peak_value", peak_value, low=0.0)
    end_value = check_number(name, "end_value", end_value, low=0.0)
    _check_steps(name, "warmup_steps", warmup_steps, positive=False)
    _check_steps(name, "decay_steps", decay_steps, positive=True)
    if decay_steps <= warmup_steps:
        raise ValueError(
            f"{name}: decay_steps (={decay_steps}) must be greater than "
            f"warmup_steps (={warmup_steps}); it counts the warmup too"
        )
    cosine_steps = decay_steps - warmup_steps

    def schedule(step):
        s = _step(step)
        warm = init_value + (peak_value - init_value) * s / max(warmup_steps, 1)
        frac = jnp.clip((s - warmup_steps) / cosine_steps, 0.0, 1.0)
        cool = end_value + (peak_value - end_value) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
        return jnp.where(s < warmup_steps, warm, cool)

    return schedule


def _check_steps(name: str, what: str, value, *, positive: bool) -> int:
    return check_int(name, what, value, low=1 if positive else 0)
