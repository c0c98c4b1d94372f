"""Convolutions: ``conv1d``, ``conv2d`` and ``conv_transpose2d``, channels-last.

Layouts: inputs are ``NWC`` / ``NHWC``; kernels are ``(spatial..., in/groups, out)``
(``WIO`` / ``HWIO``); params are ``{"w": kernel, "b": (out,)}`` (no ``"b"`` with
``use_bias=False``).

Every layer here is one instance of a single N-d building block, the *padded
convolution*::

    xp = pad(x, low, high, interior)          # zeros; interior = zeros between entries
    y  = valid_conv(xp, w, stride, dilation, groups)

``conv1d``/``conv2d`` use ``interior = 0``; ``conv_transpose2d`` uses ``interior =
stride - 1`` and a stride-1 convolution, which is what a transposed convolution is. So one
forward (:func:`_conv_forward`) and one backward (:func:`_conv_backward`) serve all three.

XLA folds ``lax.pad`` calls back into a convolution's window, so what matters is which
window each convolution ends up with. On strided axes the input gradient pads the
cotangent by the kernel's full extent and crops afterwards. That keeps it clear of the
window XLA:CPU (jax 0.10.2) aborts on, the one ``jax.vjp`` builds for some strided
convolutions with padding (see ``docs/layers/conv.md``).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax

from funcnn.core import Layer, along_last_axis
from funcnn.initializers import Initializer, glorot_normal, zeros
from funcnn.validation import (
    check_cotangent,
    check_float,
    check_input_shape,
    check_int_tuple,
    check_param_tree,
    check_params,
    check_positive_int,
    parse_padding,
    same_padding,
)

# The configuration that kills the interpreter when jax.vjp differentiates
# lax.conv_general_dilated on CPU with jax 0.10.2 (tests/test_conv.py runs it through our
# backward in a subprocess):
#   x (2, 3, 4, 4) NHWC, kernel (3, 2, 4, 1) HWIO, stride (2, 2), padding ((2, 1), (1, 1)).
# When it happens and why our backward avoids it: docs/layers/conv.md, "The XLA:CPU trap".


def _same_pads(size, kernel, stride, dilation):
    """lax/TF "SAME" padding for a kernel of this size and dilation."""
    extents = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    return same_padding(size, extents, stride)


# --- the N-d building block: forward and backward -----------------------------------


def _dimension_numbers(nd: int) -> lax.ConvDimensionNumbers:
    """Channels-last input/output ``(N, spatial..., C)`` and kernel ``(spatial..., I, O)``."""
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, nd + 1, *spatial),
        rhs_spec=(nd + 1, nd, *range(nd)),
        out_spec=(0, nd + 1, *spatial),
    )


def _kernel_grad_dimension_numbers(nd: int) -> lax.ConvDimensionNumbers:
    """For ``dw``: the input's channels act as the batch and its batch as the contraction.

    lhs ``xp (N, S..., C)``: batch axis ``C``, feature axis ``N``; rhs ``dy (N, O..., F)``:
    output-feature axis ``F``, input-feature axis ``N``; the result is laid out as the
    kernel ``(K..., C/groups, F)``.
    """
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(nd + 1, 0, *spatial),
        rhs_spec=(nd + 1, 0, *spatial),
        out_spec=(nd, nd + 1, *range(nd)),
    )


def _pad(x, pads):
    """Zero-pad the spatial axes; ``pads`` holds one ``(low, high, interior)`` per axis.

    Negative ``low``/``high`` crop (as ``lax.pad``). A no-op when everything is zero.
    """
    if all(p == (0, 0, 0) for p in pads):
        return x
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *pads, (0, 0, 0)))


def _unpad(g, pads):
    """The adjoint of :func:`_pad`: crop the edges, then keep every ``interior + 1``-th entry."""
    if all(p == (0, 0, 0) for p in pads):
        return g
    g = _pad(g, tuple((-lo, -hi, 0) for lo, hi, _ in pads))
    return g[(slice(None), *(slice(None, None, it + 1) for _, _, it in pads), slice(None))]


def _flip_transpose_kernel(w, groups: int):
    """``(K..., C/G, F) -> (K..., F/G, C)``: flip the spatial axes, swap in/out per group.

    Group ``g`` of ``w`` maps channels ``[g C/G, (g+1) C/G)`` to features
    ``[g F/G, (g+1) F/G)``; the result maps those features back to those channels, so it
    is again a grouped kernel with ``groups`` groups.
    """
    nd = w.ndim - 2
    *k, cg, f = w.shape
    w = w.reshape(*k, cg, groups, f // groups)
    w = jnp.moveaxis(w, nd, nd + 2)  # (K..., G, F/G, C/G)
    w = jnp.moveaxis(w, nd, nd + 1)  # (K..., F/G, G, C/G)
    w = w.reshape(*k, f // groups, groups * cg)
    return w[(slice(None, None, -1),) * nd]


def _conv_forward(x, w, pads, stride, dilation, groups, precision):
    """``y = valid_conv(pad(x, pads), w)`` with the given stride, kernel dilation and groups."""
    nd = x.ndim - 2
    if _is_pointwise(w.shape, groups):
        # contract the channels of x with the input axis of the (C, F) kernel
        xs = _strided_rows(_pad(x, pads), stride)
        w2 = w.reshape(w.shape[-2:])
        return lax.dot_general(xs, w2, (((nd + 1,), (0,)), ((), ())), precision=precision)
    return lax.conv_general_dilated(
        _pad(x, pads),
        w,
        window_strides=stride,
        padding=((0, 0),) * nd,
        rhs_dilation=dilation,
        dimension_numbers=_dimension_numbers(nd),
        feature_group_count=groups,
        precision=precision,
    )


def _conv_backward(x, w, dy, pads, stride, dilation, groups, precision):
    """Gradients of :func:`_conv_forward` with respect to ``x`` and ``w``.

    With ``xp = pad(x)`` and ``y[o] = sum_k xp[o s + k d] w[k]`` (per spatial axis,
    channel sums and groups left implicit)::

        dxp[u] = sum_{o, k : o s + k d = u} dy[o] w[k]
               = correlation of (dy with s - 1 zeros between entries, padded by
                 d (K - 1) on both sides) with the flipped, in/out-swapped kernel
        dx     = unpad(dxp)
        dw[k]  = sum_o xp[o s + k d] dy[o]
               = correlation of xp with dy, dy dilated by s, stepping by d
               = patches(xp)^T @ dy, a matrix product (ungrouped, 32+ features)

    Rows of ``xp`` past the last window (stride not dividing the input) get zero
    gradient: ``dy`` is padded on the high side by their count, and they are cropped
    from ``xp`` before ``dw``. For a 1x1 kernel all three passes are matrix products
    over the channel axis.
    """
    dtype = jnp.result_type(x, w)
    x_c, w_c, dy = x.astype(dtype), w.astype(dtype), dy.astype(dtype)
    if _is_pointwise(w.shape, groups):
        dx, dw = _pointwise_backward(x_c, w_c, dy, pads, stride, precision)
    else:
        unread = _unread_rows(x.shape, w.shape, dy.shape, pads, stride, dilation)
        dx = _input_grad(w_c, dy, x.shape, pads, stride, dilation, groups, precision, unread)
        if _kernel_grad_as_matmul(w.shape, groups):
            dw = _kernel_grad_im2col(x_c, dy, w.shape, pads, stride, dilation, precision)
        else:
            dw = _kernel_grad_conv(x_c, dy, pads, stride, dilation, groups, precision, unread)
    return dx.astype(x.dtype), dw.astype(w.dtype)


def _unread_rows(x_shape, w_shape, dy_shape, pads, stride, dilation):
    """Per spatial axis, the entries of ``xp`` past the last window (when the stride does
    not divide the padded input): they get zero gradient."""
    nd = len(x_shape) - 2
    unread = []
    for n, (lo, hi, it), k, o, s, d in zip(
        x_shape[1:-1], pads, w_shape[:nd], dy_shape[1:-1], stride, dilation, strict=True
    ):
        padded = lo + n + (n - 1) * it + hi
        used = (o - 1) * s + d * (k - 1) + 1
        unread.append(padded - used)
    return unread


def _input_grad(w, dy, x_shape, pads, stride, dilation, groups, precision, unread):
    """``dx``: the transposed convolution of ``dy``, one spatial axis at a time.

    * Strided axes: dy gets s - 1 zeros between entries and the full d (K - 1) of padding
      on both sides (plus the unread rows, high), so dxp covers all of xp; the padding of
      x is cropped afterwards. Starting at x instead would leave a kernel-2 stride-2 axis
      with no padding, the window XLA:CPU aborts on (see docs/layers/conv.md).
    * Stride-1 axes: start the correlation where x starts and stop where it ends, so no
      border is computed only to be cropped; with interior padding (transposed
      convolution) step by interior + 1 so that only entries of x are computed.
    """
    nd = len(x_shape) - 2
    span = [d * (k - 1) + 1 for k, d in zip(w.shape[:nd], dilation, strict=True)]
    dy_pads, steps, crops = [], [], []
    for n, o, e, s, r, (lo, hi, it) in zip(
        x_shape[1:-1], dy.shape[1:-1], span, stride, unread, pads, strict=True
    ):
        if s > 1:
            dy_pads.append((e - 1, e - 1 + r, s - 1))
            steps.append(1)
            crops.append((lo, hi, it))
        else:
            low = e - 1 - lo  # negative: those dy entries only reach the padding of x
            dy_pads.append((low, (n - 1) * (it + 1) + e - o - low, 0))
            steps.append(it + 1)
            crops.append((0, 0, 0))
    dxp = lax.conv_general_dilated(
        _pad(dy, tuple(dy_pads)),
        _flip_transpose_kernel(w, groups),
        window_strides=tuple(steps),
        padding=((0, 0),) * nd,
        rhs_dilation=dilation,
        dimension_numbers=_dimension_numbers(nd),
        feature_group_count=groups,
        precision=precision,
    )
    return _unpad(dxp, tuple(crops))


def _kernel_grad_conv(x, dy, pads, stride, dilation, groups, precision, unread):
    """``dw`` as one convolution: correlate the part of xp the windows read with dy.

    dy acts as the kernel, dilated by the stride; windows step by the dilation; groups
    split the channels of xp. Plain edge padding of x goes inside this convolution (as in
    the one jax.vjp builds), which saves writing xp out; interior zeros and negative
    padding (transposed convolution) are applied by lax.pad first.
    """
    nd = x.ndim - 2
    before, inside = [], []
    for n, (lo, hi, it), r in zip(x.shape[1:-1], pads, unread, strict=True):
        if it == 0 and lo >= 0 and hi - r > -n:  # (the windows read at least one row of x)
            before.append((0, min(hi - r, 0), 0))  # crop rows of x past the last window
            inside.append((lo, max(hi - r, 0)))
        else:
            before.append((lo, hi - r, it))
            inside.append((0, 0))
    return lax.conv_general_dilated(
        _pad(x, tuple(before)),
        dy,
        window_strides=dilation,
        padding=tuple(inside),
        rhs_dilation=stride,
        dimension_numbers=_kernel_grad_dimension_numbers(nd),
        batch_group_count=groups,
        precision=precision,
    )


# --- 1x1 kernels: a matrix product over the channel axis ----------------------------------
#
# A 1x1 convolution is a dense layer applied at every (strided) position. XLA:CPU runs it as
# a convolution several times slower than the matrix product it is, so it gets its own
# forward and backward.


def _is_pointwise(w_shape, groups: int) -> bool:
    return groups == 1 and all(k == 1 for k in w_shape[:-2])


def _strided_rows(xp, stride):
    """The entries of ``xp`` a 1x1 kernel reads: every ``stride``-th along each spatial axis."""
    return xp[(slice(None), *(slice(None, None, s) for s in stride), slice(None))]


def _pointwise_backward(x, w, dy, pads, stride, precision):
    """``y = xs @ w`` with ``xs`` the strided entries of ``xp = pad(x)``, so
    ``dxs = dy @ w^T`` (scattered back into ``xp``'s shape with ``stride - 1`` zeros
    between entries, then cropped to ``x``) and ``dw = sum_{n, i} xs[n, i]^T dy[n, i]``."""
    nd = x.ndim - 2
    w2 = w.reshape(w.shape[-2:])
    xp = _pad(x, pads)
    dxs = lax.dot_general(dy, w2, (((nd + 1,), (1,)), ((), ())), precision=precision)
    scatter = tuple(
        (0, p - ((o - 1) * s + 1), s - 1)
        for p, o, s in zip(xp.shape[1:-1], dy.shape[1:-1], stride, strict=True)
    )
    dx = _unpad(_pad(dxs, scatter), pads)
    rows = tuple(range(nd + 1))
    dw = lax.dot_general(
        _strided_rows(xp, stride), dy, ((rows, rows), ((), ())), precision=precision
    )
    return dx, dw.reshape(w.shape)


# --- the kernel gradient as a matrix product ----------------------------------------------
#
# XLA:CPU runs the convolution of _kernel_grad_conv (xp correlated with dy, whose spatial
# extent is the output's) as a convolution with a huge kernel and a tiny output, which it
# does slowly: 2-3x the forward's time for 3x3 kernels. The same sum is a matrix product
# of the input's patches with dy, which runs at the machine's matmul rate. The patches are built
# a few images at a time, so that they stay small however big the batch.

_PATCH_CHUNK_BYTES = 2**21


def _kernel_grad_as_matmul(w_shape, groups: int) -> bool:
    """Whether :func:`_kernel_grad_im2col` beats XLA's convolution for this kernel.

    The product does ``2 F`` flops per patch entry it builds, so it pays when the kernel
    has enough output features ``F``. ``benchmarks/conv_kernel_grad.py`` measures both on
    a range of shapes: on CPU the product wins from 32 features on, in every shape we tried.
    """
    return groups == 1 and w_shape[-1] >= 32


def _patches(xp, kernel, out, stride, dilation):
    """``(N, out..., prod(kernel) C)``: at each output position, the entries of ``xp`` its
    window reads, tap-major and channel-minor, the order of ``w.reshape(-1, F)``."""
    windows = [
        xp[
            (
                slice(None),
                *(
                    slice(t * d, t * d + (o - 1) * s + 1, s)
                    for t, o, s, d in zip(tap, out, stride, dilation, strict=True)
                ),
                slice(None),
            )
        ]
        for tap in itertools.product(*(range(k) for k in kernel))
    ]
    return jnp.concatenate(windows, axis=-1)


def _kernel_grad_im2col(
    x, dy, w_shape, pads, stride, dilation, precision, chunk_bytes=_PATCH_CHUNK_BYTES
):
    """``dw[k, c, f] = sum_{n, i} xp[n, i s + k d, c] dy[n, i, f]`` for ``groups == 1``,
    as ``patches(xp)^T @ dy`` summed over chunks of the batch."""
    nd = x.ndim - 2
    n, kernel, out = x.shape[0], w_shape[:nd], dy.shape[1:-1]
    rows = tuple(range(nd + 1))  # batch and output positions: the contracted axes

    def chunk_grad(x_chunk, dy_chunk):
        patches = _patches(_pad(x_chunk, pads), kernel, out, stride, dilation)
        return lax.dot_general(patches, dy_chunk, ((rows, rows), ((), ())), precision=precision)

    image_bytes = math.prod(out) * math.prod(kernel) * x.shape[-1] * x.dtype.itemsize
    chunk = max(1, min(n, chunk_bytes // image_bytes))
    while n % chunk:  # the largest chunk that divides the batch
        chunk -= 1
    if chunk == n:
        dw = chunk_grad(x, dy)
    else:
        xs = x.reshape(n // chunk, chunk, *x.shape[1:])
        dys = dy.reshape(n // chunk, chunk, *dy.shape[1:])
        dw = lax.fori_loop(
            0,
            n // chunk,
            lambda i, acc: acc + chunk_grad(xs[i], dys[i]),
            jnp.zeros((math.prod(w_shape[:-1]), w_shape[-1]), x.dtype),
        )
    return dw.reshape(w_shape)


# --- shared validation ------------------------------------------------------------------


def _layout(nd: int) -> str:
    return {1: "NWC", 2: "NHWC", 3: "NDHWC"}.get(nd, f"N, {nd} spatial axes, C")


def _check_groups(name: str, in_channels: int, groups: int, shape) -> None:
    if in_channels % groups:
        raise ValueError(
            f"{name}: input channels (={in_channels}, the last axis of input shape {shape}) "
            f"must be divisible by groups (={groups})"
        )


def _check_input(name: str, x, nd: int, in_channels: int | None = None):
    """Rank and channel checks at trace time; returns the input shape."""
    check_float(name, "x", x)
    shape = tuple(x.shape)
    if x.ndim != nd + 2:
        raise ValueError(
            f"{name}: expected input of rank {nd + 2} ({_layout(nd)}, batch axis included), "
            f"got shape {shape}"
        )
    if in_channels is not None and shape[-1] != in_channels:
        raise ValueError(
            f"{name}: expected input with {in_channels} channels (last axis), got input of "
            f"shape {shape}"
        )
    return shape


def _kernel_of(name: str, params, nd: int, use_bias: bool):
    """The kernel in ``params``, after checking they are the params this layer's init made."""
    ranks = {"w": nd + 2, "b": 1} if use_bias else {"w": nd + 2}
    check_param_tree(name, params, ranks)
    return params["w"]


def _output_size(name, shape, pads, kernel, stride, dilation):
    """Spatial output size of a VALID convolution of the padded input; error if it is empty."""
    out = []
    for axis, (n, (lo, hi), k, s, d) in enumerate(
        zip(shape[1:-1], pads, kernel, stride, dilation, strict=True)
    ):
        extent, padded = d * (k - 1) + 1, n + lo + hi
        if extent > padded:
            raise ValueError(
                f"{name}: the kernel spans {extent} entries along spatial axis {axis} "
                f"(kernel_size {k}, dilation {d}), more than the padded input's {padded} "
                f"(input shape {shape}, padding ({lo}, {hi})); use a smaller kernel or "
                f"dilation, or pad more"
            )
        out.append((padded - extent) // s + 1)
    return tuple(out)


# --- conv1d / conv2d ---------------------------------------------------------------------


def _conv(
    name: str,
    nd: int,
    features,
    kernel_size,
    stride,
    padding,
    dilation,
    groups,
    use_bias: bool,
    w_init: Initializer,
    b_init: Initializer,
    dtype,
    precision,
) -> Layer:
    """The N-d convolution layer behind :func:`conv1d` and :func:`conv2d`."""
    check_positive_int(name, "features", features)
    kernel = check_int_tuple(name, "kernel_size", kernel_size, nd)
    stride = check_int_tuple(name, "stride", stride, nd)
    dilation = check_int_tuple(name, "dilation", dilation, nd)
    check_positive_int(name, "groups", groups)
    if features % groups:
        raise ValueError(f"{name}: features (={features}) must be divisible by groups (={groups})")
    spec = parse_padding(name, padding, nd)

    def pads_for(shape):
        return _same_pads(shape[1:-1], kernel, stride, dilation) if spec == "SAME" else spec

    def init(key, input_shape):
        input_shape = check_input_shape(name, input_shape)
        if len(input_shape) != nd + 2:
            raise ValueError(
                f"{name}: expected an input shape of rank {nd + 2} ({_layout(nd)}, batch axis "
                f"included), got {input_shape}"
            )
        _check_groups(name, input_shape[-1], groups, input_shape)
        out = _output_size(name, input_shape, pads_for(input_shape), kernel, stride, dilation)
        w_shape = (*kernel, input_shape[-1] // groups, features)
        if not use_bias:
            return {"w": w_init(key, w_shape, dtype)}, (input_shape[0], *out, features)
        key_w, key_b = jax.random.split(key)
        params = {"w": w_init(key_w, w_shape, dtype), "b": b_init(key_b, (features,), dtype)}
        return params, (input_shape[0], *out, features)

    def forward(params, x):
        w = _kernel_of(name, params, nd, use_bias)
        shape = _check_input(name, x, nd, w.shape[-2] * groups)
        expected = {"w": (*kernel, shape[-1] // groups, features)}
        if use_bias:
            expected["b"] = (features,)
        check_params(name, params, expected)
        pads = pads_for(shape)
        _output_size(name, shape, pads, kernel, stride, dilation)
        dtype_ = jnp.result_type(x, w)
        y = _conv_forward(
            x.astype(dtype_),
            w.astype(dtype_),
            tuple((lo, hi, 0) for lo, hi in pads),
            stride,
            dilation,
            groups,
            precision,
        )
        if use_bias:
            y = y + along_last_axis(params["b"], nd + 2).astype(dtype_)
        return y, x

    def backward(params, x, dy):
        # Walk the forward in reverse: y = z + b, z = valid_conv(pad(x), w).
        pads2 = pads_for(x.shape)
        out = _output_size(name, x.shape, pads2, kernel, stride, dilation)
        check_cotangent(name, dy, (x.shape[0], *out, features))
        pads = tuple((lo, hi, 0) for lo, hi in pads2)
        dx, dw = _conv_backward(x, params["w"], dy, pads, stride, dilation, groups, precision)
        if not use_bias:
            return dx, {"w": dw}
        db = dy.sum(axis=tuple(range(nd + 1))).astype(params["b"].dtype)
        return dx, {"w": dw, "b": db}

    return Layer(init, forward, backward, name=name)


_CONV_DOC_MATH = """With ``xp`` the zero-padded input, ``s`` the stride, ``d`` the dilation,
    ``G`` the groups, ``Cg = C / G`` and ``g = o // (F / G)`` the group of output feature ``o``::

        y[n, i, o] = b[o] + sum_{k, c < Cg} xp[n, i s + k d, g Cg + c] w[k, c, o]

    (``i`` and ``k`` run over all spatial axes.) Backward::

        dxp[n, u, g Cg + c] = sum_{i, k : i s + k d = u} sum_o dy[n, i, o] w[k, c, o]
        dx = dxp with the padding cropped
        dw[k, c, o] = sum_{n, i} xp[n, i s + k d, g Cg + c] dy[n, i, o]
        db[o] = sum_{n, i} dy[n, i, o]

    ``dxp`` is a transposed convolution: a stride-1 correlation of ``dy`` (with ``s - 1``
    zeros between entries, padded by ``d (k - 1)``) with the kernel flipped along its
    spatial axes and its in/out axes swapped within each group. ``dw`` is a correlation of
    ``xp`` with ``dy``; for ungrouped kernels with 32 or more features it is computed as
    the matrix product ``patches(xp)^T @ dy`` (im2col, a few images at a time), which
    XLA:CPU runs faster. Input rows past the last window (a stride that does not divide
    the padded input) get zero gradient. ``dx`` is one ``lax.conv_general_dilated`` call;
    the zeros and padding of ``dy`` are inserted by ``lax.pad``, and on stride-1 axes only
    the entries of ``dx`` (not of the padding) are computed. With a 1x1 kernel all three
    passes are matrix products over the channel axis.
"""


def conv2d(
    features: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding="VALID",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    use_bias: bool = True,
    w_init: Initializer = glorot_normal(),
    b_init: Initializer = zeros(),
    dtype=jnp.float32,
    precision: lax.Precision | None = None,
) -> Layer:
    """2-d convolution (a cross-correlation, as in every framework), channels-last.

    Args:
      features: output channels ``F``; divisible by ``groups``.
      kernel_size: an int or ``(kh, kw)``.
      stride: an int or ``(sh, sw)``.
      padding: ``"VALID"`` (none), ``"SAME"`` (output ``ceil(in / stride)``; an odd total
        goes on the high side, the lax/TF convention), an int (all sides), or one entry
        per spatial axis, each an int (both sides) or a ``(low, high)`` pair.
      dilation: kernel dilation, an int or ``(dh, dw)``.
      groups: input and output channels are split into ``groups`` groups, each convolved
        separately; ``groups == C`` is a depthwise convolution.
      use_bias: add a learned ``b`` (params ``{"w", "b"}``; else ``{"w"}`` only).
      w_init, b_init: initializers for the kernel and the bias.
      dtype: parameter dtype.
      precision: passed to every ``lax.conv_general_dilated`` call, forward and backward
        (``None``: XLA's default; use ``lax.Precision.HIGHEST`` for full float32 on
        accelerators).

    Shapes: ``x (N, H, W, C) -> y (N, Ho, Wo, F)`` with, per spatial axis,
    ``Ho = (H + low + high - d (k - 1) - 1) // s + 1``; kernel ``w (kh, kw, C / groups, F)``
    (HWIO), bias ``b (F,)``.

    {math}
    Cache: ``x``.

    >>> import jax, jax.numpy as jnp
    >>> from funcnn.layers.conv import conv2d
    >>> layer = conv2d(8, 3, stride=2, padding="SAME")
    >>> params, out_shape = layer.init(jax.random.PRNGKey(0), (2, 9, 9, 3))
    >>> out_shape, params["w"].shape
    ((2, 5, 5, 8), (3, 3, 3, 8))
    >>> y, cache = layer.forward(params, jnp.ones((2, 9, 9, 3)))
    >>> dx, grads = layer.backward(params, cache, jnp.ones_like(y))
    >>> dx.shape, grads["b"].shape
    ((2, 9, 9, 3), (8,))
    """
    return _conv(
        "conv2d",
        2,
        features,
        kernel_size,
        stride,
        padding,
        dilation,
        groups,
        use_bias,
        w_init,
        b_init,
        dtype,
        precision,
    )


def conv1d(
    features: int,
    kernel_size: int | tuple[int],
    stride: int | tuple[int] = 1,
    padding="VALID",
    dilation: int | tuple[int] = 1,
    groups: int = 1,
    *,
    use_bias: bool = True,
    w_init: Initializer = glorot_normal(),
    b_init: Initializer = zeros(),
    dtype=jnp.float32,
    precision: lax.Precision | None = None,
) -> Layer:
    """1-d convolution, channels-last: :func:`conv2d` with one spatial axis.

    Args: as :func:`conv2d`, with ints or 1-tuples; ``padding`` per axis is
    ``((low, high),)`` (a bare ``(low, high)`` is refused: it would read as two axes).

    Shapes: ``x (N, W, C) -> y (N, Wo, F)``, ``Wo = (W + low + high - d (k - 1) - 1) // s + 1``;
    kernel ``w (k, C / groups, F)`` (WIO), bias ``b (F,)``.

    {math}
    Cache: ``x``.

    >>> import jax, jax.numpy as jnp
    >>> from funcnn.layers.conv import conv1d
    >>> layer = conv1d(4, 3, padding=((2, 0),))  # causal: pad the past only
    >>> params, out_shape = layer.init(jax.random.PRNGKey(0), (2, 10, 3))
    >>> out_shape
    (2, 10, 4)
    """
    return _conv(
        "conv1d",
        1,
        features,
        kernel_size,
        stride,
        padding,
        dilation,
        groups,
        use_bias,
        w_init,
        b_init,
        dtype,
        precision,
    )


conv2d.__doc__ = conv2d.__doc__.replace("{math}", _CONV_DOC_MATH)
conv1d.__doc__ = conv1d.__doc__.replace("{math}", _CONV_DOC_MATH)


# --- conv_transpose2d --------------------------------------------------------------------


def conv_transpose2d(
    features: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    use_bias: bool = True,
    w_init: Initializer = glorot_normal(),
    b_init: Initializer = zeros(),
    dtype=jnp.float32,
    precision: lax.Precision | None = None,
) -> Layer:
    """2-d transposed convolution ("deconvolution"): the adjoint of :func:`conv2d`.

    Sizes follow PyTorch's ``ConvTranspose2d``: per spatial axis,
    ``Ho = (H - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1``.

    Args:
      features: output channels ``F``; divisible by ``groups``.
      kernel_size, stride, dilation: ints or pairs.
      padding: an int or a pair ``(ph, pw)``: PyTorch's padding, i.e. the padding of the
        :func:`conv2d` this layer is the adjoint of; it *removes* ``padding`` rows at
        each border of the output.
      output_padding: an int or pair, added to the high side of the output (to pick
        among the input sizes a strided conv2d maps to the same size); must be smaller
        than ``max(stride, dilation)``, as PyTorch requires.
      groups: channel groups, as :func:`conv2d`.
      use_bias, w_init, b_init, dtype, precision: as :func:`conv2d`.

    Kernel layout: ``w (kh, kw, C / groups, F)``, HWIO with ``I`` the input channels of
    *this* layer and ``O`` its output features, used *without* flipping: the forward is a
    stride-1 correlation of the dilated, padded input with ``w``::

        xd = x with stride - 1 zeros between entries, padded by d (k - 1) - padding
             (low) and d (k - 1) - padding + output_padding (high); negative crops
        y[n, i, o] = b[o] + sum_{k, c < Cg} xd[n, i + k d, g Cg + c] w[k, c, o]

    It is therefore the adjoint of ``conv2d(C, kernel_size, stride, padding, dilation,
    groups)`` applied with the kernel ``w'`` that is ``w`` flipped along both spatial
    axes with its in/out axes swapped within each group: ``<conv2d_{w'}(z), x> =
    <z, conv_transpose2d_w(x)>``. PyTorch's ``ConvTranspose2d.weight`` of shape
    ``(C, F / groups, kh, kw)`` is that ``w'`` in PyTorch's layout; for ``groups == 1``,
    ``w = flip(weight.permute(2, 3, 0, 1), axes=(0, 1))``.

    Backward (the same as any padded convolution, with stride 1 on ``xd``)::

        dxd = correlation of dy, padded by d (k - 1), with the flipped, in/out-swapped w
        dx  = dxd cropped and subsampled by the stride (the adjoint of building xd)
        dw[k, c, o] = sum_{n, i} xd[n, i + k d, g Cg + c] dy[n, i, o]
        db[o] = sum_{n, i} dy[n, i, o]

    Cache: ``x``.

    >>> import jax, jax.numpy as jnp
    >>> from funcnn.layers.conv import conv_transpose2d
    >>> layer = conv_transpose2d(4, 3, stride=2, padding=1, output_padding=1)
    >>> params, out_shape = layer.init(jax.random.PRNGKey(0), (2, 5, 5, 6))
    >>> out_shape, params["w"].shape
    ((2, 10, 10, 4), (3, 3, 6, 4))
    """
    name, nd = "conv_transpose2d", 2
    check_positive_int(name, "features", features)
    kernel = check_int_tuple(name, "kernel_size", kernel_size, nd)
    stride = check_int_tuple(name, "stride", stride, nd)
    dilation = check_int_tuple(name, "dilation", dilation, nd)
    pad = check_int_tuple(name, "padding", padding, nd, low=0)
    out_pad = check_int_tuple(name, "output_padding", output_padding, nd, low=0)
    check_positive_int(name, "groups", groups)
    if features % groups:
        raise ValueError(f"{name}: features (={features}) must be divisible by groups (={groups})")
    for op, s, d in zip(out_pad, stride, dilation, strict=True):
        if op >= max(s, d):
            raise ValueError(
                f"{name}: output_padding (={output_padding!r}) must be smaller than "
                f"max(stride, dilation) per axis (stride={stride}, dilation={dilation})"
            )
    # The input padding of the stride-1 correlation: low, high, interior per axis.
    pads = tuple(
        (d * (k - 1) - p, d * (k - 1) - p + op, s - 1)
        for k, s, d, p, op in zip(kernel, stride, dilation, pad, out_pad, strict=True)
    )
    ones = (1,) * nd

    def output_shape(shape):
        out = tuple(
            (n - 1) * s - 2 * p + d * (k - 1) + op + 1
            for n, k, s, d, p, op in zip(
                shape[1:-1], kernel, stride, dilation, pad, out_pad, strict=True
            )
        )
        if min(out) < 1:
            raise ValueError(
                f"{name}: input shape {shape} gives an empty output {out} with padding "
                f"{pad}: (in - 1) * stride - 2 * padding + dilation * (k - 1) + "
                f"output_padding + 1 must be positive; reduce padding"
            )
        return (shape[0], *out, features)

    def init(key, input_shape):
        input_shape = check_input_shape(name, input_shape)
        if len(input_shape) != nd + 2:
            raise ValueError(
                f"{name}: expected an input shape of rank {nd + 2} (NHWC, batch axis "
                f"included), got {input_shape}"
            )
        _check_groups(name, input_shape[-1], groups, input_shape)
        out = output_shape(input_shape)
        w_shape = (*kernel, input_shape[-1] // groups, features)
        if not use_bias:
            return {"w": w_init(key, w_shape, dtype)}, out
        key_w, key_b = jax.random.split(key)
        return {"w": w_init(key_w, w_shape, dtype), "b": b_init(key_b, (features,), dtype)}, out

    def forward(params, x):
        w = _kernel_of(name, params, nd, use_bias)
        shape = _check_input(name, x, nd, w.shape[-2] * groups)
        expected = {"w": (*kernel, shape[-1] // groups, features)}
        if use_bias:
            expected["b"] = (features,)
        check_params(name, params, expected)
        output_shape(shape)
        dtype_ = jnp.result_type(x, w)
        y = _conv_forward(
            x.astype(dtype_), w.astype(dtype_), pads, ones, dilation, groups, precision
        )
        if use_bias:
            y = y + along_last_axis(params["b"], nd + 2).astype(dtype_)
        return y, x

    def backward(params, x, dy):
        check_cotangent(name, dy, output_shape(x.shape))
        # Walk the forward in reverse: y = z + b, z = valid_conv(dilate_and_pad(x), w).
        dx, dw = _conv_backward(x, params["w"], dy, pads, ones, dilation, groups, precision)
        if not use_bias:
            return dx, {"w": dw}
        db = dy.sum(axis=tuple(range(nd + 1))).astype(params["b"].dtype)
        return dx, {"w": dw, "b": db}

    return Layer(init, forward, backward, name=name)
