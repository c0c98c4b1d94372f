"""Recompute: cache bytes and training-step time with and without ``remat``.

Two models: a deep MLP (hidden blocks ``dense(width) -> gelu``, a softmax cross-entropy
head) and a stack of transformer blocks (``funcnn.models.gpt_block``: layernorm, causal
attention, GELU MLP, residuals; mean squared error on the output). Each block is wrapped
in ``remat`` (the "per block" row), or the whole stack is (the "whole model" row). The
step is forward + hand-written backward + SGD in one ``jax.jit``, float32; the cache is
what the forward hands to the backward.

Usage::

    python benchmarks/remat.py [--repeats 20] [--model mlp|transformer|both]

docs/benchmarks.md records the table this prints.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import funcnn as fn
from funcnn import losses, optim, train

try:  # run as a script: benchmarks/ is on sys.path
    from bench import _nbytes, interleaved
except ImportError:  # imported as benchmarks.remat
    from benchmarks.bench import _nbytes, interleaved


def models(depth: int, width: int) -> dict:
    def block():
        return fn.sequential(fn.dense(width), fn.gelu())

    head = fn.dense(10)
    return {
        "plain": fn.sequential(*[block() for _ in range(depth)], head),
        "remat per block": fn.sequential(*[fn.remat(block()) for _ in range(depth)], head),
        "remat whole model": fn.remat(fn.sequential(*[block() for _ in range(depth)], head)),
    }


def transformer_models(depth: int, heads: int, features: int) -> dict:
    def block():
        return fn.models.gpt_block(heads, features)

    return {
        "plain": fn.sequential(*[block() for _ in range(depth)]),
        "remat per block": fn.sequential(*[fn.remat(block()) for _ in range(depth)]),
        "remat whole model": fn.remat(fn.sequential(*[block() for _ in range(depth)])),
    }


def measure(batch: int, depth: int, width: int, repeats: int) -> dict[str, tuple[int, float]]:
    """The deep MLP: ``{name: (cache bytes, seconds per step)}``."""
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, width), jnp.float32)
    labels = jax.random.randint(jax.random.PRNGKey(2), (batch,), 0, 10)
    return _measure(models(depth, width), x, labels, losses.softmax_cross_entropy(), repeats)


def measure_transformer(batch, seq, depth, heads, features, repeats):
    """The transformer stack: ``{name: (cache bytes, seconds per step)}``."""
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, seq, features), jnp.float32)
    target = jax.random.normal(jax.random.PRNGKey(2), (batch, seq, features), jnp.float32)
    return _measure(transformer_models(depth, heads, features), x, target, losses.mse(), repeats)


def _measure(variants, x, labels, loss, repeats):
    """``{name: (cache bytes, seconds per step)}``; also checks that every variant's
    gradients equal the plain model's."""
    opt = optim.sgd(0.01)
    contenders, caches, grads = {}, {}, {}
    for name, model in variants.items():
        params, _ = model.init(jax.random.PRNGKey(0), x.shape)
        caches[name] = _nbytes(jax.eval_shape(model.forward, params, x)[1])
        grads[name] = jax.jit(train.value_and_grad(model, loss))(params, x, labels)[1]
        step = train.train_step(model, loss, opt)
        state = (params, opt.init(params))
        contenders[name] = (lambda c, step=step: step(*c, x, labels)[:2], state)
    reference = jax.tree_util.tree_leaves(grads["plain"])
    for name, g in grads.items():
        for a, b in zip(reference, jax.tree_util.tree_leaves(g), strict=True):
            assert jnp.allclose(a, b, rtol=1e-5, atol=1e-6), f"{name}: gradients differ"
    times = interleaved(contenders, repeats)
    return {name: (caches[name], times[name]) for name in contenders}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--model", choices=["mlp", "transformer", "both"], default="both")
    args = parser.parse_args()
    if args.model in ("mlp", "both"):
        _table("model (batch 256, depth 16, width 512)", measure(256, 16, 512, args.repeats))
    if args.model in ("transformer", "both"):
        title = "gpt_block x 4 (batch 8, T 128, D 128, 4 heads)"
        _table(title, measure_transformer(8, 128, 4, 4, 128, args.repeats))


def _table(title, results):
    print(f"| {title} | cache MB | x plain | step ms | x plain |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base_bytes, base_time = results["plain"]
    for name, (nbytes, seconds) in results.items():
        print(
            f"| {name} | {nbytes / 2**20:.2f} | {nbytes / base_bytes:.2f} | "
            f"{seconds * 1e3:.2f} | {seconds / base_time:.2f} |"
        )
    print()


if __name__ == "__main__":
    main()
