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
from funcnn.layers.attention import (
    multi_head_attention,
    positional_embedding,
    scaled_dot_product_attention,
)
from funcnn.layers.conv import conv1d, conv2d, conv_transpose2d
from funcnn.layers.dense import bias, dense, linear
from funcnn.layers.dropout import dropout
from funcnn.layers.embedding import embedding, unembedding
from funcnn.layers.normalization import batchnorm, layernorm
from funcnn.layers.pooling import avg_pool2d, global_avg_pool, max_pool2d
from funcnn.layers.recurrent import (
    bidirectional,
    gru,
    gru_cell,
    lstm,
    lstm_cell,
    rnn,
    rnn_cell,
)
from funcnn.layers.shape import flatten, reshape

__all__ = [
    "avg_pool2d",
    "batchnorm",
    "bias",
    "bidirectional",
    "conv1d",
    "conv2d",
    "conv_transpose2d",
    "dense",
    "dropout",
    "elu",
    "embedding",
    "flatten",
    "gelu",
    "global_avg_pool",
    "gru",
    "gru_cell",
    "identity",
    "layernorm",
    "leaky_relu",
    "linear",
    "log_softmax",
    "lstm",
    "lstm_cell",
    "max_pool2d",
    "multi_head_attention",
    "positional_embedding",
    "relu",
    "reshape",
    "rnn",
    "rnn_cell",
    "scaled_dot_product_attention",
    "selu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "tanh",
    "unembedding",
]
