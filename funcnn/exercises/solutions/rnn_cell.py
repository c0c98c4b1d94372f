"""Exercise `rnn_cell`: the backward pass of one step of an Elman RNN (tanh).

Forward (given): the input is (x_t (N, F), h (N, H)); the output is (h_t, h_t): the step's
output and the carry handed to the next step, the same array twice (as funcnn's
rnn_cell).
    h_t = tanh(x_t w_x + h w_h + b)
Params {"w_x": (F, H), "w_h": (H, H), "b": (H,)}.

Cache: (x_t, h, h_t): F + 2H values per example (4 * (F + 2H) bytes in float32).

Your task: write backward(params, cache, dy) -> ((dx_t, dh), {"w_x", "w_h", "b"}), where
dy = (dout, dcarry) holds one cotangent for each of the two outputs.
Derivation: docs/course/bptt.md.
Grade it:   python -m funcnn.exercises grade rnn_cell rnn_cell.py
"""

import jax.numpy as jnp


def forward(params, x):
    x_t, h = x
    h_t = jnp.tanh(x_t @ params["w_x"] + h @ params["w_h"] + params["b"])
    return (h_t, h_t), (x_t, h, h_t)


def backward(params, cache, dy):
    x_t, h, h_t = cache
    dout, dcarry = dy
    # Return ((dx_t, dh), {"w_x": dw_x, "w_h": dw_h, "b": db}).
    # BEGIN SOLUTION
    da = (dout + dcarry) * (1 - h_t**2)  # h_t feeds two consumers: their gradients add
    dx_t, dh = da @ params["w_x"].T, da @ params["w_h"].T
    return (dx_t, dh), {"w_x": x_t.T @ da, "w_h": h.T @ da, "b": da.sum(axis=0)}
    # END SOLUTION
