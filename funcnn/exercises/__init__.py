"""Exercises: write a layer's backward by hand, and have ``funcnn.check`` grade it.

Each exercise gives a layer's forward and asks for its backward. The grader checks the
backward at random params (so a scale that starts at 1 cannot hide a mistake), prints
which gradient leaf is wrong and by how much, and names the most likely mistake::

    python -m funcnn.exercises list                       # the exercises
    python -m funcnn.exercises start layernorm            # writes ./layernorm.py
    python -m funcnn.exercises grade layernorm layernorm.py
    python -m funcnn.exercises solution layernorm         # the reference solution

The same from Python:

>>> from funcnn import exercises
>>> list(exercises.EXERCISES)[:4]
['sigmoid', 'dense', 'softmax_cross_entropy', 'layernorm']
>>> print(exercises.skeleton("dense").splitlines()[0][3:])
Exercise `dense`: the backward pass of an affine layer y = x W + b.

``grade(name, path_or_source)`` returns a :class:`Grade`: ``print`` it for the report,
``grade.ok`` for the verdict, ``grade.mistakes`` for the diagnosed mistakes.
"""

from funcnn.exercises.catalog import EXERCISES, Exercise, Mistake
from funcnn.exercises.grader import (
    Grade,
    LeafResult,
    grade,
    reference,
    skeleton,
    solution_source,
    start,
)

__all__ = [
    "EXERCISES",
    "Exercise",
    "Grade",
    "LeafResult",
    "Mistake",
    "grade",
    "reference",
    "skeleton",
    "solution_source",
    "start",
]
