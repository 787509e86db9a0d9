"""Tests of the book itself: notebook pairs, table of contents, dependencies, build and rendering."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml
from packaging.requirements import Requirement

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
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    found = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                found.append(entry["file"])
            walk(entry.get("sections"))
            for part in entry.get("parts", []):
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return found


def test_every_toc_entry_exists():
    for entry in toc_files():
        matches = [p for p in (ROOT / f"{entry}{ext}" for ext in (".py", ".md", ".ipynb")) if p.exists()]
        assert matches, f"_toc.yml lists {entry}, but no {entry}.py/.md exists"


def test_every_chapter_notebook_is_in_the_toc():
    listed = set(toc_files())
    for source in SOURCES:
        entry = str(source.relative_to(ROOT).with_suffix(""))
        assert entry in listed, f"{source.name} is not listed in _toc.yml"


def pyproject_requirements() -> dict[str, Requirement]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("book", "test"):
        reqs += project["optional-dependencies"][extra]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def test_environment_yml_installs_what_pyproject_declares():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {re.split(r"[=<> ]", d)[0] for d in conda} <= {"python", "pip"}, \
        "conda section installs packages that pyproject.toml does not declare; add them to pyproject or drop them"
    assert any(line.replace(" ", "") in ('-e.[book,test]', '-e".[book,test]"') for line in pip), \
        "environment.yml must install the project with its book and test extras"
    declared = pyproject_requirements()
    for line in pip:
        if line.startswith("-"):
            continue
        req = Requirement(line)
        assert req.name.lower() in declared, f"environment.yml pins {req.name}, which pyproject.toml does not declare"
        for spec in req.specifier:
            if spec.operator == "==":
                assert declared[req.name.lower()].specifier.contains(spec.version), \
                    f"environment.yml pins {line}, outside pyproject.toml's {declared[req.name.lower()]}"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def can_cut_the_network() -> bool:
    """Root on Linux with util-linux and iproute2: the build can run in a namespace without network."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


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
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"the book build failed or warned:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return BUILD / "_build" / "html"


@pytest.fixture(scope="module")
def html() -> Path:
    return build_book()


@pytest.mark.book
def test_book_builds_without_warnings(html):
    assert (html / "index.html").exists()
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax must be served locally, not from a CDN"
    pages = list((html / "chapters").glob("*.html"))
    assert len(pages) >= len(SOURCES)
    for page in pages:
        assert "cdn.jsdelivr.net/npm/mathjax" not in page.read_text(), f"{page.name} loads MathJax from a CDN"


@pytest.mark.book
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
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    subprocess.run([browser, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    text = dom.stdout
    assert "<h1" in text and "</h1>" in text, "the page has no title"
    assert re.search(r'<img[^>]+src="[^"]*(_images|data:image)', text), "the page shows no figure"
    assert "<mjx-container" in text, "MathJax did not typeset the math"
    body = re.sub(r"<script.*?</script>", "", text, flags=re.S)
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


@pytest.mark.book
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


def test_the_repository_url_is_written_once():
    """_config.yml names the repository; no chapter, page or README carries a copy of it."""
    from droplab import repro

    url = repro.repository_url(ROOT / "_config.yml")
    assert url == yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert url.startswith("https://") and repro.repository_url() == url
    copies = [p.relative_to(ROOT) for p in [*CHAPTERS.glob("*.*"), ROOT / "README.md", ROOT / "environment.yml"]
              if p.suffix in {".py", ".ipynb", ".md", ".yml"} and url.split("://", 1)[1] in p.read_text()]
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
def test_propositions_are_numbered_and_the_guide_links_them(html):
    head = (html / "chapters" / "04_head_placement.html").read_text()
    assert '<span class="caption-number">Proposition 5 </span>' in head
    assert '<span class="caption-number">Guideline 2 </span>' in head
    guide = (html / "chapters" / "guide.html").read_text()
    assert 'href="04_head_placement.html#prop-5">Proposition 5</a>' in guide
    assert 'href="03_residual_placement.html#guideline-1">Guideline 1</a>' in guide
