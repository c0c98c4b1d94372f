"""Training: gradients from the hand-written backward passes, a jitted step, a small loop.

* :func:`value_and_grad` chains ``loss.backward`` into ``model.backward`` (no ``jax.grad``).
* :func:`train_step` adds an optimizer and compiles the whole step with ``jax.jit``.
* :func:`batches`, :func:`evaluate` and :func:`fit` are the loop around it.

>>> import jax, jax.numpy as jnp, funcnn as fn
>>> model = fn.sequential(fn.dense(8), fn.tanh(), fn.dense(1))
>>> mse = fn.losses.mse()
>>> params, _ = model.init(jax.random.PRNGKey(0), (16, 3))
>>> opt = fn.optim.adam(1e-2)
>>> step = fn.train.train_step(model, mse, opt)
>>> x = jnp.ones((16, 3), jnp.float32); y = jnp.zeros((16, 1), jnp.float32)
>>> opt_state = opt.init(params)
>>> params, opt_state, loss0 = step(params, opt_state, x, y)
>>> for _ in range(50):
...     params, opt_state, loss = step(params, opt_state, x, y)
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

from funcnn.core import Ctx, Layer, Loss, apply_layer, check_positive_int
from funcnn.optim import GradientTransformation, apply_updates

PyTree = Any

__all__ = ["FitResult", "batches", "evaluate", "fit", "train_step", "value_and_grad"]


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


def value_and_grad(model: Layer, loss: Loss) -> Callable:
    """The loss and its gradient with respect to the params, from the hand-written passes.

    Forward, then backward through the loss and the model::

        pred, cache = model.forward(params, x)
        value, loss_cache = loss.forward(pred, target)
        dpred = loss.backward(loss_cache)          # d value / d pred   (dloss = 1)
        _, grads = model.backward(params, cache, dpred)

    Returns, like ``jax.value_and_grad`` (with ``has_aux=True`` for wide models):

    * pure model: ``f(params, x, target) -> (loss, grads)``;
    * wide model: ``f(params, x, target, state, ctx) -> ((loss, new_state), grads)``.

    ``grads`` has the structure of ``params``. The function is pure, so it can be jitted.
    """
    _check_model_and_loss("value_and_grad", model, loss)

    if not model.wide:

        def f(params, x, target):
            pred, cache = model.forward(params, x)
            value, loss_cache = _scalar_loss(loss, pred, target)
            _, grads = model.backward(params, cache, loss.backward(loss_cache))
            return value, grads

        return f

    def f_wide(params, x, target, state, ctx):
        pred, cache, new_state = model.forward(params, x, state, ctx)
        value, loss_cache = _scalar_loss(loss, pred, target)
        _, grads = model.backward(params, cache, loss.backward(loss_cache))
        return (value, new_state), grads

    return f_wide


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
) -> Callable:
    """One optimization step as a pure function, compiled with ``jax.jit``.

    * pure model: ``step(params, opt_state, x, target) -> (params, opt_state, loss)``;
    * wide model: ``step(params, state, opt_state, x, target, key)
      -> (params, state, opt_state, loss)``, run with ``Ctx(key, train=True)``.

    ``loss`` is the value before the update. With ``donate=True`` (the default) the
    params, model state and optimizer state passed in are donated: XLA writes the new
    values into their memory, and the old arrays are deleted, so always continue with
    the returned ones. Every donated input has an output of the same shape and dtype
    (the optimizer and the step keep dtypes stable), so no buffer goes unused and JAX
    emits no donation warning, on CPU as on GPU. ``jit=False`` returns the plain
    function (to compose with ``jax.lax.scan``, ``vmap``, ...).
    """
    _check_model_and_loss("train_step", model, loss)
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            f"train_step: optimizer must be a GradientTransformation (init, update), "
            f"got {type(optimizer).__name__}"
        )
    grad_fn = value_and_grad(model, loss)

    if not model.wide:

        def step(params, opt_state, x, target):
            value, grads = grad_fn(params, x, target)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return apply_updates(params, updates), opt_state, value

        donated = (0, 1)  # params, opt_state
    else:

        def step(params, state, opt_state, x, target, key):
            (value, new_state), grads = grad_fn(params, x, target, state, Ctx(key, train=True))
            updates, opt_state = optimizer.update(grads, opt_state, params)
            # Keep the state's dtypes (e.g. running statistics of float32 params fed
            # float64 inputs), so its donated buffers are reused and nothing retraces.
            return apply_updates(params, updates), _same_dtypes(new_state, state), opt_state, value

        donated = (0, 1, 2)  # params, state, opt_state

    if not jit:
        return step
    return jax.jit(step, donate_argnums=donated if donate else ())


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


# --- evaluation ----------------------------------------------------------------------


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
) -> dict[str, float | None]:
    """Mean loss and accuracy of ``model`` on ``(x, target)``, in eval mode.

    Runs the forward with ``Ctx(train=False)`` (dropout off, batchnorm on its running
    statistics) in batches of ``batch_size``, jitted.

    Returns ``{"loss": ..., "accuracy": ...}``. ``loss`` averages the per-batch losses
    weighted by batch size (the exact mean for losses that average over the batch).
    ``accuracy`` is the fraction of ``argmax(output, -1) == target`` when the targets are
    integer class labels, and ``None`` otherwise.
    """
    _check_model_and_loss("evaluate", model, loss)
    check_positive_int("evaluate", "batch_size", batch_size)
    n = _num_examples("evaluate", x, target)
    total, correct = 0.0, None
    for xb, tb in batches(None, x, target, batch_size, shuffle=False):
        size = _num_examples("evaluate", xb, tb)
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
    """An epoch iterator with a tqdm bar when tqdm is installed (it is optional)."""
    if show:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(range(epochs), desc="fit", unit="epoch")
    return range(epochs)


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
) -> FitResult:
    """Train for ``epochs`` passes over ``(x, y)`` with :func:`train_step`; a small loop.

    Each epoch shuffles the data (:func:`batches` with ``drop_last=True``, so every batch
    has the same shape and the step compiles once; ``batch_size`` is capped at the data
    size), runs the jitted step on every batch, then evaluates.

    Args:
      key: PRNG key for the shuffles and, for wide models, each step's ``Ctx`` key.
      state: the model state (wide models).
      opt_state: optimizer state to resume from (default ``optimizer.init(params)``).
      validation_data: ``(x_val, y_val)`` to :func:`evaluate` after every epoch.
      progress: show a tqdm bar over the epochs (or print a line per epoch if tqdm is
        not installed).

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
    step = train_step(model, loss, optimizer)
    # Copies: the step donates (consumes) its inputs; the caller keeps the originals.
    params, state = jax.tree_util.tree_map(jnp.array, (params, state))
    opt_state = (
        optimizer.init(params)
        if opt_state is None
        else jax.tree_util.tree_map(jnp.array, opt_state)
    )

    history: dict[str, list[float]] = {"loss": []}
    bar = _progress(epochs, progress)
    for epoch in bar:
        key, shuffle_key = jax.random.split(key)
        losses = []
        for xb, yb in batches(shuffle_key, x, y, batch_size, drop_last=True):
            if model.wide:
                key, step_key = jax.random.split(key)
                params, state, opt_state, value = step(params, state, opt_state, xb, yb, step_key)
            else:
                params, opt_state, value = step(params, opt_state, xb, yb)
            losses.append(value)
        history["loss"].append(float(jnp.mean(jnp.stack(losses))))

        train = evaluate(model, loss, params, x, y, state)
        if train["accuracy"] is not None:
            history.setdefault("accuracy", []).append(train["accuracy"])
        if validation_data is not None:
            val = evaluate(model, loss, params, *validation_data, state)
            history.setdefault("val_loss", []).append(val["loss"])
            if val["accuracy"] is not None:
                history.setdefault("val_accuracy", []).append(val["accuracy"])

        latest = {name: values[-1] for name, values in history.items()}
        if hasattr(bar, "set_postfix"):
            bar.set_postfix({name: f"{v:.4f}" for name, v in latest.items()})
        elif progress:
            shown = "  ".join(f"{name}={v:.4f}" for name, v in latest.items())
            print(f"epoch {epoch + 1}/{epochs}  {shown}")

    return FitResult(params, state, opt_state, history)
