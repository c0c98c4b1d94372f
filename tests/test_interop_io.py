"""to_jax / from_jax (save / load: tests/test_io.py, tests/test_io_faults.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn.interop import from_jax, to_jax


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
    x = np.random.default_rng(0).standard_normal((4, 2))
    f = to_jax(model)
    # Under jit: one program each (eager autodiff compiles every operation on its own).
    grads = jax.jit(jax.grad(lambda p: f(p, x).sum()))(params)
    assert calls, "the hand-written backward was not used"
    ref = jax.jit(jax.grad(lambda p: model.forward(p, x)[0].sum()))(params)
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


@pytest.mark.parametrize("mode", ["jvp", "jacfwd"])
def test_to_jax_forward_mode_says_what_to_use(mode, key):
    layer = fn.sequential(fn.dense(3), fn.tanh())
    params, _ = layer.init(key, (2, 4))
    x = jax.random.normal(key, (2, 4))
    f = to_jax(layer)
    run = {
        "jvp": lambda: jax.jvp(lambda x: f(params, x), (x,), (x,)),
        "jacfwd": lambda: jax.jacfwd(lambda x: f(params, x))(x),
    }[mode]
    with pytest.raises(
        TypeError,
        match=r"to_jax\(sequential\): forward-mode autodiff \(jax.jvp, jax.jacfwd\) is not "
        r"available through to_jax.*custom_vjp.*Use reverse mode \(jax.grad, jax.vjp, "
        r"jax.jacrev.*jax.jvp\(lambda p, x: layer.forward\(p, x\)\[0\]",
    ):
        run()
    # What the message suggests works: reverse mode through the bridge, and forward mode
    # on the plain forward, give the same Jacobian.
    rev = jax.jacrev(lambda x: f(params, x))(x)
    fwd = jax.jacfwd(lambda x: layer.forward(params, x)[0])(x)
    np.testing.assert_allclose(rev, fwd, rtol=1e-10, atol=1e-12)


def test_to_jax_hessian_is_forward_over_our_backward(key):
    layer = fn.sequential(fn.dense(3), fn.tanh(), fn.dense(1))
    params, _ = layer.init(key, (2, 3))
    x = np.random.default_rng(0).standard_normal((2, 3))
    f = to_jax(layer)
    ours = jax.jit(jax.hessian(lambda x: (f(params, x) ** 2).sum()))(x)
    ref = jax.jit(jax.hessian(lambda x: (layer.forward(params, x)[0] ** 2).sum()))(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_to_jax_wide_forward_mode_error(key):
    layer = fn.sequential(fn.dense(3), fn.dropout(0.5))
    params, state, _ = fn.init_layer(layer, key, (2, 4))
    f = to_jax(layer)
    x = jnp.ones((2, 4))
    with pytest.raises(TypeError, match=r"to_jax\(sequential\): forward-mode autodiff"):
        jax.jvp(lambda x: f(params, x, state, fn.Ctx(key=key, train=True))[0], (x,), (x,))
    # Other TypeErrors pass through unchanged.
    with pytest.raises(TypeError, match=r"sequential: params must be a tuple"):
        f({"w": x}, x, state, fn.Ctx())
