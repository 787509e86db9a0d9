"""Fail when a chapter's execution took more CPU time than its scale's budget.

    python scripts/check_budgets.py _build/class --scale class              # a book build: 300 s a chapter
    python scripts/check_budgets.py _build/nbval_seconds.json --scale smoke # nbval's run: 60 s a chapter

The budgets are the README's (Scales): under 60 s a chapter at smoke and under 5 min at class
scale, on a 2-core CPU. The gate reads CPU time, not wall time: the seconds the notebook's
kernel (and any process it started) computed, which the rest of the machine's load does not
lengthen the way it lengthens the wall time. The book build records them
(``_ext/cpu_time.py``: ``<path-output>/_build/notebook_seconds.json``), and so does the test run
for the notebooks nbval executes (conftest.py, into the file named by ``DROPLAB_NOTEBOOK_SECONDS``).
Both run torch on one thread (OMP_NUM_THREADS=1), where CPU time is the single-core time a
reader waits; more threads add spinning to the CPU time, not work.

Prints one line a chapter (CPU and wall seconds) and exits 1 naming every chapter over budget
and every chapter of _toc.yml the run did not execute.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {"smoke": 60.0, "class": 300.0}
FILENAME = "notebook_seconds.json"      # in a book build's <path-output>/_build (_ext/cpu_time.py)


def toc_chapters() -> list[str]:
    """The chapter notebooks of _toc.yml (those with a jupytext .py source), in reading order, as
    paths relative to the root without suffix (sphinx-external-toc parses it, as Jupyter Book does)."""
    from sphinx_external_toc.parsing import parse_toc_yaml

    return [e for e in parse_toc_yaml(ROOT / "_toc.yml") if (ROOT / f"{e}.py").exists()]


def notebook_seconds(path: Path) -> dict[str, dict]:
    """The recorded seconds: ``path`` is the JSON file, or a book build's --path-output holding it."""
    file = path / "_build" / FILENAME if path.is_dir() else path
    if not file.is_file():
        sys.exit(f"check_budgets: no notebook times at {file}: build the book with --path-output {path} "
                 f"(the cpu_time extension of _config.yml writes them), or run pytest with "
                 f"DROPLAB_NOTEBOOK_SECONDS={path}")
    return json.loads(file.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("times", type=Path, help="a book build's --path-output, or a notebook-seconds JSON file")
    parser.add_argument("--scale", choices=sorted(BUDGETS), required=True, help="the scale the notebooks ran at")
    parser.add_argument("--budget", type=float, help="CPU seconds a chapter (default: the scale's budget)")
    args = parser.parse_args(argv)
    budget = args.budget or BUDGETS[args.scale]
    times = notebook_seconds(args.times.resolve())
    failures, total = [], 0.0
    print(f"  {'chapter':28} {'CPU':>7} {'wall':>7}")
    for chapter in toc_chapters():
        name = Path(chapter).name
        seen = times.get(chapter)
        if seen is None:
            failures.append(f"{name}: no execution recorded")
            print(f"  {name:28} {'–':>7} {'–':>7}  not executed")
            continue
        cpu, wall = float(seen["cpu_seconds"]), float(seen.get("wall_seconds", "nan"))
        total += cpu
        over = cpu > budget
        print(f"  {name:28} {cpu:6.0f}s {wall:6.0f}s{'  OVER BUDGET' if over else ''}")
        if over:
            failures.append(f"{name} took {cpu:.0f} s of CPU, over its {args.scale} budget of {budget:.0f} s")
    print(f"  {'all chapters':28} {total:6.0f}s          (budget {budget:.0f} s of CPU a chapter, {args.scale} scale)")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
