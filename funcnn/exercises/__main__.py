"""``python -m funcnn.exercises``: list, start, grade and show the exercises."""

from __future__ import annotations

import argparse
import sys

from funcnn.exercises.catalog import EXERCISES
from funcnn.exercises.grader import main_grade, solution_source, start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m funcnn.exercises",
        description="Write a layer's backward by hand; funcnn.check grades it.",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("list", help="list the exercises")
    p_start = commands.add_parser("start", help="copy an exercise's skeleton to a file")
    p_start.add_argument("name", choices=list(EXERCISES))
    p_start.add_argument("path", nargs="?", help="where to write it (default ./NAME.py)")
    p_grade = commands.add_parser("grade", help="grade your solution")
    p_grade.add_argument("name", choices=list(EXERCISES))
    p_grade.add_argument("path", help="your file, with forward and backward")
    p_grade.add_argument("--seed", type=int, default=0, help="the random point (default 0)")
    p_solution = commands.add_parser("solution", help="print the reference solution")
    p_solution.add_argument("name", choices=list(EXERCISES))
    args = parser.parse_args(argv)

    if args.command in (None, "list"):
        width = max(len(name) for name in EXERCISES)
        for name, ex in EXERCISES.items():
            print(f"{name:<{width}}  {ex.title}  (docs/course/{ex.page})")
        print("\nstart one with:  python -m funcnn.exercises start NAME")
        return 0
    if args.command == "start":
        try:
            path = start(args.name, args.path)
        except FileExistsError as exc:
            print(f"{exc.filename} exists already; pass another path", file=sys.stderr)
            return 2
        print(f"wrote {path}: write its backward, then run")
        print(f"  python -m funcnn.exercises grade {args.name} {path}")
        return 0
    if args.command == "grade":
        return main_grade(args.name, args.path, seed=args.seed)
    print(solution_source(args.name), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
