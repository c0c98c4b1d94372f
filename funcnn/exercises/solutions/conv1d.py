"""Exercise `conv1d`: the backward pass of a 1-d convolution (stride 1, no padding).

Forward (given): x (N, T, C), kernel w (K, C, F), bias b (F,), channels last:
    y[n, t, f] = b[f] + sum_k sum_c x[n, t + k, c] * w[k, c, f],   t < T - K + 1
It is K matrix products, one per kernel tap k: y = b + sum_k x[:, k:k+T_out] @ w[k].

Cache: x, the input (T * C values per example: 4 * T * C bytes in float32).

Your task: write backward(params, cache, dy) -> (dx, {"w": dw, "b": db}), with dy of
shape (N, T_out, F). Walk the taps as the forward does.
Derivation: docs/course/linear-softmax.md (a convolution is a sum of shifted dense layers).
Grade it:   python -m funcnn.exercises grade conv1d conv1d.py
"""

import jax.numpy as jnp


def forward(params, x):
    w, b = params["w"], params["b"]
    taps, t_out = w.shape[0], x.shape[1] - w.shape[0] + 1
    y = b + sum(x[:, k : k + t_out, :] @ w[k] for k in range(taps))
    return y, x


def backward(params, cache, dy):
    x = cache
    w = params["w"]
    taps, t_out = w.shape[0], dy.shape[1]
    # Return (dx, {"w": dw, "b": db}).
    # BEGIN SOLUTION
    dx = jnp.zeros_like(x)
    dw = []
    for k in range(taps):
        window = x[:, k : k + t_out, :]  # (N, T_out, C): what tap k read
        dx = dx.at[:, k : k + t_out, :].add(dy @ w[k].T)
        dw.append(jnp.einsum("ntc,ntf->cf", window, dy))
    return dx, {"w": jnp.stack(dw), "b": dy.sum(axis=(0, 1))}
    # END SOLUTION
