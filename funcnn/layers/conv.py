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
layer builder (:func:`_conv_layer`), one forward and one backward serve all three.

This file holds the public factories and that builder. The rest is split by job:

* :mod:`funcnn.layers.conv_geometry`: the static description of a padded convolution
  (:class:`~funcnn.layers.conv_geometry.PaddedConv`) and its shape and padding arithmetic;
* :mod:`funcnn.layers.conv_passes`: its forward and hand-written backward as ``lax``
  convolutions, built to stay clear of an XLA:CPU abort (``docs/layers/conv.md``);
* :mod:`funcnn.layers.conv_cpu`: CPU speed paths, the same sums as matrix products
  (1x1 kernels; the kernel gradient as a chunked patch product).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from funcnn.core import Layer, along_last_axis
from funcnn.initializers import Initializer, glorot_normal, zeros
from funcnn.layers.conv_geometry import (
    PaddedConv,
    extents,
    layout,
    output_size,
    padded_size,
    same_pads,
)
from funcnn.layers.conv_passes import conv_backward, conv_forward
from funcnn.validation import (
    check_cotangent,
    check_float,
    check_input_shape,
    check_int_tuple,
    check_param_tree,
    check_params,
    check_positive_int,
    parse_padding,
)

__all__ = ["conv1d", "conv2d", "conv_transpose2d"]

# The configuration that kills the interpreter when jax.vjp differentiates
# lax.conv_general_dilated on CPU with jax 0.10.2 (tests/test_conv.py runs it through our
# backward in a subprocess):
#   x (2, 3, 4, 4) NHWC, kernel (3, 2, 4, 1) HWIO, stride (2, 2), padding ((2, 1), (1, 1)).
# When it happens and why our backward avoids it: docs/layers/conv.md, "The XLA:CPU trap".


# --- the one layer builder ---------------------------------------------------------------


def _hyperparameters(name, nd, *, features, kernel_size, stride, dilation, groups):
    """The hyperparameters every convolution shares, validated: ints or per-axis tuples."""
    features = check_positive_int(name, "features", features)
    kernel = check_int_tuple(name, "kernel_size", kernel_size, nd)
    stride = check_int_tuple(name, "stride", stride, nd)
    dilation = check_int_tuple(name, "dilation", dilation, nd)
    groups = check_positive_int(name, "groups", groups)
    if features % groups:
        raise ValueError(f"{name}: features (={features}) must be divisible by groups (={groups})")
    return features, kernel, stride, dilation, groups


def _conv_layer(
    name: str,
    nd: int,
    *,
    features: int,
    kernel: tuple[int, ...],
    groups: int,
    use_bias: bool,
    w_init: Initializer,
    b_init: Initializer,
    dtype,
    conv_for: Callable[[tuple[int, ...]], PaddedConv],
    check_output: Callable[[tuple[int, ...], tuple[int, ...]], None],
) -> Layer:
    """A convolution layer: ``y = conv_forward(x, w, conv_for(x.shape)) + b``.

    ``conv_for(input_shape)`` resolves the padded convolution for an input shape (static,
    at trace time); ``check_output(input_shape, out)`` raises a ``ValueError`` in this
    layer's own terms when the spatial output ``out`` is empty. Everything else (init,
    shape and params checks, bias, the backward) is the same for every convolution.
    """

    def output_shape(shape):
        conv = conv_for(shape)
        out = output_size(shape[1:-1], kernel, conv)
        check_output(shape, out)
        return conv, (shape[0], *out, features)

    def init(key, input_shape):
        input_shape = check_input_shape(name, input_shape)
        if len(input_shape) != nd + 2:
            raise ValueError(
                f"{name}: expected an input shape of rank {nd + 2} ({layout(nd)}, batch axis "
                f"included), got {input_shape}"
            )
        if input_shape[-1] % groups:
            raise ValueError(
                f"{name}: input channels (={input_shape[-1]}, the last axis of input shape "
                f"{input_shape}) must be divisible by groups (={groups})"
            )
        _, out_shape = output_shape(input_shape)
        w_shape = (*kernel, input_shape[-1] // groups, features)
        if not use_bias:
            return {"w": w_init(key, w_shape, dtype)}, out_shape
        key_w, key_b = jax.random.split(key)
        params = {"w": w_init(key_w, w_shape, dtype), "b": b_init(key_b, (features,), dtype)}
        return params, out_shape

    def forward(params, x):
        check_param_tree(name, params, {"w": nd + 2, "b": 1} if use_bias else {"w": nd + 2})
        w = params["w"]
        shape = check_float(name, "x", x)
        if x.ndim != nd + 2:
            raise ValueError(
                f"{name}: expected input of rank {nd + 2} ({layout(nd)}, batch axis "
                f"included), got shape {shape}"
            )
        if shape[-1] != w.shape[-2] * groups:
            raise ValueError(
                f"{name}: expected input with {w.shape[-2] * groups} channels (last axis), "
                f"got input of shape {shape}"
            )
        expected = {"w": (*kernel, shape[-1] // groups, features)}
        if use_bias:
            expected["b"] = (features,)
        check_params(name, params, expected)
        conv, _ = output_shape(shape)
        dtype_ = jnp.result_type(x, w)
        y = conv_forward(x.astype(dtype_), w.astype(dtype_), conv)
        if use_bias:
            y = y + along_last_axis(params["b"], nd + 2).astype(y.dtype)
        return y.astype(dtype_), x

    def backward(params, x, dy):
        conv, out_shape = output_shape(x.shape)
        check_cotangent(name, dy, out_shape)
        # Walk the forward in reverse: y = z + b, z = valid_conv(pad(x), w).
        dx, dw = conv_backward(x, params["w"], dy, conv)
        if not use_bias:
            return dx, {"w": dw}
        db = dy.sum(axis=tuple(range(nd + 1))).astype(params["b"].dtype)
        return dx, {"w": dw, "b": db}

    return Layer(init, forward, backward, name=name)


# --- conv1d / conv2d ---------------------------------------------------------------------


def _conv(
    name: str,
    nd: int,
    *,
    features,
    kernel_size,
    stride,
    padding,
    dilation,
    groups,
    precision,
    **layer_kwargs,
) -> Layer:
    """The N-d convolution layer behind :func:`conv1d` and :func:`conv2d`."""
    features, kernel, stride, dilation, groups = _hyperparameters(
        name,
        nd,
        features=features,
        kernel_size=kernel_size,
        stride=stride,
        dilation=dilation,
        groups=groups,
    )
    spec = parse_padding(name, padding, nd)

    def conv_for(shape):
        pairs = same_pads(shape[1:-1], kernel, stride, dilation) if spec == "SAME" else spec
        pads = tuple((lo, hi, 0) for lo, hi in pairs)
        return PaddedConv(pads, stride, dilation, groups, precision)

    def check_output(shape, out):
        conv = conv_for(shape)
        padded = padded_size(shape[1:-1], conv.pads)
        for axis, (o, e, p, k, d, (lo, hi, _)) in enumerate(
            zip(out, extents(kernel, dilation), padded, kernel, dilation, conv.pads, strict=True)
        ):
            if e > p or o < 1:
                raise ValueError(
                    f"{name}: the kernel spans {e} entries along spatial axis {axis} "
                    f"(kernel_size {k}, dilation {d}), more than the padded input's {p} "
                    f"(input shape {shape}, padding ({lo}, {hi})); use a smaller kernel or "
                    f"dilation, or pad more"
                )

    return _conv_layer(
        name,
        nd,
        features=features,
        kernel=kernel,
        groups=groups,
        conv_for=conv_for,
        check_output=check_output,
        **layer_kwargs,
    )


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
        features=features,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        use_bias=use_bias,
        w_init=w_init,
        b_init=b_init,
        dtype=dtype,
        precision=precision,
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
        features=features,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        use_bias=use_bias,
        w_init=w_init,
        b_init=b_init,
        dtype=dtype,
        precision=precision,
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
    features, kernel, stride, dilation, groups = _hyperparameters(
        name,
        nd,
        features=features,
        kernel_size=kernel_size,
        stride=stride,
        dilation=dilation,
        groups=groups,
    )
    pad = check_int_tuple(name, "padding", padding, nd, low=0)
    out_pad = check_int_tuple(name, "output_padding", output_padding, nd, low=0)
    for op, s, d in zip(out_pad, stride, dilation, strict=True):
        if op >= max(s, d):
            raise ValueError(
                f"{name}: output_padding (={output_padding!r}) must be smaller than "
                f"max(stride, dilation) per axis (stride={stride}, dilation={dilation})"
            )
    # A stride-1 correlation of x dilated by the stride (interior zeros) and padded by
    # d (k - 1) - padding (low) and d (k - 1) - padding + output_padding (high). Its
    # output size is PyTorch's (in - 1) s - 2 p + d (k - 1) + output_padding + 1.
    conv = PaddedConv(
        pads=tuple(
            (d * (k - 1) - p, d * (k - 1) - p + op, s - 1)
            for k, s, d, p, op in zip(kernel, stride, dilation, pad, out_pad, strict=True)
        ),
        stride=(1,) * nd,
        dilation=dilation,
        groups=groups,
        precision=precision,
    )

    def check_output(shape, out):
        if min(out) < 1:
            raise ValueError(
                f"{name}: input shape {shape} gives an empty output {out} with padding "
                f"{pad}: (in - 1) * stride - 2 * padding + dilation * (k - 1) + "
                f"output_padding + 1 must be positive; reduce padding"
            )

    return _conv_layer(
        name,
        nd,
        features=features,
        kernel=kernel,
        groups=groups,
        use_bias=use_bias,
        w_init=w_init,
        b_init=b_init,
        dtype=dtype,
        conv_for=lambda shape: conv,
        check_output=check_output,
    )
