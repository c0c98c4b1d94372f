"""Training: gradients from the hand-written backward passes, a jitted step, a small loop.

* :func:`value_and_grad` chains ``loss.backward`` into ``model.backward`` (no ``jax.grad``).
* :class:`TrainState` holds everything a loop carries (params, model state, optimizer
  state, a PRNG key); :func:`train_step` adds an optimizer and compiles the whole step
  with ``jax.jit``. ``ts, loss = step(ts, x, target)`` is the same call for pure models
  and for models with dropout or batchnorm.
* :func:`predict` runs a model for its output alone (eval mode, no cache kept).
* :func:`batches`, :func:`evaluate` and :func:`fit` are the loop around it.
* ``mesh=`` runs the step data-parallel on a device mesh (:mod:`funcnn.sharding`);
  ``policy=`` in mixed precision (:func:`mixed_precision`, :mod:`funcnn.precision`).

>>> import jax, jax.numpy as jnp, funcnn as fn
>>> model = fn.sequential(fn.dense(8), fn.tanh(), fn.dense(1))
>>> opt = fn.optim.adam(1e-2)
>>> ts = fn.train.init_train_state(model, opt, jax.random.PRNGKey(0), (16, 3))
>>> step = fn.train.train_step(model, fn.losses.mse(), opt)
>>> x = jnp.ones((16, 3), jnp.float32); y = jnp.zeros((16, 1), jnp.float32)
>>> ts, loss0 = step(ts, x, y)
>>> for _ in range(50):
...     ts, loss = step(ts, x, y)
>>> bool(loss < loss0)
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.core import (
    _MISSING,
    Ctx,
    Layer,
    Loss,
    apply_layer,
    as_wide,
    check_positive_int,
    init_layer,
    wide_reason,
)
from funcnn.optim import GradientTransformation, apply_updates
from funcnn.precision import (
    DynamicLossScale,
    LossScaleState,
    Policy,
    is_loss_scaled,
    loss_scaled,
    mixed_precision,
    select,
)
from funcnn.sharding import check_batch, check_mesh, replicate, shard_batch
from funcnn.sharding import replicated as replicated_sharding

PyTree = Any

__all__ = [
    "DynamicLossScale",
    "FitResult",
    "LossScaleState",
    "Policy",
    "TrainState",
    "batches",
    "evaluate",
    "fit",
    "init_train_state",
    "loss_scaled",
    "mixed_precision",
    "predict",
    "train_step",
    "value_and_grad",
]


def _check_model_and_loss(name: str, model, loss):
    if not isinstance(model, Layer):
        raise TypeError(f"{name}: model must be a Layer, got {type(model).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"{name}: loss must be a funcnn Loss, got {type(loss).__name__}")


def _scalar_loss(loss: Loss, pred, target):
    value, cache = loss.forward(pred, target)
    if jnp.shape(value) != ():
        raise ValueError(
            f"{loss.name}: the loss must be a scalar, got shape {jnp.shape(value)}; "
            f"use a reduction such as 'mean'"
        )
    return value, cache


def value_and_grad(model: Layer, loss: Loss, *, policy: Policy | None = None) -> Callable:
    """The loss and its gradient with respect to the params, from the hand-written passes.

    Forward, then backward through the loss and the model::

        pred, cache = model.forward(params, x)
        value, loss_cache = loss.forward(pred, target)
        dpred = loss.backward(loss_cache)          # d value / d pred   (dloss = 1)
        _, grads = model.backward(params, cache, dpred)

    Returns, like ``jax.value_and_grad`` (with ``has_aux=True`` for wide models):

    * pure model: ``f(params, x, target) -> (loss, grads)``;
    * wide model: ``f(params, x, target, state, ctx) -> ((loss, new_state), grads)``.

    ``value_and_grad(fn.as_wide(model), loss)`` has the wide form for every model (state
    ``()`` for a pure one), for code that must not care; :func:`train_step` with a
    :class:`TrainState` is the same call for both. A multi-output model (a ``graph`` with
    several outputs) trains with a loss over tuples, :func:`funcnn.losses.multi`.

    ``grads`` has the structure of ``params``. The function is pure, so it can be jitted.

    ``policy``: a mixed-precision :class:`Policy`: forward and backward in
    ``policy.compute``, the loss in ``policy.output``, ``grads`` in the params' dtypes
    (no loss scaling here; :func:`train_step` does that).
    """
    _check_model_and_loss("value_and_grad", model, loss)
    if policy is not None:
        policy = _check_policy("value_and_grad", policy, None, scaling=False)
        mixed = _policy_value_and_grad(model, loss, policy)
        if not model.wide:

            def f_pure(params, x, target):
                value, _, grads = mixed(params, (), x, target, Ctx(), None)
                return value, grads

            return f_pure

        def f_policy(params, x, target, state, ctx):
            value, new_state, grads = mixed(params, state, x, target, ctx, None)
            return (value, new_state), grads

        return f_policy

    if not model.wide:

        def f(params, x, target, *extra):
            if extra:
                raise TypeError(
                    f"value_and_grad: {model.name} is a pure model (no child is wide), so the "
                    f"gradient function is f(params, x, target) -> (loss, grads), got "
                    f"{3 + len(extra)} arguments. value_and_grad(fn.as_wide(model), loss) "
                    f"gives f(params, x, target, state, ctx) -> ((loss, state), grads)."
                )
            pred, cache = model.forward(params, x)
            value, loss_cache = _scalar_loss(loss, pred, target)
            _, grads = model.backward(params, cache, loss.backward(loss_cache))
            return value, grads

        return f

    def f_wide(params, x, target, state=_MISSING, ctx=_MISSING):
        if state is _MISSING or ctx is _MISSING:
            raise TypeError(
                f"value_and_grad: {model.name} is a wide model ({wide_reason(model)}), so the "
                f"gradient function is f(params, x, target, state, ctx) -> ((loss, "
                f"new_state), grads), with ctx = fn.Ctx(key=key, train=True)."
            )
        pred, cache, new_state = model.forward(params, x, state, ctx)
        value, loss_cache = _scalar_loss(loss, pred, target)
        _, grads = model.backward(params, cache, loss.backward(loss_cache))
        return (value, new_state), grads

    return f_wide


def _policy_value_and_grad(model: Layer, loss: Loss, policy: Policy | None) -> Callable:
    """``f(params, state, x, target, ctx, dloss) -> (loss, new_state, grads)`` for any model,
    in the dtypes of ``policy`` (``None``: as given) and for the loss times ``dloss``.

    The floating params and inputs are cast to ``policy.compute``, the model's output to
    ``policy.output`` before the loss; the loss's gradient goes back into the backward in
    the compute dtype, and the parameter gradients come out in the params' dtypes.
    """
    wide = as_wide(model)

    def f(params, state, x, target, ctx, dloss):
        inner = params if policy is None else policy.cast_to_compute(params)
        if policy is not None:
            x = policy.cast_to_compute(x)
        pred, cache, new_state = wide.forward(inner, x, state, ctx)
        out = pred if policy is None else policy.cast_to_output(pred)
        value, loss_cache = _scalar_loss(loss, out, target)
        dpred = loss.backward(loss_cache, 1.0 if dloss is None else dloss)
        _, grads = wide.backward(inner, cache, _same_dtypes(dpred, pred))
        return value, _same_dtypes(new_state, state), _same_dtypes(grads, params)

    return f


def _check_policy(name: str, policy, optimizer, *, scaling: bool = True) -> Policy | None:
    if policy is None:
        return None
    if not isinstance(policy, Policy):
        raise TypeError(
            f"{name}: policy must be a Policy (fn.train.mixed_precision(...)), got "
            f"{type(policy).__name__}"
        )
    if scaling and policy.loss_scale is not None and not is_loss_scaled(optimizer):
        raise TypeError(
            f"{name}: the policy {policy!r} scales the loss, and the loss scale lives in the "
            f"optimizer state: pass optimizer = policy.wrap(optimizer), here and where the "
            f"optimizer state is made (fn.train.init_train_state(model, optimizer, ...))"
        )
    return policy


# --- the train state ------------------------------------------------------------------


class TrainState(NamedTuple):
    """Everything a training loop carries from one step to the next, as one pytree.

    The same four fields for every model, so a loop written for a pure model keeps
    working when a dropout or a batchnorm is added:

    * ``params``: the trainable parameters;
    * ``state``: the model state (running statistics; ``()`` for a pure model);
    * ``opt_state``: the optimizer state;
    * ``key``: a PRNG key (raw or typed) or ``None``. Every step splits it: one half is
      the step's ``Ctx(key=..., train=True)`` key (dropout masks), the other is carried
      on. A pure model ignores it, but it is split all the same, so adding a random
      layer does not change what the other keys are.

    It is a ``NamedTuple``: jit, donate, save with :func:`funcnn.io.save` and
    ``ts._replace(params=...)`` it like any pytree.
    """

    params: PyTree
    state: PyTree
    opt_state: PyTree
    key: Any = None

    @classmethod
    def create(
        cls, params: PyTree, optimizer, *, state: PyTree = (), key=None, opt_state=None
    ) -> TrainState:
        """A train state for existing params (e.g. loaded from a checkpoint)."""
        _check_optimizer("TrainState.create", optimizer)
        return cls(params, state, optimizer.init(params) if opt_state is None else opt_state, key)


def init_train_state(model: Layer, optimizer, key, input_shape) -> TrainState:
    """Initialize ``model`` and ``optimizer`` into a :class:`TrainState`, for any model.

    ``key`` is split in two: one half initializes the params (and state), the other
    becomes the train state's key for the steps' dropout masks.

    >>> import jax, funcnn as fn
    >>> model = fn.sequential(fn.dense(4), fn.dropout(0.5), fn.dense(2))
    >>> ts = fn.train.init_train_state(model, fn.optim.sgd(0.1), jax.random.PRNGKey(0), (8, 3))
    >>> ts.state  # dropout keeps no running state
    ((), (), ())
    """
    if not isinstance(model, Layer):
        raise TypeError(f"init_train_state: model must be a Layer, got {type(model).__name__}")
    _check_optimizer("init_train_state", optimizer)
    init_key, step_key = jax.random.split(key)
    params, state, _ = init_layer(model, init_key, input_shape)
    return TrainState(params, state, optimizer.init(params), step_key)


def _check_optimizer(name: str, optimizer):
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            f"{name}: optimizer must be a GradientTransformation (init, update), "
            f"got {type(optimizer).__name__}"
        )


def _is_empty(state) -> bool:
    return isinstance(state, tuple) and len(state) == 0


def _empty_state(model: Layer, input_shape) -> PyTree:
    """The all-``()`` state of a wide ``model`` that keeps none (dropout only), or, for a
    model with running state, the path of its first state leaf (a string)."""
    try:
        return _empty_state_cached(model, input_shape)
    except TypeError as err:  # an unhashable shape tree (dict inputs): compute it uncached
        if "unhashable" not in str(err):
            raise
        return _empty_state_cached.__wrapped__(model, input_shape)


@functools.lru_cache(maxsize=64)
def _empty_state_cached(model: Layer, input_shape) -> PyTree:
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    state = jax.eval_shape(lambda k: init_layer(model, k, input_shape)[1], key)
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    return state if not leaves else jax.tree_util.keystr(leaves[0][0])


def _resolve_state(name: str, model: Layer, state, x):
    """``state`` as given, or, for a wide model given ``()``, its all-``()`` state.

    A model made wide only by random layers (dropout) has no running state, so a loop
    written for a pure model (``state=()``) works unchanged. A model with running
    statistics needs the state its ``init`` made; the error says so.
    """
    if not model.wide or not _is_empty(state):
        return state
    shape = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), x)
    found = _empty_state(model, shape)
    if not isinstance(found, str):
        return found
    raise TypeError(
        f"{name}: {model.name} is a wide model with running state ({wide_reason(model)}; "
        f"state leaves such as {found}), but state=() was passed. Pass the state its init "
        f"made: params, state, _ = fn.init_layer(model, key, shape), or use "
        f"fn.train.init_train_state(model, optimizer, key, shape)."
    )


def _same_dtypes(new, old):
    """``new`` with each floating leaf cast to the dtype of the matching ``old`` leaf."""
    return jax.tree_util.tree_map(
        lambda a, b: a.astype(b.dtype) if hasattr(b, "dtype") and a.dtype != b.dtype else a,
        new,
        old,
    )


def train_step(
    model: Layer,
    loss: Loss,
    optimizer: GradientTransformation,
    *,
    jit: bool = True,
    donate: bool = True,
    mesh=None,
    policy: Policy | None = None,
) -> Callable:
    """One optimization step as a pure function, compiled with ``jax.jit``.

    The step has one form for every model, on a :class:`TrainState`::

        step(train_state, x, target) -> (train_state, loss)

    It splits ``train_state.key`` and runs a wide model with
    ``Ctx(key=<one half>, train=True)``. ``loss`` is the value before the update.

    The explicit forms of earlier versions are still accepted (they differ by model):

    * pure model: ``step(params, opt_state, x, target) -> (params, opt_state, loss)``;
    * wide model: ``step(params, state, opt_state, x, target, key)
      -> (params, state, opt_state, loss)``.

    A call in the wrong form raises a ``TypeError`` saying which form the model has and
    why (which child makes it wide). A model made wide only by dropout may be given the
    state ``()``; it is replaced by the model's all-``()`` state.

    With ``donate=True`` (the default) the params, model state, optimizer state (and the
    train state's key) passed in are donated: XLA writes the new values into their
    memory, and the old arrays are deleted, so always continue with the returned ones.
    Every donated input has an output of the same shape and dtype (the optimizer and the
    step keep dtypes stable), so no buffer goes unused and JAX emits no donation
    warning, on CPU as on GPU. ``jit=False`` returns the plain function (to compose with
    ``jax.lax.scan``, ``vmap``, ...).

    ``mesh``: a ``jax.sharding.Mesh`` with a ``"data"`` axis (:func:`funcnn.sharding.
    data_mesh`): the step takes ordinary host batches of the global batch size, splits
    them along the leading axis over ``"data"``, replicates params, model state,
    optimizer state and key, and returns them replicated. The compiled step is the same
    program; XLA partitions it and all-reduces the gradients and the batch statistics, so
    the numbers are those of one device (see ``docs/scaling.md``). The batch size must be
    a multiple of the number of devices along ``"data"``.

    ``policy``: a mixed-precision :class:`Policy` (:func:`mixed_precision`): the forward
    and backward run in ``policy.compute``, the loss in ``policy.output``, the optimizer
    on the params' own dtype. A policy that scales the loss (float16) needs the optimizer
    wrapped by ``policy.wrap(optimizer)``; a step whose gradients are not finite then
    leaves params, model state and optimizer state unchanged (and lowers the scale).

    With ``jit=True`` the step has ``step.lower(*args)``, the ``jax.jit`` lowering of the
    same call (e.g. ``step.lower(ts, x, y).compile().as_text()`` shows the compiled HLO).
    """
    _check_model_and_loss("train_step", model, loss)
    _check_optimizer("train_step", optimizer)
    mesh = None if mesh is None else check_mesh("train_step", mesh)
    policy = _check_policy("train_step", policy, optimizer)
    scaled = is_loss_scaled(optimizer)
    grad_fn = value_and_grad(model, loss)
    mixed_fn = _policy_value_and_grad(model, loss, policy) if policy or scaled else None

    def gradients(params, state, x, target, key, opt_state):
        if mixed_fn is not None:
            ctx = Ctx(key=key, train=True)
            return mixed_fn(params, state, x, target, ctx, opt_state.scale if scaled else None)
        if model.wide:
            (value, new_state), grads = grad_fn(params, x, target, state, Ctx(key=key, train=True))
            # Keep the state's dtypes (e.g. running statistics of float32 params fed
            # float64 inputs), so its donated buffers are reused and nothing retraces.
            return value, _same_dtypes(new_state, state), grads
        value, grads = grad_fn(params, x, target)
        return value, state, grads

    def update(params, state, new_state, opt_state, grads):
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        if scaled:  # a skipped step (non-finite gradients) keeps the model state too
            new_state = select(new_opt_state.skipped == opt_state.skipped, new_state, state)
        return apply_updates(params, updates), new_state, new_opt_state

    def state_step(ts, x, target):
        if ts.key is None:
            carry, step_key = None, None
        else:
            carry, step_key = jax.random.split(ts.key)
        value, new_state, grads = gradients(ts.params, ts.state, x, target, step_key, ts.opt_state)
        params, new_state, opt_state = update(ts.params, ts.state, new_state, ts.opt_state, grads)
        return TrainState(params, new_state, opt_state, carry), value

    def pure_step(params, opt_state, x, target):
        value, _, grads = gradients(params, (), x, target, None, opt_state)
        params, _, opt_state = update(params, (), (), opt_state, grads)
        return params, opt_state, value

    def wide_step(params, state, opt_state, x, target, key):
        value, new_state, grads = gradients(params, state, x, target, key, opt_state)
        params, new_state, opt_state = update(params, state, new_state, opt_state, grads)
        return params, new_state, opt_state, value

    explicit, n_explicit = (wide_step, 6) if model.wide else (pure_step, 4)
    # The explicit forms' argument positions: (replicated ones, batch ones).
    explicit_places = ((0, 1, 2, 5), (3, 4)) if model.wide else ((0, 1), (2, 3))
    if jit:
        donated = (0, 1, 2) if model.wide else (0, 1)
        # With a mesh, every output (state, loss) is replicated, like the inputs it replaces.
        out = {} if mesh is None else {"out_shardings": replicated_sharding(mesh)}
        state_step = jax.jit(state_step, donate_argnums=(0,) if donate else (), **out)
        explicit = jax.jit(explicit, donate_argnums=donated if donate else (), **out)

    def place(args, replicated_at, batch_at):
        """With a mesh: replicate the carried values and shard the batch."""
        if mesh is None:
            return args
        args = list(args)
        batch = shard_batch(tuple(args[i] for i in batch_at), mesh, name="train_step")
        for i, b in zip(batch_at, batch, strict=True):
            args[i] = b
        for i in replicated_at:
            args[i] = replicate(args[i], mesh)
        return tuple(args)

    def prepare(args):
        """The function to run and its arguments, after checking the call's form."""
        if args and isinstance(args[0], TrainState):
            if len(args) != 3:
                raise TypeError(
                    f"train_step: the TrainState form is step(train_state, x, target) -> "
                    f"(train_state, loss), got {len(args)} arguments"
                )
            ts, x, target = args
            if model.wide and _is_empty(ts.state):
                ts = ts._replace(state=_resolve_state("train_step", model, ts.state, x))
            _check_scaled_state(ts.opt_state)
            return state_step, place((ts, x, target), (0,), (1, 2))
        if len(args) != n_explicit:
            raise TypeError(_step_form_help(model, len(args)))
        if model.wide:
            args = list(args)
            args[1] = _resolve_state("train_step", model, args[1], args[3])
        _check_scaled_state(args[2 if model.wide else 1])
        return explicit, place(args, *explicit_places)

    def _check_scaled_state(opt_state):
        if scaled and not isinstance(opt_state, LossScaleState):
            raise TypeError(
                f"train_step: the optimizer scales the loss, so its state must be a "
                f"LossScaleState, got {type(opt_state).__name__}: make the optimizer state "
                f"with the same wrapped optimizer (fn.train.init_train_state(model, "
                f"policy.wrap(optimizer), ...) or policy.wrap(optimizer).init(params))"
            )

    def step(*args):
        fn, args = prepare(args)
        return fn(*args)

    if jit:

        def lower(*args):
            fn, args = prepare(args)
            return fn.lower(*args)

        step.lower = lower
    step.__doc__ = train_step.__doc__
    return step


def _step_form_help(model: Layer, n: int) -> str:
    uniform = (
        "The TrainState form, step(train_state, x, target) -> (train_state, loss) with "
        "train_state = fn.train.init_train_state(model, optimizer, key, shape), is the "
        "same for pure and wide models."
    )
    if model.wide:
        return (
            f"train_step: {model.name} is a wide model ({wide_reason(model)}), so its step is "
            f"step(params, state, opt_state, x, target, key) -> (params, state, opt_state, "
            f"loss); got {n} arguments. {uniform}"
        )
    return (
        f"train_step: {model.name} is a pure model (no child is wide), so its step is "
        f"step(params, opt_state, x, target) -> (params, opt_state, loss); got {n} "
        f"arguments. {uniform}"
    )


# --- data ----------------------------------------------------------------------------


def _num_examples(name: str, x, y) -> int:
    sizes = {int(np.shape(a)[0]) for a in jax.tree_util.tree_leaves((x, y)) if np.ndim(a) > 0}
    if len(sizes) != 1:
        shapes = [tuple(np.shape(a)) for a in jax.tree_util.tree_leaves((x, y))]
        raise ValueError(
            f"{name}: x and y must hold the same number of examples (leading axis), "
            f"got shapes {shapes}"
        )
    return sizes.pop()


def batches(
    key,
    x: PyTree,
    y: PyTree,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[PyTree, PyTree]]:
    """Iterate over minibatches ``(x_batch, y_batch)`` of NumPy or JAX arrays.

    Args:
      key: a PRNG key for the shuffle (may be ``None`` when ``shuffle=False``).
      x, y: arrays (or pytrees of arrays) sharing the leading example axis.
      batch_size: examples per batch.
      shuffle: visit the examples in the order of ``jax.random.permutation(key, n)``.
      drop_last: skip the last batch when it is smaller than ``batch_size`` (keeps every
        batch the same shape, so a jitted step compiles once).

    Arguments are checked at once, before the first batch is drawn.

    >>> import numpy as np, funcnn as fn
    >>> x, y = np.arange(10).reshape(5, 2), np.arange(5)
    >>> [yb.tolist() for _, yb in fn.train.batches(None, x, y, 2, shuffle=False)]
    [[0, 1], [2, 3], [4]]
    """
    check_positive_int("batches", "batch_size", batch_size)
    n = _num_examples("batches", x, y)
    if shuffle and key is None:
        raise ValueError("batches: shuffle=True needs a PRNG key, got key=None")
    order = np.asarray(jax.random.permutation(key, n)) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n

    def take(tree, idx):
        return jax.tree_util.tree_map(lambda a: a[idx], tree)

    def generate():
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield take(x, idx), take(y, idx)

    return generate()


# --- inference and evaluation --------------------------------------------------------


def predict(
    model: Layer,
    params: PyTree,
    x: PyTree,
    state: PyTree = (),
    *,
    batch_size: int | None = None,
) -> PyTree:
    """The model's output alone, in eval mode: no cache is kept, no state is returned.

    The same call for pure and wide models: dropout is off and batchnorm uses its
    running statistics (``Ctx(train=False)``), and ``state`` may stay ``()`` for a model
    whose only wide layers are random (dropout). The forward is jit-compiled (the model
    is a static argument), so the cache the backward would need is never materialized;
    calling ``predict`` inside your own ``jax.jit`` works the same way.

    Args:
      batch_size: run the examples in batches of this size and concatenate the outputs
        along the leading axis (bounded memory for a large ``x``); ``None``: one call.

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> model = fn.sequential(fn.dense(4), fn.dropout(0.5), fn.dense(2))
    >>> params, state, _ = fn.init_layer(model, jax.random.PRNGKey(0), (3, 5))
    >>> fn.predict(model, params, jnp.ones((3, 5))).shape
    (3, 2)
    """
    if not isinstance(model, Layer):
        raise TypeError(f"predict: model must be a Layer, got {type(model).__name__}")
    state = _resolve_state("predict", model, state, x)
    if batch_size is None:
        return _predict(model, params, x, state)
    check_positive_int("predict", "batch_size", batch_size)
    _num_examples("predict", x, ())
    outs = [
        _predict(model, params, xb, state)
        for xb, _ in batches(None, x, (), batch_size, shuffle=False)
    ]
    return jax.tree_util.tree_map(lambda *ys: jnp.concatenate(ys, axis=0), *outs)


@functools.partial(jax.jit, static_argnames=("model",))
def _predict(model, params, x, state):
    y, _, _ = apply_layer(model, params, x, state, Ctx(train=False))
    return y


@functools.partial(jax.jit, static_argnames=("model", "loss"))
def _eval_batch(model, loss, params, state, x, target):
    """(loss, number of correct argmax predictions or None) for one batch, in eval mode."""
    pred, _, _ = apply_layer(model, params, x, state, Ctx(train=False))
    value, _ = _scalar_loss(loss, pred, target)
    correct = jnp.sum(jnp.argmax(pred, axis=-1) == target) if _is_labels(pred, target) else None
    return value, correct


def _is_labels(pred, target) -> bool:
    """Classification: integer labels, one fewer axis than the scores."""
    return (
        hasattr(target, "dtype")
        and jnp.issubdtype(target.dtype, jnp.integer)
        and getattr(pred, "ndim", 0) == target.ndim + 1
    )


def evaluate(
    model: Layer,
    loss: Loss,
    params: PyTree,
    x: PyTree,
    target: PyTree,
    state: PyTree = (),
    *,
    batch_size: int = 1024,
    mesh=None,
) -> dict[str, float | None]:
    """Mean loss and accuracy of ``model`` on ``(x, target)``, in eval mode.

    Runs the forward with ``Ctx(train=False)`` (dropout off, batchnorm on its running
    statistics) in batches of ``batch_size``, jitted. ``state`` may stay ``()`` for a
    model whose only wide layers are random (dropout).

    Returns ``{"loss": ..., "accuracy": ...}``. ``loss`` averages the per-batch losses
    weighted by batch size (the exact mean for losses that average over the batch).
    ``accuracy`` is the fraction of ``argmax(output, -1) == target`` when the targets are
    integer class labels, and ``None`` otherwise.

    ``mesh``: evaluate data-parallel (:mod:`funcnn.sharding`): params and state are
    replicated, each batch is split over the mesh's ``"data"`` axis (a last batch that does
    not split evenly is replicated instead: every device computes it whole).
    """
    _check_model_and_loss("evaluate", model, loss)
    check_positive_int("evaluate", "batch_size", batch_size)
    n = _num_examples("evaluate", x, target)
    state = _resolve_state("evaluate", model, state, x)
    if mesh is not None:
        mesh = check_mesh("evaluate", mesh)
        params, state = replicate((params, state), mesh)
    total, correct = 0.0, None
    for xb, tb in batches(None, x, target, batch_size, shuffle=False):
        size = _num_examples("evaluate", xb, tb)
        if mesh is not None:
            divides = size % mesh.shape["data"] == 0
            xb, tb = shard_batch((xb, tb), mesh) if divides else replicate((xb, tb), mesh)
        value, right = _eval_batch(model, loss, params, state, xb, tb)
        total += float(value) * size
        if right is not None:
            correct = (correct or 0) + int(right)
    return {"loss": total / n, "accuracy": None if correct is None else correct / n}


# --- the loop ------------------------------------------------------------------------


class FitResult(NamedTuple):
    """What :func:`fit` returns: the trained values and the per-epoch history."""

    params: PyTree
    state: PyTree  # model state (() for a pure model)
    opt_state: PyTree
    history: dict[str, list[float]]


def _progress(epochs: int, show: bool):
    """A tqdm bar of ``epochs`` steps when tqdm is installed (it is optional), else None.

    The bar is advanced by hand (:func:`_advance`), not iterated: a bar that wraps the
    epoch range counts an epoch only when the loop asks for the next one, so the postfix
    set at the end of epoch ``n`` would be drawn beside the count ``n - 1``.
    """
    if show:
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=epochs, desc="fit", unit="epoch")
    return None


def _advance(bar, numbers: dict[str, str]) -> None:
    """End of an epoch: its numbers (no redraw), then the count (one redraw of both)."""
    bar.set_postfix(numbers, refresh=False)
    bar.update(1)


def fit(
    model: Layer,
    loss: Loss,
    optimizer: GradientTransformation,
    params: PyTree,
    x: PyTree,
    y: PyTree,
    *,
    key,
    epochs: int = 10,
    batch_size: int = 32,
    state: PyTree = (),
    opt_state: PyTree = None,
    validation_data: tuple[PyTree, PyTree] | None = None,
    progress: bool = True,
    mesh=None,
    policy: Policy | None = None,
) -> FitResult:
    """Train for ``epochs`` passes over ``(x, y)`` with :func:`train_step`; a small loop.

    Each epoch shuffles the data (:func:`batches` with ``drop_last=True``, so every batch
    has the same shape and the step compiles once; ``batch_size`` is capped at the data
    size), runs the jitted step on every batch, then evaluates.

    Args:
      key: PRNG key for the shuffles and, for wide models, each step's ``Ctx`` key.
      state: the model state (wide models; may stay ``()`` when the only wide layers
        are random, such as dropout).
      opt_state: optimizer state to resume from (default ``optimizer.init(params)``).
      validation_data: ``(x_val, y_val)`` to :func:`evaluate` after every epoch.
      progress: show a tqdm bar over the epochs (or print a line per epoch if tqdm is
        not installed).
      mesh: train (and evaluate) data-parallel on this mesh (see :func:`train_step`);
        ``batch_size`` is the global batch, a multiple of the devices along ``"data"``.
        In several processes every process passes the same ``x``, ``y`` and ``key``; each
        sends its devices their rows of every batch.
      policy: a mixed-precision :class:`Policy` for the steps (evaluation runs in the
        params' dtype). A policy that scales the loss wraps the optimizer
        (``policy.wrap(optimizer)``), so ``opt_state`` is then a ``LossScaleState``.

    Returns:
      A :class:`FitResult` ``(params, state, opt_state, history)``. ``history["loss"]``
      is the mean training batch loss of each epoch; for integer class labels
      ``history["accuracy"]`` is the training accuracy after each epoch; with
      ``validation_data`` there are ``"val_loss"`` and ``"val_accuracy"``. The caller's
      ``params`` are copied first, so the step's donation never deletes them.
    """
    _check_model_and_loss("fit", model, loss)
    check_positive_int("fit", "epochs", epochs)
    check_positive_int("fit", "batch_size", batch_size)
    batch_size = min(batch_size, _num_examples("fit", x, y))
    if mesh is not None:
        mesh = check_mesh("fit", mesh)
        check_batch("fit", np.zeros((batch_size, 0)), mesh)
    if policy is not None:
        optimizer = policy.wrap(optimizer) if isinstance(policy, Policy) else optimizer
        _check_policy("fit", policy, optimizer)
    step = train_step(model, loss, optimizer, mesh=mesh, policy=policy)
    state = _resolve_state("fit", model, state, x)
    # Copies: the step donates (consumes) its inputs; the caller keeps the originals.
    params, state = jax.tree_util.tree_map(jnp.array, (params, state))
    opt_state = (
        optimizer.init(params)
        if opt_state is None
        else jax.tree_util.tree_map(jnp.array, opt_state)
    )
    key, step_key = jax.random.split(key)
    ts = TrainState(params, state, opt_state, step_key)

    history: dict[str, list[float]] = {"loss": []}
    bar = _progress(epochs, progress)
    for epoch in range(epochs):
        key, shuffle_key = jax.random.split(key)
        losses = []
        for xb, yb in batches(shuffle_key, x, y, batch_size, drop_last=True):
            ts, value = step(ts, xb, yb)
            losses.append(value)
        history["loss"].append(float(jnp.mean(jnp.stack(losses))))
        params, state, opt_state = ts.params, ts.state, ts.opt_state

        train = evaluate(model, loss, params, x, y, state, mesh=mesh)
        if train["accuracy"] is not None:
            history.setdefault("accuracy", []).append(train["accuracy"])
        if validation_data is not None:
            val = evaluate(model, loss, params, *validation_data, state, mesh=mesh)
            history.setdefault("val_loss", []).append(val["loss"])
            if val["accuracy"] is not None:
                history.setdefault("val_accuracy", []).append(val["accuracy"])

        latest = {name: values[-1] for name, values in history.items()}
        if bar is not None:
            _advance(bar, {name: f"{v:.4f}" for name, v in latest.items()})
        elif progress:
            shown = "  ".join(f"{name}={v:.4f}" for name, v in latest.items())
            print(f"epoch {epoch + 1}/{epochs}  {shown}")
    if bar is not None:
        bar.close()

    return FitResult(params, state, opt_state, history)
