"""CPU speed paths of the padded convolution: the same sums, as matrix products.

XLA:CPU runs some convolutions far below the machine's matmul rate. Two cases matter
enough to get their own code, and :mod:`funcnn.layers.conv_passes` picks them:

* **1x1 kernels** (:func:`is_pointwise`): a dense layer applied at every (strided)
  position. Forward, input gradient and kernel gradient are all matrix products over the
  channel axis (:func:`pointwise_forward`, :func:`pointwise_backward`).
* **The kernel gradient** of an ungrouped kernel with 32 or more output features
  (:func:`kernel_grad_as_matmul`): XLA runs the correlation of ``xp`` with ``dy`` as a
  convolution with a huge kernel and a tiny output, 2-3x the forward's time for 3x3
  kernels. The same sum is ``patches(xp)^T @ dy`` (im2col), computed a few images at a
  time so the patches stay small however big the batch (:func:`kernel_grad_im2col`).

``benchmarks/conv_kernel_grad.py`` measures both formulations. Internal: nothing here is
public API.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jax import lax

from funcnn.layers.conv_geometry import PaddedConv, pad, unpad
from funcnn.precision import accumulation_dtype


def acc_dtype(a):
    """The accumulation dtype of every product of the convolutions: float32 for
    bfloat16/float16 operands (``preferred_element_type``; the layer rounds the results),
    else the operands' own."""
    return accumulation_dtype(a.dtype)


__all__: list[str] = []

PATCH_CHUNK_BYTES = 2**21


# --- 1x1 kernels: a matrix product over the channel axis ----------------------------------


def is_pointwise(w_shape, groups: int) -> bool:
    """Whether the kernel is 1x1 (every spatial size 1) and ungrouped."""
    return groups == 1 and all(k == 1 for k in w_shape[:-2])


def strided_rows(xp, stride):
    """The entries of ``xp`` a 1x1 kernel reads: every ``stride``-th along each spatial axis."""
    return xp[(slice(None), *(slice(None, None, s) for s in stride), slice(None))]


def pointwise_forward(x, w, conv: PaddedConv):
    """``y = xs @ w`` with ``xs`` the strided entries of ``pad(x)``: the channels of ``x``
    contracted with the input axis of the ``(C, F)`` kernel."""
    nd = conv.nd
    xs = strided_rows(pad(x, conv.pads), conv.stride)
    w2 = w.reshape(w.shape[-2:])
    dims = (((nd + 1,), (0,)), ((), ()))
    return lax.dot_general(
        xs, w2, dims, precision=conv.precision, preferred_element_type=acc_dtype(x)
    )


def pointwise_backward(x, w, dy, conv: PaddedConv):
    """``y = xs @ w`` with ``xs`` the strided entries of ``xp = pad(x)``, so
    ``dxs = dy @ w^T`` (scattered back into ``xp``'s shape with ``stride - 1`` zeros
    between entries, then cropped to ``x``) and ``dw = sum_{n, i} xs[n, i]^T dy[n, i]``."""
    nd = conv.nd
    w2 = w.reshape(w.shape[-2:])
    xp = pad(x, conv.pads)
    dims = (((nd + 1,), (1,)), ((), ()))
    dxs = lax.dot_general(
        dy, w2, dims, precision=conv.precision, preferred_element_type=acc_dtype(dy)
    )
    scatter = tuple(
        (0, p - ((o - 1) * s + 1), s - 1)
        for p, o, s in zip(xp.shape[1:-1], dy.shape[1:-1], conv.stride, strict=True)
    )
    dx = unpad(pad(dxs, scatter), conv.pads)
    rows = tuple(range(nd + 1))
    dw = lax.dot_general(
        strided_rows(xp, conv.stride),
        dy,
        ((rows, rows), ((), ())),
        precision=conv.precision,
        preferred_element_type=acc_dtype(x),
    )
    return dx, dw.reshape(w.shape)


# --- the kernel gradient as a matrix product ----------------------------------------------


def kernel_grad_as_matmul(w_shape, groups: int) -> bool:
    """Whether :func:`kernel_grad_im2col` beats XLA's convolution for this kernel.

    The product does ``2 F`` flops per patch entry it builds, so it pays when the kernel
    has enough output features ``F``. ``benchmarks/conv_kernel_grad.py`` measures both on
    a range of shapes: on CPU the product wins from 32 features on, in every shape we tried.
    """
    return groups == 1 and w_shape[-1] >= 32


def patches(xp, kernel, out, stride, dilation):
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


def kernel_grad_im2col(x, dy, w_shape, conv: PaddedConv, *, chunk_bytes=PATCH_CHUNK_BYTES):
    """``dw[k, c, f] = sum_{n, i} xp[n, i s + k d, c] dy[n, i, f]`` for ``groups == 1``,
    as ``patches(xp)^T @ dy`` summed over chunks of the batch.

    A chunk holds as many images as fit in ``chunk_bytes`` of patches, shrunk to a divisor
    of the batch; the chunks are summed in a ``lax.fori_loop``, which keeps them in cache.
    """
    nd = conv.nd
    n, kernel, out = x.shape[0], w_shape[:nd], dy.shape[1:-1]
    rows = tuple(range(nd + 1))  # batch and output positions: the contracted axes

    def chunk_grad(x_chunk, dy_chunk):
        p = patches(pad(x_chunk, conv.pads), kernel, out, conv.stride, conv.dilation)
        dims = ((rows, rows), ((), ()))
        return lax.dot_general(
            p, dy_chunk, dims, precision=conv.precision, preferred_element_type=acc_dtype(x)
        )

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
            jnp.zeros((math.prod(w_shape[:-1]), w_shape[-1]), acc_dtype(x)),
        )
    return dw.reshape(w_shape)
