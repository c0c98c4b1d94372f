"""Exercise `attention_softmax`: the backward pass of scaled dot-product attention.

Forward (given): the input is (q, k, v), each (N, T, d) (one head, no mask):
    s = q k^T / sqrt(d)      (N, T, T), indexed [n, query, key]
    p = softmax(s)           over the key axis
    o = p v                  (N, T, d)
No parameters: params is () and dparams must be ().

Cache: (q, k, v, p): 3 T d + T^2 values per example; the T^2 of p grows with the
square of the sequence length (an attention layer can instead keep one log-sum-exp per
query row and recompute p inside the backward).

Your task: write backward(params, cache, do) -> ((dq, dk, dv), ()).
Derivation: docs/course/attention.md.
Grade it:   python -m funcnn.exercises grade attention_softmax attention_softmax.py
"""

import jax.numpy as jnp


def forward(params, x):
    q, k, v = x
    scale = 1 / jnp.sqrt(q.shape[-1])
    s = q @ k.swapaxes(1, 2) * scale
    e = jnp.exp(s - s.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return p @ v, (q, k, v, p)


def backward(params, cache, do):
    q, k, v, p = cache
    scale = 1 / jnp.sqrt(q.shape[-1])
    # Return ((dq, dk, dv), ()).
    # BEGIN SOLUTION
    dv = p.swapaxes(1, 2) @ do  # o = p v
    dp = do @ v.swapaxes(1, 2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))  # the softmax, row by row
    dq = ds @ k * scale  # s = q k^T * scale
    dk = ds.swapaxes(1, 2) @ q * scale
    return (dq, dk, dv), ()
    # END SOLUTION
