"""Cases for the attention layers, the output projection of a language model and tying.

Each case combines several options (input form, causal rule, mask, memory mode, block
size, head size) to keep the number of compilations small. The masks have holes and
rows with nothing to attend to (a fully masked batch element, or a causal first row
whose only key is masked), which must give zero outputs and gradients, not NaN.
"""

import jax
import jax.numpy as jnp

import funcnn as fn
from funcnn.layers.attention import (
    multi_head_attention,
    positional_embedding,
    scaled_dot_product_attention,
)
from funcnn.layers.embedding import embedding, unembedding

from . import Case


def _floats_and_mask(shapes, mask):
    """Standard-normal float32 inputs of ``shapes`` followed by the fixed boolean mask."""

    def make(key):
        keys = jax.random.split(key, len(shapes))
        xs = tuple(jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, shapes, strict=True))
        return (*xs, jnp.array(mask, bool))

    return make


def _ids(shape, vocab):
    return lambda key: jax.random.randint(key, shape, 0, vocab)


# Batch element 0 attends to keys 0, 1, 3; batch element 1 to none (its rows are empty).
CROSS_MASK = [[True, True, False, True, False], [False] * 5]
# Key 0 of batch element 0 is masked: with the causal rule its query 0 has nothing left.
SELF_MASK = [[False, True, True, False, True], [True, True, False, True, True]]

CASES = [
    Case(
        "mha_self_causal_saved",
        lambda: multi_head_attention(2, causal=True),
        (2, 4, 6),
        ("multi_head_attention",),
    ),
    Case(
        "mha_cross_mask_recompute_nobias",
        lambda: multi_head_attention(
            2, head_dim=3, out_features=5, use_bias=False, memory="recompute", block_size=2
        ),
        ((2, 3, 4), (2, 5, 6), (2, 5)),
        ("multi_head_attention",),
        make_x=_floats_and_mask(((2, 3, 4), (2, 5, 6)), CROSS_MASK),
    ),
    Case(
        "mha_self_mask_causal_recompute",
        lambda: multi_head_attention(3, head_dim=2, causal=True, memory="recompute", block_size=2),
        ((2, 5, 4), (2, 5)),
        ("multi_head_attention",),
        make_x=_floats_and_mask(((2, 5, 4),), SELF_MASK),
    ),
    Case(
        "sdpa_causal_mask_recompute",
        lambda: scaled_dot_product_attention(causal=True, memory="recompute", block_size=3),
        ((2, 2, 5, 3), (2, 2, 5, 3), (2, 2, 5, 4), (2, 5)),
        ("scaled_dot_product_attention",),
        make_x=_floats_and_mask(((2, 2, 5, 3), (2, 2, 5, 3), (2, 2, 5, 4)), SELF_MASK),
    ),
    Case(
        "positional_embedding",
        lambda: positional_embedding(6),
        (2, 4, 3),
        ("positional_embedding",),
    ),
    Case(
        "tied_dense_twice",
        lambda: fn.tied(fn.sequential(fn.dense(3), fn.tanh(), fn.dense(3)), ((0,), (2,))),
        (4, 3),
        ("tied",),
    ),
    Case(
        "tied_embedding_and_head",
        lambda: fn.tied(
            fn.sequential(embedding(6, 4), fn.tanh(), unembedding(6)),
            ((0, "table"), (2, "table")),
        ),
        (3, 5),
        ("tied", "unembedding"),
        make_x=_ids((3, 5), 6),
    ),
]
