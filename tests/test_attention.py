"""Attention: numbers against plain formulas and PyTorch, the two memory modes, empty rows,
cache sizes, weight tying against jax.grad, and error messages.

The generic float64 parity with jax.vjp and finite differences runs on the cases in
tests/registry/attention.py; these tests check what those cannot: that the forward is
the function we mean, that both memory modes agree, and how much each one caches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn.combinators import Tied
from funcnn.layers.attention import (
    multi_head_attention,
    positional_embedding,
    scaled_dot_product_attention,
)
from funcnn.layers.embedding import embedding, unembedding
from tests.noise import device_normal


def _params(layer, input_shape, seed=0):
    """Random float64 params (biases included), a different draw for every leaf, and the
    output shape. ``init`` is only traced for its shapes (``fn.check.init_shapes``): its
    random initializers would compile a kernel per shape."""
    params, _, out_shape = fn.check.init_shapes(layer, jax.random.PRNGKey(0), input_shape)
    as_f64 = lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float64)  # noqa: E731
    params = jax.tree_util.tree_map(as_f64, params)
    return fn.check.random_params(jax.random.PRNGKey(seed), params)[0], out_shape


def _plain_attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(d) + M) v in NumPy, rows with nothing allowed at 0."""
    s = np.einsum("nhqd,nhkd->nhqk", q, k) / np.sqrt(q.shape[-1])
    s = np.where(allowed, s, -np.inf)
    m = s.max(-1, keepdims=True)
    e = np.where(allowed, np.exp(s - np.where(np.isfinite(m), m, 0.0)), 0.0)
    z = e.sum(-1, keepdims=True)
    p = np.where(z > 0, e / np.where(z > 0, z, 1.0), 0.0)
    return np.einsum("nhqk,nhkd->nhqd", p, v)


def _allowed(n, tq, tk, causal, mask):
    allowed = np.ones((n, 1, tq, tk), bool)
    if causal:
        allowed &= np.tril(np.ones((tq, tk), bool))[None, None]
    if mask is not None:
        allowed &= np.asarray(mask)[:, None, None, :]
    return allowed


MASK = np.array([[True, False, True, True, False, True, True], [False] * 7])


@pytest.mark.parametrize(
    ("causal", "masked", "tq"),
    [(True, True, 7), (False, True, 4), (True, False, 9)],
    ids=["causal_mask", "cross_mask", "causal_cross_longer_queries"],
)
def test_sdpa_forward_is_softmax_attention_in_both_modes(causal, masked, tq):
    q, k, v = (device_normal(i, (2, 3, t, d)) for i, t, d in ((0, tq, 4), (1, 7, 4), (2, 7, 5)))
    x = (q, k, v, MASK) if masked else (q, k, v)
    allowed = _allowed(2, tq, 7, causal, MASK if masked else None)
    expected = _plain_attention(*map(np.asarray, (q, k, v)), allowed)
    layers = {
        memory: scaled_dot_product_attention(causal, memory=memory, block_size=block)
        for memory, block in [("saved", 128), ("recompute", 3)]
    }
    # Both modes in one compiled program.
    outs = jax.jit(lambda x: {m: layer.forward((), x)[0] for m, layer in layers.items()})(x)
    for memory, o in outs.items():
        np.testing.assert_allclose(o, expected, rtol=1e-12, atol=1e-13, err_msg=memory)


def _grads(layer, params, x, dy):
    y, cache = layer.forward(params, x)
    return y, layer.backward(params, cache, dy)


@pytest.mark.parametrize(
    "form", ["self", "self_mask", "cross", "cross_mask"], ids=lambda f: f"input_{f}"
)
def test_saved_and_recompute_give_the_same_numbers(form):
    """Both modes agree to 1e-10 in float64 (output, dx, every param gradient), with
    block sizes that do not divide the lengths (4: two blocks of the 7 queries and of the
    5 keys, the last one short; 128: one block)."""
    x_q, x_kv = device_normal(0, (2, 7, 4)), device_normal(1, (2, 5, 6))
    mask_kv = np.array([[True, False, True, True, True], [False] * 5])
    mask_self = np.array([[False, True, True, False, True, True, True], [True] * 7])
    x = {
        "self": x_q,
        "self_mask": (x_q, mask_self),
        "cross": (x_q, x_kv),
        "cross_mask": (x_q, x_kv, mask_kv),
    }[form]
    causal = form != "cross"
    saved = multi_head_attention(2, causal=causal)
    params, out_shape = _params(saved, jax.tree_util.tree_map(np.shape, x))
    dy = device_normal(3, out_shape)
    recompute = [
        multi_head_attention(2, causal=causal, memory="recompute", block_size=block)
        for block in (4, 128)
    ]
    # The three layers' forward and backward in one compiled program.
    run = jax.jit(lambda p, x, dy: [_grads(layer, p, x, dy) for layer in (saved, *recompute)])
    reference, *results = run(params, x, dy)
    for got in results:
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(reference)
        for a, b in zip(
            jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(reference), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("memory", ["saved", "recompute"])
def test_rows_with_nothing_to_attend_give_zeros_not_nan(memory):
    # Batch element 1 masks every key; in element 0 key 0 is masked, so with the causal
    # rule its query 0 has nothing left to attend to.
    layer = multi_head_attention(2, causal=True, memory=memory, block_size=2)
    mask = np.array([[False, True, True, True, True], [False] * 5])
    x = device_normal(0, (2, 5, 4))
    params, out_shape = _params(layer, ((2, 5, 4), (2, 5)), 1)
    dy = device_normal(2, out_shape)
    core = scaled_dot_product_attention(True, memory=memory, block_size=2)
    q, k, v = (device_normal(seed, (2, 2, 5, 3)) for seed in (3, 4, 5))
    do = device_normal(6, (2, 2, 5, 3))

    @jax.jit  # the layer and the core alone, in one compiled program
    def run(params, x, mask, dy, q, k, v, do):
        y, cache = layer.forward(params, (x, mask))
        o, core_cache = core.forward((), (q, k, v, mask))
        return y, layer.backward(params, cache, dy), o, core.backward((), core_cache, do)

    y, ((dx, dmask), grads), o, ((dq, dk, dv, dm), _) = run(params, x, mask, dy, q, k, v, do)
    assert dmask is None
    for leaf in jax.tree_util.tree_leaves((y, dx, grads)):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    # The empty rows' output is the output bias alone.
    np.testing.assert_array_equal(y[1], jnp.broadcast_to(params["bo"], (5, 4)))
    np.testing.assert_array_equal(y[0, 0], params["bo"])
    # Element 1 feeds nothing through attention: its dx is zero (queries, keys, values).
    np.testing.assert_array_equal(dx[1], 0.0)

    # The core alone: the empty rows' queries and the masked keys get zero gradients.
    assert o.shape == do.shape
    assert dm is None
    np.testing.assert_array_equal(o[1], 0.0)
    np.testing.assert_array_equal(o[0, :, 0], 0.0)
    for g in (dq[1], dq[0, :, 0], dk[1], dv[1], dk[0, :, 0], dv[0, :, 0]):
        np.testing.assert_array_equal(g, 0.0)
    assert float(jnp.max(jnp.abs(dk[0, :, 1:]))) > 0  # the allowed keys do get gradients


def _cache_bytes(layer, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    params, _ = jax.eval_shape(lambda: layer.init(jax.random.PRNGKey(0), shape))
    cache = jax.eval_shape(layer.forward, params, x)[1]
    return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(cache))


def test_cache_is_linear_in_t_for_recompute_and_quadratic_for_saved():
    n, heads, d = 2, 4, 8
    lengths = (16, 32, 64)
    saved = [_cache_bytes(multi_head_attention(heads), (n, t, d)) for t in lengths]
    recompute = [
        _cache_bytes(multi_head_attention(heads, memory="recompute"), (n, t, d)) for t in lengths
    ]
    # recompute: x, q, k, v, o (d values per position each) and one log-sum-exp per head.
    for t, b in zip(lengths, recompute, strict=True):
        assert b == 4 * n * t * (5 * d + heads)
    # saved: x, q, k, v, o and the probabilities, heads * t * t per batch element.
    for t, b in zip(lengths, saved, strict=True):
        assert b == 4 * n * t * 5 * d + 4 * n * heads * t * t
    assert recompute[2] == 4 * recompute[0]  # linear: 4x the length, 4x the bytes
    assert saved[2] - 5 * 4 * n * 64 * d == 16 * (saved[0] - 5 * 4 * n * 16 * d)  # quadratic
    # The core alone: q, k, v, o and the log-sum-exp, against q, k, v and P.
    core_shapes = [(n, heads, 64, d)] * 3
    sdpa_saved = jax.eval_shape(
        scaled_dot_product_attention().forward,
        (),
        tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in core_shapes),
    )[1]
    assert sdpa_saved["p"].shape == (n, heads, 64, 64)


def test_matches_torch_multihead_attention():
    torch = pytest.importorskip("torch")
    n, t, d, heads = 2, 5, 6, 3
    layer = multi_head_attention(heads, causal=True)
    params, out_shape = _params(layer, ((n, t, d), (n, t)), 7)
    x = device_normal(8, (n, t, d))
    mask = np.array([[True, True, False, True, True], [True, False, True, True, False]])
    dy = device_normal(9, out_shape)
    y, ((dx, _), grads) = jax.jit(lambda p, x, dy: _grads(layer, p, x, dy))(params, (x, mask), dy)

    mha = torch.nn.MultiheadAttention(d, heads, batch_first=True, dtype=torch.float64)
    as_torch = lambda a: torch.from_numpy(np.asarray(a).copy())  # noqa: E731
    with torch.no_grad():
        mha.in_proj_weight.copy_(
            as_torch(np.concatenate([np.asarray(params[w]).T for w in ("wq", "wk", "wv")]))
        )
        mha.in_proj_bias.copy_(as_torch(np.concatenate([params[b] for b in ("bq", "bk", "bv")])))
        mha.out_proj.weight.copy_(as_torch(np.asarray(params["wo"]).T))
        mha.out_proj.bias.copy_(as_torch(params["bo"]))
    xt = as_torch(x).requires_grad_(True)
    causal = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)  # True = forbidden
    yt, _ = mha(xt, xt, xt, key_padding_mask=~as_torch(mask), attn_mask=causal, need_weights=False)
    yt.backward(as_torch(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    w_grad = mha.in_proj_weight.grad.numpy()
    np.testing.assert_allclose(grads["wq"], w_grad[:d].T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["wv"], w_grad[2 * d :].T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["wo"], mha.out_proj.weight.grad.numpy().T, rtol=1e-10)


def _init_shapes(layer, input_shape):
    """``init``'s params (their shapes) and output shape, traced: nothing compiled."""
    params, _, out = fn.check.init_shapes(layer, jax.random.PRNGKey(0), input_shape)
    return params, out


def test_init_shapes_and_defaults():
    layer = multi_head_attention(4)
    params, out = _init_shapes(layer, (2, 3, 8))
    assert out == (2, 3, 8)
    assert {k: v.shape for k, v in params.items()} == {
        "wq": (8, 8), "bq": (8,), "wk": (8, 8), "bk": (8,),
        "wv": (8, 8), "bv": (8,), "wo": (8, 8), "bo": (8,),
    }  # fmt: skip
    layer = multi_head_attention(2, head_dim=3, out_features=5, use_bias=False)
    params, out = _init_shapes(layer, ((2, 3, 8), (2, 4, 7)))
    assert out == (2, 3, 5)
    assert {k: v.shape for k, v in params.items()} == {
        "wq": (8, 6),
        "wk": (7, 6),
        "wv": (7, 6),
        "wo": (6, 5),
    }
    params, out = _init_shapes(positional_embedding(10), (2, 3, 8))
    assert params["table"].shape == (10, 8) and out == (2, 3, 8)


def test_positional_embedding_adds_rows_by_position():
    layer = positional_embedding(5)
    params, _ = _params(layer, (2, 3, 4))
    x, dy = device_normal(0, (2, 3, 4)), device_normal(1, (2, 3, 4))
    y, (dx, grads) = jax.jit(lambda p, x, dy: _grads(layer, p, x, dy))(params, x, dy)
    table = np.asarray(params["table"])
    np.testing.assert_array_equal(y, np.asarray(x) + table[None, :3])
    np.testing.assert_array_equal(dx, dy)
    np.testing.assert_allclose(grads["table"][:3], np.asarray(dy).sum(0))
    np.testing.assert_array_equal(grads["table"][3:], 0.0)


# --- weight tying ---------------------------------------------------------------------


def test_tied_gradient_is_the_sum_of_both_uses_as_jax_grad():
    model = fn.tied(fn.sequential(fn.dense(4), fn.tanh(), fn.dense(4)), ((0,), (2,)))
    params, _ = _params(model, (3, 4))  # float64, and a bias that is not zero
    assert params[2] == Tied((0,)) and set(params[0]) == {"w", "b"}
    x, dy = device_normal(1, (3, 4)), device_normal(2, (3, 4))

    def plain(p, x):  # one dense layer's params used twice
        return jnp.tanh(x @ p["w"] + p["b"][None]) @ p["w"] + p["b"][None]

    @jax.jit  # ours and the reference in one compiled program
    def run(params, x, dy):
        y_ref, vjp = jax.vjp(plain, params[0], x)
        return _grads(model, params, x, dy), y_ref, vjp(dy)

    (y, (dx, grads)), y_ref, (g_ref, dx_ref) = run(params, x, dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-13)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12)
    assert grads[2] == Tied((0,)) and grads[1] == ()
    for name in ("w", "b"):
        np.testing.assert_allclose(grads[0][name], g_ref[name], rtol=1e-12)


def test_tied_embedding_and_head_train_and_round_trip(tmp_path):
    model = fn.tied(fn.sequential(embedding(5, 3), unembedding(5)), ((0, "table"), (1, "table")))
    loss = fn.losses.softmax_cross_entropy()
    opt = fn.optim.adamw(0.1)
    ts = fn.train.init_train_state(model, opt, jax.random.PRNGKey(0), (4, 2))
    ids = jax.device_put(np.array([[0, 1], [2, 3], [4, 0], [1, 2]]))

    def plain_loss(table):
        logits = table[ids] @ table.T
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], -1))

    @jax.jit  # ours and the reference in one compiled program
    def both(params):
        ours = fn.train.value_and_grad(model, loss)(params, ids, ids)
        return ours, jax.value_and_grad(plain_loss)(params[0]["table"])

    (value, grads), (ref_value, ref_grad) = both(ts.params)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grads[0]["table"], ref_grad, rtol=1e-5, atol=1e-7)
    step = fn.train.train_step(model, loss, opt)  # compiled once for the 21 steps
    ts, first = step(ts, ids, ids)
    for _ in range(20):
        ts, last = step(ts, ids, ids)
    assert float(last) < float(first)
    assert ts.params[1] == {"table": Tied((0, "table"))}  # the optimizer kept the placeholder
    fn.io.save(tmp_path / "tied.npz", ts)
    back = fn.io.load(tmp_path / "tied.npz", like=ts)
    np.testing.assert_array_equal(back.params[0]["table"], ts.params[0]["table"])
    assert back.params[1] == {"table": Tied((0, "table"))}


def test_tied_inside_a_wide_model():
    model = fn.tied(fn.sequential(fn.dense(3), fn.dropout(0.5), fn.dense(3)), ((0, "w"), (2, "w")))
    assert model.wide
    # Traced for the structure only: check_grads draws its own random params.
    init = jax.eval_shape(lambda k: fn.init_layer(model, k, (4, 3))[:2], jax.random.PRNGKey(0))
    params, state = init
    assert state == ((), (), ()) and params[2]["w"] == Tied((0, "w"))
    fn.check.check_grads(model, params, device_normal(0, (4, 3)), state=state, fd_directions=1)


def test_tied_errors():
    net = fn.sequential(fn.dense(3), fn.dense(4))
    with pytest.raises(ValueError, match=r"tied: params\[1\]\['x'\] does not exist: .*keys"):
        fn.tied(net, ((0, "w"), (1, "x"))).init(jax.random.PRNGKey(0), (2, 3))
    with pytest.raises(ValueError, match=r"tied: params\[5\] does not exist"):
        fn.tied(net, ((0,), (5,))).init(jax.random.PRNGKey(0), (2, 3))
    with pytest.raises(ValueError, match=r"same structure, shapes and dtypes.*\(3, 3\).*\(3, 4\)"):
        fn.tied(net, ((0, "w"), (1, "w"))).init(jax.random.PRNGKey(0), (2, 3))
    with pytest.raises(ValueError, match="overlap"):
        fn.tied(net, ((0,), (0, "w")))
    with pytest.raises(ValueError, match="overlaps"):
        fn.tied(net, ((0, "w"), (1, "w")), ((1, "w"), (0, "b")))
    with pytest.raises(TypeError, match="tuple of dict keys and non-negative tuple indices"):
        fn.tied(net, ((0, 1.5), (1,)))
    with pytest.raises(TypeError, match="non-negative"):
        fn.tied(net, ((0,), (-1,)))
    with pytest.raises(ValueError, match="at least one"):
        fn.tied(net)
    with pytest.raises(TypeError, match=r"must be a Layer"):
        fn.tied("dense", ((0,), (1,)))
    model = fn.tied(fn.sequential(fn.dense(3), fn.dense(3)), ((0,), (1,)))
    params, _ = model.init(jax.random.PRNGKey(0), (2, 3))
    with pytest.raises(TypeError, match=r"tied: params\[1\] must hold the placeholder Tied"):
        model.forward((params[0], params[0]), jnp.ones((2, 3)))


# --- errors -----------------------------------------------------------------------------


def test_factory_errors():
    with pytest.raises(ValueError, match="multi_head_attention: num_heads must be a positive"):
        multi_head_attention(0)
    with pytest.raises(ValueError, match="memory must be 'saved' or 'recompute', got 'flash'"):
        multi_head_attention(2, memory="flash")
    with pytest.raises(TypeError, match="multi_head_attention: causal must be a bool"):
        multi_head_attention(2, causal="yes")
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        scaled_dot_product_attention(memory="recompute", block_size=0)
    with pytest.raises(ValueError, match="positional_embedding: max_len must be a positive"):
        positional_embedding(0)
    with pytest.raises(ValueError, match="unembedding: vocab must be a positive"):
        unembedding(0)


def test_init_errors():
    with pytest.raises(ValueError, match=r"D=6 is not divisible by num_heads=4; pass head_dim"):
        multi_head_attention(4).init(jax.random.PRNGKey(0), (2, 3, 6))
    with pytest.raises(ValueError, match=r"x_q must have 3 axes \(N, T, D\), got shape \(2, 6\)"):
        multi_head_attention(2).init(jax.random.PRNGKey(0), (2, 6))
    with pytest.raises(ValueError, match=r"kv_mask must have shape \(N, T_kv\) = \(2, 4\), got"):
        multi_head_attention(2).init(jax.random.PRNGKey(0), ((2, 3, 4), (2, 4, 4), (2, 3)))
    with pytest.raises(ValueError, match="same batch size"):
        multi_head_attention(2).init(jax.random.PRNGKey(0), ((2, 3, 4), (3, 4, 4)))
    with pytest.raises(
        ValueError, match=r"positional_embedding: the sequence length T=9 exceeds max_len=8"
    ):
        positional_embedding(8).init(jax.random.PRNGKey(0), (2, 9, 4))
    with pytest.raises(ValueError, match=r"q \(N, H, Tq, dh\), k .* must agree"):
        scaled_dot_product_attention().init(
            jax.random.PRNGKey(0), ((2, 3, 4, 5), (2, 3, 4, 6), (2, 3, 4, 5))
        )


def _ones(shape, dtype=jnp.float64):
    """An input of ``shape`` for jax.eval_shape (what jnp.ones would be, without a compile)."""
    return jax.ShapeDtypeStruct(shape, dtype)


def test_forward_errors():
    # Raised while tracing: jax.eval_shape runs the forward without compiling.
    layer = multi_head_attention(2)
    params, _ = _init_shapes(layer, ((2, 3, 4), (2, 5, 6)))
    x_q, x_kv = _ones((2, 3, 4)), _ones((2, 5, 6))
    with pytest.raises(ValueError, match=r"made for D=4, D_kv=6, got x_q of shape \(2, 3, 5\)"):
        jax.eval_shape(layer.forward, params, (_ones((2, 3, 5)), x_kv))
    with pytest.raises(TypeError, match=r"kv_mask must be a boolean array .* got dtype int32"):
        jax.eval_shape(layer.forward, params, (x_q, x_kv, _ones((2, 5), jnp.int32)))
    with pytest.raises(ValueError, match=r"kv_mask must have shape \(N, T_kv\) = \(2, 5\), got"):
        jax.eval_shape(layer.forward, params, (x_q, x_kv, _ones((2, 3), bool)))
    with pytest.raises(TypeError, match="x_q must be a floating-point array"):
        jax.eval_shape(layer.forward, params, (_ones((2, 3, 4), jnp.int32), x_kv))
    self_layer = multi_head_attention(2)
    self_params, _ = _init_shapes(self_layer, (2, 3, 4))
    with pytest.raises(ValueError, match=r"made for D=4, got x of shape \(2, 3, 8\)"):
        jax.eval_shape(self_layer.forward, self_params, _ones((2, 3, 8)))
    with pytest.raises(ValueError, match="expects x"):
        jax.eval_shape(self_layer.forward, self_params, (x_q, x_kv, _ones((2, 5), bool), x_q))
    pos = positional_embedding(4)
    pos_params, _ = _init_shapes(pos, (2, 3, 4))
    with pytest.raises(ValueError, match="T=5 exceeds max_len=4"):
        jax.eval_shape(pos.forward, pos_params, _ones((2, 5, 4)))
    with pytest.raises(ValueError, match=r"the table was made for D=4, got input of shape"):
        jax.eval_shape(pos.forward, pos_params, _ones((2, 3, 5)))
    core = scaled_dot_product_attention()
    with pytest.raises(ValueError, match=r"expects a tuple \(q, k, v\)"):
        jax.eval_shape(core.forward, (), _ones((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="q must have 4 axes"):
        jax.eval_shape(core.forward, (), (_ones((3, 4, 5)),) * 3)


def test_backward_errors():
    # Raised while tracing: jax.eval_shape runs forward and backward without compiling.
    layer = multi_head_attention(2, memory="recompute")
    params, _ = _init_shapes(layer, (2, 3, 4))
    cache = jax.eval_shape(layer.forward, params, _ones((2, 3, 4)))[1]
    with pytest.raises(
        ValueError, match=r"multi_head_attention: dy must have the shape .* \(2, 3, 4\)"
    ):
        jax.eval_shape(layer.backward, params, cache, _ones((1, 3, 4)))  # broadcasts
    with pytest.raises(ValueError, match="multi_head_attention: dy must be floating point"):
        jax.eval_shape(layer.backward, params, cache, _ones((2, 3, 4), jnp.int32))
    core = scaled_dot_product_attention()
    core_cache = jax.eval_shape(core.forward, (), (_ones((1, 2, 3, 4)),) * 3)[1]
    with pytest.raises(ValueError, match=r"scaled_dot_product_attention: dy must have the"):
        jax.eval_shape(core.backward, (), core_cache, _ones((1, 2, 3, 5)))
    pos = positional_embedding(4)
    pos_params, _ = _init_shapes(pos, (2, 3, 4))
    pos_cache = jax.eval_shape(pos.forward, pos_params, _ones((2, 3, 4)))[1]
    with pytest.raises(ValueError, match=r"positional_embedding: dy must have the shape of this"):
        jax.eval_shape(pos.backward, pos_params, pos_cache, _ones((2, 4, 4)))
    head = unembedding(5)
    head_params, _ = _init_shapes(head, (2, 4))
    head_cache = jax.eval_shape(head.forward, head_params, _ones((2, 4)))[1]
    with pytest.raises(ValueError, match=r"unembedding: dy must have the shape .* \(2, 5\)"):
        jax.eval_shape(head.backward, head_params, head_cache, _ones((2, 4)))
