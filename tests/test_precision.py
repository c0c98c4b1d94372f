"""Mixed precision: the policy in value_and_grad/train_step/fit, float32 accumulation in the
built-in layers, and dynamic loss scaling for float16."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import check
from funcnn.precision import accumulation_dtype, all_finite

BF16 = fn.train.mixed_precision(compute=jnp.bfloat16)
CE = fn.losses.softmax_cross_entropy()


def _tree_cast(tree, dtype):
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
    )


def _init(model, shape, seed=0):
    """Params and state in one compiled call: an eager init compiles every initializer
    call on its own, which costs more than the tests."""
    return jax.jit(lambda key: fn.init_layer(model, key, shape)[:2])(jax.random.PRNGKey(seed))


def _random_point(model, shape, seed=0):
    """Random params and state (away from init's values: batchnorm's ones and zeros hide
    mistakes), drawn with NumPy from the shapes alone: nothing is compiled for them."""
    params, state, _ = check.init_shapes(model, jax.random.PRNGKey(seed), shape)
    return check.random_params(jax.random.PRNGKey(seed + 1), params, state)


def _train_state(model, opt, shape, seed=0):
    init = jax.jit(lambda key: fn.train.init_train_state(model, opt, key, shape))
    return init(jax.random.PRNGKey(seed))


def _rel_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# --- the policy --------------------------------------------------------------------------


def test_policy_values_and_errors():
    assert BF16.compute == jnp.bfloat16 and BF16.output == jnp.float32
    assert BF16.loss_scale is None
    f16 = fn.train.mixed_precision(compute=jnp.float16)
    assert f16.loss_scale == fn.train.DynamicLossScale()
    assert fn.train.mixed_precision(jnp.bfloat16, loss_scale="dynamic").loss_scale is not None
    assert fn.train.mixed_precision(jnp.float16, loss_scale=None).loss_scale is None
    assert "bfloat16" in repr(BF16)
    with pytest.raises(TypeError, match="compute must be a floating dtype, got int32"):
        fn.train.mixed_precision(compute=jnp.int32)
    with pytest.raises(ValueError, match="loss_scale must be 'auto', 'dynamic'"):
        fn.train.mixed_precision(loss_scale="static")
    with pytest.raises(ValueError, match="factor must be a number above 1"):
        fn.train.mixed_precision(loss_scale=fn.train.DynamicLossScale(factor=1.0))
    with pytest.raises(ValueError, match="growth_interval must be positive"):
        fn.train.loss_scaled(fn.optim.sgd(0.1), fn.train.DynamicLossScale(growth_interval=0))
    assert accumulation_dtype(jnp.float16) == jnp.float32
    assert accumulation_dtype(jnp.float64) == jnp.float64


def _structs(tree, dtype=None):
    """ShapeDtypeStructs of ``tree`` (floating leaves in ``dtype``): tracing needs no values."""

    def one(a):
        floating = jnp.issubdtype(a.dtype, jnp.floating)
        return jax.ShapeDtypeStruct(a.shape, dtype if dtype and floating else a.dtype)

    return jax.tree_util.tree_map(one, tree)


def _abstract_init(model, shape):
    return jax.eval_shape(lambda key: fn.init_layer(model, key, shape)[:2], jax.random.key(0))


def test_step_errors():
    model = fn.sequential(fn.dense(3))
    f16 = fn.train.mixed_precision(compute=jnp.float16)
    with pytest.raises(TypeError, match=r"policy must be a Policy"):
        fn.train.train_step(model, CE, fn.optim.sgd(0.1), policy=jnp.bfloat16)
    with pytest.raises(TypeError, match=r"scales the loss.*policy\.wrap\(optimizer\)"):
        fn.train.train_step(model, CE, fn.optim.sgd(0.1), policy=f16)
    opt = f16.wrap(fn.optim.sgd(0.1))
    assert f16.wrap(opt) is opt and BF16.wrap(fn.optim.sgd(0.1)) is not opt
    step = fn.train.train_step(model, CE, opt, policy=f16)
    params, _ = _abstract_init(model, (4, 2))
    plain = fn.train.TrainState(params, (), jax.eval_shape(fn.optim.sgd(0.1).init, params))
    with pytest.raises(TypeError, match="must be a LossScaleState, got SgdState"):
        step(plain, jnp.ones((4, 2), jnp.float32), jnp.zeros(4, jnp.int32))


def test_float32_policy_changes_nothing():
    model = fn.sequential(fn.dense(8), fn.batchnorm(), fn.gelu(), fn.dense(3))
    params, state = _abstract_init(model, (16, 5))
    x, y = jax.ShapeDtypeStruct((16, 5), jnp.float32), jax.ShapeDtypeStruct((16,), jnp.int32)
    ctx = fn.Ctx(train=True)
    f32 = fn.train.mixed_precision(compute=jnp.float32)
    programs = [
        str(
            jax.make_jaxpr(fn.train.value_and_grad(model, CE, policy=policy))(
                params, x, y, state, ctx
            )
        )
        for policy in (None, f32)
    ]
    assert programs[0] == programs[1]


def test_bf16_step_keeps_float32_params_and_computes_in_bf16():
    model = fn.sequential(fn.dense(8), fn.relu(), fn.dense(3))
    opt = fn.optim.adam(1e-2)
    params, _ = _abstract_init(model, (8, 4))
    ts = fn.train.TrainState(params, (), jax.eval_shape(opt.init, params))
    step = fn.train.train_step(model, CE, opt, policy=BF16)
    x, y = jax.ShapeDtypeStruct((8, 4), jnp.float32), jax.ShapeDtypeStruct((8,), jnp.int32)
    lowered = step.lower(ts, x, y)
    new, loss = lowered.out_info
    assert loss.dtype == jnp.float32
    for leaf in jax.tree_util.tree_leaves((new.params, new.opt_state)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    # The step's matrix products take bfloat16 operands and accumulate in float32.
    products = re.findall(r"stablehlo\.dot_general.*", lowered.as_text())
    assert len(products) >= 2 + 3, (
        products
    )  # forward 2; backward 2 dW and a dx (the first dx is unused)
    for line in products:
        assert "bf16" in line and "f32" in line.rsplit("->", 1)[-1], line


# --- the layers: float32 accumulation, low-precision storage --------------------------------

PRODUCT_LAYERS = [
    ("dense", fn.dense(5), (6, 4)),
    ("linear", fn.linear(5), (6, 4)),
    ("conv2d", fn.conv2d(3, 3), (2, 5, 5, 2)),
    ("conv2d_1x1", fn.conv2d(3, 1), (2, 4, 4, 2)),
    ("conv2d_im2col", fn.conv2d(32, 2), (2, 4, 4, 2)),
    ("conv_transpose2d", fn.conv_transpose2d(3, 3, stride=2), (2, 3, 3, 2)),
]


@pytest.mark.parametrize(("name", "layer", "shape"), PRODUCT_LAYERS)
def test_products_take_bf16_and_accumulate_in_float32(name, layer, shape):
    params = _structs(_abstract_init(layer, shape)[0], jnp.bfloat16)
    x = jax.ShapeDtypeStruct(shape, jnp.bfloat16)

    def run(params, x):
        y, cache = layer.forward(params, x)
        dx, dparams = layer.backward(params, cache, jnp.ones_like(y))
        return y, cache, dx, dparams

    lowered = jax.jit(run).lower(params, x)  # traced, not compiled
    for leaf in jax.tree_util.tree_leaves(lowered.out_info):
        assert leaf.dtype == jnp.bfloat16, (name, leaf.dtype)  # stored in bfloat16
    products = re.findall(r"stablehlo\.(?:dot_general|convolution).*", lowered.as_text())
    assert len(products) >= 3, (name, products)  # forward, dx, dW
    for line in products:
        assert "bf16" in line and "f32" in line.rsplit("->", 1)[-1], (name, line)


def _reference(name, x):
    """The float64 outputs of the statistics layers (unit scale, zero offset)."""
    if name == "layernorm":
        centered = x - x.mean(-1, keepdims=True)
        return centered / np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-5)
    if name == "batchnorm":
        centered = x - x.mean(0)
        return centered / np.sqrt((centered**2).mean(0) + 1e-5)
    shifted = x - x.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return log_p if name == "log_softmax" else np.exp(log_p)


STATISTICS_LAYERS = [
    ("layernorm", fn.layernorm()),
    ("batchnorm", fn.batchnorm()),
    ("softmax", fn.softmax()),
    ("log_softmax", fn.log_softmax()),
]


@pytest.mark.parametrize(("name", "layer"), STATISTICS_LAYERS)
def test_statistics_in_float32_round_only_the_output(name, layer):
    """bfloat16 in, bfloat16 out, and the output is the float64 result rounded once: at
    most half a bfloat16 ulp off (statistics kept in bfloat16 are several ulps off)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(3.0 + rng.normal(size=(64, 48)), jnp.bfloat16)  # offset: mean matters
    state = () if not layer.wide else {"mean": jnp.zeros(48), "var": jnp.ones(48)}
    params = {"scale": jnp.ones(48, jnp.bfloat16), "offset": jnp.zeros(48, jnp.bfloat16)}
    params = params if name.endswith("norm") else ()
    forward = jax.jit(lambda p, x: fn.apply_layer(layer, p, x, state, fn.Ctx(train=True))[:2])
    y, cache = forward(params, x)
    assert y.dtype == jnp.bfloat16
    for leaf in jax.tree_util.tree_leaves(cache):  # activations cached in bfloat16
        assert leaf.dtype == jnp.bfloat16 or leaf.size < x.size, (leaf.shape, leaf.dtype)
    want = _reference(name, np.asarray(x, np.float64))
    err = np.abs(np.asarray(y, np.float64) - want)
    assert np.all(err <= 2.0**-8 * np.abs(want) + 1e-6 * np.abs(want).max()), err.max()


def test_embedding_gradient_sums_in_float32():
    layer = fn.embedding(4, 3, dtype=jnp.bfloat16)
    params = {"table": jnp.zeros((4, 3), jnp.bfloat16)}
    ids = jnp.zeros(1024, jnp.int32)  # 1024 contributions to the same row
    dy = jnp.full((1024, 3), 1.0 / 1024 + 1.0 / 4096, jnp.bfloat16)
    backward = jax.jit(lambda p, dy: layer.backward(p, layer.forward(p, ids)[1], dy))
    text = backward.lower(params, dy).as_text()
    assert re.search(r"stablehlo\.scatter.*?-> tensor<4x3xf32>", text, re.DOTALL), text
    _, grads = backward(params, dy)
    assert grads["table"].dtype == jnp.bfloat16
    want = 1024 * float(dy[0, 0])
    assert abs(float(grads["table"][0, 0]) - want) <= 2**-8 * want


# --- accuracy: bf16 gradients against a float64 reference -----------------------------------


def _model():
    return fn.sequential(
        fn.conv2d(8, 3, padding="SAME", use_bias=False),  # (a bias before batchnorm gets 0)
        fn.batchnorm(),
        fn.relu(),
        fn.flatten(),
        fn.dense(32),
        fn.layernorm(),
        fn.gelu(),
        fn.dense(10),
    )


def test_bf16_gradients_at_most_twice_the_error_of_jax_grad_in_bf16():
    model = _model()
    n = 128
    params, state = _random_point(model, (n, 6, 6, 3))
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(n, 6, 6, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, n), jnp.int32)
    ctx = fn.Ctx(train=True)

    f64 = jax.jit(fn.train.value_and_grad(model, CE))
    (_, _), want = f64(_tree_cast(params, jnp.float64), x.astype(jnp.float64), y, state, ctx)

    ours = jax.jit(fn.train.value_and_grad(model, CE, policy=BF16))
    (_, _), got = ours(params, x, y, state, ctx)

    def bf16_loss(params):  # the same model and policy, differentiated by jax.grad
        pred, _, _ = fn.apply_layer(
            model, _tree_cast(params, jnp.bfloat16), x.astype(jnp.bfloat16), state, ctx
        )
        return CE.forward(pred.astype(jnp.float32), y)[0]

    theirs = jax.jit(jax.grad(bf16_loss))(params)

    errors = jax.tree_util.tree_map(
        lambda g, t, w: (_rel_error(g, w), _rel_error(t, w)), got, theirs, want
    )
    pairs = jax.tree_util.tree_leaves(
        errors, is_leaf=lambda e: isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], float)
    )
    assert len(pairs) == len(jax.tree_util.tree_leaves(params))
    for ours_err, jax_err in pairs:
        assert ours_err <= 2 * jax_err + 1e-3, (ours_err, jax_err)
    total = [np.sqrt(np.mean(np.square(p))) for p in zip(*pairs, strict=True)]
    assert total[0] <= 2 * total[1], total
    assert total[0] < 0.05, total  # bf16 gradients, not noise


# --- a bf16 training run -------------------------------------------------------------------------


def test_bf16_digits_mlp_ends_within_2_percent_of_float32():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = digits.data.astype(np.float32)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    y = digits.target.astype(np.int32)
    model = fn.sequential(fn.dense(128), fn.relu(), fn.dense(64), fn.relu(), fn.dense(10))
    opt = fn.optim.adam(1e-3)
    finals, first = {}, _train_state(model, opt, (64, 64))
    for name, policy in (("float32", None), ("bfloat16", BF16)):
        ts = jax.tree_util.tree_map(jnp.copy, first)  # the step donates its input
        step = fn.train.train_step(model, CE, opt, policy=policy)
        order = np.random.default_rng(0).permutation(len(x))
        for i in range(200):
            idx = order[(i * 64) % 1728 : (i * 64) % 1728 + 64]
            ts, _ = step(ts, x[idx], y[idx])
        finals[name] = fn.train.evaluate(model, CE, ts.params, x, y, batch_size=len(x))["loss"]
    assert finals["float32"] < 0.3, finals  # it trained
    assert abs(finals["bfloat16"] - finals["float32"]) <= 0.02 * finals["float32"], finals


# --- float16 and dynamic loss scaling --------------------------------------------------------


def test_float16_dynamic_loss_scaling_skips_non_finite_steps():
    settings = fn.train.DynamicLossScale(initial=2.0**40, growth_interval=3)
    policy = fn.train.mixed_precision(compute=jnp.float16, loss_scale=settings)
    model = fn.sequential(fn.dense(8), fn.batchnorm(), fn.relu(), fn.dense(3))
    opt = policy.wrap(fn.optim.sgd(0.1))
    ts = _train_state(model, opt, (16, 4))
    step = fn.train.train_step(model, CE, opt, policy=policy)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(16, 4)), jnp.float32)
    y = jnp.arange(16) % 3

    # 2^40 times the loss overflows float16 (max 65504): the step is skipped, scale halves.
    before = jax.tree_util.tree_map(np.asarray, (ts.params, ts.state))
    ts, loss = step(ts, x, y)
    assert np.isfinite(float(loss))
    assert int(ts.opt_state.skipped) == 1 and float(ts.opt_state.scale) == 2.0**39
    jax.tree_util.tree_map(np.testing.assert_array_equal, (ts.params, ts.state), before)

    losses = []
    for _ in range(40):
        ts, loss = step(ts, x, y)
        losses.append(float(loss))
    skipped, scale = int(ts.opt_state.skipped), float(ts.opt_state.scale)
    assert 20 <= skipped < 41 and scale < 2.0**30, (skipped, scale)
    assert losses[-1] < losses[0]  # the finite steps trained
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(ts.params))

    # A non-finite input: skipped again, model state (running statistics) kept.
    kept = jax.tree_util.tree_map(np.asarray, (ts.params, ts.state))
    bad = x.at[0, 0].set(jnp.nan)
    ts, _ = step(ts, bad, y)
    assert int(ts.opt_state.skipped) == skipped + 1
    jax.tree_util.tree_map(np.testing.assert_array_equal, (ts.params, ts.state), kept)
    assert bool(all_finite(ts.params))


def test_loss_scale_grows_after_growth_interval_finite_steps():
    opt = fn.train.loss_scaled(fn.optim.sgd(0.1), fn.train.DynamicLossScale(4.0, 2))
    params = {"w": jnp.ones(3, jnp.float32)}
    state, update = opt.init(params), jax.jit(opt.update)
    scales = []
    for _ in range(5):
        _, state = update({"w": jnp.ones(3) * state.scale}, state, params)
        scales.append(float(state.scale))
    assert scales == [4.0, 8.0, 8.0, 16.0, 16.0]
    updates, state = update({"w": jnp.full(3, 16.0)}, state, params)
    np.testing.assert_allclose(updates["w"], -0.1 * np.ones(3))  # unscaled gradient 1


def test_fit_with_a_float16_policy_wraps_the_optimizer():
    model = fn.sequential(fn.dense(8), fn.relu(), fn.dense(2))
    x = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    params, _ = _init(model, (8, 3))
    policy = fn.train.mixed_precision(compute=jnp.float16)
    result = fn.train.fit(
        model,
        CE,
        fn.optim.adam(1e-2),
        params,
        x,
        y,
        key=jax.random.PRNGKey(1),
        epochs=3,
        batch_size=8,
        progress=False,
        policy=policy,
    )
    assert isinstance(result.opt_state, fn.train.LossScaleState)
    assert result.history["loss"][-1] < result.history["loss"][0]
