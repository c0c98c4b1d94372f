"""Serve MathJax from this site, so formulas render with no network.

MathJax comes from the ``django-static-mathjax`` package on PyPI (in the ``docs`` extra),
a plain copy of MathJax's ``es5`` build with no Python dependencies. This hook adds its
``tex-chtml-full.js`` (every TeX extension in one file, nothing loaded later) and the CHTML
web fonts to the site under ``assets/mathjax/``; ``docs/javascripts/mathjax.js`` configures
it for the ``pymdownx.arithmatex`` (generic) markup. ``.ci/run`` checks the rendered pages
in headless Chromium (``.ci/check_math.py``).
"""

from __future__ import annotations

import importlib.util
import pathlib

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

SITE_DIR = "assets/mathjax"


def es5_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("mathjax")
    es5 = None
    if spec is not None and spec.submodule_search_locations:
        es5 = pathlib.Path(next(iter(spec.submodule_search_locations))) / "static/mathjax/es5"
    if es5 is None or not (es5 / "tex-chtml-full.js").is_file():
        raise PluginError(
            "MathJax is not installed (the docs need it to render formulas offline): "
            'run `.venv/bin/pip install -e ".[docs]"`'
        )
    return es5


def on_files(files, config, **kwargs):
    es5 = es5_dir()
    sources = [es5 / "tex-chtml-full.js", *sorted((es5 / "output/chtml/fonts").rglob("*.woff"))]
    for src in sources:
        uri = f"{SITE_DIR}/{src.relative_to(es5).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(src)))
    return files
