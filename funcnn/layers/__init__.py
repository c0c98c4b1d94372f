"""Built-in layers, one module per family."""

from funcnn.layers.activations import (
    elu,
    gelu,
    identity,
    leaky_relu,
    log_softmax,
    relu,
    selu,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
)
from funcnn.layers.dense import bias, dense, linear
from funcnn.layers.dropout import dropout
from funcnn.layers.embedding import embedding
from funcnn.layers.normalization import batchnorm, layernorm
from funcnn.layers.shape import flatten, reshape

__all__ = [
    "batchnorm",
    "bias",
    "dense",
    "dropout",
    "elu",
    "embedding",
    "flatten",
    "gelu",
    "identity",
    "layernorm",
    "leaky_relu",
    "linear",
    "log_softmax",
    "relu",
    "reshape",
    "selu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "tanh",
]
