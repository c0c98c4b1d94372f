"""Data parallelism (funcnn.sharding, train_step/fit/evaluate with mesh=): the same numbers
on 1 and 8 devices, the inputs really sharded, and two processes joined by jax.distributed.

Multi-device checks run in subprocesses with a hard timeout: 8 CPU devices need
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before jax starts, and the
two-process run needs two fresh interpreters. Each subprocess runs many checks (a jax start
costs seconds) and prints one JSON line of measurements that the tests here assert on.
The subprocess entry points are the functions ``_eight_devices`` and ``_two_process_worker``
of this module.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnn as fn

# Left out of the quick subset (tests/README.md): 8-device and two-process subprocesses.
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    # the suite's compiler flags (tests/conftest.py) and the device count
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _entry(function: str, *args) -> list[str]:
    call = f"from tests.test_sharding import {function} as f; f(*{list(args)!r})"
    return [sys.executable, "-c", call]


def _json_line(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"the subprocess printed no result:\n{stdout}"
    return json.loads(lines[-1])


# --- models and data shared by the subprocesses -------------------------------------------

# No bias right before a batchnorm: its exact gradient is zero, and Adam would turn the
# rounding noise in its place (which differs with the order of the sums) into full steps.
MLP = fn.sequential(fn.linear(16), fn.batchnorm(), fn.relu(), fn.dropout(0.25), fn.dense(4))
CNN = fn.sequential(
    fn.conv2d(4, 3, padding="SAME"),
    fn.batchnorm(),
    fn.relu(),
    fn.max_pool2d(2),
    fn.dropout(0.1),
    fn.flatten(),
    fn.dense(3),
)
CE = fn.losses.softmax_cross_entropy()


def _data(kind: str, dtype, n: int, seed: int):
    rng = np.random.default_rng(seed)
    if kind == "mlp":
        return rng.normal(size=(n, 6)).astype(dtype), rng.integers(0, 4, n).astype(np.int32)
    return rng.normal(size=(n, 6, 6, 2)).astype(dtype), rng.integers(0, 3, n).astype(np.int32)


def _max_diff(a, b) -> float:
    leaves = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda u, v: float(np.max(np.abs(np.asarray(u) - v))), a, b)
    )
    return max(leaves)


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), tree)


def _start(kind, dtype, batch=32, seed=0):
    model = MLP if kind == "mlp" else CNN
    opt = fn.optim.adam(1e-2) if kind == "mlp" else fn.optim.sgd(0.1, momentum=0.9)
    shape = _data(kind, dtype, batch, 0)[0].shape
    ts = fn.train.init_train_state(model, opt, jax.random.PRNGKey(seed), shape)
    params, state = _cast(ts.params, dtype), _cast(ts.state, dtype)
    return model, opt, ts._replace(params=params, state=state, opt_state=opt.init(params))


def _train(kind, dtype, mesh, *, steps=STEPS, batch=32):
    """``steps`` steps from one init and the same global batches; returns (step, state)."""
    model, opt, ts = _start(kind, dtype, batch)
    step = fn.train.train_step(model, CE, opt, mesh=mesh)
    for i in range(steps):
        x, y = _data(kind, dtype, batch, 100 + i)
        ts, _ = step(ts, x, y)
    return step, ts


# --- 1 vs 8 devices, in one subprocess ------------------------------------------------------


def _sharding_report(step, ts, kind) -> dict:
    """Where the compiled data-parallel step puts its inputs and outputs."""
    x, y = _data(kind, np.float32, 32, 100)
    compiled = step.lower(ts, x, y).compile()
    (ts_in, x_in, y_in), _ = compiled.input_shardings
    return {
        "x_split_over_data": x_in.spec == jax.sharding.PartitionSpec("data"),
        "x_devices": len(x_in.device_set),
        "x_shard_shape": list(x_in.shard_shape(x.shape)),
        "y_shard_shape": list(y_in.shard_shape(y.shape)),
        "params_replicated": all(
            s.is_fully_replicated and len(s.device_set) == 8
            for s in jax.tree_util.tree_leaves(ts_in.params)
        ),
        "outputs_replicated": all(
            a.sharding.is_fully_replicated and len(a.sharding.device_set) == 8
            for a in jax.tree_util.tree_leaves(ts)
        ),
        "all_reduces": compiled.as_text().count("all-reduce("),
    }


def _eight_devices():
    """Runs in a subprocess with 8 CPU devices; prints one JSON line of measurements."""
    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 8, jax.devices()
    out: dict = {"devices": jax.device_count()}
    mesh8 = fn.sharding.data_mesh()

    for kind in ("mlp", "cnn"):
        for dtype in (np.float64, np.float32):
            name = f"{kind}_{np.dtype(dtype).name}"
            _, ts1 = _train(kind, dtype, None)  # one device, no mesh
            step8, ts8 = _train(kind, dtype, mesh8)
            host = fn.sharding.gather(ts8)
            out[name] = {
                "8_vs_1": _max_diff(host.params, ts1.params),
                "state_8_vs_1": _max_diff(host.state, ts1.state),
                "param_dtype": str(jax.tree_util.tree_leaves(ts8.params)[0].dtype),
                "moved": _max_diff(host.params, _start(kind, dtype)[2].params),
            }
            if dtype is np.float32 and kind == "mlp":  # (one compile more: once is enough)
                out[name].update(_sharding_report(step8, ts8, kind))
            elif dtype is np.float32:  # the lowered program, traced only: x split 8 ways
                x, y = _data(kind, dtype, 32, 100)
                text = step8.lower(ts8, x, y).as_text()
                split = 'tensor<32x6x6x2xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {}'
                out[name]["x_annotation"] = split in text

    # The dropout mask is drawn from the global key over the global batch shape.
    layer = fn.dropout(0.5)
    key, xs = jax.random.PRNGKey(7), jnp.ones((16, 5), jnp.float32)
    forward = jax.jit(lambda k, x: layer.forward((), x, (), fn.Ctx(k, train=True))[0])
    sharded = forward(key, fn.sharding.shard_batch(xs, mesh8))
    out["dropout_mask_equal"] = bool(np.array_equal(np.asarray(sharded), forward(key, xs)))

    # fit and evaluate with a mesh: the same history and params as without one.
    x, y = _data("mlp", np.float64, 64, 1)
    _, _, ts = _start("mlp", np.float64)
    runs = [
        fn.train.fit(
            MLP,
            CE,
            fn.optim.adam(1e-2),
            ts.params,
            x,
            y,
            key=jax.random.PRNGKey(4),
            epochs=1,
            batch_size=16,
            state=ts.state,
            progress=False,
            mesh=mesh,
        )
        for mesh in (None, mesh8)
    ]
    out["fit_params"] = _max_diff(fn.sharding.gather(runs[1].params), runs[0].params)
    out["fit_history"] = max(
        abs(a - b)
        for k in runs[0].history
        for a, b in zip(runs[0].history[k], runs[1].history[k], strict=True)
    )
    # 20 examples in batches of 16 on the mesh: one sharded batch, a replicated one of 4.
    evals = [
        fn.train.evaluate(
            MLP, CE, runs[0].params, x[:20], y[:20], runs[0].state, batch_size=b, mesh=mesh
        )
        for b, mesh in ((20, None), (16, mesh8))
    ]
    out["evaluate"] = abs(evals[0]["loss"] - evals[1]["loss"])

    # A mesh made by jax.make_mesh (explicit axes) works too: it is converted to automatic.
    explicit = jax.make_mesh((8,), ("data",))
    out["explicit_axis_types"] = str(explicit.axis_types)
    x, y = _data("mlp", np.float64, 32, 100)
    _, _, ts = _start("mlp", np.float64)
    texts = [
        fn.train.train_step(MLP, CE, fn.optim.adam(1e-2), mesh=m).lower(ts, x, y).as_text()
        for m in (explicit, mesh8)
    ]
    out["explicit_same_program"] = texts[0] == texts[1]

    # Errors: a batch that does not split over the devices names both numbers.
    errors = {}
    try:
        _train("mlp", np.float64, mesh8, steps=1, batch=12)
    except ValueError as err:
        errors["train_step"] = str(err)
    try:
        fn.train.fit(
            MLP,
            CE,
            fn.optim.sgd(0.1),
            ts.params,
            x,
            y,
            key=jax.random.PRNGKey(0),
            epochs=1,
            batch_size=20,
            state=ts.state,
            progress=False,
            mesh=mesh8,
        )
    except ValueError as err:
        errors["fit"] = str(err)
    out["errors"] = errors
    print(json.dumps(out))


@pytest.fixture(scope="module")
def eight():
    proc = subprocess.run(
        _entry("_eight_devices"),
        cwd=ROOT,
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _json_line(proc.stdout)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_same_params_on_1_and_8_devices(eight, kind):
    assert eight["devices"] == 8
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-6)):
        got = eight[f"{kind}_{dtype}"]
        assert got["param_dtype"] == dtype
        assert got["moved"] > 1e-3, "the steps did not change the params: nothing was compared"
        assert got["8_vs_1"] <= tol, (dtype, got)
        assert got["state_8_vs_1"] <= tol, (dtype, got)  # the global batch's statistics


def test_step_inputs_are_sharded_over_8_devices(eight):
    assert eight["cnn_float32"]["x_annotation"]  # the CNN's images split 8 ways too
    got = eight["mlp_float32"]
    assert got["x_split_over_data"]
    assert got["x_devices"] == 8
    assert got["x_shard_shape"][0] == 32 // 8 and got["y_shard_shape"] == [32 // 8]
    assert got["params_replicated"] and got["outputs_replicated"]
    assert got["all_reduces"] >= 1  # the gradient (and statistics) all-reduce XLA inserted


def test_dropout_mask_does_not_depend_on_the_device_count(eight):
    assert eight["dropout_mask_equal"]


def test_fit_and_evaluate_with_a_mesh(eight):
    assert eight["fit_params"] <= 1e-12
    assert eight["fit_history"] <= 1e-12
    assert eight["evaluate"] <= 1e-12


def test_explicit_mesh_from_make_mesh(eight):
    assert "Explicit" in eight["explicit_axis_types"]
    assert eight["explicit_same_program"]


def test_batch_that_does_not_split_names_both_numbers(eight):
    step_error = eight["errors"]["train_step"]
    assert "train_step" in step_error and "12 examples" in step_error
    assert "8 devices" in step_error
    fit_error = eight["errors"]["fit"]
    assert "fit" in fit_error and "20 examples" in fit_error and "8 devices" in fit_error


# --- in this process (one device) ------------------------------------------------------------


def test_one_device_mesh_matches_no_mesh():
    mesh = fn.sharding.data_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == jax.device_count()
    _, plain = _train("mlp", np.float64, None, steps=2)
    _, meshed = _train("mlp", np.float64, mesh, steps=2)
    assert meshed.params[0]["w"].sharding == fn.sharding.replicated(mesh)
    assert _max_diff(fn.sharding.gather(meshed.params), plain.params) <= 1e-12


def test_helpers():
    mesh = fn.sharding.data_mesh()
    tree = {"w": jnp.ones((2, 3)), "key": jax.random.key(0), "n": np.arange(3)}
    placed = fn.sharding.replicate(tree, mesh)
    assert all(a.sharding.is_fully_replicated for a in jax.tree_util.tree_leaves(placed))
    assert fn.sharding.replicate(placed, mesh)["w"] is placed["w"]  # no copy when in place
    batch = fn.sharding.shard_batch((np.ones((4, 2)), np.zeros(4, np.int32)), mesh)
    assert batch[0].sharding == fn.sharding.batch_sharding(mesh)
    local = fn.sharding.process_local_batch(np.arange(4.0), mesh)
    np.testing.assert_array_equal(fn.sharding.gather(local), np.arange(4.0))
    back = fn.sharding.gather(placed)
    assert isinstance(back["w"], np.ndarray) and back["key"].dtype == np.uint32


def test_mesh_errors():
    with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh"):
        fn.train.train_step(MLP, fn.losses.mse(), fn.optim.sgd(0.1), mesh="data")
    other = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    with pytest.raises(ValueError, match=r"axis named 'data'.*got axes \('batch',\)"):
        fn.sharding.shard_batch(np.ones((2, 2)), other)
    mesh = fn.sharding.data_mesh()
    with pytest.raises(ValueError, match="leading batch axis"):
        fn.sharding.shard_batch(np.float32(1.0), mesh)
    with pytest.raises(ValueError, match="share the batch size"):
        fn.sharding.shard_batch((np.ones((2, 2)), np.ones(3)), mesh)
    with pytest.raises(ValueError, match="at least one device"):
        fn.sharding.data_mesh([])


# --- two processes on localhost ---------------------------------------------------------------


TWO_PROCESS_STEPS = 3
GLOBAL_BATCH = 16


def _two_process_worker(process_id: int, port: int, out_path: str):
    """One of two processes (2 CPU devices each), or the single-process reference (-1)."""
    if process_id >= 0:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=2,
            process_id=process_id,
            initialization_timeout=60,
        )
        assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
        mesh = fn.sharding.data_mesh()
    else:
        mesh = None
    model, opt = MLP, fn.optim.adam(1e-2)
    ts = fn.train.init_train_state(model, opt, jax.random.PRNGKey(0), (GLOBAL_BATCH, 6))
    step = fn.train.train_step(model, CE, opt, mesh=mesh)
    first = fn.sharding.gather(ts.params)
    losses = []
    for i in range(TWO_PROCESS_STEPS):
        x, y = _data("mlp", np.float32, GLOBAL_BATCH, 100 + i)
        if mesh is not None and i % 2 == 0:
            # This process's half of the global batch, as a data loader per host gives it.
            half = slice(process_id * GLOBAL_BATCH // 2, (process_id + 1) * GLOBAL_BATCH // 2)
            x, y = fn.sharding.process_local_batch((x[half], y[half]), mesh)
        # Odd steps: the whole global batch on every process; each sends its own rows.
        ts, loss = step(ts, x, y)
        losses.append(float(loss))
    host = fn.sharding.gather(ts)
    leaves = jax.tree_util.tree_leaves((host.params, host.state))
    moved = _max_diff(host.params, first)
    np.savez(out_path, *leaves, losses=np.array(losses), moved=np.array(moved))
    if process_id >= 0:
        jax.distributed.shutdown()
    print(json.dumps({"process": process_id, "losses": losses}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    port = _free_port()
    outs = [tmp_path / f"p{i}.npz" for i in (0, 1, -1)]
    procs = [
        subprocess.Popen(
            _entry("_two_process_worker", pid, port, str(out)),
            cwd=ROOT,
            env=_env(2 if pid >= 0 else 1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid, out in zip((0, 1, -1), outs, strict=True)
    ]
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            results.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:  # a process that hangs is killed, never left behind
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for code, _stdout, stderr in results:
        assert code == 0, stderr[-4000:]
    p0, p1, single = (np.load(out) for out in outs)
    names = [k for k in single.files if k not in ("losses", "moved")]
    assert names and len(p0.files) == len(single.files)
    for name in names:
        np.testing.assert_array_equal(p0[name], p1[name])  # both hold the same params
        np.testing.assert_allclose(p0[name], single[name], rtol=0, atol=1e-6)
    np.testing.assert_allclose(p0["losses"], single["losses"], rtol=1e-6)
    assert float(single["moved"]) > 1e-3, "the steps did not change the params"
