"""scripts/gpu_check.sh, the one-shot GPU check, proven on the CPU: its dry run (smoke scale,
synthetic data, device cpu, the GPU tests skipped) goes through every step and packs the six
files a GPU run leaves in $OUT; a step that fails still packs what exists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
FILES = {"gpu_check.log", "steps.tsv", "nvidia-smi.txt", "pytest.log", "bench.json", "records.tar.gz"}
CONTROL = [f"{r}-{c}" for r in ("long", "noisy") for c in ("none", "augment", "P6-p0.1", "P6-p0.3")]
PLACEMENT = ["none", "P0", "P2", "P4", "P6", "H4", "H5"]
RESIDUAL = ["none"] + [f"P{i}" for i in range(8)]
HEAD = ["none"] + [f"H{i}" for i in range(1, 8)] + ["P6+H4"]
SWEEPS = (("control", CONTROL, 200), ("placement", PLACEMENT, 0), ("residual", RESIDUAL, 0), ("head", HEAD, 0))


def _run(tmp: Path, *args: str, timeout: int = 240, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}   # the defaults
    environ.update(OUT=str(tmp / "out"), GPU_CHECK_WORK=str(tmp / "work"), OMP_NUM_THREADS="1")
    environ.update({"GPU_CHECK_PYTHON": sys.executable, **env})     # the python running the tests has torch
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=environ, check=False, capture_output=True,
                          text=True, timeout=timeout)


def _records(archive: Path) -> dict[str, dict]:
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        return {os.path.normpath(n): json.load(tar.extractfile(n)) for n in names}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    proc = _run(tmp, "--dry-run")
    return proc, tmp / "out"


@pytest.mark.slow
def test_the_dry_run_goes_through_every_step(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    assert [s[0] for s in steps] == ["environment", "tests", "bench", *(f"sweep-{exp}-seeds1" for exp, _, _ in SWEEPS)]
    assert all(s[1] == "0" for s in steps), steps
    log = (out / "gpu_check.log").read_text()
    assert re.search(r"^== \[\d+s \d\d:\d\d:\d\d\] bench", log, re.MULTILINE)      # every step is stamped
    assert "failed steps: none" in log and "done, exit 0" in log
    for exp, configs, _ in SWEEPS:                                     # the summary of the new records
        assert f"{exp} (smoke, synthetic): {len(configs)} complete records, {len(configs)} made now" in log


@pytest.mark.slow
def test_it_packs_six_small_plain_files(dry_run):
    _, out = dry_run
    files = {p.name for p in out.iterdir()}
    assert files == FILES
    for p in out.iterdir():
        assert p.is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", p.name) and p.stat().st_size < 16 * 2**20


@pytest.mark.slow
def test_the_records_archive_holds_complete_records_laid_out_as_the_committed_ones(dry_run):
    _, out = dry_run
    records = _records(out / "records.tar.gz")
    expected = {f"{exp}/smoke/synthetic/{c}-seed{first}.json" for exp, cs, first in SWEEPS for c in cs}
    assert set(records) == expected                     # no partial (.tmp) files, nothing else
    for name, rec in records.items():
        exp, scale, dataset, file = name.split("/")
        assert rec["status"] == "complete" and (rec["experiment"], rec["scale"], rec["dataset"]) == (exp, scale, dataset)
        assert file == f"{rec['config']['name']}-seed{rec['seed']}.json"
        assert rec["provenance"]["device"] == "cpu" and rec["final_val_acc"] is not None
        assert (rec["final_test_acc"] is None) == (exp == "control")      # the pilot never sees the test split


@pytest.mark.slow
def test_the_bench_json_has_the_ratio_and_the_pytest_log_the_skipped_gpu_tests(dry_run):
    _, out = dry_run
    bench = json.loads((out / "bench.json").read_text())
    assert bench["ratio"] > 0 and bench["model"] == "preresnet8" and bench["images"] == 256
    assert bench["ratio"] == pytest.approx(bench["fast_images_per_s"] / bench["reference_images_per_s"])
    log = (out / "pytest.log").read_text()
    assert "tests/test_gpu.py" in log and " failed" not in log
    assert re.search(r"\d+ (skipped|passed)", log)      # skipped here: no CUDA


def test_a_failing_step_still_packs_what_exists(tmp_path):
    proc = _run(tmp_path, "--dry-run", timeout=60, GPU_CHECK_PYTHON="false")   # no Python at all
    out = tmp_path / "out"
    assert proc.returncode != 0
    assert "environment is not ready" in proc.stdout + proc.stderr
    assert {"gpu_check.log", "steps.tsv", "nvidia-smi.txt", "pytest.log", "records.tar.gz"} <= {
        p.name for p in out.iterdir()}
    assert _records(out / "records.tar.gz") == {}
    assert "environment\t1" in (out / "steps.tsv").read_text()


def test_unknown_arguments_are_refused_with_the_valid_ones(tmp_path):
    proc = _run(tmp_path, "--bogus", timeout=30)
    assert proc.returncode == 2 and "--pack, --dry-run" in proc.stderr
