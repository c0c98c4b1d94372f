"""Shared by the character-level examples (char_lstm.py, char_gpt.py): a text that is on
every machine with Python, its character vocabulary, and the unigram baseline.

The text is the docstrings of a fixed list of standard-library modules and of their public
classes, functions and methods, in a fixed order (``MODULES``, then names sorted). It needs
no download; its exact content depends a little on the Python version, so the numbers in the
docs are for the Python version they state.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np

MODULES = (
    "argparse",
    "bisect",
    "calendar",
    "collections",
    "csv",
    "datetime",
    "decimal",
    "difflib",
    "fractions",
    "functools",
    "heapq",
    "inspect",
    "itertools",
    "json",
    "logging",
    "pathlib",
    "random",
    "shutil",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "zipfile",
)


def _docstrings(module_name: str):
    module = importlib.import_module(module_name)
    if module.__doc__:
        yield inspect.cleandoc(module.__doc__)
    for name in sorted(vars(module)):
        obj = getattr(module, name)
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            doc = obj.__doc__
            if doc:
                yield inspect.cleandoc(doc)
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                member = vars(obj)[attr]
                if not attr.startswith("_") and inspect.isfunction(member) and member.__doc__:
                    yield inspect.cleandoc(member.__doc__)


def load_text() -> str:
    """The corpus: every docstring, separated by blank lines, printable ASCII and newlines."""
    text = "\n\n".join(doc for m in MODULES for doc in _docstrings(m))
    return "".join(ch for ch in text if ch == "\n" or " " <= ch <= "~")


class Vocab:
    """Characters <-> integer ids (sorted characters of the text)."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self._index = {ch: i for i, ch in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self._index[ch] for ch in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def split(ids: np.ndarray, valid_fraction: float = 0.1):
    """The first part for training, the last ``valid_fraction`` for validation."""
    cut = int(len(ids) * (1 - valid_fraction))
    return ids[:cut], ids[cut:]


def unigram_bits_per_char(train_ids: np.ndarray, valid_ids: np.ndarray, vocab_size: int) -> float:
    """Bits per character of the validation text under the training text's character
    frequencies (add-one smoothed): the baseline a sequence model must beat."""
    counts = np.bincount(train_ids, minlength=vocab_size) + 1.0
    log2_p = np.log2(counts / counts.sum())
    return float(-log2_p[valid_ids].mean())


def streams(ids: np.ndarray, batch: int) -> np.ndarray:
    """Cut ``ids`` into ``batch`` contiguous streams of equal length, shape (batch, L).

    Consecutive chunks ``[:, t:t + T]`` of the streams continue each other, which is what
    truncated backpropagation through time needs to carry the state across chunks."""
    length = len(ids) // batch
    return ids[: batch * length].reshape(batch, length)
