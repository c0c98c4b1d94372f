"""funcnn.check itself: it must catch the bugs a student makes, and say what is wrong in words."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn.check import (
    AutodiffInBackwardWarning,
    check_grads,
    check_layer,
    init_shapes,
    random_params,
)
from funcnn.core import check_input_shape


def _scale_layer(backward):
    """``y = s * x`` with one scale per feature, initialized to 1, and the given backward."""

    def init(key, input_shape):
        input_shape = check_input_shape("scale", input_shape)
        return {"s": jnp.ones((input_shape[-1],))}, input_shape

    def forward(params, x):
        return x * params["s"].reshape(1, -1), x

    return fn.Layer(init, forward, backward, name="scale")


def _right_backward(params, x, dy):
    return dy * params["s"].reshape(1, -1), {"s": (dy * x).sum(0)}


def test_a_backward_right_only_at_init_values_is_caught():
    def wrong_backward(params, x, dy):
        return dy, {"s": (dy * x).sum(0)}  # forgot the scale: right only while s == 1

    layer = _scale_layer(wrong_backward)
    assert check_layer(layer, (4, 3), at="init").ok  # what a check at init params sees
    with pytest.raises(AssertionError, match=r"scale: FAILED at random params") as info:
        check_layer(layer, (4, 3))
    x_row = next(line for line in str(info.value).splitlines() if line.strip().startswith("x "))
    assert "<-- mismatch" in x_row
    report = check_layer(layer, (4, 3), at=("random", "init"), raise_on_error=False)
    assert not report.ok and report.at == "random params"
    assert [r.at for r in report.also] == ["init params"] and report.also[0].ok
    assert "scale: OK at init params" in str(report)
    assert check_layer(_scale_layer(_right_backward), (4, 3), at=("random", "init")).ok


def test_a_doubled_gradient_shows_the_same_relative_error_in_both_columns():
    def doubled(params, x, dy):
        dx, dparams = _right_backward(params, x, dy)
        return 2 * dx, dparams

    report = check_layer(_scale_layer(doubled), (4, 3), raise_on_error=False, fd_directions=3)
    (x_leaf,) = [leaf for leaf in report.leaves if leaf.path == "x"]
    assert not x_leaf.ok
    np.testing.assert_allclose(x_leaf.vjp_rel, 1.0, rtol=1e-9)
    np.testing.assert_allclose(x_leaf.fd_rel, 1.0, rtol=1e-4)
    assert all(leaf.ok for leaf in report.leaves if leaf.path != "x")


def test_a_leaf_with_zero_true_gradient_raises_no_alarm():
    """A scalar shift before a layernorm: the output does not depend on it at all."""

    def init(key, input_shape):
        return {"c": jnp.zeros((1,))}, input_shape

    def forward(params, x):
        return x + params["c"].reshape(1, 1), ()

    def backward(params, cache, dy):
        return dy, {"c": dy.sum().reshape(1)}

    shift = fn.Layer(init, forward, backward, name="shift")
    report = check_layer(fn.sequential(shift, fn.layernorm()), (3, 4))
    (c_leaf,) = [leaf for leaf in report.leaves if leaf.path == "params[0]['c']"]
    assert c_leaf.scale < 1e-12  # the true gradient is rounding noise
    assert c_leaf.fd_rel < 1e-5 and c_leaf.vjp_rel < 1e-7 and c_leaf.ok
    assert "max(max|ref|, 1e-03)" in str(report)  # the floor is stated in the header


def test_wrong_arity_is_named_in_words():
    def three(params, x, dy):
        return dy, {"s": (dy * x).sum(0)}, None

    with pytest.raises(
        AssertionError,
        match=r"scale: backward must return a pair \(dx, dparams\), it returned a tuple of 3 items",
    ):
        check_layer(_scale_layer(three), (4, 3))

    y_only = fn.Layer(lambda k, s: ((), s), lambda p, x: x, lambda p, c, dy: (dy, ()), name="y")
    with pytest.raises(
        AssertionError,
        match=r"y: forward must return a tuple \(y, cache\) of 2 items \(pure layer\), "
        r"it returned an array of shape \(2, 3\)",
    ):
        check_layer(y_only, (2, 3))

    bad_init = fn.Layer(lambda k, s: {}, lambda p, x: (x, ()), lambda p, c, dy: (dy, ()), "i")
    with pytest.raises(AssertionError, match=r"i: init must return a tuple \(params, output_shape"):
        check_layer(bad_init, (2, 3))


def test_wrong_gradient_structure_is_described_in_words():
    def missing_key(params, x, dy):
        return dy * params["s"].reshape(1, -1), {}

    report = check_layer(_scale_layer(missing_key), (4, 3), jit=False, raise_on_error=False)
    text = str(report)
    assert "dparams should be a dict with keys ['s'], got keys [] (missing ['s'])" in text
    assert "PyTreeDef" not in text

    def tuple_not_dict(params, x, dy):
        dx, dparams = _right_backward(params, x, dy)
        return dx, (dparams["s"],)

    text = str(check_layer(_scale_layer(tuple_not_dict), (4, 3), jit=False, raise_on_error=False))
    assert (
        "dparams should be a dict with keys ['s'] (1 array in all), got a tuple of 1 item" in text
    )
    assert "PyTreeDef" not in text


def test_a_forward_that_hard_codes_float32_is_named():
    def init(key, input_shape):
        return (), input_shape

    cast_out = fn.Layer(
        init, lambda p, x: ((2 * x).astype(jnp.float32), ()), lambda p, c, dy: (2 * dy, ()), "f32"
    )
    with pytest.raises(AssertionError, match=r"f32: forward returned float32 .* hard-codes"):
        check_layer(cast_out, (2, 3), jit=False)

    def inside(p, x):
        return (jnp.sin(x.astype(jnp.float32))).astype(x.dtype), x

    inner = fn.Layer(init, inside, lambda p, x, dy: (jnp.cos(x) * dy, ()), "inner")
    with pytest.raises(AssertionError, match=r"inner: forward computes in float32 .*sin"):
        check_layer(inner, (2, 3), jit=False)


def _square(backward):
    return fn.Layer(lambda k, s: ((), s), lambda p, x: (x**2, x), backward, name="square")


def test_a_backward_that_calls_autodiff_gets_a_warning_or_an_error():
    def with_vjp(params, x, dy):
        return jax.vjp(lambda x: x**2, x)[1](dy)[0], ()

    def with_grad(params, x, dy):
        return jax.grad(lambda x: jnp.vdot(x**2, dy))(x), ()

    @jax.custom_vjp
    def sq(x):
        return x**2

    sq.defvjp(lambda x: (x**2, x), lambda x, g: (2 * x * g,))

    def with_custom_vjp(params, x, dy):
        return sq(x) * 0 + 2 * x * dy, ()

    for backward, what in [
        (with_vjp, "jax.vjp"),
        (with_grad, "jax.grad"),
        (with_custom_vjp, "custom_vjp"),
    ]:
        with pytest.warns(AutodiffInBackwardWarning, match=rf"square: backward uses JAX .*{what}"):
            report = check_layer(_square(backward), (2, 3), jit=False)
        assert report.ok and report.notes  # the gradient itself is right
        with pytest.raises(AssertionError, match=r"problem: square: backward uses JAX autodiff"):
            check_layer(_square(backward), (2, 3), jit=False, autodiff="error")

    report = check_layer(_square(lambda p, x, dy: (2 * x * dy, ())), (2, 3), autodiff="error")
    assert report.ok and not report.notes


def test_random_params_keeps_structure_and_validity():
    params = {"w": jnp.full((3, 4), 0.1), "b": jnp.zeros((4,)), "ids": jnp.arange(3)}
    state = {"var": jnp.ones((4,)), "mean": jnp.zeros((4,)), "count": jnp.zeros((), jnp.int32)}
    new_params, new_state = random_params(jax.random.PRNGKey(0), params, state)
    assert jax.tree_util.tree_structure(new_params) == jax.tree_util.tree_structure(params)
    for new, old in zip(
        jax.tree_util.tree_leaves((new_params, new_state)),
        jax.tree_util.tree_leaves((params, state)),
        strict=True,
    ):
        assert new.shape == old.shape and new.dtype == old.dtype
    assert not np.allclose(new_params["w"], 0.1) and not np.allclose(new_params["b"], 0.0)
    rms = np.sqrt(np.mean(np.asarray(new_params["w"]) ** 2))
    np.testing.assert_allclose(rms, np.sqrt(2 / (3 + 4)), rtol=0.6)  # Glorot's scale
    assert (new_params["b"] < 0).any() and (new_state["mean"] < 0).any()
    assert (new_state["var"] > 0).all() and not np.allclose(new_state["var"], 1.0)
    np.testing.assert_array_equal(new_params["ids"], params["ids"])
    assert new_state["count"] == 0


def test_random_params_needs_only_the_shapes_of_params():
    layer = fn.sequential(fn.dense(4), fn.batchnorm())
    shapes, state, out_shape = init_shapes(layer, jax.random.PRNGKey(0), (3, 2))
    assert out_shape == (3, 4)
    assert isinstance(shapes[0]["w"], jax.ShapeDtypeStruct) and shapes[0]["w"].shape == (2, 4)
    np.testing.assert_array_equal(state[1]["var"], np.ones(4))  # state has its real values
    params, new_state = random_params(jax.random.PRNGKey(1), shapes, state)
    assert params[0]["w"].shape == (2, 4) and params[0]["w"].dtype == shapes[0]["w"].dtype
    assert (new_state[1]["var"] > 0).all()


def test_randomize_hook_and_given_params():
    seen = []

    def positive(key, params, state):
        params, state = random_params(key, params, state)
        seen.append(params)
        return jax.tree_util.tree_map(jnp.abs, params), state

    layer = _scale_layer(_right_backward)
    assert check_layer(layer, (4, 3), randomize=positive, jit=False).ok
    assert len(seen) == 1 and not np.allclose(seen[0]["s"], 1.0)

    params = {"s": jnp.array([1.0, 2.0, 3.0])}
    x = jnp.ones((2, 3))
    given = check_grads(layer, params, x, at="given", jit=False)
    assert given.ok and given.at == "the given params"
    with pytest.raises(ValueError, match=r"check: at must be 'random', 'init'"):
        check_grads(layer, params, x, at="start")


def test_batchnorm_is_checked_at_random_statistics_in_eval_mode():
    report = check_layer(fn.batchnorm(), (5, 3), train=False, at=("random", "init"))
    assert report.ok and report.at == "random params" and report.also[0].at == "init params"
