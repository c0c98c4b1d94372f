"""funcnn.io under faults: saves killed at random moments, concurrent saves to one path.

One subprocess (under a hard timeout) imports ``funcnn/io.py`` once and then forks a
child per save, so that each trial costs a save, not an interpreter start. It never
creates a JAX array (NumPy trees only), so no JAX runtime thread exists when it forks.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

IO_PY = pathlib.Path(__file__).resolve().parents[1] / "funcnn" / "io.py"

# Left out of the quick subset (tests/README.md): kills writer processes mid-save.
pytestmark = pytest.mark.slow


WORKER = r"""
import importlib.util, json, os, signal, sys, time
import numpy as np
import ml_dtypes

args = json.loads(sys.argv[1])
signal.alarm(args["alarm"])  # a hard limit of its own, children included (they are killed)
spec = importlib.util.spec_from_file_location("funcnn_io_under_test", args["io"])
fio = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fio)

rng = np.random.default_rng(args["seed"])
mb = args["megabytes"]


def make_tree(megabytes):
    n = megabytes * (1 << 20) // 4
    return {
        "w": rng.standard_normal(n // 2, dtype=np.float32),             # half the bytes
        "b": rng.standard_normal(n // 2, dtype=np.float32).astype(ml_dtypes.bfloat16),
        "layers": [rng.integers(-9, 9, n // 8, dtype=np.int8) for _ in range(8)],
        "step": np.int64(0),
    }


def leaves(tree):
    return [tree["w"], tree["b"], *tree["layers"]]


def mark(tree, version):
    # Version-dependent content: the first and last element of every array, and "step".
    for a in leaves(tree):
        a[0] = a[-1] = version % 7
    tree["step"] = np.int64(version)


def check(tree, loaded):
    # The loaded tree must be exactly the tree of the version it claims to be.
    version = int(loaded["step"])
    mark(tree, version)
    for a, b in zip(leaves(tree), leaves(loaded)):
        if a.dtype != b.dtype or not np.array_equal(a.view(np.uint8), b.view(np.uint8)):
            raise AssertionError(f"version {version} loaded with different content")
    return version


def temporaries(directory):
    return [n for n in os.listdir(directory) if n.endswith(".funcnn-tmp")]


def fork_save(tree, path):
    pid = os.fork()
    if pid == 0:
        try:
            fio.save(path, tree)
        except BaseException:
            os._exit(1)
        os._exit(0)
    return pid


directory = args["dir"]
path = os.path.join(directory, "model.ckpt")
tree = make_tree(mb)
template = dict(tree)  # load's template: the same structure, shapes and dtypes
stats = {"kills": 0, "killed_by_signal": 0, "completed_before_kill": 0, "intact_loads": 0,
         "old_version_after_kill": 0, "new_version_after_kill": 0, "stale_seen": 0,
         "max_stale": 0}

mark(tree, 0)
fio.save(path, tree)
size = os.path.getsize(path)

# Time one complete save (in a child, as in the trials).
mark(tree, 1)
t0 = time.perf_counter()
pid = fork_save(tree, path)
_, status = os.waitpid(pid, 0)
save_seconds = calibrated = time.perf_counter() - t0
assert os.waitstatus_to_exitcode(status) == 0
current = check(tree, fio.load(path, like=template))
assert current == 1

t_kills = time.perf_counter()
for trial in range(args["kills"]):
    version = current + 1
    mark(tree, version)
    pid = fork_save(tree, path)
    time.sleep(rng.uniform(0.0, save_seconds))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    stats["kills"] += 1
    code = os.waitstatus_to_exitcode(status)
    if code == -signal.SIGKILL:
        stats["killed_by_signal"] += 1
    else:
        assert code == 0, f"a save failed on its own (exit code {code})"
        stats["completed_before_kill"] += 1
        save_seconds *= 0.8  # saves got faster (less load): keep the kills inside them
    loaded = check(tree, fio.load(path, like=template))  # raises unless intact
    stats["intact_loads"] += 1
    if code == 0:
        assert loaded == version, "a completed save is not what loads"
    assert loaded in (current, version), (loaded, current, version)
    stats["old_version_after_kill" if loaded == current else "new_version_after_kill"] += 1
    current = loaded
    stale = len(temporaries(directory))
    stats["stale_seen"] += stale > 0
    stats["max_stale"] = max(stats["max_stale"], stale)

stats["kill_phase_seconds"] = round(time.perf_counter() - t_kills, 1)

# The next complete save removes what killed saves left behind.
mark(tree, current + 1)
fio.save(path, tree)
current = check(tree, fio.load(path, like=template))
stats["temporaries_after_next_save"] = len(temporaries(directory))

# Concurrent saves: two children write two versions to one path at once.
small = make_tree(args["concurrent_megabytes"])
small_template = dict(small)
cpath = os.path.join(directory, "shared.ckpt")
stats["concurrent_rounds"] = 0
stats["concurrent_intact"] = 0
for r in range(args["concurrent_rounds"]):
    a, b = 1000 + 2 * r, 1001 + 2 * r
    mark(small, a)
    pid_a = fork_save(small, cpath)
    mark(small, b)  # the first child keeps its own copy of the pages (copy on write)
    pid_b = fork_save(small, cpath)
    codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in (pid_a, pid_b)]
    assert codes == [0, 0], f"a concurrent save failed: exit codes {codes}"
    loaded = check(small, fio.load(cpath, like=small_template))
    assert loaded in (a, b), (loaded, a, b)
    stats["concurrent_rounds"] += 1
    stats["concurrent_intact"] += 1
    assert not temporaries(directory), temporaries(directory)

stats.update(megabytes=round(size / 2**20, 1), calibrated_save_seconds=round(calibrated, 3))
print(json.dumps(stats))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fault test forks savers (POSIX)")
def test_kills_and_concurrent_saves_never_corrupt_the_checkpoint(tmp_path):
    args = {
        "io": str(IO_PY),
        "dir": str(tmp_path),
        "seed": 0,
        "megabytes": 100,
        "kills": 20,
        "concurrent_megabytes": 8,
        "concurrent_rounds": 8,
        "alarm": 170,
    }
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, so a timeout takes its children too
    )
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the fault test did not finish within 180 s")
    assert proc.returncode == 0, err[-3000:]
    stats = json.loads(out.strip().splitlines()[-1])
    print("io fault test:", stats)
    assert stats["megabytes"] > 95
    assert stats["kills"] == 20
    assert stats["intact_loads"] == stats["kills"]  # the checkpoint at the path always loads
    assert stats["killed_by_signal"] >= 10  # most kills landed during a save
    assert stats["old_version_after_kill"] >= 3  # and left the previous checkpoint in place
    assert stats["stale_seen"] >= 1  # killed saves did leave temporaries behind ...
    assert stats["max_stale"] <= 1  # ... which the next save removes before it writes
    assert stats["temporaries_after_next_save"] == 0
    assert stats["concurrent_rounds"] == stats["concurrent_intact"] == 8
