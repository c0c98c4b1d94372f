"""The example scripts run end to end (shortened) and print what they promise.

All six run in ONE subprocess (a fresh interpreter, as a user runs them, with this
checkout's ``funcnn`` first on the path): each script is run with ``runpy`` as
``__main__`` with its own ``sys.argv``, its stdout captured apart, and an error in one
script is recorded and does not stop the others. One interpreter pays jax's start, the
imports (scikit-learn, matplotlib) and the shared small programs (PRNG keys and splits)
once instead of six times. The float32 scripts run first: ``seeds_both_ways.py`` and
``stateful_vs_pure.py`` turn on float64 when imported, as they do when run alone.
Each script's checks are a subtest, so a failure names its script.

The interpreter inherits the suite's ``XLA_FLAGS`` (tests/conftest.py: LLVM's
optimizations off), so the examples compile about twice as fast; what the scripts print is
the same (the checks below hold with the same margins), and running the programs takes a
small part of the time either way.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

# Left out of the quick subset (tests/README.md): the examples train for real: minutes of CPU.
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

_DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback
examples, runs, report = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
sys.path.insert(0, examples)
results = {}
for name, script, args in runs:
    sys.argv = [f"{examples}/{script}", *args]
    out = io.StringIO()
    error = None
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except BaseException:
        error = traceback.format_exc()
    results[name] = {"stdout": out.getvalue(), "error": error}
with open(report, "w") as f:
    json.dump(results, f)
"""


def _run_all(runs, tmp_path):
    """Run ``[(name, script, args), ...]`` in one interpreter; ``{name: stdout}`` or an
    error string per name."""
    report = tmp_path / "report.json"
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": pythonpath}
    result = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(EXAMPLES), json.dumps(runs), str(report)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(report.read_text())


def _digits(out, plot):
    accuracy = float(out.strip().splitlines()[-1].removeprefix("test accuracy: "))
    assert accuracy > 0.8  # three epochs already learn most digits
    assert plot.stat().st_size > 10_000


def _stateful_vs_pure(out):
    diffs = [
        float(line.rsplit("=", 1)[1])
        for line in out.splitlines()
        if "max |stateful - funcnn| =" in line
    ]
    assert len(diffs) == 4 and max(diffs) < 1e-12  # the same gradients, both ways
    assert "funcnn,   batch 1: off by 0.0e+00" in out  # two caches, no overwrite


def _seeds_both_ways(out):
    lab = [line.split(maxsplit=1)[1] for line in out.splitlines() if " loss 0.2500 " in line]
    assert lab == ["loss 0.2500  dw1 +0.0  db1 +0.0  dw2 +0.0  db2 +1.0"] * 2  # both ways
    gaps = [float(line.rsplit("=", 1)[1]) for line in out.splitlines() if "max |stateful" in line]
    assert len(gaps) == 4 and max(gaps) < 1e-12  # the same losses and weights, both networks
    final = float(out.strip().splitlines()[-1].rsplit("=", 1)[1])
    assert final < 1e-12


def _char_gpt(out, plot):
    last = out.strip().splitlines()[-1]
    assert last.startswith("validation bits per character: ")
    bits = float(last.removeprefix("validation bits per character: "))
    assert bits < 5.5  # an untrained model scores log2(96) = 6.6; the unigram baseline 4.9
    assert "--- sample" in out and plot.stat().st_size > 10_000


def _char_lstm(out, plot):
    lines = out.strip().splitlines()
    bpc = float(lines[-1].removeprefix("validation bits per character: "))
    unigram = float(next(x for x in lines if x.startswith("unigram baseline: ")).split()[2])
    assert 2.0 < bpc < unigram  # 60 tiny truncated-BPTT steps already beat the unigram model
    sampled = lines[lines.index("sampled text (prompt 'Return the'):") + 1]
    assert sampled.startswith("Return the")
    assert plot.stat().st_size > 10_000


def test_examples_run_and_print_what_they_promise(tmp_path, subtests):
    plots = {name: tmp_path / f"{name}.png" for name in ("mlp", "cnn", "gpt", "lstm")}
    gpt = [
        *("--steps", "30", "--layers", "1", "--features", "32", "--heads", "2", "--seq", "16"),
        *("--batch", "16", "--lr", "1e-2", "--eval-every", "15", "--sample-length", "40"),
    ]
    lstm = [
        *("--steps", "60", "--hidden", "32", "--embed", "16", "--batch", "8", "--seq", "32"),
        *("--lr", "1e-2", "--evals", "2", "--sample", "40"),
    ]
    runs = [  # the float32 scripts first (see the module docstring)
        ("digits_mlp", "digits_mlp.py", ["--epochs", "3", "--plot", str(plots["mlp"])]),
        ("digits_cnn", "digits_cnn.py", ["--epochs", "3", "--plot", str(plots["cnn"])]),
        ("char_gpt", "char_gpt.py", [*gpt, "--plot", str(plots["gpt"])]),
        ("char_lstm", "char_lstm.py", [*lstm, "--plot", str(plots["lstm"])]),
        ("seeds_both_ways", "seeds_both_ways.py", ["--epochs", "2"]),
        ("stateful_vs_pure", "stateful_vs_pure.py", []),
    ]
    results = _run_all(runs, tmp_path)
    checks = {
        "digits_mlp": lambda out: _digits(out, plots["mlp"]),
        "digits_cnn": lambda out: _digits(out, plots["cnn"]),
        "char_gpt": lambda out: _char_gpt(out, plots["gpt"]),
        "char_lstm": lambda out: _char_lstm(out, plots["lstm"]),
        "seeds_both_ways": _seeds_both_ways,
        "stateful_vs_pure": _stateful_vs_pure,
    }
    assert list(results) == list(checks)
    for name, check in checks.items():
        with subtests.test(msg=name):
            assert results[name]["error"] is None, results[name]["error"][-3000:]
            check(results[name]["stdout"])
