"""Exercise `sigmoid`: the backward pass of the logistic function.

Forward (given): y = 1 / (1 + exp(-x)), elementwise, computed so that exp never
overflows. The layer has no parameters: params is () and dparams must be ().

Cache: y, the output (the derivative is a function of it). One value per element of
x, so 4 bytes per element in float32.

Your task: write backward(params, cache, dy) -> (dx, ()), where dx has x's shape.
Derivation: docs/course/chain-rule.md and docs/course/linear-softmax.md.
Grade it:   python -m funcnn.exercises grade sigmoid sigmoid.py
"""

import jax.numpy as jnp


def forward(params, x):
    e = jnp.exp(-jnp.abs(x))
    y = jnp.where(x >= 0, 1 / (1 + e), e / (1 + e))
    return y, y


def backward(params, cache, dy):
    y = cache
    # Return (dx, ()): dx = dL/dx, with dy = dL/dy coming from the layer above.
    # BEGIN SOLUTION
    dx = dy * y * (1 - y)
    return dx, ()
    # END SOLUTION
