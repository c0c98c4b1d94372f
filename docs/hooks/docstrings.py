"""A griffe extension: funcnn's reStructuredText-flavoured docstrings as Markdown.

The docstrings are written to read well in ``help()`` and to run as doctests, so the API
pages translate three things before mkdocstrings renders them:

* doctest runs (``>>>`` lines and their output) become ``pycon`` code blocks;
* a paragraph ending in ``::`` followed by an indented block becomes a code block;
* Sphinx roles such as ``:func:`~funcnn.core.as_wide``` become links to the reference.
"""

from __future__ import annotations

import importlib
import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`(~?)([\w.]+)(?:\(\))?`")


def _exists(target: str) -> bool:
    """Whether ``target`` names a funcnn object (a link to anything else would dangle)."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


def _role(match: re.Match) -> str:
    short, target = match.group(1), match.group(2)
    title = target.rsplit(".", 1)[-1] if short else target
    if target.startswith("funcnn.") and _exists(target):
        return f"[`{title}`][{target}]"
    return f"`{title}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def markdown(text: str) -> str:
    """Translate one docstring (see the module docstring)."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(">>>"):
            pad = line[: _indent(line)]
            out.append(f"{pad}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(f"{pad}```")
            continue
        if stripped.endswith("::") and not stripped.startswith(">>>"):
            base = _indent(line)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > base:
                head = line.rstrip()[:-2].rstrip()
                if head.strip():
                    out.append(ROLE.sub(_role, head) + ":")
                block = []
                k = j
                while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) > base):
                    block.append(lines[k])
                    k += 1
                while block and not block[-1].strip():
                    block.pop()
                cut = min(_indent(b) for b in block if b.strip())
                pad = " " * base
                out += ["", f"{pad}```text", *[pad + b[cut:] for b in block], f"{pad}```", ""]
                i = k
                continue
        out.append(ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


class FuncnnDocstrings(griffe.Extension):
    """Apply :func:`markdown` to every docstring griffe loads."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
