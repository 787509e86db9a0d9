"""Tests of the book itself: notebook pairs, table of contents, dependencies, build and rendering."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
SOURCES = sorted(p for p in CHAPTERS.glob("*.py") if "# %%" in p.read_text())
BUILD = ROOT / "_build" / "smoke"


def cells(path: Path) -> list[tuple[str, str]]:
    notebook = jupytext.read(path)
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def test_there_are_chapters():
    """The book's sources (the jupytext chapters) are exactly the notebook entries of _toc.yml."""
    notebooks = {entry for entry in toc_files() if (ROOT / f"{entry}.py").exists()}
    sources = {str(source.relative_to(ROOT).with_suffix("")) for source in SOURCES}
    assert len(SOURCES) >= 1
    assert sources - notebooks == set(), "chapter sources missing from _toc.yml"
    assert notebooks - sources == set(), "_toc.yml entries with a .py that is no jupytext chapter"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_chapter_pair_is_in_sync(source):
    twin = source.with_suffix(".ipynb")
    assert twin.exists(), f"{source.name} has no .ipynb twin: run `jupytext --to ipynb {source}`"
    assert cells(source) == cells(twin), f"{twin.name} differs from {source.name}: run `jupytext --sync {source}`"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_ipynb_twin_is_committed_without_outputs(source):
    notebook = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    stored = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not stored, f"{source.with_suffix('.ipynb').name} stores outputs in cells {stored}"


def toc_files() -> list[str]:
    """The documents of _toc.yml in reading order, as Jupyter Book reads them (sphinx-external-toc)."""
    from sphinx_external_toc.parsing import parse_toc_yaml

    return list(parse_toc_yaml(ROOT / "_toc.yml"))


def test_every_toc_entry_exists():
    for entry in toc_files():
        matches = [p for p in (ROOT / f"{entry}{ext}" for ext in (".py", ".md", ".ipynb")) if p.exists()]
        assert matches, f"_toc.yml lists {entry}, but no {entry}.py/.md exists"


def test_every_chapter_notebook_is_in_the_toc():
    listed = set(toc_files())
    for source in SOURCES:
        entry = str(source.relative_to(ROOT).with_suffix(""))
        assert entry in listed, f"{source.name} is not listed in _toc.yml"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def can_cut_the_network() -> bool:
    """Root on Linux with util-linux and iproute2: the build can run in a namespace without network."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "--net", "true"], check=False, capture_output=True).returncode == 0


def build_book() -> Path:
    """Build the book at smoke scale into _build/smoke (notebook execution is cached).

    Where it can, the build runs with the network cut off (only loopback, which
    the Jupyter kernels need), so a build that reaches for a CDN or a download fails.
    """
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # kernels draw inline figures
    env["DROPLAB_SCALE"] = "smoke"
    jupyter_book = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or "jupyter-book"
    cmd = [jupyter_book, "build", str(ROOT), "--path-output", str(BUILD), "-W", "--keep-going"]
    if can_cut_the_network():
        cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    result = subprocess.run(cmd, cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"the book build failed or warned:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return BUILD / "_build" / "html"


@pytest.fixture(scope="module")
def html() -> Path:
    """The built book's HTML: the build named by DROPLAB_BOOK_HTML (.ci/run: the class-scale build's,
    so CI executes each chapter once per scale), else a smoke-scale build made here."""
    given = os.environ.get("DROPLAB_BOOK_HTML")
    if given:
        path = Path(given) if Path(given).is_absolute() else ROOT / given
        assert (path / "index.html").exists(), f"DROPLAB_BOOK_HTML={given} holds no built book: build it as .ci/run"
        return path
    return build_book()


@pytest.mark.book
@pytest.mark.slow
def test_book_builds_without_warnings(html):
    assert (html / "index.html").exists()
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax must be served locally, not from a CDN"
    pages = list((html / "chapters").glob("*.html"))
    assert len(pages) >= len(SOURCES)
    for page in pages:
        assert "cdn.jsdelivr.net/npm/mathjax" not in page.read_text(), f"{page.name} loads MathJax from a CDN"


@pytest.mark.book
@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_chapter_renders_in_a_browser(html, source, tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    page = html / "chapters" / f"{source.stem}.html"
    assert page.exists(), f"{page} was not built"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
             "--window-size=1280,2000"]
    shot = tmp_path / "page.png"
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], check=False, capture_output=True, text=True,
                         timeout=120)
    subprocess.run([browser, *flags, f"--screenshot={shot}", page.as_uri()], check=False, capture_output=True,
                   timeout=120)
    text = dom.stdout
    assert "<h1" in text and "</h1>" in text, "the page has no title"
    if draws_figures(source):
        assert re.search(r'<img[^>]+src="[^"]*(_images|data:image)', text), "the page shows no figure"
    if 'class="math' in page.read_text():      # the page holds math for MathJax to typeset
        assert "<mjx-container" in text, "MathJax did not typeset the math"
    body = re.sub(r"<script.*?</script>", "", text, flags=re.DOTALL)
    body = re.sub(r"<[^>]+>", "", body)
    assert "\\(" not in body and "\\[" not in body and "$$" not in body, "raw LaTeX left in the rendered page"
    source_text = source.read_text()
    if "{exercise}" in source_text:
        assert 'class="exercise' in text, "the exercises did not render"
        assert "solution" in text and "dropdown" in text, "the solutions are not folded away"
    if "{cite" in source_text:
        assert re.search(r'href="bibliography.html#[^"]+"', text), "the citations do not link to the bibliography"
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.std() > 0.05, "the screenshot is blank"


def draws_figures(source: Path) -> bool:
    """Whether a chapter's source draws a figure (the instructor's page and the appendix do not)."""
    return bool(re.search(r"plt\.show\(\)|plots\.(forest|figure|position_diagram)", source.read_text()))


@pytest.mark.book
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known bug: the chapters' figures are PNGs with a transparent background "
                   "(the inline backend's default), so the theme's dark mode shows them dark; the fix is an opaque "
                   "figure background in droplab.plots. Strict: once fixed, this test passes and the mark must go.")
def test_figures_stay_legible_in_dark_mode(html, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--window-size=1280,2000"]
    figures_stay_legible_in_dark_mode(browser, flags, html / "chapters" / f"{DARK_MODE_CHAPTER}.html", tmp_path)


DARK_MODE_CHAPTER = "03_residual_placement"     # one chapter with many figures, seen in dark mode
# Put before the theme's own script in <head>: pydata-sphinx-theme reads the reader's choice from
# localStorage ("mode", "theme") into <html data-mode data-theme>. Once the page has loaded, the
# first figure of a cell's output, once loaded, is scrolled into view and its box on screen written into the page.
DARK_MODE = """<script>
try { localStorage.setItem("mode", "dark"); localStorage.setItem("theme", "dark"); } catch (e) {}
document.documentElement.dataset.mode = "dark";
document.documentElement.dataset.theme = "dark";
document.addEventListener("DOMContentLoaded", () => {
  const tick = () => {       // poll: the page's "load" may wait on resources an offline build never gets
    const img = document.querySelector(".cell_output img");
    if (!(img && img.complete && img.naturalWidth)) { setTimeout(tick, 100); return; }
    img.scrollIntoView({block: "center"});
    const r = img.getBoundingClientRect();
    const box = document.createElement("pre");
    box.id = "droplab-figure-box";
    box.textContent = JSON.stringify({x: r.x, y: r.y, width: r.width, height: r.height,
                                      theme: document.documentElement.dataset.theme});
    document.body.appendChild(box);
  };
  setTimeout(tick, 1000);   // after the page's own scripts have settled (an element added earlier is lost)
});
</script>"""


def luminance(rgb):
    """Relative luminance (0 black, 1 white) of RGB values in [0, 1] (Rec. 709 weights)."""
    return 0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]


def figures_stay_legible_in_dark_mode(browser: str, flags: list[str], page: Path, tmp_path: Path) -> None:
    """In the theme's dark mode the page turns dark and a figure (a matplotlib PNG, opaque white)
    stays a light panel with its drawing on it, clearly apart from the page around it."""
    import html as html_text

    import matplotlib.image as mpimg

    dark_page = page.with_name(f"_dark_{page.name}")   # beside the page, so its relative links still resolve
    dark_page.write_text(re.sub(r"<head[^>]*>", lambda m: m.group(0) + DARK_MODE, page.read_text(), count=1))
    shot = tmp_path / "dark.png"
    dark_flags = [*flags, "--force-device-scale-factor=1"]
    try:
        dom = subprocess.run([browser, *dark_flags, "--dump-dom", dark_page.as_uri()], check=False,
                             capture_output=True, text=True, timeout=120).stdout
        subprocess.run([browser, *dark_flags, f"--screenshot={shot}", dark_page.as_uri()], check=False,
                       capture_output=True, timeout=120)
    finally:
        dark_page.unlink()
    found = re.search(r'<pre id="droplab-figure-box">(.*?)</pre>', dom, flags=re.DOTALL)
    assert found and found.group(1), f"{page.name} in dark mode: no figure in a cell's output"
    box = json.loads(html_text.unescape(found.group(1)))
    assert box["theme"] == "dark", f"the page did not switch to the dark theme: {box}"
    pixels = mpimg.imread(shot)[..., :3]
    top, left = int(box["y"]) + 4, int(box["x"]) + 4
    bottom, right = int(box["y"] + box["height"]) - 4, int(box["x"] + box["width"]) - 4
    assert box["width"] > 100 and box["height"] > 100, f"the figure is too small to read: {box}"
    assert 0 <= top < bottom <= pixels.shape[0] and 0 <= left < right <= pixels.shape[1], \
        f"the figure's box {box} is not on the {pixels.shape[1]}x{pixels.shape[0]} screenshot"
    figure = luminance(pixels[top:bottom, left:right])
    outside = np.ones(pixels.shape[:2], dtype=bool)
    outside[max(0, top - 12):bottom + 12, max(0, left - 12):right + 12] = False
    background = float(np.median(luminance(pixels)[outside]))
    assert background < 0.3, f"the page is not dark in dark mode (median luminance {background:.2f})"
    assert figure.mean() > 0.55, f"the figure turned dark in dark mode (mean luminance {figure.mean():.2f})"
    assert figure.mean() - background > 0.35, "the figure does not stand apart from the dark page"
    assert figure.std() > 0.05 and figure.min() < 0.35, "the figure's drawing (lines, text) is not visible"


@pytest.mark.book
@pytest.mark.slow
def test_bibliography_and_launch_buttons_are_in_the_book(html):
    bibliography = (html / "chapters" / "bibliography.html").read_text()
    lowered = bibliography.lower()  # the bibliography style sets titles in sentence case
    assert "how to use dropout correctly" in lowered and "variance shift" in lowered
    chapter = (html / "chapters" / f"{SOURCES[-1].stem}.html").read_text()
    assert "colab.research.google.com/github/" in chapter and f"{SOURCES[-1].stem}.ipynb" in chapter
    assert "mybinder.org" in chapter


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_first_code_cell_installs_droplab_only_when_missing(source):
    """A notebook opened without the book's environment (Binder, a clone, Colab) installs droplab in
    its first code cell, from the checkout around it or the repository named by DROPLAB_REPOSITORY."""
    first = next(src for kind, src in cells(source) if kind == "code")
    assert 'find_spec("droplab") is None' in first and "pip" in first, f"{source.name}: first code cell"
    assert "import droplab" not in first and "from droplab" not in first
    assert "DROPLAB_REPOSITORY" in first and '"lib" / "droplab"' in first, f"{source.name}: first code cell"


def test_every_chapter_installs_droplab_with_the_same_cell():
    """The install cell runs before droplab exists (Colab opens a notebook alone), so it cannot
    import a shared copy of itself and stands in every chapter; it is one text, so a fix made in
    one chapter must be made in all."""
    firsts = {source.name: next(src for kind, src in cells(source) if kind == "code") for source in SOURCES}
    assert len(set(firsts.values())) == 1, f"the install cells differ: {sorted(firsts)}"


def _run_install_cell(cwd: Path, monkeypatch, repository: str | None) -> list[list[str]]:
    """Run the chapters' install cell in ``cwd`` as if droplab were not installed; return the
    commands it would run (subprocess.run is replaced by a recorder)."""
    import importlib.util

    cell = next(src for kind, src in cells(SOURCES[0]) if kind == "code")
    calls: list[list[str]] = []
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "droplab" else real_find_spec(name, *a))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.chdir(cwd)
    if repository is None:
        monkeypatch.delenv("DROPLAB_REPOSITORY", raising=False)
    else:
        monkeypatch.setenv("DROPLAB_REPOSITORY", repository)
    exec(compile(cell, "install cell", "exec"), {})  # noqa: S102 -- the chapters' install cell, run as they run it
    return calls


def test_the_install_cell_installs_the_checkout_around_the_notebook(monkeypatch):
    calls = _run_install_cell(CHAPTERS, monkeypatch, repository="https://example.org/other/book")
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "-e", str(ROOT)]]


def test_the_install_cell_alone_installs_from_the_named_repository(tmp_path, monkeypatch):
    calls = _run_install_cell(tmp_path, monkeypatch, repository="https://example.org/owner/book")
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "droplab @ git+https://example.org/owner/book"]]


def test_the_install_cell_alone_and_unnamed_says_what_to_set(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="DROPLAB_REPOSITORY=https://github.com/OWNER/NAME"):
        _run_install_cell(tmp_path, monkeypatch, repository=None)


def test_the_repository_url_is_written_once():
    """_config.yml names the repository; no chapter, page or README carries a copy of it."""
    from droplab import repro

    url = repro.repository_url(ROOT / "_config.yml")
    assert url == yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert url.startswith("https://") and repro.repository_url() == url
    def written(path: Path) -> str:      # the README's launch links are made from _config.yml (test_install.py)
        text = path.read_text()
        return re.sub(r"<!-- launch-links -->.*<!-- /launch-links -->", "", text, flags=re.DOTALL)

    copies = [p.relative_to(ROOT) for p in [*CHAPTERS.glob("*.*"), ROOT / "README.md", ROOT / "environment.yml"]
              if p.suffix in {".py", ".ipynb", ".md", ".yml"} and url.split("://", 1)[1] in written(p)]
    assert not copies, f"the repository url is copied into {copies}: read it from _config.yml instead"


def numbered_statements() -> dict[str, list[str]]:
    """The labels of the book's sphinx-proof boxes, per counter, in reading order (_toc.yml's)."""
    counters = {"definition": "definition", "proposition": "proposition", "guideline": "criterion",
                "criterion": "criterion"}
    found: dict[str, list[str]] = {}
    for entry in toc_files():
        path = next(p for p in (ROOT / f"{entry}.py", ROOT / f"{entry}.md") if p.exists())
        for kind, label in re.findall(r"```\{prf:(\w+)\}[^\n]*\n(?:# )?:label: (\S+)", path.read_text()):
            if kind != "proof":
                found.setdefault(counters.get(kind, kind), []).append(label)
    return found


def test_kim_et_al_statements_are_numbered_as_in_the_paper():
    """sphinx-proof numbers each kind through the whole book, so the boxes must come in the
    paper's order for "Proposition 3" in the book to be Kim et al.'s Proposition 3."""
    assert numbered_statements() == {
        "definition": ["def-dropout", "def-delta"],
        "proposition": [f"prop-{i}" for i in range(1, 6)],
        "criterion": ["guideline-1", "guideline-2"],
    }


def test_every_prf_reference_has_its_box():
    labels = {label for labels in numbered_statements().values() for label in labels}
    pages = [ROOT / f"{entry}{ext}" for entry in toc_files() for ext in (".py", ".md")]
    refs = {m for p in pages if p.exists() for m in re.findall(r"\{prf:ref\}`(?:[^`<]*<)?([\w-]+)>?`", p.read_text())}
    assert refs and refs <= labels, f"references without a box: {sorted(refs - labels)}"


@pytest.mark.book
@pytest.mark.slow
def test_propositions_are_numbered_and_the_guide_links_them(html):
    head = (html / "chapters" / "04_head_placement.html").read_text()
    assert '<span class="caption-number">Proposition 5 </span>' in head
    assert '<span class="caption-number">Guideline 2 </span>' in head
    guide = (html / "chapters" / "guide.html").read_text()
    assert 'href="04_head_placement.html#prop-5">Proposition 5</a>' in guide
    assert 'href="03_residual_placement.html#guideline-1">Guideline 1</a>' in guide


def book_pdf_name() -> str:
    """The PDF's file name: _config.yml's latex_documents targetname, .tex -> .pdf."""
    latex = yaml.safe_load((ROOT / "_config.yml").read_text())["latex"]
    return Path(latex["latex_documents"]["targetname"]).with_suffix(".pdf").name


@pytest.fixture(scope="module")
def pdf(request) -> Path:
    """The book's PDF: the one named by DROPLAB_BOOK_PDF (.ci/run: the class-scale build's), else
    built here at smoke scale from the smoke build's executed notebooks (Jupyter Book's pdflatex
    builder, xelatex), where TeX Live and poppler are installed; skipped where they are not (not in CI)."""
    given = os.environ.get("DROPLAB_BOOK_PDF")
    if given:
        path = Path(given) if Path(given).is_absolute() else ROOT / given
        assert path.exists(), f"DROPLAB_BOOK_PDF={given} does not exist: build it as .ci/run does"
        return path
    missing = [tool for tool in ("xelatex", "latexmk", "pdftotext", "pdfimages") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} missing; .ci/run installs TeX Live and poppler-utils")
        pytest.skip(f"no PDF build here: {missing} not installed (Debian: texlive-xetex, latexmk, poppler-utils)")
    request.getfixturevalue("html")  # the HTML build first: it executes (or finds cached) every notebook
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["DROPLAB_SCALE"] = "smoke"
    jupyter_book = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or "jupyter-book"
    cmd = [jupyter_book, "build", str(ROOT), "--path-output", str(BUILD), "--builder", "pdflatex", "-W", "--keep-going"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"the PDF build failed or warned:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return BUILD / "_build" / "latex" / book_pdf_name()


def chapter_title(entry: str) -> str:
    """A _toc.yml entry's title: the first level-1 heading of its notebook or page."""
    py, md = ROOT / f"{entry}.py", ROOT / f"{entry}.md"
    text = "\n".join(src for kind, src in cells(py) if kind == "markdown") if py.exists() else md.read_text()
    title = next(line[2:] for line in text.splitlines() if line.startswith("# "))
    return re.sub(r"[`*_]", "", title).strip()


def pdf_pages(pdf: Path) -> list[str]:
    """The PDF's text, one string a page, whitespace folded, typographic quotes made plain."""
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return [" ".join(page.replace("’", "'").split()) for page in text.split("\f")]


@pytest.mark.book
@pytest.mark.slow
def test_pdf_has_every_chapter_typeset_math_figures_and_a_bibliography(pdf):
    pages = pdf_pages(pdf)
    text = " ".join(pages)
    folded = text.casefold()
    titles = {entry: chapter_title(entry) for entry in toc_files()}
    missing = [title for title in titles.values() if title.casefold() not in folded]
    assert not missing, f"chapter titles missing from the PDF: {missing}"

    raw = [m for m in ("\\(", "\\)", "\\[", "\\]", "$$") if m in text]
    raw += re.findall(r"\$\\\w+|\\(?:frac|mathrm|mathbf|mathbb|operatorname|text|sqrt|Delta|sigma|cdot|left|right)\b",
                      text)
    assert not raw, f"raw LaTeX math left in the PDF: {sorted(set(raw))[:10]}"
    assert "𝑝" in text and "𝑞" in text, "no typeset math (unicode-math's italic p and q) in the PDF"

    assert "Kim" in text and "how to use dropout correctly" in folded and "variance shift" in folded, \
        "the bibliography is missing from the PDF"

    # the page where each chapter starts ("CHAPTER ONE DROPOUT MECHANICS, ..."); the root page is the front matter
    starts = {entry: next((i for i, page in enumerate(pages)
                           if page.casefold().startswith("chapter") and title.casefold() in page[:300].casefold()), None)
              for entry, title in titles.items() if entry != toc_files()[0]}
    assert None not in starts.values(), f"no chapter opening page for {[e for e, i in starts.items() if i is None]}"
    starts[toc_files()[0]] = 0
    listing = subprocess.run(["pdfimages", "-list", str(pdf)], capture_output=True, text=True, check=True).stdout
    image_pages = [int(line.split()[0]) - 1 for line in listing.splitlines()[2:] if line.split()[2] == "image"]
    bounds = sorted(starts.values()) + [len(pages)]
    for source in filter(draws_figures, SOURCES):
        entry = str(source.relative_to(ROOT).with_suffix(""))
        first = starts[entry]
        last = bounds[bounds.index(first) + 1]
        assert any(first <= page < last for page in image_pages), \
            f"{titles[entry]} (PDF pages {first + 1}-{last}) has no figure"

    log = pdf.with_suffix(".log")
    if log.exists():
        latex_log = log.read_text(errors="replace")
        assert "There were undefined references" not in latex_log, f"broken cross-references in the PDF: see {log}"
        assert "Missing character" not in latex_log, f"characters the PDF's fonts lack: see {log}"


def test_pdf_tables_are_latex_tables():
    """A notebook's HTML table (a pandas Styler) becomes a real table in the PDF (_ext/latex_tables.py)."""
    sys.path.insert(0, str(ROOT / "_ext"))
    try:
        from latex_tables import table_node
    finally:
        sys.path.remove(str(ROOT / "_ext"))
    import pandas as pd

    styler = pd.DataFrame({"config": ["P0", "P6"], "accuracy (%)": ["78.22 ± 1.76", "80.54 ± 1.04"]}) \
        .style.hide(axis="index").set_caption("Table 1 &amp; more")
    table = table_node(styler.to_html())
    assert table is not None
    assert table[0].astext() == "Table 1 & more"
    assert [[entry.astext() for entry in row] for row in table.findall(lambda n: n.tagname == "row")] == \
        [["config", "accuracy (%)"], ["P0", "78.22 ± 1.76"], ["P6", "80.54 ± 1.04"]]
    assert table_node("<p>no table</p>") is None


def test_check_budgets_names_the_chapter_over_budget(tmp_path):
    """scripts/check_budgets.py (run by .ci/run after the book build and after nbval) reads each
    chapter's CPU seconds and fails naming the chapter over budget and any chapter not executed."""
    chapters = [str(source.relative_to(ROOT).with_suffix("")) for source in SOURCES]
    times = {chapter: {"cpu_seconds": 10.0 + i, "wall_seconds": 500.0} for i, chapter in enumerate(chapters)}
    (tmp_path / "_build").mkdir()
    (tmp_path / "_build" / "notebook_seconds.json").write_text(json.dumps(times))   # a book build's
    script = [sys.executable, str(ROOT / "scripts" / "check_budgets.py")]
    passed = subprocess.run([*script, str(tmp_path), "--scale", "smoke"], check=False, capture_output=True, text=True)
    assert passed.returncode == 0, passed.stdout + passed.stderr          # CPU time counts, not the 500 s of wall
    assert SOURCES[0].stem in passed.stdout
    slow = SOURCES[-1].stem
    failed = subprocess.run([*script, str(tmp_path), "--scale", "smoke", "--budget", str(9.5 + len(SOURCES) - 1)],
                            check=False, capture_output=True, text=True)
    assert failed.returncode == 1, failed.stdout
    assert f"FAILED: {slow} took {10 + len(SOURCES) - 1} s of CPU" in failed.stderr
    assert failed.stderr.count("FAILED") == 1
    del times[chapters[0]]
    (tmp_path / "nbval.json").write_text(json.dumps(times))                             # a test run's
    missing = subprocess.run([*script, str(tmp_path / "nbval.json"), "--scale", "smoke"], check=False,
                             capture_output=True, text=True)
    assert missing.returncode == 1 and f"FAILED: {SOURCES[0].stem}: no execution recorded" in missing.stderr


@pytest.mark.slow
def test_the_book_build_records_each_notebooks_cpu_time(tmp_path):
    """_ext/cpu_time.py: a notebook that computes 2 s of CPU in a book build of its own is recorded
    with at least those 2 s, under its path, whatever the wall clock says."""
    book = tmp_path / "book"
    book.mkdir()
    burn = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 2:\n    pass"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Burn"),
                                                   nbformat.v4.new_code_cell(burn)],
                                            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                     "language": "python"}}), book / "burn.ipynb")
    (book / "_toc.yml").write_text("format: jb-book\nroot: burn\n")
    (book / "_config.yml").write_text(yaml.safe_dump({
        "title": "Burn", "execute": {"execute_notebooks": "cache"},
        "sphinx": {"local_extensions": {"cpu_time": str(ROOT / "_ext")}}}))
    jupyter_book = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or "jupyter-book"
    result = subprocess.run([jupyter_book, "build", str(book), "--path-output", str(tmp_path / "out")],
                            check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    times = json.loads((tmp_path / "out" / "_build" / "notebook_seconds.json").read_text())
    assert set(times) == {"burn"} and 2.0 <= times["burn"]["cpu_seconds"] < times["burn"]["wall_seconds"] + 5


# --------------------------------------------------------------------------- the book as a course

NUMBERED = [source for source in SOURCES if re.match(r"\d\d_", source.name)]
INSTRUCTOR = CHAPTERS / "instructor.py"


def markdown(source: Path) -> str:
    return "\n\n".join(src for kind, src in cells(source) if kind == "markdown")


def test_the_instructor_page_is_in_the_toc_with_objectives_prerequisites_and_minutes():
    assert "chapters/instructor" in toc_files(), "the instructor's page is not listed in _toc.yml"
    text = markdown(INSTRUCTOR)
    code = "\n".join(src for kind, src in cells(INSTRUCTOR) if kind == "code")
    for heading in ("## Learning objectives", "## Prerequisites", "## How long each chapter takes",
                    "## A two-week plan", "## What runs where", "## Handing out the exercises"):
        assert heading in text, f"instructor.py has no section {heading!r}"
    objectives = text.split("## Learning objectives", 1)[1].split("\n## ", 1)[0]
    missing = [s.stem for s in NUMBERED if f"{{doc}}`{s.stem}`" not in objectives]
    assert not missing, f"the learning objectives name no objective for {missing}"
    for key in ("he2016identity", "lin2014network", "wasserman2004all", "dosovitskiy2021image"):
        assert key in text, f"the prerequisites do not cite {key}"
    assert "repro.chapter_timings" in code and "Measured on" in code, "the running minutes are not read from README"
    assert "WORDS_PER_MINUTE" in code, "the reading minutes are not computed from the chapters' words"
    assert "scripts/student_edition.py" in text and "scripts/gpu_check.sh" in text


def test_chapter_0_teaches_notation_positions_and_verdicts_before_its_first_result():
    """Chapter 0 shows no result from the records before the reader has the notation, the positions
    and the way a verdict is read, and it reads its verdicts with droplab.compare."""
    chapter = CHAPTERS / "00_introduction.py"
    cs = cells(chapter)
    first_result = next(i for i, (kind, src) in enumerate(cs) if kind == "code" and "records." in src)

    def where(kind: str, needle: str) -> int:
        return next(i for i, (k, src) in enumerate(cs) if k == kind and needle in src)

    assert where("markdown", "(notation)=") < first_result, "the p/q notation comes after the first result"
    assert where("code", 'position_diagram("preresnet"') < first_result, "the P0-P7 diagram comes after the result"
    assert where("code", 'position_diagram("head"') < first_result, "the H1-H7 diagram comes after the result"
    verdicts = where("markdown", "(reading-verdicts)=")
    assert verdicts < first_result, "'How to read a verdict' comes after the first result"
    worked = "\n".join(src for kind, src in cs[verdicts:first_result] if kind == "code")
    for call in ("compare.of_values", "compare.correct", "plots.forest", "compare.detectable_effect"):
        assert call in worked, f"the worked example of 'How to read a verdict' does not call {call}"
    assert "metrics." not in "\n".join(src for kind, src in cs if kind == "code"), "chapter 0 uses droplab.metrics"


EXERCISE = re.compile(r"```\{exercise\}[^\n]*\n((?::[^\n]*\n)*)\s*(\S[^\n]*)")


@pytest.mark.parametrize("source", NUMBERED[1:], ids=lambda p: p.stem)
def test_each_chapter_has_five_exercises_with_solutions_two_of_them_predict_first_or_design(source):
    text = markdown(source)
    exercises = [(re.search(r":label: (\S+)", options), prompt) for options, prompt in EXERCISE.findall(text)]
    labels = [label.group(1) for label, _ in exercises if label]
    assert len(exercises) >= 5, f"{source.stem} has {len(exercises)} exercises; a chapter has at least five"
    assert len(labels) == len(exercises), f"{source.stem}: an exercise without a :label:"
    solved = re.findall(r"```\{solution-start\} (\S+)", text)
    unsolved = [label for label in labels if label not in solved]
    assert not unsolved, f"{source.stem}: exercises without a solution: {unsolved}"
    assert len(re.findall(r"```\{solution-end\}", text)) == len(solved), f"{source.stem}: a solution is not closed"
    active = [prompt for _, prompt in exercises if prompt.startswith(("Predict first:", "Design:"))]
    assert len(active) >= 2, (f"{source.stem} has {len(active)} exercises whose prompt starts with "
                              f"'Predict first:' or 'Design:'; a chapter has at least two")


# a code cell draws if it calls matplotlib's pyplot or a droplab.plots function that makes a figure
DRAWS = re.compile(r"\bplt\.\w+\(|\bplots\.(?:figure|forest|position_diagram)\(")
# chapters whose figure cells still lack alt text; empty it as they get it
WITHOUT_ALT_TEXT: set[str] = set()


def figures_without_alt_text(source: Path) -> list[int]:
    """The figure cells of a chapter (numbered among its cells) without mystnb image alt text."""
    notebook = jupytext.read(source)
    return [i for i, c in enumerate(notebook.cells)
            if c.cell_type == "code" and DRAWS.search(c.source)
            and not str(c.metadata.get("mystnb", {}).get("image", {}).get("alt", "")).strip()]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_every_figure_has_alt_text(source):
    """A reader who cannot see a figure reads its alt text: every cell that draws carries
    `mystnb={"image": {"alt": "..."}}` saying what the figure shows and finds."""
    if source.stem in WITHOUT_ALT_TEXT:
        pytest.skip(f"{source.stem} is listed in WITHOUT_ALT_TEXT")
    missing = figures_without_alt_text(source)
    assert not missing, f"{source.stem}: the figure cells {missing} have no mystnb image alt text"


def test_without_alt_text_lists_only_chapters_that_still_lack_it():
    done = [stem for stem in sorted(WITHOUT_ALT_TEXT) if not figures_without_alt_text(CHAPTERS / f"{stem}.py")]
    assert not done, f"{done} have alt text on every figure now: remove them from WITHOUT_ALT_TEXT"


def test_every_citation_is_in_the_bibliography():
    keys = set(re.findall(r"^@\w+\{([^,\s]+),", (ROOT / "references.bib").read_text(), flags=re.MULTILINE))
    pages = [ROOT / f"{entry}{ext}" for entry in toc_files() for ext in (".py", ".md")]
    cited = {key.strip() for p in pages if p.exists()
             for keys_ in re.findall(r"\{cite:[tp]s?\}`([^`]+)`", p.read_text()) for key in keys_.split(",")}
    assert cited - keys == set(), f"cited but not in references.bib: {sorted(cited - keys)}"
