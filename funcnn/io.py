"""Save and load pytrees (params, state, optimizer state) to one ``.npz`` file.

Saving is atomic: the file is written beside its destination and renamed over it, so
a crash never leaves half a checkpoint. Loading needs a template tree (``like``) of the
same structure, e.g. freshly initialized params, and refuses a file whose leaf paths,
shapes or dtypes differ from it, naming the first difference.
"""

from __future__ import annotations

import os
import tempfile

import jax
import numpy as np

_PATHS = "__paths__"


def _flatten(tree):
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(path) for path, _ in flat], [leaf for _, leaf in flat], treedef


def save(path: str | os.PathLike, tree) -> None:
    """Write every array leaf of ``tree`` to ``path`` (an ``.npz`` file), atomically.

    >>> import jax.numpy as jnp, tempfile, os
    >>> from funcnn.io import save, load
    >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    >>> f = os.path.join(tempfile.mkdtemp(), "params.npz")
    >>> save(f, params)
    >>> load(f, like=params)["w"].shape
    (2, 3)
    """
    paths, leaves, _ = _flatten(tree)
    arrays = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays[_PATHS] = np.array(paths, dtype=str)
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path: str | os.PathLike, like):
    """Read a tree saved by :func:`save`, checked against the template ``like``.

    Raises ``ValueError`` if the saved leaves do not match ``like`` in paths, shapes or
    dtypes. Returns a tree with ``like``'s structure holding the saved arrays.
    """
    paths, leaves, treedef = _flatten(like)
    with np.load(path, allow_pickle=False) as data:
        saved_paths = [str(p) for p in data[_PATHS]]
        if saved_paths != paths:
            missing = [p for p in paths if p not in saved_paths]
            extra = [p for p in saved_paths if p not in paths]
            raise ValueError(
                f"load: {path} does not match the template's structure: "
                f"missing leaves {missing[:5]}, unexpected leaves {extra[:5]}"
                + ("" if missing or extra else " (same leaves in another order)")
            )
        out = []
        for i, (p, ref) in enumerate(zip(paths, leaves, strict=True)):
            arr = data[f"leaf_{i}"]
            if arr.shape != np.shape(ref) or arr.dtype != np.asarray(ref).dtype:
                raise ValueError(
                    f"load: leaf {p} in {path} has shape {arr.shape} and dtype {arr.dtype}, "
                    f"the template has shape {np.shape(ref)} and dtype {np.asarray(ref).dtype}"
                )
            out.append(jax.numpy.asarray(arr))
    return treedef.unflatten(out)


__all__ = ["load", "save"]
