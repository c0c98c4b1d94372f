"""remat: the child's gradients, bit for bit, from a cache that is only the input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn


def _nbytes(tree):
    return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(u, v)


def _deep_mlp(depth=6, width=32):
    layers = []
    for _ in range(depth):
        layers += [fn.dense(width), fn.tanh()]
    return fn.sequential(*layers)


def test_params_are_the_childs_and_gradients_equal_bit_for_bit():
    block = _deep_mlp()
    params, out_shape = block.init(jax.random.PRNGKey(0), (8, 16))
    r_params, r_shape = fn.remat(block).init(jax.random.PRNGKey(0), (8, 16))
    assert r_shape == out_shape
    assert jax.tree_util.tree_structure(r_params) == jax.tree_util.tree_structure(params)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 16))
    y, cache = jax.jit(block.forward)(params, x)
    ry, rcache = jax.jit(fn.remat(block).forward)(params, x)
    dy = jax.random.normal(jax.random.PRNGKey(2), y.shape)
    np.testing.assert_array_equal(ry, y)
    _assert_trees_equal(
        block.backward(params, cache, dy), fn.remat(block).backward(params, rcache, dy)
    )


def test_cache_is_only_the_input():
    block = _deep_mlp()
    params, _ = block.init(jax.random.PRNGKey(0), (8, 16))
    x = jnp.ones((8, 16), jnp.float32)
    full = _nbytes(jax.eval_shape(block.forward, params, x)[1])
    recompute = _nbytes(jax.eval_shape(fn.remat(block).forward, params, x)[1])
    assert recompute == x.size * x.dtype.itemsize
    assert recompute * 10 < full


def test_wide_child_redraws_the_same_mask_and_keeps_its_state():
    block = fn.sequential(fn.dense(6), fn.dropout(0.5), fn.batchnorm())
    params, state, _ = fn.init_layer(block, jax.random.PRNGKey(0), (4, 3))
    r_params, r_state, _ = fn.init_layer(fn.remat(block), jax.random.PRNGKey(0), (4, 3))
    assert jax.tree_util.tree_structure(r_params) == jax.tree_util.tree_structure(params)
    assert jax.tree_util.tree_structure(r_state) == jax.tree_util.tree_structure(state)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    ctx = fn.Ctx(key=jax.random.PRNGKey(5), train=True)
    y, cache, new_state = fn.apply_layer(block, params, x, state, ctx)
    ry, rcache, r_new_state = fn.apply_layer(fn.remat(block), params, x, state, ctx)
    np.testing.assert_array_equal(ry, y)
    _assert_trees_equal(new_state, r_new_state)
    dy = jnp.ones_like(y)
    _assert_trees_equal(
        block.backward(params, cache, dy), fn.remat(block).backward(params, rcache, dy)
    )


def test_remat_needs_a_layer_and_names_itself_in_child_errors():
    with pytest.raises(TypeError, match="remat: argument 0 must be a Layer"):
        fn.remat("dense")
    layer = fn.remat(fn.dense(3))
    params, _ = layer.init(jax.random.PRNGKey(0), (2, 4))
    with pytest.raises(ValueError, match=r"remat\[0\] \(dense\)"):
        layer.forward(params, jnp.ones((2, 5)))
