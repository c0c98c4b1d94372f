"""Generic tests over every registered case (see tests/registry).

Two tests per case keep the suite fast while covering the whole contract:

* float64 parity, at random params (``funcnn.check.random_params``, or the case's
  ``randomize``): ``check_layer`` runs the forward eagerly and under ``jax.jit`` (and
  compares them), feeds the jitted cache to the jitted hand-written backward, and compares
  the result with ``jax.vjp`` and central finite differences; it also checks that
  ``init``'s output shape is the real one, that the gradient trees mirror ``x`` and
  ``params``, and that the backward uses no JAX autodiff.
* float32 under jit: params of init's default dtypes and float32 inputs give float32 outputs and
  gradients, and a second call with new same-shape data retraces neither the jitted
  forward nor the jitted backward (fed the cache that came out of the jitted forward).

Each test compiles each of its functions once and runs no eager JAX code besides the
float64 forward that the jitted one is compared with: compilation is what the suite's time
is made of (see tests/README.md).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn.check import check_layer, init_shapes, random_params
from tests.noise import device_normal
from tests.registry import all_cases

CASES = all_cases()


def _parametrized(cases):
    """One param per case. The quick subset (``-m "not slow"``) keeps the first case of
    each public factory (``Case.covers``); the others are marked ``slow``."""
    seen, params = set(), []
    for case in cases:
        first = not set(case.covers) <= seen
        seen |= set(case.covers)
        params.append(pytest.param(case, id=case.id, marks=() if first else pytest.mark.slow))
    return params


PARAMS = _parametrized(CASES)


def _x_for(case, seed, dtype):
    """The case's input: its ``make_x``, or standard-normal data drawn by NumPy (eager
    ``jax.random`` would compile a kernel for every new shape)."""
    if case.make_x is not None:
        return case.make_x(jax.random.PRNGKey(seed))
    rng, shapes = np.random.default_rng(seed), case.input_shape
    if fn.core.is_shape(shapes):
        return device_normal(rng, shapes, dtype)
    return tuple(device_normal(rng, s, dtype) for s in shapes)


@pytest.mark.parametrize("case", PARAMS)
def test_backward_matches_vjp_and_finite_differences(case):
    layer = case.make()
    x = _x_for(case, 3, np.float64) if case.make_x else None
    # At random params (one random direction per leaf); a built-in backward that calls
    # JAX's autodiff fails.
    check_layer(
        layer,
        case.input_shape,
        x=x,
        train=case.train,
        jit=True,
        autodiff="error",
        fd_directions=1,
        randomize=case.randomize,
    )


@pytest.mark.parametrize("case", PARAMS)
def test_float32_under_jit_without_retrace(case):
    layer = case.make()
    # init's dtypes and shapes (traced, not compiled) and random values of them
    shapes, state, _ = init_shapes(layer, jax.random.PRNGKey(0), case.input_shape)
    params, state = random_params(jax.random.PRNGKey(1), shapes, state)
    traces = {"forward": 0, "backward": 0}

    @jax.jit
    def forward(params, x, state, ctx):
        traces["forward"] += 1
        return fn.apply_layer(layer, params, x, state, ctx)

    @jax.jit
    def backward(params, cache, dy):  # the cache comes out of the jitted forward
        traces["backward"] += 1
        return layer.backward(params, cache, dy)

    for seed in (1, 2):
        x = _x_for(case, seed, np.float32)
        ctx = fn.Ctx(jax.random.PRNGKey(seed), case.train)
        y, cache, _ = forward(params, x, state, ctx)
        dy = jax.tree_util.tree_map(lambda a, s=seed: np.full(a.shape, s, a.dtype), y)
        dx, dparams = backward(params, cache, dy)
    assert traces == {"forward": 1, "backward": 1}, f"{case.id}: retraced on same-shape input"
    for leaf in jax.tree_util.tree_leaves((y, dx)):
        assert leaf.dtype == jnp.float32, case.id
    for g, p in zip(
        jax.tree_util.tree_leaves(dparams), jax.tree_util.tree_leaves(params), strict=True
    ):
        assert g.dtype == p.dtype and g.shape == p.shape, case.id


def test_registry_is_not_empty():
    assert len(CASES) > 40
