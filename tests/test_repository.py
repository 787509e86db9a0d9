"""The repository itself: it speaks of itself alone, ignores what it must never commit, and says how to cite it."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_the_project_speaks_of_itself_alone():
    """No file mentions a tracker's issue numbers or the commands of a tool the reader does not have."""
    pattern = r"[Ii]ssues? [0-9]+|run\(command=|carry=\["
    found = git("grep", "-nE", "--untracked", pattern, "--", ".", ":!tests/test_repository.py")
    assert found.returncode == 1, f"references a reader cannot follow:\n{found.stdout}"


def test_data_downloads_smoke_records_and_the_gpu_data_are_ignored():
    ignored = ["data/FashionMNIST/raw/train-images-idx3-ubyte.gz", "lib/droplab/results/residual/smoke/x.json",
               ".gpu_data/fashion-mnist/train-images-idx3-ubyte.gz", "_build/student/00_introduction.ipynb"]
    kept = ["lib/droplab/results/residual/class/fashion-mnist/none-seed0.json", ".whl/x.whl", ".gl/x"]
    checked = git("check-ignore", "--no-index", *ignored, *kept).stdout.split()
    assert sorted(checked) == sorted(ignored), f"git ignores {checked}"


def test_the_citation_file_is_valid_cff_1_2_0_for_this_version():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):                    # the keys CFF 1.2.0 requires
        assert cff.get(key), f"CITATION.cff lacks {key}"
    assert all(isinstance(a, dict) and (a.get("name") or a.get("family-names")) for a in cff["authors"])
    assert cff["type"] in ("software", "dataset")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert str(cff["version"]) == version, "CITATION.cff and pyproject.toml give different versions"
    licenses = cff["license"] if isinstance(cff["license"], list) else [cff["license"]]
    assert set(licenses) == {"MIT", "CC-BY-4.0"}, "the README's licences: code MIT, text and figures CC BY 4.0"
    assert all(re.fullmatch(r"[a-z-]+", key) for key in cff), "CFF keys are lower-case words joined by hyphens"


def _offline_function() -> str:
    """The offline() function of .ci/run, as bash text."""
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"^offline\(\) \{\n.*?^\}\n", ci, re.MULTILINE | re.DOTALL)
    assert match, ".ci/run defines no offline() function"
    return match.group(0)


def _offline(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run `offline echo built` where unshare cannot make a network namespace (not root, say)."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for tool in ("unshare", "ip"):
        (stubs / tool).write_text("#!/bin/sh\nexit 1\n")
        (stubs / tool).chmod(0o755)
    script = _offline_function() + "offline echo built\necho after\n"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False,
                          env={"PATH": f"{stubs}:/usr/bin:/bin", **env})


def test_ci_stops_loudly_where_it_cannot_cut_the_network(tmp_path):
    result = _offline(tmp_path)
    assert result.returncode == 1 and "built" not in result.stdout and "after" not in result.stdout
    assert "FAILED: cannot cut the network" in result.stderr and "DROPLAB_CI_ALLOW_NETWORK=1" in result.stderr


def test_ci_builds_with_the_network_only_when_told_and_says_so(tmp_path):
    result = _offline(tmp_path, DROPLAB_CI_ALLOW_NETWORK="1")
    assert result.returncode == 0 and result.stdout.split() == ["built", "after"]
    assert "does not prove the book builds offline" in result.stderr


def test_ci_executes_each_chapter_once_per_scale_on_one_torch_thread():
    """One book build (class scale) whose PDF reuses its execution, and whose HTML the book's tests
    read; nbval is the smoke run; both budgets are checked on CPU time with one torch thread."""
    ci = (ROOT / ".ci" / "run").read_text().replace("\\\n", " ")
    builds = [line for line in ci.splitlines() if "jupyter-book build" in line and not line.lstrip().startswith("#")]
    assert len(builds) == 2 and all("--path-output _build/class" in b and "DROPLAB_SCALE=class" in b for b in builds)
    assert sum("--builder" not in b for b in builds) == 1, "the HTML build runs once; the PDF reuses its execution"
    assert "export DROPLAB_BOOK_HTML=_build/class/_build/html" in ci
    assert "export OMP_NUM_THREADS=1" in ci and "-u OMP_NUM_THREADS" not in ci
    assert "check_budgets.py _build/class --scale class" in ci
    assert "check_budgets.py _build/nbval_seconds.json --scale smoke" in ci
    assert re.search(r"^DROPLAB_NOTEBOOK_SECONDS=_build/nbval_seconds\.json pytest$", ci, re.MULTILINE)
