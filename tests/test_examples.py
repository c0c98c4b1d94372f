"""The example scripts run end to end (shortened) and print what they promise."""

import os
import pathlib
import subprocess
import sys

import pytest

# Left out of the quick subset (tests/README.md): the examples train for real: minutes of CPU.
pytestmark = pytest.mark.slow

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _run(script, *args, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("script", ["digits_mlp.py", "digits_cnn.py"])
def test_digits_example_trains_and_plots(script, tmp_path):
    plot = tmp_path / "curves.png"
    out = _run(script, "--epochs", "3", "--plot", str(plot), cwd=tmp_path)
    accuracy = float(out.strip().splitlines()[-1].removeprefix("test accuracy: "))
    assert accuracy > 0.8  # three epochs already learn most digits
    assert plot.stat().st_size > 10_000


def test_stateful_vs_pure_example(tmp_path):
    out = _run("stateful_vs_pure.py", cwd=tmp_path)
    diffs = [
        float(line.rsplit("=", 1)[1])
        for line in out.splitlines()
        if "max |stateful - funcnn| =" in line
    ]
    assert len(diffs) == 4 and max(diffs) < 1e-12  # the same gradients, both ways
    assert "funcnn,   batch 1: off by 0.0e+00" in out  # two caches, no overwrite


def test_seeds_both_ways_example(tmp_path):
    out = _run("seeds_both_ways.py", "--epochs", "2", cwd=tmp_path)
    lab = [line.split(maxsplit=1)[1] for line in out.splitlines() if " loss 0.2500 " in line]
    assert lab == ["loss 0.2500  dw1 +0.0  db1 +0.0  dw2 +0.0  db2 +1.0"] * 2  # both ways
    gaps = [float(line.rsplit("=", 1)[1]) for line in out.splitlines() if "max |stateful" in line]
    assert len(gaps) == 4 and max(gaps) < 1e-12  # the same losses and weights, both networks
    final = float(out.strip().splitlines()[-1].rsplit("=", 1)[1])
    assert final < 1e-12


def test_char_gpt_example_trains_samples_and_plots(tmp_path):
    plot = tmp_path / "gpt.png"
    out = _run(
        "char_gpt.py",
        *("--steps", "30", "--layers", "1", "--features", "32", "--heads", "2", "--seq", "16"),
        *("--batch", "16", "--lr", "1e-2", "--eval-every", "15", "--sample-length", "40"),
        *("--plot", str(plot)),
        cwd=tmp_path,
    )
    last = out.strip().splitlines()[-1]
    assert last.startswith("validation bits per character: ")
    bits = float(last.removeprefix("validation bits per character: "))
    assert bits < 5.5  # an untrained model scores log2(96) = 6.6; the unigram baseline 4.9
    assert "--- sample" in out and plot.stat().st_size > 10_000


def test_char_lstm_example_beats_the_unigram_baseline(tmp_path):
    plot = tmp_path / "curves.png"
    tiny = ["--steps", "60", "--hidden", "32", "--embed", "16", "--batch", "8", "--seq", "32"]
    out = _run(
        "char_lstm.py", *tiny, "--lr", "1e-2", "--evals", "2", "--sample", "40",
        "--plot", str(plot), cwd=tmp_path,
    )  # fmt: skip
    lines = out.strip().splitlines()
    bpc = float(lines[-1].removeprefix("validation bits per character: "))
    unigram = float(next(x for x in lines if x.startswith("unigram baseline: ")).split()[2])
    assert 2.0 < bpc < unigram  # 60 tiny truncated-BPTT steps already beat the unigram model
    sampled = lines[lines.index("sampled text (prompt 'Return the'):") + 1]
    assert sampled.startswith("Return the")
    assert plot.stat().st_size > 10_000
