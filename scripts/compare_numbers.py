"""Did a change keep the chapters' numbers? Compare two executions of the chapter notebooks.

    python scripts/compare_numbers.py BEFORE_DIR AFTER_DIR

Each folder holds executed copies of the chapters (same file names), made on the same machine
with the same scale and one torch thread, e.g. for a commit REV against the working tree::

    git worktree add /tmp/before REV
    for tree in /tmp/before .; do (cd $tree/chapters && for nb in 0*.ipynb; do
        PYTHONPATH=$PWD/../lib OMP_NUM_THREADS=1 DROPLAB_SCALE=class jupyter nbconvert --to notebook \\
          --execute --allow-errors --output-dir /tmp/out/$(basename $(realpath $tree)) $nb; done); done

For every output line of BEFORE that holds a measured value (a number with a decimal point), the
script asks whether AFTER's outputs of the same chapter print the same values in the same order,
whatever the layout: a printed table that became a pandas table, ``1.01`` printed as ``1.010``,
or a label such as ``p = 0.1`` moved into a column header. Lines without a decimal number (seed
counts, sizes) and the lines that hold times are not compared. It prints each line whose values
were not found again and exits 1 if there is one.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from pathlib import Path

VALUE = re.compile(r"[-−+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-−+]?\d+(?:\.\d*)?(?:e[-+]?\d+)?")
LABEL = re.compile(r"=\s*[-+]?\d+(?:\.\d+)?")  # "p = 0.1": a label that a table may move into its header
TIMING = re.compile(r"^scale: |seconds|\d s\b|\bmin\b|minutes|wall")


def _text(markup: str) -> str:
    """An HTML fragment's text: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup)).strip()


def output_lines(notebook: Path) -> list[str]:
    """The text a notebook printed: stdout, plain results, and HTML tables one row a line."""
    out: list[str] = []
    for cell in json.loads(notebook.read_text())["cells"]:
        for o in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if o["output_type"] == "stream" and o["name"] == "stdout":
                out += "".join(o["text"]).splitlines()
            elif o["output_type"] in ("execute_result", "display_data"):
                data = o.get("data", {})
                if "text/html" in data:
                    page = "".join(data["text/html"])
                    for row in re.findall(r"<tr.*?</tr>", page, flags=re.DOTALL):
                        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.DOTALL)
                        out.append(" | ".join(_text(c) for c in cells))
                    out += [_text(c) for c in re.findall(r"<caption>(.*?)</caption>", page, flags=re.DOTALL)]
                elif "text/plain" in data and "image/png" not in data:
                    out += "".join(data["text/plain"]).splitlines()
    return out


def values(line: str) -> list[str]:
    """The measured values of a line, as canonical floats (``1.01`` and ``1.010`` are one value)."""
    line = re.sub(r"^\s*\d+\.\s", "", line)  # "4. early hurts": a list number, not a value
    tokens = (t.replace("−", "-").replace(",", "").lstrip("+") for t in VALUE.findall(line))
    return [str(float(t)) for t in tokens if "." in t]


def lost_lines(before: Path, after: Path) -> tuple[int, list[str]]:
    """How many of BEFORE's lines hold values, and those whose values AFTER does not print again."""
    old = [line for line in output_lines(before) if values(line) and not TIMING.search(line)]
    stream = " " + " ".join(v for line in output_lines(after) for v in values(line)) + " "
    found = lambda vs: f" {' '.join(vs)} " in stream
    lost = [line for line in old if not (found(values(line)) or found(values(LABEL.sub("=", line))))]
    return len(old), lost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    notebooks = sorted(args.before.glob("*.ipynb"))
    if not notebooks:
        parser.error(f"no executed notebooks in {args.before}")
    total = lost_total = 0
    for nb in notebooks:
        if not (args.after / nb.name).exists():
            parser.error(f"{nb.name} is in {args.before} but not in {args.after}")
        n, lost = lost_lines(nb, args.after / nb.name)
        total, lost_total = total + n, lost_total + len(lost)
        print(f"{nb.stem}: {n - len(lost)} of {n} lines with values printed again")
        for line in lost:
            print(f"    not found: {line[:200]}")
    print(f"all: {total - lost_total} of {total}")
    return 1 if lost_total else 0


if __name__ == "__main__":
    sys.exit(main())
