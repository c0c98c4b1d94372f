"""One training call site for pure and wide models: TrainState, the step's forms and their
errors, predict, and losses over several outputs."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn
from funcnn import optim
from funcnn.train import TrainState, evaluate, fit, init_train_state, predict, train_step

MSE = fn.losses.mse()
CE = fn.losses.softmax_cross_entropy()


def regression(n=32, d=3, seed=0):
    """float32 NumPy data (an eager jax.random call compiles a kernel per shape, and
    ``fit`` slices NumPy batches on the host)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, np.sin(x @ rng.normal(size=(d, 2)).astype(np.float32))


def f64_params(model, input_shape, seed=1):
    """Random float64 params: ``init`` only traced, the values drawn with NumPy."""
    params, _, _ = fn.check.init_shapes(model, jax.random.PRNGKey(0), input_shape)
    as_f64 = lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float64)  # noqa: E731
    params = jax.tree_util.tree_map(as_f64, params)
    return fn.check.random_params(jax.random.PRNGKey(seed), params)[0]


MODELS = {
    "pure": lambda: fn.sequential(fn.dense(8), fn.tanh(), fn.dense(2)),
    "dropout": lambda: fn.sequential(fn.dense(8), fn.tanh(), fn.dropout(0.2), fn.dense(2)),
    "batchnorm": lambda: fn.sequential(fn.dense(8), fn.batchnorm(), fn.tanh(), fn.dense(2)),
}


def loop(model, steps=40):
    """The training loop a user writes once; it must not care which form the model has."""
    x, y = regression()
    opt = optim.adam(3e-2)
    ts = init_train_state(model, opt, jax.random.PRNGKey(0), x.shape)
    step = train_step(model, MSE, opt)
    losses = []
    for _ in range(steps):
        ts, value = step(ts, x, y)
        losses.append(float(value))
    return ts, losses


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_loop_for_every_model(name):
    model = MODELS[name]()
    assert model.wide == (name != "pure")
    ts, losses = loop(model)
    assert isinstance(ts, TrainState)
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])
    x, _ = regression()
    y = predict(model, ts.params, x, ts.state)  # the same inference call for all three
    assert y.shape == (32, 2)
    if name == "batchnorm":
        assert float(jnp.abs(ts.state[1]["mean"]).sum()) > 0  # running statistics moved


def test_train_state_step_equals_the_explicit_steps():
    x, y = regression()
    opt = optim.sgd(0.1, momentum=0.9)
    for name in ("pure", "dropout"):
        model = MODELS[name]()
        ts = init_train_state(model, opt, jax.random.PRNGKey(3), x.shape)
        step = train_step(model, MSE, opt, donate=False)
        new_ts, value = step(ts, x, y)
        carry, step_key = jax.random.split(ts.key)
        if model.wide:
            params, state, opt_state, ref = step(ts.params, ts.state, ts.opt_state, x, y, step_key)
        else:
            (params, opt_state, ref), state = step(ts.params, ts.opt_state, x, y), ()
        assert float(value) == float(ref)
        jax.tree_util.tree_map(
            np.testing.assert_array_equal, (new_ts.params, new_ts.opt_state), (params, opt_state)
        )
        assert new_ts.state == state
        np.testing.assert_array_equal(new_ts.key, carry)  # the key moves on every step


def test_the_key_decides_the_masks_and_moves_on():
    model = MODELS["dropout"]()
    x, y = regression()
    opt = optim.sgd(0.1)
    step = train_step(model, MSE, opt, donate=False)
    ts = init_train_state(model, opt, jax.random.PRNGKey(0), x.shape)
    a, va = step(ts, x, y)
    _, vb = step(ts, x, y)
    _, vc = step(a, x, y)
    _, vd = step(ts._replace(key=jax.random.key(9)), x, y)  # a typed key works as well
    assert float(va) == float(vb)
    assert float(va) != float(vc)
    assert float(va) != float(vd)


def test_train_state_step_traces_once_and_donates():
    model = MODELS["batchnorm"]()
    x, y = regression()
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(1e-2))
    ts = init_train_state(model, opt, jax.random.PRNGKey(0), x.shape)
    step = train_step(model, MSE, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Some donated buffers were not usable"
        for _ in range(3):
            old = ts
            ts, _ = step(ts, x.astype(jnp.float64), y)
            assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(old))
    assert step.__doc__.startswith("One optimization step")


def test_train_state_without_key_for_pure_models_and_under_scan():
    model = MODELS["pure"]()
    x, y = regression()
    opt = optim.sgd(0.05)
    params, _ = model.init(jax.random.PRNGKey(0), x.shape)
    ts = TrainState.create(params, opt)
    assert ts.key is None and ts.state == ()
    plain = train_step(model, MSE, opt, jit=False)

    def body(ts, _):
        return plain(ts, x, y)

    final, values = jax.jit(lambda ts: jax.lax.scan(body, ts, None, length=5))(ts)
    assert values.shape == (5,)
    assert float(values[-1]) < float(values[0])
    assert final.key is None


def test_dropout_only_models_accept_an_empty_state():
    """A loop written for a pure model (state ()) keeps working after adding dropout."""
    model = MODELS["dropout"]()
    x, y = regression()
    params, _ = fn.sequential(fn.dense(8), fn.tanh(), fn.dense(2)).init(
        jax.random.PRNGKey(0), x.shape
    )
    params = (params[0], (), (), params[2])  # the same dense params, dropout in between
    opt = optim.sgd(0.1)
    step = train_step(model, MSE, opt, donate=False)
    ts, _ = step(TrainState.create(params, opt, key=jax.random.PRNGKey(1)), x, y)
    assert ts.state == ((), (), (), ())
    out = step(params, (), opt.init(params), x, y, jax.random.PRNGKey(1))
    assert out[1] == ((), (), (), ())
    result = fit(model, MSE, opt, params, x, y, key=jax.random.PRNGKey(0), epochs=2, progress=False)
    assert result.state == ((), (), (), ())
    assert evaluate(model, MSE, result.params, x, y)["loss"] > 0
    # Eval mode: dropout is the identity, so predict equals the model without it.
    pure = fn.sequential(fn.dense(8), fn.tanh(), fn.dense(2))
    ref, _ = jax.jit(pure.forward)((params[0], (), params[3]), x)
    np.testing.assert_allclose(predict(model, params, x), ref, rtol=1e-6)


def test_models_with_running_state_need_their_state():
    model = MODELS["batchnorm"]()
    x, y = regression()
    params, _state, _ = fn.init_layer(model, jax.random.PRNGKey(0), x.shape)
    with pytest.raises(
        TypeError,
        match=r"predict: sequential is a wide model with running state "
        r"\(sequential\[1\] is batchnorm; state leaves such as \[1\]\['mean'\]\)",
    ):
        predict(model, params, x)
    with pytest.raises(TypeError, match=r"fit: .* fn.init_layer\(model, key, shape\)"):
        fit(model, MSE, optim.sgd(0.1), params, x, y, key=jax.random.PRNGKey(0), progress=False)
    with pytest.raises(TypeError, match=r"evaluate: .*running state"):
        evaluate(model, MSE, params, x, y)


def test_step_in_the_wrong_form_says_which_form_and_why():
    x, y = regression()
    opt = optim.sgd(0.1)
    wide = fn.sequential(fn.dense(4), fn.residual(fn.sequential(fn.dense(4), fn.dropout(0.5))))
    params, _state, _ = fn.init_layer(wide, jax.random.PRNGKey(0), x.shape)
    step = train_step(wide, MSE, opt)
    with pytest.raises(
        TypeError,
        match=r"train_step: sequential is a wide model \(sequential\[1\] > residual\[0\] > "
        r"sequential\[1\] is dropout\), so its step is step\(params, state, "
        r"opt_state, x, target, key\) .* got 4 arguments\. The TrainState form",
    ):
        step(params, opt.init(params), x, y)
    pure = MODELS["pure"]()
    params, _ = pure.init(jax.random.PRNGKey(0), x.shape)
    step = train_step(pure, MSE, opt)
    with pytest.raises(TypeError, match=r"sequential is a pure model .* got 6 arguments"):
        step(params, (), opt.init(params), x, y, jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match=r"the TrainState form is step\(train_state, x, target\)"):
        step(TrainState.create(params, opt), x, y, jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match=r"init_train_state: optimizer must be a Gradient"):
        init_train_state(pure, "sgd", jax.random.PRNGKey(0), x.shape)


def test_forward_in_the_wrong_form_names_the_wide_child():
    # Raised while tracing: jax.eval_shape runs init and forward without compiling.
    def init_layer(model, shape):
        return jax.eval_shape(lambda k: fn.init_layer(model, k, shape)[:2], jax.random.PRNGKey(0))

    model = fn.sequential(fn.dense(4), fn.relu(), fn.dropout(0.5), fn.dense(2))
    params, state = init_layer(model, (3, 5))
    x = jax.ShapeDtypeStruct((3, 5), jnp.float64)
    with pytest.raises(
        TypeError,
        match=r"sequential: this model is wide \(sequential\[2\] is dropout, which takes a state "
        r"and a Ctx\): call forward\(params, x, state, ctx\).*fn\.apply_layer.*fn\.predict.*"
        r"fn\.init_layer",
    ):
        jax.eval_shape(model.forward, params, x)
    g = fn.graph({"h": (fn.dense(3), "input"), "d": (fn.dropout(0.1), "h")}, output="d")
    with pytest.raises(TypeError, match=r"graph: this model is wide \(graph\[1\] is dropout"):
        jax.eval_shape(g.forward, init_layer(g, (3, 5))[0], x)
    pure = fn.sequential(fn.dense(2))
    p, _ = init_layer(pure, (3, 5))
    with pytest.raises(TypeError, match=r"sequential: this model is pure .*got 4 arguments"):
        jax.eval_shape(lambda p, x: pure.forward(p, x, (), fn.Ctx()), p, x)
    ctx = fn.Ctx(train=False)
    y, _, _ = jax.eval_shape(lambda p, x, s: model.forward(p, x, s, ctx), params, x, state)
    # the right form works
    assert y.shape == (3, 2)


def test_value_and_grad_in_the_wrong_form():
    x, y = regression()
    wide = MODELS["dropout"]()
    params, _state, _ = fn.init_layer(wide, jax.random.PRNGKey(0), x.shape)
    with pytest.raises(
        TypeError,
        match=r"value_and_grad: sequential is a wide model "
        r"\(sequential\[2\] is dropout\).*f\(params, x, target, state, ctx\)",
    ):
        fn.train.value_and_grad(wide, MSE)(params, x, y)
    pure = MODELS["pure"]()
    params, _ = pure.init(jax.random.PRNGKey(0), x.shape)
    with pytest.raises(
        TypeError,
        match=r"value_and_grad: sequential is a pure model.*"
        r"fn\.as_wide\(model\)",
    ):
        fn.train.value_and_grad(pure, MSE)(params, x, y, (), fn.Ctx())

    # The suggested lifting gives the wide form for a pure model (both in one program).
    @jax.jit
    def both(params, x, y):
        lifted = fn.train.value_and_grad(fn.as_wide(pure), MSE)
        return lifted(params, x, y, ((), (), ()), fn.Ctx()), fn.train.value_and_grad(pure, MSE)(
            params, x, y
        )

    ((value, _new_state), grads), (ref_value, ref_grads) = both(params, x, y)
    assert float(value) == float(ref_value)
    jax.tree_util.tree_map(np.testing.assert_array_equal, grads, ref_grads)


def test_predict_is_eval_mode_jit_friendly_and_batches():
    model = fn.sequential(fn.dense(6), fn.batchnorm(), fn.dropout(0.5), fn.dense(2))
    x = np.random.default_rng(1).normal(size=(10, 3))
    params, state, _ = fn.init_layer(model, jax.random.PRNGKey(0), x.shape)
    ctx = fn.Ctx(train=False)
    ref, _, _ = jax.jit(lambda p, x, s: fn.apply_layer(model, p, x, s, ctx))(params, x, state)
    np.testing.assert_allclose(predict(model, params, x, state), ref, rtol=1e-6)
    inside = jax.jit(lambda p, s, x: predict(model, p, x, s) * 2)(params, state, x)
    np.testing.assert_allclose(inside, 2 * ref, rtol=1e-6)
    np.testing.assert_allclose(predict(model, params, x, state, batch_size=4), ref, rtol=1e-6)
    two = fn.graph(
        {"h": (fn.dense(4), "input"), "a": (fn.dense(2), "h"), "b": (fn.relu(), "h")},
        output=("a", "b"),
    )
    p2, _ = two.init(jax.random.PRNGKey(0), x.shape)
    a, b = predict(two, p2, x, batch_size=3)
    assert a.shape == (10, 2) and b.shape == (10, 4)
    with pytest.raises(TypeError, match="predict: model must be a Layer"):
        predict(MSE, p2, x)
    with pytest.raises(ValueError, match="predict: batch_size must be a positive int"):
        predict(two, p2, x, batch_size=0)


# --- losses over several outputs ---------------------------------------------------------


def two_heads():
    """A graph with a regression head and a classification head on one trunk."""
    return fn.graph(
        {
            "trunk": (fn.sequential(fn.dense(8), fn.tanh()), "input"),
            "reg": (fn.dense(2), "trunk"),
            "cls": (fn.dense(3), "trunk"),
        },
        output=("reg", "cls"),
    )


def heads_data(n=24, seed=0):
    """float32 inputs, (regression targets, labels): NumPy arrays."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=n)
    return x, (np.stack([x[:, 0], x[:, 1] * x[:, 2]], axis=1), labels)


def test_multi_loss_gradients_match_jax():
    model = two_heads()
    x, (y_reg, labels) = heads_data()
    x, y_reg = x.astype(np.float64), y_reg.astype(np.float64)
    params = f64_params(model, x.shape)
    loss = fn.losses.multi((MSE, 1.0), (CE, 0.25))
    assert loss.name == "multi(mse, softmax_cross_entropy)"

    def objective(params, x, y_reg, labels):
        reg, cls = model.forward(params, x)[0]
        return MSE.forward(reg, y_reg)[0] + 0.25 * CE.forward(cls, labels)[0]

    @jax.jit  # ours, the reference and the list form in one compiled program
    def run(params, x, y_reg, labels):
        ours = fn.train.value_and_grad(model, loss)(params, x, (y_reg, labels))
        ref = jax.value_and_grad(objective)(params, x, y_reg, labels)
        # dloss scales every term; lists work like tuples.
        preds = model.forward(params, x)[0]
        _, cache = loss.forward(list(preds), [y_reg, labels])
        ce_alone = CE.backward(CE.forward(preds[1], labels)[1])
        return ours, ref, loss.backward(cache, 3.0), ce_alone

    (value, grads), (ref_value, ref_grads), d, ce_alone = run(params, x, y_reg, labels)
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), grads, ref_grads
    )
    assert isinstance(d, list)
    np.testing.assert_allclose(d[1], 3.0 * 0.25 * ce_alone)


def test_multi_loss_none_term_trains_nothing_through_its_output():
    model = two_heads()
    x, (y_reg, _labels) = heads_data()
    params, _ = model.init(jax.random.PRNGKey(1), x.shape)
    loss = fn.losses.multi(MSE, None)

    @jax.jit  # ours and the MSE of the first output alone, in one program
    def run(params, x, y_reg):
        ours = fn.train.value_and_grad(model, loss)(params, x, (y_reg, None))
        return ours, MSE.forward(model.forward(params, x)[0][0], y_reg)[0]

    (value, grads), alone = run(params, x, y_reg)
    assert float(value) == float(alone)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads["cls"]))
    assert float(jnp.abs(grads["reg"]["w"]).max()) > 0


def test_multi_loss_trains_with_train_step_and_fit():
    model = two_heads()
    x, y = heads_data(n=48)
    opt = optim.adam(2e-2)
    loss = fn.losses.multi((MSE, 1.0), (CE, 0.5))
    ts = init_train_state(model, opt, jax.random.PRNGKey(0), x.shape)
    step = train_step(model, loss, opt)
    values = []
    for _ in range(60):
        ts, value = step(ts, x, y)
        values.append(float(value))
    assert values[-1] < 0.6 * values[0]
    params, _ = model.init(jax.random.PRNGKey(0), x.shape)
    result = fit(
        model, loss, opt, params, x, y, key=jax.random.PRNGKey(1), epochs=3, batch_size=16,
        validation_data=heads_data(n=16, seed=1), progress=False,
    )  # fmt: skip
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert len(result.history["val_loss"]) == 3
    reg, cls = predict(model, result.params, x)
    assert reg.shape == (48, 2) and cls.shape == (48, 3)


def test_multi_loss_errors():
    _x, (y_reg, labels) = heads_data()
    loss = fn.losses.multi(MSE, (CE, 0.5))
    preds = (jnp.zeros((24, 2)), jnp.zeros((24, 3)))
    with pytest.raises(
        ValueError,
        match=r"multi\(mse, softmax_cross_entropy\): expected a tuple of 2 predictions \(one per "
        r"loss, in the order of the model's outputs\), got an array of shape \(24, 2\)",
    ):
        loss.forward(preds[0], (y_reg, labels))
    with pytest.raises(ValueError, match=r"expected a tuple of 2 targets .*got tuple of length 1"):
        loss.forward(preds, (y_reg,))
    with pytest.raises(ValueError, match=r"multi\(mse, softmax_cross_entropy\)\[0\] \(mse\): mse"):
        loss.forward(preds, (labels, labels))
    per_row = fn.core.Loss(lambda p, t: (jnp.sum(p, -1), ()), lambda c, d=1.0: d, "rows")
    with pytest.raises(
        ValueError,
        match=r"\[1\] \(rows\): each loss must be a scalar, got shape "
        r"\(24,\); use reduction='mean' or 'sum'",
    ):
        fn.losses.multi(MSE, per_row).forward(preds, (y_reg, labels))
    with pytest.raises(TypeError, match=r"multi: term 1 must be a Loss, a \(Loss, weight\) pair"):
        fn.losses.multi(MSE, "ce")
    with pytest.raises(ValueError, match=r"multi: the weight of term 0 must be a finite number"):
        fn.losses.multi((MSE, float("nan")))
    with pytest.raises(ValueError, match=r"multi: at least one term must be a loss"):
        fn.losses.multi(None, None)
    with pytest.raises(ValueError, match=r"multi: give one loss per output"):
        fn.losses.multi()
