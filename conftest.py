"""Test-session setup shared by the unit tests and the notebook tests (nbval).

It lives at the repository root so that it also applies to ``chapters/``.
nbval's kernels inherit this process's environment, so the scale and the
plotting backend are set here, before any kernel starts.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("DROPLAB_SCALE", "smoke")
# One torch thread per process: on a busy 2-core machine torch's two OpenMP threads
# spin against other processes and ran chapters up to 5x slower (measured while writing them).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
# Notebooks run at test time write their run records to a scratch folder, so a
# test run never reuses (or leaves behind) records of an earlier run.
os.environ.setdefault("DROPLAB_RESULTS", tempfile.mkdtemp(prefix="droplab-results-"))

_notebooks: set[str] = set()      # collected
_selected: set[str] = set()       # with at least one cell left to run after -m and -k
_cells_passed: Counter[str] = Counter()
_started: dict[str, tuple[float, float]] = {}   # notebook -> (children's CPU seconds, wall clock) at its first cell
_seconds: dict[str, dict] = {}                   # notebook -> its kernel's CPU and wall seconds


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Unit tests run torch on one thread, whatever OMP_NUM_THREADS the caller set.

    The test machine's cores are shared: more threads only oversubscribe them. Only
    Python test functions request fixtures; nbval's notebook cells do not, so this is
    a no-op for chapters/ (their kernels get OMP_NUM_THREADS=1 from the environment
    above), and torch is imported here only once a unit test needs the fixture.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    """Every cell of a chapter notebook (nbval) is slow: it runs in the notebook's kernel, after the
    cells above it, so `pytest -m "not slow"` leaves whole notebooks out, never half of one."""
    for item in items:
        if item.nodeid.split("::")[0].endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)


def _notebook(item) -> str | None:
    nodeid = item.nodeid.split("::")[0]
    return nodeid if nodeid.endswith(".ipynb") else None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The CPU time of each notebook's kernel, for the smoke-scale budget (scripts/check_budgets.py).

    nbval starts a notebook's kernel, a child of this process, when its first cell is set up and
    stops it when the last one is torn down; the stopped kernel is waited for, so the growth of
    RUSAGE_CHILDREN across the notebook is its kernel's CPU time. Unlike the wall time, the load
    of the rest of the machine does not lengthen it (the kernel runs one torch thread)."""
    notebook = _notebook(item)
    if notebook and notebook not in _started:
        _started[notebook] = (_children_cpu(), time.perf_counter())
    yield
    if notebook and (nextitem is None or _notebook(nextitem) != notebook):
        cpu, wall = _started[notebook]
        _seconds[notebook] = {"cpu_seconds": round(_children_cpu() - cpu, 2),
                              "wall_seconds": round(time.perf_counter() - wall, 2),
                              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def pytest_terminal_summary(terminalreporter):
    if _seconds:
        terminalreporter.section("notebook kernels: CPU and wall seconds")
        for notebook, seen in _seconds.items():
            terminalreporter.write_line(f"{notebook:45} {seen['cpu_seconds']:7.1f} s CPU "
                                        f"{seen['wall_seconds']:7.1f} s wall")
    target = os.environ.get("DROPLAB_NOTEBOOK_SECONDS")
    if target and _seconds:          # for scripts/check_budgets.py (.ci/run)
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        keyed = {notebook.removesuffix(".ipynb"): seen for notebook, seen in _seconds.items()}
        path.write_text(json.dumps(keyed, indent=1, sort_keys=True) + "\n")


def pytest_collectreport(report):
    if report.nodeid.endswith(".ipynb"):
        _notebooks.add(report.nodeid)


def pytest_collection_finish(session):
    _selected.update(item.nodeid.split("::")[0] for item in session.items if ".ipynb::" in item.nodeid)


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and ".ipynb::" in report.nodeid:
        _cells_passed[report.nodeid.split("::")[0]] += 1


def pytest_sessionfinish(session, exitstatus):
    """A notebook that executed no cell fails the run instead of passing silently (one that -m or -k
    deselected entirely is not expected to run)."""
    if session.config.option.collectonly or exitstatus != 0:
        return
    idle = sorted(nb for nb in _notebooks & _selected if _cells_passed[nb] == 0)
    idle += sorted(nb for nb in _notebooks if nb not in _selected and not session.config.option.keyword
                   and not session.config.option.markexpr)          # collected no cell at all
    if idle:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter:
            reporter.write_line(f"FAILED: these notebooks executed no cell: {', '.join(idle)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
