"""docs/reading-the-source.md names real files and real names.

Each numbered item of the page names files (``funcnn/...py``, ``tests/...py``) and, in
backticks, names that must be defined (a function, class, field, assignment or import) in
one of the files of that item, so a rename that leaves the page behind fails here.
"""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reading-the-source.md"
PATH = re.compile(r"`((?:funcnn|tests)/[\w/]+\.py)`")
NAME = re.compile(r"`([A-Za-z_]\w*)`")


def _items(text):
    """The page's numbered items, each joined into one string."""
    return [m.group(1) for m in re.finditer(r"^\d+\. (.*?)(?=^\d+\. |^\S|\Z)", text, re.M | re.S)]


def _defined(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


def test_every_file_and_name_on_the_page_exists():
    items = _items(PAGE.read_text())
    assert len(items) >= 6, items
    for item in items:
        paths = PATH.findall(item)
        assert paths, f"an item names no file: {item!r}"
        for path in paths:
            assert (ROOT / path).is_file(), f"{path} does not exist"
        defined = set().union(*(_defined(ROOT / p) for p in paths))
        missing = sorted(set(NAME.findall(item)) - defined)
        assert not missing, f"not defined in {paths}: {missing}"


def test_the_check_can_fail():
    assert "_chain" in _defined(ROOT / "funcnn" / "combinators.py")
    assert "no_such_name" not in _defined(ROOT / "funcnn" / "combinators.py")
    assert len(_items("1. `a`\n   more\n2. `b`\n\nafter\n")) == 2
