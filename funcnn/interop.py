"""Bridges between funcnn layers and plain JAX code.

* :func:`to_jax` turns a funcnn layer into an ordinary JAX function whose derivative,
  under ``jax.grad``/``jax.vjp``, is our hand-written backward (through ``jax.custom_vjp``).
  Use it to drop a funcnn layer into existing autodiff code.
* :func:`from_jax` turns a plain JAX function into a funcnn layer whose backward is
  ``jax.vjp`` of it. It is for prototyping a layer before writing its backward by hand
  (and a reference to check that backward against); built-in layers never use it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

from funcnn.core import Layer, check_input_shape


def to_jax(layer: Layer) -> Callable:
    """Wrap ``layer`` as a JAX-differentiable function that uses our backward.

    For a pure layer the result is ``f(params, x) -> y``; for a wide layer it is
    ``f(params, x, state, ctx) -> (y, new_state)`` (``state`` and ``ctx`` get no gradient).

    **Reverse mode only.** The bridge is a ``jax.custom_vjp``: it gives JAX the layer's
    hand-written backward, a vector-Jacobian product, and no Jacobian-vector product.
    ``jax.grad``, ``jax.vjp``, ``jax.jacrev`` and ``jax.hessian`` (forward-over-reverse:
    JAX differentiates our backward, which is plain JAX code) work; ``jax.jvp`` and
    ``jax.jacfwd`` raise a ``TypeError`` that says so, and ``jax.linearize`` fails when
    its linear function is called. For forward mode, use ``jax.jacrev`` for Jacobians,
    or differentiate the forward itself with JAX's autodiff (which does not use our
    backward), e.g. ``jax.jvp(lambda p, x: layer.forward(p, x)[0], (params, x), tangents)``
    or a :func:`from_jax` layer.

    >>> import jax, jax.numpy as jnp, funcnn as fn
    >>> from funcnn.interop import to_jax
    >>> layer = fn.dense(2)
    >>> params, _ = layer.init(jax.random.PRNGKey(0), (3, 4))
    >>> f = to_jax(layer)
    >>> g = jax.grad(lambda p: f(p, jnp.ones((3, 4))).sum())(params)
    >>> print(g["b"])
    [3. 3.]
    """
    if layer.wide:

        @jax.custom_vjp
        def wide(params, x, state, ctx):
            y, _, new_state = layer.forward(params, x, state, ctx)
            return y, new_state

        def wide_fwd(params, x, state, ctx):
            y, cache, new_state = layer.forward(params, x, state, ctx)
            return (y, new_state), (params, cache, state, ctx)

        def wide_bwd(res, cotangents):
            params, cache, state, ctx = res
            dy, _ = cotangents  # the new state is not differentiated
            dx, dparams = layer.backward(params, cache, dy)
            return dparams, dx, _zeros_like(state), _zeros_like(ctx)

        wide.defvjp(wide_fwd, wide_bwd)
        return _reverse_mode_only(layer, wide)

    @jax.custom_vjp
    def pure(params, x):
        return layer.forward(params, x)[0]

    def pure_fwd(params, x):
        y, cache = layer.forward(params, x)
        return y, (params, cache)

    def pure_bwd(res, dy):
        params, cache = res
        dx, dparams = layer.backward(params, cache, dy)
        return dparams, dx

    pure.defvjp(pure_fwd, pure_bwd)
    return _reverse_mode_only(layer, pure)


def _reverse_mode_only(layer: Layer, bridge: Callable) -> Callable:
    """``bridge`` with JAX's forward-mode error replaced by one that says what to do."""

    @functools.wraps(bridge)
    def f(*args):
        try:
            return bridge(*args)
        except TypeError as err:
            if "forward-mode" not in str(err):
                raise
            raise TypeError(
                f"to_jax({layer.name}): forward-mode autodiff (jax.jvp, jax.jacfwd) is not "
                f"available through to_jax, which hands JAX the layer's hand-written "
                f"backward as a custom_vjp (a vector-Jacobian product only). Use reverse "
                f"mode (jax.grad, jax.vjp, jax.jacrev; jax.hessian works too), or "
                f"differentiate the forward with JAX's own autodiff, e.g. jax.jvp(lambda p, "
                f"x: layer.forward(p, x)[0], primals, tangents), or a fn.interop.from_jax "
                f"layer."
            ) from None

    return f


def _zeros_like(tree):
    return jax.tree_util.tree_map(
        lambda a: (
            jax.numpy.zeros_like(a)
            if hasattr(a, "dtype") and not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
            else None
        ),
        tree,
    )


def from_jax(
    apply: Callable,
    init: Callable | None = None,
    *,
    name: str = "from_jax",
) -> Layer:
    """Make a layer from a JAX function ``apply(params, x) -> y``; backward by ``jax.vjp``.

    Args:
      apply: the forward computation.
      init: ``(key, input_shape) -> (params, output_shape)``; by default the layer has no
        params (``()``) and the output shape is inferred with ``jax.eval_shape``.
      name: the layer's name.

    The cache is the ``jax.vjp`` closure (a pytree of residuals), so it passes through
    ``jax.jit``. Replace the layer by a hand-written one once it works, and check that
    one against this with :func:`funcnn.check.check_grads`.

    >>> import jax, jax.numpy as jnp
    >>> from funcnn.interop import from_jax
    >>> cube = from_jax(lambda params, x: x ** 3, name="cube")
    >>> y, cache = cube.forward((), jnp.array([2.0]))
    >>> print(cube.backward((), cache, jnp.array([1.0]))[0])
    [12.]
    """

    def default_init(key, input_shape):
        input_shape = check_input_shape(name, input_shape, min_ndim=0)
        y = jax.eval_shape(lambda x: apply((), x), jax.ShapeDtypeStruct(input_shape, "float32"))
        return (), tuple(y.shape)

    def forward(params, x):
        y, vjp_fn = jax.vjp(apply, params, x)
        return y, vjp_fn

    def backward(params, vjp_fn, dy):
        dparams, dx = vjp_fn(dy)
        return dx, dparams

    return Layer(init or default_init, forward, backward, name=name)


__all__ = ["from_jax", "to_jax"]
