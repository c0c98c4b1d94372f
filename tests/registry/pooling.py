"""Cases for the pooling layers (NHWC), covering tiling, overlapping, strided and padded windows."""

from funcnn.layers.pooling import avg_pool2d, global_avg_pool, max_pool2d

from . import Case

# (case id, factory, input shape)
_CASES = [
    ("max_pool2d_2", lambda: max_pool2d(2), (2, 4, 6, 3)),
    ("max_pool2d_2_nondividing", lambda: max_pool2d(2), (2, 5, 7, 2)),
    ("max_pool2d_3s2_overlap", lambda: max_pool2d(3, stride=2), (2, 7, 8, 3)),
    ("max_pool2d_rect_stride", lambda: max_pool2d((2, 3), stride=(1, 2)), (1, 5, 8, 2)),
    ("max_pool2d_stride_gt_window", lambda: max_pool2d(2, stride=3), (2, 8, 7, 1)),
    ("max_pool2d_pad1", lambda: max_pool2d(3, stride=2, padding=1), (2, 6, 5, 2)),
    ("max_pool2d_pad_pairs", lambda: max_pool2d(2, padding=((1, 0), (0, 1))), (2, 5, 5, 2)),
    ("max_pool2d_same", lambda: max_pool2d(3, stride=2, padding="SAME"), (1, 7, 6, 3)),
    ("avg_pool2d_2", lambda: avg_pool2d(2), (2, 4, 6, 3)),
    ("avg_pool2d_3s2_nondividing", lambda: avg_pool2d(3, stride=2), (2, 8, 7, 2)),
    ("avg_pool2d_pad1", lambda: avg_pool2d(3, stride=2, padding=1), (2, 6, 5, 2)),
    (
        "avg_pool2d_pad1_exclude_pad",
        lambda: avg_pool2d(3, stride=2, padding=1, count_include_pad=False),
        (2, 6, 5, 2),
    ),
    (
        "avg_pool2d_tiled_pad_exclude_pad",
        lambda: avg_pool2d(2, padding=(1, 0), count_include_pad=False),
        (2, 5, 4, 3),
    ),
    ("avg_pool2d_rect_stride1", lambda: avg_pool2d((3, 2), stride=1), (1, 5, 4, 2)),
    ("avg_pool2d_same", lambda: avg_pool2d(2, stride=2, padding="SAME"), (2, 5, 3, 2)),
    ("global_avg_pool_nwc", global_avg_pool, (3, 5, 4)),
    ("global_avg_pool_nhwc", global_avg_pool, (2, 3, 4, 5)),
    ("global_avg_pool_ndhwc", global_avg_pool, (2, 2, 3, 2, 3)),
]

_PUBLIC = ("max_pool2d", "avg_pool2d", "global_avg_pool")

CASES = [
    Case(case_id, make, shape, tuple(n for n in _PUBLIC if case_id.startswith(n)))
    for case_id, make, shape in _CASES
]
