"""Train a character-level LSTM language model on standard-library docstrings with funcnn.

Every gradient comes from funcnn's hand-written backward passes, including the LSTM's
backpropagation through time (no jax.grad). The model reads characters and predicts the
next one:

    ids (B, T) -> embedding -> lstm (carry in, carry out) -> dense -> logits (B, T, V)

Truncated BPTT: the training text is cut into B parallel streams (char_data.streams), and
each step trains on the next T characters of every stream. The LSTM's carry goes on from
one chunk to the next (the model sees an unbroken text), while the gradient stops at the
chunk boundary (the returned carry gets a zero cotangent). Gradients are clipped to a
global norm (funcnn.optim.clip_by_global_norm, chained with Adam).

The text is the docstrings of a fixed list of standard-library modules (see
examples/char_data.py): it is on every machine with Python, no download. The last 10% is
the validation text. The script prints the unigram baseline (the validation text's bits
per character under the training text's character frequencies), the validation bits per
character during and after training, and a few lines sampled from the model one step at
a time with ``lstm_cell`` (the LSTM's params drive the cell), and saves the loss curves.

Run:  python examples/char_lstm.py [--steps 600] [--hidden 192] [--batch 32] [--seq 64]
      [--lr 3e-3] [--clip 1.0] [--seed 0] [--plot examples/char_lstm.png]
The plot goes beside this script by default (examples/char_lstm.png, ignored by git).
Needs matplotlib for the plot (and tqdm for the progress bar).
"""

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


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps (chunks)")
    parser.add_argument("--batch", type=int, default=32, help="parallel streams B")
    parser.add_argument("--seq", type=int, default=64, help="characters per chunk T")
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--clip", type=float, default=1.0, help="max global gradient norm")
    parser.add_argument("--evals", type=int, default=5, help="validation passes in training")
    parser.add_argument("--sample", type=int, default=400, help="characters to sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=str(HERE / "char_lstm.png"))
    return parser.parse_args()


def build(vocab_size, args):
    """The three layers; each is used through its own forward/backward below."""
    return {
        "embed": fn.embedding(vocab_size, args.embed),
        "lstm": fn.lstm(args.hidden, initial_carry=True, return_carry=True),
        "out": fn.dense(vocab_size),
    }


def make_functions(layers, loss, optimizer):
    emb, rnn, out = layers["embed"], layers["lstm"], layers["out"]

    def forward(params, ids, carry):
        e, c_emb = emb.forward(params["embed"], ids)
        (h, carry), c_rnn = rnn.forward(params["lstm"], (e, carry))
        logits, c_out = out.forward(params["out"], h)
        return logits, carry, (c_emb, c_rnn, c_out)

    def train_step(params, opt_state, carry, ids, targets):
        logits, new_carry, (c_emb, c_rnn, c_out) = forward(params, ids, carry)
        value, c_loss = loss.forward(logits, targets)
        # Backward, the forward in reverse. The carry handed to the next chunk gets a zero
        # cotangent: truncated BPTT stops the gradient at the chunk boundary.
        dh, g_out = out.backward(params["out"], c_out, loss.backward(c_loss))
        zero = jax.tree_util.tree_map(jnp.zeros_like, new_carry)
        (de, _dcarry0), g_rnn = rnn.backward(params["lstm"], c_rnn, (dh, zero))
        _, g_emb = emb.backward(params["embed"], c_emb, de)  # ids: no gradient
        grads = {"embed": g_emb, "lstm": g_rnn, "out": g_out}
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return fn.optim.apply_updates(params, updates), opt_state, new_carry, value

    def eval_step(params, carry, ids, targets):
        logits, carry, _ = forward(params, ids, carry)
        return carry, loss.forward(logits, targets)[0]

    return (
        jax.jit(train_step, donate_argnums=(0, 1, 2)),
        jax.jit(eval_step, donate_argnums=1),
    )


def zero_carry(batch, hidden):
    return jnp.zeros((batch, hidden), jnp.float32), jnp.zeros((batch, hidden), jnp.float32)


def bits_per_char(eval_step, params, streams, seq, hidden):
    """Mean cross-entropy over every next-character prediction of ``streams``, in bits;
    the carry goes on across the chunks, as in training."""
    carry, total, count = zero_carry(streams.shape[0], hidden), 0.0, 0
    for t in range(0, streams.shape[1] - 1 - seq + 1, seq):
        carry, value = eval_step(
            params, carry, streams[:, t : t + seq], streams[:, t + 1 : t + 1 + seq]
        )
        total, count = total + float(value), count + 1
    return total / count / math.log(2)


def sample(layers, params, vocab, prompt, length, key, temperature=0.8):
    """Sample ``length`` characters one step at a time with ``lstm_cell``, which runs on the
    trained LSTM's params; the prompt is read first to set the state."""
    cell = fn.lstm_cell(params["lstm"]["w_h"].shape[0])
    emb, out = layers["embed"], layers["out"]

    def step(carry, id_):
        e, _ = emb.forward(params["embed"], id_[None])
        (h, carry), _ = cell.forward(params["lstm"], (e, carry))
        logits, _ = out.forward(params["out"], h)
        return carry, logits[0]

    step = jax.jit(step)
    carry = zero_carry(1, params["lstm"]["w_h"].shape[0])
    for id_ in vocab.encode(prompt):
        carry, logits = step(carry, jnp.asarray(id_))
    ids = []
    for k in jax.random.split(key, length):
        id_ = jax.random.categorical(k, logits / temperature)
        ids.append(int(id_))
        carry, logits = step(carry, id_)
    return prompt + vocab.decode(ids)


def progress(steps):
    try:
        from tqdm import trange
    except ImportError:
        return range(steps)
    return trange(steps, desc="train", unit="step")


def save_plot(history, path):
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = np.asarray([float(v) for v in history["train"]]) / math.log(2)
    ax.plot(np.arange(1, len(train) + 1), train, alpha=0.35, label="train (per chunk)")
    window = max(1, len(train) // 25)
    if len(train) >= window:
        smooth = np.convolve(train, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window, len(train) + 1), smooth, label=f"train ({window}-step mean)")
    steps, bpc = zip(*history["valid"], strict=True)
    ax.plot(steps, bpc, "o-", label="validation")
    ax.axhline(history["unigram"], color="gray", ls="--", label="unigram baseline")
    ax.set(xlabel="step", ylabel="bits per character", title="funcnn char-LSTM")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    args = parse_args()
    start = time.perf_counter()
    text = char_data.load_text()
    vocab = char_data.Vocab(text)
    train_ids, valid_ids = char_data.split(vocab.encode(text))
    unigram = char_data.unigram_bits_per_char(train_ids, valid_ids, len(vocab))
    train_streams = char_data.streams(train_ids, args.batch)  # (B, L)
    valid_streams = char_data.streams(valid_ids, args.batch)
    print(
        f"text: {len(text)} characters of standard-library docstrings, {len(vocab)} distinct; "
        f"{len(train_ids)} train / {len(valid_ids)} validation"
    )
    print(f"unigram baseline: {unigram:.2f} bits per character")

    layers = build(len(vocab), args)
    key = jax.random.PRNGKey(args.seed)
    key, *keys = jax.random.split(key, 4)
    params = {}
    params["embed"], e_shape = layers["embed"].init(keys[0], (args.batch, args.seq))
    carry_shape = ((args.batch, args.hidden),) * 2
    params["lstm"], (h_shape, _) = layers["lstm"].init(keys[1], (e_shape, carry_shape))
    params["out"], _ = layers["out"].init(keys[2], h_shape)
    n_params = sum(p.size for p in jax.tree_util.tree_leaves(params))
    print(
        f"model: embedding {args.embed} -> lstm {args.hidden} -> dense {len(vocab)} "
        f"({n_params} parameters); {args.batch} streams x {args.seq} characters per step"
    )

    loss = fn.losses.softmax_cross_entropy()  # logits (B, T, V), labels (B, T)
    optimizer = fn.optim.chain(fn.optim.clip_by_global_norm(args.clip), fn.optim.adam(args.lr))
    opt_state = optimizer.init(params)
    train_step, eval_step = make_functions(layers, loss, optimizer)

    history = {"train": [], "valid": [], "unigram": unigram}
    eval_at = {round(args.steps * (i + 1) / args.evals) for i in range(args.evals)}
    positions = range(0, train_streams.shape[1] - 1 - args.seq + 1, args.seq)
    carry = zero_carry(args.batch, args.hidden)
    bar = progress(args.steps)
    for step in bar:
        t = positions[step % len(positions)]
        if t == 0:  # back at the start of the streams: start from a fresh state
            carry = zero_carry(args.batch, args.hidden)
        ids, targets = (
            train_streams[:, t : t + args.seq],
            train_streams[:, t + 1 : t + 1 + args.seq],
        )
        params, opt_state, carry, value = train_step(params, opt_state, carry, ids, targets)
        history["train"].append(value)  # a device scalar: reading it would wait for the step
        if (step + 1) % 10 and step + 1 not in eval_at:
            continue
        shown = {"train_bpc": f"{float(value) / math.log(2):.2f}"}
        if step + 1 in eval_at:
            valid_bpc = bits_per_char(eval_step, params, valid_streams, args.seq, args.hidden)
            history["valid"].append((step + 1, valid_bpc))
            shown["valid_bpc"] = f"{valid_bpc:.2f}"
        if hasattr(bar, "set_postfix"):
            # no redraw: the loop's next step draws these beside this step's count
            bar.set_postfix(shown, refresh=False)
        elif step + 1 in eval_at:
            print(f"step {step + 1}: " + "  ".join(f"{k}={v}" for k, v in shown.items()))

    key, sample_key = jax.random.split(key)
    print("sampled text (prompt 'Return the'):")
    print(sample(layers, params, vocab, "Return the", args.sample, sample_key))
    print("---")
    save_plot(history, args.plot)
    print(f"saved the loss curves to {args.plot}")
    print(f"unigram baseline: {unigram:.2f} bits per character")
    print(f"wall time: {time.perf_counter() - start:.1f} s")
    print(f"validation bits per character: {history['valid'][-1][1]:.2f}")


if __name__ == "__main__":
    main()
