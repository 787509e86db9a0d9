"""Fail when a chapter's execution in a book build took longer than its scale's budget.

    python scripts/check_budgets.py _build/class --scale class    # 300 s a chapter
    python scripts/check_budgets.py _build/smoke --scale smoke    # 60 s a chapter

Reads the execution time that myst-nb stored in the build's jupyter-cache
(``<path-output>/_build/.jupyter_cache``: each record's ``data["execution_seconds"]``),
taking for each chapter the newest record of its source, and prints one line a chapter.
Exits 1 naming every chapter over budget, or any chapter of _toc.yml with no record
(the build did not execute it). The budgets are the README's (Scales): under 60 s a
chapter at smoke and under 5 min at class scale, on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jupyter_cache import get_cache

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {"smoke": 60.0, "class": 300.0}


def toc_notebooks() -> list[Path]:
    """The chapter sources (jupytext .py) of _toc.yml, in reading order (sphinx-external-toc parses it,
    as Jupyter Book does)."""
    from sphinx_external_toc.parsing import parse_toc_yaml

    return [ROOT / f"{e}.py" for e in parse_toc_yaml(ROOT / "_toc.yml") if (ROOT / f"{e}.py").exists()]


def execution_seconds(path_output: Path) -> dict[Path, float]:
    """Seconds of the newest cached execution of every notebook in a build's jupyter-cache."""
    cache_dir = path_output / "_build" / ".jupyter_cache"
    if not cache_dir.is_dir():
        sys.exit(f"no jupyter-cache at {cache_dir}: build the book with --path-output {path_output} first")
    newest: dict[Path, tuple] = {}
    for record in get_cache(str(cache_dir)).list_cache_records():
        seconds = (record.data or {}).get("execution_seconds")
        path = Path(record.uri).resolve()
        if seconds is not None and (path not in newest or record.created > newest[path][0]):
            newest[path] = (record.created, float(seconds))
    return {path: seconds for path, (_, seconds) in newest.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path_output", type=Path, help="the --path-output of the book build")
    parser.add_argument("--scale", choices=sorted(BUDGETS), required=True, help="the scale the build ran at")
    parser.add_argument("--budget", type=float, help="seconds a chapter (default: the scale's budget)")
    args = parser.parse_args(argv)
    budget = args.budget or BUDGETS[args.scale]
    times = execution_seconds(args.path_output.resolve())
    failures = []
    for source in toc_notebooks():
        seconds = times.get(source.resolve())
        if seconds is None:
            failures.append(f"{source.stem}: no execution record in the cache")
            print(f"  {source.stem:28} –       not executed")
            continue
        over = seconds > budget
        print(f"  {source.stem:28} {seconds:6.0f} s{'  OVER BUDGET' if over else ''}")
        if over:
            failures.append(f"{source.stem} took {seconds:.0f} s, over its {args.scale} budget of {budget:.0f} s")
    total = sum(times.get(s.resolve(), 0.0) for s in toc_notebooks())
    print(f"  {'all chapters':28} {total:6.0f} s (budget {budget:.0f} s a chapter, {args.scale} scale)")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
