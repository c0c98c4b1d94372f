"""The forward and backward passes of the padded convolution, as ``lax`` convolutions.

:func:`conv_forward` and :func:`conv_backward` serve every layer of
:mod:`funcnn.layers.conv` (``conv1d``/``conv2d`` with no interior padding,
``conv_transpose2d`` with ``stride - 1`` interior zeros and stride 1). For 1x1 kernels and
for wide ungrouped kernel gradients they hand over to the matrix products of
:mod:`funcnn.layers.conv_cpu`.

XLA folds ``lax.pad`` calls back into a convolution's window, so what matters is which
window each convolution ends up with. On strided axes the input gradient pads the
cotangent by the kernel's full extent and crops afterwards. That keeps it clear of the
window XLA:CPU (jax 0.10.2) aborts on, the one ``jax.vjp`` builds for some strided
convolutions with padding (see ``docs/layers/conv.md``). Internal: nothing here is public
API.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from funcnn.layers import conv_cpu
from funcnn.layers.conv_geometry import (
    PaddedConv,
    dimension_numbers,
    extents,
    flip_transpose_kernel,
    kernel_grad_dimension_numbers,
    pad,
    unpad,
    unread_rows,
)

__all__: list[str] = []


def conv_forward(x, w, conv: PaddedConv):
    """``y = valid_conv(pad(x, conv.pads), w)`` with the stride, dilation and groups of ``conv``."""
    if conv_cpu.is_pointwise(w.shape, conv.groups):
        return conv_cpu.pointwise_forward(x, w, conv)
    return lax.conv_general_dilated(
        pad(x, conv.pads),
        w,
        window_strides=conv.stride,
        padding=((0, 0),) * conv.nd,
        rhs_dilation=conv.dilation,
        dimension_numbers=dimension_numbers(conv.nd),
        feature_group_count=conv.groups,
        precision=conv.precision,
        preferred_element_type=conv_cpu.acc_dtype(x),
    )


def conv_backward(x, w, dy, conv: PaddedConv):
    """Gradients of :func:`conv_forward` with respect to ``x`` and ``w``: ``(dx, dw)``.

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
    over the channel axis. ``dx`` has ``x``'s dtype and ``dw`` ``w``'s.
    """
    dtype = jnp.result_type(x, w)
    x_c, w_c, dy = x.astype(dtype), w.astype(dtype), dy.astype(dtype)
    if conv_cpu.is_pointwise(w.shape, conv.groups):
        dx, dw = conv_cpu.pointwise_backward(x_c, w_c, dy, conv)
    else:
        unread = unread_rows(x.shape, w.shape, dy.shape, conv)
        dx = input_grad(w_c, dy, x.shape, conv, unread=unread)
        if conv_cpu.kernel_grad_as_matmul(w.shape, conv.groups):
            dw = conv_cpu.kernel_grad_im2col(x_c, dy, w.shape, conv)
        else:
            dw = kernel_grad_conv(x_c, dy, conv, unread=unread)
    return dx.astype(x.dtype), dw.astype(w.dtype)


def input_grad(w, dy, x_shape, conv: PaddedConv, *, unread):
    """``dx``: the transposed convolution of ``dy``, one spatial axis at a time.

    * Strided axes: dy gets s - 1 zeros between entries and the full d (K - 1) of padding
      on both sides (plus the ``unread`` rows, high), so dxp covers all of xp; the padding
      of x is cropped afterwards. Starting at x instead would leave a kernel-2 stride-2
      axis with no padding, the window XLA:CPU aborts on (see docs/layers/conv.md).
    * Stride-1 axes: start the correlation where x starts and stop where it ends, so no
      border is computed only to be cropped; with interior padding (transposed
      convolution) step by interior + 1 so that only entries of x are computed.
    """
    nd = conv.nd
    span = extents(w.shape[:nd], conv.dilation)
    dy_pads, steps, crops = [], [], []
    for n, o, e, s, r, (lo, hi, it) in zip(
        x_shape[1:-1], dy.shape[1:-1], span, conv.stride, unread, conv.pads, strict=True
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
        pad(dy, tuple(dy_pads)),
        flip_transpose_kernel(w, conv.groups),
        window_strides=tuple(steps),
        padding=((0, 0),) * nd,
        rhs_dilation=conv.dilation,
        dimension_numbers=dimension_numbers(nd),
        feature_group_count=conv.groups,
        precision=conv.precision,
        preferred_element_type=conv_cpu.acc_dtype(dy),
    )
    return unpad(dxp, tuple(crops))


def kernel_grad_conv(x, dy, conv: PaddedConv, *, unread):
    """``dw`` as one convolution: correlate the part of xp the windows read with dy.

    dy acts as the kernel, dilated by the stride; windows step by the dilation; groups
    split the channels of xp. Plain edge padding of x goes inside this convolution (as in
    the one jax.vjp builds), which saves writing xp out; interior zeros and negative
    padding (transposed convolution) are applied by lax.pad first.
    """
    before, inside = [], []
    for n, (lo, hi, it), r in zip(x.shape[1:-1], conv.pads, unread, strict=True):
        if it == 0 and lo >= 0 and hi - r > -n:  # (the windows read at least one row of x)
            before.append((0, min(hi - r, 0), 0))  # crop rows of x past the last window
            inside.append((lo, max(hi - r, 0)))
        else:
            before.append((lo, hi - r, it))
            inside.append((0, 0))
    return lax.conv_general_dilated(
        pad(x, tuple(before)),
        dy,
        window_strides=conv.dilation,
        padding=tuple(inside),
        rhs_dilation=conv.stride,
        dimension_numbers=kernel_grad_dimension_numbers(conv.nd),
        batch_group_count=conv.groups,
        precision=conv.precision,
        preferred_element_type=conv_cpu.acc_dtype(x),
    )
