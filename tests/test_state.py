"""State and randomness threaded through combinators, and a jitted training step with batchnorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn.core import Ctx
from funcnn.layers.dropout import dropout
from funcnn.layers.normalization import batchnorm
from tests.noise import device_normal

BN = {"mean", "var"}


def _nested():
    return fn.sequential(
        fn.dense(4),
        fn.sequential(batchnorm(), dropout(0.5)),
        fn.residual(fn.sequential(fn.dense(4), batchnorm())),
    )


def _bn_states(state):
    """Every batchnorm state ({"mean", "var"} dict) in ``state``, in tree order."""
    found = []

    def walk(node):
        if isinstance(node, dict) and set(node) == BN:
            found.append(node)
        elif isinstance(node, (tuple, list)):
            for child in node:
                walk(child)
        elif isinstance(node, dict):
            for child in node.values():
                walk(child)

    walk(state)
    return found


def _assert_mirrors(params, state):
    """``state`` has the container structure of ``params``, with () for stateless children."""
    if isinstance(params, tuple):
        assert isinstance(state, tuple) and len(state) == len(params), (params, state)
        for p, s in zip(params, state, strict=True):
            _assert_mirrors(p, s)
    elif isinstance(params, dict) and set(params) == {"scale", "offset"}:
        assert isinstance(state, dict) and set(state) == BN
    else:  # a stateless leaf layer: dense params, or () for parameter-free layers
        assert state == ()


def test_a_wide_child_makes_the_combinator_wide():
    assert not fn.sequential(fn.dense(3), fn.relu()).wide
    assert fn.sequential(fn.dense(3), batchnorm()).wide
    assert _nested().wide


def test_nested_state_structure_mirrors_params():
    model = _nested()
    params, state, shape = model.init(jax.random.PRNGKey(0), (8, 3))
    assert shape == (8, 4)
    _assert_mirrors(params, state)
    # sequential(dense, sequential(bn, dropout), residual(f)) with f = sequential(dense, bn):
    # residual(f)'s state is f's own.
    assert state[0] == ()
    assert set(state[1][0]) == BN and state[1][1] == ()
    assert state[2][0] == () and set(state[2][1]) == BN
    assert len(_bn_states(state)) == 2


def test_running_stats_update_in_train_and_stay_fixed_in_eval():
    model = _nested()
    params, state, _ = model.init(jax.random.PRNGKey(0), (8, 3))
    x = 2.0 + device_normal(1, (8, 3))

    y, cache, new_state = model.forward(params, x, state, Ctx(jax.random.PRNGKey(2), True))
    _assert_mirrors(params, new_state)
    for old, new in zip(_bn_states(state), _bn_states(new_state), strict=True):
        assert not np.allclose(old["mean"], new["mean"])
        assert not np.allclose(old["var"], new["var"])
    dx, grads = model.backward(params, cache, jnp.ones_like(y))
    assert dx.shape == x.shape
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)

    y1, _, eval_state = model.forward(params, x, new_state, Ctx(train=False))  # no key needed
    y2, _, _ = model.forward(params, x, new_state, Ctx(jax.random.PRNGKey(9), False))
    for a, b in zip(
        jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(eval_state), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(y1, y2)  # eval is deterministic: the key is ignored


def test_children_get_different_keys_derived_with_fold_in():
    model = _nested()
    params, state, _ = model.init(jax.random.PRNGKey(0), (6, 3))
    x = device_normal(1, (6, 3))
    key = jax.random.PRNGKey(7)
    _, cache, _ = model.forward(params, x, state, Ctx(key, True))
    mask = cache[1][1]
    # The dropout is child 1 of child 1: its key is fold_in(fold_in(key, 1), 1).
    expected_key = jax.random.fold_in(jax.random.fold_in(key, 1), 1)
    np.testing.assert_array_equal(mask, jax.random.bernoulli(expected_key, 0.5, (6, 4)))
    # A different key gives a different mask; the same key the same one.
    _, cache2, _ = model.forward(params, x, state, Ctx(jax.random.PRNGKey(8), True))
    _, cache3, _ = model.forward(params, x, state, Ctx(key, True))
    assert bool(jnp.any(cache2[1][1] != mask))
    np.testing.assert_array_equal(cache3[1][1], mask)


def test_two_dropouts_in_sequence_draw_different_masks():
    model = fn.sequential(dropout(0.5), fn.identity(), dropout(0.5))
    x = jnp.ones((16, 16))
    params, state, _ = model.init(jax.random.PRNGKey(0), x.shape)
    _, cache, _ = model.forward(params, x, state, Ctx(jax.random.PRNGKey(3), True))
    assert bool(jnp.any(cache[0] != cache[2]))


def test_graph_threads_state_by_node_name():
    model = fn.graph(
        {
            "h": (fn.dense(4), "input"),
            "bn": (batchnorm(), "h"),
            "drop": (dropout(0.25), "bn"),
            "out": (fn.fan_in_sum(), ("drop", "h")),
        },
        output="out",
    )
    params, state, _ = model.init(jax.random.PRNGKey(0), (5, 3))
    assert model.wide
    assert state["h"] == () and set(state["bn"]) == BN and state["drop"] == ()
    x = device_normal(1, (5, 3))
    _, _, new_state = model.forward(params, x, state, Ctx(jax.random.PRNGKey(2), True))
    assert not np.allclose(new_state["bn"]["mean"], state["bn"]["mean"])


# --- a jitted training step ---------------------------------------------------------------


def _mlp():
    return fn.sequential(
        fn.dense(16), batchnorm(momentum=0.2), fn.relu(), dropout(0.1), fn.dense(1)
    )


def _data():
    x = np.asarray(device_normal(10, (32, 3))) * 2 + 1
    y = np.sin(x[:, :1]) + 0.5 * x[:, 1:2]
    return jax.device_put(x), jax.device_put(y)


def _hand_rolled_step(model, lr):
    """forward, a local mean squared error, backward, SGD: one pure function."""

    @jax.jit
    def step(params, state, x, target, key):
        pred, cache, new_state = model.forward(params, x, state, Ctx(key, True))
        diff = pred - target
        loss = jnp.mean(diff * diff)
        dpred = 2.0 * diff / diff.size
        _, grads = model.backward(params, cache, dpred)
        params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
        return params, new_state, loss

    return step


def test_jitted_training_step_updates_running_stats_only_in_train():
    model = _mlp()
    x, target = _data()
    params, state, _ = model.init(jax.random.PRNGKey(0), x.shape)
    step = _hand_rolled_step(model, 0.05)
    init_bn = _bn_states(state)[0]

    losses = []
    for i in range(60):
        params, state, loss = step(params, state, x, target, jax.random.PRNGKey(100 + i))
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]

    bn = _bn_states(state)[0]
    assert not np.allclose(bn["mean"], init_bn["mean"])
    assert not np.allclose(bn["var"], init_bn["var"])
    assert bn["mean"].dtype == jnp.float32  # the state keeps its dtype through the loop

    # Eval: jitted, no key; running statistics are used and returned unchanged.
    evaluate = jax.jit(lambda p, s, x: model.forward(p, x, s, Ctx(train=False)))
    pred, _, eval_state = evaluate(params, state, x)
    for a, b in zip(
        jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(eval_state), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    eval_loss = float(np.mean((np.asarray(pred) - np.asarray(target)) ** 2))
    assert eval_loss < losses[0]


def test_jitted_step_equals_eager_step():
    model = _mlp()
    x, target = _data()
    params, state, _ = model.init(jax.random.PRNGKey(0), x.shape)
    step = _hand_rolled_step(model, 0.05)
    key = jax.random.PRNGKey(1)
    p_jit, s_jit, l_jit = step(params, state, x, target, key)
    with jax.disable_jit():
        p_eager, s_eager, l_eager = step(params, state, x, target, key)
    np.testing.assert_allclose(l_jit, l_eager, rtol=1e-5)
    for a, b in zip(
        jax.tree_util.tree_leaves((p_jit, s_jit)),
        jax.tree_util.tree_leaves((p_eager, s_eager)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_train_step_from_funcnn_train_with_batchnorm():
    train_step = getattr(fn.train, "train_step", None)
    if train_step is None or not hasattr(fn.losses, "mse") or not hasattr(fn.optim, "sgd"):
        pytest.skip("funcnn.train.train_step, losses.mse or optim.sgd not available")
    model = _mlp()
    x, target = _data()
    params, state, _ = model.init(jax.random.PRNGKey(0), x.shape)
    init_mean = np.array(_bn_states(state)[0]["mean"])
    opt = fn.optim.sgd(0.05)
    opt_state = opt.init(params)
    step = train_step(model, fn.losses.mse(), opt)
    losses = []
    for i in range(60):
        params, state, opt_state, loss = step(
            params, state, opt_state, x, target, jax.random.PRNGKey(100 + i)
        )
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    trained_state = jax.tree_util.tree_map(np.array, state)
    assert not np.allclose(_bn_states(trained_state)[0]["mean"], init_mean)
    _, _, eval_state = model.forward(params, x, state, Ctx(train=False))
    for a, b in zip(
        jax.tree_util.tree_leaves(trained_state),
        jax.tree_util.tree_leaves(eval_state),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
