"""Exercise `lstm_cell`: the backward pass of one LSTM step.

Forward (given): the input is (x_t (N, F), (h, c)) with h, c (N, H); the output is
(h_t, (h_t, c_t)), as funcnn's lstm_cell. Gates i, f, g, o (PyTorch's order):
    a = x_t w_x + h w_h + b                       (N, 4H), split into four (N, H) blocks
    i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);   g = tanh(a_g)
    c_t = f * c + i * g,   h_t = o * tanh(c_t)
Params {"w_x": (F, 4H), "w_h": (H, 4H), "b": (4H,)}.

Cache: (x_t, h, c, i, f, g, o, tanh(c_t)): F + 7H values per example
(4 * (F + 7H) bytes in float32).

Your task: write backward(params, cache, dy) -> ((dx_t, (dh, dc)), {"w_x", "w_h", "b"}),
where dy = (dout, (dh_next, dc_next)) has one cotangent per output.
Derivation: docs/course/bptt.md.
Grade it:   python -m funcnn.exercises grade lstm_cell lstm_cell.py
"""

import jax
import jax.numpy as jnp


def forward(params, x):
    x_t, (h, c) = x
    a = x_t @ params["w_x"] + h @ params["w_h"] + params["b"]
    a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=1)
    i, f, g, o = jax.nn.sigmoid(a_i), jax.nn.sigmoid(a_f), jnp.tanh(a_g), jax.nn.sigmoid(a_o)
    c_t = f * c + i * g
    tanh_c = jnp.tanh(c_t)
    h_t = o * tanh_c
    return (h_t, (h_t, c_t)), (x_t, h, c, i, f, g, o, tanh_c)


def backward(params, cache, dy):
    x_t, h, c, i, f, g, o, tanh_c = cache
    dout, (dh_next, dc_next) = dy
    # Return ((dx_t, (dh, dc)), {"w_x": dw_x, "w_h": dw_h, "b": db}).
    # BEGIN SOLUTION
    dh_t = dout + dh_next  # h_t is the output and the carry: fan-out adds
    dc_t = dc_next + dh_t * o * (1 - tanh_c**2)  # c_t reaches the loss two ways too
    do = dh_t * tanh_c
    di, df, dg, dc = dc_t * g, dc_t * c, dc_t * i, dc_t * f
    da = jnp.concatenate(
        [di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2), do * o * (1 - o)], axis=1
    )
    dx_t, dh = da @ params["w_x"].T, da @ params["w_h"].T
    return (dx_t, (dh, dc)), {"w_x": x_t.T @ da, "w_h": h.T @ da, "b": da.sum(axis=0)}
    # END SOLUTION
