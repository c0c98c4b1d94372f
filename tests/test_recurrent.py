"""Recurrent layers: PyTorch parity, cells against sequences, masks, carries, reverse,
truncated BPTT, bidirectional, cache contents, initializers and error messages.

The generic float64 checks (jax.vjp, finite differences, jit) run on the registry cases in
tests/registry/recurrent.py; this file checks the numbers users port and rely on.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn.check import init_shapes, random_params
from tests.noise import normal

N, T, F, H = 2, 4, 3, 5
KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def _factory(kind, cell=False):
    base = {"rnn_tanh": "rnn", "rnn_relu": "rnn"}.get(kind, kind)
    make = getattr(fn, base + ("_cell" if cell else ""))
    if base == "rnn":
        return lambda *a, **k: make(*a, nonlinearity=kind.removeprefix("rnn_"), **k)
    return make


def _has_c(kind):
    return kind == "lstm"


def _noisy_params(layer, input_shape, seed=0):
    """float64 params at random values (biases included): ``funcnn.check.random_params``
    of init's shapes (traced, not compiled; drawn by NumPy)."""
    shapes, _, _ = init_shapes(layer, jax.random.PRNGKey(seed), input_shape)
    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float64), shapes)
    return random_params(jax.random.PRNGKey(seed + 1), shapes)[0]


def _carry(kind, seed, n=N):
    if _has_c(kind):
        return normal(seed, (n, H)), normal(seed + 1, (n, H))
    return normal(seed, (n, H))


def _carry_shape(kind, n=N):
    return ((n, H), (n, H)) if _has_c(kind) else (n, H)


def _close(a, b, tol=1e-10):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


# --- PyTorch parity --------------------------------------------------------------------


def _torch_module(torch, kind, params, bidirectional=False):
    """A batch-first float64 torch.nn.RNN/LSTM/GRU holding our params (DESIGN.md mapping)."""
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(kind, torch.nn.RNN)
    extra = {"nonlinearity": kind.removeprefix("rnn_")} if kind.startswith("rnn") else {}
    module = cls(F, H, batch_first=True, bidirectional=bidirectional, dtype=torch.float64, **extra)
    directions = [("", params)] if not bidirectional else [("", params[0]), ("_reverse", params[1])]
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for suffix, p in directions:
            w_x, w_h, b = (np.asarray(p[k]) for k in ("w_x", "w_h", "b"))
            getattr(module, f"weight_ih_l0{suffix}").copy_(torch.tensor(w_x.T.copy()))
            getattr(module, f"weight_hh_l0{suffix}").copy_(torch.tensor(w_h.T.copy()))
            if kind == "gru":  # bias_ih = b, bias_hh = [0, 0, b_hn]
                b_ih = b
                b_hh = np.concatenate([np.zeros(2 * H), np.asarray(p["b_hn"])])
            else:  # any split with bias_ih + bias_hh = b
                b_hh = rng.normal(size=b.shape)
                b_ih = b - b_hh
            getattr(module, f"bias_ih_l0{suffix}").copy_(torch.tensor(b_ih))
            getattr(module, f"bias_hh_l0{suffix}").copy_(torch.tensor(b_hh))
    return module


def _torch_grads(module, kind, suffix=""):
    g = {
        "w_x": getattr(module, f"weight_ih_l0{suffix}").grad.numpy().T,
        "w_h": getattr(module, f"weight_hh_l0{suffix}").grad.numpy().T,
        "b": getattr(module, f"bias_ih_l0{suffix}").grad.numpy(),
    }
    b_hh = getattr(module, f"bias_hh_l0{suffix}").grad.numpy()
    if kind == "gru":
        g["b_hn"] = b_hh[2 * H :]
        np.testing.assert_allclose(b_hh[: 2 * H], g["b"][: 2 * H], rtol=1e-10, atol=1e-12)
    else:  # the two biases are one parameter: equal gradients
        np.testing.assert_allclose(b_hh, g["b"], rtol=1e-10, atol=1e-12)
    return g


@pytest.mark.parametrize("kind", KINDS)
def test_matches_torch_outputs_and_every_gradient(kind):
    torch = pytest.importorskip("torch")
    layer = _factory(kind)(H, initial_carry=True, return_carry=True, dtype=jnp.float64)
    params = _noisy_params(layer, ((N, T, F), _carry_shape(kind)))
    x, carry0 = normal(10, (N, T, F)), _carry(kind, 11)
    dy, dcarry = normal(20, (N, T, H)), _carry(kind, 21)

    (y, carry), cache = layer.forward(params, (x, carry0))
    (dx, dcarry0), grads = layer.backward(params, cache, (dy, dcarry))

    module = _torch_module(torch, kind, params)

    def t(a):
        return torch.tensor(np.asarray(a), requires_grad=True)

    xt = t(x)
    if _has_c(kind):
        h0t, c0t = t(carry0[0][None]), t(carry0[1][None])
        out, (h_n, c_n) = module(xt, (h0t, c0t))
        ours_carry = (h_n[0], c_n[0])
    else:
        h0t = t(carry0[None])
        out, h_n = module(xt, h0t)
        ours_carry = h_n[0]
    loss = (out * torch.tensor(np.asarray(dy))).sum()
    for a, b in zip(
        jax.tree_util.tree_leaves(ours_carry), jax.tree_util.tree_leaves(dcarry), strict=True
    ):
        loss = loss + (a * torch.tensor(np.asarray(b))).sum()
    loss.backward()

    _close(y, out.detach().numpy())
    _close(carry, jax.tree_util.tree_map(lambda a: a.detach().numpy(), ours_carry))
    _close(dx, xt.grad.numpy())
    _close(dcarry0, (h0t.grad[0].numpy(), c0t.grad[0].numpy()) if _has_c(kind) else h0t.grad[0])
    _close(grads, _torch_grads(module, kind))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bidirectional_with_padding_matches_torch_packed_sequences(kind):
    torch = pytest.importorskip("torch")
    rnn_utils = torch.nn.utils.rnn
    lengths = [T, 2, 3]
    n = len(lengths)
    mask = jnp.arange(T)[None, :] < jnp.array(lengths)[:, None]
    layer = fn.bidirectional(_factory(kind)(H, return_carry=True, dtype=jnp.float64))
    params = _noisy_params(layer, ((n, T, F), (n, T)))
    x = normal(30, (n, T, F))
    dy = normal(31, (n, T, 2 * H))
    dh = (normal(32, (n, H)), normal(33, (n, H)))

    (y, carries), cache = layer.forward(params, (x, mask))
    dcarries = tuple((d, jnp.zeros((n, H))) if _has_c(kind) else d for d in dh)
    (dx, dmask), grads = layer.backward(params, cache, (dy, dcarries))
    assert dmask is None

    module = _torch_module(torch, kind, params, bidirectional=True)
    xt = torch.tensor(np.asarray(x), requires_grad=True)
    packed = rnn_utils.pack_padded_sequence(xt, lengths, batch_first=True, enforce_sorted=False)
    out_packed, state = module(packed)
    h_n = state[0] if _has_c(kind) else state
    out, _ = rnn_utils.pad_packed_sequence(out_packed, batch_first=True, total_length=T)
    loss = (out * torch.tensor(np.asarray(dy))).sum()
    loss = loss + sum((h_n[i] * torch.tensor(np.asarray(dh[i]))).sum() for i in range(2))
    loss.backward()

    _close(y, out.detach().numpy())
    ours_h = [c[0] if _has_c(kind) else c for c in carries]
    _close(ours_h, [h_n[0].detach().numpy(), h_n[1].detach().numpy()])
    _close(dx, xt.grad.numpy())
    assert np.all(np.asarray(dx)[~np.asarray(mask)] == 0)
    _close(grads[0], _torch_grads(module, kind))
    _close(grads[1], _torch_grads(module, kind, "_reverse"))


# --- the cells share the sequence layers' math -------------------------------------------


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_cells_unrolled_by_hand_equal_the_sequence_layer(kind):
    seq = _factory(kind)(H, initial_carry=True, return_carry=True, dtype=jnp.float64)
    cell = _factory(kind, cell=True)(H, dtype=jnp.float64)
    params = _noisy_params(seq, ((N, T, F), _carry_shape(kind)))
    x, carry0 = normal(40, (N, T, F)), _carry(kind, 41)
    dy, dcarry = normal(42, (N, T, H)), _carry(kind, 43)

    (y, carry), cache = seq.forward(params, (x, carry0))
    (dx, dcarry0), grads = seq.backward(params, cache, (dy, dcarry))

    # Forward step by step, then BPTT by hand: each cell's backward in reverse order.
    caches, hs, c = [], [], carry0
    for t in range(T):
        (h_t, c), cache_t = cell.forward(params, (x[:, t], c))
        hs.append(h_t)
        caches.append(cache_t)
    _close(y, jnp.stack(hs, axis=1), 1e-13)
    _close(carry, c, 1e-13)
    d, total, dxs = dcarry, None, [None] * T
    for t in reversed(range(T)):
        (dxs[t], d), g = cell.backward(params, caches[t], (dy[:, t], d))
        total = g if total is None else jax.tree_util.tree_map(jnp.add, total, g)
    _close(dx, jnp.stack(dxs, axis=1))
    _close(dcarry0, d)
    _close(grads, total)


# --- masks -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rnn_relu", "lstm"])
def test_mask_skips_steps_exactly_like_the_compacted_sequence(kind):
    # Rows 0 and 1 have 3 real steps (row 0 with a hole); row 2 has none.
    mask = jnp.array([[1, 0, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
    real = [[0, 2, 3], [0, 1, 2]]
    n = 3
    layer = _factory(kind)(H, initial_carry=True, return_carry=True, dtype=jnp.float64)
    params = _noisy_params(layer, ((n, T, F), (n, T), _carry_shape(kind, n)))
    x, carry0 = normal(50, (n, T, F)), _carry(kind, 51, n)
    x[~np.asarray(mask)] = np.nan  # padding is never read
    dy, dcarry = normal(52, (n, T, H)), _carry(kind, 53, n)

    (y, carry), cache = layer.forward(params, (x, mask, carry0))
    (dx, dmask, dcarry0), grads = layer.backward(params, cache, (dy, dcarry))
    assert dmask is None
    assert np.all(np.asarray(y)[~np.asarray(mask)] == 0)
    assert np.all(np.asarray(dx)[~np.asarray(mask)] == 0)  # exactly zero, NaN padding or not

    # The same two rows with their real steps only, no mask.
    rows = jnp.array([0, 1])
    take = jnp.array(real)
    x_c = x[rows[:, None], take]
    sub = jax.tree_util.tree_map(lambda a: a[:2], carry0)
    (y_c, carry_c), cache_c = layer.forward(params, (x_c, sub))
    dsub = jax.tree_util.tree_map(lambda a: a[:2], dcarry)
    (dx_c, dsub0), grads_c = layer.backward(params, cache_c, (dy[rows[:, None], take], dsub))

    _close(y[rows[:, None], take], y_c)
    _close(jax.tree_util.tree_map(lambda a: a[:2], carry), carry_c)
    _close(dx[rows[:, None], take], dx_c)
    _close(jax.tree_util.tree_map(lambda a: a[:2], dcarry0), dsub0)
    _close(grads, grads_c)  # row 2 has no real step: it adds nothing to the params
    # A row without a real step returns its initial carry, and its cotangent passes through.
    _close(
        jax.tree_util.tree_map(lambda a: a[2], carry),
        jax.tree_util.tree_map(lambda a: a[2], carry0),
        0,
    )
    _close(
        jax.tree_util.tree_map(lambda a: a[2], dcarry0),
        jax.tree_util.tree_map(lambda a: a[2], dcarry),
        0,
    )


# --- reverse, last step, truncated BPTT, unroll -------------------------------------------


def test_reverse_equals_the_flipped_sequence_with_mask():
    mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
    fwd = fn.gru(H, dtype=jnp.float64)
    rev = fn.gru(H, reverse=True, dtype=jnp.float64)
    params = _noisy_params(fwd, ((N, T, F), (N, T)))
    x, dy = normal(60, (N, T, F)), normal(61, (N, T, H))
    y, cache = rev.forward(params, (x, mask))
    (dx, _), grads = rev.backward(params, cache, dy)
    y_f, cache_f = fwd.forward(params, (x[:, ::-1], mask[:, ::-1]))
    (dx_f, _), grads_f = fwd.backward(params, cache_f, dy[:, ::-1])
    _close(y, y_f[:, ::-1], 1e-13)
    _close(dx, dx_f[:, ::-1])
    _close(grads, grads_f)


def test_last_step_output_is_the_final_carry():
    # return_sequences=False gives the carry's h after the last step processed: for
    # reverse=True that is the state at position 0 (PyTorch's reverse-direction h_n).
    x = normal(62, (N, T, F))
    for reverse, position in ((False, -1), (True, 0)):
        seq = fn.lstm(H, reverse=reverse, dtype=jnp.float64)
        last = fn.lstm(H, reverse=reverse, return_sequences=False, dtype=jnp.float64)
        params = _noisy_params(seq, (N, T, F))
        _close(last.forward(params, x)[0], seq.forward(params, x)[0][:, position], 0)


def test_truncated_bptt_over_chunks_equals_one_pass():
    layer = fn.lstm(H, initial_carry=True, return_carry=True, dtype=jnp.float64)
    # The chunks run with two steps per loop iteration: unrolling changes no number.
    chunked = fn.lstm(H, initial_carry=True, return_carry=True, unroll=2, dtype=jnp.float64)
    params = _noisy_params(layer, ((N, T, F), _carry_shape("lstm")))
    x, carry0 = normal(70, (N, T, F)), _carry("lstm", 71)
    dy, dcarry = normal(72, (N, T, H)), _carry("lstm", 73)
    (y, carry), cache = layer.forward(params, (x, carry0))
    (dx, dcarry0), grads = layer.backward(params, cache, (dy, dcarry))

    # Two chunks of 2 steps: the carry goes forward, its cotangent comes back.
    (y1, c1), cache1 = chunked.forward(params, (x[:, :2], carry0))
    (y2, c2), cache2 = chunked.forward(params, (x[:, 2:], c1))
    (dx2, dc1), g2 = chunked.backward(params, cache2, (dy[:, 2:], dcarry))
    (dx1, dc0), g1 = chunked.backward(params, cache1, (dy[:, :2], dc1))
    _close(y, jnp.concatenate([y1, y2], axis=1), 1e-13)
    _close(carry, c2, 1e-13)
    _close(dx, jnp.concatenate([dx1, dx2], axis=1))
    _close(dcarry0, dc0)
    _close(grads, jax.tree_util.tree_map(jnp.add, g1, g2))


# --- bidirectional -----------------------------------------------------------------------


def test_bidirectional_runs_a_reversed_copy_and_merges():
    x = normal(80, (N, T, F))
    both = fn.bidirectional(fn.gru(H, dtype=jnp.float64))
    params = _noisy_params(both, (N, T, F))
    assert not np.allclose(params[0]["w_x"], params[1]["w_x"])  # two sets of params
    fwd = fn.gru(H, dtype=jnp.float64)
    rev = fn.gru(H, reverse=True, dtype=jnp.float64)
    y_f, y_b = fwd.forward(params[0], x)[0], rev.forward(params[1], x)[0]
    _close(both.forward(params, x)[0], jnp.concatenate([y_f, y_b], -1), 0)
    # A backward layer built with reverse=False runs reversed all the same.
    summed = fn.bidirectional(fn.gru(H, dtype=jnp.float64), fn.gru(H), merge="sum")
    _close(summed.forward(params, x)[0], y_f + y_b, 0)
    last = fn.bidirectional(fn.gru(H, return_sequences=False, dtype=jnp.float64))
    _close(last.forward(params, x)[0], jnp.concatenate([y_f[:, -1], y_b[:, 0]], -1), 0)


# --- cache and initializers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "per_step"), [("rnn_tanh", F + H), ("lstm", F + 6 * H), ("gru", F + 5 * H)]
)
def test_cache_holds_the_documented_numbers_per_step(kind, per_step):
    layer = _factory(kind)(H)
    params, _ = layer.init(jax.random.PRNGKey(0), (N, T, F))
    cache = jax.eval_shape(layer.forward, params, jnp.zeros((N, T, F), jnp.float32))[1]
    assert sum(a.size for a in jax.tree_util.tree_leaves(cache)) == N * T * per_step


def test_initializers():
    p, _ = fn.lstm(H).init(jax.random.PRNGKey(0), (N, T, F))
    blocks = [p["w_h"][:, H * g : H * (g + 1)] for g in range(4)]
    for block in blocks:  # each gate's recurrent block is orthogonal, and they differ
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
    assert not np.allclose(blocks[0], blocks[1])
    expected_b = np.zeros(4 * H)
    expected_b[H : 2 * H] = 1.0  # forget-gate bias 1
    np.testing.assert_array_equal(p["b"], expected_b)
    assert float(jnp.max(jnp.abs(p["w_x"]))) <= np.sqrt(6 / (F + 4 * H))  # Glorot uniform
    p0, _ = fn.lstm(H, forget_bias=0.0).init(jax.random.PRNGKey(0), (N, T, F))
    assert not np.any(p0["b"])
    pg, _ = fn.gru(H).init(jax.random.PRNGKey(0), (N, T, F))
    assert set(pg) == {"w_x", "w_h", "b", "b_hn"} and not np.any(pg["b_hn"])
    pu, _ = fn.rnn(H, w_h_init=fn.initializers.ones()).init(jax.random.PRNGKey(0), (N, T, F))
    np.testing.assert_array_equal(pu["w_h"], np.ones((H, H)))


# --- errors ------------------------------------------------------------------------------

X = jnp.zeros((N, T, F))
MASK = jnp.ones((N, T), bool)
LSTM_CARRY = (jnp.zeros((N, H)), jnp.zeros((N, H)))


def _params(layer, shape):
    return layer.init(jax.random.PRNGKey(0), shape)[0]


@pytest.mark.parametrize(
    ("make", "shape", "inputs", "error", "match"),
    [
        (
            lambda: fn.lstm(H),
            (N, T, F),
            jnp.zeros((N, F)),
            ValueError,
            r"^lstm: x must have 3 axes \(N, T, F\), got shape \(2, 3\) \(2 axes\); for one "
            r"step at a time use lstm_cell",
        ),
        (
            lambda: fn.lstm(H),
            (N, T, F),
            jnp.zeros((N, T, F + 1)),
            ValueError,
            r"^lstm: x has 4 features \(last axis\) but the params were made for 3: x of shape "
            r"\(2, 4, 4\), params\['w_x'\] of shape \(3, 20\)",
        ),
        (
            lambda: fn.gru(H),
            (N, T, F),
            jnp.zeros((N, T, F), jnp.int32),
            TypeError,
            r"^gru: x must be a floating-point array, got dtype int32",
        ),
        (
            lambda: fn.lstm(H),
            ((N, T, F), (N, T)),
            (X, jnp.ones((N, T + 1), bool)),
            ValueError,
            r"^lstm: mask must have shape \(N, T\) = \(2, 4\) like x's first two axes, got "
            r"shape \(2, 5\)",
        ),
        (
            lambda: fn.rnn(H),
            ((N, T, F), (N, T)),
            (X, jnp.ones((N, T))),
            TypeError,
            r"^rnn: mask must be a boolean array \(True = a real step\), got dtype float64",
        ),
        (
            lambda: fn.lstm(H, initial_carry=True),
            ((N, T, F), ((N, H), (N, H))),
            (X, (jnp.zeros((N, H)), jnp.zeros((N, H + 1)))),
            ValueError,
            r"^lstm: carry0 c must have shape \(2, 5\) \(N, H\) = \(2, 5\), got shape \(2, 6\)",
        ),
        (
            lambda: fn.lstm(H, initial_carry=True),
            ((N, T, F), ((N, H), (N, H))),
            (X, jnp.zeros((N, H))),
            TypeError,
            r"^lstm: carry0 must be a tuple \(h, c\) of two arrays of shape \(2, 5\)",
        ),
        (
            lambda: fn.gru(H, initial_carry=True),
            ((N, T, F), (N, H)),
            (X, MASK, jnp.zeros((1, H))),
            ValueError,
            r"^gru: carry0 must have shape \(2, 5\) \(N, H\) = \(2, 5\), got shape \(1, 5\)",
        ),
        (
            lambda: fn.gru(H, initial_carry=True),
            ((N, T, F), (N, H)),
            X,
            TypeError,
            r"^gru: initial_carry=True, so the input must be \(x, carry0\) or "
            r"\(x, mask, carry0\), got array of shape \(2, 4, 3\)",
        ),
        (
            lambda: fn.lstm_cell(H),
            ((N, F), ((N, H), (N, H))),
            (X, LSTM_CARRY),
            ValueError,
            r"^lstm_cell: x must have 2 axes \(N, F\), got shape \(2, 4, 3\) \(3 axes\); for "
            r"whole sequences \(N, T, F\) use lstm",
        ),
        (
            lambda: fn.gru_cell(H),
            ((N, F), (N, H)),
            (jnp.zeros((N, F)), jnp.zeros((N, H - 1))),
            ValueError,
            r"^gru_cell: carry must have shape \(2, 5\)",
        ),
        (
            lambda: fn.bidirectional(fn.lstm(H)),
            (N, T, F),
            (X, jnp.ones((N, 2), bool)),
            ValueError,
            r"^bidirectional\[forward\] \(lstm\): lstm: mask must have shape \(N, T\)",
        ),
    ],
)
def test_forward_errors_name_the_layer_and_both_shapes(make, shape, inputs, error, match):
    layer = make()
    with pytest.raises(error, match=match):
        layer.forward(_params(layer, shape), inputs)


def test_params_of_another_layer_are_refused():
    with pytest.raises(
        TypeError,
        match=r"^lstm: params must be a dict with keys \['b', 'w_h', 'w_x'\], got a dict with "
        r"keys \['b', 'b_hn', 'w_h', 'w_x'\]",
    ):
        fn.lstm(H).forward(_params(fn.gru(H), (N, T, F)), X)


@pytest.fixture(scope="module")
def lstm_run():
    layer = fn.lstm(H, return_carry=True)
    params = _params(layer, (N, T, F))
    return layer, params, layer.forward(params, X)[1]


@pytest.mark.parametrize(
    ("dy", "error", "match"),
    [
        (
            (jnp.zeros((N, T, H + 1)), LSTM_CARRY),
            ValueError,
            r"^lstm: dy must have shape \(2, 4, 5\) \(the forward output's\), got shape "
            r"\(2, 4, 6\)",
        ),
        (
            jnp.zeros((N, T, H)),
            ValueError,
            r"^lstm: return_carry=True, so dy must be a tuple \(dy, dcarry\) like the output, "
            r"got array of shape \(2, 4, 5\)",
        ),
        (
            (jnp.zeros((N, T, H)), (jnp.zeros((N, H)), jnp.zeros((N + 1, H)))),
            ValueError,
            r"^lstm: dcarry c must have shape \(2, 5\) \(the forward output's\), got shape "
            r"\(3, 5\)",
        ),
        (
            (jnp.zeros((N, T, H)), jnp.zeros((N, H))),
            ValueError,
            r"^lstm: the carry's cotangent must be a tuple \(dh, dc\)",
        ),
        (
            (jnp.zeros((N, T, H), jnp.int32), LSTM_CARRY),
            ValueError,
            r"^lstm: dy must be a floating-point array, got dtype int32",
        ),
    ],
)
def test_backward_errors_for_a_wrong_cotangent(lstm_run, dy, error, match):
    layer, params, cache = lstm_run
    with pytest.raises(error, match=match):
        layer.backward(params, cache, dy)


def test_cell_and_bidirectional_backward_errors():
    cell = fn.gru_cell(H)
    params = _params(cell, ((N, F), (N, H)))
    _, cache = cell.forward(params, (jnp.zeros((N, F)), jnp.zeros((N, H))))
    with pytest.raises(ValueError, match=r"^gru_cell: dy must be a tuple \(dh_t, dcarry\)"):
        cell.backward(params, cache, jnp.zeros((N, H)))
    with pytest.raises(ValueError, match=r"^gru_cell: dcarry must have shape \(2, 5\)"):
        cell.backward(params, cache, (jnp.zeros((N, H)), jnp.zeros((N, H + 1))))
    both = fn.bidirectional(fn.rnn(H, return_sequences=False))
    params = _params(both, (N, T, F))
    _, cache = both.forward(params, X)
    with pytest.raises(ValueError, match=r"^bidirectional: dy must have 10 features \(last "
                       r"axis: 5 forward \+ 5 backward\), got shape \(2, 5\)"):  # fmt: skip
        both.backward(params, cache, jnp.zeros((N, H)))


@pytest.mark.parametrize(
    ("make", "shape", "match"),
    [
        (
            lambda: fn.lstm(H),
            (N, F),
            r"^lstm: the input shape of x must be \(N, T, F\), got \(2, 3\)",
        ),
        (
            lambda: fn.gru(H),
            ((N, T, F), (N, T + 1)),
            r"^gru: the mask's shape must be \(N, T\) = \(2, 4\), got \(2, 5\)",
        ),
        (
            lambda: fn.lstm(H, initial_carry=True),
            ((N, T, F), (N, H)),
            r"^lstm: the carry's shape must be \(\(2, 5\), \(2, 5\)\) \(N, H\), got \(2, 5\)",
        ),
        (
            lambda: fn.rnn(H, initial_carry=True),
            (N, T, F),
            r"^rnn: initial_carry=True, so input_shape must be \(x_shape, carry_shape\)",
        ),
        (
            lambda: fn.rnn_cell(H),
            (N, F),
            r"^rnn_cell: input_shape must be \(x_shape, carry_shape\)",
        ),
    ],
)
def test_init_errors(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make().init(jax.random.PRNGKey(0), shape)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: fn.lstm(0), ValueError, r"^lstm: hidden must be a positive int, got 0"),
        (lambda: fn.rnn(4, "sigmoid"), ValueError, r"^rnn: nonlinearity must be 'tanh' or 'relu'"),
        (lambda: fn.gru(4, reverse=1), TypeError, r"^gru: reverse must be True or False, got 1"),
        (
            lambda: fn.bidirectional(fn.dense(3)),
            TypeError,
            r"^bidirectional: forward_layer must be an rnn, lstm or gru",
        ),
        (
            lambda: fn.bidirectional(fn.lstm(4, reverse=True)),
            ValueError,
            r"^bidirectional: forward_layer must run left to right",
        ),
        (
            lambda: fn.bidirectional(fn.lstm(4), merge="mean"),
            ValueError,
            r"^bidirectional: merge must be 'concat' or 'sum', got 'mean'",
        ),
        (
            lambda: fn.bidirectional(fn.lstm(4), fn.lstm(5), merge="sum"),
            ValueError,
            r"^bidirectional: merge='sum' needs equal hidden sizes, got 4 \(forward\) and 5",
        ),
        (
            lambda: fn.bidirectional(fn.lstm(4), fn.lstm(4, return_sequences=False)),
            ValueError,
            r"^bidirectional: both layers must have the same return_sequences, got True for "
            r"the forward layer and False",
        ),
    ],
)
def test_factory_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()
