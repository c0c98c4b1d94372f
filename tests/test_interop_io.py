"""to_jax / from_jax and save / load."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn.interop import from_jax, to_jax
from funcnn.io import load, save


def test_to_jax_uses_our_backward(key):
    """jax.grad through to_jax(layer) calls the hand-written backward, not autodiff."""
    calls = []
    relu = fn.relu()
    spy = fn.Layer(
        relu.init,
        relu.forward,
        lambda p, c, dy: (calls.append(1), relu.backward(p, c, dy))[1],
        name="spy",
    )
    model = fn.sequential(fn.dense(3), spy, fn.dense(1))
    params, _ = model.init(key, (4, 2))
    x = jax.random.normal(key, (4, 2))
    f = to_jax(model)
    grads = jax.grad(lambda p: f(p, x).sum())(params)
    assert calls, "the hand-written backward was not used"
    ref = jax.grad(lambda p: model.forward(p, x)[0].sum())(params)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_to_jax_wide_returns_state(key):
    def init(k, shape):
        return {"s": jnp.ones(())}, {"n": jnp.zeros(())}, shape

    def forward(params, x, state, ctx):
        return params["s"] * x, x, {"n": state["n"] + 1}

    def backward(params, x, dy):
        return params["s"] * dy, {"s": jnp.sum(dy * x)}

    layer = fn.Layer(init, forward, backward, name="scale", wide=True)
    params, state, _ = layer.init(key, (3,))
    f = to_jax(layer)
    x = jnp.arange(3.0)
    (_y, new_state) = f(params, x, state, fn.Ctx(key, True))
    assert new_state["n"] == 1
    g = jax.grad(lambda p: f(p, x, state, fn.Ctx(key, True))[0].sum())(params)
    np.testing.assert_allclose(g["s"], x.sum())


def test_from_jax_prototype_passes_check_layer():
    square = from_jax(lambda params, x: jnp.sin(x) * x, name="xsinx")
    report = fn.check.check_layer(square, (3, 4))
    assert report.ok


def test_from_jax_with_params(key):
    def init(k, shape):
        return {"a": jnp.ones(shape[-1])}, shape

    scaled = from_jax(lambda p, x: x * p["a"].reshape(1, -1), init, name="scale")
    assert fn.check.check_layer(scaled, (2, 5)).ok


def test_save_load_roundtrip(tmp_path, key):
    model = fn.sequential(fn.dense(4), fn.relu(), fn.dense(2))
    params, _ = model.init(key, (3, 5))
    path = os.fspath(tmp_path / "params.npz")
    save(path, params)
    loaded = load(path, like=params)
    for a, b in zip(
        jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["params.npz"]  # no temp file left


def test_load_refuses_mismatched_trees(tmp_path, key):
    params, _ = fn.dense(4).init(key, (3, 5))
    path = os.fspath(tmp_path / "p.npz")
    save(path, params)
    other, _ = fn.dense(4).init(key, (3, 6))
    with pytest.raises(ValueError, match=r"load: leaf \['w'\] .* has shape \(5, 4\).*\(6, 4\)"):
        load(path, like=other)
    with pytest.raises(ValueError, match=r"does not match the template's structure"):
        load(path, like={"w": params["w"]})
