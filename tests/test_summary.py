"""summary: one row per layer at every depth, and cache bytes equal to the real cache's."""

import jax
import jax.numpy as jnp

import funcnn as fn


def _nbytes(tree):
    return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


def _model():
    return fn.sequential(
        fn.dense(8),
        fn.residual(fn.sequential(fn.dense(8), fn.gelu())),
        fn.dropout(0.25),
        fn.batchnorm(),
        fn.graph(
            {
                "proj": (fn.dense(3), "input"),
                "act": (fn.tanh(), "proj"),
                "out": (fn.fan_in_sum(), ("proj", "act")),
            },
            output="out",
        ),
    )


def test_cache_bytes_equal_the_real_caches_at_every_depth():
    model = _model()
    report = fn.summary(model, (16, 5), train=True)
    params, state, _ = fn.init_layer(model, jax.random.PRNGKey(0), (16, 5))
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 5), jnp.float32)
    ctx = fn.Ctx(key=jax.random.PRNGKey(2), train=True)
    _, cache, _ = fn.apply_layer(model, params, x, state, ctx)
    rows = {r.path: r for r in report.rows}
    assert report.cache_bytes == rows[""].cache_bytes == _nbytes(cache)
    for i in range(5):  # the sequential's cache is a tuple with one entry per child
        assert rows[str(i)].cache_bytes == _nbytes(cache[i]), i
    graph_cache = cache[4]
    for node in ("proj", "act", "out"):
        assert rows[f"4.{node}"].cache_bytes == _nbytes(graph_cache[node]), node
    assert report.params == sum(a.size for a in jax.tree_util.tree_leaves(params))
    assert report.state_values == 16  # batchnorm's mean and var over 8 features


def test_rows_name_the_right_layer_with_its_output_shape_at_every_depth():
    report = fn.summary(_model(), (16, 5))
    got = [(r.path, r.depth, r.name, r.output_shape) for r in report.rows]
    assert got[0] == ("", 0, "sequential", (16, 3))
    # residual(f) holds f itself at "1.0": no fan-out/parallel plumbing rows in between
    assert ("1.0.0", 3, "dense", (16, 8)) in got
    assert ("1.0.1", 3, "gelu", (16, 8)) in got
    assert ("4.proj", 2, "dense", (16, 3)) in got  # graph nodes pair with their own layers
    assert ("4.act", 2, "tanh", (16, 3)) in got
    assert ("4.out", 2, "fan_in_sum", (16, 3)) in got
    text = str(report)
    assert "      1.0.0 dense" in text  # indented by depth
    assert "jax.vjp residuals of the same forward" in text


def test_vjp_residuals_are_reported_and_remat_shrinks_the_cache():
    deep = fn.sequential(*[fn.sequential(fn.dense(32), fn.tanh()) for _ in range(4)])
    plain = fn.summary(deep, (8, 32))
    recompute = fn.summary(fn.remat(deep), (8, 32))
    assert plain.vjp_residual_bytes > 0
    assert recompute.cache_bytes == 8 * 32 * 4  # only the float32 input
    assert recompute.cache_bytes * 4 < plain.cache_bytes


def test_integer_inputs():
    report = fn.summary(fn.sequential(fn.embedding(10, 4), fn.dense(2)), (3, 5), dtype=jnp.int32)
    assert report.rows[0].output_shape == (3, 5, 2)
    assert report.params == 10 * 4 + 4 * 2 + 2
