"""Strict settings for every test, the persistent compilation cache, and the quick subset.

* float64 available, no implicit rank promotion.
* Compiled programs are stored in jax's persistent compilation cache under ``.jax_cache/``
  in the repository (ignored by git), so the two xdist workers share what either one
  compiled, and a second run of an unchanged test loads its programs instead of compiling
  them. jax's own size cap is left off: it rescans the whole directory on every write,
  which is quadratic in the number of entries (a full cold run took 1985 s with it, 464 s
  without, and 517 s with no cache at all). The cap is applied here instead, once per
  run: a cache over 1 GB is emptied before the tests start. Set ``FUNCNN_JAX_CACHE=0``
  to turn the cache off.
* ``pytest -m "not slow"`` is the quick subset for the edit-test loop (see
  tests/README.md): tests marked ``slow``, and the contract tests of every registry case
  but the first one of each public factory, are left out.
* XLA compiles the tests' programs with LLVM's optimizations off and its classic loop
  emitters (``_FAST_COMPILE``), which halves the suite's time: almost all of it is
  compiling small programs that then run for microseconds. ``FUNCNN_TEST_XLA_DEFAULTS=1``
  runs the suite with XLA's default compiler settings instead (tests/README.md).
"""

import os
import pathlib
import shutil
import subprocess
import sys

# XLA reads XLA_FLAGS once, when jax creates its first backend, and aborts the process on a
# flag it does not know (a jax older or newer than the one these were measured with).
_FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def _fast_compile_flags() -> None:
    """Add ``_FAST_COMPILE`` to ``XLA_FLAGS`` if this jax accepts them, once per run.

    Runs in pytest's main process before any backend exists; xdist's workers and the
    tests' own subprocesses inherit the environment, so they compile the same way (and
    find nothing left to add). A flag the caller already set is left as it is. A child
    interpreter tries the flags first, since an unknown one would abort the whole run.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f for f in _FAST_COMPILE if f.split("=")[0] not in flags]
    if os.environ.get("FUNCNN_TEST_XLA_DEFAULTS") == "1" or not extra:
        return
    candidate = " ".join([flags, *extra]).strip()
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"],
        env={**os.environ, "XLA_FLAGS": candidate},
        capture_output=True,
        timeout=300,
    )
    if probe.returncode == 0:
        os.environ["XLA_FLAGS"] = candidate


_fast_compile_flags()

import jax  # noqa: E402  (after XLA_FLAGS is final)
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


def _prune_cache(path, limit=1 << 30):
    """Empty the cache once it passes ``limit`` bytes, in the main process only (xdist's
    workers start after it, so none is reading the directory meanwhile)."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not path.is_dir():
        return
    if sum(f.stat().st_size for f in path.iterdir() if f.is_file()) > limit:
        shutil.rmtree(path, ignore_errors=True)


if os.environ.get("FUNCNN_JAX_CACHE", "1") != "0":
    _CACHE = pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"
    jax.config.update("jax_compilation_cache_dir", str(_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", -1)  # no cap: see the docstring
    _prune_cache(_CACHE)


def pytest_report_header(config):
    """Say in the run's header which compiler settings the tests ran under."""
    flags = os.environ.get("XLA_FLAGS", "").strip()
    if not flags:
        return "XLA: default compiler settings"
    return f"XLA_FLAGS: {flags} (FUNCNN_TEST_XLA_DEFAULTS=1 for XLA's defaults)"


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


def _long(item) -> bool:
    """Whole-module ``slow`` tests (examples, docs pages, subprocesses) and docstring examples."""
    if isinstance(item, pytest.DoctestItem):
        return True
    marks = getattr(getattr(item, "module", None), "pytestmark", [])
    return any(m.name == "slow" for m in (marks if isinstance(marks, list) else [marks]))


def _first_parametrization_only(items):
    """Mark ``slow`` every parametrization of a test but its first: the quick subset runs
    each test function once. A function that marks some of its own parametrizations
    ``slow`` (test_contract.py keeps the first case of each factory) chooses for itself."""
    groups: dict = {}
    for item in items:
        if getattr(item, "callspec", None) is not None:
            groups.setdefault((item.path, item.originalname), []).append(item)
    for group in groups.values():
        if any(item.get_closest_marker("slow") for item in group):
            continue
        for item in group[1:]:
            item.add_marker(pytest.mark.slow)


def pytest_collection_modifyitems(items):
    """The quick subset, and the order tests are handed out in.

    Docstring examples run in the full suite only (each compiles its own programs), and so
    do all parametrizations of a test but its first.

    The long tests go first (a stable sort, so every xdist worker collects the same order):
    xdist hands out tests in collection order, and a 30-second subprocess test that starts
    last leaves the other worker idle until it ends.
    """
    for item in items:
        if isinstance(item, pytest.DoctestItem):
            item.add_marker(pytest.mark.slow)
    _first_parametrization_only(items)
    items.sort(key=lambda item: not _long(item))
