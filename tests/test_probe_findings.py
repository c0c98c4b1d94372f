"""One test per finding of the bad-input probe (``probe-findings.md``, layers, losses and
optimizers), named after its item number. Each failed before its fix.

Items 1, 6, 7 and the checkpoint parts of 11 (file mode, read-only targets, 64-bit
scalars, string leaves) are about ``funcnn.io`` and are tested in the io tests.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import losses, optim

KEY = jax.random.PRNGKey(0)


# --- item 2: float16 losses accumulate in float32 --------------------------------------------


@pytest.mark.parametrize(
    "make, diff, expected",
    [
        (losses.mse, 0.1, 0.01),
        (losses.l1, 0.1, 0.1),
        (lambda: losses.huber(delta=1.0), 0.1, 0.005),
    ],
)
def test_item_2_float16_mean_over_many_elements_is_not_zero(make, diff, expected):
    n = 70_000  # more elements than float16 can count (its largest value is 65,504)
    pred = jnp.full((n,), diff, jnp.float16)
    value, cache = make().forward(pred, jnp.zeros((n,), jnp.float16))
    assert value.dtype == jnp.float16
    np.testing.assert_allclose(float(value), expected, rtol=2e-3)
    grad = make().backward(cache)
    assert grad.dtype == jnp.float16 and bool(jnp.all(grad > 0))  # not flushed to zero


@pytest.mark.parametrize(
    "make, expected",
    [
        (losses.mse, 100.0),
        (losses.l1, 10.0),
        (lambda: losses.huber(delta=1.0), 9.5),
        (losses.binary_cross_entropy_with_logits, 10.0 + math.log1p(math.exp(-10.0))),
    ],
)
def test_item_2_float16_mean_of_large_values_does_not_overflow(make, expected):
    pred = jnp.full((1000,), 10.0, jnp.float16)  # the float16 sum would be inf
    value, _ = make().forward(pred, jnp.zeros((1000,), jnp.float16))
    np.testing.assert_allclose(float(value), expected, rtol=2e-3)


# --- item 3: narrow integer labels do not wrap the class count -------------------------------


@pytest.mark.parametrize(
    "make", [losses.softmax_cross_entropy, losses.hinge], ids=["softmax_ce", "hinge"]
)
@pytest.mark.parametrize(
    "dtype, classes, label", [(jnp.int16, 40_000, 32_000), (jnp.uint8, 300, 44), (jnp.int8, 200, 7)]
)
def test_item_3_narrow_integer_labels(make, dtype, classes, label):
    loss = make()

    @jax.jit  # one program per label dtype (eager, every op compiles for these shapes)
    def value_and_grad(logits, labels):
        value, cache = loss.forward(logits, labels)
        return value, loss.backward(cache)

    logits = np.random.default_rng(0).standard_normal((2, classes)).astype(np.float32)
    value, grad = value_and_grad(logits, np.array([label, 0], dtype))
    expected, grad32 = value_and_grad(logits, np.array([label, 0], np.int32))
    assert bool(jnp.isfinite(value))
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(grad, grad32, rtol=1e-6)


# --- item 4: backward checks its cotangent (every registry case: test_backward_errors.py) ----


def test_item_4_conv2d_backward_refuses_a_dy_of_the_wrong_spatial_size():
    layer = fn.conv2d(2, 3)
    params, _ = layer.init(KEY, (1, 5, 5, 1))
    _, cache = layer.forward(params, jnp.ones((1, 5, 5, 1)))
    with pytest.raises(ValueError, match=r"^conv2d: dy must have .* \(1, 3, 3, 2\), got dy of "):
        layer.backward(params, cache, jnp.ones((1, 4, 4, 2)))


@pytest.mark.parametrize(
    "layer",
    [fn.relu(), fn.softmax(), fn.dropout(0.5), fn.layernorm(), fn.batchnorm(), fn.max_pool2d(1)],
    ids=lambda layer: layer.name,
)
def test_item_4_a_broadcastable_dy_is_refused(layer):
    params, state, _ = fn.init_layer(layer, KEY, (3, 1, 1, 4))
    x = np.random.default_rng(0).standard_normal((3, 1, 1, 4))
    _, cache, _ = fn.apply_layer(layer, params, x, state, fn.Ctx(key=KEY, train=True))
    with pytest.raises(
        ValueError, match=rf"^{layer.name}: dy must have the shape .*\(1, 1, 1, 4\)"
    ):
        layer.backward(params, cache, jnp.ones((1, 1, 1, 4)))


def test_item_4_combinators_and_pass_through_layers_check_dy():
    x = jnp.ones((2, 3))
    concat = fn.fan_in_concat()
    _, cache = concat.forward((), (x, x))
    with pytest.raises(
        ValueError, match=r"^fan_in_concat: dy must have .*\(2, 6\), got .*\(2, 7\)"
    ):
        concat.backward((), cache, jnp.ones((2, 7)))  # too wide: used to be split silently
    par = fn.parallel(fn.relu(), fn.relu())
    _, cache = par.forward(((), ()), (x, x))
    with pytest.raises(ValueError, match=r"^parallel: expected a tuple of 2 cotangents"):
        par.backward(((), ()), cache, (x, x, x))  # an extra cotangent used to be ignored
    table = fn.embedding(5, 3)
    params, _ = table.init(KEY, (2, 2))
    _, ids = table.forward(params, jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(ValueError, match=r"^embedding: dy must have .*\(2, 2, 3\), got .*\(4, 3\)"):
        table.backward(params, ids, jnp.ones((4, 3)))  # the right element count, wrong shape
    for layer in (fn.bias(), fn.identity(), fn.flatten(), fn.reshape((3,))):
        p, _ = layer.init(KEY, (2, 3))
        _, c = layer.forward(p, x)
        with pytest.raises(ValueError, match=rf"^{layer.name}: dy must have the shape"):
            layer.backward(p, c, jnp.ones((1, 3)))
    add = fn.fan_in_sum()
    _, c = add.forward((), (x, x))
    with pytest.raises(ValueError, match=r"^fan_in_sum: dy must have the shape"):
        add.backward((), c, jnp.ones((1, 3)))


# --- item 5: relu does not hide a NaN -----------------------------------------------------------


@pytest.mark.parametrize("layer", [fn.relu(), fn.leaky_relu(0.1)], ids=["relu", "leaky_relu"])
def test_item_5_nan_propagates_through_relu(layer):
    x = jnp.array([jnp.nan, -1.0, 0.0, 2.0])
    y, cache = layer.forward((), x)
    assert bool(jnp.isnan(y[0])) and bool(jnp.all(jnp.isfinite(y[1:])))
    dx, _ = layer.backward((), cache, jnp.full(4, 3.0))
    # PyTorch's rule: the gradient mask is "not x <= 0", so a NaN input passes dy on.
    slope = 0.1 if layer.name == "leaky_relu" else 0.0  # the slope for x <= 0
    np.testing.assert_allclose(dx, [3.0, 3.0 * slope, 3.0 * slope, 3.0])


# --- item 8: clip_by_global_norm in float16 -----------------------------------------------------


def test_item_8_global_norm_of_float16_gradients_is_computed_in_float32():
    grads = {"w": jnp.full((9,), 1000.0, jnp.float16)}  # true norm 3000; its squares overflow
    np.testing.assert_allclose(float(optim.global_norm(grads)), 3000.0, rtol=1e-3)
    clip = optim.clip_by_global_norm(1.0)
    updates, _ = clip.update(grads, clip.init(grads))
    assert updates["w"].dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(updates["w"], np.float32), 1 / 3, rtol=2e-3)


# --- item 9: gelu(approximate=True) backward in float16 -----------------------------------------


def test_item_9_tanh_gelu_backward_is_finite_in_float16_for_large_inputs():
    layer = fn.gelu(approximate=True)
    x = jnp.array([-1000.0, -256.0, -3.0, 0.5, 256.0, 1000.0], jnp.float16)
    y, cache = layer.forward((), x)
    dx, _ = layer.backward((), cache, jnp.ones_like(x))
    assert y.dtype == dx.dtype == jnp.float16
    assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all(jnp.isfinite(dx)))
    y32, cache32 = layer.forward((), x.astype(jnp.float32))
    dx32, _ = layer.backward((), cache32, jnp.ones(6, jnp.float32))
    np.testing.assert_allclose(np.asarray(dx, np.float32), dx32, rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(np.asarray(y, np.float32), y32, rtol=2e-3, atol=1e-3)


# --- item 10: optimizer state and updates are validated ------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: optim.sgd(0.1, momentum=0.9),
        lambda: optim.rmsprop(0.1, centered=True),
        lambda: optim.adam(0.1),
        lambda: optim.adamw(0.1),
    ],
)
def test_item_10_state_that_does_not_mirror_the_params(make):
    opt = make()
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    other = opt.init({"w": jnp.ones((3, 2))})  # made for other params
    with pytest.raises(ValueError, match=r"state\.\w+ must mirror the gradients .*got 1 array"):
        opt.update(grads, other, params)
    narrow = opt.init({"w": jnp.ones((1, 2)), "b": jnp.zeros(2)})  # broadcastable moments
    with pytest.raises(ValueError, match=r"must mirror the gradients .*\['w'\] \(3, 2\).*\(1, 2\)"):
        opt.update(grads, narrow, params)
    with pytest.raises(TypeError, match=r"state must be a \w+State \(made by this optimizer"):
        opt.update(grads, (), params)


def test_item_10_apply_updates_does_not_broadcast():
    params = {"w": jnp.ones((3, 2))}
    with pytest.raises(ValueError, match=r"^apply_updates: updates must mirror the params"):
        optim.apply_updates(params, {"w": jnp.ones((1, 2))})
    with pytest.raises(ValueError, match=r"^apply_updates: updates must mirror the params"):
        optim.apply_updates(params, {"v": jnp.ones((3, 2))})


# --- item 11: the smaller findings ---------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, shape",
    [
        (fn.dense(3), (2, -4)),
        (fn.relu(), (-1, 3)),
        (fn.conv2d(2, 3), (1, 5, -5, 2)),
        (fn.max_pool2d(2), (1, -4, 4, 1)),
        (fn.layernorm(), (2, -3)),
        (fn.batchnorm(), (-2, 3)),
        (fn.dropout(0.5), (2, -1)),
        (fn.embedding(4, 2), (-3,)),
        (fn.flatten(), (2, -3, 2)),
        (fn.sequential(fn.dense(2)), (2, -3)),
    ],
    ids=lambda v: v.name if isinstance(v, fn.Layer) else str(v),
)
def test_item_11_negative_dimensions_in_input_shape(layer, shape):
    with pytest.raises(ValueError, match=r"input_shape must not hold negative sizes"):
        fn.init_layer(layer, KEY, shape)


@pytest.mark.parametrize("layer", [fn.dense(2), fn.linear(2), fn.bias()], ids=lambda v: v.name)
def test_item_11_integer_inputs_into_affine_layers(layer):
    params, _ = layer.init(KEY, (2, 3))
    with pytest.raises(TypeError, match=rf"^{layer.name}: x must be a floating-point array"):
        layer.forward(params, jnp.ones((2, 3), jnp.int32))


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: fn.fan_in_sum(0), ValueError),
        (lambda: fn.fan_in_sum(-1), ValueError),
        (lambda: fn.fan_in_sum("2"), TypeError),
        (lambda: fn.fan_in_concat(axis=0), ValueError),
        (lambda: fn.fan_in_concat(axis=1.5), TypeError),
        (lambda: fn.leaky_relu(math.nan), ValueError),
        (lambda: fn.elu(math.inf), ValueError),
        (lambda: fn.layernorm(eps=math.inf), ValueError),
        (lambda: fn.batchnorm(eps=math.inf), ValueError),
        (lambda: fn.gelu(approximate="yes"), TypeError),
    ],
)
def test_item_11_factory_arguments_are_checked(make, error):
    with pytest.raises(error):
        make()


@pytest.mark.parametrize(
    "layer",
    [fn.dropout(0.5), fn.batchnorm(), fn.sequential(fn.dense(2), fn.dropout(0.1))],
    ids=lambda v: v.name,
)
def test_item_11_ctx_none_into_a_wide_layer(layer):
    params, state, _ = layer.init(KEY, (4, 3))
    with pytest.raises(TypeError, match=rf"^{layer.name}: ctx must be a funcnn.Ctx.*got NoneType"):
        layer.forward(params, jnp.ones((4, 3)), state, None)


@pytest.mark.parametrize(
    "kwargs, rule",
    [({"decay": 1.0}, r"decay must be a number in \[0, 1\)"), ({"eps": 0.0}, "eps must be a pos")],
)
def test_item_11_rmsprop_decay_one_and_eps_zero_are_refused(kwargs, rule):
    with pytest.raises(ValueError, match=rf"^rmsprop: {rule}"):
        optim.rmsprop(0.1, **kwargs)


@pytest.mark.parametrize("make", [lambda: optim.adam(0.1), lambda: optim.sgd(0.1, momentum=0.5)])
def test_item_11_the_step_counter_saturates_instead_of_wrapping(make):
    opt = make()
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.full(3, 0.5)}
    state = opt.init(params)
    state = state._replace(count=jnp.asarray(2**31 - 2, jnp.int32))
    for _ in range(3):  # 2^31 - 1, then it stays there
        updates, state = opt.update(grads, state, params)
        assert bool(jnp.all(jnp.isfinite(updates["w"])))
    assert int(state.count) == 2**31 - 1


@pytest.mark.parametrize("width", [3, 100, 1000])
def test_item_11_layernorm_of_a_constant_row_is_zero(width):
    layer = fn.layernorm()
    params, _ = layer.init(KEY, (2, width))
    x = jnp.full((2, width), 12345.678, jnp.float32)
    y, cache = layer.forward(params, x)
    np.testing.assert_array_equal(y, 0.0)
    dx, _ = layer.backward(params, cache, jnp.ones_like(x))
    assert bool(jnp.all(jnp.isfinite(dx)))


def test_item_11_layernorm_and_batchnorm_lose_few_digits_far_from_zero():
    """A row of 1e4 + small noise in float32: the shifted two-pass variance keeps it."""
    noise = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    x = 1e4 + noise  # float32, as the layers see it; the references are NumPy float64
    ref = (noise - noise.mean(-1, keepdims=True)) / np.sqrt(noise.var(-1, keepdims=True) + 1e-5)
    y, _ = fn.layernorm().forward(fn.layernorm().init(KEY, (4, 64))[0], x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref, atol=2e-3)
    bn = fn.batchnorm()
    p, s, _ = bn.init(KEY, (64, 4))
    yb, _, _ = bn.forward(p, x.T, s, fn.Ctx(train=True))
    refb = (noise.T - noise.T.mean(0, keepdims=True)) / np.sqrt(
        noise.T.var(0, keepdims=True) + 1e-5
    )
    np.testing.assert_allclose(yb, refb, atol=2e-3)
