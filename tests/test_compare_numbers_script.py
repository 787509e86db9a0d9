"""scripts/compare_numbers.py: the values a chapter printed before a change, found again after it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_numbers", ROOT / "scripts" / "compare_numbers.py")
compare_numbers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_numbers)


def _notebook(folder: Path, *outputs) -> None:
    folder.mkdir(exist_ok=True)
    cell = nbformat.v4.new_code_cell("...")
    cell.outputs = list(outputs)
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), folder / "01_chapter.ipynb")


def _stdout(text: str):
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def _html(text: str):
    return nbformat.v4.new_output("execute_result", data={"text/html": text, "text/plain": "<Styler>"}, execution_count=1)


BEFORE = ("   p  train acc         test acc   (2 seeds)\n"
          " 0.0     88.25 ± 0.64    80.20 ± 5.08\n"
          "element  lost: p=0.1: 0.032  p=0.2: 0.071\n"
          "ratio by depth: [1.006 1.01  70.  ]\n"
          "run took 12.3 s\n")
TABLE = ("<table><caption>Accuracy by p</caption><tr><th>p</th><th>train</th><th>test</th></tr>"
         "<tr><td>0.0</td><td>88.25 ± 0.64</td><td>80.20 ± 5.08</td></tr>"
         "<tr><td>element</td><td>0.032</td><td>0.071</td></tr></table>")


def test_values_printed_again_in_another_layout_are_found(tmp_path, capsys):
    _notebook(tmp_path / "before", _stdout(BEFORE))
    _notebook(tmp_path / "after", _html(TABLE), _stdout("ratio by depth: [1.006 1.010 70.0]\nrun took 9.9 s\n"))
    assert compare_numbers.main([str(tmp_path / "before"), str(tmp_path / "after")]) == 0
    assert "all: 3 of 3" in capsys.readouterr().out  # the timing line is not compared


def test_a_changed_value_is_reported_and_fails(tmp_path, capsys):
    _notebook(tmp_path / "before", _stdout(BEFORE))
    _notebook(tmp_path / "after", _html(TABLE.replace("0.071", "0.072")), _stdout("ratio by depth: [1.006 1.010 70.0]\n"))
    assert compare_numbers.main([str(tmp_path / "before"), str(tmp_path / "after")]) == 1
    out = capsys.readouterr().out
    assert "not found: element  lost: p=0.1: 0.032  p=0.2: 0.071" in out and "all: 2 of 3" in out
