"""Cases for ``remat``: a pure block, and a wide block whose recomputation must redraw the
same dropout mask and the same batch statistics."""

import funcnn as fn

from . import Case

CASES = [
    Case(
        "remat_mlp",
        lambda: fn.remat(fn.sequential(fn.dense(5), fn.tanh(), fn.dense(3))),
        (3, 4),
        ("remat",),
    ),
    Case(
        "remat_wide_dropout_batchnorm",
        lambda: fn.remat(fn.sequential(fn.dense(6), fn.dropout(0.5), fn.batchnorm(), fn.gelu())),
        (4, 3),
        ("remat",),
    ),
]
