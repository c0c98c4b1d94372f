"""Cases for the recurrent layers, their cells and ``bidirectional``.

Compiling a ``lax.scan`` dominates these cases, so there are few of them and each one
combines several options; every option and every code path (mask or none, carries in and
out, reverse, last step only) is taken by at least one case, and each cell's math by at
least two. The torch parity tests in test_recurrent.py cover each plain layer. Shapes are
tiny (N=3, T=3, F=3, H=4).

The checks run at random params (``funcnn.check.random_params``): at init the biases are
zero, and with ``b_hn = 0`` it would not matter whether GRU's ``b_hn`` sits inside the
reset product.
"""

import jax
import jax.numpy as jnp

import funcnn as fn

from . import Case

N, T, F, H = 3, 3, 3, 4
# Row 0 has a hole, row 1 is right-padded, row 2 has no real step at all.
MASK = jnp.array([[True, False, True], [True, True, False], [False, False, False]])


def _carry_of(key, kind):
    """A float32 carry: ``h (N, H)`` for kind "h", ``(h, c)`` for "hc"."""
    if kind == "h":
        return jax.random.normal(key, (N, H), jnp.float32)
    k1, k2 = jax.random.split(key)
    return _carry_of(k1, "h"), _carry_of(k2, "h")


def _inputs(*, mask=False, carry=None):
    """``make_x`` for ``(x[, mask][, carry0])``; ``carry`` is "h", "hc" or a pair of those
    (bidirectional). Floats are float32 (the float64 check casts them)."""

    def make(key):
        k_x, k_c1, k_c2 = jax.random.split(key, 3)
        parts = [jax.random.normal(k_x, (N, T, F), jnp.float32)]
        if mask:
            parts.append(MASK)
        if isinstance(carry, tuple):
            parts.append((_carry_of(k_c1, carry[0]), _carry_of(k_c2, carry[1])))
        elif carry is not None:
            parts.append(_carry_of(k_c1, carry))
        return parts[0] if len(parts) == 1 else tuple(parts)

    return make


def _shapes(*, mask=False, carry=None):
    def carry_shape(kind):
        return (N, H) if kind == "h" else ((N, H), (N, H))

    parts = [(N, T, F)]
    if mask:
        parts.append((N, T))
    if isinstance(carry, tuple):
        parts.append(tuple(carry_shape(k) for k in carry))
    elif carry is not None:
        parts.append(carry_shape(carry))
    return parts[0] if len(parts) == 1 else tuple(parts)


def _case(id_, make, covers, *, mask=False, carry=None):
    return Case(
        id_,
        make,
        _shapes(mask=mask, carry=carry),
        covers,
        make_x=_inputs(mask=mask, carry=carry),
    )


def _cell_case(id_, make, covers, carry):
    def make_x(key):
        k_x, k_c = jax.random.split(key)
        x_t = jax.random.normal(k_x, (N, F), jnp.float32)
        return x_t, _carry_of(k_c, carry)

    carry_shape = (N, H) if carry == "h" else ((N, H), (N, H))
    return Case(id_, make, ((N, F), carry_shape), covers, make_x=make_x)


CASES = [
    # --- sequence layers ---------------------------------------------------------------
    _case("rnn_tanh", lambda: fn.rnn(H), ("rnn",)),
    _case(
        "rnn_relu_masked_reverse_last",
        lambda: fn.rnn(H, "relu", reverse=True, return_sequences=False),
        ("rnn",),
        mask=True,
    ),
    _case(
        "lstm_masked_carries",
        lambda: fn.lstm(H, initial_carry=True, return_carry=True),
        ("lstm",),
        mask=True,
        carry="hc",
    ),
    _case(
        "gru_masked_reverse_carries",
        lambda: fn.gru(H, reverse=True, initial_carry=True, return_carry=True),
        ("gru",),
        mask=True,
        carry="h",
    ),
    # --- one-step cells ----------------------------------------------------------------
    _cell_case("rnn_cell_relu", lambda: fn.rnn_cell(H, "relu"), ("rnn_cell",), "h"),
    _cell_case("lstm_cell", lambda: fn.lstm_cell(H), ("lstm_cell",), "hc"),
    _cell_case("gru_cell", lambda: fn.gru_cell(H), ("gru_cell",), "h"),
    # --- bidirectional -----------------------------------------------------------------
    _case(
        "bidirectional_lstm_concat_masked",
        lambda: fn.bidirectional(fn.lstm(H)),
        ("bidirectional", "lstm"),
        mask=True,
    ),
    _case(
        "bidirectional_gru_sum_last_carries",
        lambda: fn.bidirectional(
            fn.gru(H, return_sequences=False, initial_carry=True, return_carry=True),
            merge="sum",
        ),
        ("bidirectional", "gru"),
        carry=("h", "h"),
    ),
]
