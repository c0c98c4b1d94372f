"""Backward errors are as clear as forward ones, for every registry case.

Each case's forward runs once, abstractly (``jax.eval_shape``: shapes and dtypes only,
nothing is compiled or computed), and its backward is then traced with cotangents that
are wrong in one way each: a broadcastable shape (``(1, d)`` for an output ``(n, d)``),
another tree structure, an integer dtype. Every one must raise a ``ValueError`` whose
message starts with the layer's name (for a combinator, its name and the child's
position) and gives both shapes. The right cotangent must trace without error, so the
test cannot pass by a backward that fails on everything.
"""

import re

import jax
import jax.numpy as jnp
import pytest

import funcnn as fn
from tests.registry import all_cases

CASES = all_cases()


def _abstract_forward(case):
    """``(layer, params, cache, y)`` with abstract arrays (ShapeDtypeStruct leaves)."""
    layer = case.make()
    key = jax.random.PRNGKey(0)
    params, state = jax.eval_shape(lambda k: fn.init_layer(layer, k, case.input_shape)[:2], key)
    if case.make_x is not None:
        x = jax.eval_shape(case.make_x, key)
    else:
        x = jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
            case.input_shape,
            is_leaf=lambda s: isinstance(s, tuple) and all(isinstance(d, int) for d in s),
        )
    ctx = fn.Ctx(key=key, train=case.train)
    y, cache, _ = jax.eval_shape(
        lambda p, x, s, c: fn.apply_layer(layer, p, x, s, c), params, x, state, ctx
    )
    return layer, params, cache, y


def _backward(layer, params, cache, dy):
    return jax.eval_shape(layer.backward, params, cache, dy)


def _with_first_leaf(y, make):
    """``y``'s cotangent structure with the first leaf replaced by ``make(leaf)``."""
    leaves, tree = jax.tree_util.tree_flatten(y)
    return tree.unflatten([make(leaves[0]), *leaves[1:]])


def _broadcastable(leaf):
    """A shape that broadcasts against the leaf's but is not its shape."""
    shape = leaf.shape
    if shape[0] > 1:
        return jax.ShapeDtypeStruct((1, *shape[1:]), leaf.dtype)  # (1, d) for (n, d)
    return jax.ShapeDtypeStruct((*shape[:-1], 1 if shape[-1] > 1 else 2), leaf.dtype)


def _wrong_structure(y):
    if isinstance(y, tuple):
        return y[:-1]  # one cotangent too few
    return (y, y)  # a tuple where one array belongs


def _message_for(layer):
    # Combinators prefix the child's position ("sequential[2] (dense): dense: ...").
    return rf"^{re.escape(layer.name)}(\[[^\]]+\] \(|: )"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_wrong_cotangents_raise_value_errors_naming_the_layer(case):
    layer, params, cache, y = _abstract_forward(case)
    right = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), y)
    _backward(layer, params, cache, right)  # the right cotangent traces

    wrong_shape = _with_first_leaf(right, _broadcastable)
    with pytest.raises(ValueError, match=_message_for(layer)) as info:
        _backward(layer, params, cache, wrong_shape)
    # Both shapes are named (a combinator that splits dy, e.g. a concatenation, may name
    # the slice its child received).
    assert len(re.findall(r"\(\d+(?:, \d+)*,?\)", str(info.value))) >= 2, str(info.value)

    with pytest.raises(ValueError, match=_message_for(layer)):
        _backward(layer, params, cache, _wrong_structure(right))

    as_int = _with_first_leaf(right, lambda a: jax.ShapeDtypeStruct(a.shape, jnp.int32))
    with pytest.raises(ValueError, match=_message_for(layer)):
        _backward(layer, params, cache, as_int)


def test_the_position_in_the_model_is_named():
    model = fn.sequential(fn.dense(4), fn.relu(), fn.sequential(fn.dense(3), fn.tanh()))
    params, _ = model.init(jax.random.PRNGKey(0), (2, 5))
    _, cache = model.forward(params, jnp.ones((2, 5)))
    with pytest.raises(
        ValueError,
        match=r"^sequential\[2\] \(sequential\): sequential\[1\] \(tanh\): tanh: dy must have "
        r"the shape of this layer's output \(2, 3\), got dy of shape \(1, 3\)",
    ):
        model.backward(params, cache, jnp.ones((1, 3)))


def test_a_graph_names_the_node_and_checks_its_params():
    g = fn.graph(
        {"h": (fn.dense(3), "input"), "out": (fn.fan_in_sum(), ("h", "h"))}, output=("out", "h")
    )
    params, _ = g.init(jax.random.PRNGKey(0), (2, 4))
    (out, h), cache = g.forward(params, jnp.ones((2, 4)))
    # "h" is an output and feeds "out": a broadcastable dy for it must not be summed in.
    with pytest.raises(ValueError, match=r"^graph: 'h': the cotangents to add up"):
        g.backward(params, cache, (jnp.ones_like(out), jnp.ones((1, 3))))
    with pytest.raises(ValueError, match=r"^graph: expected a tuple of 2 cotangents"):
        g.backward(params, cache, jnp.ones_like(out))
    with pytest.raises(TypeError, match=r"^graph: params must be a dict with one entry per node"):
        g.forward({"h": params["h"]}, jnp.ones((2, 4)))
    with pytest.raises(TypeError, match=r"^graph: params must be a dict .* keys \['h', 'out'\]"):
        g.backward((), cache, (jnp.ones_like(out), jnp.ones_like(h)))
    with pytest.raises(ValueError, match=r"^graph: cache must be a dict with one entry per node"):
        g.backward(params, {}, (jnp.ones_like(out), jnp.ones_like(h)))
