"""Named children of sequential, and residual(f) with f's own params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn


def test_named_sequential_has_dicts_in_order_and_the_positional_numbers():
    named = fn.sequential(encoder=fn.dense(4), act=fn.relu(), head=fn.dense(2))
    positional = fn.sequential(fn.dense(4), fn.relu(), fn.dense(2))
    key, x = jax.random.PRNGKey(0), jax.random.normal(jax.random.PRNGKey(1), (3, 5))
    params, shape = named.init(key, (3, 5))
    p_pos, _ = positional.init(key, (3, 5))
    assert list(params) == ["encoder", "act", "head"] and shape == (3, 2)
    np.testing.assert_array_equal(params["head"]["w"], p_pos[2]["w"])  # same keys per child
    y, cache = named.forward(params, x)
    assert list(cache) == ["encoder", "act", "head"]
    np.testing.assert_array_equal(y, positional.forward(p_pos, x)[0])
    dx, grads = named.backward(params, cache, jnp.ones_like(y))
    dx_pos, g_pos = positional.backward(p_pos, positional.forward(p_pos, x)[1], jnp.ones_like(y))
    assert list(grads) == ["encoder", "act", "head"]
    np.testing.assert_array_equal(grads["encoder"]["w"], g_pos[0]["w"])
    np.testing.assert_array_equal(dx, dx_pos)
    # a JAX tree function rebuilds the dict with sorted keys: still accepted
    resorted = jax.tree_util.tree_map(lambda a: a, params)
    assert list(resorted) == ["act", "encoder", "head"]
    np.testing.assert_array_equal(named.forward(resorted, x)[0], y)
    # a jit-compiled forward's cache goes back into backward
    _, jit_cache = jax.jit(named.forward)(params, x)
    np.testing.assert_allclose(named.backward(params, jit_cache, jnp.ones_like(y))[0], dx)


def test_named_sequential_wide_state_is_a_dict():
    model = fn.sequential(body=fn.dense(3), norm=fn.batchnorm(), drop=fn.dropout(0.5))
    params, state, _ = fn.init_layer(model, jax.random.PRNGKey(0), (4, 2))
    assert model.wide and list(state) == ["body", "norm", "drop"]
    assert state["body"] == () and set(state["norm"]) == {"mean", "var"}
    ctx = fn.Ctx(jax.random.PRNGKey(1), train=True)
    _, _, new_state = model.forward(params, jnp.ones((4, 2)), state, ctx)
    assert list(new_state) == ["body", "norm", "drop"]


def test_named_sequential_errors_use_the_names():
    model = fn.sequential(encoder=fn.dense(4), head=fn.dense(2))
    with pytest.raises(ValueError, match=r"sequential\[encoder\] \(dense\)"):
        model.init(jax.random.PRNGKey(0), (3,) * 0)
    params, _ = model.init(jax.random.PRNGKey(0), (3, 5))
    with pytest.raises(ValueError, match=r"sequential\[encoder\] \(dense\): .*5"):
        model.forward(params, jnp.ones((3, 4)))
    with pytest.raises(TypeError, match=r"dict with one entry per named child \['encoder', "):
        model.forward({"encoder": params["encoder"]}, jnp.ones((3, 5)))
    with pytest.raises(TypeError, match=r"sequential: params must be a dict"):
        model.forward((params["encoder"], params["head"]), jnp.ones((3, 5)))
    with pytest.raises(TypeError, match=r"either by position or by name, not both"):
        fn.sequential(fn.dense(2), head=fn.dense(2))
    with pytest.raises(TypeError, match=r"child 'head' must be a Layer, got int"):
        fn.sequential(head=3)


def test_residual_params_state_and_summary_are_the_child_s():
    f = fn.sequential(fn.dense(4), fn.batchnorm())
    params, state, shape = fn.init_layer(fn.residual(f), jax.random.PRNGKey(0), (6, 4))
    p_f, s_f, f_shape = fn.init_layer(f, jax.random.PRNGKey(0), (6, 4))
    assert shape == f_shape == (6, 4)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(p_f)
    assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(s_f)
    np.testing.assert_array_equal(params[0]["w"], p_f[0]["w"])
    rows = [r.path for r in fn.summary(fn.residual(fn.dense(3)), (2, 3)).rows]
    assert rows == ["", "0"]  # residual, then dense: nothing else in between


def test_residual_checks_the_shape():
    with pytest.raises(ValueError, match=r"residual: the wrapped layer \(dense\) must preserve"):
        fn.residual(fn.dense(5)).init(jax.random.PRNGKey(0), (2, 3))
