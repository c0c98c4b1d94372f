"""funcnn: neural-network layers as pairs of pure functions with hand-written backward passes.

>>> import jax, jax.numpy as jnp, funcnn as fn
>>> model = fn.sequential(fn.dense(16), fn.relu(), fn.dense(3))
>>> params, out_shape = model.init(jax.random.PRNGKey(0), (8, 4))
>>> y, cache = model.forward(params, jnp.ones((8, 4)))
>>> dx, grads = model.backward(params, cache, jnp.ones_like(y))
>>> out_shape, dx.shape
((8, 3), (8, 4))
"""

from funcnn import (
    check,
    initializers,
    interop,
    io,
    losses,
    models,
    optim,
    precision,
    sharding,
    train,
)
from funcnn.combinators import (
    fan_in_concat,
    fan_in_sum,
    fan_out,
    graph,
    parallel,
    remat,
    residual,
    sequential,
    tied,
)
from funcnn.core import Ctx, Layer, Static, apply_layer, as_wide, init_layer
from funcnn.layers import *  # noqa: F403  (the curated list lives in funcnn.layers.__all__)
from funcnn.layers import __all__ as _layer_names
from funcnn.summary import summary
from funcnn.train import predict

__version__ = "0.1.0"

__all__ = [
    "Ctx",
    "Layer",
    "Static",
    "__version__",
    "apply_layer",
    "as_wide",
    "check",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "graph",
    "init_layer",
    "initializers",
    "interop",
    "io",
    "losses",
    "models",
    "optim",
    "parallel",
    "precision",
    "predict",
    "remat",
    "residual",
    "sequential",
    "sharding",
    "summary",
    "tied",
    "train",
    *_layer_names,
]
