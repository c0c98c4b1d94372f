"""Why funcnn computes some convolution gradients as matrix products, measured.

For each convolution shape it times, jit-compiled on the default device:

* the kernel gradient as one ``lax.conv_general_dilated`` (``conv_passes.kernel_grad_conv``,
  the formulation ``jax.vjp`` also uses) against the patch product ``patches(xp)^T @ dy``
  built a few images at a time (``conv_cpu.kernel_grad_im2col``);
* for 1x1 kernels, the forward as a convolution against the matrix product
  ``x @ w`` that funcnn uses.

Usage::

    python benchmarks/conv_kernel_grad.py [--repeats 20]

``funcnn.layers.conv_cpu.kernel_grad_as_matmul`` picks the product from 32 output features
on; docs/benchmarks.md records the table this prints.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from jax import lax

from funcnn.layers.conv_cpu import kernel_grad_as_matmul, kernel_grad_im2col
from funcnn.layers.conv_geometry import PaddedConv, same_pads, unread_rows
from funcnn.layers.conv_passes import conv_forward, kernel_grad_conv

try:  # run as a script: benchmarks/ is on sys.path
    from bench import interleaved, same_args
except ImportError:  # imported as benchmarks.conv_kernel_grad
    from benchmarks.bench import interleaved, same_args

# (batch, size, channels, features, kernel, stride): "SAME" padding, square images.
SHAPES = [
    (64, 28, 1, 32, 3, 1),  # the first conv of the benchmark CNN
    (64, 14, 32, 64, 3, 1),  # its second conv
    (32, 28, 32, 64, 3, 2),
    (128, 16, 16, 32, 3, 1),
    (32, 16, 64, 64, 3, 1),
    (32, 14, 128, 128, 3, 1),
    (16, 7, 256, 256, 3, 1),
    (64, 28, 3, 16, 5, 1),  # 16 features: the convolution is kept
    (32, 32, 64, 128, 1, 1),  # 1x1
]


def measure(shape, repeats: int) -> dict[str, float]:
    n, size, c, f, k, s = shape
    key_x, key_w, key_dy = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(key_x, (n, size, size, c), jnp.float32)
    w = jax.random.normal(key_w, (k, k, c, f), jnp.float32)
    stride, dilation = (s, s), (1, 1)
    pads = tuple((lo, hi, 0) for lo, hi in same_pads((size, size), (k, k), stride, dilation))
    conv = PaddedConv(pads, stride, dilation)
    y = conv_forward(x, w, conv)
    dy = jax.random.normal(key_dy, y.shape, jnp.float32)
    unread = unread_rows(x.shape, w.shape, dy.shape, conv)

    as_conv = jax.jit(lambda x, dy: kernel_grad_conv(x, dy, conv, unread=unread))
    as_matmul = jax.jit(lambda x, dy: kernel_grad_im2col(x, dy, w.shape, conv))
    reference = as_conv(x, dy)
    scale = float(jnp.abs(reference).max())
    assert float(jnp.abs(as_matmul(x, dy) - reference).max()) <= 1e-4 * scale
    contenders = {
        "dw conv": (same_args(as_conv), (x, dy)),
        "dw matmul": (same_args(as_matmul), (x, dy)),
    }
    if k == 1:
        forward_conv = jax.jit(
            lambda x, w: lax.conv_general_dilated(
                x, w, stride, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        )
        forward_matmul = jax.jit(lambda x, w: conv_forward(x, w, conv))
        contenders["forward conv"] = (same_args(forward_conv), (x, w))
        contenders["forward matmul"] = (same_args(forward_matmul), (x, w))
    return interleaved(contenders, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}\n")
    print(
        "| N, size, C, F, kernel, stride | dw conv ms | dw matmul ms | conv / matmul "
        "| funcnn uses |"
    )
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        t = measure(shape, args.repeats)
        uses = "matmul" if kernel_grad_as_matmul((shape[4],) * 2 + shape[2:4], 1) else "conv"
        print(
            f"| {shape} | {t['dw conv'] * 1e3:.2f} | {t['dw matmul'] * 1e3:.2f} "
            f"| {t['dw conv'] / t['dw matmul']:.2f} | {uses} |",
            flush=True,
        )
        if "forward conv" in t:
            print(
                f"| {shape} forward (1x1) | {t['forward conv'] * 1e3:.2f} "
                f"| {t['forward matmul'] * 1e3:.2f} "
                f"| {t['forward conv'] / t['forward matmul']:.2f} | matmul |",
                flush=True,
            )


if __name__ == "__main__":
    main()
