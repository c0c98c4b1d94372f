"""Train an MLP on scikit-learn's 8x8 handwritten digits with funcnn.

Every gradient comes from funcnn's hand-written backward passes (no jax.grad): the
train step chains the cross-entropy's backward into the MLP's, adds Adam, and
jax.jit compiles the whole step once.

Steps: load the 1797 bundled digits (no download), standardize the 64 pixel features
with statistics of the training split, train with a progress bar over the epochs,
print the test accuracy and save a plot of the loss and accuracy curves.

Run:  python examples/digits_mlp.py [--epochs 30] [--batch-size 64] [--lr 1e-3]
      [--seed 0] [--plot examples/digits_mlp.png]
The plot goes beside this script by default (examples/digits_mlp.png, ignored by git).
Needs the `examples` extra: scikit-learn, matplotlib (and tqdm for the bar).
"""

import argparse
import pathlib
import time

import jax
import numpy as np
from digits_common import load_data, progress

import funcnn as fn

HERE = pathlib.Path(__file__).resolve().parent


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot", default=str(HERE / "digits_mlp.png"), help="where to save the curves"
    )
    return parser.parse_args()


def save_plot(history, path):
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history["loss"], label="train (mean batch loss)")
    ax_loss.plot(epochs, history["test_loss"], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.plot(epochs, history["train_accuracy"], label="train")
    ax_acc.plot(epochs, history["test_accuracy"], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("funcnn MLP on the 8x8 digits")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    args = parse_args()
    start = time.perf_counter()
    x_train, x_test, y_train, y_test = load_data(args.seed)
    print(f"digits: {len(x_train)} train / {len(x_test)} test, {x_train.shape[1]} features")

    model = fn.sequential(
        fn.dense(128), fn.relu(),
        fn.dense(64), fn.relu(),
        fn.dense(10),
    )  # fmt: skip
    loss = fn.losses.softmax_cross_entropy()  # integer labels, mean over the batch
    optimizer = fn.optim.adam(args.lr)

    key = jax.random.PRNGKey(args.seed)
    key, init_key = jax.random.split(key)
    params, out_shape = model.init(init_key, (args.batch_size, x_train.shape[1]))
    n_params = sum(p.size for p in jax.tree_util.tree_leaves(params))
    print(f"model: 64 -> 128 -> 64 -> 10 ({n_params} parameters), output shape {out_shape}")
    opt_state = optimizer.init(params)

    # One jit-compiled step: forward, loss backward, model backward, Adam, apply.
    # It donates params and opt_state, so always continue with the returned ones.
    step = fn.train.train_step(model, loss, optimizer)

    history = {"loss": [], "test_loss": [], "train_accuracy": [], "test_accuracy": []}
    bar = progress(args.epochs)
    for epoch in bar:
        key, shuffle_key = jax.random.split(key)
        losses = []
        for xb, yb in fn.train.batches(
            shuffle_key, x_train, y_train, args.batch_size, drop_last=True
        ):
            params, opt_state, value = step(params, opt_state, xb, yb)
            losses.append(value)
        train = fn.train.evaluate(model, loss, params, x_train, y_train)
        test = fn.train.evaluate(model, loss, params, x_test, y_test)
        train_loss = float(np.mean(losses))
        history["loss"].append(train_loss)
        history["test_loss"].append(test["loss"])
        history["train_accuracy"].append(train["accuracy"])
        history["test_accuracy"].append(test["accuracy"])
        shown = {"loss": f"{train_loss:.4f}", "test_acc": f"{test['accuracy']:.4f}"}
        if hasattr(bar, "set_postfix"):
            # no redraw: the loop's next step draws these beside this step's count
            bar.set_postfix(shown, refresh=False)
        else:
            print(f"epoch {epoch + 1}: " + "  ".join(f"{k}={v}" for k, v in shown.items()))

    # (fn.train.fit(model, loss, optimizer, params, x_train, y_train, key=key, ...) runs
    # this same loop in one call.)
    save_plot(history, args.plot)
    print(f"final train loss: {history['loss'][-1]:.4f}, train accuracy: {train['accuracy']:.4f}")
    print(f"saved loss and accuracy curves to {args.plot}")
    print(f"wall time: {time.perf_counter() - start:.1f} s")
    print(f"test accuracy: {history['test_accuracy'][-1]:.4f}")


if __name__ == "__main__":
    main()
