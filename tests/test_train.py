"""funcnn.train: value_and_grad vs jax.value_and_grad, the jitted step, batching, evaluate, fit."""

import dataclasses
import re
import sys
import types
import typing
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import optim
from funcnn.core import Ctx, Layer, Loss, as_wide
from funcnn.train import batches, evaluate, fit, train_step, value_and_grad

MSE = fn.losses.mse()
CE = fn.losses.softmax_cross_entropy()


def f64_params(model, input_shape, seed=1):
    """Random float64 params (biases included) and the init's state: ``init`` is only
    traced (``fn.check.init_shapes``), the values come from NumPy (``random_params``)."""
    params, state, _ = fn.check.init_shapes(model, jax.random.PRNGKey(0), input_shape)
    as_f64 = lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float64)  # noqa: E731
    params = jax.tree_util.tree_map(as_f64, params)
    return fn.check.random_params(jax.random.PRNGKey(seed), params)[0], state


def copy(tree):
    return jax.tree_util.tree_map(jnp.array, tree)


# --- a tiny wide layer: random mask in train mode, running mean in its state -------------


def noisy_scale(rate: float = 0.5) -> Layer:
    """y = x * s * mask (train: mask ~ Bernoulli(1 - rate) / (1 - rate); eval: mask = 1).

    State ``{"mean"}``: running mean of x (momentum 0.1) updated in train mode.
    Cache: (x * mask, mask).
    """

    def init(key, input_shape):
        d = input_shape[-1]
        return (
            {"s": jnp.ones((d,), jnp.float32)},
            {"mean": jnp.zeros((d,), jnp.float32)},
            input_shape,
        )

    def forward(params, x, state, ctx):
        s = params["s"].reshape(1, -1)
        if ctx.train:
            keep = jax.random.bernoulli(ctx.key, 1 - rate, x.shape)
            mask = keep.astype(x.dtype) / (1 - rate)
            mean = 0.9 * state["mean"] + 0.1 * x.mean(0)
            state = {"mean": mean.astype(state["mean"].dtype)}
        else:
            mask = jnp.ones_like(x)
        return x * mask * s, (x * mask, mask), state

    def backward(params, cache, dy):
        xm, mask = cache
        return dy * params["s"].reshape(1, -1) * mask, {"s": (dy * xm).sum(0)}

    return Layer(init, forward, backward, name="noisy_scale", wide=True)


# --- value_and_grad ----------------------------------------------------------------------

# One hidden width (4) for all three: the eager runs below then share their one-op
# programs (each eager op compiles once per shape).
PURE_MODELS = {
    "mlp": lambda: fn.sequential(fn.dense(4), fn.tanh(), fn.dense(3)),
    "residual": lambda: fn.sequential(
        fn.dense(4), fn.residual(fn.sequential(fn.dense(4), fn.gelu())), fn.relu(), fn.dense(3)
    ),
    "branches": lambda: fn.sequential(
        fn.fan_out(2),
        fn.parallel(fn.dense(3), fn.sequential(fn.dense(4), fn.sigmoid(), fn.dense(3))),
        fn.fan_in_sum(2),
    ),
}


def data(n=6, d=5, classes=3, seed=0):
    """float64 inputs, regression targets and labels, drawn with NumPy (an eager
    jax.random call compiles a kernel per shape)."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, classes))
    return jax.device_put(x), jax.device_put(y), jax.device_put(rng.integers(0, 3, size=n))


@pytest.mark.parametrize("loss_name", ["mse", "ce"])
@pytest.mark.parametrize("model_name", sorted(PURE_MODELS))
def test_value_and_grad_matches_jax(model_name, loss_name):
    model = PURE_MODELS[model_name]()
    x, y, labels = data()
    loss, target = (MSE, y) if loss_name == "mse" else (CE, labels)
    params, _ = f64_params(model, x.shape)

    def objective(params, x, target):
        pred, _ = model.forward(params, x)
        return loss.forward(pred, target)[0]

    @jax.jit  # ours and the reference in one compiled program
    def both(params, x, target):
        ours = value_and_grad(model, loss)(params, x, target)
        return ours, jax.value_and_grad(objective)(params, x, target)

    jitted, (ref_value, ref_grads) = both(params, x, target)
    if loss_name == "mse":
        value, grads = jitted
    else:  # eager: the numbers checked below, and jit gives the same ones
        value, grads = value_and_grad(model, loss)(params, x, target)
        jax.tree_util.tree_map(np.testing.assert_allclose, jitted, (value, grads))
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), grads, ref_grads
    )


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_value_and_grad_wide_matches_jax(train):
    model = fn.sequential(as_wide(fn.dense(4)), noisy_scale(), fn.tanh(), fn.dense(3))
    assert model.wide
    x, y, _ = data()
    params, state = f64_params(model, x.shape)
    ctx = Ctx(jax.random.PRNGKey(7), train)

    def objective(params, x, target, state, ctx):
        pred, _, new_state = model.forward(params, x, state, ctx)
        return MSE.forward(pred, target)[0], new_state

    @jax.jit  # ours and the reference in one compiled program
    def both(params, x, y, state, ctx):
        ours = value_and_grad(model, MSE)(params, x, y, state, ctx)
        ref = jax.value_and_grad(objective, has_aux=True)(params, x, y, state, ctx)
        return ours, ref

    ((value, new_state), grads), ((ref_value, ref_state), ref_grads) = both(
        params, x, y, state, ctx
    )
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    jax.tree_util.tree_map(np.testing.assert_allclose, new_state, ref_state)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), grads, ref_grads
    )
    moved = not np.allclose(new_state[1]["mean"], state[1]["mean"])
    assert moved == train  # the running mean only moves in train mode


def test_value_and_grad_errors():
    with pytest.raises(TypeError, match="value_and_grad: model must be a Layer"):
        value_and_grad(MSE, MSE)
    with pytest.raises(TypeError, match="value_and_grad: loss must be a funcnn Loss"):
        value_and_grad(fn.dense(2), lambda p, t: 0.0)
    per_example = Loss(lambda p, t: ((p - t) ** 2, (p, t)), lambda c, d=1.0: d, "squares")
    model = fn.dense(2)
    params, _, _ = fn.check.init_shapes(model, jax.random.PRNGKey(0), (3, 2))
    ones = jax.ShapeDtypeStruct((3, 2), jnp.float64)
    with pytest.raises(ValueError, match=r"squares: the loss must be a scalar, got shape \(3, 2\)"):
        # raised while tracing: jax.eval_shape compiles nothing
        jax.eval_shape(value_and_grad(model, per_example), params, ones, ones)


# --- train_step ----------------------------------------------------------------------------


def regression(n=64, d=3, seed=0):
    """float32 inputs and smooth targets, NumPy arrays (``fit`` then slices its batches
    on the host; jax arrays: test_batches_pytrees_and_jax_arrays)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, 2)).astype(np.float32)
    return x, np.sin(x @ w)


def counting(layer: Layer, traces: list) -> Layer:
    """``layer`` with a forward that records each trace (Python side effect)."""

    def forward(*args):
        traces.append(1)
        return layer.forward(*args)

    return dataclasses.replace(layer, forward=forward)


@pytest.mark.parametrize(
    "opt",
    [optim.sgd(0.1, momentum=0.9), optim.adam(3e-2), optim.adamw(3e-2)],
    ids=["sgd", "adam", "adamw"],
)
def test_train_step_decreases_the_loss(opt):
    x, y = regression()
    model = fn.sequential(fn.dense(16), fn.tanh(), fn.dense(2))
    params, _ = model.init(jax.random.PRNGKey(1), x.shape)
    step = train_step(model, MSE, opt)
    opt_state = opt.init(params)
    losses = []
    for _ in range(100):
        params, opt_state, value = step(params, opt_state, x, y)
        losses.append(float(value))
    assert losses[-1] < 0.3 * losses[0]


def test_train_step_traces_once_and_donates_without_warnings():
    traces = []
    model = counting(fn.sequential(fn.dense(8), fn.relu(), fn.dense(2)), traces)
    x, y = regression()
    params, _ = model.init(jax.random.PRNGKey(1), x.shape)
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(1e-2))
    step = train_step(model, MSE, opt)
    opt_state = opt.init(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Some donated buffers were not usable"
        for i in range(3):
            old = params
            # float64 inputs and float32 params: the dtypes must still not drift.
            params, opt_state, _ = step(params, opt_state, x.astype(jnp.float64), y)
            assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(old)), i
    assert len(traces) == 1
    assert params[0]["w"].dtype == jnp.float32


def test_train_step_without_donation_or_jit():
    # The model, data and dtype of test_value_and_grad_matches_jax[mlp-*]: the eager
    # (jit=False) step shares their one-op programs.
    x, y, _ = data()
    model = PURE_MODELS["mlp"]()
    params, _ = f64_params(model, x.shape)
    opt = optim.sgd(0.1)
    kept = train_step(model, MSE, opt, donate=False)
    plain = train_step(model, MSE, opt, jit=False)
    out = kept(params, opt.init(params), x, y)
    assert not any(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(params))
    ref = plain(params, opt.init(params), x, y)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), out, ref
    )


def test_train_step_wide():
    traces = []
    model = fn.sequential(
        counting(as_wide(fn.dense(16)), traces), noisy_scale(0.1), fn.tanh(), fn.dense(2)
    )
    assert model.wide
    x, y = regression()
    params, state, _ = model.init(jax.random.PRNGKey(1), x.shape)
    opt = optim.adam(1e-2)
    step = train_step(model, MSE, opt)
    opt_state = opt.init(params)
    key = jax.random.PRNGKey(2)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(150):
            key, sub = jax.random.split(key)
            params, state, opt_state, value = step(params, state, opt_state, x, y, sub)
            losses.append(float(value))
    assert len(traces) == 1
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    # The running mean of the noisy layer's input moved away from its initial zeros.
    assert float(jnp.abs(state[1]["mean"]).sum()) > 0


def test_train_step_wide_key_decides_the_mask():
    model = fn.sequential(as_wide(fn.dense(2)), noisy_scale())
    x, y = regression()
    params, state, _ = model.init(jax.random.PRNGKey(1), x.shape)
    opt = optim.sgd(0.1)
    step = train_step(model, MSE, opt, donate=False)
    opt_state = opt.init(params)
    a = step(params, state, opt_state, x, y, jax.random.PRNGKey(5))
    b = step(params, state, opt_state, x, y, jax.random.PRNGKey(5))
    c = step(params, state, opt_state, x, y, jax.random.PRNGKey(6))
    assert float(a[-1]) == float(b[-1])
    assert float(a[-1]) != float(c[-1])


def test_train_step_errors():
    with pytest.raises(TypeError, match="train_step: optimizer must be a GradientTransformation"):
        train_step(fn.dense(2), MSE, "adam")
    with pytest.raises(TypeError, match="train_step: model must be a Layer"):
        train_step(None, MSE, optim.sgd(0.1))


# --- batches ------------------------------------------------------------------------------


def test_batches_cover_every_example_once():
    x = np.arange(20).reshape(10, 2)
    y = np.arange(10)
    seen = []
    for xb, yb in batches(jax.random.PRNGKey(0), x, y, 3):
        np.testing.assert_array_equal(xb[:, 0] // 2, yb)  # x and y stay paired
        seen.extend(yb.tolist())
    assert sorted(seen) == list(range(10))
    assert seen != list(range(10))  # shuffled
    sizes = [len(yb) for _, yb in batches(jax.random.PRNGKey(0), x, y, 3, drop_last=True)]
    assert sizes == [3, 3, 3]
    again = [yb.tolist() for _, yb in batches(jax.random.PRNGKey(0), x, y, 3)]
    assert [i for batch in again for i in batch] == seen  # the key decides the order


def test_batches_pytrees_and_jax_arrays():
    # jax arrays (device_put: no compile to build them)
    x = (jax.device_put(np.arange(8.0).reshape(4, 2)), jax.device_put(np.arange(4.0)))
    y = jax.device_put(np.arange(4))
    assert all(isinstance(a, jax.Array) for a in (*x, y))
    out = list(batches(None, x, y, 2, shuffle=False))
    assert len(out) == 2
    (xa, xb), yb = out[1]
    np.testing.assert_array_equal(xb, [2.0, 3.0])
    np.testing.assert_array_equal(yb, [2, 3])
    assert xa.shape == (2, 2)


def test_batches_errors_at_once():
    x, y = np.zeros((5, 2)), np.zeros(4)
    with pytest.raises(ValueError, match=r"batches: x and y must hold the same number"):
        batches(None, x, y, 2, shuffle=False)
    with pytest.raises(ValueError, match=r"batches: batch_size must be a positive int, got 0"):
        batches(None, x, x, 0)
    with pytest.raises(ValueError, match=r"batches: shuffle=True needs a PRNG key"):
        batches(None, x, x, 2)


# --- evaluate ------------------------------------------------------------------------------


def test_evaluate_accuracy_and_mean_loss():
    # NumPy arrays: the batches are sliced on the host (jax arrays would compile a gather
    # per batch shape; test_batches_pytrees_and_jax_arrays covers them).
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 1.0]] * 3)
    labels = np.array([0, 1, 0, 2] * 3)  # 2 of every 4 right
    model = fn.identity()
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    full = -np.mean(log_p[np.arange(len(labels)), labels])  # the cross entropy of all 12
    for batch_size in (12, 5, 1):
        out = evaluate(model, CE, (), logits, labels, batch_size=batch_size)
        assert out["accuracy"] == pytest.approx(0.5)
        assert out["loss"] == pytest.approx(full, rel=1e-12)
    # Regression targets: no accuracy.
    assert evaluate(model, MSE, (), logits, logits)["accuracy"] is None
    assert evaluate(model, MSE, (), logits, logits)["loss"] == 0.0


def test_evaluate_uses_eval_mode():
    model = fn.sequential(noisy_scale(rate=0.9))
    params, state, _ = model.init(jax.random.PRNGKey(0), (4, 3))
    x = np.ones((4, 3))
    out = evaluate(model, MSE, params, x, x, state)  # no key needed: eval mode, no mask
    assert out["loss"] == 0.0


# --- fit -----------------------------------------------------------------------------------


def blobs(n=120, seed=0):
    """Three well-separated Gaussian blobs in 2-D with integer labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    x = centers[labels] + 0.5 * rng.normal(size=(n, 2))
    return x.astype(np.float32), labels.astype(np.int32)


def test_fit_classification(capsys):
    x, y = blobs()
    model = fn.sequential(fn.dense(16), fn.relu(), fn.dense(3))
    params, _ = model.init(jax.random.PRNGKey(0), x.shape)
    before = copy(params)
    result = fit(
        model, CE, optim.adam(1e-2), params, x, y, key=jax.random.PRNGKey(1),
        epochs=8, batch_size=16, validation_data=blobs(60, seed=1), progress=False,
    )  # fmt: skip
    history = result.history
    assert sorted(history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert all(len(v) == 8 for v in history.values())
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] > 0.9
    assert result.state == ()
    # The caller's params are untouched (fit copies them before the donating step).
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, before)
    assert evaluate(model, CE, result.params, x, y)["accuracy"] == history["accuracy"][-1]
    assert capsys.readouterr().out == ""


def test_fit_wide_regression_and_plain_progress(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
    x, y = regression(n=40)
    model = fn.sequential(as_wide(fn.dense(8)), noisy_scale(0.1), fn.dense(2))
    params, state, _ = model.init(jax.random.PRNGKey(0), x.shape)
    result = fit(
        model, MSE, optim.adam(1e-2), params, x, y, key=jax.random.PRNGKey(1),
        epochs=3, batch_size=64, state=state,
    )  # fmt: skip
    assert sorted(result.history) == ["loss"]
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out] == [
        ["epoch", "1/3"],
        ["epoch", "2/3"],
        ["epoch", "3/3"],
    ]
    assert "loss=" in out[0]
    assert result.state[1]["mean"].shape == (8,)


def test_fit_with_tqdm(capsys):
    pytest.importorskip("tqdm")
    x, y = blobs(30)
    model = fn.dense(3)
    params, _ = model.init(jax.random.PRNGKey(0), x.shape)
    result = fit(model, CE, optim.sgd(0.1), params, x, y, key=jax.random.PRNGKey(1), epochs=2)
    assert len(result.history["loss"]) == 2
    err = capsys.readouterr().err  # the bar goes to stderr
    assert "fit" in err
    # every frame drawn with numbers shows epoch n's loss beside the count n
    frames = re.findall(r"\b(\d)/2\b[^\r\n]*?loss=([\d.]+)", err)
    assert frames and frames[-1][0] == "2", err
    for n, value in frames:
        assert value == f"{result.history['loss'][int(n) - 1]:.4f}", err


class _RecordingBar:
    """A stand-in for ``tqdm.tqdm`` that records ``(count, postfix)`` at every redraw a
    real bar would make: when built, on ``update``, on ``set_postfix`` with ``refresh``,
    on ``close``, and after each item when iterated (tqdm counts an item when the loop
    asks for the next one)."""

    draws: typing.ClassVar[list] = []

    def __init__(self, iterable=None, total=None, **kwargs):
        self.iterable, self.n, self.postfix = iterable, 0, {}
        self._draw()

    def _draw(self):
        _RecordingBar.draws.append((self.n, dict(self.postfix)))

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
            self._draw()
        self.close()

    def update(self, n=1):
        self.n += n
        self._draw()

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        self.postfix = {**(ordered_dict or {}), **kwargs}
        if refresh:
            self._draw()

    def close(self):
        self._draw()


def test_fit_bar_count_and_postfix_describe_the_same_epoch(monkeypatch):
    fake = types.ModuleType("tqdm")
    fake.tqdm = _RecordingBar
    monkeypatch.setitem(sys.modules, "tqdm", fake)
    monkeypatch.setattr(_RecordingBar, "draws", [])
    x, y = blobs(30)
    model = fn.dense(3)
    params, _ = model.init(jax.random.PRNGKey(0), x.shape)
    result = fit(model, CE, optim.sgd(0.1), params, x, y, key=jax.random.PRNGKey(1), epochs=3)
    draws = _RecordingBar.draws
    assert draws[0] == (0, {}) and draws[-1][0] == 3
    assert {n for n, _ in draws} == {0, 1, 2, 3}
    for n, postfix in draws[1:]:  # every redraw: epoch n's count beside epoch n's numbers
        assert n >= 1 and postfix["loss"] == f"{result.history['loss'][n - 1]:.4f}", draws
        assert postfix["accuracy"] == f"{result.history['accuracy'][n - 1]:.4f}", draws
