"""scripts/sweep.sbatch on a real Slurm cluster: the tasks of a job array share a sweep without
losing or repeating a run, and a task killed midway, resubmitted alone, finishes its share
without redoing what was recorded before the kill.

It needs a running cluster (``bash scripts/slurm_local_cluster.sh start`` makes a one-node one
here; .ci/run does that). Without one the tests are skipped, except in CI (``CI`` set), where
they fail: CI must not pass without having run them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from droplab import experiments, records

pytestmark = pytest.mark.slow                             # each test submits Slurm jobs and waits for them

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "sweep.sbatch"
ARGS = ["head", "1", "--dataset", "synthetic"]          # the sweep: head experiment, seed 0
RECORDS = ("head", "smoke", "synthetic")                  # where its records go under --results
WAIT_S = 600                                              # deadline for any one job (smoke runs take seconds)
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, **{"timeout": 30, **kw})


def _cluster_problem() -> str | None:
    """Why no Slurm cluster can take a job here, or None if one can."""
    if shutil.which("sbatch") is None:
        return "sbatch not found (apt-get install slurm-wlm munge)"
    try:
        ping = _run(["scontrol", "ping"])
        if "is UP" not in ping.stdout:
            said = ((ping.stdout + ping.stderr).strip() or "nothing").splitlines()[0]
            return f"the Slurm controller does not answer: scontrol ping says {said!r}"
        nodes = _run(["sinfo", "-h", "-o", "%a %T"]).stdout.split("\n")
    except subprocess.TimeoutExpired as e:
        return f"{' '.join(e.cmd)} did not answer within {e.timeout} s"
    if not any(n.startswith("up ") and n.split()[1].rstrip("*~#!%$@^-") in ("idle", "mixed", "allocated",
                                                                          "completing") for n in nodes):
        return f"no Slurm node is up to take jobs: sinfo says {nodes!r}"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = _cluster_problem()
    if problem:
        hint = "; start one with: bash scripts/slurm_local_cluster.sh start"
        if _in_ci():
            pytest.fail(f"CI needs a Slurm cluster for this test and has none: {problem}{hint}", pytrace=False)
        pytest.skip(f"no Slurm cluster: {problem}{hint}")


@pytest.fixture
def job(tmp_path, slurm):
    """Submits sweep.sbatch under a job name of this test's own; cancels what is left at the end."""
    name = f"droplab-test-{uuid.uuid4().hex[:8]}"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBATCH_")}
    env.update(DROPLAB_SCALE="smoke", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    def submit(array: str, only: str, results: Path, *, wait: bool, shards: int | None = None):
        # The CPU form of the script: no --gres (the script asks for none) and one CPU a task,
        # so two tasks fit a 2-CPU node. sbatch passes env (--export=ALL) to the job.
        cmd = ["sbatch", f"--array={array}", "--cpus-per-task=1", "--time=00:20:00", f"--job-name={name}",
               f"--chdir={ROOT}", f"--output={logs}/%A_%a.out", "--export=ALL", "--parsable",
               *(["--wait"] if wait else []), str(SCRIPT), *ARGS, "--only", only, "--results", str(results)]
        try:
            p = _run(cmd, cwd=ROOT, env=dict(env, **({"DROPLAB_SHARDS": str(shards)} if shards else {})),
                     timeout=WAIT_S if wait else 60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"job {name} did not finish within {WAIT_S} s\n{squeue()}\n{logs_text()}")
        assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}\n{logs_text()}"
        return p.stdout.strip().split("\n")[0].split(";")[0]     # --parsable: "JOBID[;cluster]"

    def squeue() -> str:
        return _run(["squeue", "--name", name, "-h", "-o", "%i %T %R"]).stdout

    def states() -> dict[str, str]:
        """Array task ("123_1") -> state, for this test's tasks that are not finished."""
        return dict(line.split()[:2] for line in squeue().splitlines() if line.strip())

    def wait_until_done(what: str):
        deadline = time.monotonic() + WAIT_S
        while any(s in ACTIVE for s in states().values()):
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not finish within {WAIT_S} s\n{squeue()}\n{logs_text()}")
            time.sleep(0.5)

    def logs_text() -> str:
        return "\n".join(f"--- {p.name}:\n{p.read_text()[-3000:]}" for p in sorted(logs.glob("*.out")))

    submit.states, submit.wait_until_done, submit.logs = states, wait_until_done, logs_text
    yield submit
    _run(["scancel", "--name", name])


def _files(results: Path) -> list[Path]:
    """The files a sweep left, besides its folder lock (which stays, unlocked, by design)."""
    return sorted(p for p in results.rglob("*") if p.is_file() and not p.name.startswith(".sweep.lock"))


def _check_one_complete_record_per_run(results: Path, configs: list[str], logs: str):
    folder = results.joinpath(*RECORDS)
    expected = sorted(folder / f"{c}-seed0.json" for c in configs)
    assert _files(results) == expected, f"expected exactly one record per run\n{logs}"
    for path in expected:
        rec = json.loads(path.read_text())
        assert rec["status"] == "complete" and rec["config"]["name"] == path.name.split("-seed")[0], path


def test_array_tasks_together_run_every_config_once(job, tmp_path):
    results = tmp_path / "results"
    job("0-1", "none,H4,H5", results, wait=True)
    _check_one_complete_record_per_run(results, ["none", "H4", "H5"], job.logs())
    for shard in ("0/2", "1/2"):                      # two array tasks, each its own shard
        assert f"shard {shard}," in job.logs(), job.logs()


def test_killed_task_resubmitted_alone_finishes_its_share(job, tmp_path):
    configs = ["none", "H1", "H2", "H3", "H4", "H5"]
    results = tmp_path / "results"
    folder = results.joinpath(*RECORDS)
    task1 = [folder / f"{r.key}.json" for r in experiments.plan("head", 1, configs, shard=(1, 2))]
    assert len(task1) == 3
    jobid = job("0-1", ",".join(configs), results, wait=False)

    # Wait until task 1 has recorded a run and is still running, then cancel that task alone.
    deadline = time.monotonic() + WAIT_S
    while not (any(records.read_record(p, *RECORDS) for p in task1) and job.states().get(f"{jobid}_1") == "RUNNING"):
        if time.monotonic() > deadline or (f"{jobid}_1" not in job.states() and any(p.exists() for p in task1)):
            pytest.fail(f"task 1 did not record a run while running within {WAIT_S} s\n{job.logs()}")
        time.sleep(0.1)
    assert _run(["scancel", f"{jobid}_1"]).returncode == 0
    deadline = time.monotonic() + 60
    while job.states().get(f"{jobid}_1") in ACTIVE:        # cancelled, its processes gone
        assert time.monotonic() < deadline, f"task {jobid}_1 did not stop within 60 s after scancel"
        time.sleep(0.2)
    done_before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.json")}
    assert any(p in done_before for p in task1), "no record of task 1 before the kill"
    assert not all(p in done_before for p in task1), \
        "task 1 finished its whole share before scancel reached it: nothing left to resume"

    # Resubmit array index 1 alone; DROPLAB_SHARDS keeps it shard 1 of 2.
    job("1", ",".join(configs), results, wait=True, shards=2)
    job.wait_until_done("task 0 of the first job")

    _check_one_complete_record_per_run(results, configs, job.logs())          # also: no *.tmp left
    for p, (ino, mtime) in done_before.items():
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == (ino, mtime), f"{p.name} was rewritten after the kill"
