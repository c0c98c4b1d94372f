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
    "tied",
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


def _api_rule():
    """docs/hooks/api.py: the API reference's coverage rule (also a mkdocs hook)."""
    import importlib.util

    path = DOCS / "hooks" / "api.py"
    spec = importlib.util.spec_from_file_location("funcnn_docs_api", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_documents_every_public_name():
    problems = _api_rule().missing()
    assert not problems, "the API reference (docs/api) is incomplete:\n" + "\n".join(problems)


def test_api_reference_rule_covers_every_export():
    api = _api_rule()
    expected = api.expected()
    # every top-level name resolves to where it is documented
    for name in fn.__all__:
        assert api.identifier("funcnn", name) in expected, name
    assert expected["funcnn.layers.dense.dense"] == "funcnn.dense"
    assert "funcnn.core.Layer" in expected and "funcnn.summary" in expected


def test_api_reference_says_what_is_missing(monkeypatch):
    api = _api_rule()
    pages = api.pages()
    monkeypatch.setattr(api, "pages", lambda: {k: v for k, v in pages.items() if k != "funcnn.io"})
    monkeypatch.setattr(
        api, "restricted_members", lambda page, module: [] if module == "funcnn.core" else None
    )
    problems = "\n".join(api.missing())
    assert "funcnn.io has no API page: create docs/api/io.md" in problems
    assert "'::: funcnn.io'" in problems and "'- funcnn.io: api/io.md'" in problems
    assert "funcnn.core.Layer (exported as funcnn.Layer) is public but docs/api/core.md" in problems
