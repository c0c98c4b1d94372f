"""Train a small CNN on scikit-learn's 8x8 digits: conv, batchnorm, relu, pool, dropout, dense.

The model is wide: batchnorm keeps running statistics in `state` and dropout draws its
mask from the key in `Ctx`. The jit-compiled train step threads both explicitly:

    params, state, opt_state, loss = step(params, state, opt_state, x, y, key)

Evaluation runs in eval mode (`Ctx(train=False)`): dropout is the identity and batchnorm
uses the running statistics the training steps accumulated.

Run:  python examples/digits_cnn.py [--epochs 40] [--batch-size 32] [--lr 3e-3]
      [--seed 0] [--plot examples/digits_cnn.png]
Saves a figure of the learned first-layer filters and the loss curve, by default beside
this script (examples/digits_cnn.png, ignored by git).
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
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot", default=str(HERE / "digits_cnn.png"), help="where to save the figure"
    )
    return parser.parse_args()


def make_model():
    return fn.sequential(
        fn.conv2d(16, 3, padding="SAME"), fn.batchnorm(), fn.relu(),  # 8x8x16
        fn.max_pool2d(2),                                              # 4x4x16
        fn.conv2d(32, 3, padding="SAME"), fn.batchnorm(), fn.relu(),  # 4x4x32
        fn.max_pool2d(2),                                              # 2x2x32
        fn.flatten(), fn.dropout(0.3), fn.dense(10),
    )  # fmt: skip


def save_figure(kernel, losses, path):
    """First-layer filters (3x3, one input channel) and the per-epoch training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = kernel.shape[-1]
    cols = int(np.ceil(np.sqrt(n)))
    fig = plt.figure(figsize=(11, 5))
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.2])
    for i, ax in enumerate(left.subplots(cols, cols).ravel()):
        if i < n:
            ax.imshow(kernel[:, :, 0, i], cmap="gray", interpolation="nearest")
        ax.set_axis_off()
    left.suptitle(f"first-layer filters ({n} of 3x3)")
    ax = right.subplots()
    ax.plot(np.arange(1, len(losses) + 1), losses)
    ax.set(xlabel="epoch", ylabel="cross-entropy", title="training loss", yscale="log")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    args = parse_args()
    start = time.perf_counter()
    x_train, x_test, y_train, y_test = load_data(args.seed, images=True)
    print(f"digits: {len(x_train)} train / {len(x_test)} test images of shape {x_train.shape[1:]}")

    model = make_model()
    loss = fn.losses.softmax_cross_entropy()
    optimizer = fn.optim.adam(args.lr)
    key, init_key = jax.random.split(jax.random.PRNGKey(args.seed))
    params, state, _ = model.init(init_key, (args.batch_size, *x_train.shape[1:]))
    print(fn.summary(model, (args.batch_size, *x_train.shape[1:])))
    opt_state = optimizer.init(params)
    step = fn.train.train_step(model, loss, optimizer)  # wide model: takes state and a key

    epoch_losses = []
    bar = progress(args.epochs)
    for _ in bar:
        key, shuffle_key = jax.random.split(key)
        values = []
        for xb, yb in fn.train.batches(
            shuffle_key, x_train, y_train, args.batch_size, drop_last=True
        ):
            key, step_key = jax.random.split(key)
            params, state, opt_state, value = step(params, state, opt_state, xb, yb, step_key)
            values.append(value)
        epoch_losses.append(float(np.mean(values)))
        if hasattr(bar, "set_postfix"):
            # no redraw: the loop's next step draws these beside this step's count
            bar.set_postfix(loss=f"{epoch_losses[-1]:.4f}", refresh=False)

    test = fn.train.evaluate(model, loss, params, x_test, y_test, state)
    save_figure(np.asarray(params[0]["w"]), epoch_losses, args.plot)
    print(f"final train loss: {epoch_losses[-1]:.4f}, test loss: {test['loss']:.4f}")
    print(f"saved the first-layer filters and the loss curve to {args.plot}")
    print(f"wall time: {time.perf_counter() - start:.1f} s")
    print(f"test accuracy: {test['accuracy']:.4f}")


if __name__ == "__main__":
    main()
