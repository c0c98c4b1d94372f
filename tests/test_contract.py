"""Generic tests over every registered case (see tests/registry)."""

import jax
import jax.numpy as jnp
import pytest

import funcnn as fn
from funcnn.check import check_layer
from tests.registry import all_cases

CASES = all_cases()


def _x_for(case, key, dtype):
    if case.make_x is not None:
        return case.make_x(key)
    shapes = case.input_shape
    if all(isinstance(d, int) for d in shapes):
        return jax.random.normal(key, shapes, dtype)
    keys = jax.random.split(key, len(shapes))
    return tuple(jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes, strict=True))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_backward_matches_vjp_and_finite_differences(case, jit):
    layer = case.make()
    x = case.make_x(jax.random.PRNGKey(3)) if case.make_x else None
    check_layer(layer, case.input_shape, x=x, train=case.train, jit=jit, **case.check_kwargs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_float32_in_float32_out(case):
    """Default-dtype params and float32 inputs give float32 outputs and gradients."""
    layer = case.make()
    params, state, _ = fn.init_layer(layer, jax.random.PRNGKey(0), case.input_shape)
    x = _x_for(case, jax.random.PRNGKey(1), jnp.float32)
    ctx = fn.Ctx(jax.random.PRNGKey(2), case.train)
    y, cache, _ = fn.apply_layer(layer, params, x, state, ctx)
    dx, dparams = layer.backward(params, cache, jax.tree_util.tree_map(jnp.ones_like, y))
    for leaf in jax.tree_util.tree_leaves((y, dx)):
        assert leaf.dtype == jnp.float32, case.id
    for g, p in zip(
        jax.tree_util.tree_leaves(dparams), jax.tree_util.tree_leaves(params), strict=True
    ):
        assert g.dtype == p.dtype and g.shape == p.shape, case.id


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_jitted_forward_does_not_retrace(case):
    """Calling jit(forward) twice with same-shape inputs traces once; the cache feeds backward."""
    layer = case.make()
    params, state, _ = fn.init_layer(layer, jax.random.PRNGKey(0), case.input_shape)
    traces = []

    @jax.jit
    def forward(params, x, state, ctx):
        traces.append(1)
        return fn.apply_layer(layer, params, x, state, ctx)

    for seed in (1, 2):
        x = _x_for(case, jax.random.PRNGKey(seed), jnp.float32)
        y, cache, _ = forward(params, x, state, fn.Ctx(jax.random.PRNGKey(seed), case.train))
        layer.backward(params, cache, jax.tree_util.tree_map(jnp.ones_like, y))
    assert len(traces) == 1


def test_registry_is_not_empty():
    assert len(CASES) > 40
