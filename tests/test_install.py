"""How the book installs wherever a class runs it: ranges in the package, pins in one file.

pyproject.toml states what droplab needs (lower bounds; an upper bound only beside the break it
avoids); constraints.txt pins the exact versions that CI, the conda route and Binder install.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"

# The newest releases the package index served on 2026-12-06: a class that installs droplab today
# without constraints.txt gets these, so droplab must admit them.
NEWEST = {"torch": "2.15.0", "torchvision": "0.29.2"}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(extras: tuple[str, ...] = ("book", "test")) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in project()["dependencies"]]
    reqs += [Requirement(r) for extra in extras for r in project()["optional-dependencies"][extra]]
    return {canonicalize_name(r.name): r for r in reqs}


def pins() -> dict[str, str]:
    """constraints.txt as {name: version}; every line that is not a comment must be `name==version`."""
    found: dict[str, str] = {}
    for n, line in enumerate(CONSTRAINTS.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"constraints.txt:{n}: {line!r} is not an exact pin name==version"
        name = canonicalize_name(match.group(1))
        assert name not in found, f"constraints.txt pins {name} twice"
        found[name] = match.group(2)
    return found


def test_the_package_admits_the_newest_torch_and_torchvision():
    reqs = requirements(extras=())
    for name, version in NEWEST.items():
        assert reqs[name].specifier.contains(Version(version)), \
            f"pyproject.toml's {reqs[name]} excludes {name} {version}, the newest release: drop the cap"


def test_every_upper_bound_in_pyproject_says_what_it_avoids():
    """A cap keeps classes off new releases, so the line (or the one above it) must name the break."""
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    section = None
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line
        quoted = re.match(r'\s*"([^"]+)",', line)
        if section not in ("[project]", "[project.optional-dependencies]") or not quoted:
            continue
        req = Requirement(quoted.group(1))
        if any(spec.operator in ("<", "<=", "==", "~=", "===", "!=") for spec in req.specifier):
            explained = "#" in line or lines[i - 1].strip().startswith("#")
            assert explained, f"pyproject.toml:{i + 1}: {req} has an upper bound and no comment saying why"


def test_constraints_txt_pins_torch_and_every_declared_package_within_its_range():
    pinned = pins()
    assert "torch" in pinned and "torchvision" in pinned
    for name, req in requirements().items():
        assert name in pinned, f"constraints.txt does not pin {name}: run scripts/lock_constraints.py"
        assert req.specifier.contains(Version(pinned[name]), prereleases=True), \
            f"constraints.txt pins {name}=={pinned[name]}, outside pyproject.toml's {req}"


def test_the_lock_script_pins_what_is_installed_and_refuses_what_pyproject_excludes():
    """scripts/lock_constraints.py walks the requirements from pyproject.toml down through what is
    installed; an installed version outside a range stops it, naming the package."""
    spec = importlib.util.spec_from_file_location("lock_constraints", ROOT / "scripts" / "lock_constraints.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    versions, problems = lock.closure([Requirement("packaging>=20")])
    assert versions["packaging"] == importlib.metadata.version("packaging") and not problems
    _, problems = lock.closure([Requirement("packaging<1")])
    assert problems and "packaging" in problems[0] and "wants packaging<1" in problems[0]


def test_torch_is_pinned_in_one_place():
    """No file but constraints.txt names an exact torch or torchvision to install."""
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split("\0")
    pinned_elsewhere = []
    for name in tracked:
        path = ROOT / name
        if not name or path == CONSTRAINTS or not path.is_file() or path.suffix in {".json", ".png", ".pdf", ".gz"}:
            continue
        text = path.read_text(errors="replace")
        if re.search(r"\btorch(vision)?\s*(==|<=|~=)\s*\d", text) and path != Path(__file__):
            pinned_elsewhere.append(name)
    assert not pinned_elsewhere, f"torch pinned outside constraints.txt, in {pinned_elsewhere}"


def test_ci_installs_the_project_at_the_pinned_versions():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'pip install .*-c constraints\.txt -e "\.\[book,test\]"', ci), \
        ".ci/run must install with `pip install -c constraints.txt -e \".[book,test]\"`"
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -c constraints.txt -e ".[book,test]"' in readme, "the README's install command"


def test_environment_yml_installs_the_project_with_the_same_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {re.split(r"[=<> ]", d)[0] for d in conda} <= {"python", "pip"}, \
        "environment.yml's conda section installs packages; let pip install them with constraints.txt"
    assert [line.replace(" ", "").replace('"', "") for line in pip] == ["-cconstraints.txt", "-e.[book,test]"], \
        "environment.yml's pip section must be `-c constraints.txt` and `-e \".[book,test]\"`, nothing else"


def test_binder_installs_the_pinned_environment_then_the_project():
    """repo2docker reads binder/ when it exists (and ignores the root environment.yml): the
    requirements file installs the pinned dependencies, postBuild installs droplab from the checkout."""
    binder = ROOT / "binder"
    assert {p.name for p in binder.iterdir()} == {"requirements.txt", "runtime.txt", "postBuild"}, \
        "binder/ holds requirements.txt, runtime.txt and postBuild only (an environment.yml would win over them)"
    lines = [line.split("#", 1)[0].strip() for line in (binder / "requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line]
    assert "-c ../constraints.txt" in lines, "binder/requirements.txt must install at constraints.txt's versions"
    names = {canonicalize_name(Requirement(line).name) for line in lines if not line.startswith("-")}
    assert "droplab" not in names and not any(line.startswith(("-e", ".", "-r")) for line in lines), \
        "the project is installed by binder/postBuild, not by the requirements file"
    missing = set(requirements(extras=())) - names
    assert not missing, f"binder/requirements.txt lacks droplab's dependencies {sorted(missing)}"
    assert {"jupyterlab", "jupyterlab-myst"} <= names
    for name in names:
        assert not Requirement(name).specifier, f"binder/requirements.txt pins {name}: pins live in constraints.txt"

    post_build = binder / "postBuild"
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable (chmod +x; git keeps the mode)"
    script = post_build.read_text()
    assert script.startswith("#!/bin/bash") and "set -euo pipefail" in script
    assert re.search(r"^python -m pip install .*-c constraints\.txt -e \.$", script, re.MULTILINE), \
        "binder/postBuild must install the project from the checkout"

    python = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"][0]
    assert (binder / "runtime.txt").read_text().strip() == "python-" + python.split("=")[1], \
        "Binder and the conda route use different Pythons"


def test_binder_requirements_agree_with_the_pins_of_this_environment():
    """With the index off, pip resolves binder/requirements.txt (its -c path included) against what is
    installed: an environment made from constraints.txt (CI's) already has all of it."""
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-r",
                             str(ROOT / "binder" / "requirements.txt")], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "Would install" not in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


def test_jupyterlab_loads_jupyterlab_myst():
    """The extension that renders the chapters' MyST markup is installed and compatible with the
    JupyterLab beside it (an incompatible one is listed, marked X, and never loaded)."""
    result = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True,
                            text=True, check=False)
    listing = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    line = next((line for line in listing.splitlines() if "jupyterlab-myst" in line and "enabled" in line), None)
    assert line is not None, f"jupyterlab-myst is not installed:\n{listing}"
    assert " OK" in line and "not compatible" not in listing, f"JupyterLab does not load jupyterlab-myst:\n{listing}"


def test_the_readme_opens_every_chapter_in_colab_and_binder_at_the_configured_repository():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "launch_links.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    readme = (ROOT / "README.md").read_text()
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    owner_name = url.removeprefix("https://github.com/")
    for notebook in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        assert f"(https://colab.research.google.com/github/{owner_name}/blob/main/chapters/{notebook.name})" in readme
        assert f"/v2/gh/{owner_name}/main?urlpath=lab/tree/chapters/{notebook.name})" in readme
    assert f"%env DROPLAB_REPOSITORY={url}`" in readme


# ---------------------------------------------------------------------------------------------
# The installed package, outside any checkout: a wheel (pip install droplab) and Colab's route
# ---------------------------------------------------------------------------------------------

def copy_of_the_tree(dest: Path) -> Path:
    """The files a commit of this working tree would hold (tracked and new, not ignored), copied to
    ``dest``: what a clone of the repository contains, without the build outputs and records a
    working tree may have lying around."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def outside_the_checkout_env(**extra: str) -> dict[str, str]:
    """The environment of a reader's process: no results folder chosen, smoke scale, our variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("DROPLAB_RESULTS", "PYTHONPATH", "MPLBACKEND")}
    env.update(DROPLAB_SCALE="smoke", **extra)
    return env


def venv_over_this_one(path: Path) -> Path:
    """A fresh virtual environment that sees this environment's packages (torch among them) but not
    its droplab: ``--system-site-packages`` shows the base interpreter's site-packages, and a .pth
    file adds this environment's, as a path only, so the .pth files in it (droplab's editable
    install) do not run. Like Colab: torch and a recent pip are there (this environment's), droplab
    is not. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    child_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                capture_output=True, text=True, check=True).stdout.strip()
    if sys.prefix != sys.base_prefix:                          # this interpreter is itself a venv
        (Path(child_site) / "over-the-test-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    found = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('droplab'))"],
                           capture_output=True, text=True, check=True, cwd=path, env=outside_the_checkout_env()).stdout
    found = found.strip()
    assert found == "None", f"the fresh environment already imports droplab: {found}"
    return python


def installed_distributions(python: Path) -> set[str]:
    """The distributions in the environment's own site-packages (not the ones it sees through)."""
    code = ("import importlib.metadata as m, sysconfig; own = sysconfig.get_path('purelib');"
            "print('\\n'.join(sorted(d.metadata['Name'].lower() for d in m.distributions(path=[own]))))")
    return set(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True,
                              env=outside_the_checkout_env()).stdout.split())


def execute_notebook(python: Path, notebook: Path, env: dict[str, str], timeout: int = 600) -> nbformat.NotebookNode:
    """Execute ``notebook`` in place with ``python``'s nbconvert, whose kernel is that same python;
    a last cell (in this copy only) prints where droplab was imported from."""
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys, droplab; print('droplab from', droplab.__file__)"))
    nbformat.write(nb, notebook)
    result = subprocess.run([str(python), "-m", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                             f"--ExecutePreprocessor.timeout={timeout}", str(notebook)],
                            cwd=notebook.parent, env=env, capture_output=True, text=True, check=False,
                            timeout=timeout + 120)
    assert result.returncode == 0, f"{notebook.name} failed:\n{result.stderr[-6000:]}"
    return nbformat.read(notebook, as_version=4)


def printed(nb: nbformat.NotebookNode) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory) -> Path:
    """droplab's wheel, built from a copy of the tree, installed (--no-deps) into a fresh environment;
    returns its python."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = copy_of_the_tree(tmp / "source")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("droplab-*.whl")
    python = venv_over_this_one(tmp / "venv")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   env=outside_the_checkout_env())
    return python


@pytest.mark.slow
def test_the_wheel_finds_its_committed_records(wheel_install, tmp_path):
    code = ("from droplab import records; recs = records.check_records('head', 'class', 5);"
            "print(len(recs), records.in_checkout(), records.COMMITTED)")
    out = subprocess.run([str(wheel_install), "-c", code], cwd=tmp_path, env=outside_the_checkout_env(),
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    count, in_checkout, folder = out.stdout.split()
    assert int(count) > 0 and in_checkout == "False"
    assert Path(folder).is_relative_to(wheel_install.parents[1]), f"records read from {folder}, not from the wheel"
    committed = sorted(p.relative_to(ROOT / "lib" / "droplab").as_posix()
                       for p in (ROOT / "lib" / "droplab" / "results").rglob("*.json") if "/smoke/" not in p.as_posix())
    shipped = sorted(p.relative_to(Path(folder).parent).as_posix() for p in Path(folder).rglob("*.json"))
    assert shipped == committed, "the wheel's records differ from the committed ones"


@pytest.mark.slow
def test_the_installed_package_is_never_written_into(wheel_install, tmp_path):
    code = "from droplab import records; records.results_root()"
    out = subprocess.run([str(wheel_install), "-c", code], cwd=tmp_path, env=outside_the_checkout_env(),
                         capture_output=True, text=True, check=False)
    assert out.returncode != 0 and "DROPLAB_RESULTS" in out.stderr, out.stderr[-2000:]


@pytest.mark.slow
def test_chapter_3_runs_from_the_wheel_outside_the_checkout(wheel_install, tmp_path):
    notebook = tmp_path / "03_residual_placement.ipynb"
    shutil.copy(ROOT / "chapters" / notebook.name, notebook)
    nb = execute_notebook(wheel_install, notebook,
                          outside_the_checkout_env(DROPLAB_RESULTS=str(tmp_path / "results")))
    assert f"droplab from {wheel_install.parents[1]}" in printed(nb), printed(nb)[-2000:]


@pytest.mark.slow
def test_colab_installs_droplab_from_the_repository_and_keeps_its_torch(tmp_path):
    """The install cell in a notebook opened alone (Colab): torch is preinstalled, droplab is not;
    DROPLAB_REPOSITORY names a git repository (here a local bare clone of this tree). The cell
    installs droplab and nothing else, and the chapter runs."""
    source = copy_of_the_tree(tmp_path / "source")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=source, check=True)
    subprocess.run([*git, "add", "-A"], cwd=source, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "the working tree"], cwd=source, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(tmp_path / "book.git")], check=True)

    python = venv_over_this_one(tmp_path / "colab")
    torch_where = [str(python), "-c", "import torch; print(torch.__version__, torch.__file__)"]
    torch_before = subprocess.run(torch_where, capture_output=True, text=True, check=True,
                                  env=outside_the_checkout_env()).stdout
    before = installed_distributions(python)

    opened = tmp_path / "opened"
    opened.mkdir()
    notebook = opened / "00_introduction.ipynb"
    shutil.copy(ROOT / "chapters" / notebook.name, notebook)
    nb = execute_notebook(python, notebook,
                          outside_the_checkout_env(DROPLAB_REPOSITORY=(tmp_path / "book.git").as_uri()))

    assert installed_distributions(python) - before == {"droplab"}, "the install cell installed more than droplab"
    torch_after = subprocess.run(torch_where, capture_output=True, text=True, check=True, env=outside_the_checkout_env())
    assert torch_after.stdout == torch_before, "the install cell replaced torch"
    assert f"droplab from {tmp_path / 'colab'}" in printed(nb), printed(nb)[-2000:]
