"""Attention: ``scaled_dot_product_attention``, ``multi_head_attention`` and
``positional_embedding``, each with a hand-written backward.

The core is, per batch element and head, with ``scale = 1 / sqrt(dh)``::

    S = scale * Q K^T + M        (Tq, Tk), M = -inf where attending is forbidden
    P = softmax(S)               row by row (over the keys)
    O = P V                      (Tq, dv)

Backward, with ``dO`` given (derived in ``docs/layers/attention.md``)::

    dV = P^T dO
    dP = dO V^T
    dS = P * (dP - delta),       delta_i = rowsum(dP * P)_i = rowsum(dO * O)_i
    dQ = scale * dS K,           dK = scale * dS^T Q

Two memory modes compute the same numbers:

* ``memory="saved"`` caches ``P``: ``Tq * Tk`` values per head, quadratic in the length.
* ``memory="recompute"`` caches ``Q, K, V, O`` and one log-sum-exp ``L_i`` per query row,
  linear in the length. The forward runs over blocks of queries and the backward over
  blocks of keys, recomputing ``P = exp(S - L)`` one block at a time, so no ``Tq x Tk``
  array is ever kept (nor built whole).

A query row that may attend to no key (all keys masked, or none allowed by the causal
rule) has ``P = 0`` and ``O = 0``, and its gradients are zero: nothing is divided by zero
and no NaN appears, forward or backward.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcnn.core import (
    Layer,
    Static,
    along_last_axis,
    check_array,
    check_float,
    check_input_shape,
    check_no_params,
    check_params,
    check_positive_int,
    fold_leading_axes,
    is_shape,
)
from funcnn.initializers import Initializer, glorot_normal, normal, zeros
from funcnn.validation import check_cotangent

_MEMORY_MODES = ("saved", "recompute")


def _check_memory(name: str, memory) -> str:
    if memory not in _MEMORY_MODES:
        raise ValueError(f"{name}: memory must be 'saved' or 'recompute', got {memory!r}")
    return memory


def _check_bool(name: str, what: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: {what} must be a bool, got {value!r}")
    return value


# --- the core, on (N, H, T, d) arrays ----------------------------------------------------


def _allowed(kv_mask, causal: bool, rows: tuple[int, int], cols: tuple[int, int]):
    """Which (query, key) pairs may attend, for query rows ``[r0, r1)`` and key columns
    ``[c0, c1)``: a boolean of shape ``(N or 1, 1, r1 - r0, c1 - c0)``, or ``None`` when
    every pair may (no mask, not causal)."""
    allowed = None
    if causal:  # query i sees key j when j <= i (top-left aligned, as PyTorch's is_causal)
        i = jnp.arange(rows[0], rows[1])[:, None]
        j = jnp.arange(cols[0], cols[1])[None, :]
        allowed = (j <= i)[None, None]
    if kv_mask is not None:
        keys = kv_mask[:, None, None, cols[0] : cols[1]]
        allowed = keys if allowed is None else allowed & keys
    return allowed


def _masked(s, allowed):
    return s if allowed is None else jnp.where(allowed, s, -jnp.inf)


def _softmax_rows(s, allowed):
    """Row softmax of the scores ``s`` where ``allowed``, and its log-sum-exp per row.

    Returns ``(p, lse)`` with ``lse`` of shape ``s.shape[:-1] + (1,)``. A row with no
    allowed entry gets ``p = 0`` and ``lse = -inf`` (the log of an empty sum).
    """
    s = _masked(s, allowed)
    m = jnp.max(s, axis=-1, keepdims=True)  # -inf for an empty row
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(s - m_safe)  # exp(-inf) = 0 at forbidden entries; no overflow elsewhere
    total = jnp.sum(e, axis=-1, keepdims=True)
    p = e / jnp.where(total > 0, total, 1.0)
    lse = m + jnp.log(jnp.where(total > 0, total, 1.0))  # m = -inf keeps -inf
    return p, lse


def _probs_from_lse(s, lse, allowed):
    """``P = exp(S - L)`` recomputed from the scores and the cached log-sum-exp; zero where
    not allowed (the inner ``where`` keeps an empty row's ``S - (-inf)`` out of ``exp``)."""
    if allowed is None:
        return jnp.exp(s - lse)
    return jnp.exp(jnp.where(allowed, s - lse, -jnp.inf))


def _qk(q, k, scale):
    return jnp.einsum("nhqd,nhkd->nhqk", q, k) * scale


def _blocks(length: int, block: int):
    return [(a, min(a + block, length)) for a in range(0, length, block)]


def _attend_saved(q, k, v, kv_mask, causal):
    """Forward, keeping ``P``: returns ``(O, P)``."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    allowed = _allowed(kv_mask, causal, (0, q.shape[2]), (0, k.shape[2]))
    p, _ = _softmax_rows(_qk(q, k, scale), allowed)
    return jnp.einsum("nhqk,nhkd->nhqd", p, v), p


def _attend_saved_backward(q, k, v, p, do):
    """Backward from the cached ``P``: ``dS = P * (dP - rowsum(dP * P))``."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    dv = jnp.einsum("nhqk,nhqd->nhkd", p, do)  # O = P V
    dp = jnp.einsum("nhqd,nhkd->nhqk", do, v)
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))  # the softmax, row by row
    dq = jnp.einsum("nhqk,nhkd->nhqd", ds, k) * scale  # S = scale * Q K^T
    dk = jnp.einsum("nhqk,nhqd->nhkd", ds, q) * scale
    return dq, dk, dv


def _attend_recompute(q, k, v, kv_mask, causal, block):
    """Forward over blocks of ``block`` query rows: returns ``(O, L)``, ``L (N, H, Tq)``.

    Each block needs its rows of ``S`` only, ``block x Tk`` values (with the causal rule,
    only the keys up to the block's last row), so nothing quadratic is built whole.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    tk = k.shape[2]
    outs, lses = [], []
    for r0, r1 in _blocks(q.shape[2], block):
        c1 = min(tk, r1) if causal else tk  # later keys are forbidden to these rows
        if c1 == 0:  # causal rows before the first key: nothing to attend
            outs.append(jnp.zeros((*q.shape[:2], r1 - r0, v.shape[-1]), q.dtype))
            lses.append(jnp.full((*q.shape[:2], r1 - r0), -jnp.inf, q.dtype))
            continue
        allowed = _allowed(kv_mask, causal, (r0, r1), (0, c1))
        p, lse = _softmax_rows(_qk(q[:, :, r0:r1], k[:, :, :c1], scale), allowed)
        outs.append(jnp.einsum("nhqk,nhkd->nhqd", p, v[:, :, :c1]))
        lses.append(lse[..., 0])
    return jnp.concatenate(outs, axis=2), jnp.concatenate(lses, axis=2)


def _attend_recompute_backward(q, k, v, o, lse, kv_mask, causal, block, do):
    """Backward over blocks of ``block`` keys, recomputing each block of ``P`` from ``L``.

    ``delta = rowsum(dO * O)`` (equal to ``rowsum(dP * P)``) is computed once, so a block
    of keys needs nothing from the other blocks: ``dK`` and ``dV`` of the block are
    complete when it is done, and ``dQ`` accumulates one term per block.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    tq = q.shape[2]
    delta = jnp.sum(do * o, axis=-1, keepdims=True)  # (N, H, Tq, 1)
    lse = lse[..., None]
    dq = jnp.zeros_like(q)
    dks, dvs = [], []
    for c0, c1 in _blocks(k.shape[2], block):
        r0 = c0 if causal else 0  # earlier rows may not attend to these keys
        if r0 >= tq:
            dks.append(jnp.zeros_like(k[:, :, c0:c1]))
            dvs.append(jnp.zeros_like(v[:, :, c0:c1]))
            continue
        q_r, do_r = q[:, :, r0:], do[:, :, r0:]
        k_c, v_c = k[:, :, c0:c1], v[:, :, c0:c1]
        allowed = _allowed(kv_mask, causal, (r0, tq), (c0, c1))
        p = _probs_from_lse(_qk(q_r, k_c, scale), lse[:, :, r0:], allowed)
        dvs.append(jnp.einsum("nhqk,nhqd->nhkd", p, do_r))
        dp = jnp.einsum("nhqd,nhkd->nhqk", do_r, v_c)
        ds = p * (dp - delta[:, :, r0:])
        dq = dq.at[:, :, r0:].add(jnp.einsum("nhqk,nhkd->nhqd", ds, k_c) * scale)
        dks.append(jnp.einsum("nhqk,nhqd->nhkd", ds, q_r) * scale)
    return dq, jnp.concatenate(dks, axis=2), jnp.concatenate(dvs, axis=2)


def _check_kv_mask(name: str, kv_mask, n: int, tk: int):
    check_array(name, "kv_mask", kv_mask)
    if kv_mask.dtype != jnp.bool_:
        raise TypeError(
            f"{name}: kv_mask must be a boolean array (True = attend to that key), got dtype "
            f"{kv_mask.dtype}; build it with e.g. ids != pad_id"
        )
    if tuple(kv_mask.shape) != (n, tk):
        raise ValueError(
            f"{name}: kv_mask must have shape (N, T_kv) = {(n, tk)}, got {tuple(kv_mask.shape)}"
        )


def _check_dy(name: str, dy, shape: tuple[int, ...]):
    check_cotangent(name, dy, shape)  # shape, structure and dtype kind: ValueError


def scaled_dot_product_attention(
    causal: bool = False, *, memory: str = "saved", block_size: int = 128
) -> Layer:
    """The parameter-free attention core on ``(q, k, v)`` or ``(q, k, v, kv_mask)``.

    Args:
      causal: query ``i`` may attend to key ``j`` only when ``j <= i`` (aligned at the
        first position, as PyTorch's ``is_causal``).
      memory: ``"saved"`` caches the probabilities; ``"recompute"`` caches one
        log-sum-exp per query row instead and recomputes them in backward.
      block_size: rows (forward) and keys (backward) per block in ``"recompute"`` mode.

    Shapes: ``q (N, H, Tq, dh)``, ``k (N, H, Tk, dh)``, ``v (N, H, Tk, dv)``, optional
    boolean ``kv_mask (N, Tk)`` (True = attend) ``-> o (N, H, Tq, dv)``. No params.

    Forward, per batch element and head, ``s = 1 / sqrt(dh)``::

        S = s Q K^T + M,   M = -inf where forbidden (causal rule, kv_mask)
        P = softmax(S) over the keys,   O = P V     (a row with no allowed key: P = 0, O = 0)

    Backward::

        dV = P^T dO,   dP = dO V^T,   dS = P * (dP - delta),   dQ = s dS K,   dK = s dS^T Q
        delta = rowsum(dP * P)  ("saved", from the cached P)
              = rowsum(dO * O)  ("recompute", the same number without P)

    and ``dx = (dq, dk, dv)`` (``None`` for the mask, the integer-input rule).

    Cache: ``"saved"``: ``q, k, v, P`` (``P`` is ``N H Tq Tk``, quadratic in the length);
    ``"recompute"``: ``q, k, v, O`` and ``L = logsumexp(S)`` per row (``N H Tq``): linear.

    >>> import jax, jax.numpy as jnp
    >>> from funcnn.layers.attention import scaled_dot_product_attention
    >>> layer = scaled_dot_product_attention(causal=True)
    >>> q = k = v = jnp.ones((1, 2, 3, 4), jnp.float32)
    >>> o, cache = layer.forward((), (q, k, v))
    >>> (dq, dk, dv), _ = layer.backward((), cache, jnp.ones_like(o))
    >>> o.shape, [round(float(g), 4) for g in dv[0, 0, :, 0]]  # key j: rows i >= j, 1/(i+1)
    ((1, 2, 3, 4), [1.8333, 0.8333, 0.3333])
    """
    name = "scaled_dot_product_attention"
    causal = _check_bool(name, "causal", causal)
    memory = _check_memory(name, memory)
    block = check_positive_int(name, "block_size", block_size)

    def shapes_of(x, shape_of):
        if not isinstance(x, (tuple, list)) or len(x) not in (3, 4):
            raise ValueError(
                f"{name}: expects a tuple (q, k, v) or (q, k, v, kv_mask), got "
                f"{type(x).__name__}" + (f" of length {len(x)}" if isinstance(x, tuple) else "")
            )
        return [shape_of(a) for a in x]

    def check_shapes(qs, ks, vs, ms=None):
        for what, s in (("q", qs), ("k", ks), ("v", vs)):
            if len(s) != 4:
                raise ValueError(
                    f"{name}: {what} must have 4 axes (N, H, T, d), got shape {tuple(s)}"
                )
        if ks[:2] != qs[:2] or vs[:3] != ks[:3] or ks[3] != qs[3]:
            raise ValueError(
                f"{name}: q (N, H, Tq, dh), k (N, H, Tk, dh) and v (N, H, Tk, dv) must agree, "
                f"got q {tuple(qs)}, k {tuple(ks)}, v {tuple(vs)}"
            )
        if ms is not None and tuple(ms) != (qs[0], ks[2]):
            raise ValueError(
                f"{name}: kv_mask must have shape (N, T_kv) = {(qs[0], ks[2])}, got {tuple(ms)}"
            )

    def init(key, input_shape):
        shapes = shapes_of(input_shape, lambda s: check_input_shape(name, s, min_ndim=1))
        check_shapes(*shapes)
        qs, _, vs = shapes[:3]
        return (), (*qs[:3], vs[3])

    def forward(params, x):
        check_no_params(name, params)
        shapes_of(x, lambda a: check_array(name, "each input", a))
        q, k, v = x[:3]
        kv_mask = x[3] if len(x) == 4 else None
        check_shapes(q.shape, k.shape, v.shape)
        for what, a in (("q", q), ("k", k), ("v", v)):
            check_float(name, what, a)
        if kv_mask is not None:
            _check_kv_mask(name, kv_mask, q.shape[0], k.shape[2])
        if memory == "saved":
            o, p = _attend_saved(q, k, v, kv_mask, causal)
            return o, {"q": q, "k": k, "v": v, "p": p, "n": Static(len(x))}
        o, lse = _attend_recompute(q, k, v, kv_mask, causal, block)
        cache = {"q": q, "k": k, "v": v, "o": o, "lse": lse, "mask": kv_mask}
        return o, {**cache, "n": Static(len(x))}

    def backward(params, cache, do):
        q, k, v = cache["q"], cache["k"], cache["v"]
        _check_dy(name, do, (*q.shape[:3], v.shape[3]))
        if memory == "saved":
            dq, dk, dv = _attend_saved_backward(q, k, v, cache["p"], do)
        else:
            dq, dk, dv = _attend_recompute_backward(
                q, k, v, cache["o"], cache["lse"], cache["mask"], causal, block, do
            )
        return ((dq, dk, dv) if cache["n"].value == 3 else (dq, dk, dv, None)), ()

    return Layer(init, forward, backward, name=name)


# --- multi-head attention ----------------------------------------------------------------


def _split_heads(a, heads: int):
    """``(N, T, H * d) -> (N, H, T, d)``: heads are contiguous blocks of ``d`` columns."""
    n, t, hd = a.shape
    return a.reshape(n, t, heads, hd // heads).transpose(0, 2, 1, 3)


def _merge_heads(a):
    """``(N, H, T, d) -> (N, T, H * d)``, the inverse of :func:`_split_heads`."""
    n, h, t, d = a.shape
    return a.transpose(0, 2, 1, 3).reshape(n, t, h * d)


def _affine(x, w, b):
    y = x @ w
    return y if b is None else y + along_last_axis(b, y.ndim)


def _affine_backward(x, w, dy, with_bias: bool):
    """``y = x W + b``: returns ``(dx, dW, db or None)`` (batch and time axes folded)."""
    dy2 = fold_leading_axes(dy)
    return dy @ w.T, fold_leading_axes(x).T @ dy2, dy2.sum(0) if with_bias else None


def multi_head_attention(
    num_heads: int,
    *,
    head_dim: int | None = None,
    out_features: int | None = None,
    causal: bool = False,
    use_bias: bool = True,
    memory: str = "saved",
    block_size: int = 128,
    w_init: Initializer = glorot_normal(),
    out_init: Initializer | None = None,
    b_init: Initializer = zeros(),
    dtype=jnp.float32,
) -> Layer:
    """Multi-head attention: project to heads, attend, concatenate, project out.

    Args:
      num_heads: ``H``, the number of heads.
      head_dim: ``dh``, the size of each head's queries, keys and values (default
        ``D // num_heads``, which must then divide evenly).
      out_features: ``D_out``, the output size (default ``D``).
      causal: query ``i`` attends to keys ``j <= i`` only (a language model's rule).
      use_bias: with the biases ``bq, bk, bv, bo`` (default) or without.
      memory: ``"saved"`` caches the attention probabilities (``N H Tq Tk`` values);
        ``"recompute"`` caches one log-sum-exp per query row and recomputes the
        probabilities block by block in backward, so the cache is linear in ``T``.
      block_size: rows/keys per block in ``"recompute"`` mode.
      w_init: initializer of ``wq, wk, wv`` (and of ``wo`` unless ``out_init`` is given).
      out_init, b_init: initializers of ``wo`` and of the biases.
      dtype: parameter dtype.

    Inputs: ``x (N, T, D)`` (self-attention); ``(x, kv_mask)`` with a boolean
    ``kv_mask (N, T)`` (self-attention with a key-padding mask, True = attend);
    ``(x_q, x_kv)`` with ``x_kv (N, T_kv, D_kv)`` (cross-attention); or
    ``(x_q, x_kv, kv_mask)`` with ``kv_mask (N, T_kv)``. ``init`` takes the same structure
    of shapes. Output ``(N, Tq, D_out)``.

    Params (heads are contiguous blocks of ``dh`` columns, as in PyTorch)::

        wq (D, H dh), bq (H dh,), wk (D_kv, H dh), bk, wv (D_kv, H dh), bv,
        wo (H dh, D_out), bo (D_out,)          (no b* with use_bias=False)

    Forward::

        Q = x_q wq + bq,  K = x_kv wk + bk,  V = x_kv wv + bv   split into H heads
        O_h = softmax(Q_h K_h^T / sqrt(dh) + M) V_h              per head (see
                                                    scaled_dot_product_attention)
        y = concat_h(O_h) wo + bo

    A query row with nothing to attend to has ``O = 0``, so its output is ``bo``.

    Backward, walking the forward in reverse (``(N, T)`` folded into the rows)::

        dbo = sum dy,   dwo = O^T dy,   dO = dy wo^T          split into heads
        dQ, dK, dV from the attention core (the softmax Jacobian row by row)
        dwq = x_q^T dQ, dbq = sum dQ, dx_q = dQ wq^T (same for k and v)
        dx_kv = dK wk^T + dV wv^T;  self-attention: dx = dx_q + dx_kv (the fan-out rule)

    ``dx`` has the input's structure, with ``None`` for the mask.

    Cache: the inputs (``x`` once for self-attention), ``Q, K, V, O`` and either ``P``
    (``"saved"``) or one log-sum-exp per query row (``"recompute"``), and the mask.

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> layer = fn.multi_head_attention(2, causal=True)
    >>> params, out_shape = layer.init(jax.random.PRNGKey(0), (3, 5, 8))
    >>> out_shape, params["wq"].shape
    ((3, 5, 8), (8, 8))
    >>> y, cache = layer.forward(params, jnp.ones((3, 5, 8)))
    >>> dx, grads = layer.backward(params, cache, jnp.ones_like(y))
    >>> dx.shape, sorted(grads)
    ((3, 5, 8), ['bk', 'bo', 'bq', 'bv', 'wk', 'wo', 'wq', 'wv'])
    """
    name = "multi_head_attention"
    heads = check_positive_int(name, "num_heads", num_heads)
    if head_dim is not None:
        check_positive_int(name, "head_dim", head_dim)
    if out_features is not None:
        check_positive_int(name, "out_features", out_features)
    causal = _check_bool(name, "causal", causal)
    use_bias = _check_bool(name, "use_bias", use_bias)
    memory = _check_memory(name, memory)
    block = check_positive_int(name, "block_size", block_size)
    out_init = w_init if out_init is None else out_init

    def form_of(shapes) -> str:
        """``"self"``, ``"self_mask"``, ``"cross"`` or ``"cross_mask"`` from the shapes."""
        if is_shape(shapes) and len(shapes) > 0:
            return "self"
        if isinstance(shapes, (tuple, list)) and len(shapes) == 2:
            return "self_mask" if len(shapes[1]) == 2 else "cross"
        if isinstance(shapes, (tuple, list)) and len(shapes) == 3:
            return "cross_mask"
        raise ValueError(
            f"{name}: expects x (N, T, D), (x, kv_mask), (x_q, x_kv) or (x_q, x_kv, kv_mask), "
            f"got {shapes!r}"
        )

    def split_input(x, form):
        if form == "self":
            return x, x, None
        if form == "self_mask":
            return x[0], x[0], x[1]
        return x[0], x[1], (x[2] if form == "cross_mask" else None)

    def sizes(d: int) -> tuple[int, int]:
        if head_dim is None and d % heads:
            raise ValueError(
                f"{name}: the input size D={d} is not divisible by num_heads={heads}; pass "
                f"head_dim= to choose the head size"
            )
        dh = d // heads if head_dim is None else head_dim
        return dh, d if out_features is None else out_features

    def check_inputs(q_shape, kv_shape, mask_shape):
        for what, s in (("x_q", q_shape), ("x_kv", kv_shape)):
            if len(s) != 3:
                raise ValueError(f"{name}: {what} must have 3 axes (N, T, D), got shape {tuple(s)}")
        if kv_shape[0] != q_shape[0]:
            raise ValueError(
                f"{name}: x_q and x_kv must have the same batch size, got shapes "
                f"{tuple(q_shape)} and {tuple(kv_shape)}"
            )
        if mask_shape is not None and tuple(mask_shape) != (kv_shape[0], kv_shape[1]):
            raise ValueError(
                f"{name}: kv_mask must have shape (N, T_kv) = {(kv_shape[0], kv_shape[1])}, "
                f"got {tuple(mask_shape)}"
            )

    def param_shapes(d, d_kv):
        dh, d_out = sizes(d)
        hd = heads * dh
        shapes = {"wq": (d, hd), "wk": (d_kv, hd), "wv": (d_kv, hd), "wo": (hd, d_out)}
        if use_bias:
            shapes.update(bq=(hd,), bk=(hd,), bv=(hd,), bo=(d_out,))
        return shapes

    def init(key, input_shape):
        form = form_of(input_shape)
        check = lambda s: check_input_shape(name, s, min_ndim=1)  # noqa: E731
        q_shape, kv_shape, mask_shape = tuple(
            None if s is None else check(s) for s in split_input(input_shape, form)
        )
        check_inputs(q_shape, kv_shape, mask_shape)
        shapes = param_shapes(q_shape[-1], kv_shape[-1])
        keys = dict(zip(shapes, jax.random.split(key, len(shapes)), strict=True))
        params = {}
        for p, shape in shapes.items():
            make = out_init if p == "wo" else w_init if p.startswith("w") else b_init
            params[p] = make(keys[p], shape, dtype)
        return params, (*q_shape[:2], shapes["wo"][1])

    def forward(params, x):
        if isinstance(x, (tuple, list)):
            for i, a in enumerate(x):
                check_array(name, f"input {i}", a)
            shapes = tuple(tuple(a.shape) for a in x)
        else:
            shapes = check_array(name, "x", x)
        form = form_of(shapes)
        x_q, x_kv, kv_mask = split_input(x, form)
        check_inputs(x_q.shape, x_kv.shape, None)
        check_float(name, "x_q" if form.startswith("cross") else "x", x_q)
        check_float(name, "x_kv", x_kv)
        if not isinstance(params, dict) or "wq" not in params or "wk" not in params:
            raise TypeError(
                f"{name}: params must be the dict made by this layer's init, got "
                f"{type(params).__name__}"
            )
        d, d_kv = params["wq"].shape[0], params["wk"].shape[0]
        if x_q.shape[-1] != d or x_kv.shape[-1] != d_kv:
            what = (
                f"x of shape {tuple(x_q.shape)}"
                if form.startswith("self")
                else f"x_q of shape {tuple(x_q.shape)} and x_kv of shape {tuple(x_kv.shape)}"
            )
            raise ValueError(
                f"{name}: the params were made for D={d}"
                + ("" if form.startswith("self") else f", D_kv={d_kv}")
                + f", got {what}"
            )
        check_params(name, params, param_shapes(d, d_kv))
        if kv_mask is not None:
            _check_kv_mask(name, kv_mask, x_kv.shape[0], x_kv.shape[1])
        get = lambda p: params.get(p) if use_bias else None  # noqa: E731
        q = _split_heads(_affine(x_q, params["wq"], get("bq")), heads)
        k = _split_heads(_affine(x_kv, params["wk"], get("bk")), heads)
        v = _split_heads(_affine(x_kv, params["wv"], get("bv")), heads)
        cache = {"x_q": x_q, "x_kv": None if form.startswith("self") else x_kv}
        cache.update(q=q, k=k, v=v, form=Static(form))
        if memory == "saved":  # P already holds the mask (zeros)
            o, cache["p"] = _attend_saved(q, k, v, kv_mask, causal)
        else:
            o, cache["lse"] = _attend_recompute(q, k, v, kv_mask, causal, block)
            cache["mask"] = kv_mask
        cache["o"] = o = _merge_heads(o)
        return _affine(o, params["wo"], get("bo")), cache

    def backward(params, cache, dy):
        q, k, v, o = cache["q"], cache["k"], cache["v"], cache["o"]
        form = cache["form"].value
        x_q = cache["x_q"]
        x_kv = x_q if cache["x_kv"] is None else cache["x_kv"]
        _check_dy(name, dy, (*o.shape[:2], params["wo"].shape[1]))
        # y = O wo + bo
        do, dwo, dbo = _affine_backward(o, params["wo"], dy, use_bias)
        do = _split_heads(do, heads)
        # O = attention(Q, K, V), per head
        if memory == "saved":
            dq, dk, dv = _attend_saved_backward(q, k, v, cache["p"], do)
        else:
            o_heads = _split_heads(o, heads)
            dq, dk, dv = _attend_recompute_backward(
                q, k, v, o_heads, cache["lse"], cache["mask"], causal, block, do
            )
        # Q = x_q wq + bq, K = x_kv wk + bk, V = x_kv wv + bv
        dx_q, dwq, dbq = _affine_backward(x_q, params["wq"], _merge_heads(dq), use_bias)
        dx_k, dwk, dbk = _affine_backward(x_kv, params["wk"], _merge_heads(dk), use_bias)
        dx_v, dwv, dbv = _affine_backward(x_kv, params["wv"], _merge_heads(dv), use_bias)
        grads = {"wq": dwq, "wk": dwk, "wv": dwv, "wo": dwo}
        if use_bias:
            grads.update(bq=dbq, bk=dbk, bv=dbv, bo=dbo)
        dx_kv = dx_k + dx_v
        if form == "self":
            dx = dx_q + dx_kv  # x feeds queries, keys and values: the cotangents add up
        elif form == "self_mask":
            dx = (dx_q + dx_kv, None)
        elif form == "cross":
            dx = (dx_q, dx_kv)
        else:
            dx = (dx_q, dx_kv, None)
        return dx, grads

    return Layer(init, forward, backward, name=name)


# --- positions ---------------------------------------------------------------------------


def positional_embedding(
    max_len: int, *, table_init: Initializer = normal(0.02), dtype=jnp.float32
) -> Layer:
    """Add a learned vector per position: ``y[n, t] = x[n, t] + table[t]``.

    Args:
      max_len: the longest sequence the table covers; ``init`` raises a ``ValueError``
        for ``T > max_len``.
      table_init: initializer of the table (default normal with std 0.02, as GPT-2).
      dtype: parameter dtype.

    Shapes: ``x (N, T, D) -> y (N, T, D)``, ``T <= max_len``; params
    ``{"table": (max_len, D)}``.

    Backward: ``dx = dy``; row ``t`` of the table is added at every batch element, so
    ``dtable[t] = sum_n dy[n, t]`` for ``t < T`` and zero for the rows not used.

    Cache: nothing but the length ``T`` (static).

    >>> import jax, jax.numpy as jnp
    >>> from funcnn.layers.attention import positional_embedding
    >>> layer = positional_embedding(max_len=4)
    >>> params, out_shape = layer.init(jax.random.PRNGKey(0), (2, 3, 5))
    >>> y, cache = layer.forward(params, jnp.zeros((2, 3, 5)))
    >>> dx, grads = layer.backward(params, cache, jnp.ones((2, 3, 5)))
    >>> grads["table"][:, 0]  # two sequences use rows 0-2; row 3 is unused
    Array([2., 2., 2., 0.], dtype=float32)
    """
    name = "positional_embedding"
    check_positive_int(name, "max_len", max_len)

    def check_length(t: int, shape):
        if t > max_len:
            raise ValueError(
                f"{name}: the sequence length T={t} exceeds max_len={max_len} (input shape "
                f"{tuple(shape)}); build the layer with a larger max_len or cut the sequences"
            )

    def init(key, input_shape):
        input_shape = check_input_shape(name, input_shape, min_ndim=3)
        if len(input_shape) != 3:
            raise ValueError(f"{name}: expects input (N, T, D), got shape {input_shape}")
        check_length(input_shape[1], input_shape)
        return {"table": table_init(key, (max_len, input_shape[2]), dtype)}, input_shape

    def forward(params, x):
        shape = check_array(name, "x", x, ndim=3)
        check_float(name, "x", x)
        check_length(shape[1], shape)
        if not isinstance(params, dict) or not hasattr(params.get("table"), "shape"):
            raise TypeError(f"{name}: params must be {{'table': (max_len, D)}} made by init")
        if params["table"].shape[1] != shape[2]:
            raise ValueError(
                f"{name}: the table was made for D={params['table'].shape[1]}, got input of "
                f"shape {shape}"
            )
        check_params(name, params, {"table": (max_len, shape[2])})
        return x + params["table"][None, : shape[1]], Static(shape)

    def backward(params, cache, dy):
        n, t, d = cache.value
        _check_dy(name, dy, (n, t, d))
        used = jnp.sum(dy, axis=0).astype(params["table"].dtype)
        return dy, {"table": jnp.pad(used, ((0, max_len - t), (0, 0)))}

    return Layer(init, forward, backward, name=name)


__all__ = ["multi_head_attention", "positional_embedding", "scaled_dot_product_attention"]
