"""The exercises: reference solutions pass, typical wrong solutions get the right hint.

Every wrong solution below is written the way a student would write it, into the
skeleton that ``python -m funcnn.exercises start`` hands out; none reuses the catalog's
variant formulas. ``funcnn.check`` costs a few dozen small compiles per exercise, so it
runs on one exercise (the command line always runs it); elsewhere the diagnosis alone
grades, which compares every leaf with ``jax.vjp`` of the reference forward.
"""

import re
import runpy
import sys
import textwrap

import pytest

from funcnn import exercises
from funcnn.exercises import __main__ as cli
from funcnn.exercises import grader

# Left out of the quick subset (tests/README.md): each exercise is graded by compiling its model.
pytestmark = pytest.mark.slow

NAMES = list(exercises.EXERCISES)


def with_backward(name: str, body: str) -> str:
    """The skeleton of ``name`` with its ``raise NotImplementedError`` replaced by ``body``."""
    text = exercises.skeleton(name)
    stub = re.search(r"^( *)raise NotImplementedError\(.*\)\n", text, re.MULTILINE)
    indent = stub.group(1)
    return (
        text[: stub.start()] + textwrap.indent(textwrap.dedent(body), indent) + text[stub.end() :]
    )


@pytest.mark.parametrize("name", NAMES)
def test_reference_solution_passes(name):
    # The diagnosis alone compares every leaf with jax.vjp of the reference forward;
    # funcnn.check (finite differences too) runs on a few exercises below, as it costs a
    # few compiles per exercise.
    result = exercises.grade(name, exercises.solution_source(name), run_check=False)
    assert result.ok, str(result)
    assert "PASSED" in str(result)


@pytest.mark.parametrize("name", ["sigmoid"])
def test_reference_solution_passes_funcnn_check(name):
    result = exercises.grade(name, exercises.solution_source(name))
    assert result.ok, str(result)
    assert result.report is not None and result.report.ok
    assert "gradient check of " + name + ": OK" in str(result)


@pytest.mark.parametrize("name", NAMES)
def test_skeleton_runs_and_asks_for_the_backward(name):
    text = exercises.skeleton(name)
    assert "BEGIN SOLUTION" not in text and "raise NotImplementedError" in text
    result = exercises.grade(name, text, run_check=False)
    assert not result.ok
    assert result.problems == ("backward is not written yet: write it, then grade again",)
    assert "forward: the given one" in str(result)  # the skeleton's forward is the reference


# (exercise, wrong backward body, expected mistake, words of its hint, graded with check)
WRONG = [
    # sigmoid
    ("sigmoid", "return dy * x * (1 - x), ()", None, None, False),  # NameError: x unknown
    ("sigmoid", "x = y\nreturn dy * x * (1 - x), ()", None, None, False),  # == correct
    ("sigmoid", "return y * (1 - y), ()", "no_dy", "multiply by the incoming", True),
    ("sigmoid", "return dy * y, ()", "no_one_minus_y", "(1 - y) is missing", False),
    # dense
    (
        "dense",
        'return dy @ w.T, {"w": dy.T @ x, "b": dy.sum(axis=0)}',
        "w_transposed",
        "transposed the weight gradient",
        False,
    ),
    (
        "dense",
        'return dy @ w.T, {"w": x.T @ dy, "b": dy}',
        "b_no_batch_sum",
        "forgot the batch sum",
        False,
    ),
    (
        "dense",
        'return dy @ w.T, {"w": x.T @ dy, "b": dy.mean(axis=0)}',
        "b_batch_mean",
        "SUM of dy over the batch",
        False,
    ),
    # softmax cross-entropy
    (
        "softmax_cross_entropy",
        """
        onehot = jnp.eye(c)[labels]
        return (dloss * (p - onehot), None), ()
        """,
        "no_mean",
        "forgot the 1/N of the mean",
        False,
    ),
    (
        "softmax_cross_entropy",
        "return (dloss * p / n, None), ()",
        "no_onehot",
        "subtract the one-hot label",
        False,
    ),
    (
        "softmax_cross_entropy",
        """
        onehot = (labels[:, None] == jnp.arange(c)).astype(p.dtype)
        return ((p - onehot) / n, None), ()
        """,
        "no_dloss",
        "ignored dloss",
        False,
    ),
    # layernorm
    (
        "layernorm",
        """
        g = params["scale"] * dy
        dx = s * (g - xhat * (g * xhat).mean(axis=1, keepdims=True))
        return dx, {"scale": (dy * xhat).sum(0), "offset": dy.sum(0)}
        """,
        "dropped_mean",
        "dropped the mean term",
        False,
    ),
    (
        "layernorm",
        """
        n = xhat.shape[1]
        dx = s / n * (n * dy - dy.sum(1, keepdims=True) - xhat * (dy * xhat).sum(1, keepdims=True))
        return dx, {"scale": (dy * xhat).sum(0), "offset": dy.sum(0)}
        """,
        "forgot_scale",
        "forgot the scale",
        False,
    ),
    (
        "layernorm",
        """
        g = params["scale"] * dy
        dx = s * (g - g.mean(1, keepdims=True))
        return dx, {"scale": (dy * xhat).sum(0), "offset": dy.sum(0)}
        """,
        "dropped_var",
        "dropped the variance term",
        False,
    ),
    # conv1d
    (
        "conv1d",
        """
        dx = jnp.zeros_like(x)
        dw = []
        for k in range(taps):
            dx = dx.at[:, k : k + t_out].add(dy @ w[k].T)
            dw.append(jnp.einsum("ntc,ntf->cf", x[:, k : k + t_out], dy))
        return dx, {"w": jnp.stack(dw), "b": dy.sum(axis=0)}
        """,
        "b_no_position_sum",
        "not over positions",
        False,
    ),
    (
        "conv1d",
        """
        dx = jnp.zeros_like(x)
        dw = jnp.zeros_like(w)
        for k in range(taps):
            dx = dx.at[:, k : k + t_out].set(dy @ w[k].T)
            xs = x[:, k : k + t_out].reshape(-1, x.shape[2])
            dw = dw.at[k].set(xs.T @ dy.reshape(-1, dy.shape[2]))
        return dx, {"w": dw, "b": dy.sum(axis=(0, 1))}
        """,
        "overwrite_last",
        "Accumulate",
        False,
    ),
    (
        "conv1d",
        """
        dx = jnp.zeros_like(x)
        for k in range(taps):
            dx = dx.at[:, k : k + t_out].add(dy @ w[taps - 1 - k].T)
        dw = jnp.stack([jnp.einsum("ntc,ntf->cf", x[:, k : k + t_out], dy) for k in range(taps)])
        return dx, {"w": dw, "b": dy.sum(axis=(0, 1))}
        """,
        "kernel_flipped",
        "pairs the taps in the wrong order",
        False,
    ),
    # max pooling
    (
        "max_pool",
        """
        source = np.arange(t_out)[None, :, None] * STRIDE + idx
        rows, cols = np.arange(n)[:, None, None], np.arange(c)[None, None, :]
        return jnp.zeros((n, t, c)).at[rows, source, cols].set(dy), ()
        """,
        "overwrite",
        "Windows overlap",
        False,
    ),
    (
        "max_pool",
        """
        dx = jnp.zeros((n, t, c))
        for j in range(t_out):
            dx = dx.at[:, j * STRIDE : j * STRIDE + WINDOW].add(dy[:, j : j + 1] / WINDOW)
        return dx, ()
        """,
        "average",
        "average-pool backward",
        False,
    ),
    (
        "max_pool",
        """
        dx = jnp.zeros((n, t, c))
        for j in range(t_out):
            dx = dx.at[:, j * STRIDE].add(dy[:, j])
        return dx, ()
        """,
        "window_start",
        "first position of each window",
        False,
    ),
    # rnn cell
    (
        "rnn_cell",
        """
        da = dout * (1 - h_t**2)
        return (da @ params["w_x"].T, da @ params["w_h"].T), {
            "w_x": x_t.T @ da, "w_h": h.T @ da, "b": da.sum(0)}
        """,
        "only_output",
        "Fan-out sums gradients",
        False,
    ),
    (
        "rnn_cell",
        """
        da = (dout + dcarry) * (1 - h_t**2)
        return (da @ params["w_x"].T, da @ params["w_h"].T), {
            "w_x": x_t.T @ da, "w_h": da.T @ h, "b": da.sum(0)}
        """,
        "w_h_transposed",
        "transposed the recurrent weight",
        False,
    ),
    (
        "rnn_cell",
        """
        da = dout + dcarry
        return (da @ params["w_x"].T, da @ params["w_h"].T), {
            "w_x": x_t.T @ da, "w_h": h.T @ da, "b": da.sum(0)}
        """,
        "no_tanh_derivative",
        "derivative of tanh",
        False,
    ),
    # lstm cell
    (
        "lstm_cell",
        """
        dh_t = dout + dh_next
        dc_t = dh_t * o * (1 - tanh_c**2)
        da = jnp.concatenate([dc_t * g * i * (1 - i), dc_t * c * f * (1 - f),
                              dc_t * i * (1 - g**2), dh_t * tanh_c * o * (1 - o)], axis=1)
        return (da @ params["w_x"].T, (da @ params["w_h"].T, dc_t * f)), {
            "w_x": x_t.T @ da, "w_h": h.T @ da, "b": da.sum(0)}
        """,
        "no_c_carry",
        "You left out dc_next",
        False,
    ),
    (
        "lstm_cell",
        """
        dh_t = dout
        dc_t = dc_next + dh_t * o * (1 - tanh_c**2)
        da = jnp.concatenate([dc_t * g * i * (1 - i), dc_t * c * f * (1 - f),
                              dc_t * i * (1 - g**2), dh_t * tanh_c * o * (1 - o)], axis=1)
        return (da @ params["w_x"].T, (da @ params["w_h"].T, dc_t * f)), {
            "w_x": x_t.T @ da, "w_h": h.T @ da, "b": da.sum(0)}
        """,
        "only_output",
        "dh_t = dout + dh_next",
        False,
    ),
    (
        "lstm_cell",
        """
        dh_t = dout + dh_next
        dc_t = dc_next + dh_t * o
        da = jnp.concatenate([dc_t * g * i * (1 - i), dc_t * c * f * (1 - f),
                              dc_t * i * (1 - g**2), dh_t * tanh_c * o * (1 - o)], axis=1)
        return (da @ params["w_x"].T, (da @ params["w_h"].T, dc_t * f)), {
            "w_x": x_t.T @ da, "w_h": h.T @ da, "b": da.sum(0)}
        """,
        "no_tanh_c",
        "derivative of tanh(c_t)",
        False,
    ),
    (
        "lstm_cell",
        """
        dh_t = dout + dh_next
        dc_t = dc_next + dh_t * o * (1 - tanh_c**2)
        da = jnp.concatenate([dc_t * g * i * (1 - i), dc_t * c * f * (1 - f),
                              dh_t * tanh_c * o * (1 - o), dc_t * i * (1 - g**2)], axis=1)
        return (da @ params["w_x"].T, (da @ params["w_h"].T, dc_t * f)), {
            "w_x": x_t.T @ da, "w_h": h.T @ da, "b": da.sum(0)}
        """,
        "gate_order_ifog",
        "gate gradients are stacked in the wrong order",
        False,
    ),
    # attention
    (
        "attention_softmax",
        """
        dv = p.swapaxes(1, 2) @ do
        dp = do @ v.swapaxes(1, 2)
        ds = p * (dp - (dp * p).sum(-1, keepdims=True))
        return (ds @ k, ds.swapaxes(1, 2) @ q, dv), ()
        """,
        "no_scale",
        "forgot the scale",
        False,
    ),
    (
        "attention_softmax",
        """
        dv = p.swapaxes(1, 2) @ do
        ds = p * (do @ v.swapaxes(1, 2))
        return (ds @ k * scale, ds.swapaxes(1, 2) @ q * scale, dv), ()
        """,
        "softmax_no_rowsum",
        "dropped the softmax's second term",
        False,
    ),
    (
        "attention_softmax",
        """
        dv = p @ do
        dp = do @ v.swapaxes(1, 2)
        ds = p * (dp - (dp * p).sum(-1, keepdims=True))
        return (ds @ k * scale, ds.swapaxes(1, 2) @ q * scale, dv), ()
        """,
        "dv_not_transposed",
        "dv = p^T do",
        False,
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "mistake", "words", "with_check"),
    [w for w in WRONG if w[2] is not None],
    ids=[f"{w[0]}-{w[2]}" for w in WRONG if w[2] is not None],
)
def test_wrong_solution_gets_its_hint(name, body, mistake, words, with_check):
    result = exercises.grade(name, with_backward(name, body), run_check=with_check)
    assert not result.ok, str(result)
    assert result.mistakes == {mistake}, str(result)
    assert any(words in hint for hint in result.hints), str(result)
    assert "hint (" in str(result) and "WRONG" in str(result)
    if with_check:  # funcnn.check, on its own, also rejects it
        assert result.report is not None and not result.report.ok


def test_every_exercise_has_two_tested_mistakes():
    tested = {}
    for name, _, mistake, _, _ in WRONG:
        if mistake is not None:
            tested.setdefault(name, set()).add(mistake)
    assert set(tested) == set(NAMES)
    assert all(len(m) >= 2 for m in tested.values()), tested
    for name, mistakes in tested.items():  # every tested name exists in the catalog
        assert mistakes <= {m.name for m in exercises.EXERCISES[name].mistakes}


def test_broken_backward_is_reported_not_raised():
    # A NameError in the student's code: the report says where, grading does not crash.
    name, body = WRONG[0][0], WRONG[0][1]
    result = exercises.grade(name, with_backward(name, body), run_check=False)
    assert not result.ok
    assert "NameError" in result.problems[0] and "line" in result.problems[0]
    # An equivalent but differently written correct backward passes.
    assert exercises.grade(name, with_backward(name, WRONG[1][1]), run_check=False).ok


def test_unknown_errors_fall_back_to_the_error_pattern():
    # Twice the right gradient: no catalog entry, the pattern says "2 times".
    result = exercises.grade(
        "sigmoid", with_backward("sigmoid", "return 2 * dy * y * (1 - y), ()"), run_check=False
    )
    assert not result.ok and result.mistakes == set()
    assert "is 2 times the right gradient" in result.hints[0]
    # An integer input given a gradient: its place must be None.
    body = """
    onehot = (labels[:, None] == jnp.arange(c)[None, :]).astype(p.dtype)
    return (dloss * (p - onehot) / n, jnp.zeros(labels.shape)), ()
    """
    result = exercises.grade(
        "softmax_cross_entropy", with_backward("softmax_cross_entropy", body), run_check=False
    )
    assert not result.ok and "x[1] should be None" in result.hints[0]


def test_changed_forward_is_refused():
    text = exercises.solution_source("dense").replace(
        'y = x @ params["w"] + params["b"]', 'y = x @ params["w"]'
    )
    result = exercises.grade("dense", text, run_check=False)
    assert not result.ok and "from the given one" in result.problems[0]


def test_command_line_start_and_grade(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def run(*args):
        status = cli.main(list(args))
        return status, capsys.readouterr().out

    status, out = run("list")
    assert status == 0 and all(name in out for name in NAMES)
    assert run("start", "dense")[0] == 0
    assert (tmp_path / "dense.py").read_text() == exercises.skeleton("dense")
    assert run("start", "dense")[0] == 2  # never overwrites the student's work
    status, out = run("grade", "dense", "dense.py")
    assert status == 1 and "not written yet" in out
    assert run("solution", "dense")[1] == exercises.solution_source("dense")


def test_python_dash_m_runs_the_command_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "mine.py").write_text(with_backward("sigmoid", "return dy * y, ()"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "funcnn.exercises.__main__", raising=False)
    monkeypatch.setattr(sys, "argv", ["funcnn.exercises", "grade", "sigmoid", "mine.py"])
    with pytest.raises(SystemExit) as exit_status:  # as `python -m funcnn.exercises` does
        runpy.run_module("funcnn.exercises", run_name="__main__")
    out = capsys.readouterr().out
    assert exit_status.value.code == 1
    assert "x  (3, 4)       WRONG by up to" in out and "(1 - y) is missing" in out
    assert "gradient check of sigmoid: FAILED" in out  # funcnn.check ran


def test_solutions_ship_with_the_package():
    # The skeletons are made from the solutions, which are modules of the package.
    assert grader.reference("lstm_cell").__name__ == "funcnn.exercises.solutions.lstm_cell"
    for name in NAMES:
        assert "# BEGIN SOLUTION" in exercises.solution_source(name)


@pytest.mark.parametrize(
    ("name", "factory", "x"),
    [
        ("rnn_cell", "rnn_cell", lambda r: (r.normal(size=(3, 2)), r.normal(size=(3, 4)))),
        (
            "lstm_cell",
            "lstm_cell",
            lambda r: (r.normal(size=(3, 2)), (r.normal(size=(3, 2)), r.normal(size=(3, 2)))),
        ),
    ],
)
def test_cell_exercises_are_funcnn_cells(name, factory, x):
    # The exercise's cell computes what funcnn's cell computes, forward and backward.
    import jax
    import numpy as np

    import funcnn as fn

    rng = np.random.default_rng(0)
    ex = exercises.EXERCISES[name]
    params = {k: rng.normal(size=s) for k, s in ex.param_shapes(ex.input_shape).items()}
    xs = x(rng)
    hidden = params["w_h"].shape[0]
    cell = getattr(fn, factory)(hidden, dtype=np.float64)
    ref = exercises.reference(name)
    y, cache = cell.forward(params, xs)
    y_ref, cache_ref = ref.forward(params, xs)
    dy = jax.tree.map(lambda a: rng.normal(size=a.shape), y)
    for a, b in zip(jax.tree.leaves(y), jax.tree.leaves(y_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    got, want = cell.backward(params, cache, dy), ref.backward(params, cache_ref, dy)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_attention_exercise_is_funcnn_attention():
    import jax
    import numpy as np

    import funcnn as fn

    rng = np.random.default_rng(0)
    q, k, v, do = (rng.normal(size=(2, 3, 2)) for _ in range(4))
    ref = exercises.reference("attention_softmax")
    o, cache = ref.forward((), (q, k, v))
    grads, _ = ref.backward((), cache, do)
    layer = fn.scaled_dot_product_attention()  # (N, heads, T, d): one head here
    o_fn, cache_fn = layer.forward((), tuple(a[:, None] for a in (q, k, v)))
    grads_fn, _ = layer.backward((), cache_fn, do[:, None])
    np.testing.assert_allclose(o_fn[:, 0], o, rtol=1e-12, atol=1e-12)
    for a, b in zip(jax.tree.leaves(grads_fn), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a[:, 0], b, rtol=1e-10, atol=1e-12)
