"""The benchmark scripts still run and their formulations agree (tiny shapes, no timings
asserted: the scripts' own checks compare the two ways of computing each result)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import attention
import conv_kernel_grad
import gpt
import pooling

# Left out of the quick subset (tests/README.md): the benchmarks compile full-size models.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("shape", [(4, 6, 3, 32, 3, 1), (4, 7, 2, 32, 3, 2), (2, 5, 3, 32, 1, 1)])
def test_conv_kernel_grad_formulations_agree(shape):
    times = conv_kernel_grad.measure(shape, repeats=3)
    expected = {"dw conv", "dw matmul"} | (
        {"forward conv", "forward matmul"} if shape[4] == 1 else set()
    )
    assert set(times) == expected


def test_pooling_benchmark_matches_reduce_window():
    times, cache_bytes, residual_bytes = pooling.measure((2, 6, 6, 3), 2, 2, repeats=3)
    assert set(times) == {"ours", "reference", "forward", "backward"}
    assert 0 < cache_bytes < residual_bytes


def test_remat_benchmark_variants_agree_and_cache_less():
    import remat

    results = remat.measure(4, 3, 8, repeats=3)  # asserts that the gradients agree
    assert results["remat whole model"][0] < results["remat per block"][0] < results["plain"][0]


def test_remat_benchmark_on_transformer_blocks_agrees_and_caches_less():
    import remat

    results = remat.measure_transformer(2, 8, 2, 2, 8, repeats=3)  # gradients agree
    assert results["remat whole model"][0] < results["remat per block"][0] < results["plain"][0]


def test_gpt_benchmark_losses_agree_and_cache_is_smaller():
    # measure() asserts that the funcnn and plain-JAX losses agree before timing.
    r = gpt.measure(layers=1, heads=2, features=16, seq=8, batch=2, vocab=11,
                    memory="recompute", repeats=3)  # fmt: skip
    assert set(r["times"]) == {"funcnn", "jax"}
    assert 0 < r["cache"] < r["residual_all"]


def test_attention_benchmark_gradients_agree():
    # measure() asserts that both memory modes give jax.grad's gradients before timing.
    times, cache = attention.measure(1, 8, 8, 2, causal=True, repeats=3, block_size=4)
    assert set(times) == {"saved", "recompute", "jax"}
    assert cache["recompute"] < cache["saved"]


def test_lstm_benchmark_formulations_agree_and_cache_less():
    import lstm

    try:
        import torch
    except ImportError:  # the torch comparison is optional, as in the benchmark
        torch = None
    assert lstm.check_agreement((2, 3, 4, 5), torch) < 1e-4  # funcnn vs jax.grad (and torch)
    cache, residuals = lstm.cache_bytes((2, 3, 4, 5))
    assert 0 < cache < 0.6 * residuals
