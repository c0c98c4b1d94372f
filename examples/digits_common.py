"""Shared by the digits examples: the bundled 8x8 digits, split and standardized, and a
progress bar that falls back to a plain range when tqdm is missing."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def load_data(seed, images=False):
    """Standardized float32 inputs and int32 labels, split 80/20 (stratified).

    ``images=False`` gives (N, 64) feature vectors standardized per pixel with statistics
    of the training split; ``images=True`` gives (N, 8, 8, 1) NHWC images scaled to
    zero mean and unit variance overall (a convolution shares weights across pixels).
    """
    digits = load_digits()
    x = digits.data.astype(np.float32)  # (1797, 64), pixel intensities 0..16
    y = digits.target.astype(np.int32)  # (1797,), classes 0..9
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y
    )
    if images:
        mean, std = x_train.mean(), x_train.std()
        x_train, x_test = ((a - mean) / std for a in (x_train, x_test))
        return x_train.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1), y_train, y_test
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 0, std, 1.0)  # some border pixels are 0 in every training image
    return (x_train - mean) / std, (x_test - mean) / std, y_train, y_test


def progress(epochs):
    """A tqdm bar over the epochs if tqdm is installed, else a plain range.

    Iterated, the bar counts an epoch when the loop asks for the next one, so an epoch's
    numbers are set with ``set_postfix(..., refresh=False)``: the advance that follows
    draws them beside that epoch's count (a refreshing ``set_postfix`` would draw them
    beside the previous epoch's count).
    """
    try:
        from tqdm import trange
    except ImportError:
        return range(epochs)
    return trange(epochs, desc="train", unit="epoch")
