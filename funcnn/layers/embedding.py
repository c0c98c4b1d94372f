"""Embedding: look rows of a learned table up by integer id.

The input is integer ids, which get no gradient: ``backward`` returns ``dx = None``, the
library-wide rule for integer inputs (ids, labels). The table's gradient is a scatter-add.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from funcnn.core import Layer, fold_leading_axes
from funcnn.initializers import Initializer, normal
from funcnn.precision import accumulation_dtype
from funcnn.validation import (
    check_array,
    check_cotangent,
    check_float,
    check_input_shape,
    check_params,
    check_positive_int,
)


def embedding(
    vocab: int,
    features: int,
    *,
    table_init: Initializer = normal(1.0),
    dtype=jnp.float32,
) -> Layer:
    """Map integer ids to learned vectors: ``y[..., :] = table[ids[...], :]``.

    Args:
      vocab: the number of distinct ids; valid ids are ``0 <= id < vocab``.
      features: the size of each vector.
      table_init: initializer for the table, called with ``(key, (vocab, features), dtype)``
        (default standard normal, as PyTorch's ``nn.Embedding``).
      dtype: parameter dtype.

    Shapes: ``ids (N, ...) -> y (N, ..., features)`` for integer ids of any batch shape;
    params ``{"table": (vocab, features)}``. ``init`` takes the shape of the ids.

    Backward: every occurrence of an id adds its output cotangent to that id's row, so
    repeated ids accumulate (a scatter-add)::

        dtable = zeros_like(table).at[ids].add(dy)     # dtable[v] = sum_{i: ids[i] = v} dy[i]
        dx     = None                                  # integer input: no gradient

    Out-of-range ids (negative or ``>= vocab``) raise ``ValueError`` when the ids are
    concrete (eager calls). Under ``jax.jit`` values cannot be checked: such an id gives a
    row of NaN in ``y`` and contributes nothing to ``dtable``, so it cannot go unnoticed
    (JAX's default indexing would silently clamp or wrap it).

    Cache: ``ids``.

    >>> import jax, jax.numpy as jnp
    >>> from funcnn.layers.embedding import embedding
    >>> layer = embedding(vocab=5, features=2)
    >>> params, out_shape = layer.init(jax.random.PRNGKey(0), (3,))
    >>> out_shape
    (3, 2)
    >>> y, ids = layer.forward(params, jnp.array([4, 1, 4]))
    >>> dx, grads = layer.backward(params, ids, jnp.ones((3, 2)))
    >>> dx is None, grads["table"][:, 0]   # id 4 appears twice
    (True, Array([0., 1., 0., 0., 2.], dtype=float32))
    """
    vocab = check_positive_int("embedding", "vocab", vocab)
    features = check_positive_int("embedding", "features", features)

    def init(key, input_shape):
        input_shape = check_input_shape("embedding", input_shape, min_ndim=1)
        return {"table": table_init(key, (vocab, features), dtype)}, (*input_shape, features)

    def forward(params, ids):
        _check_ids(ids, vocab)
        check_params("embedding", params, {"table": (vocab, features)})
        # mode="fill": an out-of-range id reads a row of NaN rather than a clamped row.
        return jnp.take(params["table"], _in_range(ids, vocab), axis=0, mode="fill"), ids

    def backward(params, ids, dy):
        check_cotangent("embedding", dy, (*ids.shape, features))
        table = params["table"]
        rows = _in_range(ids, vocab).reshape(-1)
        # Scatter-add: row v of dtable collects dy[i] for every position i with ids[i] == v.
        # mode="drop": out-of-range ids contribute nothing (they got NaN rows in forward).
        # The sums in float32 for bfloat16/float16 tables (accumulation_dtype).
        acc = accumulation_dtype(table.dtype)
        dtable = (
            jnp.zeros(table.shape, acc)
            .at[rows]
            .add(dy.reshape(-1, features).astype(acc), mode="drop")
        )
        return None, {"table": dtable.astype(table.dtype)}

    return Layer(init, forward, backward, name="embedding")


def _in_range(ids, vocab: int):
    """Send negative ids past the end so gather/scatter treat them as out of range.

    JAX (like NumPy) wraps negative indices; an id of -1 must not silently read the last row.
    """
    if jnp.issubdtype(ids.dtype, jnp.unsignedinteger):
        return ids
    ids = ids.astype(jnp.promote_types(ids.dtype, jnp.int32))  # room for `vocab` in int8 ids
    return jnp.where(ids < 0, vocab, ids)


def _check_ids(ids, vocab: int):
    check_array("embedding", "ids", ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(
            f"embedding: ids must be an integer array, got dtype {ids.dtype} "
            f"(shape {tuple(ids.shape)}); cast them with ids.astype(jnp.int32)"
        )
    if isinstance(ids, jax.core.Tracer) or ids.size == 0:
        return  # values are unknown while tracing (under jit they give NaN rows instead)
    values = np.asarray(ids)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= vocab:
        raise ValueError(
            f"embedding: ids must lie in [0, {vocab}) (vocab={vocab}), got ids in "
            f"[{low}, {high}] (ids of shape {tuple(ids.shape)})"
        )


def unembedding(vocab: int, *, table_init: Initializer = normal(0.02), dtype=jnp.float32) -> Layer:
    """Scores of every id for a vector: ``logits = x table^T``, the transpose of an embedding.

    The output layer of a language model. Its table has :func:`embedding`'s layout,
    ``(vocab, features)``, so ``funcnn.tied`` can share one table between the two
    (weight tying); it also works on its own, as a bias-free linear layer stored
    transposed.

    Args:
      vocab: the number of ids scored.
      table_init: initializer of the table (default normal with std 0.02).
      dtype: parameter dtype.

    Shapes: ``x (..., features) -> logits (..., vocab)``; params
    ``{"table": (vocab, features)}``.

    Backward (leading axes folded into rows)::

        dx     = dlogits table            (..., features)
        dtable = dlogits^T x              (vocab, features), summed over the rows

    Cache: ``x``.

    >>> import jax, jax.numpy as jnp
    >>> from funcnn.layers.embedding import unembedding
    >>> layer = unembedding(vocab=5)
    >>> params, out_shape = layer.init(jax.random.PRNGKey(0), (2, 3, 4))
    >>> out_shape, params["table"].shape
    ((2, 3, 5), (5, 4))
    """
    name = "unembedding"
    check_positive_int(name, "vocab", vocab)

    def init(key, input_shape):
        input_shape = check_input_shape(name, input_shape, min_ndim=1)
        table = table_init(key, (vocab, input_shape[-1]), dtype)
        return {"table": table}, (*input_shape[:-1], vocab)

    def forward(params, x):
        shape = check_array(name, "x", x, min_ndim=1)
        check_float(name, "x", x)
        table = params.get("table") if isinstance(params, dict) else None
        if not hasattr(table, "shape") or table.ndim != 2:
            raise TypeError(f"{name}: params must be {{'table': (vocab, features)}} made by init")
        if table.shape[1] != shape[-1]:
            raise ValueError(
                f"{name}: the table was made for features={table.shape[1]}, got input of "
                f"shape {shape}"
            )
        check_params(name, params, {"table": (vocab, shape[-1])})
        return x @ table.T, x

    def backward(params, x, dy):
        check_cotangent(name, dy, (*x.shape[:-1], vocab))
        dtable = fold_leading_axes(dy).T @ fold_leading_axes(x)
        return dy @ params["table"], {"table": dtable.astype(params["table"].dtype)}

    return Layer(init, forward, backward, name=name)


__all__ = ["embedding", "unembedding"]
