"""Whole models built from funcnn layers: every backward in them is hand-written.

* :func:`gpt`: a GPT-style decoder-only language model (token and position embeddings,
  pre-layernorm blocks of causal multi-head attention and a GELU MLP with residual
  connections, a final layernorm and an output head tied to the token embedding).

A model is an ordinary :class:`~funcnn.core.Layer`, so ``funcnn.train``, ``funcnn.io``
and ``funcnn.summary`` work on it as on any layer.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from funcnn.combinators import fan_in_sum, graph, tied
from funcnn.core import Layer, check_positive_int
from funcnn.initializers import normal
from funcnn.layers.activations import gelu
from funcnn.layers.attention import multi_head_attention, positional_embedding
from funcnn.layers.dense import dense
from funcnn.layers.dropout import dropout as dropout_layer
from funcnn.layers.embedding import embedding, unembedding
from funcnn.layers.normalization import layernorm

__all__ = ["gpt", "gpt_block"]


def _check_rate(rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"gpt: dropout must be a number in [0, 1), got {rate!r}")
    return float(rate)


def gpt_block(
    heads: int,
    features: int,
    *,
    mlp_ratio: int = 4,
    memory: str = "saved",
    block_size: int = 128,
    dropout: float = 0.0,
    init_std: float = 0.02,
    out_std: float | None = None,
    eps: float = 1e-5,
    dtype=jnp.float32,
) -> Layer:
    """One pre-layernorm transformer block, a :func:`~funcnn.combinators.graph`::

        h = x + attn(ln1(x))                   causal multi-head self-attention
        y = h + proj(gelu(fc(ln2(h))))         the MLP, fc: D -> mlp_ratio D -> D

    Params ``{"ln1", "attn", "ln2", "fc", "proj"}`` (and ``()`` for the parameter-free
    nodes ``"add1"``, ``"gelu"``, ``"add2"``, ``"drop1"``, ``"drop2"``). Weights are
    normal with std ``init_std``; the two projections into the residual stream
    (``attn``'s ``wo`` and ``proj``'s ``w``) use ``out_std`` (GPT-2 takes
    ``init_std / sqrt(2 * layers)``); biases start at zero.

    Backward: the graph's, i.e. every node's hand-written backward in reverse order, with
    the cotangents of ``x`` and ``h`` summed over their two uses (the residual fan-out).

    With ``dropout > 0`` a dropout follows the attention and the MLP (before each
    residual sum) and the block is wide (it takes a state and a ``Ctx``).
    """
    check_positive_int("gpt", "mlp_ratio", mlp_ratio)
    rate = _check_rate(dropout)
    out_std = init_std if out_std is None else out_std
    w = normal(init_std)
    nodes = {
        "ln1": (layernorm(eps, dtype=dtype), "input"),
        "attn": (
            multi_head_attention(
                heads,
                causal=True,
                memory=memory,
                block_size=block_size,
                w_init=w,
                out_init=normal(out_std),
                dtype=dtype,
            ),
            "ln1",
        ),
    }
    attn = "attn"
    if rate:
        nodes["drop1"], attn = (dropout_layer(rate), "attn"), "drop1"
    nodes["add1"] = (fan_in_sum(2), ("input", attn))
    nodes["ln2"] = (layernorm(eps, dtype=dtype), "add1")
    nodes["fc"] = (dense(mlp_ratio * features, w_init=w, dtype=dtype), "ln2")
    nodes["gelu"] = (gelu(), "fc")
    nodes["proj"] = (dense(features, w_init=normal(out_std), dtype=dtype), "gelu")
    mlp = "proj"
    if rate:
        nodes["drop2"], mlp = (dropout_layer(rate), "proj"), "drop2"
    nodes["add2"] = (fan_in_sum(2), ("add1", mlp))
    return graph(nodes, output="add2")


def gpt(
    vocab: int,
    layers: int,
    heads: int,
    features: int,
    max_len: int,
    *,
    mlp_ratio: int = 4,
    memory: str = "saved",
    block_size: int = 128,
    dropout: float = 0.0,
    tie_embeddings: bool = True,
    init_std: float = 0.02,
    eps: float = 1e-5,
    dtype=jnp.float32,
) -> Layer:
    """A GPT-style language model: ids ``(N, T)`` -> next-id logits ``(N, T, vocab)``.

    Args:
      vocab: the number of token ids.
      layers: the number of transformer blocks.
      heads: attention heads per block (``features`` must be divisible by it).
      features: ``D``, the width of the residual stream.
      max_len: the longest sequence (the position table's rows); ``init`` raises for a
        longer one.
      mlp_ratio: the MLP's hidden width is ``mlp_ratio * D``.
      memory: the attention's memory mode, ``"saved"`` or ``"recompute"``.
      block_size: the attention's block size in ``"recompute"`` mode.
      dropout: the rate of the dropout after the embeddings, the attention and the MLP;
        ``0`` (default) leaves dropout out and keeps the model pure.
      tie_embeddings: share the token table between the input embedding and the output
        head (:func:`~funcnn.combinators.tied`); ``False`` gives the head its own table.
      init_std: std of the normal initialization of every weight and table (GPT-2's 0.02);
        the projections into the residual stream use ``init_std / sqrt(2 * layers)``.
      eps: the layernorms' epsilon.
      dtype: parameter dtype.

    The model, a :func:`~funcnn.combinators.graph` (wrapped in ``tied``)::

        h_0 = tok[ids] + pos[:T]                     embedding, positional_embedding
        h_l = block_l(h_{l-1}),  l = 1 .. layers     gpt_block: pre-LN attention + MLP
        logits = ln_f(h_L) tok^T                     unembedding, tied to tok

    Train it with ``funcnn.losses.softmax_cross_entropy()`` on logits ``(N, T, vocab)``
    and labels ``(N, T)`` (the ids shifted by one).

    Params: ``{"tok": {"table"}, "pos": {"table"}, "block0" ... : gpt_block params,
    "ln_f", "head": {"table": Tied(("tok", "table"))}}``. Per block there are
    ``12 D^2 + 13 D`` numbers (attention ``4 D^2 + 4 D``, MLP ``8 D^2 + 5 D``, two
    layernorms ``4 D``), plus ``(vocab + max_len) D + 2 D`` for the embeddings and
    ``ln_f``; the tied head adds none.

    Backward: the graph's, every node's hand-written backward; the token table's gradient
    is the sum of the embedding's scatter-add and the head's ``dlogits^T x`` (the tie).

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> model = fn.models.gpt(vocab=11, layers=2, heads=2, features=16, max_len=8)
    >>> params, out_shape = model.init(jax.random.PRNGKey(0), (4, 8))
    >>> out_shape, params["head"]
    ((4, 8, 11), {'table': Tied(source=('tok', 'table'))})
    >>> ids = jnp.zeros((4, 8), jnp.int32)
    >>> f = jax.jit(fn.train.value_and_grad(model, fn.losses.softmax_cross_entropy()))
    >>> loss, grads = f(params, ids, ids)
    >>> grads["tok"]["table"].shape
    (11, 16)
    """
    for what, value in (
        ("vocab", vocab),
        ("layers", layers),
        ("heads", heads),
        ("features", features),
        ("max_len", max_len),
    ):
        check_positive_int("gpt", what, value)
    if features % heads:
        raise ValueError(
            f"gpt: features={features} must be divisible by heads={heads} (each head gets "
            f"features // heads of them)"
        )
    if not isinstance(tie_embeddings, bool):
        raise TypeError(f"gpt: tie_embeddings must be a bool, got {tie_embeddings!r}")
    rate = _check_rate(dropout)
    table = normal(init_std)
    nodes = {
        "tok": (embedding(vocab, features, table_init=table, dtype=dtype), "input"),
        "pos": (positional_embedding(max_len, table_init=table, dtype=dtype), "tok"),
    }
    prev = "pos"
    if rate:
        nodes["drop"], prev = (dropout_layer(rate), "pos"), "drop"
    out_std = init_std / math.sqrt(2 * layers)
    for i in range(layers):
        block = gpt_block(
            heads,
            features,
            mlp_ratio=mlp_ratio,
            memory=memory,
            block_size=block_size,
            dropout=rate,
            init_std=init_std,
            out_std=out_std,
            eps=eps,
            dtype=dtype,
        )
        nodes[f"block{i}"], prev = (block, prev), f"block{i}"
    nodes["ln_f"] = (layernorm(eps, dtype=dtype), prev)
    nodes["head"] = (unembedding(vocab, table_init=table, dtype=dtype), "ln_f")
    model = graph(nodes, output="head")
    return tied(model, (("tok", "table"), ("head", "table"))) if tie_embeddings else model
