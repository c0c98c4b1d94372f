"""Every Python snippet in the docs runs.

Each page (``docs/**/*.md`` and ``README.md``) is one test: its ```` ```python ```` blocks
run in page order in one namespace, in a fresh temporary directory, so a later block may
use what an earlier one defined. What is not a Python program (a signature, pseudo-code,
output) is fenced as ```` ```text ````. A snippet that shows a few lines out of context may
be preceded by a hidden setup, an HTML comment the page does not render::

    <!-- test-setup
    x = jnp.linspace(-1, 1, 12).reshape(4, 3)
    -->

The course (``docs/course/*.md``) is left to tests/test_course.py, which runs the same
blocks the same way (its pages have no hidden setup and no indented block; it checks
that), so no course page runs twice.

Snippets are user code, so they run with JAX's default rank promotion (the suite raises on
implicit broadcasting in library code). Keep them cheap: tiny shapes, a few steps.
"""

from __future__ import annotations

import pathlib
import re
import textwrap

import jax
import pytest

# Left out of the quick subset (tests/README.md): every docs snippet runs and compiles.
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A fenced block (any indentation, e.g. inside a list) or a hidden setup comment. Only
# ```python blocks run; ```py marks Python that cannot run in one test process (a script
# for every process of a cluster), highlighted the same way.
CHUNK = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$"
    r"|^<!-- test-setup\n(?P<setup>.*?)^-->",
    re.MULTILINE | re.DOTALL,
)


def snippets(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` for each Python block and hidden setup, in page order."""
    out = []
    for m in CHUNK.finditer(text):
        line = text.count("\n", 0, m.start()) + 2
        if m.group("setup") is not None:
            out.append((line, m.group("setup")))
        elif m.group("lang") == "python":
            out.append((line, textwrap.dedent(m.group("code"))))
    return out


PAGES = sorted(
    p
    for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    if not {"api", "course"} & set(p.relative_to(ROOT).parts) and snippets(p.read_text())
)


def test_snippets_are_found():
    text = "a\n\n```python\nx = 1\n```\n\n<!-- test-setup\ny = 2\n-->\n\n  ```text\nno\n  ```\n"
    assert snippets(text) == [(4, "x = 1\n"), (8, "y = 2\n")]
    assert {"README.md", "training.md", "writing-layers.md"} <= {p.name for p in PAGES}
    assert not any("course" in p.parts for p in PAGES)  # tests/test_course.py runs those


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_page_snippets_run(page, tmp_path, monkeypatch):
    blocks = snippets(page.read_text())
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs:{page.name}"}
    where = page.relative_to(ROOT).as_posix()
    for line, code in blocks:
        try:  # user code: JAX's default broadcasting, not the suite's strict setting
            with jax.numpy_rank_promotion("allow"):
                exec(compile(code, f"{where}:{line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(
                f"the snippet at {where}, line {line}, fails: {type(err).__name__}: {err}"
            ) from err
