"""Recurrent layers: ``rnn``, ``lstm``, ``gru`` over sequences, their one-step cells
``rnn_cell``, ``lstm_cell``, ``gru_cell``, and the ``bidirectional`` combinator.

Data is batch-first and channels-last, ``x (N, T, F)``; ``H`` is the hidden size and ``G``
the number of gate blocks (1 for ``rnn``, 4 for ``lstm``, 3 for ``gru``). Parameters and
gate order are PyTorch's, in the ``(in, out)`` layout of ``dense``::

    rnn   {"w_x": (F, H),  "w_h": (H, H),  "b": (H,)}
    lstm  {"w_x": (F, 4H), "w_h": (H, 4H), "b": (4H,)}                gates i, f, g, o
    gru   {"w_x": (F, 3H), "w_h": (H, 3H), "b": (3H,), "b_hn": (H,)}  gates r, z, n

The backward pass is hand-written backpropagation through time (BPTT):

* forward: the input projection of every step is one matrix product,
  ``A_x = x W_x + b`` over all ``N * T`` rows; a ``lax.scan`` then runs only the
  recurrence ``a_t = A_x[t] + h_{t-1} W_h`` and the gate nonlinearities, and stacks the
  per-step values the gradient needs;
* backward: a ``lax.scan`` in the opposite direction walks each step's forward in reverse
  and emits ``dA[t] = dL/da_t``; only ``dh_{t-1} = dA[t] W_h^T`` stays inside the loop.
  Every parameter gradient is then one product over all steps::

      dW_x = x^T dA      dW_h = h_prev^T dA      db = sum dA      dx = dA W_x^T

Masks ``(x, mask)`` with a boolean ``mask (N, T)`` (True = a real step) handle
variable-length batches. A masked step holds the carry and outputs zeros; its input is
never read (padding values, even NaN, change nothing) and gets exactly zero gradient.

Initializers (all replaceable by keyword): ``w_x`` Glorot-uniform over ``(F, G H)``,
``w_h`` orthogonal per gate block, biases zero, and for ``lstm`` a forget-gate bias of 1.
PyTorch draws every weight and bias from ``U(-1/sqrt(H), 1/sqrt(H))``; Keras uses Glorot
for the input kernel, orthogonal for the recurrent kernel, zero biases and a unit forget
bias; Flax uses LeCun-normal, orthogonal and zeros. We follow Keras: an orthogonal
``W_h`` block keeps ``|h W_h|`` equal to ``|h|`` at the start, so signals and gradients
through time neither explode nor vanish from the weights alone, and a forget bias of 1
starts the LSTM remembering (Jozefowicz et al., 2015). For PyTorch's numbers pass
``w_x_init=w_h_init=b_init=uniform(1 / sqrt(H))`` and ``forget_bias=0``.

See docs/layers/recurrent.md for the equations, the derivation of each backward pass, the
cache contents and the mapping to PyTorch's weights.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from funcnn.combinators import _call_child  # errors name the child; summary sees it
from funcnn.core import Ctx, Layer, along_last_axis, as_wide, check_positive_int, is_shape
from funcnn.initializers import Initializer, glorot_uniform, zeros

__all__ = ["bidirectional", "gru", "gru_cell", "lstm", "lstm_cell", "rnn", "rnn_cell"]


# --- initializer -------------------------------------------------------------------------


def _orthogonal_blocks() -> Initializer:
    """Orthogonal ``(H, H)`` blocks side by side: ``(H, G H)`` gets ``G`` of them.

    Each block is the ``Q`` of a QR factorization of a standard-normal matrix, with the
    signs of ``R``'s diagonal folded in, so it is uniformly distributed over orthogonal
    matrices. A shape whose columns are not a multiple of its rows gets one
    semi-orthogonal matrix. The blocks are factorized one at a time, so every gate
    count shares one compiled ``(H, H)`` QR.
    """

    def init(key, shape, dtype=jnp.float32):
        rows, cols = shape
        blocks, size = (cols // rows, rows) if cols % rows == 0 else (1, max(rows, cols))
        qs = []
        for k in jax.random.split(key, blocks):
            q, r = jnp.linalg.qr(jax.random.normal(k, (size, size), jnp.float32))
            qs.append(q * jnp.sign(jnp.diagonal(r))[None, :])
        return jnp.concatenate(qs, axis=1)[:rows, :cols].astype(dtype)

    return init


# --- the cells' math: one step forward and its reverse, shared by cells and sequences ------


@dataclasses.dataclass(frozen=True)
class _Math:
    """One recurrent cell's step and the step read backwards.

    ``step(p, ax, h, c) -> (h_new, c_new, saved)``: ``ax = x W_x + b`` for this step, ``c``
    is ``None`` unless the cell has a memory cell; ``saved`` is what the gradient needs
    beyond the carries.

    ``back(p, saved, h_prev, c_prev, h_new, c_new, dh, dc) -> (da_x, dhn, dh_prev, dc_prev)``:
    ``dh``/``dc`` are the total cotangents of ``h_new``/``c_new``; ``da_x`` is the
    cotangent of ``ax`` (``(N, G H)``); ``dhn`` is GRU's cotangent of ``h W_hn + b_hn``
    (else ``None``), the only place where the cotangent of ``h W_h`` differs from ``da_x``.
    """

    kind: str  # "rnn", "lstm", "gru"
    gates: int
    step: Callable
    back: Callable
    has_c: bool = False  # the carry is (h, c)
    needs_h_prev: bool = False  # back() reads h_prev
    needs_h_new: bool = False  # back() reads h_new


def _split(a, k: int):
    return jnp.split(a, k, axis=-1)


def _rnn_math(nonlinearity: str) -> _Math:
    if nonlinearity == "tanh":
        act = jnp.tanh

        def dact(h):  # tanh'(a) from the output h = tanh(a)
            return 1 - h * h

    else:

        def act(a):
            return jnp.maximum(a, 0)  # NaN stays NaN

        def dact(h):  # relu'(a) = [a > 0] = [h > 0]; 0 at the kink
            return (h > 0).astype(h.dtype)

    def step(p, ax, h, c):
        # h' = act(a),  a = x W_x + b + h W_h
        return act(ax + h @ p["w_h"]), None, ()

    def back(p, saved, h_prev, c_prev, h_new, c_new, dh, dc):
        # da = dh' * act'(a);  dh_prev = da W_h^T
        da = dh * dact(h_new)
        return da, None, da @ p["w_h"].T, None

    return _Math("rnn", 1, step, back, needs_h_new=True)


def _lstm_step(p, ax, h, c):
    # a = x W_x + b + h W_h = [a_i, a_f, a_g, a_o]
    a_i, a_f, a_g, a_o = _split(ax + h @ p["w_h"], 4)
    i, f, g, o = jax.nn.sigmoid(a_i), jax.nn.sigmoid(a_f), jnp.tanh(a_g), jax.nn.sigmoid(a_o)
    c_new = f * c + i * g
    h_new = o * jnp.tanh(c_new)
    return h_new, c_new, (i, f, g, o)


def _lstm_back(p, saved, h_prev, c_prev, h_new, c_new, dh, dc):
    i, f, g, o = saved
    # h' = o tanh(c')
    tc = jnp.tanh(c_new)
    do = dh * tc
    dc = dc + dh * o * (1 - tc * tc)
    # c' = f c + i g
    di, df, dg, dc_prev = dc * g, dc * c_prev, dc * i, dc * f
    # i, f, o = sigmoid(a_.) (s' = s (1 - s)),  g = tanh(a_g) (g' = 1 - g^2)
    da = jnp.concatenate(
        [di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=-1
    )
    # a = ... + h W_h
    return da, None, da @ p["w_h"].T, dc_prev


def _gru_step(p, ax, h, c):
    ax_r, ax_z, ax_n = _split(ax, 3)
    ah_r, ah_z, ah_n = _split(h @ p["w_h"], 3)
    hn = ah_n + p["b_hn"][None, :]  # h W_hn + b_hn, inside the reset product
    r = jax.nn.sigmoid(ax_r + ah_r)
    z = jax.nn.sigmoid(ax_z + ah_z)
    n = jnp.tanh(ax_n + r * hn)
    h_new = n + z * (h - n)  # = (1 - z) n + z h
    return h_new, None, (r, z, n, hn)


def _gru_back(p, saved, h_prev, c_prev, h_new, c_new, dh, dc):
    r, z, n, hn = saved
    # h' = (1 - z) n + z h
    dn, dz, dh_prev = dh * (1 - z), dh * (h_prev - n), dh * z
    # n = tanh(a_n),  a_n = ax_n + r hn
    dan = dn * (1 - n * n)
    dr, dhn = dan * hn, dan * r
    # r, z = sigmoid(ax_. + ah_.)
    dar, daz = dr * r * (1 - r), dz * z * (1 - z)
    da_x = jnp.concatenate([dar, daz, dan], axis=-1)
    da_h = jnp.concatenate([dar, daz, dhn], axis=-1)  # cotangent of h W_h (+ b_hn)
    return da_x, dhn, dh_prev + da_h @ p["w_h"].T, None


_RNN = {name: _rnn_math(name) for name in ("tanh", "relu")}
_LSTM = _Math("lstm", 4, _lstm_step, _lstm_back, has_c=True)
_GRU = _Math("gru", 3, _gru_step, _gru_back, needs_h_prev=True)


def _da_h(math_: _Math, da_x, dhn):
    """The cotangent of ``h W_h``: ``da_x`` itself, except GRU's n block."""
    if dhn is None:
        return da_x
    hidden = dhn.shape[-1]
    return jnp.concatenate([da_x[..., : 2 * hidden], dhn], axis=-1)


def _param_shapes(math_: _Math, features: int, hidden: int) -> dict:
    gh = math_.gates * hidden
    shapes = {"w_x": (features, gh), "w_h": (hidden, gh), "b": (gh,)}
    if math_.kind == "gru":
        shapes["b_hn"] = (hidden,)
    return shapes


def _init_params(math_, key, features, hidden, dtype, w_x_init, w_h_init, b_init, forget_bias):
    k_x, k_h, k_b, k_bhn = jax.random.split(key, 4)
    gh = math_.gates * hidden
    params = {
        "w_x": w_x_init(k_x, (features, gh), dtype),
        "w_h": w_h_init(k_h, (hidden, gh), dtype),
        "b": b_init(k_b, (gh,), dtype),
    }
    if math_.kind == "lstm" and forget_bias:
        params["b"] = params["b"].at[hidden : 2 * hidden].add(forget_bias)
    if math_.kind == "gru":
        params["b_hn"] = b_init(k_bhn, (hidden,), dtype)
    return params


def _grads_like(grads: dict, params: dict) -> dict:
    return {k: grads[k].astype(params[k].dtype) for k in params}


# --- validation ---------------------------------------------------------------------------


def _describe(value) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"array of shape {tuple(shape)} and dtype {value.dtype}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _check_float_array(name: str, what: str, a, shape: tuple, hint: str = ""):
    """``a`` must be a floating-point array of exactly ``shape``."""
    if not _is_array(a):
        raise TypeError(f"{name}: {what} must be an array of shape {shape}, got {_describe(a)}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(f"{name}: {what} must be a floating-point array, got dtype {a.dtype}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(
            f"{name}: {what} must have shape {tuple(shape)}{hint}, got shape {tuple(a.shape)}"
        )


def _check_carry(name: str, what: str, carry, n: int, hidden: int, has_c: bool):
    """A carry is ``h (N, H)``, or the tuple ``(h, c)`` for an LSTM."""
    hint = f" (N, H) = ({n}, {hidden})"
    if has_c:
        if not isinstance(carry, (tuple, list)) or len(carry) != 2:
            raise TypeError(
                f"{name}: {what} must be a tuple (h, c) of two arrays of shape ({n}, {hidden}), "
                f"got {_describe(carry)}"
            )
        _check_float_array(name, f"{what} h", carry[0], (n, hidden), hint)
        _check_float_array(name, f"{what} c", carry[1], (n, hidden), hint)
    else:
        _check_float_array(name, what, carry, (n, hidden), hint)


def _check_mask(name: str, mask, n: int, t: int):
    if not _is_array(mask):
        raise TypeError(
            f"{name}: mask must be a boolean array of shape ({n}, {t}), got {_describe(mask)}"
        )
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"{name}: mask must be a boolean array (True = a real step), got dtype "
            f"{mask.dtype}; use mask.astype(bool)"
        )
    if tuple(mask.shape) != (n, t):
        raise ValueError(
            f"{name}: mask must have shape (N, T) = ({n}, {t}) like x's first two axes, "
            f"got shape {tuple(mask.shape)}"
        )


def _check_x(name: str, x, ndim: int, layout: str, hint: str):
    if not _is_array(x):
        raise TypeError(f"{name}: x must be an array {layout}, got {_describe(x)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: x must be a floating-point array, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(
            f"{name}: x must have {ndim} axes {layout}, got shape {tuple(x.shape)} "
            f"({x.ndim} axes){hint}"
        )


def _check_params(name: str, params, math_: _Math, features: int, hidden: int, x_shape):
    """Params must be this layer's dict; the input's feature size must match ``w_x``."""
    expected = _param_shapes(math_, features, hidden)
    if not isinstance(params, dict) or set(params) != set(expected):
        got = (
            f"a dict with keys {sorted(params)}" if isinstance(params, dict) else _describe(params)
        )
        raise TypeError(
            f"{name}: params must be a dict with keys {sorted(expected)}, got {got}. "
            f"Use the params returned by this layer's init."
        )
    w_x_shape = tuple(getattr(params["w_x"], "shape", ()))
    if len(w_x_shape) == 2 and w_x_shape[0] != features:
        raise ValueError(
            f"{name}: x has {features} features (last axis) but the params were made for "
            f"{w_x_shape[0]}: x of shape {tuple(x_shape)}, params['w_x'] of shape {w_x_shape}"
        )
    for key, shape in expected.items():
        got = tuple(getattr(params[key], "shape", ()))
        if got != shape:
            raise ValueError(
                f"{name}: params[{key!r}] must have shape {shape} for hidden={hidden} and "
                f"{features} input features, got {got}"
            )


def _check_dy(name: str, what: str, dy, shape: tuple):
    # A cotangent that does not match its output is a wrong value (funcnn.validation's
    # policy): ValueError for its structure, dtype kind and shape alike.
    if not _is_array(dy):
        raise ValueError(
            f"{name}: {what} must be an array of shape {tuple(shape)} (the output's), got "
            f"{_describe(dy)}"
        )
    if not jnp.issubdtype(dy.dtype, jnp.floating):
        raise ValueError(f"{name}: {what} must be a floating-point array, got dtype {dy.dtype}")
    if tuple(dy.shape) != tuple(shape):
        raise ValueError(
            f"{name}: {what} must have shape {tuple(shape)} (the forward output's), got shape "
            f"{tuple(dy.shape)}"
        )


def _check_dcarry(name: str, dcarry, n: int, hidden: int, has_c: bool):
    if has_c:
        if not isinstance(dcarry, (tuple, list)) or len(dcarry) != 2:
            raise ValueError(
                f"{name}: the carry's cotangent must be a tuple (dh, dc) like the returned "
                f"carry (h, c), got {_describe(dcarry)}"
            )
        _check_dy(name, "dcarry h", dcarry[0], (n, hidden))
        _check_dy(name, "dcarry c", dcarry[1], (n, hidden))
    else:
        _check_dy(name, "dcarry", dcarry, (n, hidden))


def _check_bool(name: str, what: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: {what} must be True or False, got {value!r}")
    return value


def _check_shape(name: str, what: str, shape, ndim: int, layout: str) -> tuple:
    if not is_shape(shape) or len(shape) != ndim or any(d < 0 for d in shape):
        raise ValueError(f"{name}: {what} must be {layout}, got {shape!r}")
    return tuple(int(d) for d in shape)


# --- the sequence engine ------------------------------------------------------------------


def _shift(seq, first, reverse: bool):
    """The carry entering each step: ``first`` then ``seq`` without its last step (in the
    direction of travel). ``seq`` is time-major ``(T, N, H)``."""
    if reverse:
        return jnp.concatenate([seq, first[None]], axis=0)[1:]
    return jnp.concatenate([first[None], seq], axis=0)[:-1]


def _scan_forward(math_: _Math, p, x_tm, mask_tm, h0, c0, reverse: bool, unroll: int):
    """Run the recurrence over time-major ``x_tm (T, N, F)``; returns the final carry and
    the stacked carries and saved values ``(T, N, ...)``."""
    # The input projection of all T steps as one (T N, F) x (F, G H) product.
    ax = x_tm @ p["w_x"] + along_last_axis(p["b"], 3)

    def body(carry, inputs):
        h, c = carry
        ax_t, m_t = inputs
        h_new, c_new, saved = math_.step(p, ax_t, h, c)
        if m_t is not None:  # a masked step holds the carry
            keep = m_t[:, None]
            h_new = jnp.where(keep, h_new, h)
            c_new = None if c is None else jnp.where(keep, c_new, c)
        return (h_new, c_new), (h_new, c_new, saved)

    (h, c), (hs, cs, saved) = lax.scan(
        body, (h0, c0), (ax, mask_tm), reverse=reverse, unroll=unroll
    )
    return (h, c), hs, cs, saved


def _scan_backward(math_: _Math, p, cache, dys, dh_last, dc_last, h0, c0, reverse, unroll):
    """BPTT: walk the steps in the opposite order; returns ``(dh0, dc0), da_x, dhn``."""
    hs, cs, mask_tm = cache["h"], cache["c"], cache["mask"]
    inputs = {
        "dy": dys,
        "m": mask_tm,
        "saved": cache["saved"],
        "h_prev": _shift(hs, h0, reverse) if math_.needs_h_prev else None,
        "h_new": hs if math_.needs_h_new else None,
        "c_prev": _shift(cs, c0, reverse) if math_.has_c else None,
        "c_new": cs,
    }

    def body(carry, s):
        dh, dc = carry  # cotangents of the carry leaving this step
        dh_out = dh if s["dy"] is None else dh + s["dy"]
        dh_cell, dc_cell = dh_out, dc
        if s["m"] is not None:  # a masked step passed the carry through: so does its cotangent
            keep = s["m"][:, None]
            dh_cell = jnp.where(keep, dh_out, 0)
            dc_cell = None if dc is None else jnp.where(keep, dc, 0)
        da_x, dhn, dh_prev, dc_prev = math_.back(
            p, s["saved"], s["h_prev"], s["c_prev"], s["h_new"], s["c_new"], dh_cell, dc_cell
        )
        if s["m"] is not None:
            dh_prev = jnp.where(keep, dh_prev, dh)
            dc_prev = None if dc is None else jnp.where(keep, dc_prev, dc)
        return (dh_prev, dc_prev), (da_x, dhn)

    (dh0, dc0), (da_x, dhn) = lax.scan(
        body, (dh_last, dc_last), inputs, reverse=not reverse, unroll=unroll
    )
    return (dh0, dc0), da_x, dhn


def _sequence_grads(math_: _Math, p, x_tm, h_prev, da_x, dhn):
    """Every parameter gradient as one product over all ``T N`` rows, and ``dx``."""
    rows = da_x.shape[0] * da_x.shape[1]
    da_x2 = da_x.reshape(rows, -1)
    grads = {
        "w_x": x_tm.reshape(rows, -1).T @ da_x2,
        "w_h": h_prev.reshape(rows, -1).T @ _da_h(math_, da_x, dhn).reshape(rows, -1),
        "b": da_x2.sum(0),
    }
    if dhn is not None:
        grads["b_hn"] = dhn.reshape(rows, -1).sum(0)
    return da_x @ p["w_x"].T, grads


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What :func:`bidirectional` needs to know about a sequence layer."""

    kind: str
    hidden: int
    reverse: bool
    return_sequences: bool
    initial_carry: bool
    return_carry: bool
    rebuild: Callable[[bool], Layer]  # the same layer with another `reverse`


def _spec_of(layer) -> _Spec | None:
    return getattr(getattr(layer, "forward", None), "recurrent_spec", None)


def _split_inputs(name: str, inputs, initial_carry: bool):
    """``x``, ``(x, mask)``, ``(x, carry0)`` or ``(x, mask, carry0)`` -> (x, mask, carry0)."""
    if initial_carry:
        if not isinstance(inputs, (tuple, list)) or len(inputs) not in (2, 3):
            raise TypeError(
                f"{name}: initial_carry=True, so the input must be (x, carry0) or "
                f"(x, mask, carry0), got {_describe(inputs)}"
            )
        if len(inputs) == 2:
            return inputs[0], None, inputs[1]
        return inputs[0], inputs[1], inputs[2]
    if isinstance(inputs, (tuple, list)):
        if len(inputs) != 2:
            raise TypeError(
                f"{name}: the input must be x or (x, mask) (pass initial_carry=True to give "
                f"a carry), got {_describe(inputs)}"
            )
        return inputs[0], inputs[1], None
    return inputs, None, None


def _join_inputs(x, mask, carry, initial_carry: bool):
    """The inverse of :func:`_split_inputs` (``mask=None``: no mask)."""
    parts = (x,) if mask is None else (x, mask)
    if initial_carry:
        parts = (*parts, carry)
    return parts[0] if len(parts) == 1 else parts


def _split_input_shape(name: str, input_shape, initial_carry: bool):
    """The ``init`` counterpart of :func:`_split_inputs`: (x_shape, mask_shape, carry_shape)."""
    if is_shape(input_shape):
        if initial_carry:
            raise ValueError(
                f"{name}: initial_carry=True, so input_shape must be (x_shape, carry_shape) "
                f"or (x_shape, mask_shape, carry_shape), got {tuple(input_shape)}"
            )
        return input_shape, None, None
    if not isinstance(input_shape, (tuple, list)):
        raise TypeError(f"{name}: input_shape must be a tuple, got {input_shape!r}")
    n = len(input_shape)
    if initial_carry and n in (2, 3):
        mask = input_shape[1] if n == 3 else None
        return input_shape[0], mask, input_shape[-1]
    if not initial_carry and n == 2:
        return input_shape[0], input_shape[1], None
    forms = "(x_shape, carry_shape) or (x_shape, mask_shape, carry_shape)"
    raise ValueError(
        f"{name}: input_shape must be "
        f"{forms if initial_carry else 'x_shape or (x_shape, mask_shape)'}, got {input_shape!r}"
    )


def _check_carry_shape(name: str, shape, n: int, hidden: int, has_c: bool):
    expected = ((n, hidden), (n, hidden)) if has_c else (n, hidden)
    ok = (
        isinstance(shape, (tuple, list))
        and len(shape) == 2
        and all(is_shape(s) and tuple(s) == (n, hidden) for s in shape)
        if has_c
        else is_shape(shape) and tuple(shape) == (n, hidden)
    )
    if not ok:
        raise ValueError(f"{name}: the carry's shape must be {expected} (N, H), got {shape!r}")
    return expected


def _sequence_layer(
    math_: _Math,
    name: str,
    hidden: int,
    *,
    return_sequences: bool,
    reverse: bool,
    initial_carry: bool,
    return_carry: bool,
    unroll: int,
    w_x_init: Initializer,
    w_h_init: Initializer,
    b_init: Initializer,
    forget_bias: float,
    dtype,
    rebuild: Callable[[bool], Layer],
) -> Layer:
    check_positive_int(name, "hidden", hidden)
    for what, value in [
        ("return_sequences", return_sequences),
        ("reverse", reverse),
        ("initial_carry", initial_carry),
        ("return_carry", return_carry),
    ]:
        _check_bool(name, what, value)
    check_positive_int(name, "unroll", unroll)
    has_c = math_.has_c
    layout = "(N, T, F)"
    rank_hint = f"; for one step at a time use {name}_cell"

    def init(key, input_shape):
        x_shape, mask_shape, carry_shape = _split_input_shape(name, input_shape, initial_carry)
        n, t, features = _check_shape(name, "the input shape of x", x_shape, 3, layout)
        if mask_shape is not None and (not is_shape(mask_shape) or tuple(mask_shape) != (n, t)):
            raise ValueError(
                f"{name}: the mask's shape must be (N, T) = ({n}, {t}), got {mask_shape!r}"
            )
        if carry_shape is not None:
            _check_carry_shape(name, carry_shape, n, hidden, has_c)
        params = _init_params(
            math_, key, features, hidden, dtype, w_x_init, w_h_init, b_init, forget_bias
        )
        y_shape = (n, t, hidden) if return_sequences else (n, hidden)
        if return_carry:
            return params, (y_shape, ((n, hidden), (n, hidden)) if has_c else (n, hidden))
        return params, y_shape

    static = dict(math_=math_, reverse=reverse, return_sequences=return_sequences, unroll=unroll)

    def forward(params, inputs):
        x, mask, carry0 = _split_inputs(name, inputs, initial_carry)
        _check_x(name, x, 3, layout, rank_hint)
        n, t, features = x.shape
        _check_params(name, params, math_, features, hidden, x.shape)
        if mask is not None:
            _check_mask(name, mask, n, t)
        if initial_carry:
            _check_carry(name, "carry0", carry0, n, hidden, has_c)
        y, carry, cache = _sequence_forward(params, x, mask, carry0, **static)
        return ((y, carry) if return_carry else y), cache

    def backward(params, cache, dy):
        t, n, _ = cache["x"].shape
        y_shape = (n, t, hidden) if return_sequences else (n, hidden)
        dcarry = None
        if return_carry:
            if not isinstance(dy, (tuple, list)) or len(dy) != 2:
                raise ValueError(
                    f"{name}: return_carry=True, so dy must be a tuple (dy, dcarry) like the "
                    f"output, got {_describe(dy)}"
                )
            dy, dcarry = dy
            _check_dcarry(name, dcarry, n, hidden, has_c)
        _check_dy(name, "dy", dy, y_shape)
        dx, dcarry0, grads = _sequence_backward(params, cache, dy, dcarry, **static)
        parts = [dx]
        if cache["mask"] is not None:
            parts.append(None)  # the mask is boolean: no gradient
        if initial_carry:
            parts.append(dcarry0)
        return (parts[0] if len(parts) == 1 else tuple(parts)), grads

    forward.recurrent_spec = _Spec(
        math_.kind, hidden, reverse, return_sequences, initial_carry, return_carry, rebuild
    )
    return Layer(init, forward, backward, name=name)


def _carry_arrays(carry0, n, hidden, has_c, dt):
    """``(h0, c0)`` in the compute dtype (zeros when no carry was given; ``c0`` is ``None``
    for cells without a memory cell)."""
    if carry0 is None:
        zero = jnp.zeros((n, hidden), dt)
        return zero, (zero if has_c else None)
    if has_c:
        return carry0[0].astype(dt), carry0[1].astype(dt)
    return carry0.astype(dt), None


# The numerical cores of the sequence layers are jit-compiled functions of the (already
# validated) arrays: under an outer jit they are inlined, and eager calls reuse one
# compiled program per layer configuration and shape instead of dispatching op by op.
_STATIC = ("math_", "reverse", "return_sequences", "unroll")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sequence_forward(params, x, mask, carry0, *, math_, reverse, return_sequences, unroll):
    n, _, _ = x.shape
    hidden = params["w_h"].shape[0]
    dt = jnp.result_type(x.dtype, params["w_x"].dtype, params["w_h"].dtype)
    x_tm = jnp.swapaxes(x, 0, 1)  # time-major (T, N, F): lax.scan walks the first axis
    mask_tm = None if mask is None else jnp.swapaxes(mask, 0, 1)
    if mask_tm is not None:  # padded steps are never read: their values cannot matter
        x_tm = jnp.where(mask_tm[..., None], x_tm, 0)
    h0, c0 = _carry_arrays(carry0, n, hidden, math_.has_c, dt)
    (h, c), hs, cs, saved = _scan_forward(math_, params, x_tm, mask_tm, h0, c0, reverse, unroll)
    if return_sequences:
        y = jnp.swapaxes(hs, 0, 1)
        if mask is not None:
            y = jnp.where(mask[..., None], y, 0)
    else:
        y = h
    cache = {"x": x_tm, "mask": mask_tm, "h": hs, "c": cs, "saved": saved, "carry0": carry0}
    return y, ((h, c) if math_.has_c else h), cache


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sequence_backward(params, cache, dy, dcarry, *, math_, reverse, return_sequences, unroll):
    x_tm, hs, carry0 = cache["x"], cache["h"], cache["carry0"]
    n, hidden, has_c, dt = x_tm.shape[1], hs.shape[-1], math_.has_c, hs.dtype
    # The cotangent of the final carry: from the returned carry, zero if none was returned.
    if dcarry is None:
        dh_last, dc_last = _carry_arrays(None, n, hidden, has_c, dt)
    else:
        dh_last, dc_last = _carry_arrays(dcarry, n, hidden, has_c, dt)
    if return_sequences:
        dys = jnp.swapaxes(dy, 0, 1).astype(dt)
    else:  # y is the carry's h after the last step: its cotangent joins the carry's
        dys, dh_last = None, dh_last + dy.astype(dt)

    h0, c0 = _carry_arrays(carry0, n, hidden, has_c, dt)
    (dh0, dc0), da_x, dhn = _scan_backward(
        math_, params, cache, dys, dh_last, dc_last, h0, c0, reverse, unroll
    )
    dx_tm, grads = _sequence_grads(math_, params, x_tm, _shift(hs, h0, reverse), da_x, dhn)
    dx = jnp.swapaxes(dx_tm, 0, 1).astype(x_tm.dtype)
    if carry0 is None:
        dcarry0 = None
    elif has_c:
        dcarry0 = (dh0.astype(carry0[0].dtype), dc0.astype(carry0[1].dtype))
    else:
        dcarry0 = dh0.astype(carry0.dtype)
    return dx, dcarry0, _grads_like(grads, params)


# --- sequence layers -----------------------------------------------------------------------


def _add_doc(function, text: str) -> None:
    """Insert a shared section into ``function``'s docstring, before its example if any."""
    doc = function.__doc__
    at = doc.find("    >>> ")
    function.__doc__ = doc + text if at < 0 else doc[:at] + text.lstrip("\n") + "\n" + doc[at:]


_SEQUENCE_DOC = """

    Args:
      hidden: the hidden size ``H``.
      return_sequences: True (default): ``y`` is every step's ``h``, ``(N, T, H)``
        (zeros at masked steps); False: only the carry's ``h`` after the last step
        processed, ``(N, H)`` (with ``reverse=True``, after reaching position 0).
      reverse: run right to left; ``y`` stays in input order.
      initial_carry: the input becomes ``(x, carry0)`` or ``(x, mask, carry0)`` (default
        False: a zero carry).
      return_carry: the output becomes ``(y, carry)``, the carry after the last step
        processed; its cotangent flows back and ``dx`` includes one for ``carry0``.
      unroll: steps per iteration of the ``lax.scan`` loops (a speed knob, same numbers).
      w_x_init, w_h_init, b_init: initializers for ``w_x``, ``w_h`` and the biases.
      dtype: parameter dtype.

    Inputs: ``x (N, T, F)``, or ``(x, mask)`` with a boolean ``mask (N, T)`` (True = a
    real step; holes are allowed, a masked step holds the carry and outputs zeros). The
    carry is ``h (N, H)``{carry}. ``init`` takes the matching
    shapes, e.g. ``((N, T, F), (N, T))`` for ``(x, mask)``. The mask's gradient is ``None``.
"""


def rnn(
    hidden: int,
    nonlinearity: str = "tanh",
    *,
    return_sequences: bool = True,
    reverse: bool = False,
    initial_carry: bool = False,
    return_carry: bool = False,
    unroll: int = 1,
    w_x_init: Initializer = glorot_uniform(),
    w_h_init: Initializer = _orthogonal_blocks(),
    b_init: Initializer = zeros(),
    dtype=jnp.float32,
) -> Layer:
    """Elman recurrent layer, PyTorch's ``nn.RNN``: ``h_t = act(x_t W_x + b + h_{t-1} W_h)``.

    ``act`` is ``tanh`` or ``relu`` (``nonlinearity``). Params
    ``{"w_x": (F, H), "w_h": (H, H), "b": (H,)}``; PyTorch's ``weight_ih = w_x.T``,
    ``weight_hh = w_h.T``, ``bias_ih + bias_hh = b``.

    Backward (BPTT), with ``dh_t`` the cotangent of ``h_t`` (from ``y`` and from step
    ``t + 1``)::

        da_t      = dh_t * act'(a_t)       act'= 1 - h_t^2 (tanh) or [h_t > 0] (relu)
        dh_{t-1} += da_t W_h^T             (the only product inside the loop)
        dW_x = x^T dA,  dW_h = h_prev^T dA,  db = sum dA,  dx = dA W_x^T   (over all steps)

    Cache: ``x`` and the carry ``h`` of every step: ``F + H`` numbers per step and
    example (``act'`` is read off ``h_t``). ``jax.vjp`` of the same layer written with
    ``lax.scan`` keeps ``F + 3H``.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    options = dict(
        return_sequences=return_sequences,
        initial_carry=initial_carry,
        return_carry=return_carry,
        unroll=unroll,
        w_x_init=w_x_init,
        w_h_init=w_h_init,
        b_init=b_init,
        dtype=dtype,
    )
    return _sequence_layer(
        _RNN[nonlinearity],
        "rnn",
        hidden,
        reverse=reverse,
        forget_bias=0.0,
        rebuild=lambda rev: rnn(hidden, nonlinearity, reverse=rev, **options),
        **options,
    )


def lstm(
    hidden: int,
    *,
    return_sequences: bool = True,
    reverse: bool = False,
    initial_carry: bool = False,
    return_carry: bool = False,
    unroll: int = 1,
    forget_bias: float = 1.0,
    w_x_init: Initializer = glorot_uniform(),
    w_h_init: Initializer = _orthogonal_blocks(),
    b_init: Initializer = zeros(),
    dtype=jnp.float32,
) -> Layer:
    """Long short-term memory, PyTorch's ``nn.LSTM`` (one layer, batch-first).

    With ``a = x_t W_x + b + h_{t-1} W_h = [a_i, a_f, a_g, a_o]`` (gates in PyTorch's order)::

        i = s(a_i)  f = s(a_f)  g = tanh(a_g)  o = s(a_o)        s = sigmoid
        c_t = f c_{t-1} + i g
        h_t = o tanh(c_t)

    Params ``{"w_x": (F, 4H), "w_h": (H, 4H), "b": (4H,)}``; PyTorch's
    ``weight_ih = w_x.T``, ``weight_hh = w_h.T``, ``bias_ih + bias_hh = b``.
    ``forget_bias`` (default 1) is added to the ``f`` block of ``b`` at init.

    Backward (BPTT), each step's forward read backwards, with ``dh``, ``dc`` the
    cotangents of ``h_t``, ``c_t`` (from ``y`` and from step ``t + 1``)::

        do = dh tanh(c_t)              dc += dh o (1 - tanh(c_t)^2)
        di = dc g   df = dc c_{t-1}    dg = dc i     dc_{t-1} = dc f
        da = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)]
        dh_{t-1} = da W_h^T            (the only product inside the loop)
        dW_x = x^T dA,  dW_h = h_prev^T dA,  db = sum dA,  dx = dA W_x^T   (over all steps)

    Cache: ``x``, the gates ``i, f, g, o``, and the carries ``c`` and ``h`` of every
    step: ``F + 6H`` numbers per step and example (``tanh(c_t)`` is recomputed).
    ``jax.vjp`` of the same LSTM written with ``lax.scan`` keeps ``F + 12H`` (see
    docs/benchmarks.md).

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> layer = fn.lstm(4, return_carry=True)
    >>> params, out_shape = layer.init(jax.random.PRNGKey(0), ((2, 5, 3), (2, 5)))
    >>> out_shape                       # (y, (h, c))
    ((2, 5, 4), ((2, 4), (2, 4)))
    >>> mask = jnp.array([[True] * 5, [True] * 2 + [False] * 3])   # lengths 5 and 2
    >>> (y, (h, c)), cache = layer.forward(params, (jnp.ones((2, 5, 3)), mask))
    >>> bool(jnp.all(y[1, 2:] == 0)), bool(jnp.all(h[1] == y[1, 1]))
    (True, True)
    >>> (dx, dmask), grads = layer.backward(params, cache, (jnp.ones_like(y), (h, c)))
    >>> dx.shape, dmask, sorted(grads)
    ((2, 5, 3), None, ['b', 'w_h', 'w_x'])
    """
    options = dict(
        return_sequences=return_sequences,
        initial_carry=initial_carry,
        return_carry=return_carry,
        unroll=unroll,
        forget_bias=forget_bias,
        w_x_init=w_x_init,
        w_h_init=w_h_init,
        b_init=b_init,
        dtype=dtype,
    )
    return _sequence_layer(
        _LSTM,
        "lstm",
        hidden,
        reverse=reverse,
        rebuild=lambda rev: lstm(hidden, reverse=rev, **options),
        **options,
    )


def gru(
    hidden: int,
    *,
    return_sequences: bool = True,
    reverse: bool = False,
    initial_carry: bool = False,
    return_carry: bool = False,
    unroll: int = 1,
    w_x_init: Initializer = glorot_uniform(),
    w_h_init: Initializer = _orthogonal_blocks(),
    b_init: Initializer = zeros(),
    dtype=jnp.float32,
) -> Layer:
    """Gated recurrent unit, PyTorch's ``nn.GRU`` (one layer, batch-first).

    With ``ax = x_t W_x + b`` and ``ah = h_{t-1} W_h``, split into blocks r, z, n::

        r = s(ax_r + ah_r)    z = s(ax_z + ah_z)               s = sigmoid
        n = tanh(ax_n + r (ah_n + b_hn))                       b_hn inside the reset product
        h_t = (1 - z) n + z h_{t-1}

    Params ``{"w_x": (F, 3H), "w_h": (H, 3H), "b": (3H,), "b_hn": (H,)}``; PyTorch's
    ``weight_ih = w_x.T``, ``weight_hh = w_h.T``, ``bias_ih = b``,
    ``bias_hh = [0, 0, b_hn]``.

    Backward (BPTT), with ``dh`` the cotangent of ``h_t`` and ``hn = ah_n + b_hn``::

        dn = dh (1 - z)    dz = dh (h_{t-1} - n)    dh_{t-1} = dh z
        dan = dn (1 - n^2)    dr = dan hn    dhn = dan r
        dar = dr r(1-r)    daz = dz z(1-z)
        dax = [dar, daz, dan]    dah = [dar, daz, dhn]
        dh_{t-1} += dah W_h^T                (the only product inside the loop)
        dW_x = x^T dAx,  dW_h = h_prev^T dAh,  db = sum dAx,  db_hn = sum dhn,
        dx = dAx W_x^T                        (over all steps)

    Cache: ``x``, ``r, z, n, hn`` and the carry ``h`` of every step: ``F + 5H`` numbers
    per step and example; ``jax.vjp`` of the same GRU written with ``lax.scan`` keeps
    ``F + 9H``.
    """
    options = dict(
        return_sequences=return_sequences,
        initial_carry=initial_carry,
        return_carry=return_carry,
        unroll=unroll,
        w_x_init=w_x_init,
        w_h_init=w_h_init,
        b_init=b_init,
        dtype=dtype,
    )
    return _sequence_layer(
        _GRU,
        "gru",
        hidden,
        reverse=reverse,
        forget_bias=0.0,
        rebuild=lambda rev: gru(hidden, reverse=rev, **options),
        **options,
    )


for _layer, _carry in (
    (rnn, ""),
    (lstm, ";\n    for ``lstm`` it is the tuple ``(h, c)``"),
    (gru, ""),
):
    _add_doc(_layer, _SEQUENCE_DOC.format(carry=_carry))


# --- one-step cells -----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("math_",))
def _cell_forward(params, x, carry, *, math_):
    n, hidden, has_c = x.shape[0], params["w_h"].shape[0], math_.has_c
    dt = jnp.result_type(x.dtype, params["w_x"].dtype, params["w_h"].dtype)
    h, c = _carry_arrays(carry, n, hidden, has_c, dt)
    ax = x @ params["w_x"] + params["b"][None, :]
    h_new, c_new, saved = math_.step(params, ax, h, c)
    cache = {
        "x": x,
        "h_prev": h,
        "c_prev": c,
        "saved": saved,
        "h_new": h_new if math_.needs_h_new else None,
        "c_new": c_new,
        "carry": carry,  # the caller's arrays (no copy): their dtypes are dcarry's
    }
    return (h_new, (h_new, c_new) if has_c else h_new), cache


@functools.partial(jax.jit, static_argnames=("math_",))
def _cell_backward(params, cache, dh_t, dcarry, *, math_):
    x, h, carry, has_c = cache["x"], cache["h_prev"], cache["carry"], math_.has_c
    # The output h_t and the carry's h are the same value: their cotangents add.
    dt = h.dtype
    dh = dh_t.astype(dt) + (dcarry[0] if has_c else dcarry).astype(dt)
    dc = dcarry[1].astype(dt) if has_c else None
    da_x, dhn, dh_prev, dc_prev = math_.back(
        params, cache["saved"], h, cache["c_prev"], cache["h_new"], cache["c_new"], dh, dc
    )
    grads = {"w_x": x.T @ da_x, "w_h": h.T @ _da_h(math_, da_x, dhn), "b": da_x.sum(0)}
    if dhn is not None:
        grads["b_hn"] = dhn.sum(0)
    dx = (da_x @ params["w_x"].T).astype(x.dtype)
    if has_c:
        dcarry0 = (dh_prev.astype(carry[0].dtype), dc_prev.astype(carry[1].dtype))
    else:
        dcarry0 = dh_prev.astype(carry.dtype)
    return (dx, dcarry0), _grads_like(grads, params)


def _cell_layer(math_: _Math, name: str, hidden: int, inits, forget_bias, dtype) -> Layer:
    check_positive_int(name, "hidden", hidden)
    has_c = math_.has_c
    layout = "(N, F)"
    rank_hint = f"; for whole sequences (N, T, F) use {name.removesuffix('_cell')}"

    def init(key, input_shape):
        if (
            is_shape(input_shape)
            or not isinstance(input_shape, (tuple, list))
            or len(input_shape) != 2
        ):
            raise ValueError(
                f"{name}: input_shape must be (x_shape, carry_shape) for the input "
                f"(x_t, carry), got {input_shape!r}"
            )
        n, features = _check_shape(name, "the input shape of x", input_shape[0], 2, layout)
        carry_shape = _check_carry_shape(name, input_shape[1], n, hidden, has_c)
        params = _init_params(math_, key, features, hidden, dtype, *inits, forget_bias)
        return params, ((n, hidden), carry_shape)

    def forward(params, inputs):
        if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
            raise TypeError(f"{name}: the input must be (x_t, carry), got {_describe(inputs)}")
        x, carry = inputs
        _check_x(name, x, 2, layout, rank_hint)
        n, features = x.shape
        _check_params(name, params, math_, features, hidden, x.shape)
        _check_carry(name, "carry", carry, n, hidden, has_c)
        return _cell_forward(params, x, carry, math_=math_)

    def backward(params, cache, dy):
        n = cache["x"].shape[0]
        if not isinstance(dy, (tuple, list)) or len(dy) != 2:
            raise ValueError(
                f"{name}: dy must be a tuple (dh_t, dcarry) like the output (h_t, carry), "
                f"got {_describe(dy)}"
            )
        dh_t, dcarry = dy
        _check_dy(name, "dh_t", dh_t, (n, hidden))
        _check_dcarry(name, dcarry, n, hidden, has_c)
        return _cell_backward(params, cache, dh_t, dcarry, math_=math_)

    return Layer(init, forward, backward, name=name)


_CELL_DOC = """

    Shapes: input ``(x_t (N, F), carry)``, output ``(h_t (N, H), carry')``; ``init`` takes
    ``((N, F), carry_shape)``. The params are those of the sequence layer (same keys,
    shapes and gate order), so a trained sequence layer's params drive the cell, e.g. to
    sample one step at a time. Backward: the sequence layer's step read backwards (see
    there); ``dy = (dh_t, dcarry')`` gives ``dx = (dx_t, dcarry)``, and the cotangents of
    ``h_t`` and of the carry's ``h`` add up. The parameter gradients are this step's
    products, e.g. ``dW_x = x_t^T da``, ``dW_h = h_{t-1}^T da``.
"""


def rnn_cell(
    hidden: int,
    nonlinearity: str = "tanh",
    *,
    w_x_init: Initializer = glorot_uniform(),
    w_h_init: Initializer = _orthogonal_blocks(),
    b_init: Initializer = zeros(),
    dtype=jnp.float32,
) -> Layer:
    """One step of :func:`rnn`: ``(x_t, h) -> (h_t, h_t)``, ``h_t = act(x_t W_x + b + h W_h)``.

    Cache: ``x_t``, ``h`` and ``h_t``.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn_cell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return _cell_layer(
        _RNN[nonlinearity], "rnn_cell", hidden, (w_x_init, w_h_init, b_init), 0.0, dtype
    )


def lstm_cell(
    hidden: int,
    *,
    forget_bias: float = 1.0,
    w_x_init: Initializer = glorot_uniform(),
    w_h_init: Initializer = _orthogonal_blocks(),
    b_init: Initializer = zeros(),
    dtype=jnp.float32,
) -> Layer:
    """One step of :func:`lstm`: ``(x_t, (h, c)) -> (h_t, (h_t, c_t))``.

    Cache: ``x_t``, ``h``, ``c``, the gates ``i, f, g, o`` and ``c_t``.

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> cell = fn.lstm_cell(4)
    >>> params, out_shape = cell.init(jax.random.PRNGKey(0), ((2, 3), ((2, 4), (2, 4))))
    >>> out_shape
    ((2, 4), ((2, 4), (2, 4)))
    >>> zero = jnp.zeros((2, 4))
    >>> (h, (h, c)), cache = cell.forward(params, (jnp.ones((2, 3)), (zero, zero)))
    >>> (dx, (dh, dc)), grads = cell.backward(params, cache, (jnp.ones((2, 4)), (zero, zero)))
    >>> dx.shape, grads["w_h"].shape
    ((2, 3), (4, 16))
    """
    return _cell_layer(_LSTM, "lstm_cell", hidden, (w_x_init, w_h_init, b_init), forget_bias, dtype)


def gru_cell(
    hidden: int,
    *,
    w_x_init: Initializer = glorot_uniform(),
    w_h_init: Initializer = _orthogonal_blocks(),
    b_init: Initializer = zeros(),
    dtype=jnp.float32,
) -> Layer:
    """One step of :func:`gru`: ``(x_t, h) -> (h_t, h_t)``.

    Cache: ``x_t``, ``h`` and ``r, z, n, hn``.
    """
    return _cell_layer(_GRU, "gru_cell", hidden, (w_x_init, w_h_init, b_init), 0.0, dtype)


for _cell in (rnn_cell, lstm_cell, gru_cell):
    _add_doc(_cell, _CELL_DOC)


# --- bidirectional ------------------------------------------------------------------------


def bidirectional(
    forward_layer: Layer, backward_layer: Layer | None = None, *, merge: str = "concat"
) -> Layer:
    """Run a sequence layer left to right and a second one right to left, and merge them.

    Args:
      forward_layer: an ``rnn``, ``lstm`` or ``gru`` with ``reverse=False``.
      backward_layer: the right-to-left layer; by default a fresh copy of
        ``forward_layer`` (its own params). It always runs with ``reverse=True`` (a layer
        built with ``reverse=False`` is rebuilt reversed). Both layers must agree on
        ``return_sequences``, ``initial_carry`` and ``return_carry``.
      merge: ``"concat"`` (``[y_fwd, y_bwd]`` on the last axis, PyTorch's
        ``bidirectional=True`` layout) or ``"sum"`` (same hidden sizes).

    The input is the children's: ``x``, ``(x, mask)``, and with ``initial_carry`` a pair of
    carries ``(carry_fwd, carry_bwd)`` last; with ``return_carry`` the output is
    ``(y, (carry_fwd, carry_bwd))``. With ``return_sequences=False`` ``y`` merges the two
    final ``h`` (the backward one after reaching position 0, as PyTorch's ``h_n``).
    Params: a tuple ``(params_fwd, params_bwd)``. Cache: the children's caches.

    Backward: ``x`` feeds both directions, so their ``dx`` add up; ``concat`` splits
    ``dy`` into ``dy[..., :H_fwd]`` and ``dy[..., H_fwd:]``, ``sum`` hands ``dy`` to both.

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> layer = fn.bidirectional(fn.gru(3))
    >>> params, out_shape = layer.init(jax.random.PRNGKey(0), (2, 5, 4))
    >>> out_shape
    (2, 5, 6)
    """
    first = _spec_of(forward_layer)
    if first is None:
        raise TypeError(
            f"bidirectional: forward_layer must be an rnn, lstm or gru layer, got {forward_layer!r}"
        )
    if first.reverse:
        raise ValueError(
            "bidirectional: forward_layer must run left to right (reverse=False); the "
            "backward layer is the one that runs reversed"
        )
    if backward_layer is None:
        backward_layer = first.rebuild(True)
    second = _spec_of(backward_layer)
    if second is None:
        raise TypeError(
            f"bidirectional: backward_layer must be an rnn, lstm or gru layer, got "
            f"{backward_layer!r}"
        )
    if not second.reverse:
        backward_layer = second.rebuild(True)
        second = _spec_of(backward_layer)
    for option in ("return_sequences", "initial_carry", "return_carry"):
        a, b = getattr(first, option), getattr(second, option)
        if a != b:
            raise ValueError(
                f"bidirectional: both layers must have the same {option}, got {a} for the "
                f"forward layer and {b} for the backward layer"
            )
    if merge not in ("concat", "sum"):
        raise ValueError(f"bidirectional: merge must be 'concat' or 'sum', got {merge!r}")
    if merge == "sum" and first.hidden != second.hidden:
        raise ValueError(
            f"bidirectional: merge='sum' needs equal hidden sizes, got {first.hidden} "
            f"(forward) and {second.hidden} (backward); use merge='concat'"
        )
    layers = (forward_layer, backward_layer)
    lifted = tuple(as_wide(layer) for layer in layers)
    ctx = Ctx()
    initial_carry, return_carry = first.initial_carry, first.return_carry
    split = first.hidden

    def init(key, input_shape):
        x_shape, mask_shape, carries = _split_input_shape(
            "bidirectional", input_shape, initial_carry
        )
        if initial_carry and (not isinstance(carries, (tuple, list)) or len(carries) != 2):
            raise ValueError(
                f"bidirectional: initial_carry=True, so the carry shape must be a pair "
                f"(forward carry shape, backward carry shape), got {carries!r}"
            )
        keys = jax.random.split(key, 2)
        params, shapes = [], []
        for i, where in enumerate(("forward", "backward")):
            child_shape = _join_inputs(
                x_shape,
                mask_shape,
                carries[i] if initial_carry else None,
                initial_carry,
            )
            # The wide forms, as the other combinators call their children (for summary).
            p, _, s = _call_child(
                "bidirectional", where, layers[i], lifted[i].init, keys[i], child_shape
            )
            params.append(p)
            shapes.append(s)
        ys = [s[0] if return_carry else s for s in shapes]
        y_shape = (*ys[0][:-1], ys[0][-1] + ys[1][-1]) if merge == "concat" else ys[0]
        if return_carry:
            return tuple(params), (y_shape, (shapes[0][1], shapes[1][1]))
        return tuple(params), y_shape

    def forward(params, inputs):
        if not isinstance(params, tuple) or len(params) != 2:
            raise TypeError(
                f"bidirectional: params must be a tuple (forward params, backward params), "
                f"got {_describe(params)}. Use the params made by this layer's init."
            )
        x, mask, carries = _split_inputs("bidirectional", inputs, initial_carry)
        if initial_carry and (not isinstance(carries, (tuple, list)) or len(carries) != 2):
            raise TypeError(
                f"bidirectional: initial_carry=True, so carry0 must be a pair "
                f"(forward carry, backward carry), got {_describe(carries)}"
            )
        outs, caches = [], []
        for i, where in enumerate(("forward", "backward")):
            child_input = _join_inputs(
                x,
                mask,
                carries[i] if initial_carry else None,
                initial_carry,
            )
            out, cache, _ = _call_child(
                "bidirectional",
                where,
                layers[i],
                lifted[i].forward,
                params[i],
                child_input,
                (),
                ctx,
            )
            outs.append(out)
            caches.append(cache)
        ys = [o[0] if return_carry else o for o in outs]
        y = jnp.concatenate(ys, axis=-1) if merge == "concat" else ys[0] + ys[1]
        if return_carry:
            return (y, (outs[0][1], outs[1][1])), tuple(caches)
        return y, tuple(caches)

    def backward(params, cache, dy):
        dcarries = (None, None)
        if return_carry:
            if not isinstance(dy, (tuple, list)) or len(dy) != 2:
                raise ValueError(
                    f"bidirectional: return_carry=True, so dy must be a tuple "
                    f"(dy, (dcarry_fwd, dcarry_bwd)) like the output, got {_describe(dy)}"
                )
            dy, dcarries = dy
            if not isinstance(dcarries, (tuple, list)) or len(dcarries) != 2:
                raise ValueError(
                    f"bidirectional: the carries' cotangent must be a pair "
                    f"(dcarry_fwd, dcarry_bwd), got {_describe(dcarries)}"
                )
        if not _is_array(dy):
            raise ValueError(f"bidirectional: dy must be an array, got {_describe(dy)}")
        if merge == "concat":
            width = split + second.hidden
            if dy.shape[-1:] != (width,):
                raise ValueError(
                    f"bidirectional: dy must have {width} features (last axis: {split} "
                    f"forward + {second.hidden} backward), got shape {tuple(dy.shape)}"
                )
            dys = (dy[..., :split], dy[..., split:])
        else:
            dys = (dy, dy)
        dxs, grads = [], []
        for i, where in enumerate(("forward", "backward")):
            child_dy = (dys[i], dcarries[i]) if return_carry else dys[i]
            dx, g = _call_child(
                "bidirectional", where, layers[i], layers[i].backward, params[i], cache[i], child_dy
            )
            dxs.append(dx)
            grads.append(g)
        # x feeds both directions (a fan-out): its cotangents add up.
        if not isinstance(dxs[0], tuple):
            return dxs[0] + dxs[1], tuple(grads)
        parts = [dxs[0][0] + dxs[1][0]]
        if cache[0]["mask"] is not None:
            parts.append(None)  # the mask: no gradient
        if initial_carry:
            parts.append((dxs[0][-1], dxs[1][-1]))
        return tuple(parts), tuple(grads)

    return Layer(init, forward, backward, name="bidirectional", children=layers)
