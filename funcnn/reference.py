"""Plain NumPy references for convolution and pooling: the definitions, spelled out as loops.

Each function computes a layer's output and, given a cotangent ``dy``, its gradients, by
visiting every output position and every kernel tap or window offset and adding up what
that pair contributes. Nothing is clever here: no padding tricks, no transposed
convolutions, no patch products. That is the point. The tests compare the layers of
:mod:`funcnn.layers.conv` and :mod:`funcnn.layers.pooling` (forward *and* hand-written
backward) with these loops, which are slow but easy to check by reading.

All arrays are channels-last, in float64:

* convolution: ``x (N, S..., C)``, kernel ``w (K..., C / groups, F)`` (``HWIO``);
* pooling: ``x (N, H, W, C)``.

Padding is always explicit here: one ``(low, high)`` pair per spatial axis.

>>> import numpy as np
>>> from funcnn import reference
>>> x = np.arange(4.0).reshape(1, 4, 1)
>>> w = np.ones((2, 1, 1))
>>> reference.conv(x, w, stride=(1,), padding=((0, 0),))[0, :, 0]
array([1., 3., 5.])
"""

from __future__ import annotations

import numpy as np

__all__ = ["avg_pool2d", "conv", "conv_transpose", "conv_transpose_as_conv_kernel", "max_pool2d"]


def conv(x, w, stride, padding, dilation=None, groups: int = 1, dy=None):
    """Direct-loop N-d convolution (a cross-correlation) and, given ``dy``, ``(y, dx, dw)``.

    With ``xp`` the zero-padded input, every output position ``o`` and kernel tap ``k``
    read ``xp[o * stride + k * dilation]``::

        y[n, o, g Cg + f'] += sum_c xp[n, o s + k d, g Cg + c] w[k, c, g Fg + f']

    and the gradients accumulate the same products the other way round. ``padding`` is
    one ``(low, high)`` pair per spatial axis; ``dilation`` defaults to 1. Bias is not
    included (add ``b`` to ``y``; ``db`` is ``dy`` summed over all but the last axis).
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    dilation = (1,) * nd if dilation is None else tuple(dilation)
    xp = np.pad(x, ((0, 0), *padding, (0, 0)))
    kernel, cg, f = w.shape[:nd], w.shape[-2], w.shape[-1]
    fg = f // groups
    out = [
        (p - d * (k - 1) - 1) // s + 1
        for p, k, s, d in zip(xp.shape[1:-1], kernel, stride, dilation, strict=True)
    ]
    y = np.zeros((x.shape[0], *out, f))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for o in np.ndindex(*out):
        for k in np.ndindex(*kernel):
            at = tuple(oi * s + ki * d for oi, ki, s, d in zip(o, k, stride, dilation, strict=True))
            for g in range(groups):
                cs, fs = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
                xs = xp[(slice(None), *at, cs)]  # (N, C/G)
                wk = w[(*k, slice(None), fs)]  # (C/G, F/G)
                y[(slice(None), *o, fs)] += xs @ wk
                if dy is not None:
                    dys = np.asarray(dy)[(slice(None), *o, fs)]  # (N, F/G)
                    dxp[(slice(None), *at, cs)] += dys @ wk.T
                    dw[(*k, slice(None), fs)] += xs.T @ dys
    if dy is None:
        return y
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(padding, x.shape[1:-1], strict=True))
    return y, dxp[(slice(None), *crop, slice(None))], dw


def conv_transpose(x, w, stride, padding, output_padding, dilation, groups: int = 1, dy=None):
    """Direct-loop transposed convolution in funcnn's kernel layout (no flip), and gradients.

    Input position ``i`` and tap ``k`` write output position
    ``i * stride - padding + (K - 1 - k) * dilation`` (PyTorch's scatter, with the tap
    flipped because funcnn's ``conv_transpose2d`` kernel is used unflipped in a
    correlation). ``padding`` and ``output_padding`` are one int per spatial axis, as in
    :func:`funcnn.layers.conv.conv_transpose2d`. Returns ``y``, or ``(y, dx, dw)``.
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    kernel, cg, f = w.shape[:nd], w.shape[-2], w.shape[-1]
    fg = f // groups
    out = [
        (n - 1) * s - 2 * p + d * (k - 1) + op + 1
        for n, k, s, d, p, op in zip(
            x.shape[1:-1], kernel, stride, dilation, padding, output_padding, strict=True
        )
    ]
    y = np.zeros((x.shape[0], *out, f))
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for i in np.ndindex(*x.shape[1:-1]):
        for k in np.ndindex(*kernel):
            at = tuple(
                ii * s - p + (kk_n - 1 - kk) * d
                for ii, kk, kk_n, s, p, d in zip(
                    i, k, kernel, stride, padding, dilation, strict=True
                )
            )
            if not all(0 <= a < n for a, n in zip(at, out, strict=True)):
                continue
            for g in range(groups):
                cs, fs = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
                xs = x[(slice(None), *i, cs)]
                wk = w[(*k, slice(None), fs)]
                y[(slice(None), *at, fs)] += xs @ wk
                if dy is not None:
                    dys = np.asarray(dy)[(slice(None), *at, fs)]
                    dx[(slice(None), *i, cs)] += dys @ wk.T
                    dw[(*k, slice(None), fs)] += xs.T @ dys
    return y if dy is None else (y, dx, dw)


def conv_transpose_as_conv_kernel(w, groups: int = 1):
    """The ``conv2d`` kernel whose adjoint is ``conv_transpose2d`` with kernel ``w``.

    ``(kh, kw, C / G, F) -> (kh, kw, F / G, C)``: in/out swapped within each group and
    both spatial axes flipped (see :func:`funcnn.layers.conv.conv_transpose2d`).
    """
    w = np.asarray(w)
    f = w.shape[-1]
    fg = f // groups
    per_group = [np.swapaxes(w[..., g * fg : (g + 1) * fg], 2, 3) for g in range(groups)]
    return np.concatenate(per_group, axis=3)[::-1, ::-1]


def _windows(shape, window, stride, padding):
    """Yield ``(a, b, rows, cols)``: each output position and the padded slice it reads."""
    (wh, ww), (sh, sw) = window, stride
    (top, bottom), (left, right) = padding
    ho = (shape[1] + top + bottom - wh) // sh + 1
    wo = (shape[2] + left + right - ww) // sw + 1
    for a in range(ho):
        for b in range(wo):
            yield a, b, slice(a * sh, a * sh + wh), slice(b * sw, b * sw + ww)


def _out_shape(shape, window, stride, padding):
    (wh, ww), (sh, sw) = window, stride
    (top, bottom), (left, right) = padding
    ho = (shape[1] + top + bottom - wh) // sh + 1
    wo = (shape[2] + left + right - ww) // sw + 1
    return (shape[0], ho, wo, shape[3])


def max_pool2d(x, window, stride, padding, dy=None):
    """Direct-loop 2-d max pooling (padding counts as ``-inf``); given ``dy``, ``(y, dx)``.

    The gradient follows funcnn's tie rule: each ``dy[n, a, b, c]`` goes, whole, to the
    **first** maximum of its window in row-major order (``np.argmax``'s choice).
    """
    x = np.asarray(x, np.float64)
    (top, bottom), (left, right) = padding
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-np.inf)
    y = np.zeros(_out_shape(x.shape, window, stride, padding))
    dxp = np.zeros_like(xp)
    for a, b, rows, cols in _windows(x.shape, window, stride, padding):
        for n in range(x.shape[0]):
            for c in range(x.shape[3]):
                patch = xp[n, rows, cols, c]
                i, j = np.unravel_index(np.argmax(patch), patch.shape)  # the first max
                y[n, a, b, c] = patch[i, j]
                if dy is not None:
                    dxp[n, rows.start + i, cols.start + j, c] += dy[n, a, b, c]
    if dy is None:
        return y
    return y, dxp[:, top : top + x.shape[1], left : left + x.shape[2]]


def avg_pool2d(x, window, stride, padding, count_include_pad: bool = True, dy=None):
    """Direct-loop 2-d average pooling (zero padding); given ``dy``, ``(y, dx)``.

    Each window's sum is divided by ``wh * ww`` (``count_include_pad=True``) or by the
    number of its real, non-padding elements; every element of a window then receives
    ``dy / divisor`` of that window.
    """
    x = np.asarray(x, np.float64)
    (top, bottom), (left, right) = padding
    pads = ((0, 0), (top, bottom), (left, right), (0, 0))
    xp = np.pad(x, pads)
    real = np.pad(np.ones(x.shape[1:3]), pads[1:3])
    y = np.zeros(_out_shape(x.shape, window, stride, padding))
    dxp = np.zeros_like(xp)
    for a, b, rows, cols in _windows(x.shape, window, stride, padding):
        m = window[0] * window[1] if count_include_pad else real[rows, cols].sum()
        y[:, a, b, :] = xp[:, rows, cols, :].sum(axis=(1, 2)) / m
        if dy is not None:
            dxp[:, rows, cols, :] += np.asarray(dy)[:, a, b, None, None, :] / m
    if dy is None:
        return y
    return y, dxp[:, top : top + x.shape[1], left : left + x.shape[2]]
