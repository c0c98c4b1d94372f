"""Strict settings for every test, the persistent compilation cache, and the quick subset.

* float64 available, no implicit rank promotion.
* Compiled programs are stored in jax's persistent compilation cache under ``.jax_cache/``
  in the repository (ignored by git, at most 1 GB, least recently used entries go
  first), so a second run of an unchanged test loads its programs instead of compiling
  them: measured on the contract tests, about a quarter of the CPU time of a cold run.
  A cold run (CI, a fresh clone) pays nothing extra for it. Set ``FUNCNN_JAX_CACHE=0``
  to turn it off.
* ``pytest -m "not slow"`` is the quick subset for the edit-test loop (see
  tests/README.md): tests marked ``slow``, and the contract tests of every registry case
  but the first one of each public factory, are left out.
"""

import os
import pathlib

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

if os.environ.get("FUNCNN_JAX_CACHE", "1") != "0":
    _CACHE = pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"
    jax.config.update("jax_compilation_cache_dir", str(_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", 1 << 30)


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


def pytest_collection_modifyitems(items):
    """Docstring examples run in the full suite only: each compiles its own programs."""
    for item in items:
        if isinstance(item, pytest.DoctestItem):
            item.add_marker(pytest.mark.slow)
