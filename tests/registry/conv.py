"""Cases for ``conv1d``, ``conv2d`` and ``conv_transpose2d``.

The generic tests compare our backward with ``jax.vjp`` of *our* forward (``lax.pad`` +
``VALID`` convolution), which is safe. ``jax.vjp`` of a ``lax.conv_general_dilated`` that
pads inside the convolution is not safe (jax 0.10.2, XLA:CPU). The process aborts in the
algebraic simplifier on the *input* gradient when both of these hold:

* some spatial axis has kernel 2, stride 2, dilation 1 and low padding 1, and the high
  padding leaves the transposed convolution no padding there (``high == 1 + unread``,
  where ``unread`` counts the input rows past the last window), while that axis's output
  size is not 2; and
* on the other axes the kernel is larger than the output, i.e. the product of their
  kernel sizes exceeds the product of their output sizes. An output of size 1 with
  padding ``k - 1`` on both sides of the transposed convolution does not count.

XLA then swaps the convolution's operands and keeps the kernel-2 axis's window size,
which no longer fits the swapped kernel (the cotangent). Symmetric padding crashes too:
for example x (2, 3, 4, 4), kernel (3, 2), stride 2, padding ((1, 1), (1, 1)). Groups do
not help. "SAME" padding never crashes, because a kernel-2 axis under "SAME" has low
padding 0, and neither does ``conv1d``, which has no second axis. The kernel gradient from
``jax.vjp`` compiled in every configuration tried. These conditions come from
fuzzing in subprocesses (370 configurations for jax.vjp's input gradient, with no
mismatch against this rule; about 1,000 for our backward, none of which aborted), and
they match XLA's operand-swap rule.

The transposed convolution ``jax.vjp`` builds for our forward pads the cotangent by
``d (k - 1) >= 1`` on a kernel-2 axis, so the first condition never holds for it.
``tests/test_conv.py`` runs the known trap in a subprocess anyway.
"""

from funcnn.layers.conv import conv1d, conv2d, conv_transpose2d

from . import Case

CASES = [
    # conv2d: paddings
    Case("conv2d_valid", lambda: conv2d(4, 3), (2, 6, 5, 3), ("conv2d",)),
    Case("conv2d_same", lambda: conv2d(5, 3, padding="SAME"), (2, 5, 5, 2), ("conv2d",)),
    Case("conv2d_int_padding", lambda: conv2d(4, (3, 2), padding=1), (2, 5, 4, 3), ("conv2d",)),
    Case(
        "conv2d_pair_padding",
        lambda: conv2d(3, 3, padding=((2, 0), (1, 2))),
        (1, 5, 6, 2),
        ("conv2d",),
    ),
    Case("conv2d_kernel_fills_input", lambda: conv2d(2, (4, 5)), (2, 4, 5, 3), ("conv2d",)),
    Case("conv2d_1x1_no_bias", lambda: conv2d(4, 1, use_bias=False), (3, 4, 4, 5), ("conv2d",)),
    # conv2d: 32+ features (kernel gradient as a patch product) and 1x1 kernels (matmuls)
    Case(
        "conv2d_wide_strided_dilated",
        lambda: conv2d(32, (2, 3), stride=(2, 1), dilation=(1, 2), padding=((1, 0), (2, 1))),
        (3, 5, 6, 2),
        ("conv2d",),
    ),
    Case(
        "conv2d_1x1_stride2_padded",
        lambda: conv2d(3, 1, stride=2, padding=((1, 0), (0, 2))),
        (2, 5, 4, 3),
        ("conv2d",),
    ),
    Case("conv1d_1x1_wide", lambda: conv1d(32, 1, stride=3), (2, 7, 3), ("conv1d",)),
    # conv2d: strides (including strides that do not divide the input) and dilation
    Case(
        "conv2d_same_stride2_asymmetric",
        lambda: conv2d(4, 3, stride=2, padding="SAME"),
        (2, 6, 7, 3),
        ("conv2d",),
    ),
    Case(
        "conv2d_stride3_not_dividing",
        lambda: conv2d(3, 2, stride=3),
        (2, 9, 7, 2),
        ("conv2d",),
    ),
    Case(
        "conv2d_stride2_asymmetric_pairs",
        lambda: conv2d(2, (3, 2), stride=2, padding=((2, 1), (1, 2))),
        (2, 5, 6, 3),
        ("conv2d",),
    ),
    Case(
        "conv2d_dilated_same",
        lambda: conv2d(4, 3, dilation=2, padding="SAME"),
        (2, 7, 7, 2),
        ("conv2d",),
    ),
    Case(
        "conv2d_dilated_strided",
        lambda: conv2d(3, 2, stride=(2, 3), dilation=(2, 1), padding=1),
        (2, 7, 8, 2),
        ("conv2d",),
    ),
    # conv2d: groups
    Case("conv2d_groups2", lambda: conv2d(6, 3, groups=2, padding=1), (2, 5, 5, 4), ("conv2d",)),
    Case(
        "conv2d_depthwise",
        lambda: conv2d(3, 3, groups=3, padding="SAME"),
        (2, 6, 6, 3),
        ("conv2d",),
    ),
    Case(
        "conv2d_depthwise_multiplier2_strided",
        lambda: conv2d(6, 3, stride=2, groups=3),
        (2, 6, 5, 3),
        ("conv2d",),
    ),
    # conv1d
    Case("conv1d_valid", lambda: conv1d(4, 3), (2, 9, 3), ("conv1d",)),
    Case(
        "conv1d_same_stride2",
        lambda: conv1d(3, 4, stride=2, padding="SAME"),
        (2, 9, 2),
        ("conv1d",),
    ),
    Case(
        "conv1d_causal_dilated",
        lambda: conv1d(3, 2, dilation=3, padding=((3, 0),)),
        (2, 8, 2),
        ("conv1d",),
    ),
    Case(
        "conv1d_groups_stride3",
        lambda: conv1d(4, 3, stride=3, groups=2, use_bias=False),
        (2, 10, 4),
        ("conv1d",),
    ),
    # conv_transpose2d
    Case("conv_transpose2d", lambda: conv_transpose2d(4, 3), (2, 4, 4, 3), ("conv_transpose2d",)),
    Case(
        "conv_transpose2d_stride2_output_padding",
        lambda: conv_transpose2d(3, 3, stride=2, padding=1, output_padding=1),
        (2, 4, 5, 2),
        ("conv_transpose2d",),
    ),
    Case(
        "conv_transpose2d_stride3_kernel2",
        lambda: conv_transpose2d(2, 2, stride=3),
        (2, 3, 3, 3),
        ("conv_transpose2d",),
    ),
    Case(
        "conv_transpose2d_padding_over_kernel",
        lambda: conv_transpose2d(2, 3, stride=2, padding=(3, 1)),
        (1, 5, 4, 2),
        ("conv_transpose2d",),
    ),
    Case(
        "conv_transpose2d_dilated_groups",
        lambda: conv_transpose2d(4, 2, stride=2, output_padding=1, dilation=2, groups=2),
        (2, 3, 3, 4),
        ("conv_transpose2d",),
    ),
    Case(
        "conv_transpose2d_1x1_stride2",
        lambda: conv_transpose2d(32, 1, stride=2, output_padding=1),
        (2, 3, 2, 3),
        ("conv_transpose2d",),
    ),
    Case(
        "conv_transpose2d_rect_no_bias",
        lambda: conv_transpose2d(3, (2, 3), stride=(1, 2), use_bias=False),
        (2, 3, 4, 2),
        ("conv_transpose2d",),
    ),
]
