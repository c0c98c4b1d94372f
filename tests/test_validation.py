"""funcnn.validation: one exception policy (TypeError: wrong kind, ValueError: wrong value).

Everything here runs in factories or on shapes, so no test compiles anything.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcnn as fn
from funcnn import validation as v
from funcnn.layers.conv import conv1d, conv2d, conv_transpose2d
from funcnn.layers.pooling import avg_pool2d, max_pool2d

# --- the policy, factory by factory --------------------------------------------------------

# (factory call, exception): a wrong Python type is a TypeError, a wrong value a ValueError.
FACTORY_ERRORS = [
    (lambda: fn.dense(2.0), TypeError),
    (lambda: fn.dense(True), TypeError),
    (lambda: fn.dense(0), ValueError),
    (lambda: fn.linear("3"), TypeError),
    (lambda: fn.embedding(4, -1), ValueError),
    (lambda: conv2d(4, 3.0), TypeError),
    (lambda: conv2d(4, 0), ValueError),
    (lambda: conv2d(4, 3, stride=(1, 1.5)), TypeError),
    (lambda: conv2d(4, 3, stride=(1, 1, 1)), ValueError),
    (lambda: conv2d(4, 3, padding=1.5), TypeError),
    (lambda: conv2d(4, 3, padding="FULL"), ValueError),
    (lambda: conv2d(4, 3, padding=((1, 2, 3), (0, 0))), ValueError),
    (lambda: conv_transpose2d(4, 3, output_padding=True), TypeError),
    (lambda: max_pool2d(2.0), TypeError),
    (lambda: max_pool2d(2, stride=-1), ValueError),
    (lambda: avg_pool2d(2, count_include_pad=1), TypeError),
    (lambda: fn.leaky_relu(math.nan), ValueError),
    (lambda: fn.leaky_relu(None), TypeError),
    (lambda: fn.elu(math.inf), ValueError),
    (lambda: fn.elu(0.0), ValueError),
    (lambda: fn.gelu(approximate="yes"), TypeError),
    (lambda: fn.softmax(axis=True), TypeError),
    (lambda: fn.layernorm(eps=math.inf), ValueError),
    (lambda: fn.batchnorm(momentum="0.1"), TypeError),
    (lambda: fn.dropout(1.0), ValueError),
    (lambda: fn.reshape((2, 1.5)), TypeError),
    (lambda: fn.reshape((2, 0)), ValueError),
    (lambda: fn.fan_out(2.0), TypeError),
    (lambda: fn.fan_in_sum(0), ValueError),
    (lambda: fn.fan_in_sum(1.5), TypeError),
    (lambda: fn.fan_in_concat(axis=0), ValueError),
    (lambda: fn.fan_in_concat(axis=1.0), TypeError),
    (lambda: fn.fan_in_concat(n=-2), ValueError),
    (lambda: fn.optim.sgd(0.1, momentum=math.inf), ValueError),
    (lambda: fn.optim.adam(0.1, b2=None), TypeError),
    (lambda: fn.optim.cosine_decay_schedule(1.0, 10.0), TypeError),
    (lambda: fn.optim.cosine_decay_schedule(1.0, 0), ValueError),
]


@pytest.mark.parametrize("make, error", FACTORY_ERRORS)
def test_factories_follow_one_exception_policy(make, error):
    with pytest.raises(Exception) as info:  # the exact type is the point
        make()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert ": " in str(info.value) and "got" in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda n: fn.dense(n),
        lambda n: fn.embedding(n, n),
        lambda n: conv2d(n, n, stride=n, dilation=(n, 1), groups=np.int32(1)),
        lambda n: conv1d(n, (n,), padding=((n, np.int64(0)),)),
        lambda n: conv_transpose2d(n, n, stride=(n, n), padding=np.int64(1)),
        lambda n: max_pool2d(n, stride=(n, n), padding=np.int16(1)),
        lambda n: avg_pool2d((n, n), padding=((1, 0), (np.int8(0), 1))),
        lambda n: fn.fan_out(n),
        lambda n: fn.fan_in_sum(n),
        lambda n: fn.softmax(axis=-n // 2),
        lambda n: fn.reshape((n, -1)),
        lambda n: fn.optim.cosine_decay_schedule(1.0, n),
    ],
)
def test_numpy_integers_are_ints_everywhere(make):
    make(np.int64(2))  # no error: conv used to refuse np.integer where pooling took it


def test_conv_and_pool_read_numpy_int_sizes_the_same_as_python_ints():
    a = conv2d(np.int64(3), np.int32(2), stride=np.int64(2), padding=np.int64(1))
    b = conv2d(3, 2, stride=2, padding=1)
    key = jax.random.PRNGKey(0)
    assert a.init(key, (1, 5, 5, 2))[1] == b.init(key, (1, 5, 5, 2))[1] == (1, 3, 3, 3)


# --- the helpers themselves -------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, np.bool_(False), 2.0, "2", None, (2,)])
def test_check_int_refuses_non_ints_with_a_type_error(value):
    with pytest.raises(TypeError, match=r"^f: n must be a positive int, got "):
        v.check_positive_int("f", "n", value)


def test_check_int_bounds():
    assert v.check_int("f", "axis", -3) == -3
    assert type(v.check_int("f", "n", np.uint8(7), low=0)) is int
    with pytest.raises(ValueError, match=r"^f: n must be an int >= 0, got -1$"):
        v.check_int("f", "n", -1, low=0)


@pytest.mark.parametrize(
    "kwargs, bad, rule",
    [
        ({}, math.nan, "a finite number"),
        ({"low": 0}, -1e-9, "a finite number >= 0"),
        ({"low": 0, "low_open": True}, 0.0, "a positive finite number"),
        ({"low": 0, "low_open": True}, math.inf, "a positive finite number"),
        ({"low": 0, "high": 1, "high_open": True}, 1.0, r"a number in \[0, 1\)"),
        ({"low": 0, "high": 1, "low_open": True}, 0, r"a number in \(0, 1\]"),
    ],
)
def test_check_number_rules(kwargs, bad, rule):
    with pytest.raises(ValueError, match=rf"^f: x must be {rule}, got "):
        v.check_number("f", "x", bad, **kwargs)
    with pytest.raises(TypeError, match=rf"^f: x must be {rule}, got bool True"):
        v.check_number("f", "x", True, **kwargs)


def test_check_number_accepts_numpy_scalars_and_returns_float():
    assert v.check_number("f", "x", np.float32(0.5), low=0, high=1) == 0.5
    assert type(v.check_number("f", "x", np.int64(3))) is float


def test_check_bool_and_choice():
    assert v.check_bool("f", "flag", np.bool_(True)) is True
    with pytest.raises(TypeError, match=r"^f: flag must be a bool \(True or False\), got int 1"):
        v.check_bool("f", "flag", 1)
    assert v.check_choice("f", "mode", "sum", ("mean", "sum")) == "sum"
    with pytest.raises(ValueError, match=r"^f: mode must be one of 'mean', 'sum', got 'avg'"):
        v.check_choice("f", "mode", "avg", ("mean", "sum"))
    with pytest.raises(TypeError, match=r"^f: mode must be one of 'mean', 'sum', got NoneType"):
        v.check_choice("f", "mode", None, ("mean", "sum"))


@pytest.mark.parametrize(
    "padding, nd, expected",
    [
        ("valid", 2, ((0, 0), (0, 0))),
        ("Same", 1, "SAME"),
        (2, 2, ((2, 2), (2, 2))),
        (np.int64(1), 1, ((1, 1),)),
        ((1, 2), 2, ((1, 1), (2, 2))),  # PyTorch's (ph, pw)
        (((1, 0), 2), 2, ((1, 0), (2, 2))),
        (((0, 3),), 1, ((0, 3),)),
    ],
)
def test_one_padding_parser(padding, nd, expected):
    assert v.parse_padding("f", padding, nd) == expected


@pytest.mark.parametrize(
    "padding, nd, error",
    [
        ("full", 2, ValueError),
        (-1, 2, ValueError),
        ((1, 2), 1, ValueError),  # a bare (low, high) would read as two axes
        (((1, 2, 3), 0), 2, ValueError),
        (((1, -1), 0), 2, ValueError),
        (1.0, 2, TypeError),
        ((1, "1"), 2, TypeError),
        (None, 1, TypeError),
    ],
)
def test_padding_parser_errors(padding, nd, error):
    with pytest.raises(error, match=r"^f: padding must be "):
        v.parse_padding("f", padding, nd)


def test_same_padding_is_lax_same():
    for size, extent, stride in itertools.product([1, 2, 5, 8, 9], [1, 2, 3, 5], [1, 2, 3]):
        expected = lax.padtype_to_pads((size,), (extent,), (stride,), "SAME")
        assert v.same_padding((size,), (extent,), (stride,)) == tuple(map(tuple, expected))


def test_input_shape_checks():
    assert v.check_input_shape("f", (np.int64(2), 3)) == (2, 3)
    with pytest.raises(ValueError, match=r"^f: input_shape must not hold negative sizes"):
        v.check_input_shape("f", (2, -3))
    with pytest.raises(TypeError, match=r"^f: input_shape must be a tuple of ints"):
        v.check_input_shape("f", (2, 3.0))
    with pytest.raises(ValueError, match=r"^f: input_shape must have at least 2 axes"):
        v.check_input_shape("f", (4,), min_ndim=2)


def test_param_tree_check():
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    assert v.check_param_tree("f", params, {"w": 2, "b": 1}) == {"w": (3, 2), "b": (2,)}
    with pytest.raises(TypeError, match=r"^f: params must be a dict with keys \['b', 'w'\]"):
        v.check_param_tree("f", {"w": params["w"]}, {"w": 2, "b": 1})
    with pytest.raises(TypeError, match=r"^f: params\['b'\] must be an array, got list"):
        v.check_param_tree("f", {"w": params["w"], "b": [0.0, 0.0]}, {"w": 2, "b": 1})
    with pytest.raises(ValueError, match=r"^f: params\['w'\] must have 2 axes .*got shape \(6,\)"):
        v.check_param_tree("f", {"w": jnp.zeros(6), "b": params["b"]}, {"w": 2, "b": 1})
    with pytest.raises(ValueError, match=r"^f: state\['b'\] must have shape \(3,\) for this input"):
        v.check_params("f", params, {"w": (3, 2), "b": (3,)}, what="state")


def test_cotangent_check_names_both_shapes():
    v.check_cotangent("f", jnp.zeros((2, 3)), (2, 3))
    with pytest.raises(ValueError, match=r"^f: dy must have the shape of this layer's output "):
        v.check_cotangent("f", jnp.zeros((1, 3)), (2, 3))
    with pytest.raises(ValueError, match=r"output \(2, 3\), got dy of shape \(1, 3\)"):
        v.check_cotangent("f", jnp.zeros((1, 3)), (2, 3))
    with pytest.raises(ValueError, match=r"^f: dy must be an array of shape \(2, 3\) .*tuple"):
        v.check_cotangent("f", (jnp.zeros((2, 3)),), (2, 3))
    with pytest.raises(ValueError, match=r"^f: dy must be floating point .*got dtype int32"):
        v.check_cotangent("f", jnp.zeros((2, 3), jnp.int32), (2, 3))


def test_core_still_exports_the_checks():
    """Layers outside this package import the checks from funcnn.core, as they always did."""
    assert fn.core.check_params is v.check_params
    assert fn.core.check_positive_int is v.check_positive_int


def test_ctx_refuses_a_bool_key_and_a_non_bool_mode():
    with pytest.raises(TypeError, match=r"^Ctx: key must be a PRNG key or None, got True"):
        fn.Ctx(True)
    with pytest.raises(TypeError, match=r"^Ctx: train must be a bool .*got int 1"):
        fn.Ctx(key=None, train=1)
    ctx = fn.Ctx(key=jax.random.PRNGKey(0), train=True)
    assert jax.jit(lambda c: c)(ctx).train is True  # still a pytree JAX can rebuild
