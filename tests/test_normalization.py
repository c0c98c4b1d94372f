"""batchnorm and layernorm: PyTorch's numbers, train vs eval, dtypes and error messages.

The references implement PyTorch's published formulas in NumPy (biased variance to
normalize, unbiased variance in the running estimate, running = (1 - momentum) * running
+ momentum * batch); one test per layer also compares with torch itself when installed.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn.check import check_grads
from funcnn.core import Ctx, Static
from funcnn.layers.normalization import batchnorm, layernorm
from tests.noise import normal

TRAIN, EVAL = Ctx(train=True), Ctx(train=False)


# --- NumPy references ---------------------------------------------------------------------


def ref_batchnorm_train(x, scale, offset, mean_r, var_r, momentum, eps):
    """PyTorch's BatchNorm in train mode, channels last, in NumPy float64."""
    axes = tuple(range(x.ndim - 1))
    m = math.prod(x.shape[:-1])
    mu = x.mean(axis=axes)
    var = x.var(axis=axes)  # biased, for normalizing
    y = (x - mu) / np.sqrt(var + eps) * scale + offset
    new_mean = (1 - momentum) * mean_r + momentum * mu
    new_var = (1 - momentum) * var_r + momentum * var * m / (m - 1)  # unbiased
    return y, new_mean, new_var


def ref_batchnorm_eval(x, scale, offset, mean_r, var_r, eps):
    return (x - mean_r) / np.sqrt(var_r + eps) * scale + offset


def ref_layernorm(x, scale, offset, axes, eps):
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    return (x - mu) / np.sqrt(var + eps) * scale.reshape(shape) + offset.reshape(shape)


def _random_bn(seed, c, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = {
        "scale": 1 + 0.3 * rng.standard_normal(c),
        "offset": rng.standard_normal(c),
    }
    state = {
        "mean": rng.standard_normal(c),
        "var": 0.5 + rng.uniform(size=c),
    }
    cast = lambda tree: {k: v.astype(dtype) for k, v in tree.items()}  # noqa: E731
    return cast(params), cast(state)


# --- batchnorm ----------------------------------------------------------------------------


def test_batchnorm_init():
    layer = batchnorm()
    assert layer.wide
    params, state, shape = layer.init(jax.random.PRNGKey(0), (2, 5, 5, 3))
    assert shape == (2, 5, 5, 3)
    np.testing.assert_array_equal(params["scale"], np.ones(3))
    np.testing.assert_array_equal(params["offset"], np.zeros(3))
    np.testing.assert_array_equal(state["mean"], np.zeros(3))
    np.testing.assert_array_equal(state["var"], np.ones(3))
    assert params["scale"].dtype == state["var"].dtype == jnp.float32


@pytest.mark.parametrize("shape", [(8, 3), (4, 5, 2), (2, 3, 4, 5)], ids=str)
@pytest.mark.parametrize("momentum", [0.1, 0.35])
def test_batchnorm_train_matches_pytorch_formula(shape, momentum):
    eps = 1e-3
    layer = batchnorm(momentum=momentum, eps=eps)
    params, state = _random_bn(1, shape[-1])
    x = 3.0 + 2.0 * normal(2, shape)
    y, cache, new_state = layer.forward(params, x, state, TRAIN)
    ref = ref_batchnorm_train(
        *map(np.asarray, (x, params["scale"], params["offset"], state["mean"], state["var"])),
        momentum,
        eps,
    )
    np.testing.assert_allclose(y, ref[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new_state["mean"], ref[1], rtol=1e-12)
    np.testing.assert_allclose(new_state["var"], ref[2], rtol=1e-12)
    assert cache["mode"] == Static("train")


def test_batchnorm_running_statistics_over_several_steps():
    """Repeated train steps on one batch converge to its mean and unbiased variance."""
    layer = batchnorm(momentum=0.5)
    params, state, _ = layer.init(jax.random.PRNGKey(0), (10, 2))
    x = normal(1, (10, 2)) * 3 + 1
    mean_r, var_r = np.zeros(2), np.ones(2)
    for _ in range(30):
        _, _, state = layer.forward(params, x, state, TRAIN)
        mean_r = 0.5 * mean_r + 0.5 * np.asarray(x).mean(0)
        var_r = 0.5 * var_r + 0.5 * np.asarray(x).var(0, ddof=1)
    np.testing.assert_allclose(state["mean"], mean_r, rtol=1e-6)
    np.testing.assert_allclose(state["var"], var_r, rtol=1e-6)
    np.testing.assert_allclose(state["var"], np.asarray(x).var(0, ddof=1), rtol=1e-5)


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_batchnorm_momentum_extremes(momentum):
    layer = batchnorm(momentum=momentum)
    params, state = _random_bn(0, 3)
    x = normal(1, (7, 3))
    _, _, new_state = layer.forward(params, x, state, TRAIN)
    if momentum == 0.0:
        np.testing.assert_array_equal(new_state["mean"], state["mean"])
        np.testing.assert_array_equal(new_state["var"], state["var"])
    else:
        np.testing.assert_allclose(new_state["mean"], np.asarray(x).mean(0), rtol=1e-12)
        np.testing.assert_allclose(new_state["var"], np.asarray(x).var(0, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 3, 4)], ids=str)
def test_batchnorm_eval_uses_stored_statistics_and_keeps_them(shape):
    layer = batchnorm(eps=1e-4)
    params, state = _random_bn(3, shape[-1])
    x = normal(4, shape)
    y, cache, new_state = layer.forward(params, x, state, EVAL)
    assert new_state is state
    assert cache["mode"] == Static("eval")
    ref = ref_batchnorm_eval(
        *map(np.asarray, (x, params["scale"], params["offset"], state["mean"], state["var"])),
        1e-4,
    )
    np.testing.assert_allclose(y, ref, rtol=1e-12)
    # Eval mode is elementwise: one example's output does not depend on the others.
    y0, _, _ = layer.forward(params, x[:1], state, EVAL)
    np.testing.assert_allclose(y0, y[:1], rtol=1e-12)


def test_batchnorm_train_and_eval_backward_closed_forms():
    """dx in train mode sums to zero per feature and is orthogonal to xhat; eval is affine.

    (Orthogonality is exact only as eps -> 0: sum(dx * xhat) carries a factor eps / (var + eps).)
    """
    params, state = _random_bn(5, 4)
    x = normal(6, (3, 5, 4))
    dy = normal(7, x.shape)

    _, cache, _ = batchnorm(eps=1e-14).forward(params, x, state, TRAIN)
    dx, _ = batchnorm(eps=1e-14).backward(params, cache, dy)
    np.testing.assert_allclose(dx.sum((0, 1)), 0.0, atol=1e-12)
    np.testing.assert_allclose((dx * cache["xhat"]).sum((0, 1)), 0.0, atol=1e-11)

    layer = batchnorm()
    _, cache, _ = layer.forward(params, x, state, TRAIN)
    dx, grads = layer.backward(params, cache, dy)
    np.testing.assert_allclose(dx.sum((0, 1)), 0.0, atol=1e-12)
    np.testing.assert_allclose(grads["offset"], dy.sum((0, 1)), rtol=1e-12)
    np.testing.assert_allclose(grads["scale"], (dy * cache["xhat"]).sum((0, 1)), rtol=1e-12)

    _, cache, _ = layer.forward(params, x, state, EVAL)
    dx, grads = layer.backward(params, cache, dy)
    factor = params["scale"] / jnp.sqrt(state["var"] + 1e-5)
    np.testing.assert_allclose(dx, dy * factor.reshape(1, 1, 4), rtol=1e-12)
    xhat = (x - state["mean"].reshape(1, 1, 4)) / jnp.sqrt(state["var"] + 1e-5).reshape(1, 1, 4)
    np.testing.assert_allclose(grads["scale"], (dy * xhat).sum((0, 1)), rtol=1e-10)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batchnorm_grads_with_nontrivial_params_and_state(train):
    layer = batchnorm(momentum=0.2, eps=1e-3)
    params, state = _random_bn(8, 3)
    x = normal(9, (2, 4, 3, 3))
    report = check_grads(layer, params, x, state=state, ctx=Ctx(train=train))
    assert report.ok


def test_batchnorm_cache_is_xhat_and_inv_std():
    layer = batchnorm()
    params, state, _ = layer.init(jax.random.PRNGKey(0), (4, 3))
    _, cache, _ = layer.forward(params, jnp.ones((4, 3)) * jnp.arange(4.0)[:, None], state, TRAIN)
    assert sorted(cache) == ["inv_std", "mode", "xhat"]
    assert cache["xhat"].shape == (4, 3) and cache["inv_std"].shape == (3,)


def test_batchnorm_jit_matches_eager_and_cache_survives_jit():
    layer = batchnorm()
    params, state = _random_bn(0, 2)
    x = normal(1, (5, 2))
    for ctx in (TRAIN, EVAL):
        y, cache, s = layer.forward(params, x, state, ctx)
        y_j, cache_j, s_j = jax.jit(layer.forward)(params, x, state, ctx)
        np.testing.assert_allclose(y_j, y, rtol=1e-12)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), s, s_j)
        assert cache_j["mode"] == cache["mode"]
        dx, _ = layer.backward(params, cache, jnp.ones_like(y))
        dx_j, _ = jax.jit(layer.backward)(params, cache_j, jnp.ones_like(y))
        np.testing.assert_allclose(dx_j, dx, rtol=1e-10, atol=1e-12)


def test_batchnorm_dtypes():
    """float32 params and state with float64 input: float64 y and dx, float32 grads and state."""
    layer = batchnorm()
    params, state, _ = layer.init(jax.random.PRNGKey(0), (6, 3))
    x = normal(1, (6, 3))
    y, cache, new_state = layer.forward(params, x, state, TRAIN)
    dx, grads = layer.backward(params, cache, jnp.ones_like(y))
    assert y.dtype == dx.dtype == jnp.float64
    assert grads["scale"].dtype == grads["offset"].dtype == jnp.float32
    assert new_state["mean"].dtype == new_state["var"].dtype == jnp.float32


def test_batchnorm_matches_torch_batchnorm2d():
    torch = pytest.importorskip("torch")
    n, h, w, c = 3, 4, 5, 6
    momentum, eps = 0.2, 1e-4
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (n, h, w, c))
    dy = rng.normal(size=(n, h, w, c))
    gamma, beta = rng.normal(1.0, 0.2, c), rng.normal(size=c)
    mean_r, var_r = rng.normal(size=c), rng.uniform(0.5, 1.5, c)

    bn = torch.nn.BatchNorm2d(c, eps=eps, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(beta))
        bn.running_mean.copy_(torch.tensor(mean_r))
        bn.running_var.copy_(torch.tensor(var_r))
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)  # NHWC -> NCHW
    bn.train()
    yt = bn(xt)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))

    layer = batchnorm(momentum=momentum, eps=eps)
    params = {"scale": jnp.asarray(gamma), "offset": jnp.asarray(beta)}
    state = {"mean": jnp.asarray(mean_r), "var": jnp.asarray(var_r)}
    y, cache, new_state = layer.forward(params, jnp.asarray(x), state, TRAIN)
    dx, grads = layer.backward(params, cache, jnp.asarray(dy))

    def nhwc(t):
        return t.detach().numpy().transpose(0, 2, 3, 1)

    np.testing.assert_allclose(y, nhwc(yt), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, nhwc(xt.grad), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(grads["scale"], bn.weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(grads["offset"], bn.bias.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(new_state["mean"], bn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(new_state["var"], bn.running_var.numpy(), rtol=1e-12)

    bn.eval()
    xe = torch.tensor(x.transpose(0, 3, 1, 2))
    y_eval, _, _ = layer.forward(params, jnp.asarray(x), new_state, EVAL)
    np.testing.assert_allclose(y_eval, nhwc(bn(xe)), rtol=1e-10, atol=1e-10)


def test_batchnorm_train_needs_more_than_one_value_per_feature():
    layer = batchnorm()
    params, state, _ = layer.init(jax.random.PRNGKey(0), (1, 3))
    with pytest.raises(
        ValueError, match=r"batchnorm: train mode needs more than one value.*\(1, 3\)"
    ):
        layer.forward(params, jnp.ones((1, 3)), state, TRAIN)
    y, _, _ = layer.forward(params, jnp.ones((1, 3)), state, EVAL)  # eval is fine
    assert y.shape == (1, 3)


@pytest.mark.parametrize(
    "momentum, error",
    [
        *[(-0.1, ValueError), (1.5, ValueError), (math.nan, ValueError)],
        *[(True, TypeError), ("0.1", TypeError), (None, TypeError)],
    ],
)
def test_batchnorm_bad_momentum(momentum, error):
    with pytest.raises(error, match=r"batchnorm: momentum must be a number in \[0, 1\], got"):
        batchnorm(momentum=momentum)


@pytest.mark.parametrize("eps", [0.0, -1e-5, math.nan, math.inf])
def test_batchnorm_bad_eps(eps):
    with pytest.raises(ValueError, match="batchnorm: eps must be a positive finite number, got"):
        batchnorm(eps=eps)


def test_batchnorm_shape_errors():
    layer = batchnorm()
    with pytest.raises(
        ValueError, match=r"batchnorm: input_shape must have at least 2 axes.*\(8,\)"
    ):
        layer.init(jax.random.PRNGKey(0), (8,))
    params, state, _ = layer.init(jax.random.PRNGKey(0), (4, 3))
    with pytest.raises(
        ValueError, match=r"batchnorm: expected input with 3 features .*got input of shape \(4, 5\)"
    ):
        layer.forward(params, jnp.ones((4, 5)), state, TRAIN)
    with pytest.raises(
        ValueError, match=r"batchnorm: x must have at least 2 axes, got shape \(3,\)"
    ):
        layer.forward(params, jnp.ones(3), state, TRAIN)
    bad_params = {"scale": jnp.ones(3), "offset": jnp.zeros(4)}
    with pytest.raises(
        ValueError, match=r"batchnorm: params\['offset'\] must have shape \(3,\).*\(4,\)"
    ):
        layer.forward(bad_params, jnp.ones((4, 3)), state, TRAIN)
    bad_state = {"mean": jnp.zeros(4), "var": jnp.ones(3)}
    with pytest.raises(
        ValueError,
        match=r"batchnorm: state\['mean'\] must have shape \(3,\) for this input, got \(4,\)",
    ):
        layer.forward(params, jnp.ones((4, 3)), bad_state, EVAL)
    with pytest.raises(
        TypeError, match=r"batchnorm: state must be a dict with keys \['mean', 'var'\]"
    ):
        layer.forward(params, jnp.ones((4, 3)), (), TRAIN)
    with pytest.raises(TypeError, match=r"batchnorm: params must be a dict with keys"):
        layer.forward({"w": jnp.ones(3)}, jnp.ones((4, 3)), state, TRAIN)
    with pytest.raises(
        TypeError, match="batchnorm: x must be a floating-point array, got dtype int"
    ):
        layer.forward(params, jnp.ones((4, 3), jnp.int32), state, TRAIN)


# --- layernorm ----------------------------------------------------------------------------


def test_layernorm_is_pure_and_params_follow_the_normalized_axes():
    assert not layernorm().wide
    cases = [(-1, (2, 3, 4), (4,)), ((-2, -1), (2, 3, 4), (3, 4)), ((1, 3), (2, 3, 4, 5), (3, 5))]
    for axis, input_shape, param_shape in cases:
        params, shape = layernorm(axis=axis).init(jax.random.PRNGKey(0), input_shape)
        assert shape == input_shape
        assert params["scale"].shape == params["offset"].shape == param_shape


@pytest.mark.parametrize(
    ("axis", "shape"),
    [(-1, (4, 6)), (-1, (2, 3, 5)), ((-2, -1), (2, 3, 5)), (1, (3, 4, 2)), ((1, 3), (2, 3, 2, 4))],
    ids=str,
)
def test_layernorm_matches_reference(axis, shape):
    layer = layernorm(eps=1e-3, axis=axis)
    params, _ = layer.init(jax.random.PRNGKey(0), shape)
    params = {
        "scale": 1 + normal(1, params["scale"].shape),
        "offset": normal(2, params["offset"].shape),
    }
    x = 5 + 2 * normal(3, shape)
    y, (xhat, inv_std) = layer.forward(params, x)
    axes = tuple(sorted(a % len(shape) for a in ((axis,) if isinstance(axis, int) else axis)))
    ref = ref_layernorm(
        np.asarray(x), np.asarray(params["scale"]), np.asarray(params["offset"]), axes, 1e-3
    )
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xhat.mean(axis=axes), 0.0, atol=1e-12)
    assert inv_std.shape == tuple(1 if i in axes else d for i, d in enumerate(shape))
    report = check_grads(layer, params, x)
    assert report.ok


def test_layernorm_matches_torch_layernorm():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 5))
    dy = rng.normal(size=x.shape)
    gamma, beta = rng.normal(1.0, 0.3, (4, 5)), rng.normal(size=(4, 5))
    ln = torch.nn.LayerNorm((4, 5), eps=1e-4).double()
    with torch.no_grad():
        ln.weight.copy_(torch.tensor(gamma))
        ln.bias.copy_(torch.tensor(beta))
    xt = torch.tensor(x, requires_grad=True)
    yt = ln(xt)
    yt.backward(torch.tensor(dy))

    layer = layernorm(eps=1e-4, axis=(-2, -1))
    params = {"scale": jnp.asarray(gamma), "offset": jnp.asarray(beta)}
    y, cache = layer.forward(params, jnp.asarray(x))
    dx, grads = layer.backward(params, cache, jnp.asarray(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(grads["scale"], ln.weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(grads["offset"], ln.bias.grad.numpy(), rtol=1e-10)


def test_layernorm_examples_are_independent_and_dtypes_follow_the_rules():
    layer = layernorm()
    params, _ = layer.init(jax.random.PRNGKey(0), (4, 3))
    x = normal(1, (4, 3))
    y, cache = layer.forward(params, x)
    y0, _ = layer.forward(params, x[:1])
    np.testing.assert_allclose(y0, y[:1], rtol=1e-12)
    dx, grads = layer.backward(params, cache, jnp.ones_like(y))
    assert y.dtype == dx.dtype == jnp.float64
    assert grads["scale"].dtype == jnp.float32


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"eps": 0.0}, ValueError, "layernorm: eps must be a positive finite number, got 0.0"),
        ({"eps": -1.0}, ValueError, "layernorm: eps must be a positive finite number"),
        ({"eps": math.inf}, ValueError, "layernorm: eps must be a positive finite number"),
        ({"axis": ()}, ValueError, r"layernorm: axis must be an int or a non-empty tuple of ints"),
        ({"axis": 1.5}, TypeError, "layernorm: axis must be an int or a non-empty tuple of ints"),
        ({"axis": (1, True)}, TypeError, "layernorm: axis must be an int or a non-empty tuple"),
        ({"axis": (2, 2)}, ValueError, r"layernorm: axis must not repeat an axis, got \(2, 2\)"),
    ],
)
def test_layernorm_bad_hyperparameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        layernorm(**kwargs)


def test_layernorm_shape_errors():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"layernorm: axis \(1, 3\) is out of range .*\(2, 3, 4\)"):
        layernorm(axis=(1, 3)).init(key, (2, 3, 4))
    with pytest.raises(ValueError, match=r"layernorm: axis \(-1, 2\) names the same axis twice"):
        layernorm(axis=(-1, 2)).init(key, (2, 3, 4))
    with pytest.raises(ValueError, match=r"layernorm: axis 0 includes the batch axis 0"):
        layernorm(axis=0).init(key, (2, 3))
    with pytest.raises(ValueError, match=r"layernorm: axis -2 includes the batch axis 0"):
        layernorm(axis=-2).init(key, (2, 3))
    with pytest.raises(ValueError, match=r"layernorm: input_shape must have at least 2 axes"):
        layernorm().init(key, (5,))
    layer = layernorm(axis=(-2, -1))
    params, _ = layer.init(key, (2, 3, 4))
    with pytest.raises(
        ValueError,
        match=r"layernorm: expected input whose normalized axes \(1, 2\) have sizes \(3, 4\) "
        r".*got input of shape \(2, 3, 5\)",
    ):
        layer.forward(params, jnp.ones((2, 3, 5)))
    bad = {"scale": jnp.ones((3, 4)), "offset": jnp.ones(4)}
    with pytest.raises(ValueError, match=r"layernorm: params\['offset'\] must have shape \(3, 4\)"):
        layer.forward(bad, jnp.ones((2, 3, 4)))
    with pytest.raises(TypeError, match=r"layernorm: params must be a dict with keys"):
        layer.forward((), jnp.ones((2, 3, 4)))
    with pytest.raises(TypeError, match="layernorm: x must be a floating-point array"):
        layer.forward(params, jnp.ones((2, 3, 4), jnp.int32))
