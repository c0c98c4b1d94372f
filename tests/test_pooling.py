"""Pooling semantics: parity with lax.reduce_window and PyTorch, the tie rule, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from funcnn import reference
from funcnn.layers.pooling import avg_pool2d, global_avg_pool, max_pool2d
from tests.noise import device_normal

# --- references --------------------------------------------------------------------------


def _reduce(x, init, op, window, stride, pads):
    return lax.reduce_window(x, init, op, (1, *window, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0)))


def ref_max(x, window, stride, pads):
    return _reduce(x, np.array(-np.inf, x.dtype), lax.max, window, stride, pads)


def ref_avg(x, window, stride, pads, count_include_pad):
    total = _reduce(x, np.array(0, x.dtype), lax.add, window, stride, pads)
    if count_include_pad:
        return total / (window[0] * window[1])
    return total / _reduce(jnp.ones_like(x), np.array(0, x.dtype), lax.add, window, stride, pads)


def run(layer, x, dy=None, ref=None):
    """Our forward and hand-written backward, and ``jax.vjp`` of ``ref``: ONE jitted program.

    Returns ``(y, dx)``, or ``(y, dx, y_ref, dx_ref)`` with a ``ref``. ``dy`` defaults to
    ones. Each test compiles one program: compilation, not running, is what pooling tests
    cost (eager calls compile every operation separately).
    """
    if dy is None:
        out = jax.eval_shape(lambda x: layer.forward((), x)[0], x)
        dy = np.ones(out.shape, out.dtype)

    @jax.jit
    def program(x, dy):
        y, cache = layer.forward((), x)
        dx, dparams = layer.backward((), cache, dy)
        if ref is None:
            return y, dx, dparams
        y_ref, pullback = jax.vjp(ref, x)
        return y, dx, dparams, y_ref, pullback(dy)[0]

    y, dx, dparams, *refs = program(x, dy)
    assert dparams == ()
    return (y, dx, *refs)


def _out_shape(fn, x):
    return jax.eval_shape(fn, x).shape


# --- hypothesis parity with reduce_window ------------------------------------------------


@st.composite
def configs(draw):
    window = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = tuple((draw(st.integers(0, w // 2)), draw(st.integers(0, w // 2))) for w in window)
    spatial = tuple(
        draw(st.integers(max(1, w - lo - hi), w - lo - hi + 6))
        for w, (lo, hi) in zip(window, pads, strict=True)
    )
    shape = (draw(st.integers(1, 2)), *spatial, draw(st.integers(1, 3)))
    return shape, window, stride, pads


@settings(max_examples=12, deadline=None)
@given(configs())
def test_max_pool2d_matches_reduce_window(config):
    shape, window, stride, pads = config
    x = device_normal(0, shape)
    layer = max_pool2d(window, stride, pads)

    def ref(x):
        return ref_max(x, window, stride, pads)

    dy = device_normal(1, _out_shape(ref, x))
    y, dx, y_ref, dx_ref = run(layer, x, dy, ref)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=0)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)


@settings(max_examples=12, deadline=None)
@given(configs(), st.booleans())
def test_avg_pool2d_matches_reduce_window(config, count_include_pad):
    shape, window, stride, pads = config
    x = device_normal(0, shape)
    layer = avg_pool2d(window, stride, pads, count_include_pad=count_include_pad)

    def ref(x):
        return ref_avg(x, window, stride, pads, count_include_pad)

    dy = device_normal(1, _out_shape(ref, x))
    y, dx, y_ref, dx_ref = run(layer, x, dy, ref)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window, stride", [(2, 2), (3, 2), (3, 1), (2, 3), ((3, 2), (2, 1))])
@pytest.mark.parametrize("make", [max_pool2d, avg_pool2d], ids=["max", "avg"])
def test_same_padding_matches_reduce_window(make, window, stride):
    x = device_normal(0, (2, 7, 6, 3))
    w = window if isinstance(window, tuple) else (window, window)
    s = stride if isinstance(stride, tuple) else (stride, stride)

    def ref(x):
        if make is max_pool2d:
            init, op = np.array(-np.inf, x.dtype), lax.max
            return lax.reduce_window(x, init, op, (1, *w, 1), (1, *s, 1), "SAME")
        # count_include_pad=True: SAME padding zeros count in the divisor
        return lax.reduce_window(x, 0.0, lax.add, (1, *w, 1), (1, *s, 1), "SAME") / (w[0] * w[1])

    y, dx, y_ref, dx_ref = run(make(window, stride, "SAME"), x, ref=ref)
    assert y.shape[1:3] == (-(-7 // s[0]), -(-6 // s[1]))
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)


def test_padding_spellings_agree():
    x = device_normal(0, (1, 6, 6, 2))
    explicit = max_pool2d(3, 2, ((1, 1), (1, 1))).forward((), x)[0]
    for padding in (1, (1, 1), [[1, 1], [1, 1]]):
        np.testing.assert_array_equal(max_pool2d(3, 2, padding).forward((), x)[0], explicit)
    np.testing.assert_array_equal(
        max_pool2d(3, 2, "valid").forward((), x)[0], max_pool2d(3, 2, 0).forward((), x)[0]
    )


# --- the tie rule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "window, stride, pads",
    [
        ((2, 2), (2, 2), ((0, 0), (0, 0))),  # tiling windows
        ((2, 2), (2, 2), ((1, 0), (0, 1))),  # tiling windows over a padded input
        ((3, 3), (2, 2), ((1, 1), (1, 1))),  # overlapping windows share inputs
        ((3, 2), (1, 3), ((0, 1), (1, 0))),  # overlapping rows, gaps between columns
    ],
)
def test_max_pool2d_ties_go_to_the_first_maximum_in_row_major_order(window, stride, pads):
    layer = max_pool2d(window, stride, pads)
    # Few distinct values, so most windows hold several maxima.
    x = jax.device_put(np.random.default_rng(0).integers(0, 3, (2, 7, 8, 3)).astype(np.float64))
    dy = device_normal(1, _out_shape(lambda x: layer.forward((), x)[0], x))
    y, dx, y_ref, _ = run(layer, x, dy, lambda x: ref_max(x, window, stride, pads))
    np.testing.assert_allclose(y, y_ref)
    _, dx_np = reference.max_pool2d(x, window, stride, pads, dy=np.asarray(dy))
    np.testing.assert_allclose(dx, dx_np, atol=1e-12)


def test_max_pool2d_constant_input_routes_each_window_to_its_top_left():
    layer = max_pool2d(2)
    y, cache = layer.forward((), jnp.ones((1, 4, 4, 1)))
    dx, _ = layer.backward((), cache, jnp.ones_like(y))
    expected = np.zeros((4, 4))
    expected[::2, ::2] = 1  # exactly one element per window gets the gradient
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)


def test_max_pool2d_large_window_uses_a_wider_index():
    x = device_normal(0, (1, 17, 18, 2))
    layer = max_pool2d(17, stride=1)  # 289 offsets do not fit a uint8

    @jax.jit
    def run(x, dy):
        _, cache = layer.forward((), x)
        return cache[0], layer.backward((), cache, dy)[0]

    dy = device_normal(1, (1, 1, 2, 2))
    arg, dx = run(x, dy)
    assert arg.dtype == jnp.int32
    _, expected = reference.max_pool2d(x, (17, 17), (1, 1), ((0, 0), (0, 0)), dy=np.asarray(dy))
    np.testing.assert_allclose(dx, expected)


# --- rows and columns that no window reads ------------------------------------------------


def _read(size, window, stride, out):
    """Which of ``size`` rows (or columns) some window reads (no padding)."""
    read = np.zeros(size, bool)
    for a in range(out):
        read[a * stride : a * stride + window] = True
    return read


@pytest.mark.parametrize("window, stride", [(2, 2), (3, 2), ((2, 3), (3, 2))])
@pytest.mark.parametrize("make", [max_pool2d, avg_pool2d])
def test_unread_rows_and_columns_get_zero_gradient(make, window, stride):
    x = device_normal(0, (2, 8, 9, 2))
    layer = make(window, stride)
    y, dx = run(layer, x)
    dx = np.asarray(dx)  # NumPy indexing: eager JAX indexing compiles a gather per shape
    w = window if isinstance(window, tuple) else (window, window)
    s = stride if isinstance(stride, tuple) else (stride, stride)
    rows, cols = (_read(n, w[d], s[d], y.shape[d + 1]) for d, n in enumerate(x.shape[1:3]))
    assert not (rows.all() and cols.all())  # every configuration leaves something unread
    np.testing.assert_array_equal(dx[:, ~rows], 0)
    np.testing.assert_array_equal(dx[:, :, ~cols], 0)
    if make is avg_pool2d:  # every input that is read gets a share
        assert (dx[:, rows][:, :, cols] > 0).all()


def test_nondividing_input_gradient_is_zero_past_the_last_window():
    x = device_normal(0, (1, 5, 7, 1))
    layer = max_pool2d(2)
    y, dx = run(layer, x)
    assert y.shape == (1, 2, 3, 1)
    np.testing.assert_array_equal(dx[:, 4, :, :], 0)
    np.testing.assert_array_equal(dx[:, :, 6, :], 0)
    assert float(dx.sum()) == 6.0


# --- cache and global pooling -------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, bits",
    [
        (max_pool2d(2), 2),  # 4 offsets: 2 bits, 4 windows per byte
        (max_pool2d(2, padding=1), 2),
        (max_pool2d(3, stride=2), 4),  # overlapping windows, 9 offsets: 4 bits
        (max_pool2d(2, stride=3), 2),  # gaps between windows
        (max_pool2d((1, 2)), 1),
        (max_pool2d((4, 5), stride=1), 8),
    ],
)
def test_max_pool2d_caches_only_the_packed_offset_of_each_maximum(layer, bits):
    x = device_normal(0, (2, 9, 9, 3), np.float32)
    y, cache = jax.jit(layer.forward)((), x)
    (leaf,) = jax.tree_util.tree_leaves(cache)
    assert leaf.dtype == jnp.uint8 and leaf.size == -(-y.size * bits // 8)


def test_max_pool2d_windows_over_256_entries_cache_int32_offsets():
    layer = max_pool2d(17)
    x = device_normal(0, (2, 17, 17, 3), np.float32)
    y, cache = jax.jit(layer.forward)((), x)
    (leaf,) = jax.tree_util.tree_leaves(cache)
    assert leaf.dtype == jnp.int32 and leaf.shape == y.shape
    dx, _ = layer.backward((), cache, jnp.ones_like(y))
    flat = np.asarray(x).reshape(2, -1, 3)
    expected = np.zeros_like(flat)
    for n in range(2):
        for c in range(3):
            expected[n, flat[n, :, c].argmax(), c] = 1.0
    np.testing.assert_array_equal(dx, expected.reshape(x.shape))


def test_avg_pools_cache_no_arrays():
    x = device_normal(0, (2, 8, 8, 3))
    for layer in (avg_pool2d(3, 2, 1, count_include_pad=False), global_avg_pool()):
        assert jax.tree_util.tree_leaves(layer.forward((), x)[1]) == []


@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 3, 4, 5), (2, 2, 3, 2, 3)])
def test_global_avg_pool_means_over_space(shape):
    x = device_normal(0, shape)
    layer = global_avg_pool()
    assert layer.init(None, shape) == ((), (shape[0], shape[-1]))
    dy = device_normal(1, (shape[0], shape[-1]))
    y, dx = run(layer, x, dy)
    np.testing.assert_allclose(
        y, np.asarray(x).reshape(shape[0], -1, shape[-1]).mean(1), rtol=1e-12
    )
    count = np.prod(shape[1:-1])
    expected = np.broadcast_to(
        np.asarray(dy).reshape(shape[0], *[1] * (len(shape) - 2), shape[-1]) / count, shape
    )
    np.testing.assert_allclose(dx, expected, rtol=1e-12)


# --- PyTorch parity ---------------------------------------------------------------------------


def _torch_pool(fn, x, dy, **kwargs):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2), requires_grad=True)  # NHWC -> NCHW
    yt = fn(xt, **kwargs)
    yt.backward(torch.tensor(np.asarray(dy).transpose(0, 3, 1, 2)))
    return yt.detach().numpy().transpose(0, 2, 3, 1), xt.grad.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize(
    "window, stride, padding",
    [(2, None, 0), (3, 2, 1), ((3, 2), (2, 1), (1, 1)), (2, 2, 1), (3, 1, (0, 1))],
)
def test_avg_pool2d_matches_pytorch(window, stride, padding, count_include_pad):
    torch = pytest.importorskip("torch")
    x = device_normal(0, (2, 7, 6, 3))
    layer = avg_pool2d(window, stride, padding, count_include_pad=count_include_pad)
    dy = device_normal(1, _out_shape(lambda x: layer.forward((), x)[0], x))
    y, dx = run(layer, x, dy)
    y_t, dx_t = _torch_pool(
        torch.nn.functional.avg_pool2d,
        x,
        dy,
        kernel_size=window,
        stride=stride,
        padding=padding,
        count_include_pad=count_include_pad,
    )
    np.testing.assert_allclose(y, y_t, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "ties"])
@pytest.mark.parametrize(
    "window, stride, padding", [(2, None, 0), (2, 2, 1), (3, 2, 1), ((3, 2), (1, 2), (1, 0))]
)
def test_max_pool2d_matches_pytorch(window, stride, padding, ties):
    torch = pytest.importorskip("torch")
    x = device_normal(0, (2, 7, 6, 3))
    if ties:  # PyTorch's CPU kernel also takes the first maximum in row-major order
        x = jax.device_put(np.round(np.asarray(x)))
    layer = max_pool2d(window, stride, padding)
    dy = device_normal(1, _out_shape(lambda x: layer.forward((), x)[0], x))
    y, dx = run(layer, x, dy)
    y_t, dx_t = _torch_pool(
        torch.nn.functional.max_pool2d, x, dy, kernel_size=window, stride=stride, padding=padding
    )
    np.testing.assert_array_equal(y, y_t)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-12, atol=1e-12)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [max_pool2d, avg_pool2d])
@pytest.mark.parametrize(
    "window, error",
    [
        *[(0, ValueError), (-1, ValueError), ((2, 2, 2), ValueError), ((2, 0), ValueError)],
        *[(1.5, TypeError), (True, TypeError), ("2", TypeError)],
    ],
)
def test_bad_window_is_rejected_by_the_factory(make, window, error):
    with pytest.raises(error, match=rf"{make.__name__}: window must be a positive int"):
        make(window)


@pytest.mark.parametrize("make", [max_pool2d, avg_pool2d])
def test_bad_stride_and_padding_are_rejected_by_the_factory(make):
    name = make.__name__
    with pytest.raises(ValueError, match=rf"{name}: stride must be a positive int.*got 0"):
        make(2, stride=0)
    with pytest.raises(ValueError, match=rf"{name}: padding must be 'VALID', 'SAME'.*'FULL'"):
        make(2, padding="FULL")
    with pytest.raises(ValueError, match=rf"{name}: padding must be non-negative"):
        make(3, padding=-1)
    with pytest.raises(ValueError, match=rf"{name}: padding must be .*got \(1, 1, 1\)"):
        make(3, padding=(1, 1, 1))


@pytest.mark.parametrize("make", [max_pool2d, avg_pool2d])
def test_padding_more_than_half_the_window_is_rejected(make):
    name = make.__name__
    with pytest.raises(
        ValueError, match=rf"{name}: padding 2 is more than half the window \(3, 3\)"
    ):
        make(3, padding=2)
    with pytest.raises(ValueError, match=rf"{name}: padding .* more than half the window \(2, 4\)"):
        make((2, 4), padding=((1, 2), (0, 0)))
    make((2, 4), padding=((1, 1), (2, 2)))  # exactly half is fine


def test_avg_pool2d_count_include_pad_must_be_bool():
    with pytest.raises(TypeError, match="avg_pool2d: count_include_pad must be a bool"):
        avg_pool2d(2, count_include_pad=1)


@pytest.mark.parametrize("make", [max_pool2d, avg_pool2d])
def test_wrong_rank_names_layer_and_shape(make):
    name = make.__name__
    layer = make(2)
    with pytest.raises(
        ValueError, match=rf"{name}: expected an NHWC input .*got shape \(2, 8, 3\)"
    ):
        layer.init(None, (2, 8, 3))
    with pytest.raises(ValueError, match=rf"{name}: expected an NHWC input .*\(1, 2, 8, 8, 3\)"):
        layer.forward((), jnp.zeros((1, 2, 8, 8, 3)))


@pytest.mark.parametrize("make", [max_pool2d, avg_pool2d])
def test_window_larger_than_padded_input_names_both_shapes(make):
    name = make.__name__
    layer = make(4, padding=1)
    msg = rf"{name}: window \(4, 4\) does not fit.*\(2, 1, 5, 3\).*spatial size \(3, 7\)"
    with pytest.raises(ValueError, match=msg):
        layer.init(None, (2, 1, 5, 3))
    with pytest.raises(ValueError, match=msg):
        layer.forward((), jnp.zeros((2, 1, 5, 3)))


@pytest.mark.parametrize("layer", [max_pool2d(2), avg_pool2d(2), global_avg_pool()])
def test_params_must_be_empty_and_input_float(layer):
    with pytest.raises(TypeError, match=f"{layer.name}: this layer has no parameters"):
        layer.forward({"w": jnp.ones(2)}, jnp.zeros((1, 4, 4, 2)))
    with pytest.raises(TypeError, match=f"{layer.name}: x must be a floating-point array"):
        layer.forward((), jnp.zeros((1, 4, 4, 2), jnp.int32))


def test_global_avg_pool_needs_a_spatial_axis():
    layer = global_avg_pool()
    with pytest.raises(ValueError, match=r"global_avg_pool: .*spatial axis, got shape \(4, 3\)"):
        layer.init(None, (4, 3))
    with pytest.raises(ValueError, match=r"global_avg_pool: .*spatial axis, got shape \(4, 3\)"):
        layer.forward((), jnp.zeros((4, 3)))
