"""The API reference's coverage rule, shared by ``mkdocs build`` (as a hook) and the tests.

The rule, in full:

* A **public module** is every module under ``funcnn`` with no ``_``-prefixed path part,
  except the implementation modules of a package that is documented whole (``WHOLE``).
* Its **public names** are its ``__all__``, or, without one, the functions and classes it
  defines whose names do not start with ``_``.
* Every public module has one page under ``docs/api/`` holding ``::: <module>``, listed in
  the ``nav`` of ``mkdocs.yml``; the page renders the module's public names, so every name
  is found at ``<module>.<name>`` (a re-export, such as ``funcnn.dense``, at the path of the
  module that defines it, ``funcnn.layers.dense.dense``).

``missing()`` lists, in words, what breaks the rule. The tests call it (no build needed);
as a mkdocs hook the same list fails ``mkdocs build --strict``, and after the build every
expected identifier must also be an anchor of the rendered pages (``on_post_build``), so a
page whose ``:::`` directive renders less than the rule expects fails the build too.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import pathlib
import pkgutil
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # document this checkout's funcnn, whatever else is installed
    sys.path.insert(0, str(ROOT))
API = ROOT / "docs" / "api"
PACKAGE = "funcnn"
# Packages documented by their __all__ on one page; their submodules are implementation.
WHOLE = ("funcnn.exercises",)
DIRECTIVE = re.compile(r"^:::\s*([\w.]+)\s*$", re.MULTILINE)

log = logging.getLogger("mkdocs.hooks.api")


@functools.cache
def public_modules() -> list[str]:
    """Every public module, sorted."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts):
            continue
        if any(info.name.startswith(w + ".") for w in WHOLE):
            continue
        names.append(info.name)
    return sorted(names)


@functools.cache
def public_names(module: str) -> list[str]:
    """A module's public names: its ``__all__``, else what it defines without a ``_``."""
    mod = importlib.import_module(module)
    if hasattr(mod, "__all__"):
        return list(mod.__all__)
    return sorted(
        name
        for name, obj in vars(mod).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == module
    )


def identifier(module: str, name: str) -> str:
    """Where ``module.name`` is documented: the path of the module that defines it."""
    mod = importlib.import_module(module)
    obj = getattr(mod, name)
    if inspect.ismodule(obj):
        return obj.__name__
    home = getattr(obj, "__module__", None)
    defined_elsewhere = (inspect.isfunction(obj) or inspect.isclass(obj)) and home != module
    if defined_elsewhere and home in public_modules() and name in public_names(home):
        return f"{home}.{obj.__qualname__}"
    return f"{module}.{name}"


def expected() -> dict[str, str]:
    """``{identifier: "module.name as users spell it"}`` for every public name."""
    out = {}
    for module in public_modules():
        out.setdefault(module, module)
        for name in public_names(module):
            out.setdefault(identifier(module, name), f"{module}.{name}")
    return out


def pages() -> dict[str, pathlib.Path]:
    """``{module: page}`` for every ``::: module`` directive under ``docs/api/``."""
    found = {}
    for page in sorted(API.rglob("*.md")):
        for module in DIRECTIVE.findall(page.read_text()):
            found[module] = page
    return found


def page_for(module: str) -> str:
    """Where a module's page goes: ``funcnn.layers.dense`` -> ``api/layers/dense.md``."""
    parts = module.split(".")[1:] or ["funcnn"]
    return "api/" + "/".join(parts) + ".md"


def nav_pages() -> set[str]:
    """The pages named in the ``nav`` of mkdocs.yml (read as text: no YAML tags to resolve)."""
    text = (ROOT / "mkdocs.yml").read_text()
    return set(re.findall(r":\s*(api/[\w/.-]+\.md)\s*$", text, re.MULTILINE))


def restricted_members(page: pathlib.Path, module: str) -> list[str] | None:
    """The ``members:`` option of ``::: module`` on ``page`` (``None`` when unrestricted)."""
    text = page.read_text()
    at = re.search(rf"^:::\s*{re.escape(module)}\s*$", text, re.MULTILINE)
    block = []
    for line in text[at.end() :].splitlines()[1:]:
        if line.strip() and not line.startswith((" ", "\t")):
            break
        block.append(line)
    found = re.search(r"^\s*members:\s*(.*)$", "\n".join(block), re.MULTILINE)
    if not found:
        return None
    value = found.group(1).strip()
    if value in ("false", "False", "[]"):
        return []
    return [m.strip().strip("'\"") for m in value.strip("[]").split(",") if m.strip()]


def missing() -> list[str]:
    """What the API reference lacks, one instruction per problem (empty when complete)."""
    problems = []
    modules, have, nav = public_modules(), pages(), nav_pages()
    for module in modules:
        if module not in have:
            page = page_for(module)
            problems.append(
                f"{module} has no API page: create docs/{page} containing the line "
                f"'::: {module}', and add '- {module}: {page}' under 'API reference' in the "
                f"nav of mkdocs.yml"
            )
            continue
        page = have[module].relative_to(ROOT / "docs").as_posix()
        if page not in nav:
            problems.append(f"docs/{page} ({module}) is not in the nav of mkdocs.yml")
    for module, page in have.items():
        if module not in modules:
            where = page.relative_to(ROOT).as_posix()
            problems.append(f"{where} has '::: {module}', which is not a public module")
    for ident, spelled in expected().items():
        module, name = ident.rsplit(".", 1) if ident not in modules else (ident, None)
        if name is None or module not in have:
            continue
        members = restricted_members(have[module], module)
        if members is not None and name not in members:
            page = have[module].relative_to(ROOT).as_posix()
            also = "" if spelled == ident else f" (exported as {spelled})"
            problems.append(
                f"{ident}{also} is public but {page} renders only members {members} of {module}"
            )
    return problems


# --- mkdocs hook --------------------------------------------------------------------


def _index_table() -> str:
    import funcnn

    rows = ["| name | what | documented at |", "| --- | --- | --- |"]
    for name in sorted(funcnn.__all__, key=str.lower):
        ident = identifier("funcnn", name)
        obj = getattr(funcnn, name)
        doc = (inspect.getdoc(obj) or "").strip().splitlines()
        first = doc[0].replace("|", "\\|") if doc and not isinstance(obj, str) else ""
        first = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", first)
        rows.append(f"| [`{name}`][{ident}] | {first} | `{ident}` |")
    return "\n".join(rows)


def on_config(config, **kwargs):
    for problem in missing():
        log.warning("API reference: %s", problem)
    return config


CODE_NAME = re.compile(r"(?<![\[`])`(funcnn|fn)\.([\w.]+)(\(\))?`(?![\]`])")


@functools.cache
def _targets() -> dict[str, str]:
    """``{spelling: identifier}`` for every public name, as spelled and at its home."""
    out = {}
    for ident, spelled in expected().items():
        out[ident] = ident
        out.setdefault(spelled, ident)
    return out


def link_names(markdown: str) -> str:
    """Link inline code naming a public object (`` `funcnn.train.fit` ``, `` `fn.dense` ``)
    to its API entry; fenced code blocks are left alone."""
    out, fenced = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:

            def link(m):
                ident = _targets().get(f"funcnn.{m.group(2)}")
                return f"[{m.group(0)}][{ident}]" if ident else m.group(0)

            line = CODE_NAME.sub(link, line)
        out.append(line)
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files, **kwargs):
    if "<!-- funcnn.__all__ -->" in markdown:
        markdown = markdown.replace("<!-- funcnn.__all__ -->", _index_table())
    if not page.file.src_uri.startswith("api/"):
        markdown = link_names(markdown)
    return markdown


def on_post_build(config, **kwargs):
    site = pathlib.Path(config["site_dir"]) / "api"
    anchors = set()
    for html in site.rglob("*.html"):
        anchors.update(re.findall(r'id="([\w.]+)"', html.read_text()))
    for ident, spelled in expected().items():
        if ident not in anchors:
            also = "" if spelled == ident else f" (exported as {spelled})"
            log.warning("API reference: %s%s is not rendered on any page of docs/api", ident, also)
