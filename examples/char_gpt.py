"""Train a small character-level GPT with funcnn and report validation bits per character.

Every gradient comes from funcnn's hand-written backward passes (embedding, positional
embedding, layernorm, causal multi-head attention, dense, GELU, the residual sums, the
head tied to the token table, softmax cross-entropy): ``funcnn.models.gpt`` is a graph of
funcnn layers and ``funcnn.train.train_step`` compiles forward, backward and AdamW into one
``jax.jit`` step.

The text is the shared corpus of the character-level examples (``char_data.py``: the
docstrings of a fixed list of standard-library modules, on every machine with Python, no
download). The last 10% is held out. Training reads random windows of ``--seq`` characters
and predicts each next character; validation scores every held-out character once, with
at least ``--seq // 2`` characters of context (overlapping windows, the second half of
each scored), and reports the mean cross-entropy in bits per character (``log2`` of the
perplexity), beside the unigram baseline. At the end it prints a sample continued from a
window of validation text and saves a PNG of the loss curves.

Run:  python examples/char_gpt.py [--steps 600] [--layers 3] [--features 128] [--heads 4]
      [--seq 64] [--batch 32] [--lr 3e-3] [--memory saved|recompute]
      [--plot examples/char_gpt.png]
The plot goes beside this script by default (examples/char_gpt.png, ignored by git).
Needs the `examples` extra for the plot and the bar: matplotlib, tqdm.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time

import char_data
import jax
import jax.numpy as jnp
import numpy as np

import funcnn as fn

HERE = pathlib.Path(__file__).resolve().parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64, help="characters per training window")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--memory", choices=["saved", "recompute"], default="saved")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--sample-length", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot", default=str(HERE / "char_gpt.png"), help="where to save the loss curves"
    )
    return parser.parse_args(argv)


def progress(steps):
    """A tqdm bar over the steps if tqdm is installed, else a plain range."""
    try:
        from tqdm import trange
    except ImportError:
        return range(steps)
    return trange(steps, desc="train", unit="step")


def random_windows(rng, ids, batch, seq):
    """``batch`` random windows of ``seq + 1`` ids: inputs and next-id labels."""
    starts = rng.integers(0, len(ids) - seq - 1, size=batch)
    windows = np.stack([ids[s : s + seq + 1] for s in starts])
    return jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, 1:])


def validation_windows(ids, seq):
    """Windows of ``seq + 1`` held-out ids starting every ``seq // 2`` ids, so that every
    character after the first window is scored with at least ``seq // 2`` characters of
    context (the second half of each window); the first window scores all its positions."""
    stride = seq // 2
    starts = range(0, len(ids) - seq - 1, stride)
    windows = np.stack([ids[s : s + seq + 1] for s in starts])
    scored = np.zeros((len(windows), seq), bool)
    scored[0] = True
    scored[1:, seq - stride :] = True
    return jnp.asarray(windows[:, :-1]), windows[:, 1:], scored


def bits_per_char(model, params, windows):
    """Mean cross-entropy of the scored validation characters, in bits."""
    x, y, scored = windows
    logits = fn.predict(model, params, x, batch_size=256)  # the forward alone, eval mode
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
    picked = np.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    return float(-picked[scored].mean() / math.log(2))


def sample(model, params, context, length, temperature, key, vocab):
    """Continue ``context`` (a window of ids of the model's length) one id at a time."""

    @jax.jit
    def next_logits(params, window):
        return fn.predict(model, params, window[None])[0, -1]

    window, out = jnp.asarray(context), []
    for _ in range(length):
        key, sub = jax.random.split(key)
        logits = next_logits(params, window)
        nxt = jax.random.categorical(sub, logits / temperature)
        out.append(int(nxt))
        window = jnp.concatenate([window[1:], nxt[None].astype(window.dtype)])
    return vocab.decode(out)


def save_plot(history, path, baseline):
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(history["train"]) + 1)
    smooth = np.convolve(history["train"], np.ones(20) / 20, mode="valid")
    ax.plot(steps, history["train"], color="C0", alpha=0.3, label="train (per step)")
    ax.plot(steps[19:], smooth, color="C0", label="train (mean of 20 steps)")
    ax.plot(*zip(*history["valid"], strict=True), "o-", color="C1", label="validation")
    ax.axhline(baseline, color="gray", linestyle="--", label="unigram baseline")
    ax.set(xlabel="step", ylabel="bits per character", title="funcnn char-level GPT")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    text = char_data.load_text()
    vocab = char_data.Vocab(text)
    train_ids, valid_ids = char_data.split(vocab.encode(text))
    baseline = char_data.unigram_bits_per_char(train_ids, valid_ids, len(vocab))
    print(
        f"text: {len(text)} characters ({len(train_ids)} train / {len(valid_ids)} validation), "
        f"vocabulary {len(vocab)}; unigram baseline {baseline:.2f} bits per character"
    )

    model = fn.models.gpt(
        len(vocab),
        args.layers,
        args.heads,
        args.features,
        args.seq,
        dropout=args.dropout,
        memory=args.memory,
    )
    loss = fn.losses.softmax_cross_entropy()
    schedule = fn.optim.warmup_cosine_decay_schedule(
        0.0, args.lr, warmup_steps=max(args.steps // 20, 1), decay_steps=args.steps + 1
    )
    optimizer = fn.optim.chain(
        fn.optim.clip_by_global_norm(1.0),
        fn.optim.adamw(schedule, b2=0.99, weight_decay=args.weight_decay),
    )
    ts = fn.train.init_train_state(
        model, optimizer, jax.random.PRNGKey(args.seed), (args.batch, args.seq)
    )
    n_params = sum(a.size for a in jax.tree_util.tree_leaves(ts.params))
    print(
        f"model: GPT, {args.layers} layers, {args.heads} heads, width {args.features}, "
        f"context {args.seq}, memory={args.memory!r}: {n_params} parameters (head tied)"
    )
    step = fn.train.train_step(model, loss, optimizer)
    windows = validation_windows(valid_ids, args.seq)
    rng = np.random.default_rng(args.seed)

    history = {"train": [], "valid": []}
    bar = progress(args.steps)
    for i in bar:
        x, y = random_windows(rng, train_ids, args.batch, args.seq)
        ts, value = step(ts, x, y)
        history["train"].append(float(value) / math.log(2))
        if (i + 1) % args.eval_every == 0 or i + 1 == args.steps:
            bpc = bits_per_char(model, ts.params, windows)
            history["valid"].append((i + 1, bpc))
            if hasattr(bar, "set_postfix"):
                shown = {"train": f"{history['train'][-1]:.2f}", "valid": f"{bpc:.2f}"}
                # no redraw: the loop's next step draws these beside this step's count
                bar.set_postfix(shown, refresh=False)
            else:
                print(f"step {i + 1}: train {history['train'][-1]:.2f}  valid {bpc:.2f} bits/char")

    save_plot(history, args.plot, baseline)
    context = valid_ids[: args.seq]
    continuation = sample(
        model,
        ts.params,
        context,
        args.sample_length,
        args.temperature,
        jax.random.PRNGKey(args.seed + 1),
        vocab,
    )
    print("--- sample (context from the validation text, then the model) ---")
    print(vocab.decode(context) + "|" + continuation)
    print("---")
    print(f"saved the loss curves to {args.plot}")
    print(f"wall time: {time.perf_counter() - start:.1f} s")
    print(f"validation bits per character: {history['valid'][-1][1]:.2f}")


if __name__ == "__main__":
    main()
