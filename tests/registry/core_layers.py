"""Cases for the dense layers, activations, shape layers and combinators."""

import funcnn as fn

from . import Case

# (case id, public name, factory)
ACTIVATIONS = [
    ("identity", "identity", fn.identity),
    ("relu", "relu", fn.relu),
    ("leaky_relu", "leaky_relu", lambda: fn.leaky_relu(0.2)),
    ("elu", "elu", lambda: fn.elu(0.7)),
    ("selu", "selu", fn.selu),
    ("gelu", "gelu", fn.gelu),
    ("gelu_tanh", "gelu", lambda: fn.gelu(approximate=True)),
    ("sigmoid", "sigmoid", fn.sigmoid),
    ("tanh", "tanh", fn.tanh),
    ("softplus", "softplus", fn.softplus),
    ("silu", "silu", fn.silu),
    ("softmax", "softmax", fn.softmax),
    ("softmax_axis1", "softmax", lambda: fn.softmax(axis=1)),
    ("log_softmax", "log_softmax", fn.log_softmax),
    ("log_softmax_axis0", "log_softmax", lambda: fn.log_softmax(axis=0)),
]

CASES = [
    Case("linear", lambda: fn.linear(5), (4, 3), ("linear",)),
    Case("linear_3d", lambda: fn.linear(2), (2, 3, 4), ("linear",)),
    Case("bias", fn.bias, (4, 3), ("bias",)),
    Case("bias_4d", fn.bias, (2, 3, 2, 5), ("bias",)),
    Case("dense", lambda: fn.dense(6), (8, 3), ("dense",)),
    Case("dense_batch1", lambda: fn.dense(1), (1, 7), ("dense",)),
    Case("dense_3d", lambda: fn.dense(4), (2, 5, 3), ("dense",)),
    *[
        Case(f"{case_id}_{'x'.join(map(str, shape))}", make, shape, (public,))
        for case_id, public, make in ACTIVATIONS
        for shape in [(4, 5), (2, 3, 4)]
    ],
    Case("flatten", fn.flatten, (2, 3, 4), ("flatten",)),
    Case("flatten_4d", fn.flatten, (3, 2, 2, 5), ("flatten",)),
    Case("reshape", lambda: fn.reshape((4, 3)), (2, 12), ("reshape",)),
    Case("reshape_infer", lambda: fn.reshape((-1, 2)), (2, 3, 4), ("reshape",)),
    Case(
        "sequential_mlp",
        lambda: fn.sequential(fn.dense(8), fn.relu(), fn.dense(3)),
        (4, 5),
        ("sequential",),
    ),
    Case("sequential_empty", fn.sequential, (3, 2), ("sequential",)),
    Case(
        "sequential_nested",
        lambda: fn.sequential(fn.sequential(fn.dense(4), fn.tanh()), fn.gelu(), fn.linear(2)),
        (3, 5),
        ("sequential",),
    ),
    Case("parallel", lambda: fn.parallel(fn.dense(3), fn.tanh()), ((4, 2), (4, 5)), ("parallel",)),
    Case(
        "fan_out",
        lambda: fn.sequential(fn.fan_out(3), fn.parallel(fn.dense(2), fn.sigmoid(), fn.identity())),
        (4, 2),
        ("fan_out",),
    ),
    Case("fan_in_sum", fn.fan_in_sum, ((3, 4), (3, 4), (3, 4)), ("fan_in_sum",)),
    Case("fan_in_concat", fn.fan_in_concat, ((3, 2), (3, 5)), ("fan_in_concat",)),
    Case(
        "fan_in_concat_axis1",
        lambda: fn.fan_in_concat(axis=1),
        ((2, 1, 3), (2, 4, 3)),
        ("fan_in_concat",),
    ),
    Case(
        "fan_out_in",
        lambda: fn.sequential(
            fn.fan_out(2), fn.parallel(fn.dense(4), fn.dense(4)), fn.fan_in_sum(2)
        ),
        (3, 5),
        ("fan_out", "fan_in_sum"),
    ),
    Case(
        "residual",
        lambda: fn.residual(fn.sequential(fn.dense(5), fn.tanh())),
        (4, 5),
        ("residual",),
    ),
    Case("residual_3d", lambda: fn.residual(fn.dense(3)), (2, 2, 3), ("residual",)),
    Case(
        "sequential_named",
        lambda: fn.sequential(
            encoder=fn.dense(6), act=fn.tanh(), block=fn.residual(fn.dense(6)), head=fn.dense(2)
        ),
        (4, 3),
        ("sequential", "residual"),
    ),
    Case(
        "graph_diamond",
        lambda: fn.graph(
            {
                "h": (fn.dense(4), "input"),
                "a": (fn.relu(), "h"),
                "b": (fn.tanh(), "h"),
                "sum": (fn.fan_in_sum(), ("a", "b")),
                "out": (fn.fan_in_concat(), ("sum", "input", "h")),
            },
            output="out",
        ),
        (3, 2),
        ("graph",),
    ),
    Case(
        "graph_two_outputs",
        lambda: fn.graph(
            {
                "h": (fn.dense(3), "input"),
                "twice": (fn.fan_in_sum(), ("h", "h")),
                "s": (fn.sigmoid(), "input"),
            },
            output=("twice", "s"),
        ),
        (2, 4),
        ("graph",),
    ),
]
