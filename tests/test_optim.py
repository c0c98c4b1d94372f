"""funcnn.optim: hand-computed update sequences, parity with torch.optim, jit, chain, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnn import optim


def run(opt, grads, params):
    """Apply ``opt`` to a sequence of gradients; return the list of updates and final params."""
    state = opt.init(params)
    out = []
    for g in grads:
        updates, state = opt.update(g, state, params)
        params = optim.apply_updates(params, updates)
        out.append(updates)
    return out, params


def scalars(updates):
    return [float(u[0]) for u in updates]


def ones(value=1.0, n=1):
    return jnp.full((n,), value, jnp.float64)


# --- hand-computed sequences -----------------------------------------------------------


def test_sgd_plain():
    updates, params = run(optim.sgd(0.1), [ones(2.0), ones(-1.0)], ones(0.0))
    assert scalars(updates) == pytest.approx([-0.2, 0.1])
    assert float(params[0]) == pytest.approx(-0.1)


def test_sgd_momentum_constant_gradient():
    # b = 1, 1.9, 2.71  =>  updates = -lr * b
    updates, _ = run(optim.sgd(0.1, momentum=0.9), [ones()] * 3, ones(0.0))
    assert scalars(updates) == pytest.approx([-0.1, -0.19, -0.271])


def test_sgd_nesterov_constant_gradient():
    # b = 1, 1.9, 2.71;  g + m b = 1.9, 2.71, 3.439
    updates, _ = run(optim.sgd(0.1, momentum=0.9, nesterov=True), [ones()] * 3, ones(0.0))
    assert scalars(updates) == pytest.approx([-0.19, -0.271, -0.3439])


def test_sgd_coupled_weight_decay():
    # g = 0 + 0.1 * p;  p = 2 -> 1.9 -> 1.805
    updates, params = run(optim.sgd(0.5, weight_decay=0.1), [ones(0.0)] * 2, ones(2.0))
    assert scalars(updates) == pytest.approx([-0.1, -0.095])
    assert float(params[0]) == pytest.approx(1.805)


def test_adam_constant_gradient_is_lr_times_sign():
    # With a constant gradient the bias-corrected moments are g and g^2 at every step.
    updates, _ = run(optim.adam(0.1), [jnp.array([2.0, -0.5])] * 3, jnp.zeros(2))
    for u in updates:
        np.testing.assert_allclose(u, [-0.1 * 2 / (2 + 1e-8), 0.1 * 0.5 / (0.5 + 1e-8)])


def test_adam_second_step_by_hand():
    b1, b2, lr, eps = 0.9, 0.999, 0.01, 1e-8
    updates, _ = run(optim.adam(lr), [ones(1.0), ones(3.0)], ones(0.0))
    m = b1 * (1 - b1) * 1.0 + (1 - b1) * 3.0
    v = b2 * (1 - b2) * 1.0 + (1 - b2) * 9.0
    expected = -lr / (1 - b1**2) * m / (math.sqrt(v) / math.sqrt(1 - b2**2) + eps)
    assert scalars(updates)[1] == pytest.approx(expected, rel=1e-12)


def test_adamw_decay_is_decoupled():
    # Zero gradient: the Adam part is 0, only -lr * wd * p remains (not divided by sqrt(v)).
    updates, params = run(optim.adamw(0.1, weight_decay=0.5), [ones(0.0)] * 2, ones(2.0))
    assert scalars(updates) == pytest.approx([-0.1, -0.095])  # p = 2 -> 1.9 -> 1.805
    assert float(params[0]) == pytest.approx(1.805)


def test_adam_coupled_decay_goes_through_the_moments():
    # Zero gradient, coupled decay: g = wd * p, so the first step is about -lr * sign(p).
    updates, _ = run(optim.adam(0.1, weight_decay=0.5), [ones(0.0)], ones(2.0))
    assert scalars(updates)[0] == pytest.approx(-0.1, rel=1e-6)


def test_rmsprop_by_hand():
    # v = 0.1, 0.19;  update = -lr g / (sqrt(v) + eps)
    updates, _ = run(optim.rmsprop(0.01, decay=0.9), [ones()] * 2, ones(0.0))
    assert scalars(updates) == pytest.approx(
        [-0.01 / (math.sqrt(0.1) + 1e-8), -0.01 / (math.sqrt(0.19) + 1e-8)]
    )


def test_rmsprop_centered_by_hand():
    # v = 0.1 * 4, c = 0.1 * 2  =>  d = sqrt(0.4 - 0.04) + eps
    updates, _ = run(optim.rmsprop(0.01, decay=0.9, centered=True), [ones(2.0)], ones(0.0))
    assert scalars(updates)[0] == pytest.approx(-0.01 * 2 / (math.sqrt(0.36) + 1e-8))


def test_clip_by_global_norm():
    clip = optim.clip_by_global_norm(1.0)
    tree = {"a": jnp.array([3.0]), "b": jnp.array([[4.0]])}
    clipped, state = clip.update(tree, clip.init(tree))
    np.testing.assert_allclose(clipped["a"], [0.6])
    np.testing.assert_allclose(clipped["b"], [[0.8]])
    assert float(optim.global_norm(clipped)) == pytest.approx(1.0)
    # Within the bound: unchanged.
    same, _ = optim.clip_by_global_norm(10.0).update(tree, state)
    np.testing.assert_array_equal(same["a"], tree["a"])
    # A zero gradient stays zero (no 0/0).
    zero, _ = clip.update({"a": jnp.zeros(2)}, state)
    np.testing.assert_array_equal(zero["a"], [0.0, 0.0])


def test_schedule_as_learning_rate():
    # Step t (from 0) uses schedule(t).
    sched = optim.exponential_decay(1.0, 0.5)
    updates, _ = run(optim.sgd(sched), [ones()] * 3, ones(0.0))
    assert scalars(updates) == pytest.approx([-1.0, -0.5, -0.25])


def test_schedules():
    assert float(optim.constant_schedule(0.3)(7)) == pytest.approx(0.3)
    exp = optim.exponential_decay(2.0, 0.1, transition_steps=4)
    assert float(exp(2)) == pytest.approx(2.0 * 0.1**0.5)
    cos = optim.cosine_decay_schedule(1.0, 10, alpha=0.1)
    assert [float(cos(s)) for s in (0, 5, 10, 20)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    warm = optim.warmup_cosine_decay_schedule(0.1, 1.0, 4, 14, end_value=0.2)
    got = [float(warm(s)) for s in (0, 2, 4, 9, 14, 30)]
    assert got == pytest.approx([0.1, 0.55, 1.0, 0.6, 0.2, 0.2])
    no_warmup = optim.warmup_cosine_decay_schedule(0.0, 1.0, 0, 10)
    assert float(no_warmup(0)) == pytest.approx(1.0)
    # Schedules work on traced steps too.
    assert float(jax.jit(cos)(jnp.asarray(5))) == pytest.approx(0.55)


# --- parity with torch.optim -------------------------------------------------------------

TORCH_CASES = [
    ("sgd", lambda: optim.sgd(0.1), "SGD", dict(lr=0.1)),
    ("sgd_momentum", lambda: optim.sgd(0.1, momentum=0.9), "SGD", dict(lr=0.1, momentum=0.9)),
    (
        "sgd_nesterov",
        lambda: optim.sgd(0.05, momentum=0.8, nesterov=True),
        "SGD",
        dict(lr=0.05, momentum=0.8, nesterov=True),
    ),
    (
        "sgd_wd",
        lambda: optim.sgd(0.1, weight_decay=0.01),
        "SGD",
        dict(lr=0.1, weight_decay=0.01),
    ),
    (
        "sgd_nesterov_wd",
        lambda: optim.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
        "SGD",
        dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
    ),
    ("adam", lambda: optim.adam(1e-2), "Adam", dict(lr=1e-2)),
    (
        "adam_betas_wd",
        lambda: optim.adam(3e-2, b1=0.5, b2=0.9, eps=1e-6, weight_decay=0.1),
        "Adam",
        dict(lr=3e-2, betas=(0.5, 0.9), eps=1e-6, weight_decay=0.1),
    ),
    ("adamw", lambda: optim.adamw(1e-2), "AdamW", dict(lr=1e-2)),
    (
        "adamw_wd",
        lambda: optim.adamw(5e-2, b1=0.8, weight_decay=0.3),
        "AdamW",
        dict(lr=5e-2, betas=(0.8, 0.999), weight_decay=0.3),
    ),
    ("rmsprop", lambda: optim.rmsprop(1e-2), "RMSprop", dict(lr=1e-2)),
    (
        "rmsprop_momentum_wd",
        lambda: optim.rmsprop(1e-2, decay=0.9, momentum=0.5, weight_decay=0.1),
        "RMSprop",
        dict(lr=1e-2, alpha=0.9, momentum=0.5, weight_decay=0.1),
    ),
    (
        "rmsprop_centered",
        lambda: optim.rmsprop(1e-2, centered=True, eps=1e-6),
        "RMSprop",
        dict(lr=1e-2, centered=True, eps=1e-6),
    ),
]


@pytest.mark.parametrize("make, torch_name, torch_kwargs", [c[1:] for c in TORCH_CASES],
                         ids=[c[0] for c in TORCH_CASES])  # fmt: skip
def test_matches_torch(make, torch_name, torch_kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    shapes = {"w": (3, 4), "b": (4,)}
    start = {k: rng.normal(size=s) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(6)]

    tparams = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in start.items()
    }
    topt = getattr(torch.optim, torch_name)(list(tparams.values()), **torch_kwargs)
    opt = make()
    params = {k: jnp.asarray(v) for k, v in start.items()}
    state = opt.init(params)
    for t, g in enumerate(grads):
        for k, p in tparams.items():
            p.grad = torch.tensor(g[k], dtype=torch.float64)
        topt.step()
        updates, state = opt.update({k: jnp.asarray(v) for k, v in g.items()}, state, params)
        params = optim.apply_updates(params, updates)
        for k in shapes:
            np.testing.assert_allclose(
                params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14,
                err_msg=f"{torch_name} step {t}, leaf {k}",
            )  # fmt: skip


# --- jit, chain, dtypes, interoperability --------------------------------------------------

ALL = [
    lambda: optim.sgd(0.1),
    lambda: optim.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda: optim.rmsprop(0.01, momentum=0.9, centered=True, weight_decay=1e-3),
    lambda: optim.adam(optim.cosine_decay_schedule(1e-2, 100)),
    lambda: optim.adamw(optim.warmup_cosine_decay_schedule(0.0, 1e-2, 5, 50)),
    lambda: optim.chain(optim.clip_by_global_norm(0.5), optim.adam(1e-3)),
]
IDS = ["sgd", "sgd_nesterov", "rmsprop", "adam_sched", "adamw_sched", "chain"]


def tree(dtype=jnp.float64, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"w": jax.random.normal(k1, (3, 2), dtype), "b": jax.random.normal(k2, (2,), dtype)}


@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_jit_matches_eager(make):
    opt = make()
    params, grads = tree(), tree(seed=1)
    state = opt.init(params)
    eager = state
    traces = []

    @jax.jit
    def jitted(grads, state, params):
        traces.append(1)
        return opt.update(grads, state, params)

    for _ in range(3):
        u_e, eager = opt.update(grads, eager, params)
        u_j, state = jitted(grads, state, params)
        jax.tree_util.tree_map(np.testing.assert_allclose, u_j, u_e)
    assert len(traces) == 1  # the state's types are stable: one compilation


@pytest.mark.parametrize("make", ALL, ids=IDS)
def test_dtypes_are_kept(make):
    """float32 params with float64 gradients: float32 updates, state dtypes unchanged."""
    opt = make()
    params = tree(jnp.float32)
    state = opt.init(params)
    updates, new_state = opt.update(tree(jnp.float64, seed=1), state, params)
    dtypes = jax.tree_util.tree_map(lambda a: a.dtype, (new_state, state))
    assert dtypes[0] == dtypes[1]
    assert optim.apply_updates(params, updates)["w"].dtype == jnp.float32


def test_chain_composes():
    clip, sgd = optim.clip_by_global_norm(1.0), optim.sgd(0.1, momentum=0.9)
    chained = optim.chain(clip, sgd)
    params, grads = tree(), tree(seed=1)
    state = chained.init(params)
    assert isinstance(state, tuple) and len(state) == 2
    s_clip, s_sgd = clip.init(params), sgd.init(params)
    for _ in range(2):
        u, state = chained.update(grads, state, params)
        c, s_clip = clip.update(grads, s_clip, params)
        ref, s_sgd = sgd.update(c, s_sgd, params)
        jax.tree_util.tree_map(np.testing.assert_allclose, u, ref)
    assert optim.chain().update(grads, optim.chain().init(params))[0] is grads


def test_jitted_training_step_with_chain():
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.1))

    @jax.jit
    def step(params, state):
        grads = jax.tree_util.tree_map(lambda p: 2 * p, params)  # minimise |p|^2
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state

    params = tree()
    state = opt.init(params)
    start = float(optim.global_norm(params))
    for _ in range(30):
        params, state = step(params, state)
    assert float(optim.global_norm(params)) < 0.2 * start


def test_optax_interop():
    optax = pytest.importorskip("optax")
    ours = optim.chain(optax.clip_by_global_norm(1.0), optim.sgd(0.1))
    theirs = optax.chain(optim.clip_by_global_norm(1.0), optax.sgd(0.1))
    params, grads = tree(), tree(seed=1)
    u1, _ = ours.update(grads, ours.init(params), params)
    u2, _ = theirs.update(grads, theirs.init(params), params)
    jax.tree_util.tree_map(np.testing.assert_allclose, u1, u2)


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: optim.sgd(-0.1), r"sgd: learning_rate must be a finite number >= 0, got -0.1"),
        (
            lambda: optim.sgd(0.1, momentum=-1),
            r"sgd: momentum must be a finite number >= 0, got -1",
        ),
        (lambda: optim.sgd(0.1, nesterov=True), r"sgd: nesterov=True needs momentum > 0"),
        (lambda: optim.sgd(0.1, weight_decay=-1e-3), r"sgd: weight_decay .* got -0.001"),
        (lambda: optim.adam(1e-3, b1=1.0), r"adam: b1 must be a number in \[0, 1\), got 1.0"),
        (lambda: optim.adam(1e-3, b2=-0.5), r"adam: b2 must be a number in \[0, 1\), got -0.5"),
        (lambda: optim.adam(1e-3, eps=-1.0), r"adam: eps must be a finite number >= 0, got -1.0"),
        (lambda: optim.adamw(1e-3, weight_decay=-1), r"adamw: weight_decay .* got -1"),
        (lambda: optim.adam(float("nan")), r"adam: learning_rate .* got nan"),
        (lambda: optim.rmsprop(1e-3, decay=1.5), r"rmsprop: decay must be a number in \[0, 1\)"),
        (
            lambda: optim.clip_by_global_norm(0.0),
            r"clip_by_global_norm: max_norm must be a positive finite number, got 0.0",
        ),
        (lambda: optim.exponential_decay(1.0, 0.0), r"exponential_decay: decay_rate"),
        (lambda: optim.cosine_decay_schedule(1.0, 0), r"cosine_decay_schedule: decay_steps"),
        (
            lambda: optim.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10),
            r"decay_steps \(=10\) must be greater than warmup_steps \(=10\)",
        ),
    ],
)
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_types():
    with pytest.raises(TypeError, match=r"sgd: learning_rate must be a float or a schedule"):
        optim.sgd("0.1")
    with pytest.raises(TypeError, match=r"adam: b1 must be a number in \[0, 1\), got bool True"):
        optim.adam(0.1, b1=True)
    with pytest.raises(TypeError, match=r"chain: argument 1 must be a GradientTransformation"):
        optim.chain(optim.sgd(0.1), "adam")


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: optim.sgd(0.1, weight_decay=0.1), "sgd"),
        (lambda: optim.adamw(0.1), "adamw"),
        (lambda: optim.rmsprop(0.1, weight_decay=0.1), "rmsprop"),
    ],
)
def test_weight_decay_needs_params(make, name):
    opt = make()
    params = tree()
    with pytest.raises(ValueError, match=rf"{name}: weight decay needs the params"):
        opt.update(params, opt.init(params))
