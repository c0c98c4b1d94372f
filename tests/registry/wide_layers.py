"""Cases for the normalization, dropout and embedding layers.

``check_layer`` runs wide layers with ``Ctx(fixed key, train=case.train)``, so dropout draws
the same mask in every evaluation and its backward is checked against that mask.

The norms initialize ``scale = 1, offset = 0`` and batchnorm's state to ``mean = 0,
var = 1``; with those values a wrong ``scale`` factor or a mixed-up running statistic would
go unnoticed, so most cases perturb them at init (``_perturbed``).
"""

import dataclasses

import jax
import jax.numpy as jnp

import funcnn as fn
from funcnn.layers.dropout import dropout
from funcnn.layers.embedding import embedding
from funcnn.layers.normalization import batchnorm, layernorm

from . import Case


def _perturbed(layer):
    """The same layer with random ``scale``/``offset`` and, for batchnorm, random statistics."""

    def perturb(key, tree, positive):
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        keys = jax.random.split(key, max(len(leaves), 1))
        out = []
        for k, leaf in zip(keys, leaves, strict=True):
            noise = jax.random.normal(k, leaf.shape, leaf.dtype)
            out.append(leaf + (0.5 * jnp.abs(noise) if positive else noise))
        return treedef.unflatten(out)

    def init(key, input_shape):
        k_init, k_params, k_mean, k_var = jax.random.split(key, 4)
        if layer.wide:
            params, state, shape = layer.init(k_init, input_shape)
            state = {
                "mean": perturb(k_mean, state["mean"], False),
                "var": perturb(k_var, state["var"], True),
            }
            return perturb(k_params, params, False), state, shape
        params, shape = layer.init(k_init, input_shape)
        return perturb(k_params, params, False), shape

    return dataclasses.replace(layer, init=init)


def _ids(shape, vocab):
    """Random ids in [0, vocab) with the first two ids equal, so some id repeats."""

    def make(key):
        ids = jax.random.randint(key, shape, 0, vocab)
        flat = ids.reshape(-1)
        return flat.at[1].set(flat[0]).reshape(shape)

    return make


CASES = [
    # --- dropout (train mode with a fixed key, and eval mode) --------------------------
    Case("dropout_0.5", lambda: dropout(0.5), (6, 5), ("dropout",)),
    Case("dropout_0.1_3d", lambda: dropout(0.1), (2, 3, 4), ("dropout",)),
    Case("dropout_0.9_4d", lambda: dropout(0.9), (2, 4, 4, 3), ("dropout",)),
    Case("dropout_0", lambda: dropout(0.0), (3, 4), ("dropout",)),
    Case("dropout_eval", lambda: dropout(0.5), (4, 5), ("dropout",), train=False),
    # --- batchnorm ----------------------------------------------------------------------
    Case("batchnorm_2d", batchnorm, (8, 3), ("batchnorm",)),
    Case("batchnorm_2d_perturbed", lambda: _perturbed(batchnorm()), (6, 4), ("batchnorm",)),
    Case(
        "batchnorm_4d_nhwc",
        lambda: _perturbed(batchnorm(momentum=0.3, eps=1e-3)),
        (2, 3, 3, 4),
        ("batchnorm",),
    ),
    Case("batchnorm_3d_nwc", lambda: _perturbed(batchnorm()), (2, 5, 3), ("batchnorm",)),
    Case(
        "batchnorm_2d_eval",
        lambda: _perturbed(batchnorm()),
        (5, 3),
        ("batchnorm",),
        train=False,
    ),
    Case(
        "batchnorm_4d_eval",
        lambda: _perturbed(batchnorm()),
        (2, 3, 2, 4),
        ("batchnorm",),
        train=False,
    ),
    # --- layernorm ----------------------------------------------------------------------
    Case("layernorm", layernorm, (4, 6), ("layernorm",)),
    Case("layernorm_perturbed", lambda: _perturbed(layernorm()), (3, 5), ("layernorm",)),
    Case("layernorm_3d_last", lambda: _perturbed(layernorm()), (2, 3, 4), ("layernorm",)),
    Case(
        "layernorm_last_two",
        lambda: _perturbed(layernorm(axis=(-2, -1))),
        (2, 3, 4),
        ("layernorm",),
    ),
    Case(
        "layernorm_axis1_of_3",
        lambda: _perturbed(layernorm(axis=1)),
        (3, 4, 2),
        ("layernorm",),
    ),
    Case(
        "layernorm_gap_axes",
        lambda: _perturbed(layernorm(eps=1e-3, axis=(1, 3))),
        (2, 3, 2, 4),
        ("layernorm",),
    ),
    # --- embedding ----------------------------------------------------------------------
    Case("embedding_1d", lambda: embedding(7, 3), (5,), ("embedding",), make_x=_ids((5,), 7)),
    Case(
        "embedding_2d",
        lambda: embedding(10, 4),
        (3, 6),
        ("embedding",),
        make_x=_ids((3, 6), 10),
    ),
    Case(
        "embedding_3d_small_vocab",
        lambda: embedding(2, 5),
        (2, 3, 4),
        ("embedding",),
        make_x=_ids((2, 3, 4), 2),
    ),
    # --- wide layers inside combinators -------------------------------------------------
    Case(
        "sequential_dense_batchnorm_dropout",
        lambda: fn.sequential(fn.dense(5), _perturbed(batchnorm()), fn.relu(), dropout(0.3)),
        (6, 3),
        ("batchnorm", "dropout"),
    ),
    Case(
        "residual_layernorm_dropout",
        lambda: fn.residual(fn.sequential(_perturbed(layernorm()), fn.dense(4), dropout(0.2))),
        (3, 4),
        ("layernorm", "dropout"),
    ),
    Case(
        "sequential_named_wide",
        lambda: fn.sequential(body=fn.dense(5), norm=_perturbed(batchnorm()), drop=dropout(0.3)),
        (6, 3),
        ("sequential", "batchnorm", "dropout"),
    ),
    Case(
        "embedding_then_layernorm",
        lambda: fn.sequential(embedding(9, 4), _perturbed(layernorm())),
        (2, 5),
        ("embedding", "layernorm"),
        make_x=_ids((2, 5), 9),
    ),
]
