"""Every public layer has a registry case; __all__ and the docs agree with the exports."""

import inspect
import pathlib

import funcnn as fn
from funcnn import layers
from tests.registry import all_cases

COMBINATORS = [
    "sequential",
    "parallel",
    "fan_out",
    "fan_in_sum",
    "fan_in_concat",
    "remat",
    "residual",
    "graph",
]
DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def test_every_public_layer_has_a_case():
    covered = {name for case in all_cases() for name in case.covers}
    public = set(layers.__all__) | set(COMBINATORS)
    missing = sorted(public - covered)
    assert not missing, f"public layers without a registry case: {missing}"


def test_all_matches_exports():
    for name in fn.__all__:
        assert hasattr(fn, name), f"funcnn.__all__ names {name!r}, which does not exist"
    for name in layers.__all__:
        assert inspect.isfunction(getattr(fn, name)), name


def test_every_public_layer_is_documented():
    text = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    missing = [n for n in [*layers.__all__, *COMBINATORS] if f"`{n}" not in text]
    assert not missing, f"public layers missing from docs/: {missing}"


def test_every_public_layer_has_a_docstring_with_its_backward():
    for name in [*layers.__all__, *COMBINATORS]:
        doc = inspect.getdoc(getattr(fn, name)) or ""
        assert "ackward" in doc, f"{name}'s docstring does not give its backward"
