"""Max-pooling speed and memory: funcnn's ``max_pool2d`` against ``jax.vjp`` of
``lax.reduce_window`` (the idiomatic JAX max-pool).

For each input shape and window/stride it reports, jit-compiled, float32:

* forward + backward in one ``jit`` (how a training step runs them), ours and the
  reference's;
* our forward and backward as separate ``jit`` calls;
* the bytes of our cache against the bytes of the residuals ``jax.vjp`` keeps.

Usage::

    python benchmarks/pooling.py [--repeats 20]

docs/layers/pooling.md records the table this prints.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax import lax

from funcnn.layers.pooling import max_pool2d

try:  # run as a script: benchmarks/ is on sys.path
    from bench import _nbytes, interleaved, same_args
except ImportError:  # imported as benchmarks.pooling
    from benchmarks.bench import _nbytes, interleaved, same_args

CASES = [((64, 28, 28, 32), 2, 2), ((64, 14, 14, 64), 2, 2), ((64, 28, 28, 32), 3, 2)]
CASES += [((64, 14, 14, 64), 3, 2)]


def _reference(window, stride):
    dims = (1, window, window, 1)
    strides = (1, stride, stride, 1)
    return lambda x: lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, "VALID")


def measure(shape, window, stride, repeats):
    x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32)
    layer = max_pool2d(window, stride)
    reference = _reference(window, stride)

    def ours_both(x):
        y, cache = layer.forward((), x)
        return layer.backward((), cache, y)[0]  # dy = y: a cotangent that depends on x

    def reference_both(x):
        y, vjp = jax.vjp(reference, x)
        return vjp(y)[0]

    forward = jax.jit(layer.forward)
    backward = jax.jit(layer.backward)
    y, cache = forward((), x)
    assert jnp.array_equal(y, reference(x))
    times = interleaved(
        {
            "ours": (same_args(jax.jit(ours_both)), (x,)),
            "reference": (same_args(jax.jit(reference_both)), (x,)),
            "forward": (same_args(lambda x: forward((), x)), (x,)),
            "backward": (same_args(lambda c, y: backward((), c, y)), (cache, y)),
        },
        repeats,
    )
    residuals = jax.tree_util.tree_leaves(jax.vjp(reference, x)[1])
    return times, _nbytes(cache), _nbytes(residuals)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}\n")
    print(
        "| input, window/stride | ours: forward + backward, one `jit` | reference, one `jit` "
        "| ours: forward / backward, separate `jit`s | our cache | reference's vjp residuals |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    mb = 1 / 2**20
    for shape, window, stride in CASES:
        t, cache, residuals = measure(shape, window, stride, args.repeats)
        print(
            f"| {shape}, {window}/{stride} | {t['ours'] * 1e3:.2f} ms "
            f"| {t['reference'] * 1e3:.2f} ms "
            f"| {t['forward'] * 1e3:.2f} / {t['backward'] * 1e3:.2f} ms "
            f"| {cache * mb:.2f} MB | {residuals * mb:.2f} MB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
