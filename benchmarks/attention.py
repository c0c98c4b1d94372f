"""The attention layer alone, forward + backward: funcnn's two memory modes against jax.grad.

For each sequence length the script times one ``jit``-compiled forward + backward of
``multi_head_attention`` (causal self-attention) in ``memory="saved"`` and
``memory="recompute"`` mode, and of the same layer written in plain JAX with
``jax.nn.dot_product_attention`` and differentiated by ``jax.vjp``, in interleaved rounds
(``bench.interleaved``). Memory: the bytes of our cache against the bytes of the residuals
``jax.vjp`` keeps (without the params and the input, which both sides hold anyway).

Usage::

    python benchmarks/attention.py                          # T = 256, 1024, 2048
    python benchmarks/attention.py --lengths 256 --repeats 3
    python benchmarks/attention.py --no-causal

docs/benchmarks.md records what it printed.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from funcnn.layers.attention import multi_head_attention

try:  # run as a script: benchmarks/ is on sys.path
    from bench import _nbytes, interleaved, same_args
except ImportError:  # imported as benchmarks.attention
    from benchmarks.bench import _nbytes, interleaved, same_args


def plain_attention(params, x, heads, causal):
    """The same layer in plain JAX, with jax.nn.dot_product_attention."""
    n, t, _ = x.shape
    q, k, v = (
        (x @ params[f"w{c}"] + params[f"b{c}"][None, None]).reshape(n, t, heads, -1) for c in "qkv"
    )
    o = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    return o.reshape(n, t, -1) @ params["wo"] + params["bo"][None, None]


def _residual_bytes(f, params, x) -> int:
    """Bytes of what ``jax.vjp(f, params, x)`` keeps, not counting params and x."""
    _, vjp_fn = jax.vjp(f, params, x)
    inputs = {a.unsafe_buffer_pointer() for a in jax.tree_util.tree_leaves((params, x))}
    kept = [
        r
        for r in jax.tree_util.tree_leaves(vjp_fn)
        if hasattr(r, "unsafe_buffer_pointer") and r.unsafe_buffer_pointer() not in inputs
    ]
    return _nbytes(kept)


def measure(batch, length, features, heads, causal, repeats, block_size=128, check=True):
    """Seconds per forward + backward for 'saved', 'recompute' and 'jax', and cache bytes."""
    key_p, key_x, key_dy = jax.random.split(jax.random.PRNGKey(0), 3)
    layers = {
        memory: multi_head_attention(heads, causal=causal, memory=memory, block_size=block_size)
        for memory in ("saved", "recompute")
    }
    params, _ = layers["saved"].init(key_p, (batch, length, features))
    x = jax.random.normal(key_x, (batch, length, features), jnp.float32)
    dy = jax.random.normal(key_dy, (batch, length, features), jnp.float32)

    def ours(layer):
        def both(params, x, dy):
            _, cache = layer.forward(params, x)
            return layer.backward(params, cache, dy)

        return jax.jit(both)

    def plain(p, x):
        return plain_attention(p, x, heads, causal)

    @jax.jit
    def reference(params, x, dy):
        _, vjp_fn = jax.vjp(plain, params, x)
        dparams, dx = vjp_fn(dy)
        return dx, dparams

    fns = {"saved": ours(layers["saved"]), "recompute": ours(layers["recompute"])}
    fns["jax"] = reference
    if check:  # the three give the same gradients (float32)
        ref = jax.tree_util.tree_leaves(reference(params, x, dy))
        # Relative to the largest gradient entry: bk's true gradient is zero (a constant
        # added to a row of scores), so both sides return float32 noise there.
        scale = max(float(jnp.max(jnp.abs(b))) for b in ref)
        for memory in ("saved", "recompute"):
            got = jax.tree_util.tree_leaves(fns[memory](params, x, dy))
            for a, b in zip(got, ref, strict=True):
                err = float(jnp.max(jnp.abs(a - b)))
                assert err <= 1e-5 * scale, (memory, err, scale)
    times = interleaved({name: (same_args(f), (params, x, dy)) for name, f in fns.items()}, repeats)
    cache = {
        memory: _nbytes(jax.eval_shape(layer.forward, params, x)[1])
        for memory, layer in layers.items()
    }
    cache["jax"] = _residual_bytes(plain, params, x)
    return times, cache


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--no-causal", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    causal = not args.no_causal
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; multi_head_attention, "
        f"batch {args.batch}, D {args.features}, heads {args.heads}, "
        f"{'causal' if causal else 'not causal'}, block_size {args.block_size}, float32\n"
    )
    print(
        "| T | saved ms | recompute ms | jax.grad ms | saved / jax | recompute / jax "
        "| saved cache MB | recompute cache MB | jax.vjp residuals MB | recompute / saved cache |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    mb = 1 / 2**20
    for t in args.lengths:
        times, cache = measure(
            args.batch, t, args.features, args.heads, causal, args.repeats, args.block_size
        )
        s, r, j = (times[k] for k in ("saved", "recompute", "jax"))
        print(
            f"| {t} | {s * 1e3:.1f} | {r * 1e3:.1f} | {j * 1e3:.1f} | {s / j:.2f} | {r / j:.2f} "
            f"| {cache['saved'] * mb:.1f} | {cache['recompute'] * mb:.1f} "
            f"| {cache['jax'] * mb:.1f} | {cache['recompute'] / cache['saved']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
