"""Convolution semantics: parity with lax and PyTorch, the adjoint, the XLA trap, errors.

The gradient reference here is a NumPy loop (:func:`funcnn.reference.conv`) that spells
out the definition, not ``jax.vjp``: with jax 0.10.2 on CPU, ``jax.vjp`` of a strided
``lax.conv_general_dilated`` aborts the whole interpreter in XLA's algebraic simplifier for
some shapes with padding (see ``VJP_CRASHES`` below and ``docs/layers/conv.md``). Our
backward never builds such a convolution; ``test_xla_trap_in_subprocess`` runs the known
crashing configuration in a child process so a regression fails a test instead of
killing the suite.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from funcnn.layers.conv import conv1d, conv2d, conv_transpose2d
from funcnn.layers.conv_cpu import kernel_grad_im2col
from funcnn.layers.conv_geometry import PaddedConv
from funcnn.reference import conv as np_conv
from funcnn.reference import conv_transpose as np_conv_transpose
from funcnn.reference import conv_transpose_as_conv_kernel as flip_transpose
from tests.noise import device_normal

# --- helpers -----------------------------------------------------------------------------


# Random data comes from NumPy and shapes from jax.eval_shape: eager jax.random and eager
# layer calls compile every operation for every new shape, which is most of what a conv
# test would otherwise cost (see tests/README.md).


def run_layer(layer, params, x, dy_seed=7):
    """Our forward and backward under jit (the backward fed the jitted cache), random dy."""

    @jax.jit
    def forward(params, x):
        return layer.forward(params, x)

    y, cache = forward(params, x)
    dy = device_normal(np.random.default_rng(dy_seed), y.shape)
    dx, dparams = jax.jit(layer.backward)(params, cache, dy)
    return y, dy, dx, dparams


def init_shapes(layer, input_shape):
    """``init``'s params as shape structs and its output shape, traced without compiling."""
    out = {}

    def init(key):
        params, out["shape"] = layer.init(key, input_shape)
        return params

    return jax.eval_shape(init, jax.random.PRNGKey(0)), out["shape"]


def random_params(layer, input_shape, seed=0):
    """Standard-normal float64 params of init's shapes, a random input, init's output shape."""
    shapes, out_shape = init_shapes(layer, input_shape)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda p: device_normal(rng, p.shape), shapes)
    return params, device_normal(rng, input_shape), out_shape


def forward_shape(layer, input_shape):
    """The shape ``forward`` gives for ``input_shape``, by tracing (shape inference only)."""
    params, _ = init_shapes(layer, input_shape)
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    return jax.eval_shape(layer.forward, params, x)[0].shape


def zero_params(layer, input_shape):
    """Host zeros of init's shapes: for error tests, which never reach the arithmetic."""
    return jax.tree_util.tree_map(lambda p: np.zeros(p.shape), init_shapes(layer, input_shape)[0])


# --- hypothesis: forward vs lax, backward vs the direct loops ------------------------------


@st.composite
def conv_configs(draw, nd):
    groups = draw(st.sampled_from([1, 2, 3]))
    channels = groups * draw(st.integers(1, 2))
    # 32 features per group: with groups == 1 the kernel gradient is a matrix product of
    # the input's patches with dy instead of a convolution (see conv_cpu.kernel_grad_as_matmul).
    features = groups * draw(st.sampled_from([1, 2, 32]))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    kind = draw(st.sampled_from(["VALID", "SAME", "int", "pairs"]))
    if kind == "int":
        padding = draw(st.integers(0, 2))
    elif kind == "pairs":
        padding = tuple(draw(st.tuples(st.integers(0, 3), st.integers(0, 3))) for _ in range(nd))
    else:
        padding = kind
    size = []
    for k, d in zip(kernel, dilation, strict=True):
        extent = d * (k - 1) + 1
        low = 1 if padding == "SAME" else max(1, extent - 2 * 3)
        size.append(draw(st.integers(low, 8)))
    return dict(
        nd=nd,
        shape=(2, *size, channels),
        features=features,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        padding=padding,
        groups=groups,
    )


def _explicit_pads(cfg):
    nd, padding = cfg["nd"], cfg["padding"]
    if padding == "VALID":
        return ((0, 0),) * nd
    if padding == "SAME":
        return tuple(
            lax.padtype_to_pads(cfg["shape"][1:-1], cfg["kernel_eff"], cfg["stride"], "SAME")
        )
    if isinstance(padding, int):
        return ((padding, padding),) * nd
    return padding


@settings(max_examples=12, deadline=None)
@given(st.one_of(conv_configs(1), conv_configs(2)))
def test_conv_matches_lax_forward_and_direct_backward(cfg):
    nd = cfg["nd"]
    cfg["kernel_eff"] = tuple(
        d * (k - 1) + 1 for k, d in zip(cfg["kernel"], cfg["dilation"], strict=True)
    )
    pads = _explicit_pads(cfg)
    if any(
        n + lo + hi < e
        for n, (lo, hi), e in zip(cfg["shape"][1:-1], pads, cfg["kernel_eff"], strict=True)
    ):
        return  # the kernel does not fit; the error is tested in test_errors_*
    make = conv1d if nd == 1 else conv2d
    layer = make(
        cfg["features"],
        cfg["kernel"],
        cfg["stride"],
        cfg["padding"],
        cfg["dilation"],
        cfg["groups"],
    )
    params, x, out_shape = random_params(layer, cfg["shape"])
    y, dy, dx, dparams = run_layer(layer, params, x)

    spec = ("NWC", "WIO", "NWC") if nd == 1 else ("NHWC", "HWIO", "NHWC")
    lax_padding = "SAME" if cfg["padding"] == "SAME" else pads
    y_lax = lax.conv_general_dilated(
        x,
        params["w"],
        cfg["stride"],
        lax_padding,
        rhs_dilation=cfg["dilation"],
        dimension_numbers=spec,
        feature_group_count=cfg["groups"],
    ) + params["b"].reshape((1,) * (nd + 1) + (-1,))
    assert y.shape == out_shape == y_lax.shape
    np.testing.assert_allclose(y, y_lax, rtol=1e-12, atol=1e-12)

    y_np, dx_np, dw_np = np_conv(
        x, params["w"], cfg["stride"], pads, cfg["dilation"], cfg["groups"], dy
    )
    np.testing.assert_allclose(y, y_np + np.asarray(params["b"]), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, dx_np, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dparams["w"], dw_np, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dparams["b"], np.asarray(dy).sum(axis=tuple(range(nd + 1))))


@pytest.mark.parametrize(
    "shape, kernel, stride, dilation, pads",
    [
        ((6, 7, 6, 3), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),
        ((5, 8, 7, 2), (2, 3), (2, 3), (1, 2), ((2, 0), (1, 3))),  # rows past the last window
        ((4, 9, 2), (4,), (2,), (2,), ((3, 1),)),
        ((3, 4, 5, 2), (1, 1), (2, 2), (1, 1), ((1, 0), (0, 1))),
    ],
)
@pytest.mark.parametrize("chunk_images", [1, 2, 4, 100])
def test_kernel_grad_in_batch_chunks(shape, kernel, stride, dilation, pads, chunk_images):
    """The patch product gives the direct-loop kernel gradient for any chunking of the
    batch, including chunk sizes that do not divide it (4 of 6 or 5 images: the chunk
    shrinks to a divisor) and one chunk for the whole batch."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((*kernel, shape[-1], 32))
    y = np_conv(x, w, stride, pads, dilation, 1)
    dy = rng.standard_normal(y.shape)
    _, _, dw_np = np_conv(x, w, stride, pads, dilation, 1, dy)
    out = y.shape[1:-1]
    image_bytes = np.prod(out) * np.prod(kernel) * shape[-1] * x.dtype.itemsize
    dw = kernel_grad_im2col(
        jnp.asarray(x),
        jnp.asarray(dy),
        w.shape,
        PaddedConv(tuple((lo, hi, 0) for lo, hi in pads), stride, dilation),
        chunk_bytes=int(chunk_images * image_bytes),
    )
    np.testing.assert_allclose(dw, dw_np, rtol=1e-10, atol=1e-10)


@settings(max_examples=12, deadline=None)
@given(
    groups=st.sampled_from([1, 2]),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    size=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    data=st.data(),
)
def test_conv_transpose_matches_direct_loops(groups, kernel, stride, dilation, padding, size, data):
    output_padding = tuple(
        data.draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation, strict=True)
    )
    out = [
        (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        for n, k, s, d, p, op in zip(
            size, kernel, stride, dilation, padding, output_padding, strict=True
        )
    ]
    if min(out) < 1:
        return  # an empty output; the error is tested in test_errors_conv_transpose2d
    layer = conv_transpose2d(2 * groups, kernel, stride, padding, output_padding, dilation, groups)
    params, x, out_shape = random_params(layer, (2, *size, 2 * groups))
    y, dy, dx, dparams = run_layer(layer, params, x)
    assert y.shape == out_shape == (2, *out, 2 * groups)
    y_np, dx_np, dw_np = np_conv_transpose(
        x, params["w"], stride, padding, output_padding, dilation, groups, dy
    )
    np.testing.assert_allclose(y, y_np + np.asarray(params["b"]), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, dx_np, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dparams["w"], dw_np, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dparams["b"], np.asarray(dy).sum(axis=(0, 1, 2)))


# --- output shapes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "input_shape", "expected"),
    [
        (dict(kernel_size=3), (2, 8, 7, 3), (2, 6, 5, 4)),
        (dict(kernel_size=3, padding="SAME"), (2, 8, 7, 3), (2, 8, 7, 4)),
        (dict(kernel_size=3, stride=2, padding="SAME"), (2, 8, 7, 3), (2, 4, 4, 4)),
        (dict(kernel_size=3, stride=3), (1, 10, 9, 3), (1, 3, 3, 4)),
        (dict(kernel_size=(3, 1), padding=((2, 0), (0, 1))), (1, 5, 5, 3), (1, 5, 6, 4)),
        (dict(kernel_size=3, dilation=2, padding=1), (1, 9, 9, 3), (1, 7, 7, 4)),
        (dict(kernel_size=5, stride=2, dilation=(1, 2)), (1, 11, 12, 3), (1, 4, 2, 4)),
    ],
)
def test_conv2d_output_shape(kwargs, input_shape, expected):
    layer = conv2d(4, **kwargs)
    assert init_shapes(layer, input_shape)[1] == expected
    assert forward_shape(layer, input_shape) == expected


@pytest.mark.parametrize("size", [1, 4, 7])
@pytest.mark.parametrize(
    ("k", "s", "p", "op", "d"),
    [
        (3, 1, 0, 0, 1),
        (3, 2, 1, 1, 1),
        (4, 3, 2, 2, 1),
        (2, 2, 0, 0, 3),
        (3, 2, 2, 0, 2),
        (5, 1, 4, 0, 1),
    ],
)
def test_conv_transpose2d_output_shape_is_pytorch_formula(size, k, s, p, op, d):
    expected = (size - 1) * s - 2 * p + d * (k - 1) + op + 1
    if expected < 1:
        return
    layer = conv_transpose2d(3, k, stride=s, padding=p, output_padding=op, dilation=d)
    _, out_shape = init_shapes(layer, (2, size, size + 1, 2))
    expected_w = size * s - 2 * p + d * (k - 1) + op + 1
    assert out_shape == (2, expected, expected_w, 3)
    assert forward_shape(layer, (2, size, size + 1, 2)) == out_shape


def test_same_padding_puts_the_extra_row_on_the_high_side():
    """Stride 2, kernel 2, input 5: total padding 1 goes to the bottom/right (lax/TF)."""
    layer = conv2d(1, 2, stride=2, padding="SAME", use_bias=False)
    x = jnp.arange(25.0).reshape(1, 5, 5, 1)
    w = jnp.zeros((2, 2, 1, 1)).at[0, 0].set(1.0)  # picks the window's top-left entry
    y, _ = layer.forward({"w": w}, x)
    np.testing.assert_array_equal(y[0, :, :, 0], x[0, ::2, ::2, 0])


# --- the adjoint ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "output_padding", "dilation", "groups", "size"),
    [
        (3, 1, 0, 0, 1, 1, (4, 5)),
        (3, 2, 1, 1, 1, 1, (4, 3)),
        ((2, 3), (3, 2), (0, 1), (2, 0), 1, 1, (3, 4)),
        (3, 2, 2, 0, (2, 1), 2, (3, 3)),
        (4, 2, 1, 0, 1, 3, (5, 2)),
    ],
)
def test_conv_transpose2d_is_the_adjoint_of_conv2d(
    kernel, stride, padding, output_padding, dilation, groups, size
):
    channels, features = 2 * groups, 3 * groups
    t = conv_transpose2d(
        features, kernel, stride, padding, output_padding, dilation, groups, use_bias=False
    )
    params, x, out_shape = random_params(t, (2, *size, channels))
    z = device_normal(np.random.default_rng(5), out_shape)
    pad = (padding, padding) if isinstance(padding, int) else padding
    c = conv2d(channels, kernel, stride, tuple(pad), dilation, groups, use_bias=False)
    w_conv = jnp.asarray(flip_transpose(params["w"], groups))
    cz, _ = jax.jit(c.forward)({"w": w_conv}, z)
    assert cz.shape == x.shape
    tx, _ = jax.jit(t.forward)(params, x)
    np.testing.assert_allclose(jnp.vdot(cz, x), jnp.vdot(z, tx), rtol=1e-12)


# --- the XLA:CPU trap ------------------------------------------------------------------

# Configurations where jax.vjp of lax.conv_general_dilated aborts XLA:CPU (jax 0.10.2); see
# the comment in tests/registry/conv.py for the rule. The first is the reported one.
XLA_TRAPS = [
    dict(x=(2, 3, 4, 4), features=1, kernel=(3, 2), stride=2, padding=((2, 1), (1, 1)), groups=1),
    dict(x=(2, 3, 4, 4), features=1, kernel=(3, 2), stride=2, padding=((1, 1), (1, 1)), groups=1),
    dict(x=(2, 3, 6, 4), features=2, kernel=(4, 2), stride=2, padding=((2, 1), (1, 1)), groups=1),
    dict(x=(1, 6, 1, 2), features=2, kernel=2, stride=2, padding=((1, 2), (1, 0)), groups=2),
]

_TRAP_SCRIPT = r"""
import json, sys, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from funcnn.layers.conv import conv2d

results = []
for cfg in json.loads(sys.argv[1]):
    layer = conv2d(cfg["features"], cfg["kernel"], stride=cfg["stride"],
                   padding=tuple(map(tuple, cfg["padding"])), groups=cfg["groups"])
    # init's shapes (traced, not compiled) filled by NumPy: eager jax.random, and every
    # eager op, compiles a program for each new shape
    shapes = jax.eval_shape(lambda k: layer.init(k, tuple(cfg["x"]))[0], jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    params = {k: jax.device_put(0.5 * rng.standard_normal(a.shape)) for k, a in shapes.items()}
    x = jax.device_put(rng.standard_normal(tuple(cfg["x"])))
    y, cache = layer.forward(params, x)
    dy = jax.device_put(rng.standard_normal(y.shape))
    dx, grads = layer.backward(params, cache, dy)                    # eager
    _, cache_j = jax.jit(layer.forward)(params, x)
    dx_j, grads_j = jax.jit(layer.backward)(params, cache_j, dy)     # compiled as one program

    loss = jax.jit(lambda p, x: jnp.vdot(layer.forward(p, x)[0], dy))  # one compile

    # Central differences along random directions (the layer is affine, so they are exact
    # up to rounding). jax.vjp cannot be the reference: it is what aborts. The shifts and
    # the dot products are NumPy's, so nothing but the layer is compiled.
    host = {"x": np.asarray(x), "w": np.asarray(params["w"]), "b": np.asarray(params["b"])}
    ours = {"x": np.asarray(dx), "w": np.asarray(grads["w"]), "b": np.asarray(grads["b"])}
    eps, fd = 1e-3, []
    for _ in range(3):
        v = {k: rng.standard_normal(a.shape) for k, a in host.items()}
        up, down = ({k: a + s * eps * v[k] for k, a in host.items()} for s in (1, -1))
        numeric = float(loss({"w": up["w"], "b": up["b"]}, up["x"])
                        - loss({"w": down["w"], "b": down["b"]}, down["x"])) / (2 * eps)
        analytic = sum(float(np.vdot(ours[k], v[k])) for k in host)
        fd.append((numeric, analytic))
    results.append({
        "fd": fd,
        "jit": float(max(np.max(np.abs(ours["x"] - np.asarray(dx_j))),
                         np.max(np.abs(ours["w"] - np.asarray(grads_j["w"]))))),
        "x": np.asarray(x).tolist(), "w": np.asarray(params["w"]).tolist(),
        "dy": np.asarray(dy).tolist(), "dx": np.asarray(dx).tolist(),
        "dw": np.asarray(grads["w"]).tolist(),
    })
print(json.dumps(results))
"""


@pytest.mark.slow  # a child interpreter: a jax start and its own compiles
def test_xla_trap_in_subprocess():
    """Our backward where jax.vjp aborts XLA:CPU: finite differences and the direct loops.

    Run in a child process: an abort there fails this test instead of killing pytest.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _TRAP_SCRIPT, json.dumps(XLA_TRAPS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(XLA_TRAPS)
    for cfg, out in zip(XLA_TRAPS, results, strict=True):
        for numeric, analytic in out["fd"]:
            assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(numeric)), cfg
        assert out["jit"] < 1e-12, cfg
        _, dx_np, dw_np = np_conv(
            np.array(out["x"]),
            np.array(out["w"]),
            (cfg["stride"],) * 2,
            cfg["padding"],
            (1, 1),
            cfg["groups"],
            np.array(out["dy"]),
        )
        np.testing.assert_allclose(out["dx"], dx_np, rtol=1e-10, atol=1e-12, err_msg=str(cfg))
        np.testing.assert_allclose(out["dw"], dw_np, rtol=1e-10, atol=1e-12, err_msg=str(cfg))


@pytest.mark.parametrize(
    ("kwargs", "input_shape"),
    [
        # H: the only window reads padding rows alone (x's single row is never read)
        (
            dict(features=2, kernel_size=1, stride=3, padding=((2, 0), (1, 2)), groups=2),
            (1, 1, 3, 2),
        ),
        # H: stride 3 reads rows 0 (padding) and 3 (x[0]) of xp; x[1] is never read
        (
            dict(features=2, kernel_size=(1, 2), stride=(3, 2), padding=((3, 0), (1, 2))),
            (1, 2, 3, 2),
        ),
        # padding larger than the kernel on every side
        (dict(features=3, kernel_size=2, stride=2, padding=3), (2, 2, 3, 2)),
        # a depthwise kernel larger than the input, reaching into the padding
        (dict(features=4, kernel_size=(5, 4), padding=2, groups=4), (1, 2, 3, 4)),
    ],
)
def test_conv2d_edge_configurations(kwargs, input_shape):
    layer = conv2d(**kwargs)
    params, x, out_shape = random_params(layer, input_shape)
    y, dy, dx, grads = run_layer(layer, params, x)
    assert y.shape == out_shape
    pads = _explicit_pads(dict(nd=2, padding=kwargs["padding"]))
    stride = kwargs.get("stride", 1)
    stride = stride if isinstance(stride, tuple) else (stride, stride)
    y_np, dx_np, dw_np = np_conv(x, params["w"], stride, pads, (1, 1), kwargs.get("groups", 1), dy)
    np.testing.assert_allclose(y, y_np + np.asarray(params["b"]), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dx_np, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["w"], dw_np, rtol=1e-10, atol=1e-12)


def test_rows_past_the_last_window_get_zero_gradient():
    """Kernel 2, stride 3: along H (7) windows read rows 0-1 and 3-4, along W (9) 0-1, 3-4, 6-7."""
    layer = conv2d(2, 2, stride=3)
    params, x, out_shape = random_params(layer, (1, 7, 9, 2))
    assert out_shape == (1, 2, 3, 2)
    _, _, dx, _ = run_layer(layer, params, x)
    dx = np.asarray(dx)
    assert np.all(dx[:, 5:, :, :] == 0)  # rows 5 and 6: past the last window
    assert np.all(dx[:, 2, :, :] == 0)  # row 2: between windows
    assert np.all(dx[:, :, 2, :] == 0) and np.all(dx[:, :, 5, :] == 0)
    assert np.all(dx[:, :, 8, :] == 0)  # column 8: past the last window
    assert np.any(dx[:, 4, :, :] != 0)


# --- float32 --------------------------------------------------------------------------


def test_float32_matches_float64_closely():
    layer = conv2d(8, 3, stride=2, padding="SAME", groups=2)
    params, x, _ = random_params(layer, (2, 9, 8, 4))
    y64, dy, dx64, dp64 = run_layer(layer, params, x)
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    y32, cache = jax.jit(layer.forward)(p32, x.astype(jnp.float32))
    dx32, dp32 = jax.jit(layer.backward)(p32, cache, dy.astype(jnp.float32))
    assert y32.dtype == dx32.dtype == dp32["w"].dtype == jnp.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dp32["w"], dp64["w"], rtol=1e-4, atol=1e-4)


def test_float64_input_with_float32_params():
    """The computation runs in float64; gradients keep the dtype of what they belong to."""
    layer = conv1d(3, 2)
    params, _ = layer.init(jax.random.PRNGKey(0), (2, 5, 2))
    x = jnp.ones((2, 5, 2), jnp.float64)
    y, cache = layer.forward(params, x)
    dx, grads = layer.backward(params, cache, jnp.ones_like(y))
    assert y.dtype == dx.dtype == jnp.float64
    assert grads["w"].dtype == grads["b"].dtype == jnp.float32


def test_conv1d_is_conv2d_with_a_unit_axis():
    c1 = conv1d(4, 3, stride=2, padding="SAME", dilation=1, groups=2)
    c2 = conv2d(4, (1, 3), stride=(1, 2), padding=((0, 0), (1, 1)), groups=2)  # SAME for 9
    params, x, _ = random_params(c1, (2, 9, 4))
    y1, dy, dx1, g1 = run_layer(c1, params, x)
    p2 = {"w": params["w"][None], "b": params["b"]}
    y2, dy2, dx2, g2 = run_layer(c2, p2, x[:, None])
    np.testing.assert_allclose(dy2, dy[:, None])  # the same seed draws the same cotangent
    np.testing.assert_allclose(y1, y2[:, 0], rtol=1e-12)
    np.testing.assert_allclose(dx1, dx2[:, 0], rtol=1e-12)
    np.testing.assert_allclose(g1["w"], g2["w"][0], rtol=1e-12)


# --- PyTorch ----------------------------------------------------------------------------


def test_conv2d_matches_pytorch():
    torch = pytest.importorskip("torch")
    layer = conv2d(6, (3, 2), stride=(2, 1), padding=(1, (1, 1)), dilation=(1, 2), groups=3)
    params, x, _ = random_params(layer, (2, 7, 6, 3))
    y, dy, dx, grads = run_layer(layer, params, x)

    xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2), requires_grad=True)
    # HWIO (kh, kw, C/G, F) -> PyTorch (F, C/G, kh, kw)
    wt = torch.tensor(np.asarray(params["w"]).transpose(3, 2, 0, 1), requires_grad=True)
    bt = torch.tensor(np.asarray(params["b"]), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=(2, 1), padding=1, dilation=(1, 2), groups=3)
    yt.backward(torch.tensor(np.asarray(dy).transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        grads["w"], wt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(grads["b"], bt.grad.numpy(), rtol=1e-12)


def test_conv_transpose2d_matches_pytorch():
    torch = pytest.importorskip("torch")
    layer = conv_transpose2d(4, 3, stride=2, padding=1, output_padding=1, dilation=1)
    params, x, out_shape = random_params(layer, (2, 4, 5, 3))
    y, dy, dx, grads = run_layer(layer, params, x)

    # Ours (kh, kw, C, F), unflipped; PyTorch's weight (C, F, kh, kw) is the flipped kernel.
    w_torch = np.asarray(params["w"])[::-1, ::-1].transpose(2, 3, 0, 1).copy()
    xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(w_torch, requires_grad=True)
    bt = torch.tensor(np.asarray(params["b"]), requires_grad=True)
    yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, stride=2, padding=1, output_padding=1)
    assert tuple(yt.shape) == (out_shape[0], out_shape[3], *out_shape[1:3])
    yt.backward(torch.tensor(np.asarray(dy).transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    dw_torch = wt.grad.numpy().transpose(2, 3, 0, 1)[::-1, ::-1]
    np.testing.assert_allclose(grads["w"], dw_torch, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["b"], bt.grad.numpy(), rtol=1e-12)


# --- errors -----------------------------------------------------------------------------


def test_errors_in_factories():
    with pytest.raises(
        ValueError, match=r"conv2d: features \(=6\) must be divisible by groups \(=4\)"
    ):
        conv2d(6, 3, groups=4)
    with pytest.raises(ValueError, match=r"conv2d: padding must be 'VALID', 'SAME'.*got 'FULL'"):
        conv2d(4, 3, padding="FULL")
    with pytest.raises(ValueError, match=r"conv2d: padding .* got \(1, 2, 3\)"):
        conv2d(4, 3, padding=(1, 2, 3))
    with pytest.raises(ValueError, match=r"conv1d: padding .*tuple of 1 entries.* got \(1, 2\)"):
        conv1d(4, 3, padding=(1, 2))
    with pytest.raises(ValueError, match=r"conv2d: padding .* got -1"):
        conv2d(4, 3, padding=-1)
    with pytest.raises(ValueError, match=r"conv2d: stride must be a positive int .* got 0"):
        conv2d(4, 3, stride=0)
    with pytest.raises(ValueError, match=r"conv1d: kernel_size .* got \(3, 3\)"):
        conv1d(4, (3, 3))
    with pytest.raises(ValueError, match="conv2d: features must be a positive int, got 0"):
        conv2d(0, 3)
    with pytest.raises(ValueError, match=r"conv_transpose2d: output_padding .* smaller than"):
        conv_transpose2d(4, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"conv_transpose2d: padding .* got -1"):
        conv_transpose2d(4, 3, padding=-1)


def test_errors_in_init():
    with pytest.raises(
        ValueError, match=r"conv2d: input channels \(=3.*\(2, 8, 8, 3\)\).*groups \(=2\)"
    ):
        conv2d(4, 3, groups=2).init(jax.random.PRNGKey(0), (2, 8, 8, 3))
    with pytest.raises(
        ValueError, match=r"conv2d: expected an input shape of rank 4 .*\(8, 8, 3\)"
    ):
        conv2d(4, 3).init(jax.random.PRNGKey(0), (8, 8, 3))
    with pytest.raises(
        ValueError, match=r"conv1d: expected an input shape of rank 3 .*\(2, 8, 8, 3\)"
    ):
        conv1d(4, 3).init(jax.random.PRNGKey(0), (2, 8, 8, 3))
    # kernel larger than the padded input: 5 taps with dilation 2 span 9 > 4 + 1 + 1
    with pytest.raises(
        ValueError,
        match=r"conv2d: the kernel spans 9 entries along spatial axis 1 \(kernel_size 5, "
        r"dilation 2\), more than the padded input's 6 "
        r"\(input shape \(2, 9, 4, 3\), padding \(1, 1\)\)",
    ):
        conv2d(4, 5, dilation=2, padding=((4, 4), (1, 1))).init(jax.random.PRNGKey(0), (2, 9, 4, 3))
    with pytest.raises(
        ValueError, match=r"conv_transpose2d: input shape \(2, 1, 1, 3\) gives an empty output"
    ):
        conv_transpose2d(4, 3, padding=2).init(jax.random.PRNGKey(0), (2, 1, 1, 3))


def test_errors_in_forward():
    layer = conv2d(4, 3)
    params = zero_params(layer, (2, 8, 8, 3))
    with pytest.raises(
        ValueError,
        match=r"conv2d: expected input with 3 channels \(last axis\), "
        r"got input of shape \(2, 8, 8, 4\)",
    ):
        layer.forward(params, np.zeros((2, 8, 8, 4)))
    with pytest.raises(
        ValueError, match=r"conv2d: expected input of rank 4 \(NHWC.*got shape \(8, 8, 3\)"
    ):
        layer.forward(params, np.zeros((8, 8, 3)))
    with pytest.raises(
        ValueError, match=r"conv2d: the kernel spans 3 .* \(input shape \(2, 2, 8, 3\)"
    ):
        layer.forward(params, np.zeros((2, 2, 8, 3)))
    with pytest.raises(TypeError, match="conv2d: x must be a floating-point array"):
        layer.forward(params, np.zeros((2, 8, 8, 3), np.int32))
    with pytest.raises(TypeError, match=r"conv2d: params must be a dict with keys \['b', 'w'\]"):
        layer.forward({"kernel": params["w"]}, np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"conv2d: params\['b'\] must have shape \(4,\)"):
        layer.forward({"w": params["w"], "b": np.zeros(5)}, np.zeros((2, 8, 8, 3)))
    grouped = conv1d(4, 3, groups=2)
    gp = zero_params(grouped, (2, 8, 6))
    with pytest.raises(ValueError, match=r"conv1d: expected input with 6 channels .*\(2, 8, 5\)"):
        grouped.forward(gp, np.zeros((2, 8, 5)))
    t = conv_transpose2d(4, 3, padding=2)
    tp = zero_params(t, (2, 3, 3, 2))
    with pytest.raises(ValueError, match=r"conv_transpose2d: expected input with 2 channels"):
        t.forward(tp, np.zeros((2, 3, 3, 5)))
    with pytest.raises(
        ValueError, match=r"conv_transpose2d: input shape \(2, 1, 3, 2\) gives an empty"
    ):
        t.forward(tp, np.zeros((2, 1, 3, 2)))
