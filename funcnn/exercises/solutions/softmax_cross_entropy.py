"""Exercise `softmax_cross_entropy`: the gradient of the mean cross-entropy of a softmax.

Forward (given): the input is a pair (logits (N, C), labels (N,)) with integer labels.
    log p = logits - logsumexp(logits)        (per row, max-shifted for stability)
    loss  = -(1/N) * sum_n log p[n, labels[n]]   a scalar
No parameters: params is () and dparams must be ().

Cache: (p, labels), the softmax probabilities and the labels: C floats and one integer
per example (4 * C + 4 bytes per example in float32 with int32 labels).

Your task: write backward(params, cache, dloss) -> ((dlogits, None), ()).
dloss is the scalar gradient of the final objective with respect to the loss (1.0 when
the loss is the objective; the grader sends a random one). Labels are integers and get no
gradient: their place in dx is None.
Derivation: docs/course/linear-softmax.md.
Grade it:   python -m funcnn.exercises grade softmax_cross_entropy softmax_cross_entropy.py
"""

import jax.numpy as jnp


def forward(params, x):
    logits, labels = x
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - jnp.log(jnp.exp(shifted).sum(axis=1, keepdims=True))
    picked = jnp.take_along_axis(log_p, labels[:, None], axis=1)
    loss = -picked.sum() / n
    return loss, (jnp.exp(log_p), labels)


def backward(params, cache, dloss):
    p, labels = cache
    n, c = p.shape
    # Return ((dlogits, None), ()).
    # BEGIN SOLUTION
    onehot = (labels[:, None] == jnp.arange(c)[None, :]).astype(p.dtype)
    dlogits = dloss * (p - onehot) / n
    return (dlogits, None), ()
    # END SOLUTION
