"""Exercise `max_pool`: the backward pass of 1-d max pooling with overlapping windows.

Forward (given): x (N, T, C) -> y (N, T_out, C), window 3, stride 2, no padding:
    y[n, j, c] = max(x[n, 2j], x[n, 2j + 1], x[n, 2j + 2])   (per channel c)
Windows overlap: position 2j + 2 belongs to windows j and j + 1.
No parameters: params is () and dparams must be ().

Cache: (idx, Static(x.shape)): the offset of each window's maximum within its window
(one small integer per output value: T_out * C int32, 4 * T_out * C bytes per example;
funcnn's max_pool2d packs it into 2 bits) and x's shape as static metadata.

Your task: write backward(params, cache, dy) -> (dx, ()), dx of shape x.shape.
Derivation: docs/course/memory.md.
Grade it:   python -m funcnn.exercises grade max_pool max_pool.py
"""

import jax.numpy as jnp
import numpy as np

import funcnn as fn

WINDOW, STRIDE = 3, 2


def forward(params, x):
    t_out = (x.shape[1] - WINDOW) // STRIDE + 1
    positions = np.arange(t_out)[:, None] * STRIDE + np.arange(WINDOW)[None, :]
    windows = x[:, positions, :]  # (N, T_out, WINDOW, C)
    idx = jnp.argmax(windows, axis=2)  # (N, T_out, C), offsets 0..WINDOW-1
    return windows.max(axis=2), (idx, fn.Static(x.shape))


def backward(params, cache, dy):
    idx, shape = cache
    n, t, c = shape.value
    t_out = idx.shape[1]
    # Return (dx, ()).
    # BEGIN SOLUTION
    source = np.arange(t_out)[None, :, None] * STRIDE + idx  # where each max came from
    rows, cols = np.arange(n)[:, None, None], np.arange(c)[None, None, :]
    dx = jnp.zeros((n, t, c), dy.dtype).at[rows, source, cols].add(dy)
    return dx, ()
    # END SOLUTION
