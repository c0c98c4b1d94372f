"""Exercise `layernorm`: the backward pass of layer normalization over the last axis.

Forward (given), for each row x of n values:
    mu = mean(x),  var = mean((x - mu)^2),  s = 1 / sqrt(var + eps)
    xhat = (x - mu) * s,  y = scale * xhat + offset
Params {"scale": (n,), "offset": (n,)}; x (N, n).

Cache: (xhat, s): n + 1 values per example (4 * (n + 1) bytes per example in float32).

Your task: write backward(params, cache, dy) -> (dx, {"scale": dscale, "offset": doffset}).
Remember that mu and var depend on every value of the row.
Derivation: docs/course/normalization.md.
Grade it:   python -m funcnn.exercises grade layernorm layernorm.py
"""

import jax.numpy as jnp

EPS = 1e-5


def forward(params, x):
    mu = x.mean(axis=1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=1, keepdims=True)
    s = 1 / jnp.sqrt(var + EPS)
    xhat = (x - mu) * s
    y = params["scale"] * xhat + params["offset"]
    return y, (xhat, s)


def backward(params, cache, dy):
    xhat, s = cache
    # Return (dx, {"scale": dscale, "offset": doffset}).
    # BEGIN SOLUTION
    g = params["scale"] * dy  # the gradient with respect to xhat
    dx = s * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return dx, {"scale": (dy * xhat).sum(axis=0), "offset": dy.sum(axis=0)}
    # END SOLUTION
