"""``summary``: a table of a model's layers, output shapes and parameter counts."""

from __future__ import annotations

import math

import jax

from funcnn.core import Layer, init_layer


def _count(tree) -> int:
    return sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(tree))


def summary(layer: Layer, input_shape, key=None) -> str:
    """Describe ``layer`` for ``input_shape``: one row per child with its parameter count.

    Shapes are inferred with ``jax.eval_shape``, so no parameters are allocated.

    >>> import funcnn as fn
    >>> print(fn.summary(fn.sequential(fn.dense(4), fn.relu()), (2, 3)))
    sequential (pure)  input (2, 3) -> output (2, 4)
      0 dense        params 16
      1 relu         params 0
    total params: 16
    """
    key = jax.random.PRNGKey(0) if key is None else key
    shapes = {}

    def abstract_init(k):  # shapes only: eval_shape allocates nothing
        params, state, shapes["out"] = init_layer(layer, k, input_shape)
        return params, state

    params, state = jax.eval_shape(abstract_init, key)
    out_shape = shapes["out"]
    form = "wide" if layer.wide else "pure"
    lines = [f"{layer.name} ({form})  input {input_shape} -> output {out_shape}"]
    if layer.children and isinstance(params, (tuple, dict)):
        entries = params.items() if isinstance(params, dict) else enumerate(params)
        width = max(len(c.name) for c in layer.children)
        for (label, p), child in zip(entries, layer.children, strict=True):
            lines.append(f"  {label} {child.name:<{width + 4}} params {_count(p)}")
    lines.append(
        f"total params: {_count(params)}"
        + (f", state values: {_count(state)}" if _count(state) else "")
    )
    return "\n".join(lines)
