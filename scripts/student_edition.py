"""Write the student edition: every chapter notebook with its exercises and without their solutions.

    python scripts/student_edition.py OUT_DIR                 # every chapter notebook of _toc.yml
    python scripts/student_edition.py OUT_DIR chapters/X.ipynb # only these notebooks

A chapter writes each solution between sphinx-exercise's gated fences, in markdown cells,

    ```{solution-start} label
    :class: dropdown
    ```
    ... markdown and code cells of the solution ...
    ```{solution-end}
    ```

and the exercise itself before them, often in the same cell as the start fence. The edition
removes everything from the start fence to the end fence, both included: the cells in between
whole, and of the cells holding a fence only the text from or up to it, so the exercise before a
start fence and the next exercise after an end fence stay. A cell left empty is dropped; every
other cell, and the notebook's metadata, is written unchanged. One .ipynb per chapter, without
outputs, as in the repository.

A start without its end, an end without a start, or a start inside an open solution stops the
script (exit status 1) with a message naming the chapter, the cell and the label. The repository's
own notebooks are the answer key.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
# an opening fence line of a gated directive: ``` or ::: (three or more), the directive, its argument
FENCE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<kind>solution-start|solution-end)\}[ \t]*(?P<label>\S*)[^\n]*$",
                   re.MULTILINE)


class UnbalancedSolution(ValueError):
    """A chapter's solution fences do not pair up; the message names the chapter, cell and label."""


@dataclass
class Fence:
    kind: str        # solution-start or solution-end
    label: str       # the start fence's label ("" for an end fence)
    start: int       # offset of the opening line in the cell's text
    end: int         # offset just after the directive's closing fence line


def fences(text: str, where: str) -> list[Fence]:
    """The gated solution directives in one markdown cell, in order."""
    found = []
    for match in FENCE.finditer(text):
        closing = re.compile(rf"^{re.escape(match['fence'])}[ \t]*$", re.MULTILINE).search(text, match.end())
        if closing is None:
            raise UnbalancedSolution(f"{where}: the {{{match['kind']}}} directive {match['label']} is never closed "
                                     f"with {match['fence']}")
        end = closing.end() + (1 if text[closing.end():closing.end() + 1] == "\n" else 0)
        found.append(Fence(match["kind"], match["label"], match.start(), end))
    return found


def tidy(text: str) -> str:
    """A cell's text after a cut: no blank lines left at either end."""
    return re.sub(r"^\s*\n", "", text).rstrip()


def strip_solutions(nb: nbformat.NotebookNode, chapter: str) -> tuple[nbformat.NotebookNode, list[str]]:
    """The notebook without its solutions, and the labels of the solutions removed."""
    cells, removed = [], []
    open_label, opened_in = None, -1          # the solution being removed, and its start cell
    for index, cell in enumerate(nb.cells):
        where = f"{chapter}, cell {index + 1}"
        if cell.cell_type != "markdown":
            if open_label is None:
                cells.append(cell)
            continue
        text, kept, cursor = cell.source, [], 0
        found = fences(text, where)
        if not found:
            if open_label is None:
                cells.append(cell)                             # no fence in it: unchanged
            continue
        for fence in found:
            if fence.kind == "solution-start":
                if open_label is not None:
                    raise UnbalancedSolution(f"{where}: {{solution-start}} {fence.label} opens inside the solution "
                                             f"{open_label} (cell {opened_in + 1}), which has no {{solution-end}} "
                                             f"before it")
                kept.append(text[cursor:fence.start])
                open_label, opened_in = fence.label or "(no label)", index
            else:
                if open_label is None:
                    after = f" after the solution {removed[-1]}" if removed else ""
                    raise UnbalancedSolution(f"{where}: a {{solution-end}}{after} closes no {{solution-start}}")
                removed.append(open_label)
                open_label = None
            cursor = fence.end
        if open_label is None:
            kept.append(text[cursor:])
        pieces = [tidy(piece) for piece in kept if tidy(piece)]
        if pieces:
            changed = nbformat.from_dict(dict(cell))
            changed.source = "\n\n".join(pieces)
            cells.append(changed)
    if open_label is not None:
        raise UnbalancedSolution(f"{chapter}, cell {opened_in + 1}: {{solution-start}} {open_label} has no "
                                 f"{{solution-end}} after it")
    edition = nbformat.from_dict(dict(nb))
    edition.cells = cells
    return edition, removed


FOR_INSTRUCTORS = {"instructor"}   # pages of the toc the student edition leaves out


def chapter_notebooks() -> list[Path]:
    """The chapter notebooks of _toc.yml (the .ipynb twins), in reading order, without the instructor's
    page (it is for the instructor, not the class)."""
    from sphinx_external_toc.parsing import parse_toc_yaml

    return [ROOT / f"{e}.ipynb" for e in parse_toc_yaml(ROOT / "_toc.yml")
            if (ROOT / f"{e}.ipynb").exists() and Path(e).name not in FOR_INSTRUCTORS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="where the student notebooks go (created if missing)")
    parser.add_argument("notebooks", type=Path, nargs="*", help="notebooks to convert (default: every chapter)")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or chapter_notebooks()
    editions = {}
    for path in notebooks:
        name = path.resolve().relative_to(ROOT).as_posix() if path.resolve().is_relative_to(ROOT) else str(path)
        try:
            editions[path.name] = strip_solutions(nbformat.read(path, as_version=4), name)
        except UnbalancedSolution as err:
            print(f"student_edition: {err}", file=sys.stderr)
            return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for filename, (edition, removed) in editions.items():
        nbformat.validate(edition)
        nbformat.write(edition, args.out_dir / filename)
        print(f"{args.out_dir / filename}: {len(removed)} solution(s) removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
