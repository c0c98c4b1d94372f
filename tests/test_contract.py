"""Generic tests over every registered case (see tests/registry).

Two tests per case keep the suite fast while covering the whole contract:

* float64 parity, at random params (``funcnn.check.random_params``, or the case's
  ``randomize``): ``check_layer`` runs the forward eagerly and under ``jax.jit`` (and
  compares them), feeds the jitted cache to the hand-written backward, and compares the
  result with ``jax.vjp`` and central finite differences; it also checks that ``init``'s
  output shape is the real one and that the gradient trees mirror ``x`` and ``params``.
* float32 under jit: default-dtype params and float32 inputs give float32 outputs and
  gradients, and a second call with new same-shape data does not retrace.
"""

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


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_backward_matches_vjp_and_finite_differences(case):
    layer = case.make()
    x = case.make_x(jax.random.PRNGKey(3)) if case.make_x else None
    kwargs = {"fd_directions": 1, "randomize": case.randomize, **case.check_kwargs}
    # At random params (one random direction per leaf); a built-in backward that calls
    # JAX's autodiff fails.
    check_layer(
        layer, case.input_shape, x=x, train=case.train, jit=True, autodiff="error", **kwargs
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_float32_under_jit_without_retrace(case):
    layer = case.make()
    params, state, _ = fn.init_layer(layer, jax.random.PRNGKey(0), case.input_shape)
    traces = []

    @jax.jit
    def forward(params, x, state, ctx):
        traces.append(1)
        return fn.apply_layer(layer, params, x, state, ctx)

    for seed in (1, 2):
        x = _x_for(case, jax.random.PRNGKey(seed), jnp.float32)
        ctx = fn.Ctx(jax.random.PRNGKey(seed), case.train)
        y, cache, _ = forward(params, x, state, ctx)
        dx, dparams = layer.backward(params, cache, jax.tree_util.tree_map(jnp.ones_like, y))
    assert len(traces) == 1, f"{case.id}: the jitted forward retraced on same-shape input"
    for leaf in jax.tree_util.tree_leaves((y, dx)):
        assert leaf.dtype == jnp.float32, case.id
    for g, p in zip(
        jax.tree_util.tree_leaves(dparams), jax.tree_util.tree_leaves(params), strict=True
    ):
        assert g.dtype == p.dtype and g.shape == p.shape, case.id


def test_registry_is_not_empty():
    assert len(CASES) > 40
