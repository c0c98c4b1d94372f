"""Losses: backward vs jax.grad, hand-computed values, PyTorch parity, stability, errors."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import losses

REDUCTIONS = ("mean", "sum")
ELEMENTWISE = {
    "mse": losses.mse,
    "l1": losses.l1,
    "huber": losses.huber,
    "binary_cross_entropy_with_logits": losses.binary_cross_entropy_with_logits,
}
CLASSIFICATION = {
    "softmax_cross_entropy": losses.softmax_cross_entropy,
    "hinge": losses.hinge,
}
FACTORIES = {**ELEMENTWISE, **CLASSIFICATION}


def _elementwise_inputs(name, shape, seed=0):
    """float64 (pred, target) drawn with NumPy (an eager jax.random call compiles a kernel
    per shape)."""
    rng = np.random.default_rng(seed)
    pred = 2.0 * rng.normal(size=shape)
    if name == "binary_cross_entropy_with_logits":
        target = rng.uniform(size=shape)
    else:
        target = rng.normal(size=shape)
    return np.asarray(pred), np.asarray(target)


def _labels(seed, shape, num_classes):
    return np.asarray(np.random.default_rng(seed).integers(0, num_classes, size=shape))


def _ours_and_ref(loss, pred, target, dloss):
    """The loss, our backward, and dloss * the gradient of the forward from jax.grad (the
    reference we check against)."""
    value, cache = loss.forward(pred, target)
    ours = loss.backward(cache, dloss)
    ref = dloss * jax.grad(lambda p: loss.forward(p, target)[0])(pred)
    return value, ours, ref


def _grad_table(build):
    """Decorate ``build() -> {id: (loss, pred, target, dloss)}``: the result, called once
    per process, gives ``{id: (value, ours, ref, pred's shape)}`` for every case, all
    computed in ONE jitted program (one compile for the whole parametrized grid instead of
    an eager compile per op and shape). ``dloss`` stays a Python number, as a caller
    passes it."""

    @functools.cache
    def table():
        cases = build()
        ids = list(cases)

        def run(data):
            return [
                _ours_and_ref(cases[i][0], pred, target, cases[i][3])
                for i, (pred, target) in zip(ids, data, strict=True)
            ]

        out = jax.jit(run)([(cases[i][1], cases[i][2]) for i in ids])
        return {i: (*o, np.shape(cases[i][1])) for i, o in zip(ids, out, strict=True)}

    return table


def _assert_matches_grad(result):
    value, ours, ref, pred_shape = result
    assert value.shape == () and value.dtype == jnp.float64
    assert ours.shape == pred_shape and ours.dtype == jnp.float64
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


# --- backward vs jax.grad ----------------------------------------------------------------

ELEMENTWISE_SHAPES = [(), (5,), (3, 4), (2, 3, 4)]
ELEMENTWISE_NAMES = ["mse", "l1", "binary_cross_entropy_with_logits"]


@_grad_table
def _elementwise_table():
    dloss = float(np.random.default_rng(7).normal())
    return {
        (name, shape, reduction): (
            ELEMENTWISE[name](reduction=reduction),
            *_elementwise_inputs(name, shape),
            dloss,
        )
        for name in ELEMENTWISE_NAMES
        for shape in ELEMENTWISE_SHAPES
        for reduction in REDUCTIONS
    }


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES, ids=str)
@pytest.mark.parametrize("name", ELEMENTWISE_NAMES)
def test_elementwise_backward_matches_jax_grad(name, shape, reduction):
    _assert_matches_grad(_elementwise_table()[name, shape, reduction])


HUBER_SHAPES = [(), (7,), (3, 4), (2, 3, 4)]
HUBER_DELTAS = [0.5, 1.0, 2.5]


@_grad_table
def _huber_table():
    cases = {}
    for shape in HUBER_SHAPES:
        _, target = _elementwise_inputs("huber", shape, seed=1)
        # d = pred - target spread over [-2.9, 3.1] * delta: both branches, no point on a kink.
        n = int(np.prod(shape))
        for delta in HUBER_DELTAS:
            d = delta * np.linspace(-2.9, 3.1, n) if n > 1 else np.array([0.3 * delta])
            pred = target + d.reshape(shape)
            for reduction in REDUCTIONS:
                loss = losses.huber(delta, reduction)
                cases[shape, delta, reduction] = (loss, pred, target, -1.7)
    return cases


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("delta", HUBER_DELTAS)
@pytest.mark.parametrize("shape", HUBER_SHAPES, ids=str)
def test_huber_backward_matches_jax_grad(shape, delta, reduction):
    _assert_matches_grad(_huber_table()[shape, delta, reduction])


CLASS_SHAPES = [(4,), (6, 5), (2, 3, 4), (4, 1)]  # logits shapes (..., C)


@_grad_table
def _classification_table():
    rng = np.random.default_rng(2)
    cases = {}
    for shape in CLASS_SHAPES:
        logits = 1.5 * rng.normal(size=shape)
        labels = _labels(3, shape[:-1], shape[-1])
        dloss = float(rng.normal())
        for name in CLASSIFICATION:
            for reduction in REDUCTIONS:
                loss = CLASSIFICATION[name](reduction=reduction)
                cases[name, shape, reduction] = (loss, logits, labels, dloss)
    return cases


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", CLASS_SHAPES, ids=str)
@pytest.mark.parametrize("name", ["softmax_cross_entropy", "hinge"])
def test_classification_backward_matches_jax_grad_labels(name, shape, reduction):
    _assert_matches_grad(_classification_table()[name, shape, reduction])


@_grad_table
def _probabilities_table():
    rng = np.random.default_rng(5)
    cases = {}
    for shape in CLASS_SHAPES:
        logits = 3.0 * rng.normal(size=shape)
        uniform = rng.uniform(size=shape)
        for normalized in (True, False):
            target = uniform / uniform.sum(-1, keepdims=True) if normalized else uniform
            for reduction in REDUCTIONS:
                loss = losses.softmax_cross_entropy(reduction)
                cases[shape, reduction, normalized] = (loss, logits, target, 0.37)
    return cases


@pytest.mark.parametrize("normalized", [True, False], ids=["probabilities", "unnormalized"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", CLASS_SHAPES, ids=str)
def test_cross_entropy_backward_matches_jax_grad_probabilities(shape, reduction, normalized):
    _assert_matches_grad(_probabilities_table()[shape, reduction, normalized])


@_grad_table
def _margin_table():
    rng = np.random.default_rng(6)
    logits, labels = rng.normal(size=(8, 5)), _labels(7, (8,), 5)
    return {m: (losses.hinge(margin=m), logits, labels, 1.3) for m in (0.0, 0.3, 2.0)}


def test_hinge_margin_backward_matches_jax_grad():
    for margin in (0.0, 0.3, 2.0):
        _assert_matches_grad(_margin_table()[margin])


# --- values computed by hand --------------------------------------------------------------


def _value_and_grad(loss, pred, target, dloss=1.0):
    value, cache = loss.forward(jnp.asarray(pred), jnp.asarray(target))
    return float(value), np.asarray(loss.backward(cache, dloss))


PRED = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -0.25]])
TARGET = np.array([[0.0, -1.0, 2.0], [1.0, 0.0, 0.75]])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_by_hand(reduction):
    d = PRED - TARGET
    s = 1 / d.size if reduction == "mean" else 1.0
    value, grad = _value_and_grad(losses.mse(reduction), PRED, TARGET, dloss=2.0)
    np.testing.assert_allclose(value, s * np.sum(d**2), rtol=1e-14)
    np.testing.assert_allclose(grad, 2.0 * s * 2 * d, rtol=1e-14)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l1_by_hand(reduction):
    d = PRED - TARGET
    s = 1 / d.size if reduction == "mean" else 1.0
    value, grad = _value_and_grad(losses.l1(reduction), PRED, TARGET)
    np.testing.assert_allclose(value, s * np.sum(np.abs(d)), rtol=1e-14)
    expected = s * np.array([[1.0, -1.0, -1.0], [1.0, 0.0, -1.0]])  # sign(0) = 0
    np.testing.assert_allclose(grad, expected, rtol=1e-14)


@pytest.mark.parametrize("delta", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_huber_by_hand(reduction, delta):
    d = (PRED - TARGET).ravel()
    s = 1 / d.size if reduction == "mean" else 1.0
    h = [0.5 * x * x if abs(x) <= delta else delta * (abs(x) - 0.5 * delta) for x in d]
    dh = [x if abs(x) <= delta else delta * np.sign(x) for x in d]
    value, grad = _value_and_grad(losses.huber(delta, reduction), PRED, TARGET)
    np.testing.assert_allclose(value, s * sum(h), rtol=1e-14)
    np.testing.assert_allclose(grad.ravel(), s * np.array(dh), rtol=1e-14)


def test_huber_at_the_kink_is_continuous():
    # |d| == delta: both branches give 0.5 delta^2 and the gradient delta * sign(d).
    value, grad = _value_and_grad(losses.huber(2.0, "sum"), np.array([2.0, -2.0]), np.zeros(2))
    assert value == pytest.approx(4.0)
    np.testing.assert_allclose(grad, [2.0, -2.0])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_by_hand(reduction):
    x, t = PRED, np.array([[0.0, 1.0, 0.3], [1.0, 0.5, 0.0]])
    sig = 1 / (1 + np.exp(-x))
    s = 1 / x.size if reduction == "mean" else 1.0
    naive = -(t * np.log(sig) + (1 - t) * np.log(1 - sig))
    value, grad = _value_and_grad(losses.binary_cross_entropy_with_logits(reduction), x, t)
    np.testing.assert_allclose(value, s * naive.sum(), rtol=1e-13)
    np.testing.assert_allclose(grad, s * (sig - t), rtol=1e-13)


def test_bce_with_logits_accepts_integer_targets():
    x = np.array([0.5, -1.0, 2.0])
    loss = losses.binary_cross_entropy_with_logits()
    v_int, g_int = _value_and_grad(loss, x, np.array([1, 0, 1]))
    v_float, g_float = _value_and_grad(loss, x, np.array([1.0, 0.0, 1.0]))
    assert v_int == v_float
    np.testing.assert_array_equal(g_int, g_float)


LOGITS = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, -0.5, 3.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
LABELS = np.array([1, 3, 0])


def _naive_log_softmax(x):
    return np.log(np.exp(x) / np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_labels_by_hand(reduction):
    n, c = LOGITS.shape
    s = 1 / n if reduction == "mean" else 1.0
    log_p = _naive_log_softmax(LOGITS)
    onehot = np.eye(c)[LABELS]
    value, grad = _value_and_grad(losses.softmax_cross_entropy(reduction), LOGITS, LABELS)
    np.testing.assert_allclose(value, -s * log_p[np.arange(n), LABELS].sum(), rtol=1e-13)
    np.testing.assert_allclose(grad, s * (np.exp(log_p) - onehot), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probabilities_by_hand(reduction):
    n, _ = LOGITS.shape
    s = 1 / n if reduction == "mean" else 1.0
    t = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    log_p = _naive_log_softmax(LOGITS)
    value, grad = _value_and_grad(losses.softmax_cross_entropy(reduction), LOGITS, t)
    np.testing.assert_allclose(value, -s * (t * log_p).sum(), rtol=1e-13)
    np.testing.assert_allclose(grad, s * (np.exp(log_p) - t), rtol=1e-13, atol=1e-15)


def test_cross_entropy_one_hot_equals_labels():
    loss = losses.softmax_cross_entropy()
    one_hot = np.eye(LOGITS.shape[1])[LABELS]
    v_labels, g_labels = _value_and_grad(loss, LOGITS, LABELS)
    v_onehot, g_onehot = _value_and_grad(loss, LOGITS, one_hot)
    np.testing.assert_allclose(v_labels, v_onehot, rtol=1e-14)
    np.testing.assert_allclose(g_labels, g_onehot, rtol=1e-14, atol=1e-16)


def test_cross_entropy_leading_axes_equal_flattened():
    logits = np.random.default_rng(0).normal(size=(2, 3, 5))
    labels = np.random.default_rng(1).integers(0, 5, size=(2, 3))
    loss = losses.softmax_cross_entropy()
    v, g = _value_and_grad(loss, logits, labels)
    v_flat, g_flat = _value_and_grad(loss, logits.reshape(6, 5), labels.reshape(6))
    np.testing.assert_allclose(v, v_flat, rtol=1e-14)
    np.testing.assert_allclose(g.reshape(6, 5), g_flat, rtol=1e-14)


def test_cross_entropy_unbatched():
    # logits (C,) with a 0-d label: one row, "mean" divides by 1.
    v, g = _value_and_grad(losses.softmax_cross_entropy(), LOGITS[0], np.array(1))
    v_batch, g_batch = _value_and_grad(losses.softmax_cross_entropy(), LOGITS[:1], LABELS[:1])
    assert v == pytest.approx(v_batch, rel=1e-14)
    np.testing.assert_allclose(g, g_batch[0], rtol=1e-14)


def _hinge_by_loops(x, y, margin=1.0):
    """Per-row loss and gradient of MultiMarginLoss, written with plain loops."""
    n, c = x.shape
    values, grads = np.zeros(n), np.zeros((n, c))
    for r in range(n):
        for i in range(c):
            if i == y[r]:
                continue
            m = margin - x[r, y[r]] + x[r, i]
            if m > 0:
                values[r] += m / c
                grads[r, i] += 1 / c
                grads[r, y[r]] -= 1 / c
    return values, grads


@pytest.mark.parametrize("margin", [1.0, 0.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hinge_by_hand(reduction, margin):
    values, grads = _hinge_by_loops(LOGITS, LABELS, margin)
    s = 1 / len(LABELS) if reduction == "mean" else 1.0
    value, grad = _value_and_grad(losses.hinge(reduction, margin=margin), LOGITS, LABELS, 3.0)
    np.testing.assert_allclose(value, s * values.sum(), rtol=1e-14)
    np.testing.assert_allclose(grad, 3.0 * s * grads, rtol=1e-14)


def test_hinge_margin_exactly_zero_is_inactive():
    # m_1 = 1 - 2 + 1 = 0: contributes nothing to the loss or the gradient (as PyTorch).
    value, grad = _value_and_grad(losses.hinge("sum"), np.array([[2.0, 1.0]]), np.array([0]))
    assert value == 0.0
    np.testing.assert_array_equal(grad, [[0.0, 0.0]])


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "hinge"])
def test_out_of_range_labels_give_nan(name):
    loss = CLASSIFICATION[name]()
    for bad in (-1, 4):
        value, grad = _value_and_grad(loss, LOGITS, np.array([1, bad, 0]))
        assert np.isnan(value)
        assert np.isnan(grad[1]).all()
        assert np.isfinite(grad[[0, 2]]).all()


# --- PyTorch parity ----------------------------------------------------------------------


def _torch_value_and_grad(torch_loss, pred, target, target_dtype=None):
    torch = pytest.importorskip("torch")
    p = torch.tensor(np.asarray(pred), dtype=torch.float64, requires_grad=True)
    t = torch.tensor(np.asarray(target), dtype=target_dtype or torch.float64)
    value = torch_loss(p, t)
    value.backward()
    return value.item(), p.grad.numpy()


def _compare_with_torch(ours, torch_loss, pred, target, target_dtype=None):
    v_ref, g_ref = _torch_value_and_grad(torch_loss, pred, target, target_dtype)
    v, g = _value_and_grad(ours, pred, target)
    np.testing.assert_allclose(v, v_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_regression_match_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(4, 3, 2)) * 2, rng.normal(size=(4, 3, 2))
    nn = torch.nn
    _compare_with_torch(losses.mse(reduction), nn.MSELoss(reduction=reduction), pred, target)
    _compare_with_torch(losses.l1(reduction), nn.L1Loss(reduction=reduction), pred, target)
    for delta in (0.3, 1.0, 2.0):
        _compare_with_torch(
            losses.huber(delta, reduction),
            nn.HuberLoss(reduction=reduction, delta=delta),
            pred,
            target,
        )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x, t = rng.normal(size=(5, 4)) * 5, rng.uniform(size=(5, 4))
    ours = losses.binary_cross_entropy_with_logits(reduction)
    _compare_with_torch(ours, torch.nn.BCEWithLogitsLoss(reduction=reduction), x, t)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    ce = torch.nn.CrossEntropyLoss(reduction=reduction)
    ours = losses.softmax_cross_entropy(reduction)
    logits, labels = rng.normal(size=(6, 5)) * 3, rng.integers(0, 5, size=6)
    _compare_with_torch(ours, ce, logits, labels, torch.int64)
    probs = rng.dirichlet(np.ones(5), size=6)
    _compare_with_torch(ours, ce, logits, probs)
    unnormalized = rng.uniform(size=(6, 5))  # PyTorch does not require rows to sum to 1
    _compare_with_torch(ours, ce, logits, unnormalized)


def test_cross_entropy_leading_axes_match_torch():
    # PyTorch puts the class axis at 1: (N, C, d) there is our (N, d, C).
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(2, 3, 4)), rng.integers(0, 4, size=(2, 3))

    def torch_ce(p, t):
        return torch.nn.functional.cross_entropy(p.movedim(-1, 1), t)

    _compare_with_torch(losses.softmax_cross_entropy(), torch_ce, logits, labels, torch.int64)


@pytest.mark.parametrize("margin", [1.0, 0.4])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hinge_matches_torch(reduction, margin):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    logits, labels = rng.normal(size=(8, 5)), rng.integers(0, 5, size=8)
    ref = torch.nn.MultiMarginLoss(p=1, margin=margin, reduction=reduction)
    ours = losses.hinge(reduction, margin=margin)
    _compare_with_torch(ours, ref, logits, labels, torch.int64)


# --- numerical stability -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_cross_entropy_stable_for_huge_logits(dtype):
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype)
    loss = losses.softmax_cross_entropy()
    value, cache = loss.forward(logits, jnp.array([1, 2]))
    grad = loss.backward(cache)
    assert value.dtype == dtype and grad.dtype == dtype
    # Row 0: logsumexp = 1e4, loss 2e4. Row 1: loss exp(-2e4)-tiny, i.e. 0. Mean: 1e4.
    np.testing.assert_allclose(value, 1e4, rtol=1e-6)
    expected = np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]) / 2
    np.testing.assert_allclose(grad, expected, atol=1e-7)
    # Probability targets: the same numbers from one-hot rows.
    value_p, cache_p = loss.forward(logits, jnp.eye(3, dtype=dtype)[jnp.array([1, 2])])
    np.testing.assert_allclose(value_p, 1e4, rtol=1e-6)
    np.testing.assert_allclose(loss.backward(cache_p), expected, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_bce_with_logits_stable_for_huge_logits(dtype):
    x = jnp.array([1e4, 1e4, -1e4, -1e4], dtype)
    t = jnp.array([0.0, 1.0, 0.0, 1.0], dtype)
    loss = losses.binary_cross_entropy_with_logits("sum")
    value, cache = loss.forward(x, t)
    grad = loss.backward(cache)
    assert value.dtype == dtype and grad.dtype == dtype
    np.testing.assert_allclose(value, 2e4, rtol=1e-6)
    np.testing.assert_allclose(grad, [1.0, 0.0, 0.0, -1.0], atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_hinge_finite_for_huge_logits(dtype):
    x = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], dtype)
    loss = losses.hinge("sum")
    value, cache = loss.forward(x, jnp.array([0, 0]))
    grad = loss.backward(cache)
    # Row 0 has no active margin; row 1: (1 + 2e4) + (1 + 1e4), over C = 3.
    np.testing.assert_allclose(value, (2 + 3e4) / 3, rtol=1e-6)
    np.testing.assert_allclose(grad, np.array([[0, 0, 0], [-2, 1, 1]]) / 3, rtol=1e-6)


# --- dtypes, jit, dloss ------------------------------------------------------------------


def _example_inputs(name, dtype):
    rng = np.random.default_rng(11)
    pred = jnp.asarray(rng.normal(size=(4, 3)).astype(dtype))
    if name in CLASSIFICATION:
        return pred, jnp.asarray(_labels(12, (4,), 3))
    return pred, jnp.asarray(rng.uniform(size=(4, 3)))  # float64 target on purpose


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_float32_pred_gives_float32_loss_and_grad(name):
    # The dtypes are decided while tracing: jax.eval_shape runs the same code, compiles nothing.
    loss = FACTORIES[name]()
    pred, target = _example_inputs(name, jnp.float32)

    def value_and_grad(pred, target):
        value, cache = loss.forward(pred, target)
        return value, loss.backward(cache, jnp.asarray(2.0, jnp.float64))

    value, grad = jax.eval_shape(value_and_grad, pred, target)
    assert value.dtype == jnp.float32 and grad.dtype == jnp.float32
    assert grad.shape == pred.shape


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_jit_equals_eager(name, reduction):
    loss = FACTORIES[name](reduction=reduction)
    pred, target = _example_inputs(name, jnp.float64)
    value, cache = loss.forward(pred, target)
    grad = loss.backward(cache, 0.5)
    value_jit, cache_jit = jax.jit(loss.forward)(pred, target)
    grad_jit = jax.jit(loss.backward)(cache_jit, 0.5)
    np.testing.assert_allclose(value_jit, value, rtol=1e-13)
    np.testing.assert_allclose(grad_jit, grad, rtol=1e-13, atol=1e-15)

    @jax.jit
    def value_and_grad(pred, target, dloss):
        value, cache = loss.forward(pred, target)
        return value, loss.backward(cache, dloss)

    value_vg, grad_vg = value_and_grad(pred, target, 0.5)
    np.testing.assert_allclose(value_vg, value, rtol=1e-13)
    np.testing.assert_allclose(grad_vg, grad, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_backward_is_linear_in_dloss(name):
    loss = FACTORIES[name]()
    pred, target = _example_inputs(name, jnp.float64)
    _, cache = loss.forward(pred, target)
    np.testing.assert_allclose(
        loss.backward(cache, -3.0), -3.0 * loss.backward(cache), rtol=1e-14, atol=1e-16
    )


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, error", [("avg", ValueError), ("Mean", ValueError), (None, TypeError), (1, TypeError)]
)
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_bad_reduction(name, bad, error):
    message = rf"^{name}: reduction must be one of 'mean', 'sum', 'none', got"
    with pytest.raises(error, match=message):
        FACTORIES[name](reduction=bad)


@pytest.mark.parametrize(
    "bad, error",
    [
        *[(0, ValueError), (-1.0, ValueError), (float("inf"), ValueError)],
        *[(float("nan"), ValueError), (True, TypeError), ("1", TypeError)],
    ],
)
def test_huber_bad_delta(bad, error):
    with pytest.raises(error, match=r"^huber: delta must be a positive finite number"):
        losses.huber(delta=bad)


@pytest.mark.parametrize(
    "bad, error", [(float("inf"), ValueError), (float("nan"), ValueError), (None, TypeError)]
)
def test_hinge_bad_margin(bad, error):
    with pytest.raises(error, match=r"^hinge: margin must be a finite number"):
        losses.hinge(margin=bad)


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_shape_mismatch_is_an_error(name):
    loss = ELEMENTWISE[name]()
    for pred_shape, target_shape in [((4, 3), (3,)), ((4, 1), (4,)), ((4,), (4, 1))]:
        msg = f"{name}: pred and target must have the same shape (no broadcasting), "
        msg += f"got pred of shape {pred_shape} and target of shape {target_shape}"
        with pytest.raises(ValueError, match=re.escape(msg)):
            loss.forward(jnp.zeros(pred_shape), jnp.zeros(target_shape))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_integer_pred_is_an_error(name):
    with pytest.raises(TypeError, match=rf"^{name}: .* must be a floating-point array"):
        FACTORIES[name]().forward(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3), jnp.int32))


@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
def test_wrong_label_shape_is_an_error(name):
    loss = CLASSIFICATION[name]()
    msg = (
        f"{name}: integer labels must have shape (4,) (the logits' shape (4, 3) without "
        "the class axis), got labels of shape "
    )
    for shape in [(3,), (4, 1), (1, 4), ()]:
        with pytest.raises(ValueError, match=re.escape(msg + str(shape))):
            loss.forward(jnp.zeros((4, 3)), jnp.zeros(shape, jnp.int32))


def test_cross_entropy_float_labels_point_to_integer_indices():
    msg = (
        "softmax_cross_entropy: float targets are class probabilities and must have the "
        "logits' shape (4, 3), got target of shape (4,). For class indices pass an integer "
        "array of shape (4,)."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        losses.softmax_cross_entropy().forward(jnp.zeros((4, 3)), jnp.array([0.0, 1, 2, 0]))


def test_cross_entropy_bool_target_is_an_error():
    with pytest.raises(TypeError, match=r"^softmax_cross_entropy: target must be integer"):
        losses.softmax_cross_entropy().forward(jnp.zeros((2, 3)), jnp.zeros((2, 3), bool))


def test_hinge_float_labels_are_an_error():
    with pytest.raises(TypeError, match=r"^hinge: labels must be integer class indices"):
        losses.hinge().forward(jnp.zeros((2, 3)), jnp.zeros((2,)))


@pytest.mark.parametrize("name", sorted(CLASSIFICATION))
def test_scalar_or_empty_class_axis_is_an_error(name):
    loss = CLASSIFICATION[name]()
    with pytest.raises(ValueError, match=rf"^{name}: logits must have at least 1 axes"):
        loss.forward(jnp.zeros(()), jnp.zeros((), jnp.int32))
    with pytest.raises(ValueError, match=rf"^{name}: logits need at least one class"):
        loss.forward(jnp.zeros((2, 0)), jnp.zeros((2,), jnp.int32))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_non_array_target_is_an_error(name):
    with pytest.raises(TypeError, match=rf"^{name}: (target|labels) must be an array"):
        FACTORIES[name]().forward(jnp.zeros((2, 3)), [[0.0] * 3] * 2)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_non_scalar_dloss_is_an_error(name):
    loss = FACTORIES[name]()
    _, cache = loss.forward(*_example_inputs(name, jnp.float64))
    with pytest.raises(ValueError, match=rf"^{name}: dloss must be a scalar .* got shape \(3,\)"):
        loss.backward(cache, jnp.ones(3))


def test_public_names():
    # multi combines losses over several outputs: tests/test_train_api.py.
    assert sorted(set(losses.__all__) - {"multi"}) == sorted(FACTORIES)
    for name, factory in FACTORIES.items():
        assert factory().name == name
        assert repr(factory()) == f"Loss({name!r})"


# --- ignore_index (padded sequence targets) ----------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_ignore_index_matches_torch(reduction, ignore_index):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 4, 5)) * 3  # (N, T, C) sequence logits
    labels = rng.integers(0, 5, size=(3, 4))
    labels[0, 2:] = ignore_index
    labels[2, 1] = ignore_index
    ce = torch.nn.CrossEntropyLoss(reduction=reduction, ignore_index=ignore_index)

    def torch_ce(p, t):  # PyTorch wants the class axis at 1
        return ce(p.permute(0, 2, 1), t)

    ours = losses.softmax_cross_entropy(reduction, ignore_index=ignore_index)
    _compare_with_torch(ours, torch_ce, logits, labels, torch.int64)


def test_cross_entropy_ignore_index_counts_only_the_other_rows():
    logits = np.random.default_rng(0).normal(size=(4, 3))
    labels = np.array([0, -1, 2, -1])
    value, grad = _value_and_grad(losses.softmax_cross_entropy(ignore_index=-1), logits, labels)
    kept = np.array([0, 2])
    ref, ref_grad = _value_and_grad(losses.softmax_cross_entropy(), logits[kept], labels[kept])
    np.testing.assert_allclose(value, ref, rtol=1e-14)  # divided by 2 counted rows, not 4
    np.testing.assert_allclose(grad[kept], ref_grad, rtol=1e-14)
    assert np.all(np.asarray(grad)[[1, 3]] == 0)  # -1 is out of range, yet no NaN
    # The count is traced: the same compiled loss serves any number of ignored labels.
    loss = losses.softmax_cross_entropy(ignore_index=-1)
    jitted = jax.jit(lambda x, y: loss.backward(loss.forward(x, y)[1]))
    np.testing.assert_allclose(jitted(logits, labels), grad, rtol=1e-14)


def test_cross_entropy_all_ignored_is_nan_with_zero_gradient_as_torch():
    loss = losses.softmax_cross_entropy(ignore_index=0)
    value, cache = loss.forward(jnp.ones((2, 3)), jnp.zeros(2, jnp.int32))
    assert np.isnan(value)  # 0 / 0 counted rows, PyTorch's value
    assert np.all(np.asarray(loss.backward(cache)) == 0)
    # An ignore_index that no label of the dtype can hold ignores nothing.
    wide = losses.softmax_cross_entropy(ignore_index=-100)
    labels = jnp.array([1, 2], jnp.uint8)
    v, _ = wide.forward(jnp.ones((2, 3)), labels)
    np.testing.assert_allclose(v, np.log(3), rtol=1e-6)


def test_cross_entropy_ignore_index_errors():
    with pytest.raises(TypeError, match=r"^softmax_cross_entropy: ignore_index must be an int"):
        losses.softmax_cross_entropy(ignore_index=1.5)
    with pytest.raises(
        ValueError, match=r"^softmax_cross_entropy: ignore_index applies to integer class labels"
    ):
        losses.softmax_cross_entropy(ignore_index=0).forward(jnp.zeros((2, 3)), jnp.ones((2, 3)))


# --- reduction="none" -------------------------------------------------------------------


def _loss_inputs(name, shape=(3, 4)):
    if name in ELEMENTWISE:
        return _elementwise_inputs(name, shape, seed=7)
    logits = 2.0 * np.random.default_rng(7).normal(size=shape)
    return logits, _labels(8, shape[:-1], shape[-1])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_reduction_none_gives_one_loss_per_entry(name):
    pred, target = _loss_inputs(name)
    expected_shape = pred.shape if name in ELEMENTWISE else pred.shape[:-1]
    none = FACTORIES[name](reduction="none")
    total_loss = FACTORIES[name](reduction="sum")
    dloss = np.random.default_rng(9).normal(size=expected_shape)

    @jax.jit  # one program for every check below
    def run(pred, target, dloss):
        per_entry, cache = none.forward(pred, target)
        total, sum_cache = total_loss.forward(pred, target)
        _, vjp = jax.vjp(lambda p: none.forward(p, target)[0], pred)
        return (
            per_entry,
            total,
            # A scalar dloss weighs every entry: the gradient of the sum.
            none.backward(cache, 2.0),
            total_loss.backward(sum_cache, 2.0),
            # An array dloss is the cotangent of the per-entry losses: jax.vjp of our forward.
            none.backward(cache, dloss),
            vjp(dloss)[0],
        )

    per_entry, total, scalar_grad, sum_grad, ours, ref = run(pred, target, dloss)
    assert per_entry.shape == expected_shape and per_entry.dtype == jnp.float64
    np.testing.assert_allclose(np.sum(per_entry), total, rtol=1e-12)
    np.testing.assert_allclose(scalar_grad, sum_grad, rtol=1e-12)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    # A dloss of another shape is an error, raised while tracing (jax.eval_shape: no compile).
    cache = jax.eval_shape(lambda p, t: none.forward(p, t)[1], pred, target)
    bad = np.ones((1, *expected_shape[1:]) if expected_shape[0] > 1 else (2,))
    with pytest.raises(ValueError, match=rf"^{name}: with reduction='none', dloss must be a"):
        jax.eval_shape(none.backward, cache, bad)


def test_reduction_none_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    pred, target = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    nn = torch.nn
    pairs = [
        (losses.mse("none"), nn.MSELoss(reduction="none"), target),
        (losses.l1("none"), nn.L1Loss(reduction="none"), target),
        (losses.huber(0.5, "none"), nn.HuberLoss(reduction="none", delta=0.5), target),
        (
            losses.binary_cross_entropy_with_logits("none"),
            nn.BCEWithLogitsLoss(reduction="none"),
            rng.uniform(size=(4, 3)),
        ),
    ]
    labels = rng.integers(0, 3, size=4)
    labels[1] = -100
    for ours, theirs, t in pairs:
        value, _ = ours.forward(jnp.asarray(pred), jnp.asarray(t))
        ref = theirs(torch.tensor(pred), torch.tensor(t)).numpy()
        np.testing.assert_allclose(value, ref, rtol=1e-12, atol=1e-14)
    ce = losses.softmax_cross_entropy("none", ignore_index=-100)
    value, _ = ce.forward(jnp.asarray(pred), jnp.asarray(labels))
    ref = nn.CrossEntropyLoss(reduction="none")(torch.tensor(pred), torch.tensor(labels))
    np.testing.assert_allclose(value, ref.numpy(), rtol=1e-12, atol=1e-14)  # ignored row: 0
    hinge = losses.hinge("none")
    value, _ = hinge.forward(jnp.asarray(pred), jnp.asarray(np.abs(labels) % 3))
    ref = nn.MultiMarginLoss(reduction="none")(torch.tensor(pred), torch.tensor(np.abs(labels) % 3))
    np.testing.assert_allclose(value, ref.numpy(), rtol=1e-12, atol=1e-14)


# --- label smoothing -------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
@pytest.mark.parametrize("target_kind", ["labels", "ignored labels", "probabilities"])
def test_label_smoothing_matches_torch(reduction, target_kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    logits = rng.normal(size=(5, 4)) * 3
    ignore = -100 if target_kind == "ignored labels" else None
    if target_kind == "probabilities":
        target, dtype = rng.dirichlet(np.ones(4), size=5), None
    else:
        target, dtype = rng.integers(0, 4, size=5), torch.int64
        if ignore is not None:
            target[[1, 3]] = ignore
    ce = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=0.2)  # ignores -100
    p = torch.tensor(logits, requires_grad=True)
    value_t = ce(p, torch.tensor(target, dtype=dtype or torch.float64))
    value_t.sum().backward()
    ours = losses.softmax_cross_entropy(reduction, ignore_index=ignore, label_smoothing=0.2)
    value, cache = ours.forward(jnp.asarray(logits), jnp.asarray(target))
    np.testing.assert_allclose(value, value_t.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ours.backward(cache), p.grad.numpy(), rtol=1e-12, atol=1e-14)


@_grad_table
def _smoothing_table():
    logits, labels = np.random.default_rng(3).normal(size=(3, 5)), _labels(4, (3,), 5)
    return {
        eps: (losses.softmax_cross_entropy(label_smoothing=eps), logits, labels, 1.5)
        for eps in (0.0, 0.1, 1.0)
    }


def test_label_smoothing_backward_matches_jax_grad_and_bounds():
    for eps in (0.0, 0.1, 1.0):
        _assert_matches_grad(_smoothing_table()[eps])
    # eps = 1: the target is uniform whatever the label
    logits, labels = np.random.default_rng(3).normal(size=(3, 5)), _labels(4, (3,), 5)
    loss = losses.softmax_cross_entropy(label_smoothing=1.0)
    both = jax.jit(lambda x, y: (loss.forward(x, y)[0], loss.forward(x, (y + 1) % 5)[0]))
    uniform, other = both(logits, labels)
    np.testing.assert_allclose(uniform, other, rtol=1e-14)
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\], got 1.5"):
        losses.softmax_cross_entropy(label_smoothing=1.5)
    with pytest.raises(TypeError, match=r"label_smoothing must be a number in \[0, 1\]"):
        losses.softmax_cross_entropy(label_smoothing="0.1")
