"""Convolution geometry: what a padded convolution is, statically, and its shape arithmetic.

Every convolution layer of :mod:`funcnn.layers.conv` is one *padded convolution*::

    xp = pad(x, low, high, interior)          # zeros; interior = zeros between entries
    y  = valid_conv(xp, w, stride, dilation, groups)

:class:`PaddedConv` holds everything static about one (the padding per spatial axis, the
stride, the kernel dilation, the groups and the matmul precision). This module holds the
arithmetic on it that the layers, the forward and backward passes
(:mod:`funcnn.layers.conv_passes`) and the CPU paths (:mod:`funcnn.layers.conv_cpu`)
share: output sizes, padding, the rows no window reads, and the padding and kernel
transforms the backward passes are built from. Internal: nothing here is public API.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from funcnn.validation import same_padding

__all__: list[str] = []

Pads = tuple[tuple[int, int, int], ...]  # (low, high, interior) per spatial axis


class PaddedConv(NamedTuple):
    """A padded convolution, everything static. Negative ``low``/``high`` padding crops."""

    pads: Pads
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1
    precision: lax.Precision | None = None

    @property
    def nd(self) -> int:
        """The number of spatial axes."""
        return len(self.stride)


def layout(nd: int) -> str:
    """The channels-last layout name for ``nd`` spatial axes (for error messages)."""
    return {1: "NWC", 2: "NHWC", 3: "NDHWC"}.get(nd, f"N, {nd} spatial axes, C")


def extents(kernel, dilation) -> tuple[int, ...]:
    """How many input entries a dilated kernel spans per axis: ``d (k - 1) + 1``."""
    return tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))


def same_pads(size, kernel, stride, dilation) -> tuple[tuple[int, int], ...]:
    """lax/TF ``"SAME"`` padding for a kernel of this size and dilation."""
    return same_padding(size, extents(kernel, dilation), stride)


def padded_size(size, pads: Pads) -> tuple[int, ...]:
    """The spatial size of ``pad(x, pads)`` for an input of spatial size ``size``."""
    return tuple(lo + n + (n - 1) * it + hi for n, (lo, hi, it) in zip(size, pads, strict=True))


def output_size(size, kernel, conv: PaddedConv) -> tuple[int, ...]:
    """The spatial output size of the VALID convolution of the padded input (may be <= 0:
    callers check, to name their own hyperparameters in the error)."""
    return tuple(
        (p - e) // s + 1
        for p, e, s in zip(
            padded_size(size, conv.pads), extents(kernel, conv.dilation), conv.stride, strict=True
        )
    )


def unread_rows(x_shape, w_shape, dy_shape, conv: PaddedConv) -> list[int]:
    """Per spatial axis, the entries of ``xp`` past the last window (when the stride does
    not divide the padded input): they get zero gradient."""
    nd = conv.nd
    used = [
        (o - 1) * s + e
        for o, s, e in zip(
            dy_shape[1:-1], conv.stride, extents(w_shape[:nd], conv.dilation), strict=True
        )
    ]
    return [p - u for p, u in zip(padded_size(x_shape[1:-1], conv.pads), used, strict=True)]


def dimension_numbers(nd: int) -> lax.ConvDimensionNumbers:
    """Channels-last input/output ``(N, spatial..., C)`` and kernel ``(spatial..., I, O)``."""
    spatial = tuple(range(1, nd + 1))
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, nd + 1, *spatial),
        rhs_spec=(nd + 1, nd, *range(nd)),
        out_spec=(0, nd + 1, *spatial),
    )


def kernel_grad_dimension_numbers(nd: int) -> lax.ConvDimensionNumbers:
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


def pad(x, pads: Pads):
    """Zero-pad the spatial axes; ``pads`` holds one ``(low, high, interior)`` per axis.

    Negative ``low``/``high`` crop (as ``lax.pad``). A no-op when everything is zero.
    """
    if all(p == (0, 0, 0) for p in pads):
        return x
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *pads, (0, 0, 0)))


def unpad(g, pads: Pads):
    """The adjoint of :func:`pad`: crop the edges, then keep every ``interior + 1``-th entry."""
    if all(p == (0, 0, 0) for p in pads):
        return g
    g = pad(g, tuple((-lo, -hi, 0) for lo, hi, _ in pads))
    return g[(slice(None), *(slice(None, None, it + 1) for _, _, it in pads), slice(None))]


def flip_transpose_kernel(w, groups: int):
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
