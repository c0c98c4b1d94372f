"""Pooling layers: ``max_pool2d``, ``avg_pool2d`` (NHWC) and ``global_avg_pool``.

Both window poolings are written as a static Python loop over the ``wh * ww`` offsets of
the window. For offset ``(i, j)`` the strided slice::

    S_ij = xp[:, i : i + (Ho - 1) * sh + 1 : sh, j : j + (Wo - 1) * sw + 1 : sw, :]

has the output's shape ``(N, Ho, Wo, C)`` and holds, for every output position, the
input element at that offset of its window (``xp`` is the padded input). The forward
combines the ``S_ij`` elementwise (a running max, or a sum), which XLA fuses into one
loop. The backward is the transpose of taking those slices: each offset's share of
``dy`` goes back to rows ``i + sh * a`` and columns ``j + sw * b`` of ``xp``, and the
padding rows and columns are dropped. When the windows tile the input
(``stride == window``) every input element belongs to exactly one window, and the shares,
stacked as ``(N, Ho, wh, Wo, ww, C)``, are simply reshaped to the input grid; otherwise
they are summed phase by phase (see :func:`_spread`). Rows and columns that no window
reads get zero gradient.

Max pooling caches only the position of the maximum within each window (one byte per
output element for tiling windows); the derivations are in ``docs/layers/pooling.md``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnn.core import Layer, Static, pack_uints, unpack_uints
from funcnn.validation import (
    check_array,
    check_bool,
    check_cotangent,
    check_float,
    check_input_shape,
    check_int_tuple,
    check_no_params,
    parse_padding,
    same_padding,
)


class _Geometry(NamedTuple):
    """Everything static a window pooling needs, resolved for one input shape."""

    shape: tuple[int, int, int, int]  # input (N, H, W, C)
    out: tuple[int, int]  # (Ho, Wo)
    window: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))
    dtype: np.dtype  # the input dtype, given to dx

    @property
    def tiles(self) -> bool:
        """Whether windows never overlap and never skip: each input in at most one window."""
        return self.stride == self.window


# --- hyperparameter parsing (factory time) ----------------------------------------------


def _parse_padding(name: str, padding, window: tuple[int, int]):
    """``"SAME"`` or ``((top, bottom), (left, right))``, validated against the window.

    The spellings are :func:`funcnn.validation.parse_padding`'s (``"VALID"``, ``"SAME"``,
    an int, ``(ph, pw)``, or ``(low, high)`` pairs). Explicit padding must be at most
    ``window // 2`` on every side, PyTorch's rule: it guarantees that every window holds
    at least one real element.
    """
    pads = parse_padding(name, padding, 2)
    if pads == "SAME":
        return pads
    for (lo, hi), w in zip(pads, window, strict=True):
        if max(lo, hi) > w // 2:
            raise ValueError(
                f"{name}: padding {padding!r} is more than half the window {window} "
                f"(each side must be at most window // 2, as in PyTorch, so that every "
                f"window holds a real element)"
            )
    return pads


# --- shape inference (init and forward time) ---------------------------------------------


def _geometry(name, shape, dtype, window, stride, padding) -> _Geometry:
    if len(shape) != 4:
        raise ValueError(
            f"{name}: expected an NHWC input with 4 axes (batch, height, width, channels), "
            f"got shape {tuple(shape)} ({len(shape)} axes)"
        )
    spatial = shape[1:3]
    # "SAME": out = ceil(in / s), the odd extra row on the high side
    pads = same_padding(spatial, window, stride) if padding == "SAME" else padding
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(spatial, pads, strict=True))
    if any(p < w for p, w in zip(padded, window, strict=True)):
        raise ValueError(
            f"{name}: window {window} does not fit in the input: input of shape "
            f"{tuple(shape)} with padding {pads} has spatial size {padded}"
        )
    out = tuple((p - w) // s + 1 for p, w, s in zip(padded, window, stride, strict=True))
    return _Geometry(tuple(shape), out, window, stride, pads, np.dtype(dtype))


def _out_shape(g: _Geometry) -> tuple[int, int, int, int]:
    """The output shape ``(N, Ho, Wo, C)`` of a window pooling."""
    return (g.shape[0], *g.out, g.shape[3])


def _window_init(name, window, stride, padding):
    def init(key, input_shape):
        input_shape = check_input_shape(name, input_shape)
        g = _geometry(name, input_shape, np.float32, window, stride, padding)
        return (), (input_shape[0], *g.out, input_shape[3])

    return init


def _check_x(name, params, x):
    check_no_params(name, params)
    check_float(name, "x", x)


# --- the window machinery ---------------------------------------------------------------


def _pad_input(x, g: _Geometry, value):
    """Pad the spatial axes of ``x`` with ``value`` (-inf for max, 0 for average)."""
    if g.pads == ((0, 0), (0, 0)):
        return x
    config = [(0, 0, 0), (*g.pads[0], 0), (*g.pads[1], 0), (0, 0, 0)]
    return lax.pad(x, jnp.asarray(value, x.dtype), config)


def _window_slices(xp, g: _Geometry):
    """Yield ``(k, S_k)`` for each window offset ``k = i * ww + j`` (row-major)."""
    (n, _, _, c), (ho, wo), (wh, ww), (sh, sw) = g.shape, g.out, g.window, g.stride
    for i in range(wh):
        for j in range(ww):
            limit = (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c)
            yield i * ww + j, lax.slice(xp, (0, i, j, 0), limit, (1, sh, sw, 1))


def _spread(g: _Geometry, share) -> jnp.ndarray:
    """The transpose of :func:`_window_slices`: put each offset's share back where it was read.

    ``share(k)`` is offset ``k``'s contribution, shaped ``(N, Ho, Wo, C)``; for tiling
    windows ``share(None)`` must instead return all offsets at once, broadcastable to
    ``(N, Ho, wh, Wo, ww, C)``. The result has the unpadded input's shape: shares landing
    in the padding are dropped and rows no window reads are zero.

    Other strides go by phase, in input coordinates: offset ``i`` of window ``a`` lands on
    input row ``sh * a + i - top``; writing ``i - top = p + sh * t`` (``0 <= p < sh``, floor
    division) that is row ``sh * q + p`` with ``q = a + t``. So the rows of phase ``p`` are
    the sum over those ``i`` of the shares shifted by ``t`` rows on the *output* grid
    (likewise for columns), and the ``sh * sw`` phase grids interleave into the input grid
    by a stack and a reshape. That is ``wh * ww`` additions on the output grid, which XLA
    fuses into one loop.
    """
    (n, h, w, c), (ho, wo), (wh, ww), (sh, sw) = g.shape, g.out, g.window, g.stride
    (top, _), (left, _) = g.pads
    zero = jnp.zeros((), g.dtype)
    if g.tiles:  # one window per input element: the offsets are the phases, no shifts
        blocks = jnp.broadcast_to(share(None), (n, ho, wh, wo, ww, c)).astype(g.dtype)
        blocks = blocks.reshape(n, ho * wh, wo * ww, c)  # padded coordinates
        # Negative edge padding cuts off the padding; positive appends unread (zero) rows.
        config = [(0, 0), (-top, h + top - ho * wh), (-left, w + left - wo * ww), (0, 0)]
        return lax.pad(blocks, zero, [(lo, hi, 0) for lo, hi in config])
    qh, qw = -(-h // sh), -(-w // sw)  # block rows and columns covering the input
    phases = {}  # (p_h, p_w) -> (N, qh, qw, C)
    for i in range(wh):
        th, ph = divmod(i - top, sh)
        for j in range(ww):
            tw, pw = divmod(j - left, sw)
            # Shift by (th, tw) on the output grid; negative edge padding drops the rows
            # that fall outside the input (into the padding).
            config = [(0, 0), (th, qh - ho - th), (tw, qw - wo - tw), (0, 0)]
            part = lax.pad(share(i * ww + j).astype(g.dtype), zero, [(*e, 0) for e in config])
            phases[ph, pw] = part if (ph, pw) not in phases else phases[ph, pw] + part
    empty = jnp.zeros((n, qh, qw, c), g.dtype)  # phases that no offset reaches (gaps)
    blocks = jnp.stack(
        [jnp.stack([phases.get((a, b), empty) for b in range(sw)], axis=3) for a in range(sh)],
        axis=2,
    )  # (N, qh, sh, qw, sw, C)
    dx = blocks.reshape(n, qh * sh, qw * sw, c)
    if (qh * sh, qw * sw) != (h, w):  # the last block row/column overhangs the input
        dx = dx[:, :h, :w]
    return dx


def _tiled_offsets(g: _Geometry, dtype):
    """The offset index ``k = i * ww + j`` laid out as ``(1, 1, wh, 1, ww, 1)``."""
    wh, ww = g.window
    return np.arange(wh * ww, dtype=dtype).reshape(1, 1, wh, 1, ww, 1)


def _blocks(a):
    """View ``(N, Ho, Wo, C)`` as ``(N, Ho, 1, Wo, 1, C)`` to broadcast over window offsets."""
    return a[:, :, None, :, None, :]


# --- layers ------------------------------------------------------------------------------


def max_pool2d(window, stride=None, padding=0) -> Layer:
    """2-D max pooling over NHWC inputs; padding counts as ``-inf``.

    Args:
      window: window size, an int or ``(wh, ww)``.
      stride: an int or ``(sh, sw)``; defaults to ``window``.
      padding: ``0``/``"VALID"``, ``"SAME"`` (lax convention: ``Ho = ceil(H / sh)``, the
        odd extra row on the bottom), an int, a pair of ints ``(ph, pw)`` (both sides),
        or ``((top, bottom), (left, right))``. Explicit padding is at most
        ``window // 2`` per side (PyTorch's rule).

    Shapes: ``x (N, H, W, C) -> y (N, Ho, Wo, C)`` with
    ``Ho = (H + top + bottom - wh) // sh + 1`` (floor; rows past the last window are not
    read), likewise ``Wo``.

    Forward, with ``xp`` the input padded with ``-inf``::

        y[n, a, b, c] = max_{0 <= i < wh, 0 <= j < ww} xp[n, sh * a + i, sw * b + j, c]

    Backward: the max is piecewise the identity on one element, so each ``dy[n, a, b, c]``
    goes, whole, to the position of its window's maximum and everything else gets 0
    (summed where overlapping windows share an input; padding gets nothing)::

        dx[n, sh * a + i* - top, sw * b + j* - left, c] += dy[n, a, b, c]

    Tie rule: when several elements of a window equal its maximum, ``(i*, j*)`` is the
    **first** in row-major order within the window (smallest ``i``, then smallest ``j``);
    exactly one element per window receives the gradient (PyTorch's CPU kernel picks
    the same one).

    Cache: the offset ``k* = i* * ww + j*`` of each window's maximum, one per output
    element, packed into 1, 2, 4 or 8 bits (the fewest that hold ``wh * ww`` offsets; see
    :func:`funcnn.core.pack_uints`), or ``int32`` for windows of over 256 entries. For
    2x2 windows that is 2 bits per window, 1/64 of ``x``'s float32 bytes.

    >>> import jax.numpy as jnp
    >>> from funcnn.layers.pooling import max_pool2d
    >>> layer = max_pool2d(2)
    >>> x = jnp.array([1.0, 3.0, 3.0, 2.0], jnp.float32).reshape(1, 2, 2, 1)
    >>> y, cache = layer.forward((), x)
    >>> y.ravel()
    Array([3.], dtype=float32)
    >>> layer.backward((), cache, jnp.ones_like(y))[0].ravel()  # the first 3 wins the tie
    Array([0., 1., 0., 0.], dtype=float32)
    """
    name = "max_pool2d"
    window = check_int_tuple(name, "window", window, 2)
    stride = window if stride is None else check_int_tuple(name, "stride", stride, 2)
    padding = _parse_padding(name, padding, window)
    # The cache holds each window's argmax offset packed into 1, 2, 4 or 8 bits (see
    # pack_uints; 2 bits for 2x2 windows), or as int32 for windows of over 256 entries.
    count = window[0] * window[1]
    bits = next((b for b in (1, 2, 4, 8) if count <= 2**b), None)
    index_dtype = np.int32 if bits is None else np.uint8

    def forward(params, x):
        _check_x(name, params, x)
        g = _geometry(name, x.shape, x.dtype, window, stride, padding)
        xp = _pad_input(x, g, -jnp.inf)
        # Running max over the window offsets; a later offset takes over the argmax only
        # when strictly larger, so ties keep the first offset in row-major order.
        y, arg = None, None
        for k, s in _window_slices(xp, g):
            if y is None:
                y, arg = s, jnp.zeros(s.shape, index_dtype)
            else:
                arg = jnp.where(s > y, index_dtype(k), arg)
                y = jnp.maximum(y, s)
        return y, (arg if bits is None else pack_uints(arg, bits), Static(g))

    def backward(params, cache, dy):
        offsets, g = cache[0], cache[1].value
        check_cotangent(name, dy, _out_shape(g))
        arg = offsets if bits is None else unpack_uints(offsets, np.int32)
        if g.tiles:
            # One window per input element: route dy with a one-hot over the offsets,
            # compared in dy's float dtype (exact up to 2**24), the dtype of the select;
            # a uint8 compare feeding a float select vectorized badly on CPU.
            onehot = _blocks(arg.astype(dy.dtype)) == _tiled_offsets(g, dy.dtype)
            return _spread(g, lambda _: jnp.where(onehot, _blocks(dy), 0)), ()
        # Other strides read the offsets back through shifted, bounds-checked loads (see
        # _spread), which XLA's CPU code vectorizes only for 32-bit elements: int32 here.
        return _spread(g, lambda k: jnp.where(arg == k, dy, 0)), ()

    return Layer(_window_init(name, window, stride, padding), forward, backward, name=name)


def _real_counts(g: _Geometry) -> np.ndarray:
    """How many non-padding elements each window holds, shaped ``(1, Ho, Wo, 1)``."""
    counts = []
    for n, o, w, s, (lo, _) in zip(g.shape[1:3], g.out, g.window, g.stride, g.pads, strict=True):
        start = np.arange(o) * s - lo  # first row of each window, in input coordinates
        counts.append(np.minimum(start + w, n) - np.maximum(start, 0))
    return (counts[0][:, None] * counts[1][None, :])[None, :, :, None]


def avg_pool2d(window, stride=None, padding=0, count_include_pad: bool = True) -> Layer:
    """2-D average pooling over NHWC inputs, as PyTorch's ``avg_pool2d`` (floor mode).

    Args:
      window, stride, padding: as in :func:`max_pool2d`; padding counts as zeros.
      count_include_pad: divide by the window area ``wh * ww`` (True, PyTorch's default)
        or by the number of real, non-padding elements in each window (False).

    Shapes: ``x (N, H, W, C) -> y (N, Ho, Wo, C)``, ``Ho``/``Wo`` as in :func:`max_pool2d`.

    Forward, with ``xp`` the zero-padded input and ``m[a, b]`` the divisor::

        y[n, a, b, c] = (1 / m[a, b]) * sum_{i < wh, j < ww} xp[n, sh * a + i, sw * b + j, c]

    Backward: ``y`` is linear in ``x``, and each input enters window ``(a, b)`` with
    weight ``1 / m[a, b]``, so every input of the window receives an equal share::

        dx[n, sh * a + i - top, sw * b + j - left, c] += dy[n, a, b, c] / m[a, b]

    (shares landing in padding are dropped; rows no window reads get 0).

    Cache: nothing but static shapes; the divisors follow from them.

    >>> import jax.numpy as jnp
    >>> from funcnn.layers.pooling import avg_pool2d
    >>> layer = avg_pool2d(2, padding=1, count_include_pad=False)
    >>> y, cache = layer.forward((), jnp.ones((1, 2, 2, 1), jnp.float32))
    >>> y[0, :, :, 0]
    Array([[1., 1.],
           [1., 1.]], dtype=float32)
    """
    name = "avg_pool2d"
    window = check_int_tuple(name, "window", window, 2)
    stride = window if stride is None else check_int_tuple(name, "stride", stride, 2)
    padding = _parse_padding(name, padding, window)
    count_include_pad = check_bool(name, "count_include_pad", count_include_pad)

    def divisor(g: _Geometry, dtype):
        if count_include_pad or g.pads == ((0, 0), (0, 0)):
            return jnp.asarray(window[0] * window[1], dtype)
        return jnp.asarray(_real_counts(g), dtype)

    def forward(params, x):
        _check_x(name, params, x)
        g = _geometry(name, x.shape, x.dtype, window, stride, padding)
        total = None
        for _, s in _window_slices(_pad_input(x, g, 0), g):
            total = s if total is None else total + s
        return total / divisor(g, x.dtype), Static(g)

    def backward(params, cache, dy):
        g = cache.value
        check_cotangent(name, dy, _out_shape(g))
        share = dy / divisor(g, dy.dtype)  # every input of a window gets the same share
        if g.tiles:
            return _spread(g, lambda _: _blocks(share)), ()
        return _spread(g, lambda k: share), ()

    return Layer(_window_init(name, window, stride, padding), forward, backward, name=name)


def global_avg_pool() -> Layer:
    """Average over every spatial axis: ``(N, *spatial, C) -> (N, C)`` (NWC, NHWC, NDHWC...).

    Forward: ``y[n, c] = (1 / S) * sum_p x[n, p, c]`` with ``S`` the number of spatial
    positions ``p``.

    Backward: ``dx[n, p, c] = dy[n, c] / S`` for every position ``p``.

    Cache: nothing but the static input shape.

    >>> import jax.numpy as jnp
    >>> from funcnn.layers.pooling import global_avg_pool
    >>> y, cache = global_avg_pool().forward((), jnp.arange(6, dtype=jnp.float32).reshape(1, 3, 2))
    >>> y
    Array([[2., 3.]], dtype=float32)
    """
    name = "global_avg_pool"

    def check_rank(shape):
        if len(shape) < 3:
            raise ValueError(
                f"{name}: expected an input (batch, spatial..., channels) with at least one "
                f"spatial axis, got shape {tuple(shape)}"
            )

    def init(key, input_shape):
        input_shape = check_input_shape(name, input_shape)
        check_rank(input_shape)
        return (), (input_shape[0], input_shape[-1])

    def forward(params, x):
        _check_x(name, params, x)
        check_rank(check_array(name, "x", x))
        return x.mean(axis=tuple(range(1, x.ndim - 1))), Static((x.shape, np.dtype(x.dtype)))

    def backward(params, cache, dy):
        shape, dtype = cache.value
        n, c = shape[0], shape[-1]
        check_cotangent(name, dy, (n, c))
        share = (dy / math.prod(shape[1:-1])).astype(dtype)
        return jnp.broadcast_to(share.reshape(n, *([1] * (len(shape) - 2)), c), shape), ()

    return Layer(init, forward, backward, name=name)
