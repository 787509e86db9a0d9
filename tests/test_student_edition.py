"""scripts/student_edition.py: every chapter with its exercises, without their solutions, otherwise
unchanged; an unbalanced solution is refused by chapter and label."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "student_edition.py"
INSTRUCTOR = ROOT / "chapters" / "instructor.ipynb"


def toc_notebooks() -> list[Path]:
    """The book's notebooks: the entries of _toc.yml that have an .ipynb twin, in reading order."""
    from sphinx_external_toc.parsing import parse_toc_yaml

    return [ROOT / f"{e}.ipynb" for e in parse_toc_yaml(ROOT / "_toc.yml") if (ROOT / f"{e}.ipynb").exists()]


CHAPTERS = [nb for nb in toc_notebooks() if nb != INSTRUCTOR]
EXERCISE = re.compile(r"\{exercise\}[^\n]*\n:label: (\S+)")
SOLUTION = re.compile(r"```\{solution-start\}.*?```\{solution-end\}\n```", re.DOTALL)


def text(nb: nbformat.NotebookNode) -> str:
    """A notebook's cells, one after another, as the reader sees them."""
    return "\n".join(cell.source for cell in nb.cells)


@pytest.fixture(scope="module")
def edition(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student")
    result = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return out


def test_there_is_one_student_notebook_per_chapter(edition):
    assert sorted(p.name for p in edition.glob("*.ipynb")) == sorted(p.name for p in CHAPTERS)
    assert any(p.name.startswith("06_") for p in CHAPTERS)


def test_the_instructors_page_stays_with_the_instructor(edition):
    assert INSTRUCTOR in toc_notebooks() and not (edition / INSTRUCTOR.name).exists()


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_each_chapter_keeps_its_exercises_and_loses_every_solution(edition, chapter):
    source = text(nbformat.read(chapter, as_version=4))
    student = text(nbformat.read(edition / chapter.name, as_version=4))
    assert EXERCISE.findall(student) == EXERCISE.findall(source), "an exercise was lost"
    assert "solution-start" not in student and "solution-end" not in student
    solutions = SOLUTION.findall(source)
    assert len(solutions) == source.count("{solution-start}")
    outside = SOLUTION.sub("", source)
    # every line of a solution that the rest of the chapter does not also say
    telling = {line.strip() for s in solutions for line in s.splitlines()
               if len(line.strip()) > 20 and line.strip() not in outside}
    left = sorted(line for line in telling if line in student)
    assert not left, f"solution text left in the student edition: {left[:3]}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_everything_but_the_solutions_is_unchanged(edition, chapter):
    source = nbformat.read(chapter, as_version=4)
    student = nbformat.read(edition / chapter.name, as_version=4)
    assert student.metadata == source.metadata
    outside = SOLUTION.sub("", text(source))
    kept = [cell for cell in source.cells if cell.source in outside]          # cells with no solution in them
    by_id = {cell.id: cell for cell in student.cells}
    assert [c.id for c in kept] == [c.id for c in student.cells if c.id in {k.id for k in kept}]  # same order
    for cell in kept:
        assert by_id.get(cell.id) == cell, f"cell {cell.id} changed"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_the_edition_is_a_valid_notebook_that_jupytext_reads(edition, chapter):
    path = edition / chapter.name
    nbformat.validate(nbformat.read(path, as_version=4))
    as_py = jupytext.writes(jupytext.read(path), fmt="py:percent")
    assert "{solution-start}" not in as_py
    for cell in nbformat.read(path, as_version=4).cells:
        assert cell.cell_type != "code" or not cell.outputs, "the student edition carries outputs"


def _names(code: str, stored: bool) -> set[str]:
    """Names a cell binds (``stored``) or reads. Cells that are not Python (magics) bind nothing."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store if stored else ast.Load):
            names.add(node.id)
        elif stored and isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif stored and isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_no_kept_cell_reads_a_name_only_a_solution_defines(edition, chapter):
    """A student runs the edition top to bottom: nothing after a removed solution may need it."""
    source = nbformat.read(chapter, as_version=4)
    kept_ids = {cell.id for cell in nbformat.read(edition / chapter.name, as_version=4).cells}
    code = [(cell.id in kept_ids, cell.source) for cell in source.cells if cell.cell_type == "code"]
    only_solutions: set[str] = set()
    for kept, src in code:
        if kept:
            needed = _names(src, stored=False) & only_solutions
            assert not needed, f"{chapter.stem}: a kept cell reads {sorted(needed)}, defined only in a solution"
            only_solutions -= _names(src, stored=True)
        else:
            only_solutions |= _names(src, stored=True)


def script():
    """scripts/student_edition.py as a module (its main() is the command line without a new process)."""
    if "student_edition" not in sys.modules:
        spec = importlib.util.spec_from_file_location("student_edition", SCRIPT)
        sys.modules["student_edition"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["student_edition"])
    return sys.modules["student_edition"]


def _notebook(tmp_path: Path, *markdown: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(m) for m in markdown])
    path = tmp_path / "07_broken.ipynb"
    nbformat.write(nb, path)
    return path


START = "```{exercise}\n:label: ex-a\n\nDo it.\n```\n\n```{solution-start} ex-a\n:class: dropdown\n```\n"
END = "```{solution-end}\n```\n"


@pytest.mark.parametrize("cells, says", [
    ([START, "The answer."], "07_broken.ipynb, cell 1: {solution-start} ex-a has no {solution-end}"),
    (["Text.", END], "07_broken.ipynb, cell 2: a {solution-end} closes no {solution-start}"),
    ([START, START.replace("ex-a", "ex-b")], "{solution-start} ex-b opens inside the solution ex-a (cell 1)"),
])
def test_an_unbalanced_solution_is_refused_by_chapter_and_label(tmp_path, capsys, cells, says):
    broken = _notebook(tmp_path, *cells)
    assert script().main([str(tmp_path / "out"), str(broken)]) == 1       # the exit status
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing is written when a chapter is refused"


def test_a_solution_inside_one_cell_is_cut_out_of_it(tmp_path):
    cell = START + "\nThe answer is 42.\n\n" + END + "\n```{exercise}\n:label: ex-c\n\nNext.\n```"
    path = _notebook(tmp_path, cell)
    assert script().main([str(tmp_path / "out"), str(path)]) == 0
    (only,) = nbformat.read(tmp_path / "out" / path.name, as_version=4).cells
    assert only.source == "```{exercise}\n:label: ex-a\n\nDo it.\n```\n\n```{exercise}\n:label: ex-c\n\nNext.\n```"
