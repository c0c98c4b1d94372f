"""The exercises: shapes, parameters, and the typical wrong answers with their hints.

Each :class:`Exercise` names a reference solution in :mod:`funcnn.exercises.solutions`,
the input the grader draws, how to make parameters of the right shapes, and a list of
:class:`Mistake`. A mistake is a known wrong variant of the backward (a formula that
produces the wrong gradient a student typically writes) or a test on the error pattern,
together with the hint the grader prints when a student's gradient matches it.

The variants are computed from the exercise's own intermediates (``point.v``), never from
the student's cache, so a student may store whatever cache they like.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Grads = Any  # a (dx, dparams) pair


@dataclasses.dataclass(frozen=True)
class Point:
    """Where the grader evaluates a backward: params, input, cotangent, intermediates."""

    params: Any
    x: Any
    dy: Any
    v: dict[str, Any]  # the exercise's intermediates at (params, x)
    ref: Grads  # the correct (dx, dparams)


@dataclasses.dataclass(frozen=True)
class Mistake:
    """A typical wrong backward and the hint that names it.

    Exactly one of ``wrong`` and ``matches`` is given:

    * ``wrong(point) -> (dx, dparams)``: the whole wrong gradient. The leaves where it
      differs from the correct one are the leaves this mistake explains; a student's leaf
      equal to the variant's (same shape, values to 1e-6) is diagnosed with ``hint``.
    * ``matches(point, leaf, mine) -> bool``: a test on the error pattern of one leaf
      (for mistakes whose exact values depend on the student's code), used for ``leaves``.
    """

    name: str
    hint: str
    wrong: Callable[[Point], Grads] | None = None
    matches: Callable[[Point, str, Any], bool] | None = None
    leaves: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Exercise:
    """One exercise: a layer whose forward is given and whose backward the student writes."""

    name: str
    title: str
    page: str  # the course page with the derivation
    input_shape: Any
    param_shapes: Callable[[Any], dict[str, tuple[int, ...]]]  # {} when there are none
    intermediates: Callable[[Any, Any], dict[str, Any]]
    mistakes: tuple[Mistake, ...]
    make_x: Callable[[np.random.Generator], Any] | None = None  # default: standard normal


# --- sigmoid -----------------------------------------------------------------------------


def _sigmoid_parts(params, x):
    return {"y": jax.nn.sigmoid(x)}


SIGMOID = Exercise(
    name="sigmoid",
    title="the logistic function",
    page="chain-rule.md",
    input_shape=(3, 4),
    param_shapes=lambda shape: {},
    intermediates=_sigmoid_parts,
    mistakes=(
        Mistake(
            "used_input",
            "You evaluated y(1 - y) at the input: the derivative of the sigmoid is "
            "sigma(x) * (1 - sigma(x)), a function of the OUTPUT y, which is your cache. "
            "Write dx = dy * y * (1 - y) with y = cache, not x * (1 - x).",
            wrong=lambda p: (p.dy * p.x * (1 - p.x), ()),
        ),
        Mistake(
            "no_dy",
            "You returned the local derivative y(1 - y) alone. Backward must apply the "
            "chain rule: multiply by the incoming gradient, dx = dy * y * (1 - y).",
            wrong=lambda p: (p.v["y"] * (1 - p.v["y"]), ()),
        ),
        Mistake(
            "no_one_minus_y",
            "The factor (1 - y) is missing: sigma'(x) = sigma(x) * (1 - sigma(x)), so "
            "dx = dy * y * (1 - y).",
            wrong=lambda p: (p.dy * p.v["y"], ()),
        ),
    ),
)


# --- dense -------------------------------------------------------------------------------


def _dense_wrong(p, **changes):
    dx, dparams = p.ref
    return changes.get("dx", dx), {**dparams, **changes.get("d", {})}


DENSE = Exercise(
    name="dense",
    title="an affine layer y = x W + b",
    page="linear-softmax.md",
    input_shape=(4, 3),
    param_shapes=lambda shape: {"w": (shape[1], 2), "b": (2,)},
    intermediates=lambda params, x: {},
    mistakes=(
        Mistake(
            "w_transposed",
            "You transposed the weight gradient: dW = x^T dy has the shape of W, "
            "(in, out). dy^T x is its transpose, (out, in).",
            wrong=lambda p: _dense_wrong(p, d={"w": p.dy.T @ p.x}),
        ),
        Mistake(
            "b_no_batch_sum",
            "You forgot the batch sum: b is added to every row of the batch (a fan-out), "
            "so db sums dy over the batch axis: db = dy.sum(axis=0), shape (out,).",
            wrong=lambda p: _dense_wrong(p, d={"b": p.dy}),
        ),
        Mistake(
            "b_batch_mean",
            "db is the SUM of dy over the batch, not its mean: any 1/N of a mean loss is "
            "already inside dy. Use dy.sum(axis=0).",
            wrong=lambda p: _dense_wrong(p, d={"b": p.dy.mean(axis=0)}),
        ),
        Mistake(
            "w_batch_mean",
            "dW sums over the batch (x^T dy does it), it does not average: any 1/N of a "
            "mean loss is already inside dy. Drop the division by N.",
            wrong=lambda p: _dense_wrong(p, d={"w": p.x.T @ p.dy / p.x.shape[0]}),
        ),
        Mistake(
            "x_transposed",
            "dx = dy W^T has the shape of x, (N, in); you computed its transpose W dy^T.",
            wrong=lambda p: _dense_wrong(p, dx=p.params["w"] @ p.dy.T),
        ),
    ),
)


# --- softmax cross-entropy ---------------------------------------------------------------


def _sce_parts(params, x):
    logits, labels = x
    p = jax.nn.softmax(logits, axis=1)
    onehot = jax.nn.one_hot(labels, logits.shape[1], dtype=p.dtype)
    return {"p": p, "onehot": onehot, "n": logits.shape[0]}


def _sce_make_x(rng):
    return jnp.asarray(rng.standard_normal((4, 3))), jnp.asarray(rng.integers(0, 3, (4,)))


SOFTMAX_CROSS_ENTROPY = Exercise(
    name="softmax_cross_entropy",
    title="the mean cross-entropy of a softmax",
    page="linear-softmax.md",
    input_shape=((4, 3), (4,)),
    param_shapes=lambda shape: {},
    intermediates=_sce_parts,
    make_x=_sce_make_x,
    mistakes=(
        Mistake(
            "no_mean",
            "You forgot the 1/N of the mean: the loss averages over the N rows of the "
            "batch, so dlogits = dloss * (p - onehot) / N.",
            wrong=lambda p: ((p.dy * (p.v["p"] - p.v["onehot"]), None), ()),
        ),
        Mistake(
            "no_onehot",
            "You forgot to subtract the one-hot label: -log p[label] = logsumexp(logits) - "
            "logits[label], so its gradient is softmax(logits) - onehot(label), divided by N.",
            wrong=lambda p: ((p.dy * p.v["p"] / p.v["n"], None), ()),
        ),
        Mistake(
            "no_dloss",
            "You ignored dloss, the incoming gradient: it is 1.0 when the loss is the whole "
            "objective, but backward must multiply by it (the grader sends a random one).",
            wrong=lambda p: (((p.v["p"] - p.v["onehot"]) / p.v["n"], None), ()),
        ),
        Mistake(
            "sign",
            "Your gradient has the wrong sign: increasing the logit of the true label "
            "lowers the loss, so dlogits = (p - onehot) / N, not (onehot - p) / N.",
            wrong=lambda p: ((p.dy * (p.v["onehot"] - p.v["p"]) / p.v["n"], None), ()),
        ),
    ),
)


# --- layernorm ---------------------------------------------------------------------------


def _ln_parts(params, x):
    mu = x.mean(axis=1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
    s = 1 / jnp.sqrt(var + 1e-5)
    return {"xhat": (x - mu) * s, "s": s}


def _ln_dx(p, *, mean=True, var=True, scale=True):
    xhat, s = p.v["xhat"], p.v["s"]
    g = p.params["scale"] * p.dy if scale else p.dy
    dx = g
    if mean:
        dx = dx - g.mean(axis=1, keepdims=True)
    if var:
        dx = dx - xhat * (g * xhat).mean(axis=1, keepdims=True)
    return s * dx


def _ln_wrong(p, dx=None, **d):
    return (p.ref[0] if dx is None else dx), {**p.ref[1], **d}


LAYERNORM = Exercise(
    name="layernorm",
    title="layer normalization over the last axis",
    page="normalization.md",
    input_shape=(3, 5),
    param_shapes=lambda shape: {"scale": (shape[1],), "offset": (shape[1],)},
    intermediates=_ln_parts,
    mistakes=(
        Mistake(
            "dropped_mean",
            "You dropped the mean term: mu depends on every x_j of the row, which adds "
            "-mean(g) to the gradient. dx = s * (g - mean(g) - xhat * mean(g * xhat)), "
            "with g = scale * dy.",
            wrong=lambda p: _ln_wrong(p, _ln_dx(p, mean=False)),
        ),
        Mistake(
            "dropped_var",
            "You dropped the variance term: s = 1/sqrt(var + eps) depends on every x_j too, "
            "which adds -xhat * mean(g * xhat). dx = s * (g - mean(g) - xhat * mean(g * xhat)).",
            wrong=lambda p: _ln_wrong(p, _ln_dx(p, var=False)),
        ),
        Mistake(
            "constant_stats",
            "You treated mu and s as constants (dx = scale * dy * s): both are computed "
            "from the row itself, so dx = s * (g - mean(g) - xhat * mean(g * xhat)).",
            wrong=lambda p: _ln_wrong(p, _ln_dx(p, mean=False, var=False)),
        ),
        Mistake(
            "forgot_scale",
            "You forgot the scale: y = scale * xhat + offset, so the gradient reaching "
            "xhat is g = scale * dy, and it is g (not dy) that goes into dx's formula.",
            wrong=lambda p: _ln_wrong(p, _ln_dx(p, scale=False)),
        ),
        Mistake(
            "param_no_batch_sum",
            "You forgot the batch sum: scale and offset are used by every row of the "
            "batch, so their gradients sum over it: dscale = (dy * xhat).sum(axis=0), "
            "doffset = dy.sum(axis=0).",
            wrong=lambda p: _ln_wrong(p, scale=p.dy * p.v["xhat"], offset=p.dy),
        ),
    ),
)


# --- conv1d ------------------------------------------------------------------------------


def _conv_dx(p, *, flip=False, accumulate=True, reverse=False):
    w, dy = p.params["w"], p.dy
    taps, t_out = w.shape[0], dy.shape[1]
    dx = jnp.zeros_like(p.x)
    order = range(taps - 1, -1, -1) if reverse else range(taps)
    for k in order:
        part = dy @ w[taps - 1 - k if flip else k].T
        at = dx.at[:, k : k + t_out, :]
        dx = at.add(part) if accumulate else at.set(part)
    return dx


def _conv_dw(p, transposed=False):
    w, t_out = p.params["w"], p.dy.shape[1]
    spec = "ntc,ntf->fc" if transposed else "ntc,ntf->cf"
    return jnp.stack([jnp.einsum(spec, p.x[:, k : k + t_out], p.dy) for k in range(w.shape[0])])


def _conv_wrong(p, dx=None, **d):
    return (p.ref[0] if dx is None else dx), {**p.ref[1], **d}


_OVERWRITE = (
    "Neighbouring windows overlap: input position t is read by every tap k with "
    "t - k in range, so its gradient is the SUM of their contributions. Accumulate with "
    "dx.at[...].add(...) (or +=), do not overwrite with .set(...) or =."
)

CONV1D = Exercise(
    name="conv1d",
    title="a 1-d convolution, stride 1, no padding",
    page="linear-softmax.md",
    input_shape=(2, 6, 2),
    param_shapes=lambda shape: {"w": (3, shape[2], 3), "b": (3,)},
    intermediates=lambda params, x: {},
    mistakes=(
        Mistake(
            "b_no_position_sum",
            "You summed db over the batch but not over positions: the bias is added at "
            "every position t of every example, so db = dy.sum(axis=(0, 1)), shape (F,).",
            wrong=lambda p: _conv_wrong(p, b=p.dy.sum(axis=0)),
        ),
        Mistake(
            "b_no_sum",
            "You forgot the sums: the bias is added at every position of every example, "
            "so db = dy.sum(axis=(0, 1)), shape (F,).",
            wrong=lambda p: _conv_wrong(p, b=p.dy),
        ),
        Mistake(
            "w_transposed",
            "You transposed each tap's kernel gradient: dw[k] = window_k^T dy has the "
            "shape of w[k], (C, F), with window_k = x[:, k:k+T_out] folded to (N*T_out, C).",
            wrong=lambda p: _conv_wrong(p, w=_conv_dw(p, transposed=True)),
        ),
        Mistake(
            "kernel_flipped",
            "Your input gradient pairs the taps in the wrong order: tap k read "
            "x[:, k:k+T_out], so it sends dy @ w[k].T back to exactly that slice. (Written "
            "as one convolution, dx is the 'full' convolution of dy with the flipped "
            "kernel; flipping twice, or not at all, gives this error.)",
            wrong=lambda p: _conv_wrong(p, _conv_dx(p, flip=True)),
        ),
        Mistake(
            "overwrite_last",
            _OVERWRITE,
            wrong=lambda p: _conv_wrong(p, _conv_dx(p, accumulate=False)),
        ),
        Mistake(
            "overwrite_first",
            _OVERWRITE,
            wrong=lambda p: _conv_wrong(p, _conv_dx(p, accumulate=False, reverse=True)),
        ),
    ),
)


# --- max pooling -------------------------------------------------------------------------

_WINDOW, _STRIDE = 3, 2


def _pool_parts(params, x):
    t_out = (x.shape[1] - _WINDOW) // _STRIDE + 1
    positions = np.arange(t_out)[:, None] * _STRIDE + np.arange(_WINDOW)[None, :]
    idx = jnp.argmax(x[:, positions, :], axis=2)  # (N, T_out, C)
    source = np.arange(t_out)[None, :, None] * _STRIDE + idx
    n, _, c = x.shape
    rows, cols = np.arange(n)[:, None, None], np.arange(c)[None, None, :]
    # How many windows take their maximum from each input position.
    count = jnp.zeros(x.shape).at[rows, source, cols].add(1.0)
    return {"positions": positions, "source": source, "count": count}


def _pool_spread(p, share):
    """dx when each window sends dy * share to all of its positions."""
    positions, dy = p.v["positions"], p.dy
    dx = jnp.zeros_like(p.x)
    for j in range(positions.shape[0]):
        dx = dx.at[:, positions[j], :].add(share * dy[:, j : j + 1, :])
    return dx


def _pool_first(p):
    positions, dy = p.v["positions"], p.dy
    dx = jnp.zeros_like(p.x)
    for j in range(positions.shape[0]):
        dx = dx.at[:, positions[j, 0], :].add(dy[:, j, :])
    return dx


def _pool_overwrote(p, leaf, mine):
    """The error sits only where two windows share their maximum (a .set lost one)."""
    mine, ref = np.asarray(mine), np.asarray(p.ref[0])
    shared = np.asarray(p.v["count"]) >= 2
    err = np.abs(mine - ref)
    tol = 1e-9 + 1e-6 * np.max(np.abs(ref))
    return bool(shared.any() and err[shared].max() > tol and err[~shared].max(initial=0) <= tol)


def _pool_make_x(rng):
    # Position 2 is the maximum of windows 0 and 1 in every row and channel, so an
    # overwritten (rather than accumulated) gradient always shows.
    x = rng.standard_normal((2, 7, 2))
    x[:, 2, :] += 4.0
    return jnp.asarray(x)


MAX_POOL = Exercise(
    name="max_pool",
    title="1-d max pooling, window 3, stride 2",
    page="memory.md",
    input_shape=(2, 7, 2),
    param_shapes=lambda shape: {},
    intermediates=_pool_parts,
    make_x=_pool_make_x,
    mistakes=(
        Mistake(
            "average",
            "You wrote the average-pool backward (dy / window to every position). A max "
            "passes its gradient only to the input it picked: dx gets dy at the argmax of "
            "each window and 0 elsewhere.",
            wrong=lambda p: (_pool_spread(p, 1 / _WINDOW), ()),
        ),
        Mistake(
            "spread",
            "You sent dy to every position of the window. The max depends only on the "
            "input it picked: dx gets dy at the argmax of each window and 0 elsewhere.",
            wrong=lambda p: (_pool_spread(p, 1.0), ()),
        ),
        Mistake(
            "window_start",
            "You sent dy to the first position of each window: it belongs at the position "
            "of the maximum, start + idx, where idx is the cached argmax offset.",
            wrong=lambda p: (_pool_first(p), ()),
        ),
        Mistake(
            "overwrite",
            "Windows overlap (stride 2 < window 3): an input that is the maximum of two "
            "windows gets the sum of both dy. Scatter with dx.at[...].add(dy); .set(dy) "
            "keeps only one of them.",
            matches=_pool_overwrote,
            leaves=("x",),
        ),
    ),
)


# --- rnn cell ----------------------------------------------------------------------------


def _rnn_parts(params, x):
    x_t, h = x
    return {"h_t": jnp.tanh(x_t @ params["w_x"] + h @ params["w_h"] + params["b"])}


def _rnn_grads(p, *, out=True, carry=True, tanh=True, w_h_transposed=False):
    (x_t, h), h_t = p.x, p.v["h_t"]
    dout, dcarry = p.dy
    dh_t = (dout if out else 0) + (dcarry if carry else 0)
    da = dh_t * (1 - h_t**2) if tanh else dh_t
    dw_h = h.T @ da
    return (da @ p.params["w_x"].T, da @ p.params["w_h"].T), {
        "w_x": x_t.T @ da,
        "w_h": dw_h.T if w_h_transposed else dw_h,
        "b": da.sum(axis=0),
    }


_FAN_OUT_H = (
    "h_t leaves the cell twice, as the output and as the carry to the next step. Fan-out "
    "sums gradients: start from dout + dcarry, not from one of them."
)

RNN_CELL = Exercise(
    name="rnn_cell",
    title="one step of a tanh RNN",
    page="bptt.md",
    input_shape=((3, 2), (3, 4)),
    param_shapes=lambda shape: {"w_x": (shape[0][1], 4), "w_h": (4, 4), "b": (4,)},
    intermediates=_rnn_parts,
    mistakes=(
        Mistake("only_output", _FAN_OUT_H, wrong=lambda p: _rnn_grads(p, carry=False)),
        Mistake("only_carry", _FAN_OUT_H, wrong=lambda p: _rnn_grads(p, out=False)),
        Mistake(
            "no_tanh_derivative",
            "You forgot the derivative of tanh: h_t = tanh(a), so the gradient of the "
            "pre-activation is da = dh_t * (1 - h_t**2), and every other gradient starts "
            "from da.",
            wrong=lambda p: _rnn_grads(p, tanh=False),
        ),
        Mistake(
            "w_h_transposed",
            "You transposed the recurrent weight's gradient: dw_h = h^T da (rows index the "
            "previous state h, columns the new one). w_h is square, so the shape cannot "
            "tell you; da^T h is its transpose.",
            wrong=lambda p: _rnn_grads(p, w_h_transposed=True),
        ),
    ),
)


# --- lstm cell ---------------------------------------------------------------------------


def _lstm_parts(params, x):
    x_t, (h, c) = x
    a = x_t @ params["w_x"] + h @ params["w_h"] + params["b"]
    a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=1)
    i, f, g, o = jax.nn.sigmoid(a_i), jax.nn.sigmoid(a_f), jnp.tanh(a_g), jax.nn.sigmoid(a_o)
    return {"i": i, "f": f, "g": g, "o": o, "tanh_c": jnp.tanh(f * c + i * g)}


def _lstm_grads(p, *, out=True, h_carry=True, c_carry=True, tanh_c=True, order="ifgo"):
    x_t, (h, c) = p.x
    i, f, g, o, tc = (p.v[k] for k in ("i", "f", "g", "o", "tanh_c"))
    dout, (dh_next, dc_next) = p.dy
    dh_t = (dout if out else 0) + (dh_next if h_carry else 0)
    dc_t = (dc_next if c_carry else 0) + dh_t * o * ((1 - tc**2) if tanh_c else 1)
    gates = {
        "i": dc_t * g * i * (1 - i),
        "f": dc_t * c * f * (1 - f),
        "g": dc_t * i * (1 - g**2),
        "o": dh_t * tc * o * (1 - o),
    }
    da = jnp.concatenate([gates[k] for k in order], axis=1)
    return (da @ p.params["w_x"].T, (da @ p.params["w_h"].T, dc_t * f)), {
        "w_x": x_t.T @ da,
        "w_h": h.T @ da,
        "b": da.sum(axis=0),
    }


_GATE_ORDER = (
    "Your gate gradients are stacked in the wrong order: the forward splits a into "
    "i, f, g, o (PyTorch's order), so da = concatenate([da_i, da_f, da_g, da_o], axis=1)."
)

LSTM_CELL = Exercise(
    name="lstm_cell",
    title="one LSTM step",
    page="bptt.md",
    input_shape=((3, 2), ((3, 2), (3, 2))),
    param_shapes=lambda shape: {"w_x": (shape[0][1], 8), "w_h": (2, 8), "b": (8,)},
    intermediates=_lstm_parts,
    mistakes=(
        Mistake(
            "no_c_carry",
            "c_t is carried to the next step: its gradient is the incoming dc_next PLUS "
            "what comes through h_t = o * tanh(c_t). You left out dc_next.",
            wrong=lambda p: _lstm_grads(p, c_carry=False),
        ),
        Mistake(
            "only_output",
            "h_t leaves the cell twice, as the output and as the carry. Fan-out sums "
            "gradients: dh_t = dout + dh_next.",
            wrong=lambda p: _lstm_grads(p, h_carry=False),
        ),
        Mistake(
            "only_carry",
            "h_t leaves the cell twice, as the output and as the carry. Fan-out sums "
            "gradients: dh_t = dout + dh_next.",
            wrong=lambda p: _lstm_grads(p, out=False),
        ),
        Mistake(
            "no_tanh_c",
            "You forgot the derivative of tanh(c_t) on the path from h_t to c_t: "
            "h_t = o * tanh(c_t), so dc_t = dc_next + dh_t * o * (1 - tanh(c_t)**2).",
            wrong=lambda p: _lstm_grads(p, tanh_c=False),
        ),
        Mistake("gate_order_ifog", _GATE_ORDER, wrong=lambda p: _lstm_grads(p, order="ifog")),
        Mistake("gate_order_iofg", _GATE_ORDER, wrong=lambda p: _lstm_grads(p, order="iofg")),
        Mistake("gate_order_figo", _GATE_ORDER, wrong=lambda p: _lstm_grads(p, order="figo")),
    ),
)


# --- attention ---------------------------------------------------------------------------


def _attn_parts(params, x):
    q, k, _ = x
    s = q @ k.swapaxes(1, 2) / jnp.sqrt(q.shape[-1])
    return {"p": jax.nn.softmax(s, axis=-1), "scale": 1 / np.sqrt(q.shape[-1])}


def _attn_grads(p, *, scale=True, rowsum=True, dv_t=True, dk_t=True):
    q, k, v = p.x
    prob, do = p.v["p"], p.dy
    sc = p.v["scale"] if scale else 1.0
    dv = (prob.swapaxes(1, 2) if dv_t else prob) @ do
    dp = do @ v.swapaxes(1, 2)
    ds = prob * (dp - (dp * prob).sum(axis=-1, keepdims=True)) if rowsum else prob * dp
    dk = (ds.swapaxes(1, 2) if dk_t else ds) @ q * sc
    return (ds @ k * sc, dk, dv), ()


ATTENTION_SOFTMAX = Exercise(
    name="attention_softmax",
    title="scaled dot-product attention (its softmax and its two products)",
    page="attention.md",
    input_shape=((2, 3, 2), (2, 3, 2), (2, 3, 2)),
    param_shapes=lambda shape: {},
    intermediates=_attn_parts,
    mistakes=(
        Mistake(
            "no_scale",
            "You forgot the scale: the scores are s = q k^T / sqrt(d), so dq = ds k / "
            "sqrt(d) and dk = ds^T q / sqrt(d).",
            wrong=lambda p: _attn_grads(p, scale=False),
        ),
        Mistake(
            "softmax_no_rowsum",
            "You dropped the softmax's second term: every p[q, j] depends on every score "
            "of its row, so ds = p * (dp - rowsum(dp * p)), not p * dp.",
            wrong=lambda p: _attn_grads(p, rowsum=False),
        ),
        Mistake(
            "dv_not_transposed",
            "o = p v, so dv = p^T do: the value of key j receives the probabilities of "
            "column j. p is square (T x T), so p @ do has the right shape but not the "
            "right values.",
            wrong=lambda p: _attn_grads(p, dv_t=False),
        ),
        Mistake(
            "dk_not_transposed",
            "s = q k^T, so dk = ds^T q (ds is indexed [query, key]; the key axis must "
            "come first). ds @ q has the right shape but not the right values.",
            wrong=lambda p: _attn_grads(p, dk_t=False),
        ),
    ),
)


EXERCISES: dict[str, Exercise] = {
    e.name: e
    for e in (
        SIGMOID,
        DENSE,
        SOFTMAX_CROSS_ENTROPY,
        LAYERNORM,
        CONV1D,
        MAX_POOL,
        RNN_CELL,
        LSTM_CELL,
        ATTENTION_SOFTMAX,
    )
}
