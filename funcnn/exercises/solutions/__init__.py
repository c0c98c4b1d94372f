"""Reference solutions of the exercises, one self-contained file per exercise.

Each file is also the source of its skeleton: ``python -m funcnn.exercises start NAME``
copies it with the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` replaced by
``raise NotImplementedError``.
"""
