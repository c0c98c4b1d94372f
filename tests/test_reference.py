"""funcnn.reference: the NumPy loops agree with the layers (a few tiny eager cases).

``tests/test_conv.py`` and ``tests/test_pooling.py`` use these loops as the reference for
random configurations; here each reference is pinned on a hand-checkable input, and the
pooling loops (forward and gradient) are compared with the layers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import reference
from funcnn.layers.pooling import avg_pool2d, max_pool2d


def test_conv_reference_by_hand():
    x = np.arange(5.0).reshape(1, 5, 1)
    w = np.array([1.0, -1.0]).reshape(2, 1, 1)
    y, dx, dw = reference.conv(x, w, (2,), ((1, 0),), (1,), 1, dy=np.ones((1, 3, 1)))
    # xp = [0, 0, 1, 2, 3, 4]; windows at 0, 2, 4: 0 - 0, 1 - 2, 3 - 4
    np.testing.assert_array_equal(y[0, :, 0], [0.0, -1.0, -1.0])
    np.testing.assert_array_equal(dx[0, :, 0], [-1.0, 1.0, -1.0, 1.0, -1.0])
    np.testing.assert_array_equal(dw[:, 0, 0], [0 + 1 + 3, 0 + 2 + 4])


def test_conv_transpose_reference_is_the_adjoint_of_conv():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 3, 2, 4))  # conv_transpose kernel: 2 in, 4 out
    x = rng.standard_normal((1, 3, 2, 2))
    y = reference.conv_transpose(x, w, (2, 1), (1, 0), (1, 0), (1, 1))
    z = rng.standard_normal(y.shape)
    w_conv = reference.conv_transpose_as_conv_kernel(w)
    back = reference.conv(z, w_conv, (2, 1), ((1, 1), (0, 0)), (1, 1))
    assert back.shape == x.shape
    np.testing.assert_allclose(np.vdot(back, x), np.vdot(z, y), rtol=1e-12)


@pytest.mark.parametrize(
    "window, stride, pads",
    [((2, 2), (2, 2), ((0, 0), (0, 0))), ((3, 2), (2, 1), ((1, 1), (0, 1)))],
)
@pytest.mark.parametrize("kind", ["max", "avg_include", "avg_exclude"])
def test_pooling_references_match_the_layers(kind, window, stride, pads):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 2), jnp.float64)
    if kind == "max":
        layer = max_pool2d(window, stride, pads)
        ref = lambda dy: reference.max_pool2d(x, window, stride, pads, dy=dy)  # noqa: E731
    else:
        include = kind == "avg_include"
        layer = avg_pool2d(window, stride, pads, count_include_pad=include)
        ref = lambda dy: reference.avg_pool2d(x, window, stride, pads, include, dy=dy)  # noqa: E731
    y, cache = layer.forward((), x)
    dy = np.asarray(jax.random.normal(jax.random.PRNGKey(1), y.shape, jnp.float64))
    dx, _ = layer.backward((), cache, jnp.asarray(dy))
    y_np, dx_np = ref(dy)
    np.testing.assert_allclose(y, y_np, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_np, rtol=1e-12, atol=1e-12)


def test_max_pool_reference_gives_ties_to_the_first_maximum():
    x = np.ones((1, 2, 2, 1))
    y, dx = reference.max_pool2d(x, (2, 2), (2, 2), ((0, 0), (0, 0)), dy=np.ones((1, 1, 1, 1)))
    assert y.item() == 1.0
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])
