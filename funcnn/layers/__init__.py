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
from funcnn.layers.shape import flatten, reshape

__all__ = [
    "bias",
    "dense",
    "elu",
    "flatten",
    "gelu",
    "identity",
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
