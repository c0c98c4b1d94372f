"""GPT training step: funcnn's hand-written backward against ``jax.value_and_grad``.

The model is ``funcnn.models.gpt`` (token and position embeddings, pre-layernorm blocks
of causal multi-head attention and a GELU MLP, final layernorm, head tied to the token
table) with softmax cross-entropy. The baseline is the same model written in plain JAX,
with ``jax.nn.dot_product_attention`` for the attention, differentiated by
``jax.value_and_grad``. Both steps add the same SGD update and are jit-compiled with
their params donated; they are timed in interleaved rounds (``bench.interleaved``).

Memory: the bytes of funcnn's caches (model and loss) against the bytes of the
residuals ``jax.vjp`` keeps for the same loss (all of them, and those that are not the
parameter arrays).

Usage::

    python benchmarks/gpt.py        # layers 4, features 256, heads 4, T 256, batch 16
    python benchmarks/gpt.py --memory recompute
    python benchmarks/gpt.py --layers 2 --features 64 --seq 32 --batch 4 --repeats 3

docs/benchmarks.md records what it printed.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import funcnn as fn

try:  # run as a script: benchmarks/ is on sys.path
    from bench import _nbytes, interleaved, vjp_residual_bytes
except ImportError:  # imported as benchmarks.gpt
    from benchmarks.bench import _nbytes, interleaved, vjp_residual_bytes

LEARNING_RATE = 1e-3
EPS = 1e-5


# --- the plain-JAX model ------------------------------------------------------------------


def _layernorm(x, p):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + EPS) * p["scale"] + p["offset"]


def _attention(x, p, heads):
    n, t, _ = x.shape
    q, k, v = ((x @ p[f"w{c}"] + p[f"b{c}"]).reshape(n, t, heads, -1) for c in "qkv")
    o = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # (N, T, H, dh)
    return o.reshape(n, t, -1) @ p["wo"] + p["bo"]


@jax.numpy_rank_promotion("allow")
def plain_logits(p, ids, layers, heads):
    """The same model as ``funcnn.models.gpt`` in plain JAX; ``p`` has no ``"head"``."""
    table = p["tok"]["table"]
    h = table[ids] + p["pos"]["table"][None, : ids.shape[1]]
    for i in range(layers):
        b = p[f"block{i}"]
        h = h + _attention(_layernorm(h, b["ln1"]), b["attn"], heads)
        m = jax.nn.gelu(_layernorm(h, b["ln2"]) @ b["fc"]["w"] + b["fc"]["b"], approximate=False)
        h = h + m @ b["proj"]["w"] + b["proj"]["b"]
    return _layernorm(h, p["ln_f"]) @ table.T


def plain_loss(p, ids, labels, layers, heads):
    logp = jax.nn.log_softmax(plain_logits(p, ids, layers, heads))
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def untie(params):
    return {k: v for k, v in params.items() if k != "head"}


# --- measuring ------------------------------------------------------------------------------


def measure(layers, heads, features, seq, batch, vocab, memory, repeats, block_size=128):
    """Times (s) and bytes of one training step, funcnn and jax.grad; checks the losses agree."""
    model = fn.models.gpt(vocab, layers, heads, features, seq, memory=memory, block_size=block_size)
    loss = fn.losses.softmax_cross_entropy()
    key_p, key_x = jax.random.split(jax.random.PRNGKey(0))
    params, _ = model.init(key_p, (batch, seq))
    tokens = jax.random.randint(key_x, (batch, seq + 1), 0, vocab)
    ids, labels = tokens[:, :-1], tokens[:, 1:]

    opt = fn.optim.sgd(LEARNING_RATE)
    step = fn.train.train_step(model, loss, opt)

    def fn_step(carry):
        p, s = carry
        p, s, _ = step(p, s, ids, labels)
        return p, s

    def jax_loss(p, ids, labels):
        return plain_loss(p, ids, labels, layers, heads)

    def jax_step_impl(p, ids, labels):
        value, grads = jax.value_and_grad(jax_loss)(p, ids, labels)
        return jax.tree_util.tree_map(lambda a, g: a - LEARNING_RATE * g, p, grads), value

    jax_step = jax.jit(jax_step_impl, donate_argnums=0)

    # Both compute the same loss on the same params: the first step of each returns it
    # (and compiles the program that is timed below).
    def copy(tree):
        return jax.tree_util.tree_map(jnp.copy, tree)

    ours = float(step(copy(params), opt.init(params), ids, labels)[2])
    ref = float(jax_step(copy(untie(params)), ids, labels)[1])
    assert abs(ours - ref) < 1e-4 * abs(ref), (ours, ref)

    fn_params = copy(params)
    jax_params = copy(untie(params))
    times = interleaved(
        {
            "funcnn": (fn_step, (fn_params, opt.init(fn_params))),
            "jax": (lambda p: jax_step(p, ids, labels)[0], jax_params),
        },
        repeats,
    )

    def caches(params, ids, labels):
        logits, cache = model.forward(params, ids)
        return cache, loss.forward(logits, labels)[1]

    cache = _nbytes(jax.eval_shape(caches, params, ids, labels))
    residual_all, residual_no_params = vjp_residual_bytes(jax_loss, untie(params), ids, labels)
    return dict(
        times=times,
        cache=cache,
        residual_all=residual_all,
        residual_no_params=residual_no_params,
        loss=(ours, ref),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--memory", nargs="+", default=["saved", "recompute"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; GPT layers {args.layers}, "
        f"features {args.features}, heads {args.heads}, T {args.seq}, batch {args.batch}, "
        f"vocab {args.vocab}, float32\n"
    )
    print(
        "| memory | funcnn ms | jax.grad ms | funcnn / jax.grad | funcnn cache MB "
        "| jax.vjp residuals MB (all / without params) | cache / residuals (all / without) |"
    )
    print("|---|---|---|---|---|---|---|")
    mb = 1 / 2**20
    for memory in args.memory:
        r = measure(
            args.layers,
            args.heads,
            args.features,
            args.seq,
            args.batch,
            args.vocab,
            memory,
            args.repeats,
        )
        t = r["times"]
        print(
            f"| {memory} | {t['funcnn'] * 1e3:.1f} | {t['jax'] * 1e3:.1f} "
            f"| {t['funcnn'] / t['jax']:.2f} | {r['cache'] * mb:.1f} "
            f"| {r['residual_all'] * mb:.1f} / {r['residual_no_params'] * mb:.1f} "
            f"| {r['cache'] / r['residual_all']:.2f} / "
            f"{r['cache'] / r['residual_no_params']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
