"""The registry of test cases: every public layer and combinator, several shapes each.

Each module in this package defines ``CASES``, a list of :class:`Case`. The generic tests
in ``test_contract.py`` run over all of them, so registering a case is all it takes to
test a new layer; ``test_coverage.py`` fails when a public layer has none.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer configuration to test.

    Attributes:
      id: a readable test id.
      make: a zero-argument function returning the layer (built lazily, inside the test).
      input_shape: what ``init`` receives (a tuple of shapes for multi-input layers).
      covers: the public factory names this case exercises (for the coverage test).
      make_x: optional ``key -> x`` for inputs that are not standard-normal floats.
      train: mode for wide layers.
      randomize: ``(key, params, state) -> (params, state)`` for layers whose params or
        state must satisfy a constraint that :func:`funcnn.check.random_params` (the
        default point of the parity check) does not keep; ``None`` uses the default.
    """

    id: str
    make: Callable[[], Any]
    input_shape: Any
    covers: tuple[str, ...]
    make_x: Callable[[Any], Any] | None = None
    train: bool = True
    randomize: Callable[[Any, Any, Any], Any] | None = None


def all_cases() -> list[Case]:
    cases = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        cases += importlib.import_module(f"{__name__}.{info.name}").CASES
    ids = [c.id for c in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate case ids: {duplicates}"
    return cases
