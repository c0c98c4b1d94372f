"""embedding: lookup, scatter-add backward with repeated ids, dx None, and error messages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn.check import check_grads, init_shapes, random_params
from funcnn.layers.embedding import embedding


def random_table(layer):
    """Random params of the shapes and dtypes init makes (``funcnn.check.init_shapes`` and
    ``random_params``: traced and drawn by NumPy, nothing compiled; an eager init compiles
    its random-number kernel for every new table shape). ``test_forward_is_a_row_lookup``
    and the registry cover init itself."""
    shapes, _, _ = init_shapes(layer, jax.random.PRNGKey(0), (3,))
    return random_params(jax.random.PRNGKey(1), shapes)[0]


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)], ids=str)
def test_forward_is_a_row_lookup(shape):
    layer = embedding(6, 3)
    params, out_shape = layer.init(jax.random.PRNGKey(0), shape)
    assert params["table"].shape == (6, 3) and params["table"].dtype == jnp.float32
    assert out_shape == (*shape, 3)
    ids = np.random.default_rng(1).integers(0, 6, shape)
    y, cache = layer.forward(params, ids)
    assert y.shape == out_shape
    np.testing.assert_array_equal(y, np.asarray(params["table"])[np.asarray(ids)])
    assert cache is ids  # Cache: ids


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 2, 3)], ids=str)
def test_backward_scatter_adds_and_repeated_ids_accumulate(shape):
    vocab, features = 4, 3
    layer = embedding(vocab, features)
    params = random_table(layer)
    ids = np.random.default_rng(1).integers(0, vocab, shape)  # many repeats
    dy = np.random.default_rng(2).standard_normal((*shape, features))
    _, cache = layer.forward(params, ids)
    dx, grads = layer.backward(params, cache, dy)
    assert dx is None
    expected = np.zeros((vocab, features))
    np.add.at(expected, np.asarray(ids).reshape(-1), np.asarray(dy).reshape(-1, features))
    np.testing.assert_allclose(grads["table"], expected, rtol=1e-6)
    assert grads["table"].dtype == params["table"].dtype


def test_repeated_id_gets_the_sum_of_its_cotangents():
    layer = embedding(3, 2)
    params = random_table(layer)
    _, cache = layer.forward(params, jnp.array([2, 0, 2, 2]))
    dy = jnp.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    _, grads = layer.backward(params, cache, dy)
    np.testing.assert_array_equal(grads["table"], [[2.0, 20.0], [0.0, 0.0], [8.0, 80.0]])


def test_check_grads_accepts_integer_ids_and_requires_dx_none():
    layer = embedding(5, 3)
    params = random_table(layer)
    ids = jnp.array([[0, 1, 1], [4, 4, 4], [2, 0, 3], [1, 1, 0]])
    report = check_grads(layer, params, ids)
    assert report.ok
    assert [leaf.path for leaf in report.leaves] == ["params['table']"]


def test_integer_input_gives_dx_none_through_a_combinator():
    model = fn.sequential(embedding(10, 4), fn.flatten(), fn.dense(2))
    params, shape = model.init(jax.random.PRNGKey(0), (3, 5))
    assert shape == (3, 2)
    ids = np.random.default_rng(1).integers(0, 10, (3, 5))
    y, cache = model.forward(params, ids)
    dx, grads = model.backward(params, cache, jnp.ones_like(y))
    assert dx is None
    assert grads[0]["table"].shape == (10, 4)


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.int32, jnp.int64, jnp.uint8, jnp.uint32])
def test_any_integer_dtype_works(dtype):
    layer = embedding(200, 2)
    params = random_table(layer)
    ids = jnp.array([0, 7, 120], dtype)
    y, cache = layer.forward(params, ids)
    np.testing.assert_array_equal(y, params["table"][np.array([0, 7, 120])])
    _, grads = layer.backward(params, cache, jnp.ones((3, 2)))
    assert float(grads["table"].sum()) == 6.0


def test_jit_forward_and_backward():
    layer = embedding(8, 3)
    params = random_table(layer)
    ids = jnp.array([[1, 2, 3, 1], [7, 7, 0, 5]])
    y, cache = layer.forward(params, ids)
    y_j, cache_j = jax.jit(layer.forward)(params, ids)
    np.testing.assert_array_equal(y_j, y)
    dy = jnp.ones_like(y)
    np.testing.assert_array_equal(
        jax.jit(layer.backward)(params, cache_j, dy)[1]["table"],
        layer.backward(params, cache, dy)[1]["table"],
    )


@pytest.mark.parametrize("bad", [-1, 8, 100])
def test_out_of_range_ids_raise_eagerly(bad):
    layer = embedding(8, 3)
    params = random_table(layer)
    with pytest.raises(
        ValueError,
        match=rf"embedding: ids must lie in \[0, 8\) \(vocab=8\), got ids in \[{min(bad, 0)}, ",
    ):
        layer.forward(params, jnp.array([0, bad, 3]))


def test_out_of_range_ids_under_jit_give_nan_rows_and_no_gradient():
    """Under jit values cannot be checked: a bad id reads NaN (not a clamped or wrapped row)."""
    layer = embedding(4, 2)
    params = random_table(layer)
    ids = jnp.array([-1, 1, 4])
    y, cache = jax.jit(layer.forward)(params, ids)
    assert bool(jnp.all(jnp.isnan(y[0]))) and bool(jnp.all(jnp.isnan(y[2])))
    np.testing.assert_array_equal(y[1], params["table"][1])
    _, grads = jax.jit(layer.backward)(params, cache, jnp.ones((3, 2)))
    np.testing.assert_array_equal(grads["table"], [[0, 0], [1, 1], [0, 0], [0, 0]])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bool_])
def test_non_integer_ids_raise_type_error(dtype):
    layer = embedding(5, 2)
    params = random_table(layer)
    name = jnp.dtype(dtype).name
    with pytest.raises(
        TypeError, match=rf"embedding: ids must be an integer array, got dtype {name}"
    ):
        layer.forward(params, jnp.zeros((3,), dtype))


def test_factory_and_shape_errors():
    with pytest.raises(ValueError, match="embedding: vocab must be a positive int, got 0"):
        embedding(0, 3)
    with pytest.raises(
        TypeError, match=r"embedding: features must be a positive int, got float 2\.5"
    ):
        embedding(4, 2.5)
    with pytest.raises(ValueError, match=r"embedding: input_shape must have at least 1 axes"):
        embedding(4, 2).init(jax.random.PRNGKey(0), ())
    params, _ = embedding(5, 2).init(jax.random.PRNGKey(0), (3,))
    with pytest.raises(
        ValueError, match=r"embedding: params\['table'\] must have shape \(6, 2\).*got \(5, 2\)"
    ):
        embedding(6, 2).forward(params, jnp.array([0, 1, 2]))
    with pytest.raises(TypeError, match="embedding: ids must be an array"):
        embedding(5, 2).forward(params, [0, 1, 2])
