"""Every Python snippet of the course (docs/course/*.md) runs.

The blocks of one page run in order in one namespace, as a reader pasting them into one
session would. Other docs pages are tested by tests/test_docs.py; this file covers the
course only.
"""

import pathlib
import re

import jax
import pytest

# Left out of the quick subset (tests/README.md): every course page runs end to end.
pytestmark = pytest.mark.slow

COURSE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "course"
PAGES = sorted(COURSE.glob("*.md"))
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: pathlib.Path) -> list[str]:
    return _BLOCK.findall(page.read_text())


def test_the_course_has_its_pages():
    names = {page.stem for page in PAGES}
    assert {"chain-rule", "linear-softmax", "stateful-to-pure", "memory"} <= names
    assert {"normalization", "bptt", "attention", "exercises"} <= names
    for page in PAGES:  # each page ends in runnable code
        assert blocks(page), f"{page.name} has no python block"


def test_course_blocks_are_all_found():
    # tests/test_docs.py leaves the course to this file, whose simple pattern sees only
    # unindented ```python blocks: no page may hide a setup or indent a block.
    for page in PAGES:
        text = page.read_text()
        assert "<!-- test-setup" not in text, page.name
        assert not re.search(r"^[ \t]+```python", text, re.MULTILINE), page.name


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a page that writes files writes them here
    namespace = {"__name__": f"course_{page.stem.replace('-', '_')}"}
    # Readers run with JAX's defaults; the suite's conftest makes rank promotion raise.
    with jax.numpy_rank_promotion("allow"):
        for i, code in enumerate(blocks(page)):
            exec(compile(code, f"{page.name} (python block {i + 1})", "exec"), namespace)


def test_exercises_page_matches_the_package():
    from funcnn import exercises

    text = (COURSE / "exercises.md").read_text()
    # The skeleton shown is the one `start lstm_cell` writes, and every hint is quoted.
    assert exercises.skeleton("lstm_cell") in blocks(COURSE / "exercises.md")
    for name, ex in exercises.EXERCISES.items():
        assert f"**`{name}`**" in text
        for mistake in ex.mistakes:
            assert f"`{mistake.name}`" in text and mistake.hint in text, (name, mistake.name)
        assert (COURSE / ex.page).exists()  # the derivation it points to


def test_course_pages_are_in_the_nav():
    nav = (COURSE.parents[1] / "mkdocs.yml").read_text()
    for page in PAGES:
        assert f"course/{page.name}" in nav, page.name


def test_no_math_in_course_headings():
    # The table of contents shows a heading's text, where a formula stays raw TeX.
    for page in PAGES:
        for line in page.read_text().splitlines():
            assert not (line.startswith("#") and "$" in line), (page.name, line)
