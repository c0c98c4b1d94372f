"""Exercise `dense`: the backward pass of an affine layer y = x W + b.

Forward (given): x (N, in) -> y (N, out), params {"w": (in, out), "b": (out,)}.

Cache: x, the input (in values per example: 4 * in bytes per example in float32).
dx does not need the cache: it needs W, which backward receives in params.

Your task: write backward(params, cache, dy) -> (dx, {"w": dw, "b": db}).
Every gradient has the shape of its value: dx (N, in), dw (in, out), db (out,).
Derivation: docs/course/linear-softmax.md.
Grade it:   python -m funcnn.exercises grade dense dense.py
"""


def forward(params, x):
    y = x @ params["w"] + params["b"]
    return y, x


def backward(params, cache, dy):
    x = cache
    w = params["w"]
    # Return (dx, {"w": dw, "b": db}).
    # BEGIN SOLUTION
    dx = dy @ w.T
    dw = x.T @ dy
    db = dy.sum(axis=0)
    return dx, {"w": dw, "b": db}
    # END SOLUTION
