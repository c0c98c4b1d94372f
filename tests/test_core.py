"""The contract itself, the core layers' semantics, and their error messages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn.core import Ctx, Static


def test_layer_is_immutable():
    layer = fn.dense(3)
    with pytest.raises(AttributeError):
        layer.name = "other"


def test_jit_forward_then_backward_with_static_cache(key):
    layer = fn.sequential(fn.dense(6), fn.relu(), fn.flatten(), fn.reshape((2, 3)))
    params, shape = layer.init(key, (4, 5))
    y, cache = jax.jit(layer.forward)(params, jnp.ones((4, 5)))
    assert y.shape == shape == (4, 2, 3)
    assert isinstance(cache[3], Static) and cache[3].value.shape == (4, 6)
    dx, _ = jax.jit(layer.backward)(params, cache, jnp.ones_like(y))
    assert dx.shape == (4, 5)


def test_relu_caches_a_packed_bit_mask_and_has_zero_derivative_at_zero():
    _y, mask = fn.relu().forward((), jnp.array([-1.0, 0.0, 3.0]))
    bits, shape = mask
    assert bits.dtype == jnp.uint8 and bits.shape == (1,) and shape.value == ((3,), 1)
    big = fn.relu().forward((), jnp.ones((4, 100), jnp.float32))[1][0]
    assert big.nbytes == 50  # 400 elements, one bit each
    dx, _ = fn.relu().backward((), mask, jnp.array([5.0, 5.0, 5.0]))
    np.testing.assert_array_equal(dx, [0.0, 0.0, 5.0])


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(), (1,), (3, 5), (2, 3, 7)])
def test_pack_uints_round_trips(bits, shape):
    values = np.random.default_rng(bits).integers(0, 2**bits, size=shape, dtype=np.uint8)
    packed = jax.jit(fn.core.pack_uints, static_argnums=1)(jnp.asarray(values), bits)
    assert packed[0].dtype == jnp.uint8
    assert packed[0].size == -(-values.size * bits // 8)  # ceil(bits * count / 8) bytes
    np.testing.assert_array_equal(jax.jit(fn.core.unpack_uints)(packed), values)


def test_pack_uints_refuses_other_widths():
    with pytest.raises(ValueError, match="bits must be 1, 2, 4 or 8, got 3"):
        fn.core.pack_uints(jnp.zeros(4, jnp.uint8), 3)


@pytest.mark.parametrize(
    ("layer", "reference"),
    [
        (fn.gelu(), lambda x: jax.nn.gelu(x, approximate=False)),
        (fn.gelu(approximate=True), lambda x: jax.nn.gelu(x, approximate=True)),
        (fn.leaky_relu(), lambda x: jax.nn.leaky_relu(x, 0.01)),
        (fn.elu(), jax.nn.elu),
        (fn.selu(), jax.nn.selu),
        (fn.softplus(), jax.nn.softplus),
        (fn.silu(), jax.nn.silu),
        (fn.sigmoid(), jax.nn.sigmoid),
        (fn.softmax(), jax.nn.softmax),
        (fn.log_softmax(), jax.nn.log_softmax),
    ],
)
def test_activation_values_match_jax_nn(layer, reference):
    x = jnp.linspace(-30.0, 30.0, 61, dtype=jnp.float64).reshape(1, -1)
    np.testing.assert_allclose(layer.forward((), x)[0], reference(x), rtol=1e-12, atol=1e-14)


def test_softmax_family_is_stable_for_huge_logits():
    x = jnp.array([[1e4, -1e4, 0.0]])
    for layer in (fn.softmax(), fn.log_softmax(), fn.sigmoid(), fn.softplus()):
        y, cache = layer.forward((), x)
        dx, _ = layer.backward((), cache, jnp.ones_like(y))
        assert jnp.all(jnp.isfinite(y)) and jnp.all(jnp.isfinite(dx)), layer.name


def test_fan_out_sums_cotangents():
    layer = fn.fan_out(3)
    x = jnp.arange(4.0)
    ys, cache = layer.forward((), x)
    assert len(ys) == 3
    dx, _ = layer.backward((), cache, (jnp.ones(4), 2 * jnp.ones(4), 3 * jnp.ones(4)))
    np.testing.assert_array_equal(dx, 6 * jnp.ones(4))


def test_fan_in_sum_copies_and_concat_splits():
    a, b = jnp.ones((2, 3)), jnp.ones((2, 2))
    _y, cache = fn.fan_in_concat().forward((), (a, b))
    da, db = fn.fan_in_concat().backward((), cache, jnp.arange(10.0).reshape(2, 5))[0]
    np.testing.assert_array_equal(da, [[0, 1, 2], [5, 6, 7]])
    np.testing.assert_array_equal(db, [[3, 4], [8, 9]])
    dy = jnp.arange(6.0).reshape(2, 3)
    dxs, _ = fn.fan_in_sum().backward((), fn.fan_in_sum().forward((), (a, a))[1], dy)
    assert len(dxs) == 2 and all(jnp.array_equal(d, dy) for d in dxs)


def test_residual_adds_identity_gradient(key):
    inner = fn.dense(3)
    res = fn.residual(inner)
    params, _ = res.init(key, (2, 3))
    x = jax.random.normal(key, (2, 3))
    y, cache = res.forward(params, x)
    inner_params = params  # residual(f)'s params are f's
    assert sorted(params) == ["b", "w"]
    np.testing.assert_allclose(y, x + inner.forward(inner_params, x)[0], rtol=1e-6)
    dy = jnp.ones((2, 3))
    dx, _ = res.backward(params, cache, dy)
    np.testing.assert_allclose(dx, dy + dy @ inner_params["w"].T, rtol=1e-6)


def test_wide_lifting_threads_state_and_keys(key):
    """A wide child makes the combinator wide; pure children get state ()."""
    seen = []

    def init(key, shape):
        return (), {"calls": jnp.zeros(())}, shape

    def forward(params, x, state, ctx):
        seen.append(ctx.key)
        return x, (), {"calls": state["calls"] + 1}

    counter = fn.Layer(init, forward, lambda p, c, dy: (dy, ()), name="counter", wide=True)
    model = fn.sequential(fn.dense(2), counter, fn.sequential(fn.relu(), counter))
    assert model.wide and not fn.sequential(fn.dense(2)).wide
    params, state, _shape = model.init(key, (3, 4))
    assert state == ((), {"calls": 0}, ((), {"calls": 0}))
    y, cache, new_state = model.forward(params, jnp.ones((3, 4)), state, Ctx(key, True))
    assert new_state[1]["calls"] == 1 and new_state[2][1]["calls"] == 1
    assert not jnp.array_equal(jax.random.key_data(seen[0]), jax.random.key_data(seen[1]))
    _dx, grads = model.backward(params, cache, jnp.ones_like(y))
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)


def test_typed_keys_work(key):
    model = fn.sequential(fn.dense(3), fn.relu())
    params, _ = model.init(jax.random.key(0), (2, 4))
    assert params[0]["w"].shape == (4, 3)


def test_summary_lists_children():
    text = str(fn.summary(fn.sequential(fn.dense(4), fn.relu(), fn.dense(2)), (8, 3)))
    assert "output (8, 2)" in text and "total params: 26" in text


def test_graph_sums_fan_out_cotangents(key):
    g = fn.graph(
        {"a": (fn.identity(), "input"), "s": (fn.fan_in_sum(), ("a", "a", "input"))}, output="s"
    )
    params, _ = g.init(key, (2,))
    _y, cache = g.forward(params, jnp.ones(2))
    dx, _ = g.backward(params, cache, jnp.ones(2))
    np.testing.assert_array_equal(dx, [3.0, 3.0])


# --- errors ------------------------------------------------------------------------------


def test_dense_wrong_feature_size(key):
    layer = fn.dense(4)
    params, _ = layer.init(key, (2, 3))
    with pytest.raises(ValueError, match=r"dense: expected input with last axis 3.*\(2, 5\)"):
        layer.forward(params, jnp.ones((2, 5)))


def test_dense_wrong_rank(key):
    params, _ = fn.dense(4).init(key, (2, 3))
    with pytest.raises(ValueError, match=r"dense: x must have at least 1 axes, got shape \(\)"):
        fn.dense(4).forward(params, jnp.ones(()))


def test_dense_wrong_params(key):
    params, _ = fn.dense(4).init(key, (2, 3))
    with pytest.raises(
        TypeError,
        match=r"dense: params must be a dict with keys \['b', 'w'\] \(as made by this "
        r"layer's init\), got tuple \(\)",
    ):
        fn.dense(4).forward((), jnp.ones((2, 3)))
    with pytest.raises(
        ValueError, match=r"dense: params\['w'\] must have shape \(3, 5\).*\(3, 4\)"
    ):
        fn.dense(5).forward(params, jnp.ones((2, 3)))
    with pytest.raises(TypeError, match=r"dense: params must be a dict with keys \['b', 'w'\]"):
        fn.dense(4).forward({"w": params["w"]}, jnp.ones((2, 3)))


def test_bad_hyperparameters_fail_in_the_factory():
    with pytest.raises(ValueError, match=r"dense: features must be a positive int, got 0"):
        fn.dense(0)
    with pytest.raises(ValueError, match=r"fan_out: n must be a positive int, got 0"):
        fn.fan_out(0)
    with pytest.raises(ValueError, match=r"reshape: at most one -1"):
        fn.reshape((-1, -1))
    with pytest.raises(ValueError, match=r"elu: alpha must be a positive finite number, got -1.0"):
        fn.elu(-1.0)


def test_sequential_error_names_the_position(key):
    model = fn.sequential(fn.dense(4), fn.reshape((3, 3)))
    with pytest.raises(
        ValueError,
        match=r"sequential\[1\] \(reshape\): reshape: cannot reshape "
        r"input of shape \(2, 4\)",
    ):
        model.init(key, (2, 5))


def test_sequential_params_structure(key):
    model = fn.sequential(fn.dense(4), fn.relu())
    params, _ = model.init(key, (2, 3))
    with pytest.raises(
        TypeError,
        match=r"sequential: params must be a tuple with one entry per "
        r"child \(2\), got tuple of length 1",
    ):
        model.forward(params[:1], jnp.ones((2, 3)))


def test_parallel_and_fan_in_wrong_number_of_inputs(key):
    par = fn.parallel(fn.relu(), fn.tanh())
    with pytest.raises(ValueError, match=r"parallel: expected a tuple of 2 input shapes"):
        par.init(key, ((2, 3),))
    params, _ = par.init(key, ((2, 3), (2, 3)))
    with pytest.raises(ValueError, match=r"parallel: expected a tuple of 2 inputs .*length 3"):
        par.forward(params, (jnp.ones(3),) * 3)
    with pytest.raises(ValueError, match=r"fan_in_sum: expected a tuple of 2 inputs"):
        fn.fan_in_sum(2).forward((), (jnp.ones(3),))
    with pytest.raises(
        ValueError,
        match=r"fan_in_sum: all inputs must have the same shape, "
        r"got \[\(2, 3\), \(2, 1\)\]",
    ):
        fn.fan_in_sum().forward((), (jnp.ones((2, 3)), jnp.ones((2, 1))))
    with pytest.raises(ValueError, match=r"fan_in_concat: inputs must agree on every axis but -1"):
        fn.fan_in_concat().init(key, ((2, 3), (4, 3)))


def test_activation_rejects_integer_input():
    with pytest.raises(TypeError, match=r"relu: x must be a floating-point array, got dtype int"):
        fn.relu().forward((), jnp.arange(3))


def test_graph_construction_errors():
    with pytest.raises(ValueError, match=r"graph: node 'a' reads 'b', which is not defined"):
        fn.graph({"a": (fn.relu(), "b"), "b": (fn.relu(), "input")}, output="a")
    with pytest.raises(ValueError, match=r"graph: nodes \['b'\] feed nothing"):
        fn.graph({"a": (fn.relu(), "input"), "b": (fn.relu(), "input")}, output="a")


def test_check_layer_catches_a_wrong_backward():
    """check_layer is what a student runs on their own layer: it must fail on a bug."""

    def forward(params, x):
        return x**3, x

    def wrong_backward(params, x, dy):
        return 2 * x * dy, ()  # should be 3 x^2 dy

    cube = fn.Layer(lambda k, s: ((), s), forward, wrong_backward, name="cube")
    with pytest.raises(AssertionError, match=r"gradient check of cube: FAILED"):
        fn.check.check_layer(cube, (3, 2))

    def right_backward(params, x, dy):
        return 3 * x**2 * dy, ()

    report = fn.check.check_layer(fn.Layer(cube.init, forward, right_backward, "cube"), (3, 2))
    assert report.ok and report.leaves[0].path == "x"


def test_check_layer_catches_wrong_init_shape():
    bad = fn.Layer(
        lambda k, s: ((), (s[0], 99)), lambda p, x: (x, ()), lambda p, c, dy: (dy, ()), name="bad"
    )
    with pytest.raises(AssertionError, match=r"bad: init says the output shape is \(2, 99\)"):
        fn.check.check_layer(bad, (2, 3))


def test_hyperparameter_types_are_checked_in_the_factory():
    with pytest.raises(
        TypeError, match=r"leaky_relu: negative_slope must be a finite number, got str 'a'"
    ):
        fn.leaky_relu("a")
    with pytest.raises(TypeError, match=r"softmax: axis must be an int, got float 1.5"):
        fn.softmax(axis=1.5)
    with pytest.raises(TypeError, match=r"parallel: argument 1 must be a Layer, got int"):
        fn.parallel(fn.dense(2), 3)
    with pytest.raises(ValueError, match=r"graph: output names must be distinct"):
        fn.graph({"h": (fn.relu(), "input")}, output=("h", "h"))


def test_parallel_init_error_names_the_branch(key):
    with pytest.raises(ValueError, match=r"parallel\[1\] \(reshape\): reshape: cannot reshape"):
        fn.parallel(fn.relu(), fn.reshape((7,))).init(key, ((2, 3), (2, 3)))
